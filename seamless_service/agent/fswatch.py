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

`TreeWatch` watches many folders through one descriptor and only says whether anything
in any of them changed: the persistent op keeps a walk's rows until then. `LOCAL_FS`,
`mount_table()` and `fs_types()` tell where inotify can be trusted at all (not on a
network filesystem, where other machines' changes send no event).
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


def _open_inotify() -> tuple[Any, int, str | None]:
    """(libc, a new non-blocking inotify descriptor, None), or (libc, -1, why not)."""
    libc = _load()
    if not libc:
        return libc, -1, "inotify is not available"
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return libc, -1, f"inotify_init1: {os.strerror(ctypes.get_errno())}"
    return libc, fd, None


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
        remote = _not_local(ident[0])
        if remote:
            # e.g. a $HOME on NFS shared by login nodes: a state file written on another
            # node sends no event here, so every poll stats every file
            self.failed = remote
            return
        libc, fd, self.failed = _open_inotify()
        if fd < 0:
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
        events = _read_events(self._fd)
        if events is None:
            return None
        names: set[str] = set()
        for mask, name in events:
            if mask & LOST:
                return None
            if mask & self.mask and name:
                names.add(os.fsdecode(name))
        return names


def _read_events(fd: int) -> list[tuple[int, bytes]] | None:
    """Every queued event of inotify descriptor `fd` as (mask, name; b"" for the watched
    folder itself), or None if the descriptor cannot be read (look at everything)."""
    events: list[tuple[int, bytes]] = []
    while True:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return events
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            return None
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            start = offset + _EVENT.size
            events.append((mask, data[start:start + length].rstrip(b"\0")))
            offset = start + length
        if len(data) < _READ_SIZE - 4096:  # a short read: the queue is empty
            return events


class TreeWatch:
    """inotify on many folders through one descriptor, for an answer cached until anything
    in any of them changes (the persistent op's walk, agent/ops/persistent.py).

    `add(path)` watches a folder; call it *before* looking at the folder, so a change
    made while it is looked at is an event too. `changed()` is True once any event came
    for any watched folder (an entry created, deleted, renamed, written or chmod-ed; the
    folder itself chmod-ed, touched, deleted or moved; a queue overflow) or the watch
    cannot be read; it stays True: the owner drops the cached answer and `close()`s.
    What this cannot see, the owner checks itself: a *parent* of the top folder renamed or
    replaced (its inode), symlinks and hard links (their targets change elsewhere),
    mounts, and changes on a network filesystem made by another machine (`local_fs`)."""

    MASK = ENTRY_EVENTS | IN_DELETE_SELF | IN_MOVE_SELF

    def __init__(self) -> None:
        self.failed: str | None = None   # why inotify cannot be used, if it cannot
        self.watches = 0
        self._changed = False
        self._lock = threading.Lock()
        self._fd = -1
        _libc, self._fd, self.failed = _open_inotify() if available() else (None, -1, "inotify is not available")

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def add(self, path: str) -> bool:
        """Watch folder `path` (symlinks followed); False (and `failed` says why) if it
        cannot be watched: not a folder, gone, the user's inotify limits reached."""
        with self._lock:
            if self._fd < 0:
                return False
            if _load().inotify_add_watch(self._fd, os.fsencode(path), self.MASK | IN_ONLYDIR) < 0:
                self.failed = f"inotify_add_watch: {os.strerror(ctypes.get_errno())}"
                return False
            self.watches += 1
            return True

    def changed(self) -> bool:
        """Did anything change in a watched folder since it was added? (Drains the queue.)"""
        with self._lock:
            if not self._changed:
                events = _read_events(self._fd) if self._fd >= 0 else None
                self._changed = events is None or bool(events)
            return self._changed

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd, self._changed = -1, True


# Filesystems on which every change goes through this kernel, so inotify sees it. On a
# network or cluster filesystem (NFS, Lustre, GPFS, CIFS, FUSE mounts, ...) a change
# made by another machine sends no event here: answers are not cached there.
LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "zfs",
                      "f2fs", "jfs", "reiserfs", "bcachefs", "nilfs2", "vfat", "exfat"})
MOUNTINFO = "/proc/self/mountinfo"


def mount_table() -> bytes | None:
    """This process's mount table (compared before trusting a cached walk: a mount over a
    watched folder changes what is there without an event), None where there is none."""
    try:
        with open(MOUNTINFO, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _not_local(dev: int) -> str | None:
    """Why a folder on device `dev` cannot be trusted to inotify, or None if it can."""
    table = mount_table()
    fstype = fs_types(table).get(dev) if table is not None else None
    if fstype in LOCAL_FS:
        return None
    return f"on a {fstype or 'unknown'} filesystem: changes made by other machines send no event"


def fs_types(table: bytes) -> dict[int, str]:
    """st_dev -> filesystem type, from a mount table as `mount_table()` returns it."""
    types: dict[int, str] = {}
    for line in table.splitlines():
        fields = line.split()
        try:
            major, minor = fields[2].split(b":")
            fstype = fields[fields.index(b"-") + 1]
        except (IndexError, ValueError):
            continue
        types[os.makedev(int(major), int(minor))] = os.fsdecode(fstype)
    return types
