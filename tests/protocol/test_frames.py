"""protocol/frames.py: LimitedChannel, the rpyc Channel both sides read through (the agent
its clients' requests, a client the agent's replies), on real socket pairs: frames read
ahead come out whole and in order and are seen by poll(); a frame over the limit is refused
before its body is read; poll() waits on one kept poll object until data, a hang-up or its
timeout, and says EOF for a closed stream as rpyc does. Against a real agent, both
directions: tests/agent/test_serve_loop.py and the client's tests.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream
from rpyc.lib import Timeout

from seamless_service.protocol.frames import (MAX_FRAME_BYTES, MAX_REPLY_FRAME_BYTES, READ_AHEAD, FrameTooLarge,
                                              LimitedChannel)


def frame(body: bytes) -> bytes:
    return Channel.FRAME_HEADER.pack(len(body), 0) + body + Channel.FLUSHER


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_read_ahead_is_seen_by_poll_and_bounded():
    ours, theirs = socket.socketpair()
    try:
        channel = LimitedChannel(SocketStream(ours), limit=1 << 20)
        frames = [b"first", b"second" * 1000, b""]
        theirs.sendall(b"".join(frame(f) for f in frames))
        assert channel.recv() == frames[0]
        # the rest was read along with the first frame: the socket is empty, poll still says so
        assert channel.poll(0) and channel.recv() == frames[1] and channel.recv() == frames[2]
        assert not channel.poll(0)
        # many frames in one read: each comes out whole, in order, then nothing is left
        many = [bytes([i % 256]) * (i % 300) for i in range(2000)]
        sender = threading.Thread(target=theirs.sendall, args=(
            b"".join(Channel.FRAME_HEADER.pack(len(f), 0) + f + Channel.FLUSHER for f in many),))
        sender.start()
        assert [channel.recv() for _ in many] == many
        sender.join()
        assert not channel.poll(0) and len(channel._pending) == channel._start
        # a header over the limit is refused with at most READ_AHEAD bytes of its body read
        theirs.sendall(Channel.FRAME_HEADER.pack(50 << 20, 0))
        theirs.setblocking(False)
        sent = 0
        try:
            while sent < (4 << 20):
                sent += theirs.send(bytes(1 << 16))
        except BlockingIOError:
            pass
        with pytest.raises(FrameTooLarge):
            channel.recv()
        assert len(channel._pending) <= READ_AHEAD
        assert channel.closed
    finally:
        ours.close()
        theirs.close()


def test_a_stream_other_than_a_socket_is_read_as_rpyc_reads_it():
    class Other(SocketStream):  # any other stream class: no read-ahead, rpyc's exact reads
        reads: list[int] = []

        def read(self, count):
            self.reads.append(count)
            return super().read(count)

    ours, theirs = socket.socketpair()
    try:
        channel = LimitedChannel(Other(ours))
        theirs.sendall(Channel.FRAME_HEADER.pack(3, 0) + b"abc" + Channel.FLUSHER)
        assert channel.recv() == b"abc" and Other.reads == [5, 4]
    finally:
        ours.close()
        theirs.close()


def test_poll_waits_for_its_timeout_when_nothing_arrives(pair):
    ours, _theirs = pair
    channel = LimitedChannel(SocketStream(ours))
    for make in (float, Timeout):  # rpyc hands seconds or its own Timeout
        start = time.monotonic()
        assert channel.poll(make(0.2)) is False
        assert 0.15 <= time.monotonic() - start < 2.0
    assert channel.poll(0) is False


def test_poll_wakes_when_a_frame_arrives_and_keeps_one_poll_object(pair):
    ours, theirs = pair
    channel = LimitedChannel(SocketStream(ours))
    assert channel.poll(0) is False
    poller = channel._poller
    assert poller is not None
    for round_ in range(3):
        timer = threading.Timer(0.1, theirs.sendall, args=(frame(b"reply %d" % round_),))
        timer.start()
        start = time.monotonic()
        assert channel.poll(10) is True
        assert time.monotonic() - start < 5  # woken by the data, not by the 10 s timeout
        assert channel.recv() == b"reply %d" % round_
        timer.join()
    assert channel._poller is poller  # registered once, not per wait


def test_poll_without_a_timeout_waits_until_data(pair):
    ours, theirs = pair
    channel = LimitedChannel(SocketStream(ours))
    timer = threading.Timer(0.2, theirs.sendall, args=(frame(b"late"),))
    timer.start()
    assert channel.poll(None) is True and channel.recv() == b"late"
    timer.join()


def test_a_peer_that_hangs_up_wakes_poll_and_reads_as_eof(pair):
    ours, theirs = pair
    channel = LimitedChannel(SocketStream(ours))
    threading.Timer(0.1, theirs.close).start()
    assert channel.poll(10) is True
    with pytest.raises(EOFError):
        channel.recv()
    assert channel.closed


def test_poll_on_a_closed_channel_is_eof_as_in_rpyc(pair):
    ours, _theirs = pair
    channel = LimitedChannel(SocketStream(ours))
    assert channel.poll(0) is False  # the poll object exists now
    channel.close()
    # rpyc's own Channel: EOFError; never a poll of a descriptor number reused since
    with pytest.raises(EOFError):
        channel.poll(0)
    with pytest.raises(EOFError):
        channel.recv()


def test_each_side_has_its_own_limit():
    from seamless_service.protocol.codec import MAX_REPLY_BYTES, MAX_REQUEST_BYTES

    assert MAX_REQUEST_BYTES < MAX_FRAME_BYTES < MAX_REPLY_BYTES < MAX_REPLY_FRAME_BYTES
    assert MAX_FRAME_BYTES - MAX_REQUEST_BYTES == MAX_REPLY_FRAME_BYTES - MAX_REPLY_BYTES


def test_a_reply_as_large_as_the_client_allows_arrives_and_one_byte_more_is_refused(pair):
    from seamless_service.protocol.codec import MAX_REPLY_BYTES

    ours, theirs = pair
    channel = LimitedChannel(SocketStream(ours), limit=MAX_REPLY_FRAME_BYTES)
    body = bytes(range(256)) * (MAX_REPLY_BYTES // 256)
    sender = threading.Thread(target=theirs.sendall, args=(frame(body),))
    sender.start()
    assert channel.recv() == body
    sender.join()
    theirs.sendall(Channel.FRAME_HEADER.pack(MAX_REPLY_FRAME_BYTES + 1, 0))
    with pytest.raises(FrameTooLarge, match="exceeds the limit"):
        channel.recv()
    assert channel.closed
