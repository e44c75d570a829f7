"""Fixtures of the tunnel keeper tests."""

from __future__ import annotations

import pytest

from tests.support.keeper import KeeperPlace


@pytest.fixture
def keeper(monkeypatch):
    """A private keeper folder; the keeper started there runs the real CLI."""
    place = KeeperPlace(monkeypatch, hooks=False, idle=120)
    yield place
    place.cleanup()
