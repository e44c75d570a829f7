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

Where Linux offers inotify (agent/fswatch.py), a poll re-stats only the state files that
had an event since the previous one (and re-reads those even if their signature did not
move); elsewhere, or when the watch loses track, it stats every file as before. `mode`
says which ran (in the `ps` reply and `hello`). Each connection of the agent runs in its
own thread, so a waiting client holds only its own thread. `close()` wakes every waiter, so an
agent that shuts down does not hang on a long poll.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import rhl
from . import fswatch, statefiles
from .paths import join
from .context import AgentContext

POLL_INTERVAL = 0.1   # seconds between two stat passes while waiting
TOKEN_HEX = 32        # 128 bits of the digest: collisions are not a practical concern

_Signature = statefiles.Signature


class _Folder:
    """The `*.json` entries of one state folder with their stats, sorted by name.

    With inotify (fswatch.FolderWatch) a poll re-stats only the names that had an event
    since the previous poll, and tells `forget(path)` about each, so that parsed content
    cached by stat signature is read again even when the signature did not move (an
    in-place rewrite within one timestamp tick). Without it (not Linux, limits reached,
    SEAMLESS_SERVICE_FSWATCH=stat), or whenever the watch lost track (queue overflow, the
    folder replaced), every poll lists and stats everything, as before. Entries that are
    symlinks or have other hard links are stat-ed on every poll either way: they change
    without an event in this folder."""

    def __init__(self, path: str, forget: Callable[[str], None], watch: bool):
        self.path = path
        self._forget = forget
        self._watch = fswatch.FolderWatch(path) if watch else None
        self._stats: dict[str, os.stat_result] = {}
        self._links: set[str] = set()
        self._entries: list[tuple[str, os.stat_result]] = []
        self.generation = 0   # bumped whenever the entries may differ from the last poll's
        # bumped whenever a file may have changed at all, signature moved or not (an event,
        # a rescan: in stat mode every poll): what is derived from the files is kept only
        # while this stays (ps' rows)
        self.version = 0

    @property
    def watched(self) -> bool:
        return self._watch is not None and self._watch.active

    @property
    def failed(self) -> str | None:
        """Why this folder could not be watched, at the last try (then every poll stats)."""
        return self._watch.failed if self._watch is not None else "not watched"

    def entries(self) -> list[tuple[str, os.stat_result]]:
        """[(path, stat)] of the folder's state files now (caller holds the Watcher's lock)."""
        changed = self._watch.changes() if self._watch is not None else None
        if changed is None or not self.watched:
            self._rescan(forget_all=self.watched)
            self.version += 1
            return self._entries
        changed.update(self._links)
        dirty = False
        for name in changed:
            if name.endswith(".json"):
                self._restat(name)
                dirty = True
        if dirty:
            self._sort()
            self.version += 1
        return self._entries

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def _rescan(self, forget_all: bool) -> None:
        self._stats, self._links = {}, set()
        for name in statefiles.state_file_names(self.path):
            self._restat(name, forget=forget_all)
        self._sort()

    def _restat(self, name: str, forget: bool = True) -> None:
        path = join(self.path, name)
        if forget:
            self._forget(path)
        try:
            st = os.stat(path)
        except OSError:
            # vanished since the listing (or a dangling link): its absence is the change
            self._stats.pop(name, None)
            self._links.discard(name)
            return
        self._stats[name] = st
        # a symlink's target, or a hard link's other name, changes with no event here
        if self._watch is not None and (st.st_nlink > 1 or os.path.islink(path)):
            self._links.add(name)
        else:
            self._links.discard(name)

    def _sort(self) -> None:
        entries = [(join(self.path, name), self._stats[name]) for name in sorted(self._stats)]
        if _signatures(entries) != _signatures(self._entries):
            self.generation += 1
        self._entries = entries


def _signatures(entries: list[tuple[str, os.stat_result]]) -> list[tuple[str, _Signature]]:
    return [(path, statefiles.stat_signature(st)) for path, st in entries]


