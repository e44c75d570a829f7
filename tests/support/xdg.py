"""A private XDG_CACHE_HOME for a test session, so client-side caches (agent endpoints,
wheels, transport choices, the tunnel keeper) never touch the real user's."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest


def private_xdg_cache(tmp_path_factory, name: str) -> Iterator[Path]:
    """Body of a session fixture: XDG_CACHE_HOME in a temp folder for the whole session, so
    client-side caches (agent endpoints, the tunnel keeper) never touch the real user's."""
    path = tmp_path_factory.mktemp(name)
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(path))
    yield path
    patch.undo()
