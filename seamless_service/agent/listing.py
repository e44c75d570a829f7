"""Directory listings cached by the directory's own change time.

`persistent` needs, for every directory it walks, whether it holds anything besides a
marker and which of its entries are subdirectories. A flat hashserver buffer directory
holds one file per buffer (100,000s), so listing it on every poll would cost tens of
milliseconds. Adding or removing an entry changes the directory's mtime/ctime, so a
listing is reused while (inode, mtime_ns, ctime_ns) are unchanged: a poll then costs
one stat per directory. A listing taken within the timestamp granularity of a change
(less than 2 s after the directory's mtime) is not trusted for reuse, so an entry added
in the same clock tick as the listing is never missed for long.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Listing:
    st: os.stat_result
    count: int                 # number of entries
    subdirs: tuple[str, ...]   # sorted names of entries that are directories (symlinks followed)


class DirListings:
    MAX_ENTRIES = 4096
    SETTLE_NS = 2_000_000_000

    def __init__(self, ctx: object = None):
        self._cache: OrderedDict[str, tuple[tuple[int, int, int], Listing]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, st: os.stat_result | None = None) -> Listing:
        """The listing of directory `path`; OSError if it cannot be listed."""
        st = st if st is not None else os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(path)
        sig = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            hit = self._cache.get(path)
            if hit is not None and hit[0] == sig:
                self._cache.move_to_end(path)
                return hit[1]
        count = 0
        subdirs = []
        with os.scandir(path) as entries:
            for entry in entries:
                count += 1
                try:
                    # d_type answers without a stat; symlinks are followed, as the helper's is_dir()
                    if entry.is_dir():
                        subdirs.append(entry.name)
                except OSError:
                    continue
        listing = Listing(st, count, tuple(sorted(subdirs)))
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > self.SETTLE_NS:
            with self._lock:
                self._cache[path] = (sig, listing)
                self._cache.move_to_end(path)
                while len(self._cache) > self.MAX_ENTRIES:
                    self._cache.popitem(last=False)
        return listing
