"""Shared fixtures: a launcher sandbox where real services run."""

from __future__ import annotations

import pytest

from tests.support.services import LauncherSandbox


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A temporary HOME with real remote-http-launcher state; the test process uses it too."""
    box = LauncherSandbox(tmp_path / "rhl")
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REMOTE_HTTP_LAUNCHER_DIR", raising=False)
    yield box
    box.kill_all()
