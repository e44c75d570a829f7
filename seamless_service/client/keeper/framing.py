"""Length-prefixed msgpack frames: 4-byte big-endian length, then one msgpack map.

Both the thin client and the keeper use this over a unix stream socket, and peer_uid to
know who is at the other end. A frame is a map with str keys; anything else (a short
read, an oversized length, bytes that are not msgpack, a list instead of a map) raises
`FrameError` with a one-line message, so the keeper can answer `{"ok": false, "error":
...}` and keep serving.
"""

from __future__ import annotations

# `_socket`, the C module: everything used here (AF_UNIX sockets, timeouts, SO_PEERCRED)
# is in it, and socket.py's enum conversions cost ~2 ms of every thin-client call.
import _socket as socket
import struct

# typing costs ~3 ms to import: this module is on every CLI call's path, and with
# postponed annotations the names are only needed by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

import msgpack

HEADER = struct.Struct(">I")
# Far above any real request; a reply carrying a whole captured output of a large `ps`
# or a log tail stays well below it. Streamed output is sent in small frames anyway.
MAX_FRAME = 64 << 20


class ReplyCode:
    """The `code` of a refused request (`{"ok": False, "code": ..., "error": ...}`); the
    keeper sends them, the thin client decides on them. A refusal without a code is final."""

    RETRY = "retry"       # the keeper is shutting down: nothing ran; connect again (to a new one)
    BUSY = "busy"         # another command runs and this one was not to wait; nothing ran
    VERSION = "version"   # the keeper runs another version or installation; nothing ran


class FrameError(Exception):
    """A frame could not be read or decoded; the message is one readable line."""


class FrameTooLarge(FrameError):
    """The announced length is over the limit: the stream cannot be resynchronised."""


class FrameTruncated(FrameError):
    """The peer closed the connection in the middle of a frame."""


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected unix socket (SO_PEERCRED),
    or None where the platform cannot tell. Both ends check it: the keeper serves only
    its own user, and the client sends its environment only to its own user's keeper."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def encode(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {MAX_FRAME} bytes")
    return HEADER.pack(len(body)) + body


def send(sock: socket.socket, obj: dict[str, Any]) -> None:
    """Send one frame (header and body in one write, so concurrent senders do not interleave
    as long as they hold the same lock)."""
    sock.sendall(encode(obj))


def _recv_exactly(sock: socket.socket, n: int, *, what: str) -> bytes:
    chunks = []
    got = 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise FrameTruncated(f"connection closed after {got} of {n} bytes of the {what}")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def decode(body: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except msgpack.ExtraData as exc:
        raise FrameError("trailing bytes after the msgpack map") from exc
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise FrameError(f"frame is not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise FrameError(f"frame is a msgpack {type(obj).__name__}, not a map")
    return obj


def recv(sock: socket.socket, max_size: int = MAX_FRAME) -> dict[str, Any] | None:
    """Read one frame. Returns None on a clean end of stream (EOF before any header byte)."""
    first = sock.recv(HEADER.size)
    if not first:
        return None
    header = first if len(first) == HEADER.size else first + _recv_exactly(
        sock, HEADER.size - len(first), what="frame header")
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_size} bytes")
    return decode(_recv_exactly(sock, length, what="frame body"))
