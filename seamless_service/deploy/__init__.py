"""Bootstrap over SSH: find or install the agent on a host, start it, read back its port and
secret, upgrade it on version mismatch, stop it.

Modules, one job each:
  ssh.py            paramiko connection honouring ~/.ssh/config and known_hosts; `run()`
  remote_python.py  find a Python >= 3.10 on the host
  wheels.py         build/gather wheels on the client (own wheel, dependency wheels)
  install.py        install/upgrade the agent into a dedicated venv on the host
  bootstrap.py      the whole deploy; status; stop
  cache.py          client-side cache host -> port/secret/version (import-light)

This file stays import-light (no paramiko): the CLI imports it to catch `DeployError`.
`deploy`, `status` and `stop` are loaded on first use.
"""

from __future__ import annotations

from typing import Any


class DeployError(Exception):
    """A deploy step failed. The message is one line meant for the user; never a secret."""


class SshError(DeployError):
    """The SSH connection could not be made or used."""


class HostKeyUnknown(SshError):
    """The host's key is not in known_hosts (and accepting a new key was not asked for)."""


class HostKeyChanged(SshError):
    """known_hosts holds a different key for the host: refused, always."""


class AuthFailed(SshError):
    """The server refused every key we offered."""


class RemoteTimeout(SshError):
    """The host did not answer in time: connecting to it, or a remote command."""


__all__ = [
    "DeployError", "SshError", "HostKeyUnknown", "HostKeyChanged", "AuthFailed", "RemoteTimeout",
    "deploy", "status", "stop", "AgentEndpoint",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing bootstrap pulls in paramiko (~250 ms), which light callers must not pay.
    if name in ("deploy", "status", "stop"):
        from . import bootstrap
        return getattr(bootstrap, name)
    if name == "AgentEndpoint":
        from .cache import AgentEndpoint
        return AgentEndpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
