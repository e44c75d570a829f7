"""Another local user for attack tests: forked children that drop to OTHER_UID.

No passwd entry is needed: the kernel checks uids, and that is all the agent sees of a peer
(the owner of the peer socket). Needs root; tests skip without it.

A child cannot import anything after dropping privileges (it may not read the test's
Python installation), so every module it uses must be imported by the parent first.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - socket name resolution in the child
import json
import os
import socket
import struct
import time
from typing import Any, Callable

import pytest

OTHER_UID = 54_321


def needs_root() -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to switch to another uid")


def become_other_user() -> None:
    os.setgroups([])
    os.setgid(OTHER_UID)
    os.setuid(OTHER_UID)


def as_other_user(fn: Callable[[], Any]) -> Any:
    """Run fn() in a forked child that dropped to OTHER_UID; return its JSON-able result
    ({"crashed": repr} if it raised)."""
    return start_as_other_user(fn).result()


class OtherUserChild:
    """A forked child running as OTHER_UID; `result()` waits for its JSON-able answer."""

    def __init__(self, pid: int, read_fd: int):
        self.pid = pid
        self._read_fd = read_fd

    def result(self) -> Any:
        chunks = []
        while chunk := os.read(self._read_fd, 65536):
            chunks.append(chunk)
        os.close(self._read_fd)
        os.waitpid(self.pid, 0)
        return json.loads(b"".join(chunks) or b'{"crashed": "no answer"}')


def start_as_other_user(fn: Callable[[], Any]) -> OtherUserChild:
    """fn() in a forked child running as OTHER_UID, without waiting for it."""
    needs_root()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_fd)
            become_other_user()
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"crashed": repr(exc)}
        try:
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    return OtherUserChild(pid, read_fd)


def reset_flood(port: int, seconds: float) -> Callable[[], dict]:
    """A child body: connect to `port` and close with SO_LINGER 0 (an RST) as fast as
    possible for `seconds`; reports how many connections it made and how many failed."""
    linger = struct.pack("ii", 1, 0)

    def flood() -> dict:
        made = failed = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.settimeout(1.0)
                sock.connect(("127.0.0.1", port))
                made += 1
            except OSError:
                failed += 1
            finally:
                sock.close()
        return {"uid": os.getuid(), "made": made, "failed": failed}

    return flood
