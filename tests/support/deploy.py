"""What the deploy tests record of a deploy: `deploy_recorded` runs the real
`bootstrap.deploy` to an sshd server and keeps its progress events; `Deployed` is the
session's server deployed from nothing (tests/deploy/conftest.py `deployed`); and the pip
configuration of a user who cannot reach any package index."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.support.remote import VENV_REL
from tests.support.sshd import SshServer


@dataclass
class Deployed:
    server: SshServer
    endpoint: object  # seamless_service.deploy.AgentEndpoint
    events: list[tuple[str, str]]
    seconds: float
    venv: Path = field(init=False)

    def __post_init__(self) -> None:
        self.venv = self.server.home / VENV_REL


def deploy_recorded(server: SshServer, **kwargs) -> tuple[object, list[tuple[str, str]]]:
    """deploy() to `server`, returning the endpoint and the progress events it reported."""
    from seamless_service.deploy import bootstrap

    events: list[tuple[str, str]] = []
    kwargs.setdefault("ssh_config", server.ssh_config)
    endpoint = bootstrap.deploy(server.alias, progress=lambda step, msg: events.append((step, msg)), **kwargs)
    return endpoint, events


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
