"""Directory sizes measured in the background, served from a per-directory cache.

A poll must never wait for a walk of a million-file buffer directory, so `Sizer.size()`
only ever looks at the cache and a handful of `stat` calls:

* unknown directory -> a walk is queued; the answer is `pending` (no numbers yet);
* known directory   -> the cached numbers at once; `fresh` if nothing changed since the
  walk, else `stale` while a re-walk is queued (also on `refresh=True`);
* a walk that failed (directory gone, unreadable) -> `error` with the message.

Change detection is cheap and deliberately shallow: the walk records the mtime of the
directory itself and of its subdirectories down to `track_depth` (2: hashserver buffer
dirs are flat or hold 2-char prefix dirs, and a project dir holds STAGE-x dirs holding
prefix dirs), capped at `max_tracked`, plus size and mtime of the top-level files when
there are few (a database dir: `seamless.db` grows in place without touching any
directory mtime). A check re-stats exactly those paths; no listing. A change below that
depth, or beyond the caps, is caught by `max_age` (or an explicit refresh). A check runs
at most every `recheck_interval` seconds per directory.

After a `clear`, `forget_below(path)` drops what is known of the cleared directory and
everything below it, marks the directories above it (whose totals included it) for a
re-walk, and re-measures the cleared directory at once (inline, given up beyond
SMALL_ENTRIES entries): the next poll says 0 B, fresh, not the old size.

"Racily clean" guard (as git does it): a timestamp that was already within
`racy_window` of the walk's start may hide a later change in the same timestamp tick
(kernel timestamps are coarse), so such a measurement is re-done at the next check.

One worker thread walks, from a bounded queue with de-duplication. The walk is
iterative (`os.scandir`, breadth first: no recursion limit), never follows symlinks
(so a symlink loop cannot trap it; a bind-mount loop is cut by a (dev, inode) set),
counts the apparent size (`st_size`) of regular files, skips entries that vanish
mid-walk and counts subdirectories it cannot read (`skipped`). The cache is an LRU
bounded by `max_entries`; each entry keeps its tracked paths as one joined string.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .background import KeyedWorker, WorkerStopped

MAX_ENTRIES = 4096
MAX_QUEUE = 1024
MAX_TRACKED = 1024          # subdirectory mtimes recorded per directory
MAX_TRACKED_FILES = 64      # top-level files whose size/mtime are recorded (only if no more)
TRACK_DEPTH = 2
MAX_AGE = 3600.0            # re-walk anything older than this, changed or not
RECHECK_INTERVAL = 1.0      # at most one change check per directory per interval
RACY_WINDOW = 2.0           # seconds; covers 1 s timestamp granularity with margin
ERROR_RETRY = 60.0          # a failed walk is retried after this long
STOP_CHECK_EVERY = 4096     # entries between checks of the stop flag during a walk
SMALL_ENTRIES = 256         # a cleared directory is re-measured inline up to this many entries
_SEP = "\0"                 # joins tracked relative paths (cannot occur in a file name)


class WalkStopped(WorkerStopped):
    """The sizer is closing; the walk was abandoned."""


class TooManyEntries(Exception):
    """An inline walk met more entries than it may read; the background worker takes over."""


@dataclass(frozen=True)
class Measurement:
    bytes: int
    files: int
    skipped: int          # subdirectories that could not be read
    tracked: str          # relative paths whose stat values make up the signature
    signature: int        # hash of those stat values at walk time
    racy: bool            # a tracked timestamp was too close to the walk's start
    entries: int = 0      # directory entries the walk read (all kinds)


@dataclass(frozen=True)
class _Entry:
    measurement: Measurement | None
    measured: float           # epoch of the walk's start (or of the failed attempt)
    error: str | None = None
    checked: float = 0.0      # monotonic time of the last change check


def _stat_values(st: os.stat_result, with_size: bool) -> tuple:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size if with_size else 0)


def signature_of(root: str, tracked: str) -> int | None:
    """Hash of the current stat values of the tracked paths; None if the root is gone.

    `tracked` lists tagged relative paths: "d:" a directory, "f:" a file (its size counts
    too). The root ("d:") is stat'ed through a symlink, everything else with lstat, as in
    the walk.
    """
    values: list[Any] = []
    for item in tracked.split(_SEP) if tracked else ():
        is_file = item.startswith("f:")
        rel = item[2:]
        try:
            st = os.stat(root) if rel == "" else os.lstat(os.path.join(root, rel))
        except OSError:
            if rel == "":
                return None
            values.append(None)
            continue
        values.append(_stat_values(st, is_file))
    return hash(tuple(values))


def measure(root: str, stop: threading.Event | None = None, *, track_depth: int = TRACK_DEPTH,
            max_tracked: int = MAX_TRACKED, racy_window: float = RACY_WINDOW,
            max_entries: int | None = None) -> Measurement:
    """Walk `root` (symlinks not followed below it); OSError if the root itself is unusable,
    TooManyEntries once more than `max_entries` entries were read."""
    start_ns = time.time_ns()
    racy_ns = start_ns - int(racy_window * 1e9)
    top = os.stat(root)
    if not stat.S_ISDIR(top.st_mode):
        raise NotADirectoryError(f"not a directory: {root}")
    tracked: list[str] = ["d:"]  # "d:" + relative dir path ("" = the root), "f:" + file name
    values: list[Any] = [_stat_values(top, False)]
    racy = top.st_mtime_ns >= racy_ns
    seen = {(top.st_dev, top.st_ino)}
    total = files = skipped = seen_entries = 0
    top_files: list[tuple[str, os.stat_result]] = []
    pending: collections.deque[tuple[str, str, int]] = collections.deque([(root, "", 0)])
    while pending:
        path, rel, depth = pending.popleft()
        try:
            iterator = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError):
            if depth == 0:
                raise
            continue  # vanished since it was listed
        except OSError:
            if depth == 0:
                raise
            skipped += 1
            continue
        with iterator:
            for entry in iterator:
                seen_entries += 1
                if max_entries is not None and seen_entries > max_entries:
                    raise TooManyEntries(root)
                if stop is not None and seen_entries % STOP_CHECK_EVERY == 0 and stop.is_set():
                    raise WalkStopped()
                try:
                    if entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        ident = (st.st_dev, st.st_ino)
                        if ident in seen:
                            continue
                        seen.add(ident)
                        child_rel = entry.name if not rel else rel + "/" + entry.name
                        if depth + 1 <= track_depth and len(tracked) <= max_tracked:
                            tracked.append("d:" + child_rel)
                            values.append(_stat_values(st, False))
                            racy = racy or st.st_mtime_ns >= racy_ns
                        pending.append((entry.path, child_rel, depth + 1))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        total += st.st_size
                        files += 1
                        if depth == 0 and len(top_files) <= MAX_TRACKED_FILES:
                            top_files.append((entry.name, st))
                    # symlinks, sockets, fifos, devices: not followed, not counted
                except FileNotFoundError:
                    continue  # vanished mid-walk
                except OSError:
                    skipped += 1
    if len(top_files) <= MAX_TRACKED_FILES:  # few files: a DB dir; track them (grow in place)
        for name, st in top_files:
            tracked.append("f:" + name)
            values.append(_stat_values(st, True))
            racy = racy or st.st_mtime_ns >= racy_ns
    return Measurement(total, files, skipped, _SEP.join(tracked), hash(tuple(values)), racy, seen_entries)


class Sizer:
    """Background directory sizer with a per-directory cache (see module doc)."""

    def __init__(self, ctx: Any = None, *, max_entries: int = MAX_ENTRIES, max_queue: int = MAX_QUEUE,
                 max_age: float = MAX_AGE, recheck_interval: float = RECHECK_INTERVAL,
                 walker: Callable[[str, threading.Event], Measurement] | None = None):
        self.max_entries = max_entries
        self._realpaths: dict[str, tuple[float, str]] = {}
        self.max_age = max_age
        self.recheck_interval = recheck_interval
        self.walks = 0                      # completed walks (successful or failed)
        self._walker = walker or measure
        self._cache: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._worker = KeyedWorker("seamless-service-sizer", self._lock, self._walk, max_queue=max_queue)

    # -- public -----------------------------------------------------------------------

    def size(self, path: str, refresh: bool = False) -> dict[str, Any]:
        """Cached size of directory `path`; never waits for a walk."""
        key = self._realpath(path)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
            busy = key in self._worker.queued
        if entry is None:
            if not busy:
                self._schedule(key)
            return _result(None, "pending")
        if busy:
            return _result(entry, "stale" if entry.measurement else "pending")
        if refresh or self._outdated(key, entry):
            scheduled = self._schedule(key)
            if entry.measurement is None:
                return _result(entry, "pending" if scheduled else "error")
            return _result(entry, "stale")
        return _result(entry, "error" if entry.error else "fresh")

    def forget_below(self, path: str, *, quiet: bool = True) -> None:
        """`path` was just emptied (a clear): drop what is known of it and of the directories
        below it, mark those above it (their totals included it) for a re-walk, and
        measure `path` itself at once if it is small now. `quiet`: nothing else writes
        there (clear refuses while a service runs in it), so the timestamps the clear
        itself just set are trusted (no racy re-walk at the next check)."""
        self._realpaths.clear()
        key = os.path.realpath(path)
        inside = key.rstrip("/") + "/"
        with self._lock:
            for known in list(self._cache):
                if known == key or known.startswith(inside):
                    del self._cache[known]
                elif inside.startswith(known.rstrip("/") + "/"):
                    entry = self._cache[known]
                    if entry.measurement is not None:  # racy: re-walked at its next check
                        stale = dataclasses.replace(entry.measurement, racy=True)
                        self._cache[known] = _Entry(stale, entry.measured, entry.error, 0.0)
        self._measure_small(key, racy_window=0.0 if quiet else RACY_WINDOW)

    def _measure_small(self, key: str, racy_window: float) -> _Entry | None:
        """Walk `key` inline if it holds at most SMALL_ENTRIES entries; store and return the
        entry (None: larger, unusable, or the sizer has a custom walker)."""
        if self._walker is not measure:
            return None
        started = time.time()
        try:
            measurement = measure(key, max_entries=SMALL_ENTRIES, racy_window=racy_window)
        except (OSError, TooManyEntries):
            return None
        entry = _Entry(measurement, started, checked=time.monotonic())
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return entry

    def _realpath(self, path: str) -> str:
        # realpath lstats every component; a poll asks for the same directories each time,
        # so remember the answer briefly (a symlink swapped under a data dir shows 10 s late).
        now = time.monotonic()
        hit = self._realpaths.get(path)
        if hit is not None and now - hit[0] < 10.0:
            return hit[1]
        real = os.path.realpath(path)
        if len(self._realpaths) > 8192:
            self._realpaths.clear()
        self._realpaths[path] = (now, real)
        return real

    def wait_idle(self, timeout: float) -> bool:
        """Block until no walk is queued or running (tests, shutdown); False on timeout."""
        return self._worker.wait_idle(timeout)

    def close(self) -> None:
        """Stop the worker (an unfinished walk is abandoned)."""
        self._worker.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    # -- internals --------------------------------------------------------------------

    def _outdated(self, key: str, entry: _Entry) -> bool:
        now = time.time()
        if entry.measurement is None:  # last walk failed
            return now - entry.measured >= ERROR_RETRY
        if now - entry.measured >= self.max_age:
            return True
        mono = time.monotonic()
        if mono - entry.checked < self.recheck_interval:
            return False
        m = entry.measurement
        changed = m.racy or signature_of(key, m.tracked) != m.signature
        with self._lock:
            if not changed and self._cache.get(key) is entry:
                self._cache[key] = _Entry(entry.measurement, entry.measured, entry.error, mono)
        return changed

    def _schedule(self, key: str) -> bool:
        # False when closing or the queue is full: the next call asks again, and the
        # answer stays pending/stale meanwhile
        with self._lock:
            return self._worker.submit_locked(key)

    def _walk(self, key: str, stop: threading.Event) -> Callable[[], None]:
        """The worker's job: walk `key` (no lock held); the returned commit stores it."""
        started = time.time()
        try:
            entry = _Entry(self._walker(key, stop), started)
        except WorkerStopped:
            raise
        except OSError as exc:
            entry = _Entry(None, started, error=f"{type(exc).__name__}: {exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - a walker bug must not kill the worker
            entry = _Entry(None, started, error=f"{type(exc).__name__}: {exc}")

        def commit() -> None:
            current = self._cache.get(key)
            if current is not None and current.measured > started:
                return  # measured inline meanwhile (forget_below after a clear): newer
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
            self.walks += 1

        return commit


def _result(entry: _Entry | None, state: str) -> dict[str, Any]:
    m = entry.measurement if entry is not None else None
    out: dict[str, Any] = {
        "bytes": m.bytes if m else None,
        "files": m.files if m else None,
        "measured": entry.measured if entry is not None else None,
        "state": state,
    }
    if m is not None and m.skipped:
        out["skipped"] = m.skipped
    if entry is not None and entry.error and m is None:
        out["error"] = entry.error
    return out
