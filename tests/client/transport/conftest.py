"""`transport`: the same op semantics on every transport, as execnet runs its tests over
every gateway.

Each param is a real transport on a real launcher state it can be told to change:
`local` (in-process, a LauncherSandbox), `agent` (the deployed agent over the real sshd
tunnel of tests/client/conftest.py's `remote`, paramiko), `openssh` (the same agent through
the real `ssh` client: transport/openssh.py) and `ssh` (per-call `ssh` running the real
rhl-* helpers on that same host). A test states what must hold everywhere; where a
transport deliberately differs (README, Deliberate differences), the test marks that
param with `differs(...)`, the reason, and a strict xfail, instead of skipping it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from seamless_service.agent.context import AgentContext
from seamless_service.client.transport.agent import AgentTransport
from seamless_service.client.transport.local import LocalTransport
from seamless_service.client.transport.ssh import SshTransport
from tests.support.services import LauncherSandbox
from tests.support.transports import TRANSPORTS, Place, mark_differences, remote_place


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "differs(transport, reason): a deliberate difference of one transport")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_differences(items)


@pytest.fixture(scope="module")
def _local_place(tmp_path_factory) -> Iterator[Place]:
    box = LauncherSandbox(tmp_path_factory.mktemp("transport-local") / "rhl")
    box.server_dir.mkdir(parents=True, exist_ok=True)
    data = box.root / "data"
    data.mkdir(parents=True, exist_ok=True)

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def kill(key: str) -> None:
        pass  # kill_all at the end

    with LocalTransport(AgentContext(base=box.base)) as transport:
        yield Place("local", transport, box.server_dir, data, box.launch, write, kill)
    box.kill_all()


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request) -> Iterator[Place]:
    """Each transport in turn, on a launcher state the test may change (its own keys)."""
    if request.param == "local":
        yield request.getfixturevalue("_local_place")
        return
    remote = request.getfixturevalue("remote")
    if request.param in ("agent", "openssh"):
        via = "openssh" if request.param == "openssh" else "channel"
        with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=lambda message: None,
                            via=via) as agent:
            place = remote_place(request.param, remote, agent)
            yield place
    else:
        place = remote_place("ssh", remote, SshTransport(remote.alias, ssh_config=remote.ssh_config))
        yield place
    place.clean()

