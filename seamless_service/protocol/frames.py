"""rpyc's frames read with a limit, and with one recv() per small frame: both sides' Channel.

rpyc's own Channel reads a frame's 4-byte length and then that many bytes, in two reads, and
buffers (or inflates) whatever length the header claims. `LimitedChannel` checks the length
before it reads the body, bounds the inflated size, and reads ahead what has already
arrived, so that a small frame costs one recv() instead of two. The agent reads its
clients' requests through it (agent/rpyc_guard.py), and the client reads the agent's
replies through it (client/transport/agent_conn.py), each with its own limit.
"""

from __future__ import annotations

import select
import socket
import zlib
from typing import Any, Callable, NoReturn

from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream, retry_errnos
from rpyc.lib import Timeout
from rpyc.lib.compat import get_exc_errno

from .codec import MAX_REPLY_BYTES, MAX_REQUEST_BYTES

# A call() frame is the request (or reply) bytes plus rpyc's envelope (message type,
# sequence number, handler, boxed object id, argument tuple: well under a hundred bytes).
ENVELOPE_BYTES = 64 << 10
MAX_FRAME_BYTES = MAX_REQUEST_BYTES + ENVELOPE_BYTES        # what the agent reads
MAX_REPLY_FRAME_BYTES = MAX_REPLY_BYTES + ENVELOPE_BYTES    # what a client reads

# Bytes asked of the socket at once beyond what the current frame still needs (rpyc's
# SocketStream reads at most 64,000 at a time).
READ_AHEAD = 64 << 10


class FrameTooLarge(EOFError):
    """A frame over the limit: the connection is closed (an EOFError ends rpyc's serve loop quietly)."""


class LimitedChannel(Channel):
    """A Channel that never buffers or inflates a frame larger than `limit` bytes.

    `report(message)` is told (once) why the connection was closed; the caller rate-limits it.

    Over a socket it reads what has arrived, up to READ_AHEAD bytes at a time, and keeps
    what lies past the frame for the next one: a small request (its 5-byte header, body
    and flusher come in one segment) costs one recv() instead of rpyc's two. What it holds
    is bounded: a frame's header is checked before its body is asked for, and no read asks
    for more than the frame still needs or READ_AHEAD, whichever is larger.

    Waiting for a frame (poll(), which the client's rpyc calls before every read of a
    reply) uses one poll object registered once, not a new one per wait as rpyc's stream.
    """

    __slots__ = ("limit", "report", "_pending", "_start", "_sock", "_poller")

    def __init__(self, stream: Any, *, limit: int = MAX_FRAME_BYTES,
                 report: Callable[[str], None] | None = None):
        super().__init__(stream, compress=False)  # our replies are compact msgpack; see service.py
        self.limit = int(limit)
        self.report = report
        self._pending = b""  # bytes read; those from _start on are not returned yet
        self._start = 0
        # Read ahead only from a plain rpyc SocketStream (over a socket or a paramiko
        # Channel, which has recv() and fileno() alike); others read as rpyc does.
        self._sock = stream.sock if type(stream) is SocketStream else None
        self._poller: Any = None

    def poll(self, timeout: Any) -> bool:
        # Bytes read ahead are no longer in the socket, where the stream's poll looks.
        if len(self._pending) > self._start:
            return True
        if self._sock is None or self.stream.closed:
            return super().poll(timeout)  # rpyc's: EOFError for a closed stream
        poller = self._poller
        if poller is None:
            # Registered once: the descriptor is the socket's for as long as the stream is
            # open (checked above, so a number reused after close() is never polled).
            poller = self._poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN | select.POLLPRI)
        left = Timeout(timeout).timeleft()  # rpyc hands seconds, None or a Timeout
        # Any event counts, as in rpyc's poll: a hang-up or error is then read as EOF.
        return bool(poller.poll(None if left is None else left * 1000))

    def recv(self) -> bytes:
        header = self._read(self.FRAME_HEADER.size)
        length, compressed = self.FRAME_HEADER.unpack(header)
        if length > self.limit:
            self._refuse(f"a frame of {length} bytes exceeds the limit of {self.limit} bytes")
        data = self._read(length + len(self.FLUSHER))[:-len(self.FLUSHER)]
        if compressed:
            data = self._inflate(data)
        return data

    def _read(self, count: int) -> bytes:
        """Exactly `count` bytes (EOFError, and the stream closed, as SocketStream.read)."""
        pending, start = self._pending, self._start
        stop = start + count
        if stop <= len(pending):
            # An offset, not a slice of the rest: many small frames read in one go would
            # otherwise copy what follows each of them.
            if stop == len(pending):
                self._pending, self._start = b"", 0
            else:
                self._start = stop
            return pending[start:stop]
        if self._sock is None:
            return self.stream.read(count)
        chunks = [pending[start:]]
        have = len(chunks[0])
        while have < count:
            chunk = self._recv_some(max(count - have, READ_AHEAD))
            chunks.append(chunk)
            have += len(chunk)
        data = b"".join(chunks)
        # the rest (< READ_AHEAD bytes past this frame) alone, not the frame, is kept
        self._pending, self._start = data[count:], 0
        return data[:count]

    def _recv_some(self, most: int) -> bytes:
        # SocketStream.read's handling of each recv(), for up to `most` bytes.
        while True:
            try:
                data = self._sock.recv(most)
            except socket.timeout:
                continue
            except OSError as exc:
                if get_exc_errno(exc) in retry_errnos:
                    continue
                self.stream.close()
                raise EOFError(exc) from None
            if not data:
                self.stream.close()
                raise EOFError("connection closed by peer")
            return data

    def _inflate(self, data: bytes) -> bytes:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, self.limit + 1)
        except zlib.error:
            self._refuse("a compressed frame is corrupt")
        if len(out) > self.limit or inflater.unconsumed_tail:
            self._refuse(f"a compressed frame inflates beyond the limit of {self.limit} bytes")
        if not inflater.eof:
            self._refuse("a compressed frame is truncated")
        return out

    def _refuse(self, why: str) -> NoReturn:
        # Close first: rpyc answers an EOFError by sending HANDLE_CLOSE and reading the
        # reply, which would otherwise read the rest of the oversized body as frames.
        self.stream.close()
        if self.report is not None:
            self.report(f"{why}; connection closed")
        raise FrameTooLarge(why)
