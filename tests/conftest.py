"""Shared fixtures: a launcher sandbox where real services run."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.services import LauncherSandbox


def private_xdg_cache(tmp_path_factory, name: str) -> Iterator[Path]:
    """Body of a session fixture: XDG_CACHE_HOME in a temp folder for the whole session, so
    client-side caches (agent endpoints, the tunnel keeper) never touch the real user's."""
    path = tmp_path_factory.mktemp(name)
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(path))
    yield path
    patch.undo()


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A temporary HOME with real remote-http-launcher state; the test process uses it too."""
    box = LauncherSandbox(tmp_path / "rhl")
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REMOTE_HTTP_LAUNCHER_DIR", raising=False)
    yield box
    box.kill_all()
