"""Everything an op needs to know about the agent it runs in."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths


@dataclass
class AgentContext:
    """Shared by all ops of one agent process (or one in-process local transport).

    `policy` is the path policy configured on the server (never chosen by a client);
    `sizer` and `watcher` are created lazily by the ops that need them, so the local
    transport pays nothing for what it does not use.
    """

    base: Path = field(default_factory=paths.base_dir)
    policy: Any = None            # agent.policy.PathPolicy; None -> the default (seamless preset)
    started: float = field(default_factory=time.time)
    helper_dir: Path | None = None  # folder holding the rhl-* executables; None -> search
    extras: dict[str, Any] = field(default_factory=dict)  # lazily created per-agent objects
    # True for the agent process's context: nothing changes os.environ while it serves
    # (no agent code writes it), so what hello derives from it may be kept. False where
    # the environment can change under the context: the tunnel keeper runs the local
    # transport with each caller's environment in os.environ.
    fixed_environment: bool = False
    # Reentrant: a factory may itself ask for another shared object (Watcher -> liveness).
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def server_dir(self) -> Path:
        return paths.server_dir(self.base)

    @property
    def client_dir(self) -> Path:
        return paths.client_dir(self.base)

    @property
    def agent_dir(self) -> Path:
        return paths.agent_dir(self.base)

    def state_id(self) -> str:
        """An opaque name for the launcher state this context reads: the same whichever
        door reached it (two ssh aliases of one server, or a cluster whose frontend is this
        machine), different for another machine, boot, user's state or directory. A client
        asking several hosts uses it to show rows of one state once."""
        try:
            st = os.stat(self.base)
            where = f"{st.st_dev}:{st.st_ino}"
        except OSError:  # nothing launched here yet: its path names it
            where = os.path.abspath(self.base)
        return hashlib.sha256(f"{_machine()}\0{where}".encode()).hexdigest()[:32]

    def shared(self, name: str, factory: Any) -> Any:
        """The per-agent singleton `name`, made by `factory(self)` on first use."""
        obj = self.extras.get(name)
        if obj is None:
            # Connections are served in parallel threads: make exactly one (one Sizer thread).
            with self._lock:
                obj = self.extras.get(name)
                if obj is None:
                    obj = self.extras[name] = factory(self)
        return obj

    def close(self) -> None:
        for obj in self.extras.values():
            closer = getattr(obj, "close", None)
            if closer is not None:
                closer()
        self.extras.clear()


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    """This machine and boot: the hostname (cloned VMs may share it) and the kernel's
    boot id (absent off Linux), so a directory's (device, inode) names one directory."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}\0{boot}"
