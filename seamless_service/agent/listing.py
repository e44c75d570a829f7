"""Directory listings cached by the directory's own change time.

`persistent` needs, for every directory it walks, whether it holds anything besides a
marker and, above the deepest level of the walk, which of its entries are
subdirectories. A flat hashserver buffer directory holds one file per buffer (100,000s)
and gains files all the time, so a poll must never wait for a full listing of it:

* Reuse. Adding or removing an entry changes the directory's mtime/ctime, so a listing
  is reused while (inode, mtime_ns, ctime_ns) are unchanged: a poll then costs one stat
  per directory. A listing taken within the timestamp granularity of a change (less
  than 2 s after the directory's mtime) is kept but not "settled": it is not trusted
  for reuse, so an entry added in the same clock tick as the listing is never missed
  for long.
* Early stop (`populated`). Where only emptiness matters (the deepest level of the walk),
  the scan stops at the first entry that is not the marker: at most 2 entries are read,
  whatever the directory's size. The helper's own test is exactly that
  (`any(child.name != marker ...)`).
* Background relisting (`get`). A directory whose previous full listing was large
  (> `LARGE` entries) and that changed since (same inode) is answered at once from that
  previous listing, marked `stale`, and relisted by one background worker
  (de-duplicated, bounded queue, at most one relist per directory per
  `THROTTLE` x the last relist's duration, so a directory that changes all the time
  costs a bounded share of one core; the relist also pauses briefly every
  `YIELD_EVERY` entries, so a poll waiting for the GIL gets it at once instead of after
  the interpreter's 5 ms switch interval). Its subdirectory list may thus lag by one
  relisting; whether it is empty the caller decides with `populated` (cheap, exact).
  Small directories are relisted synchronously, and a first listing (or a directory
  replaced by a new inode) is always synchronous, so results for directories that do
  not change are exactly those of a fresh listing.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from .background import KeyedWorker, WorkerStopped

LARGE = 5_000          # entries; a changed directory listed larger than this is relisted in the background
THROTTLE = 4.0         # a directory is relisted in the background at most every THROTTLE x its last relist time
MAX_QUEUE = 256
YIELD_EVERY = 1024     # entries (~0.5 ms) between stop checks and GIL yields of a background relist
YIELD_FOR = 0.0002     # seconds it pauses there (~0.25 s per million entries)


class ListingStopped(WorkerStopped):
    """The listing cache is closing; a background relist was abandoned."""


@dataclass(frozen=True)
class Listing:
    st: os.stat_result
    count: int                        # entries read: all of them when `subdirs` is not None
    first: tuple[str, ...]            # names of the first (at most 2) entries read
    subdirs: tuple[str, ...] | None   # sorted names of entries that are directories (symlinks
                                      # followed); None: a partial listing (stopped early)
    links: frozenset[str] = frozenset()   # those of `subdirs` that are symlinks
    complete: bool = True             # every entry was read
    stale: bool = False               # the directory changed since; a relist is pending

    def populated(self, ignore: str | None) -> bool | None:
        """Is there an entry not named `ignore`? None if this listing cannot tell."""
        if any(name != ignore for name in self.first):
            return True  # two distinct names include one that is not `ignore`
        return False if self.complete else None


@dataclass
class _Cached:
    sig: tuple[int, int, int]
    listing: Listing
    settled: bool
    not_before: float = 0.0   # monotonic; no background relist before this


def _dir_sig(path: str, st: os.stat_result | None) -> tuple[os.stat_result, tuple[int, int, int]]:
    """(stat, signature) of directory `path`; OSError (NotADirectoryError) otherwise."""
    st = st if st is not None else os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(path)
    return st, _sig(st)


def _sig(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _settled(st: os.stat_result) -> bool:
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > DirListings.SETTLE_NS


class DirListings:
    MAX_ENTRIES = 4096
    SETTLE_NS = 2_000_000_000

    def __init__(self, ctx: object = None, *, large: int = LARGE, throttle: float = THROTTLE,
                 max_queue: int = MAX_QUEUE):
        self.large = large
        self.throttle = throttle
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        self._worker = KeyedWorker("seamless-service-lister", self._lock, self._relist, max_queue=max_queue)
        # introspection (tests, benchmarks)
        self.entries_read = 0       # directory entries read by all scans
        self.full_scans = 0         # synchronous full listings (a poll waited for them)
        self.partial_scans = 0      # early-stopped scans
        self.background_scans = 0   # full listings by the background worker
        self.stale_answers = 0      # answers from a previous listing (relist pending or throttled)

    # -- public -----------------------------------------------------------------------

    def get(self, path: str, st: os.stat_result | None = None) -> Listing:
        """The full listing of directory `path` (possibly `stale`, see module doc); OSError if
        it cannot be listed."""
        st, sig = _dir_sig(path, st)
        with self._lock:
            hit = self._cache.get(path)
            if hit is not None and hit.listing.subdirs is not None:
                if hit.sig == sig and hit.settled:
                    self._cache.move_to_end(path)
                    return hit.listing
                if hit.listing.count > self.large and hit.sig[0] == sig[0]:
                    # Populated either way, and a full relist costs ~1 s per million entries:
                    # answer from the previous listing, relist in the background.
                    self._cache.move_to_end(path)
                    if self._request(path, hit):
                        self.stale_answers += 1
                        return dataclasses.replace(hit.listing, stale=True)
        listing = self._scan(path, st, full=True)
        self._store(path, sig, listing, _settled(st))
        with self._lock:
            self.full_scans += 1
        return listing

    def populated(self, path: str, st: os.stat_result | None = None, ignore: str | None = None) -> bool:
        """Does directory `path` hold an entry not named `ignore`? Reads at most 2 entries
        (or answers from a listing still valid). OSError if it cannot be listed."""
        st, sig = _dir_sig(path, st)
        with self._lock:
            hit = self._cache.get(path)
            if hit is not None and hit.sig == sig and hit.settled:
                answer = hit.listing.populated(ignore)
                if answer is not None:
                    return answer
        listing = self._scan(path, st, full=False, ignore=ignore)
        with self._lock:
            self.partial_scans += 1
            current = self._cache.get(path)
        if current is None or current.listing.subdirs is None:  # never replace a full listing
            self._store(path, sig, listing, _settled(st))
        answer = listing.populated(ignore)
        assert answer is not None
        return answer

    def state(self, path: str) -> dict | None:
        """What the cache holds for `path` (tests, diagnostics)."""
        with self._lock:
            hit = self._cache.get(path)
            pending = path in self._worker.queued
        if hit is None:
            return None if not pending else {"pending": True}
        lst = hit.listing
        return {"count": lst.count, "full": lst.subdirs is not None, "subdirs": lst.subdirs,
                "settled": hit.settled, "pending": pending}

    def forget_below(self, path: str) -> None:
        """Drop the listings of `path` and of every directory below it (just cleared): a
        large one would otherwise be answered from its old listing while relisted."""
        inside = path.rstrip("/") + "/"
        with self._lock:
            for known in [k for k in self._cache if k == path or k.startswith(inside)]:
                del self._cache[known]

    def wait_idle(self, timeout: float) -> bool:
        """Block until no background relist is queued or running; False on timeout."""
        return self._worker.wait_idle(timeout)

    def close(self) -> None:
        """Stop the background worker (an unfinished relist is abandoned)."""
        self._worker.close()

    # -- internals --------------------------------------------------------------------

    def _scan(self, path: str, st: os.stat_result, *, full: bool, ignore: str | None = None,
              stop: threading.Event | None = None) -> Listing:
        count = 0
        first: list[str] = []
        subdirs: list[str] = []
        links: list[str] = []
        complete = True
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    count += 1
                    if count <= 2:
                        first.append(entry.name)
                    if not full:
                        if entry.name != ignore:
                            complete = False  # emptiness decided: stop here
                            break
                        continue
                    if stop is not None and count % YIELD_EVERY == 0:
                        if stop.is_set():
                            raise ListingStopped()
                        time.sleep(YIELD_FOR)
                    try:
                        # d_type answers without a stat; symlinks are followed, as the helper's is_dir()
                        if entry.is_dir():
                            subdirs.append(entry.name)
                            if entry.is_symlink():
                                links.append(entry.name)
                    except OSError:
                        continue
        finally:
            with self._lock:
                self.entries_read += count
        if not full:
            return Listing(st, count, tuple(first), None, complete=complete)
        return Listing(st, count, tuple(first), tuple(sorted(subdirs)), frozenset(links))

    def _store(self, path: str, sig: tuple[int, int, int], listing: Listing, settled: bool,
               not_before: float = 0.0) -> None:
        with self._lock:
            self._store_locked(path, sig, listing, settled, not_before)

    def _store_locked(self, path: str, sig: tuple[int, int, int], listing: Listing, settled: bool,
                      not_before: float = 0.0) -> None:
        self._cache[path] = _Cached(sig, listing, settled, not_before)
        self._cache.move_to_end(path)
        while len(self._cache) > self.MAX_ENTRIES:
            self._cache.popitem(last=False)

    def _request(self, path: str, hit: _Cached) -> bool:
        """Queue a background relist of `path` (lock held). False if it cannot be queued
        (closing, queue full): the caller then lists synchronously."""
        if path in self._worker.queued or time.monotonic() < hit.not_before:
            return True  # pending, or relisted a moment ago: the previous listing stands
        return self._worker.submit_locked(path)

    def _relist(self, path: str, stop: threading.Event) -> Callable[[], None]:
        """The worker's job: list `path` in full (no lock held); the commit stores it."""
        started = time.monotonic()
        try:
            st = os.stat(path)
            listing = self._scan(path, st, full=True, stop=stop)
        except (OSError, ValueError):
            # gone or unreadable: forget it; the next poll lists (or reports) it synchronously
            return lambda: self._cache.pop(path, None)
        took = time.monotonic() - started

        def commit() -> None:
            self._store_locked(path, _sig(st), listing, _settled(st), time.monotonic() + self.throttle * took)
            self.background_scans += 1

        return commit
