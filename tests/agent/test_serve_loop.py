"""The agent's own read loop (rpyc_guard.HardenedConnection.serve_all, protocol.frames.LimitedChannel's
read-ahead, whose channel-level tests are tests/protocol/test_frames.py) against a real agent process: requests that arrive together, or byte by
byte, are each answered once and in order; a request as large as allowed still arrives
whole; clients that vanish mid-frame free their thread; an agent with idle connections
stops when told; an unsolicited reply frame changes nothing."""

from __future__ import annotations

import signal
import socket
import time

import pytest
import rpyc
from rpyc.core import brine, consts
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream
from rpyc.utils.factory import connect_channel

from seamless_service.client.transport.agent_conn import client_handshake
from seamless_service.protocol import ErrorCode, decode_reply, encode_request
from seamless_service.protocol.codec import MAX_REQUEST_BYTES
from tests.support.agent import owner_is_served, proc_status


class CorkedChannel(Channel):
    """A client channel that can hold frames back and send them all in one write."""

    __slots__ = ("held",)

    def __init__(self, stream):
        super().__init__(stream, compress=False)
        self.held = None

    def send(self, data):
        if self.held is None:
            super().send(data)
        else:
            header = self.FRAME_HEADER.pack(len(data), 0)
            self.held.append(header + data + self.FLUSHER)


def authenticated_socket(agent) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", agent["port"]), timeout=10)
    client_handshake(sock, agent["secret"])
    sock.settimeout(None)
    return sock


def corked_connection(agent):
    sock = authenticated_socket(agent)
    channel = CorkedChannel(SocketStream(sock))
    conn = connect_channel(channel, service=rpyc.VoidService, config={"sync_request_timeout": 20})
    return conn, channel, sock


def requests(n: int) -> list[bytes]:
    # each a different unknown op: its reply names it, so a reply shows which request it answers
    return [encode_request([(f"no_such_op_{i}", {}), ("hello", {})]) for i in range(n)]


def check_replies(replies: list[bytes], n: int) -> None:
    for i, reply in enumerate(replies):
        unknown, hello = decode_reply(reply, 2)
        assert unknown["error"]["code"] == ErrorCode.UNKNOWN_OP
        assert f"no_such_op_{i}" in unknown["error"]["message"]
        assert hello["ok"]


def test_requests_arriving_in_one_write_are_each_answered_in_order(agent):
    conn, channel, sock = corked_connection(agent)
    try:
        call = conn.root.call
        for rounds in (2, 5, 40):
            channel.held = []
            pending = [rpyc.async_(call)(request) for request in requests(rounds)]
            frames, channel.held = channel.held, None
            sock.sendall(b"".join(frames))
            check_replies([result.value for result in pending], rounds)
        assert decode_reply(call(encode_request([("hello", {})])), 1)[0]["ok"]
    finally:
        conn.close()


@pytest.mark.parametrize("piece", [1, 3, 7, 64])
def test_requests_arriving_in_small_pieces_are_put_together(agent, piece):
    conn, channel, sock = corked_connection(agent)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        call = conn.root.call
        channel.held = []
        pending = [rpyc.async_(call)(request) for request in requests(4)]
        data, channel.held = b"".join(channel.held), None
        for start in range(0, len(data), piece):
            sock.sendall(data[start:start + piece])
            if start % (piece * 16) == 0:
                time.sleep(0.001)  # let the agent read what has come so far
        check_replies([result.value for result in pending], 4)
    finally:
        conn.close()


def test_a_request_as_large_as_allowed_arrives_whole(agent):
    conn, _channel, _sock = corked_connection(agent)
    try:
        # one op whose argument fills the request up to exactly the limit
        pad = MAX_REQUEST_BYTES - len(encode_request([("logs", {"key": ""})]))
        for size in (MAX_REQUEST_BYTES - 100_000, MAX_REQUEST_BYTES):
            request = encode_request([("logs", {"key": "k" * (pad - 8 - (MAX_REQUEST_BYTES - size))})])
            assert abs(len(request) - size) < 16
            [result] = decode_reply(conn.root.call(request), 1)
            # read whole, then judged: the key is refused, not the request
            assert result["ok"] is False and result["error"]["code"] == ErrorCode.INVALID_KEY
        assert decode_reply(conn.root.call(encode_request([("hello", {})])), 1)[0]["ok"]
    finally:
        conn.close()


def test_clients_gone_in_the_middle_of_a_frame_free_their_threads(agent):
    pid = agent["proc"].pid
    owner_is_served(agent)
    before = proc_status(pid, "Threads")
    frame = Channel.FRAME_HEADER.pack(1000, 0) + b"x" * 500
    for cut in (2, 5, len(frame)):  # inside the header, right after it, inside the body
        socks = [authenticated_socket(agent) for _ in range(5)]
        for sock in socks:
            sock.sendall(frame[:cut])
        time.sleep(0.1)
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 10
    while proc_status(pid, "Threads") > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc_status(pid, "Threads") <= before
    assert owner_is_served(agent) < 3.0


def test_an_agent_with_idle_connections_stops_when_told(agent):
    socks = [authenticated_socket(agent) for _ in range(3)]
    conn, _channel, _sock = corked_connection(agent)
    assert decode_reply(conn.root.call(encode_request([("hello", {})])), 1)[0]["ok"]
    try:
        start = time.monotonic()
        agent["proc"].send_signal(signal.SIGTERM)
        assert agent["proc"].wait(10) == 0
        assert time.monotonic() - start < 5
    finally:
        for sock in socks:
            sock.close()


def test_unsolicited_reply_frames_are_handled_as_rpyc_handles_them(agent):
    conn, channel, _sock = corked_connection(agent)
    try:
        # a reply to nothing is dropped (rpyc logs it at debug level); the connection goes on
        channel.send(brine.I1.pack(consts.MSG_REPLY) + brine.dump((999_999, (consts.LABEL_VALUE, 1))))
        assert decode_reply(conn.root.call(encode_request([("hello", {})])), 1)[0]["ok"]
        # an exception frame rpyc cannot read ends this connection, with one log line
        channel.send(brine.I1.pack(consts.MSG_EXCEPTION) + brine.dump((999_999, ("x", "y"))))
        with pytest.raises(EOFError):
            conn.root.call(encode_request([("hello", {})]))
    finally:
        conn.close()
    assert owner_is_served(agent) < 3.0


def test_empty_frames_are_skipped_as_rpyc_skips_them(agent):
    conn, _channel, sock = corked_connection(agent)
    try:
        assert decode_reply(conn.root.call(encode_request([("hello", {})])), 1)[0]["ok"]
        empty = Channel.FRAME_HEADER.pack(0, 0) + Channel.FLUSHER
        sock.sendall(empty * 3)
        assert decode_reply(conn.root.call(encode_request([("hello", {})])), 1)[0]["ok"]
    finally:
        conn.close()
