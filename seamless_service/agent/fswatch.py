"""Which entries of a folder may have changed since the last look: Linux inotify through
ctypes, so that a poll re-stats only those instead of every state file.

`FolderWatch(path).changes()` returns the names that had an event since the previous
call, or None when the caller must look at everything again: the first call, a queue
overflow (IN_Q_OVERFLOW: the kernel dropped events), the folder itself deleted, moved or
replaced by another one (checked by inode on every call, since renaming a *parent* sends
the watched folder no event), or the watch could not be made (not Linux, no libc
symbol, the user's inotify limits reached). `available()` says whether inotify can be used
at all; `SEAMLESS_SERVICE_FSWATCH=stat` turns it off (to compare, or to rule it out).

The events are those that change what `ps` shows of a file: created, deleted, renamed in
or out, written (IN_MODIFY and IN_CLOSE_WRITE: an in-place rewrite that keeps size,
inode and timestamp tick is seen too), attributes changed (IN_ATTRIB: a chmod makes a
file unreadable). Liveness of a pid is no file event: callers keep probing it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from typing import Any

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000

# what a state file's row depends on
ENTRY_EVENTS = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
# after these the watch says nothing more about the path: look at everything again
LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_Q_OVERFLOW | IN_IGNORED

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of the name, NUL-padded)
_READ_SIZE = 1 << 16
_ENV = "SEAMLESS_SERVICE_FSWATCH"

_libc_lock = threading.Lock()
_libc: Any = None   # False once known to be unusable


def _load() -> Any:
    global _libc
    with _libc_lock:
        if _libc is None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.inotify_init1.argtypes = [ctypes.c_int]
                libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
                _libc = libc
            except (OSError, AttributeError):  # not Linux / a libc without inotify
                _libc = False
        return _libc


def available() -> bool:
    """inotify can be tried here (it may still fail per folder: limits)."""
    if os.environ.get(_ENV, "").strip().lower() == "stat":
        return False
    return bool(_load())


class FolderWatch:
    """inotify on one folder (the path, followed to its current inode on every call)."""

    def __init__(self, path: str, mask: int = ENTRY_EVENTS):
        self.path = path
        self.mask = mask
        self._fd = -1
        self._ident: tuple[int, int] | None = None   # (st_dev, st_ino) of the folder watched
        self._lock = threading.Lock()
        self.rescans = 0      # times changes() said "everything" (tests, diagnostics)
        self.failed: str | None = None   # why inotify could not be used, if it could not

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def changes(self) -> set[str] | None:
        """Names with an event since the last call, or None: look at everything (and the
        watch is (re)made now, before the caller looks, so nothing falls in between)."""
        with self._lock:
            try:
                st = os.stat(self.path)
                ident = (st.st_dev, st.st_ino)
            except OSError:
                ident = None
            if self._fd < 0 or ident is None or ident != self._ident:
                self._rewatch(ident)
                return None
            names = self._drain()
            if names is None:
                self._rewatch(ident)
            return names

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    # -- internals ----------------------------------------------------------------

    def _rewatch(self, ident: tuple[int, int] | None) -> None:
        self.rescans += 1
        self._close_fd()
        if ident is None:
            return  # no folder yet: the caller lists nothing and asks again next time
        libc = _load()
        if not libc:
            self.failed = "inotify is not available"
            return
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            self.failed = f"inotify_init1: {os.strerror(ctypes.get_errno())}"
            return
        if libc.inotify_add_watch(fd, os.fsencode(self.path), self.mask | IN_ONLYDIR) < 0:
            self.failed = f"inotify_add_watch: {os.strerror(ctypes.get_errno())}"
            os.close(fd)
            return
        self._fd, self._ident, self.failed = fd, ident, None
        try:  # the folder may have been swapped between the stat and the watch
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != ident:
                self._ident = None   # the next call rewatches
        except OSError:
            self._ident = None

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ident = -1, None

    def _drain(self) -> set[str] | None:
        names: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return names
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return None
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                if mask & LOST:
                    return None
                start = offset + _EVENT.size
                if mask & self.mask and length:
                    names.add(os.fsdecode(data[start:start + length].rstrip(b"\0")))
                offset = start + length
            if len(data) < _READ_SIZE - 4096:  # a short read: the queue is empty
                return names
