"""Client-side cache of deployed agents: host alias -> port, secret, version, pid.

Layout: `$XDG_CACHE_HOME/seamless-service/` (default `~/.cache/seamless-service/`), folders
0700, files 0600, with `hosts/<alias>.json` for endpoints (they hold the agent's secret)
and `wheels/` for the wheels deploy builds. Every write is atomic (temp file in the same
folder + os.replace), so a concurrent reader never sees half a file.

Import-light on purpose (no paramiko): the tunnel keeper reads endpoints from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP = "seamless-service"


@dataclass(frozen=True)
class AgentEndpoint:
    """Where a host's agent listens (on the host's 127.0.0.1) and how to authenticate.

    `secret` is excluded from repr/str so it never lands in logs or tracebacks.
    """

    host: str
    remote_port: int
    secret: str = field(repr=False)
    version: str
    pid: int
    remote_python: str
    protocol: int | None = None
    deployed_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AgentEndpoint":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / APP


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and the app folder above it) as 0700; tighten them if they exist looser."""
    path = Path(path)
    root = cache_root()
    chain = [path]
    # Every folder from the app root down to `path` must be private; the XDG root itself
    # (e.g. ~/.cache) belongs to the user's system and is left alone.
    parent = path.parent
    while parent != parent.parent and (parent == root or root in parent.parents):
        chain.append(parent)
        parent = parent.parent
    for folder in reversed(chain):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_mode & 0o077:
            folder.chmod(0o700)  # umask or an older version may have left it readable
    return path


def write_private(path: Path, data: bytes) -> None:
    """Atomically write `data` to `path` with mode 0600 (never visible half-written or readable)."""
    path = Path(path)
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def hosts_dir() -> Path:
    return cache_root() / "hosts"


def wheels_dir() -> Path:
    return cache_root() / "wheels"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def host_file(host: str) -> Path:
    """File for a host alias. Unsafe characters become '_'; a short hash of the exact alias
    keeps `a@b` and `a_b` apart, and the name can never be '..' or start with a dot."""
    safe = _UNSAFE.sub("_", host).lstrip(".")[:80] or "host"
    digest = hashlib.sha256(host.encode()).hexdigest()[:10]
    return hosts_dir() / f"{safe}-{digest}.json"


def store(endpoint: AgentEndpoint) -> Path:
    path = host_file(endpoint.host)
    data = endpoint.to_json()
    if not data.get("deployed_at"):
        data["deployed_at"] = time.time()
    write_private(path, json.dumps(data, sort_keys=True).encode())
    return path


def load(host: str) -> AgentEndpoint | None:
    """The cached endpoint of `host`, or None (missing or unreadable cache is not an error)."""
    path = host_file(host)
    try:
        data = json.loads(path.read_text())
        endpoint = AgentEndpoint.from_json(data)
    except (OSError, ValueError, TypeError):
        return None
    return endpoint if endpoint.host == host else None


def remove(host: str) -> bool:
    try:
        host_file(host).unlink()
        return True
    except FileNotFoundError:
        return False
