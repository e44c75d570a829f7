"""Fixtures shared by the CLI tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.world import World


@pytest.fixture
def small(tmp_path) -> Iterator[World]:
    """A world of its own (no dead cluster), for tests that change the state."""
    w = World.build(tmp_path, dead_cluster=False)
    yield w
    w.box.kill_all()