@dataclass(frozen=True)
class Snapshot:
    token: str
    seen: dict[str, list[tuple[str, os.stat_result]]]
    versions: dict[str, int]    # role ("server", "client") -> _Folder.version
    alive: dict[int, bool]      # pid -> the liveness answer the token was made with
    answers: bytes              # those answers in the order of the server files


class Watcher:
    """Computes change tokens for one launcher base; shared by all ops of an agent."""

    def __init__(self, ctx: AgentContext):
        # The agent's one parsed-state cache and one liveness cache: `ps` reads its rows
        # through them, so that a file event forgets what it parsed and a poll probes each
        # pid once for the token and the rows together.
        self.states = statefiles.StateCache()
        self.liveness = statefiles.LivenessCache()
        self._probe = self.liveness.alive
        watch = fswatch.available()
        self._folders = (("server", _Folder(str(ctx.server_dir), self._forget, watch)),
                         ("client", _Folder(str(ctx.client_dir), self._forget, watch)))
        self._inotify = watch
        # path -> (signature, pid or None): only re-read when the file changed
        self._pids: dict[str, tuple[_Signature, int | None]] = {}
        # the part of the token that only file events change: (generations, digest, server pids)
        self._static: tuple[tuple[int, ...], bytes, list[int | None]] = ((), b"", [])
        self._lock = threading.Lock()   # connections are served in parallel threads
        self._closed = threading.Event()

    @property
    def mode(self) -> str:
        """How the state folders are watched: "inotify" (only files with an event are
        stat-ed again) or "stat" (every file, every poll)."""
        if not self._inotify:
            return "stat"
        for _role, folder in self._folders:
            if folder.failed:
                return "stat"
        return "inotify"

    def token(self) -> str:
        """The current change token (a hex string)."""
        return self.scan()[0]

    def scan(self) -> tuple[str, dict[str, list[tuple[str, os.stat_result]]]]:
        """(token, {"server": [(path, stat)], "client": [...]}): the state files and their
        stats (re-stat-ed only where something changed, see _Folder), which `ps` reuses for
        its rows. Paths are plain strings: on a poll of hundreds of files pathlib would
        cost more than the stats."""
        snap = self.snapshot()
        return snap.token, snap.seen

    def snapshot(self) -> "Snapshot":
        """What `scan` returns, plus what `ps` keys its kept rows on: the folders' versions
        and the liveness answer for each server file's pid taken for the token."""
        with self._lock:
            seen = {role: folder.entries() for role, folder in self._folders}
            generations = tuple(folder.generation for _role, folder in self._folders)
            versions = {role: folder.version for role, folder in self._folders}
            if generations != self._static[0]:
                self._static = (generations, *self._files_digest(seen))
            static, pids = self._static[1], self._static[2]
        # liveness is no file event: probed on every scan (LivenessCache: at most TTL late)
        answers = [None if pid is None else self._probe(pid) for pid in pids]
        alive = bytes(2 if answer is None else answer for answer in answers)
        digest = hashlib.sha256(static + alive)
        return Snapshot(digest.hexdigest()[:TOKEN_HEX], seen, versions,
                        {pid: answer for pid, answer in zip(pids, answers) if pid is not None}, alive)

    def _files_digest(self, seen: dict[str, list[tuple[str, os.stat_result]]]) -> tuple[bytes, list[int | None]]:
        parts: list[str] = []
        pids: dict[str, tuple[_Signature, int | None]] = {}
        for role, entries in seen.items():
            for path, st in entries:
                sig = statefiles.stat_signature(st)
                parts.append(f"{role}/{os.path.basename(path)}\0{sig[0]},{sig[1]},{sig[2]},{sig[3]}\0")
                if role == "server":
                    self._pid(path, sig, pids)
        self._pids = pids
        digest = hashlib.sha256("".join(parts).encode("utf-8", "surrogateescape")).digest()
        return digest, [pid for _sig, pid in pids.values()]

    def _forget(self, path: str) -> None:
        """`path` changed (a file event): what was parsed from it is read again."""
        self.states.forget(path)
        self._pids.pop(path, None)

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
        with self._lock:
            for _role, folder in self._folders:
                folder.close()

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
