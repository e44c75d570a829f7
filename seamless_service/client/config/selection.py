"""What the user selected (Selection) and what one service resolves to (Resolved).

Plain data: reading the configuration is session.py's, resolving resolve.py's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

PERSISTENT_SERVICES = ("hashserver", "database")
LOCAL_HOSTNAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class Selection:
    """What the user selected on the command line (None = take it from seamless.yaml).

    seamless-config's service helpers read these attributes from an argparse result; they
    are given the Selection itself (they only read attributes)."""

    service: str | None = None
    cluster: str | None = None
    project: str | None = None
    subproject: str | None = None
    stage: str | None = None
    substage: str | None = None
    mode: str = "rw"
    queue: str | None = None
    frontend_name: str | None = None
    workdir: str | None = None  # resolve --workdir: read DIR/seamless.yaml; None = cwd


@dataclass
class Resolved:
    """One resolved service: where it runs and under which key."""

    key: str
    ssh_host: str | None          # None: this machine
    workdir: str | None           # unexpanded, as seamless-config gives it
    meta: dict[str, Any]
    config: dict[str, Any] = field(repr=False)
    log_path: str = ""

    @property
    def service(self) -> str:
        return self.meta["service"]

    @property
    def cluster(self) -> str | None:
        return self.meta.get("cluster")

    def local_workdir(self) -> str | None:
        """The workdir as a path on its host: `~` expanded only when the host is this machine."""
        if self.workdir and self.ssh_host is None:
            return os.path.expanduser(self.workdir)
        return self.workdir

    def resolve_json(self) -> dict[str, Any]:
        """The object `seamless-service-resolve` prints (ssh_hostname is the host we use: #1)."""
        payload: dict[str, Any] = {
            "key": self.key,
            "ssh_hostname": self.ssh_host,
            "workdir": self.workdir,
            "log_path": self.log_path,
        }
        payload.update(self.meta)
        return payload
