"""Frames between the thin client and the tunnel keeper: a 4-byte big-endian length, then
one map in a small tagged encoding of our own (below).

Both ends use this over a unix stream socket, and peer_uid to know who is at the other end.
A frame is a map with str keys; anything else (a short read, an oversized length, an
unknown tag, a length running past the end, bytes after the map, a list instead of a map,
text that is not UTF-8) raises `FrameError` with a one-line message, so the keeper can
answer `{"ok": false, "error": ...}` and keep serving. Both peers are processes of one
user (a 0700 folder, SO_PEERCRED checked on both ends), but what arrives is checked all
the same: the decoder builds only the types below and never evaluates anything.

Not msgpack (which the agent protocol uses): the thin client runs this on every command,
and importing msgpack costs ~3 ms there (it imports datetime); this needs no module at
all, only builtins. Not marshal: it is documented as unsafe on malformed input.

A value is one tag byte, then its payload (lengths and counts are 4-byte big-endian):
  N  None        T  True        F  False
  i  int         1-byte length, then that many bytes, big-endian two's complement
  f  float       1-byte length, then its repr in ASCII (exact: repr round-trips)
  s  str         length, then UTF-8; surrogatepass carries the lone surrogates that stand
                 for undecodable bytes in os.environ and file names, both ways unchanged
  b  bytes       length, then the bytes
  l  list        count, then the items (a tuple is sent as a list)
  d  map         count, then key and value in turn; keys are str
"""

# No imports, not even `struct` or `__future__`: this module is on every CLI call's path.
# `_socket` is the C module (AF_UNIX sockets, timeouts, SO_PEERCRED are all in it);
# socket.py's enum conversions would cost ~2 ms per call.
import _socket as socket
import sys

# typing costs ~3 ms to import: the names are only needed by type checkers, and the
# annotations that use them are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HEADER_SIZE = 4
# Far above any real request; a reply carrying a whole captured output of a large `ps`
# or a log tail stays well below it. Streamed output is sent in small frames anyway.
MAX_FRAME = 64 << 20
# Requests and replies nest two or three levels (status: pool entries, their details).
MAX_DEPTH = 32


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


class OlderKeeper(FrameError):
    """The frame is a msgpack map: a keeper started by a seamless-service before this
    encoding (it spoke length-prefixed msgpack) answered. It is still running after an
    upgrade in place; the client stops it through that framing and starts a new one."""


# The first byte of a msgpack map (fixmap, map 16, map 32); no tag here starts with these.
_MSGPACK_MAP = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


