"""Linux inotify through ctypes, for attackers that must act at a precise moment of an
agent's work (e.g. right after it opened a directory), not at a lucky one.

Usable in a forked child that dropped privileges: libc is loaded here, by the parent,
and the child needs no further import.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

IN_OPEN = 0x00000020
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


class Watcher:
    """An inotify instance watching `paths` for `mask`; `fd` can be select()ed."""

    def __init__(self, paths: list[str], mask: int = IN_OPEN):
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self.names: dict[int, str] = {}
        for path in paths:
            wd = _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask), f"inotify_add_watch {path}")
            self.names[wd] = path

    def events(self) -> list[tuple[str, int, str]]:
        """The events queued now: (watched path, mask, name within it)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return []
            raise
        out = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
            out.append((self.names.get(wd, "?"), mask, name))
            offset += _EVENT.size + length
        return out

    def close(self) -> None:
        os.close(self.fd)
