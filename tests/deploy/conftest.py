"""Fixtures for the deploy tests: real sshd servers with throwaway users (tests/support/sshd.py).

- `client_cache` (session, autouse): a private XDG_CACHE_HOME, so deploys never touch the
  real ~/.cache; wheels built once are reused by every deploy of the session.
- `sshd`: a fresh server per test (cheap: ~0.3 s), for tests that never install.
- `deployed`: ONE server deployed from nothing, shared by the session (a deploy from
  nothing takes tens of seconds: a venv, a wheel build, a pip install).
- `offline_server`: a server whose user cannot reach any package index (its pip.conf
  points at a closed port), for the offline install path.

What they hand out and record lives in tests/support/deploy.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.deploy import DEAD_INDEX_PIP_CONF, Deployed, deploy_recorded
from tests.support.sshd import SshServer, require_sshd
from tests.support.xdg import private_xdg_cache


@pytest.fixture(scope="session", autouse=True)
def client_cache(tmp_path_factory) -> Iterator[Path]:
    yield from private_xdg_cache(tmp_path_factory, "xdg-cache")


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    require_sshd()
    server = SshServer.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def deployed() -> Iterator[Deployed]:
    require_sshd()
    server = SshServer.start(alias="deploy-main")
    try:
        start = time.monotonic()
        endpoint, events = deploy_recorded(server)
        yield Deployed(server, endpoint, events, time.monotonic() - start)
    finally:
        server.close()


@pytest.fixture(scope="module")
def offline_server() -> Iterator[SshServer]:
    require_sshd()
    server = SshServer.start(alias="deploy-offline")
    try:
        server.write_file(".config/pip/pip.conf", DEAD_INDEX_PIP_CONF)
        yield server
    finally:
        server.close()