def peer_uid(sock: socket.socket) -> "int | None":
    """The uid of the process at the other end of a connected unix socket (SO_PEERCRED),
    or None where the platform cannot tell. Both ends check it: the keeper serves only
    its own user, and the client sends its environment only to its own user's keeper."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    # struct ucred: three native C ints, pid, uid, gid
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder, signed=True)


# -- encoding ----------------------------------------------------------------------------


def _length(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _text(s: str) -> bytes:
    data = s.encode("utf-8", "surrogatepass")
    return b"s" + _length(len(data)) + data


def _encode(obj: "Any", out: "list[bytes]", depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"cannot encode a frame nested deeper than {MAX_DEPTH} levels")
    kind = type(obj)
    if kind is str:
        out.append(_text(obj))
    elif obj is None:
        out.append(b"N")
    elif obj is True:
        out.append(b"T")
    elif obj is False:
        out.append(b"F")
    elif isinstance(obj, int):
        raw = int(obj).to_bytes(obj.bit_length() // 8 + 1, "big", signed=True)
        if len(raw) > 255:
            raise ValueError("cannot encode an integer of more than 255 bytes in a frame")
        out.append(b"i" + bytes((len(raw),)) + raw)
    elif isinstance(obj, float):
        text = repr(float(obj)).encode("ascii")
        out.append(b"f" + bytes((len(text),)) + text)
    elif isinstance(obj, str):
        out.append(_text(str(obj)))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        out.append(b"b" + _length(len(data)) + data)
    elif isinstance(obj, dict):
        out.append(b"d" + _length(len(obj)))
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"frame map keys must be str, not {type(key).__name__}")
            if type(value) is str:   # most entries (the environment): one join, no dispatch
                k, v = key.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass")
                out.append(b"".join((b"s", len(k).to_bytes(4, "big"), k, b"s", len(v).to_bytes(4, "big"), v)))
            else:
                out.append(_text(str(key)))
                _encode(value, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        out.append(b"l" + _length(len(obj)))
        for item in obj:
            _encode(item, out, depth + 1)
    else:
        raise TypeError(f"cannot encode a {kind.__name__} in a frame")


def encode(obj: "dict[str, Any]") -> bytes:
    if not isinstance(obj, dict):
        raise TypeError(f"a frame is a map, not a {type(obj).__name__}")
    out = [b""]
    _encode(obj, out, 0)
    body = b"".join(out)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {MAX_FRAME} bytes")
    return _length(len(body)) + body


def send(sock: socket.socket, obj: "dict[str, Any]") -> None:
    """Send one frame (header and body in one write, so concurrent senders do not interleave
    as long as they hold the same lock)."""
    sock.sendall(encode(obj))


# -- decoding ----------------------------------------------------------------------------

_CONSTANTS = {0x4E: None, 0x54: True, 0x46: False}   # N T F
_TYPE_NAMES = {0x73: "str", 0x62: "bytes", 0x69: "int", 0x66: "float", 0x6C: "list",
               0x4E: "None", 0x54: "bool", 0x46: "bool"}


class _Reader:
    """One frame body being decoded; every read checks that the bytes are there."""

    __slots__ = ("body", "pos")

    def __init__(self, body: bytes):
        self.body = body
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.body):
            raise FrameError(f"frame is malformed: a value runs past its end (byte {self.pos} of {len(self.body)})")
        data = self.body[self.pos:end]
        self.pos = end
        return data

    def byte(self) -> int:
        if self.pos >= len(self.body):
            raise FrameError(f"frame is malformed: a value runs past its end (byte {self.pos} of {len(self.body)})")
        self.pos += 1
        return self.body[self.pos - 1]

    def count(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def text(self) -> str:
        data = self.take(self.count())
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise FrameError(f"frame is malformed: text that is not UTF-8 at byte {self.pos - len(data) + exc.start}") from None

    def value(self, depth: int) -> "Any":
        at = self.pos
        tag = self.byte()
        if tag == 0x73:                                     # s
            return self.text()
        if tag in _CONSTANTS:
            return _CONSTANTS[tag]
        if tag == 0x69:                                     # i
            return int.from_bytes(self.take(self.byte()), "big", signed=True)
        if tag == 0x66:                                     # f
            raw = self.take(self.byte())
            try:
                return float(raw.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise FrameError(f"frame is malformed: not a float at byte {at}") from None
        if tag == 0x62:                                     # b
            return self.take(self.count())
        if depth >= MAX_DEPTH:
            raise FrameError(f"frame is malformed: nested deeper than {MAX_DEPTH} levels")
        if tag == 0x6C:                                     # l
            return [self.value(depth + 1) for _ in range(self.count())]
        if tag == 0x64:                                     # d
            return self.map(depth)
        raise FrameError(f"frame is malformed: unknown tag 0x{tag:02x} at byte {at}")

    def map(self, depth: int) -> "dict[str, Any]":
        out = {}
        body = self.body
        size = len(body)
        for _ in range(self.count()):
            # The common entry, a str key with a str value (a request's environment: most
            # of its bytes), is read here without a method call per value: the keeper's
            # decode of a "run" request took ~100 us for 36 variables, now less than half.
            # Anything else, or anything malformed, is read by the general code below from
            # the same position, which raises the exact error.
            pos = self.pos
            if body[pos:pos + 1] == b"s":
                key_end = pos + 5 + int.from_bytes(body[pos + 1:pos + 5], "big")
                if body[key_end:key_end + 1] == b"s" and key_end + 5 <= size:
                    end = key_end + 5 + int.from_bytes(body[key_end + 1:key_end + 5], "big")
                    if end <= size:
                        try:
                            key = body[pos + 5:key_end].decode("utf-8", "surrogatepass")
                            out[key] = body[key_end + 5:end].decode("utf-8", "surrogatepass")
                        except UnicodeDecodeError:
                            pass
                        else:
                            self.pos = end
                            continue
            at = self.pos
            if self.byte() != 0x73:
                raise FrameError(f"frame is malformed: a map key that is not a str at byte {at}")
            key = self.text()
            out[key] = self.value(depth + 1)
        return out


def decode(body: bytes) -> "dict[str, Any]":
    reader = _Reader(bytes(body))
    if not body:
        raise FrameError("frame is malformed: empty body")
    tag = body[0]
    if tag in _MSGPACK_MAP:
        raise OlderKeeper("the tunnel keeper that answered speaks the framing of an earlier seamless-service")
    if tag != 0x64:
        what = _TYPE_NAMES.get(tag)
        if what is None:
            raise FrameError(f"frame is malformed: unknown tag 0x{tag:02x} at byte 0")
        raise FrameError(f"frame is a {what}, not a map")
    reader.pos = 1
    obj = reader.map(0)
    if reader.pos != len(reader.body):
        raise FrameError(f"frame is malformed: {len(reader.body) - reader.pos} bytes after the map")
    return obj


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


def recv(sock: socket.socket, max_size: int = MAX_FRAME) -> "dict[str, Any] | None":
    """Read one frame. Returns None on a clean end of stream (EOF before any header byte)."""
    first = sock.recv(HEADER_SIZE)
    if not first:
        return None
    header = first if len(first) == HEADER_SIZE else first + _recv_exactly(
        sock, HEADER_SIZE - len(first), what="frame header")
    length = int.from_bytes(header, "big")
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_size} bytes")
    return decode(_recv_exactly(sock, length, what="frame body"))
