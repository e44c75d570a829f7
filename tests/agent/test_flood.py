"""Floods of silent connections cannot lock the owner out of the agent, nor grow its log
without limit: another user's connections are closed before they take a handshake slot
(their owner is looked up in the kernel's socket table), refusals are logged at most ~10
times a minute, and even the owner's own silent connections give up their slots when a
new connection needs one."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import pytest

from seamless_service.agent.auth import EVICT_AFTER, MAX_PENDING, REFUSAL_LOG_LIMIT
from seamless_service.agent.peercred import _ip, _proc_uid, peer_uid
from seamless_service.protocol import auth as pauth
from tests.support.agent import end_agent, owner_is_served, settled_log
from tests.support.other_user import OTHER_UID, HeldChild, become_other_user, needs_root

HANDSHAKE_TIMEOUT = pauth.HANDSHAKE_TIMEOUT  # the agents here use the default (5 s)


def _drain(sock: socket.socket, deadline: float) -> tuple[int, bool]:
    """(bytes received, closed by the peer) reading until EOF or `deadline`; never sends."""
    got = 0
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                return got, True
            got += len(chunk)
    except (ConnectionResetError, BrokenPipeError):
        return got, True
    except OSError:  # socket.timeout
        pass
    return got, False


class ForeignFlood:
    """A forked child running as OTHER_UID: opens `count` silent connections to `port` in
    batches of `batch`, holding each batch while it watches what the agent does with it
    (reads until EOF, sends nothing). The child keeps its last batch open until close()."""

    def __init__(self, port: int, count: int, batch: int, watch: float = 3.0):
        def flood(status_w: int, _release_r: int) -> dict:
            report: dict = {"uid": os.getuid(), "received": [], "closed": [], "eof_after": []}
            held: list[socket.socket] = []
            for first in range(0, count, batch):
                for sock in held:
                    sock.close()
                opened = []
                for _ in range(min(batch, count - first)):
                    opened.append((socket.create_connection(("127.0.0.1", port), timeout=10),
                                   time.monotonic()))
                held = [sock for sock, _ in opened]
                if first == 0:
                    os.write(status_w, b"open\n")  # the first batch is connected and silent
                for sock, since in opened:
                    got, closed = _drain(sock, since + watch)
                    report["received"].append(got)
                    report["closed"].append(closed)
                    report["eof_after"].append(time.monotonic() - since)
            return report   # the last batch stays open until close()

        self._child = HeldChild(OTHER_UID, OTHER_UID, flood)

    def wait_open(self) -> None:
        assert self._child.status.readline() == b"open\n", "the foreign child could not connect"

    def report(self) -> dict:
        line = self._child.status.readline()
        assert line, "the foreign child died without a report"
        report = json.loads(line)
        assert "crashed" not in report, report
        assert report["uid"] == OTHER_UID
        return report

    def close(self) -> None:
        self._child.release()
        self._child.status.close()


def test_other_users_silent_connections_do_not_lock_the_owner_out(agent):
    count = MAX_PENDING + 13  # 45: more than every handshake slot
    flood = ForeignFlood(agent["port"], count, batch=count)
    try:
        flood.wait_open()
        # (a) the owner is served while the 45 foreign connections are open (before this
        # change they held all 32 slots for 5 s and the owner was refused)
        assert owner_is_served(agent) < 3.0
        report = flood.report()
        # (b) closed by the agent at once, without a handshake: at most a greeting that is
        # never answered (our client then says "refused"), then EOF, well before the
        # handshake timeout a silent connection of the owner's own user would get
        assert report["closed"] == [True] * count
        assert all(got <= pauth.SERVER_HELLO_BYTES for got in report["received"])
        assert max(report["eof_after"]) < 2.0 < HANDSHAKE_TIMEOUT
        assert owner_is_served(agent) < 3.0  # and still, with the last ones held open
    finally:
        flood.close()
    text = "\n".join(settled_log(agent))
    assert "refused connection from 127.0.0.1:" in text
    assert f"opened by another user (uid {OTHER_UID})" in text
    assert agent["secret"] not in text
    assert agent["proc"].poll() is None


def test_a_flood_of_refusals_adds_a_dozen_log_lines_at_most(agent):
    before = settled_log(agent)
    flood = ForeignFlood(agent["port"], 200, batch=50)
    try:
        flood.wait_open()
        report = flood.report()
        assert report["closed"] == [True] * 200
    finally:
        flood.close()
    # (c) 200 refused connections: 10 lines one by one, the rest counted (the summary comes
    # at the end of the minute, or when the agent stops); none of rpyc's per-connection lines
    added = settled_log(agent)[len(before):]
    assert len(added) <= REFUSAL_LOG_LIMIT + 2, "\n".join(added)
    assert sum("opened by another user" in line for line in added) == REFUSAL_LOG_LIMIT
    assert not [line for line in added if "accepted (" in line or "failed to authenticate" in line]
    assert owner_is_served(agent) < 3.0
    assert end_agent(agent["proc"]) == 0
    summary = re.findall(r"(\d+) more refused connections in the last minute", agent["log"].read_text())
    assert summary == [str(200 - REFUSAL_LOG_LIMIT)]


def test_the_owners_own_silent_connections_give_way(agent):
    # The owner's uid is allowed to take handshake slots; a runaway local tool of the owner
    # (or a peer whose uid cannot be told) holding all of them must not lock the owner out
    # for the whole handshake timeout: a slot pending for EVICT_AFTER goes to a newcomer.
    silent = [socket.create_connection(("127.0.0.1", agent["port"]), timeout=10)
              for _ in range(MAX_PENDING + 8)]
    try:
        greeted = 0
        for sock in silent:
            sock.settimeout(2)
            try:
                greeted += len(sock.recv(pauth.SERVER_HELLO_BYTES)) > 0
            except OSError:
                pass
        assert greeted >= MAX_PENDING - 2  # every slot is taken (the rest were turned away)
        time.sleep(EVICT_AFTER + 0.3)
        assert owner_is_served(agent) < 3.0  # well before the 5 s handshake timeout
    finally:
        for sock in silent:
            sock.close()
    assert "its slot was needed by a new connection" in "\n".join(settled_log(agent))


# ---------------------------------------------------------------- the peer-uid lookup (d)


def _pair(family: int = socket.AF_INET, connect_to: str = "127.0.0.1"):
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket(family, socket.SOCK_STREAM)
    client.connect((connect_to, listener.getsockname()[1]))
    accepted, _ = listener.accept()
    listener.close()
    return client, accepted


def _proc_lookup(sock: socket.socket) -> int | None:
    theirs, ours = sock.getpeername(), sock.getsockname()
    return _proc_uid(_ip(theirs[0]), theirs[1], _ip(ours[0]), ours[1])


def test_peer_uid_of_our_own_connection():
    client, accepted = _pair()
    with client, accepted:
        assert peer_uid(accepted) == os.getuid()
        assert _proc_lookup(accepted) == os.getuid()  # the /proc/net/tcp fallback agrees


def test_peer_uid_of_an_ipv6_client_of_an_ipv4_listener():
    try:
        client, accepted = _pair(socket.AF_INET6, "::ffff:127.0.0.1")
    except OSError:
        pytest.skip("no IPv6 here")
    with client, accepted:
        assert accepted.getpeername()[0] == "127.0.0.1"
        assert peer_uid(accepted) == os.getuid()
        assert _proc_lookup(accepted) == os.getuid()  # found in /proc/net/tcp6


def test_peer_uid_of_another_users_connection():
    needs_root()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            become_other_user()
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            os.write(ready_w, b"x")
            sock.recv(1)  # held until the parent closes its end
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        accepted, _ = listener.accept()
        with accepted:
            assert peer_uid(accepted) == OTHER_UID
            assert _proc_lookup(accepted) == OTHER_UID
    finally:
        os.close(ready_r)
        listener.close()
        os.waitpid(pid, 0)


def test_peer_uid_unknown():
    left, right = socket.socketpair()  # not TCP
    with left, right:
        assert peer_uid(left) is None
    client, accepted = _pair()
    client.close()  # the peer socket is gone (or an orphan without an owner)
    time.sleep(0.05)
    with accepted:
        assert peer_uid(accepted) is None
        assert _proc_lookup(accepted) is None
