"""A change token for the launcher state, and waiting for it to change (the `wait` op).

The token is a digest of everything `ps` shows that can change:

* for every `*.json` in `server/` and `client/` (the files `ps` lists): name, inode,
  size, mtime_ns and ctime_ns. A file created, removed or replaced changes this list.
  The launcher and rhl-stop write through a temp file and `os.replace`, which gives a
  new inode, so even two writes within one timestamp tick are seen; ctime catches
  in-place rewrites that keep the size and land in the same mtime tick;
* for every server file, whether its pid is alive. A service that dies without touching
  its file changes its derived status (running -> stale) and therefore the token; only
  the pid is cached per file version (stat signature), so a poll reads no JSON unless a
  file changed, and costs one stat per file plus one kill(pid, 0) per server row.

Left out on purpose, because `ps` does not show them and they would only cause spurious
wake-ups: logs (they change all the time), and the directories' own mtimes (they change
when a log or a temp file is created, which says nothing the file list does not).

Polling is portable (no inotify) and cheap; each connection of the agent runs in its own
thread, so a waiting client holds only its own thread. `close()` wakes every waiter, so an
agent that shuts down does not hang on a long poll.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

from .. import rhl
from . import statefiles
from .paths import join
from .context import AgentContext

POLL_INTERVAL = 0.1   # seconds between two stat passes while waiting
TOKEN_HEX = 32        # 128 bits of the digest: collisions are not a practical concern

_Signature = statefiles.Signature


class Watcher:
    """Computes change tokens for one launcher base; shared by all ops of an agent."""

    def __init__(self, ctx: AgentContext):
        self._probe = ctx.shared("liveness", statefiles.LivenessCache).alive
        self._dirs = (("server", str(ctx.server_dir)), ("client", str(ctx.client_dir)))
        # path -> (signature, pid or None). Replaced wholesale by each scan, so concurrent
        # scans from several threads never see a half-updated map (last writer wins, and
        # both writers computed valid entries).
        self._pids: dict[str, tuple[_Signature, int | None]] = {}
        self._closed = threading.Event()

    def token(self) -> str:
        """The current change token (a hex string)."""
        return self.scan()[0]

    def scan(self) -> tuple[str, dict[str, list[tuple[str, os.stat_result]]]]:
        """(token, {"server": [(path, stat)], "client": [...]}): one listing and one stat per
        file, which `ps` reuses for its rows instead of listing and stat-ing again. Paths are
        plain strings: on a poll of hundreds of files pathlib would cost more than the stats."""
        parts: list[str] = []
        pids: dict[str, tuple[_Signature, int | None]] = {}
        seen: dict[str, list[tuple[str, os.stat_result]]] = {"server": [], "client": []}
        for role, directory in self._dirs:
            for name in statefiles.state_file_names(directory):
                path = join(directory, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # vanished since the listing: its absence changes the digest
                seen[role].append((path, st))
                sig = statefiles.stat_signature(st)
                parts.append(f"{role}/{name}\0{sig[0]},{sig[1]},{sig[2]},{sig[3]}\0")
                if role == "server":
                    pid = self._pid(path, sig, pids)
                    alive = self._probe(pid) if pid is not None else None
                    parts.append(f"alive={alive}\0")
        self._pids = pids
        digest = hashlib.sha256("".join(parts).encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:TOKEN_HEX], seen

    def wait(self, token: str | None, timeout: float) -> tuple[bool, str]:
        """(changed, current token): at once if `token` is absent or stale, else when the
        state changes or `timeout` seconds pass (timeout 0 checks exactly once)."""
        current = self.token()
        if token is None or token != current:
            return True, current
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                return False, current
            # Event.wait doubles as an interruptible sleep: close() ends every wait early.
            self._closed.wait(min(POLL_INTERVAL, remaining))
            current = self.token()
            if current != token:
                return True, current

    def close(self) -> None:
        self._closed.set()

    # -- internals ---------------------------------------------------------------

    def _pid(self, path: str, sig: _Signature, out: dict[str, tuple[_Signature, Any]]) -> int | None:
        cached = self._pids.get(path)
        if cached is not None and cached[0] == sig:
            pid = cached[1]
        else:
            pid = _read_pid(path)
        out[path] = (sig, pid)
        return pid


def _read_pid(path: str) -> int | None:
    """The usable pid of a server file, or None (unusable, unreadable, no pid)."""
    try:
        data = statefiles.read_state(path)
    except statefiles.StateFileError:
        return None
    if data is None:
        return None
    return rhl.usable_pid(data.get("pid"))


def watcher(ctx: AgentContext) -> Watcher:
    """The agent's shared Watcher (created on first use)."""
    return ctx.shared("watcher", Watcher)


def current_token(ctx: AgentContext) -> str:
    return watcher(ctx).token()
