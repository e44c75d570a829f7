"""Fixtures for the deploy tests: real sshd servers with throwaway users (tests/support/sshd.py).

- `client_cache` (session, autouse): a private XDG_CACHE_HOME, so deploys never touch the
  real ~/.cache; wheels built once are reused by every deploy of the session.
- `sshd`: a fresh server per test (cheap: ~0.3 s), for tests that never install.
- `deployed`: ONE server deployed from nothing, shared by the session (a deploy from
  nothing takes tens of seconds: a venv, a wheel build, a pip install).
- `offline_server`: a server whose user cannot reach any package index (its pip.conf
  points at a closed port), for the offline install path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import private_xdg_cache
from tests.support.sshd import SshServer, sshd_available

REASON = sshd_available()


def _require_sshd() -> None:
    if REASON is not None:
        pytest.skip(REASON)


@pytest.fixture(scope="session", autouse=True)
def client_cache(tmp_path_factory) -> Iterator[Path]:
    yield from private_xdg_cache(tmp_path_factory, "xdg-cache")


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    _require_sshd()
    server = SshServer.start()
    yield server
    server.close()


@dataclass
class Deployed:
    server: SshServer
    endpoint: object  # seamless_service.deploy.AgentEndpoint
    events: list[tuple[str, str]]
    seconds: float
    venv: Path = field(init=False)

    def __post_init__(self) -> None:
        self.venv = self.server.home / ".local/share/seamless-service/agent-venv"


def deploy_recorded(server: SshServer, **kwargs) -> tuple[object, list[tuple[str, str]]]:
    """deploy() to `server`, returning the endpoint and the progress events it reported."""
    from seamless_service.deploy import bootstrap

    events: list[tuple[str, str]] = []
    kwargs.setdefault("ssh_config", server.ssh_config)
    endpoint = bootstrap.deploy(server.alias, progress=lambda step, msg: events.append((step, msg)), **kwargs)
    return endpoint, events


@pytest.fixture(scope="session")
def deployed() -> Iterator[Deployed]:
    _require_sshd()
    server = SshServer.start(alias="deploy-main")
    try:
        start = time.monotonic()
        endpoint, events = deploy_recorded(server)
        yield Deployed(server, endpoint, events, time.monotonic() - start)
    finally:
        server.close()


def write_as_user(server: SshServer, relpath: str, text: str, mode: int = 0o644) -> Path:
    """Create a file in the test user's HOME, owned by that user (as a user would have it)."""
    return server.write_file(relpath, text, mode)


# The user's own pip config wins over /etc/pip.conf: every index points at a closed port
# and the machine's local wheel folders are cleared, so only uploaded wheels can install.
DEAD_INDEX_PIP_CONF = """\
[global]
index-url = http://127.0.0.1:9/simple
extra-index-url =
find-links =
timeout = 5
retries = 0
"""


@pytest.fixture(scope="module")
def offline_server() -> Iterator[SshServer]:
    _require_sshd()
    server = SshServer.start(alias="deploy-offline")
    try:
        write_as_user(server, ".config/pip/pip.conf", DEAD_INDEX_PIP_CONF)
        yield server
    finally:
        server.close()
