"""Fixtures for the transport and API tests: real sshd servers, real agents, real services.

Nothing here is autouse: tests that want a remote host ask for one.

- `client_cache` (session): a private XDG_CACHE_HOME (endpoints, wheels, transport choices).
- `remote` (session): ONE sshd server whose first contact went through
  `AgentTransport.batch` (so the agent was deployed automatically by the client), with
  remote state made as a user would: real toy services launched by remote-http-launcher
  as the throwaway user, hand-written odd state files, a 200 KB log, data directories
  (one with a space, one with shell metacharacters), the rhl-* helpers linked into
  ~/miniforge3/bin (what the ssh transport's PATH prefix looks at), and a second client
  key forced through `rhl-guard --data-roots FILE` (alias `<alias>-guard`) and a third
  through `rhl-guard --clear-policy seamless` (alias `<alias>-guard-seamless`).
- `second_remote` (session): another deployed server (fan-out), deployed in parallel with
  the first.
- `g11` (session): the G11 layout of a cluster's data roots on `remote`.
- `sshd`: a fresh server, never deployed (host-key and refusal cases).

Everything runs as the throwaway users of tests/support/sshd.py; what the fixtures hand
out (`Remote`) is tests/support/remote.py, the state they make there
tests/support/remote_state.py.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.cli import Home, remote_home
from tests.support.remote import Remote, start_deployed
from tests.support.remote_state import RUNNING_KEYS, make_g11, make_remote_state
from tests.support.sshd import SshServer, require_sshd
from tests.support.xdg import private_xdg_cache


@pytest.fixture(scope="session")
def client_cache(tmp_path_factory) -> Iterator[Path]:
    yield from private_xdg_cache(tmp_path_factory, "xdg-cache-client")


@pytest.fixture(scope="session")
def _deployed_pair(client_cache) -> Iterator[tuple[Remote, Remote]]:
    require_sshd()
    made: dict[str, Remote] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            made[name] = start_deployed(f"{name}-{os.getpid()}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # Two deploys from nothing (~10 s each) run at once.
    threads = [threading.Thread(target=start, args=(name,)) for name in ("agent-main", "agent-second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        if errors:
            raise errors[0]
        main = made["agent-main"]
        make_remote_state(main)
        yield main, made["agent-second"]
    finally:
        for remote in made.values():
            for key in RUNNING_KEYS:
                remote.kill_service(key)
            remote.server.close()


@pytest.fixture(scope="session")
def remote(_deployed_pair) -> Remote:
    return _deployed_pair[0]


@pytest.fixture(scope="session")
def second_remote(_deployed_pair) -> Remote:
    return _deployed_pair[1]


@pytest.fixture(scope="session")
def g11(remote: Remote) -> Path:
    """The G11 layout on the remote host (tests/support/remote_state.py); its root."""
    return make_g11(remote)


@pytest.fixture
def sshd(client_cache) -> Iterator[SshServer]:
    require_sshd()
    server = SshServer.start()
    yield server
    server.close()


@pytest.fixture
def rhome(sandbox, monkeypatch, remote) -> Home:
    """The sandbox HOME with a cluster `clu` on the `remote` host (tests/support/cli.py remote_home)."""
    return remote_home(sandbox, monkeypatch, remote)
