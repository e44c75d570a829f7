"""Another local user, for tests that replay an attack by one user on another's files,
sockets and agent.

- `OTHER_UID`, `unused_uid()`: uids with no account (the kernel checks uids, not names:
  that is all the agent sees of a peer, the owner of the peer socket).
- `local_user()`: a real throwaway account (useradd, removed by userdel), so that refusal
  messages can name it as they would name a real attacker.
- `as_other_user(fn)`, `as_user(uid, gid, fn)`, `start_as_other_user(fn)`: fn() in a forked
  child that dropped to that uid; its JSON-able result.
- `reset_flood(port, seconds)`: a child body flooding a port with connect + RST.
- `ForeignListener`: a unix socket served by another user in a forked child, which counts
  the connections and bytes it receives and answers whatever it gets with a fake reply.

Needs root; tests skip without it. A forked child cannot import anything after dropping
privileges (it may not read the test's Python installation), so every module it uses must
be imported by the parent first.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401 - socket name resolution in the child
import json
import os
import pwd
import secrets
import select
import socket
import struct
import subprocess
import time
from typing import Any, Callable, Iterator

import pytest

OTHER_UID = 54_321
USER_COMMENT = "seamless-service test attacker"


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")


def unused_uid() -> int:
    for uid in range(OTHER_UID, 60000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise RuntimeError("no free uid")


@contextlib.contextmanager
def local_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway local account without home or login shell, removed afterwards."""
    needs_root()
    name = "ssa" + secrets.token_hex(4)  # short: useradd limits names to 32 chars
    result = subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
         "--user-group", "--comment", USER_COMMENT, name],
        capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"useradd {name} failed ({result.returncode}): {result.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        # userdel refuses (exit 8) while a just-ended process of the user is not yet reaped.
        deadline = time.monotonic() + 10
        while subprocess.run(["userdel", name], capture_output=True, timeout=60).returncode == 8:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)


def _drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def become_other_user() -> None:
    """In a forked child: drop to OTHER_UID for good."""
    _drop_to(OTHER_UID, OTHER_UID)


def as_other_user(fn: Callable[[], Any]) -> Any:
    """Run fn() in a forked child that dropped to OTHER_UID; return its JSON-able result
    ({"crashed": repr} if it raised)."""
    return start_as_other_user(fn).result()


class OtherUserChild:
    """A forked child running as another uid; `result()` waits for its JSON-able answer."""

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


def start_as_other_user(fn: Callable[[], Any], uid: int = OTHER_UID, gid: int | None = None) -> OtherUserChild:
    """fn() in a forked child running as `uid` (default OTHER_UID), without waiting for it."""
    needs_root()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_fd)
            _drop_to(uid, uid if gid is None else gid)
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


def as_user(uid: int, gid: int, fn: Callable[[], Any]) -> Any:
    """fn() run in a forked child as uid/gid; its JSON-able result, or {"crashed": repr}."""
    return start_as_other_user(fn, uid, gid).result()


class HeldChild:
    """A forked child running `body(status_w, release_r)` as uid/gid, held until close().

    The body writes progress lines to `status_w` and returns a JSON-able report, which is
    written as the last status line; then the child waits until the parent closes its end
    of the release pipe (so what the body opened stays open meanwhile) and exits."""

    def __init__(self, uid: int, gid: int, body: Callable[[int, int], dict[str, Any]]):
        needs_root()
        status_r, status_w = os.pipe()
        release_r, release_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: plain syscalls only, never return into pytest
            try:
                os.close(status_r)
                os.close(release_w)
                _drop_to(uid, gid)
                report = body(status_w, release_r)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                report = {"crashed": repr(exc)}
            try:
                os.write(status_w, json.dumps(report).encode() + b"\n")
                os.close(status_w)
                os.read(release_r, 1)
            finally:
                os._exit(0)
        os.close(status_w)
        os.close(release_r)
        self.pid = pid
        self.status = os.fdopen(status_r, "rb")
        self._release: int | None = release_w

    def release(self) -> None:
        """Let the child exit and reap it (its report line stays readable)."""
        if self._release is None:
            return
        os.close(self._release)
        self._release = None
        os.waitpid(self.pid, 0)


class ForeignListener:
    """Another user's process listening on the unix socket `path` (mode 0666), until close().

    Each connection is read until the client closes it or stays quiet for a second; the
    first bytes received are answered with `reply`. `report()` (after close()) says how
    many connections came and how many bytes they sent."""

    def __init__(self, uid: int, gid: int, path: str, reply: bytes = b""):
        def serve(status_w: int, release_r: int) -> dict[str, Any]:
            report: dict[str, Any] = {"connections": 0, "received": 0, "uid": os.getuid()}
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(path)
            os.chmod(path, 0o666)
            server.listen(8)
            os.write(status_w, b"ready\n")
            while True:
                ready, _, _ = select.select([server, release_r], [], [])
                if release_r in ready:
                    return report
                conn, _ = server.accept()
                report["connections"] += 1
                report["received"] += self._serve(conn, reply)

        self._child = HeldChild(uid, gid, serve)
        self._report: dict[str, Any] | None = None
        line = self._child.status.readline()
        if line != b"ready\n":
            self.close()
            raise RuntimeError(f"the foreign listener did not start: {line.decode(errors='replace').strip()}")

    @staticmethod
    def _serve(conn: socket.socket, reply: bytes) -> int:
        got = 0
        conn.settimeout(1.0)
        try:
            while chunk := conn.recv(65536):
                if not got and reply:
                    conn.sendall(reply)
                got += len(chunk)
        except OSError:
            pass
        conn.close()
        return got

    def close(self) -> None:
        if self._report is not None:
            return
        self._child.release()   # the serve loop sees the release pipe close and reports
        line = self._child.status.readline()
        self._child.status.close()
        self._report = json.loads(line) if line else {"crashed": "no report"}

    def report(self) -> dict[str, Any]:
        self.close()
        assert self._report is not None
        return self._report

    def __enter__(self) -> "ForeignListener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
