"""Which local user opened the other end of an accepted loopback TCP connection (Linux).

Why: the agent listens on 127.0.0.1, which every local user can reach. The secret keeps
them out, but each connection that is still authenticating holds one of a few handshake
slots, so another user could fill them with silent connections and lock the owner out.
Knowing the peer's uid lets the agent close such connections before they take a slot.

How: the peer of a loopback connection is a socket on this machine whose local address
and port are our remote ones and vice versa; the kernel knows its owner (the user whose
process created it). SO_PEERCRED would say so directly, but exists for unix sockets only.

  1. sock_diag netlink, asking for that one 4-tuple (what `ss` uses): a hash lookup in
     the kernel, ~15 us.
  2. Where netlink is unavailable: the `uid` column of /proc/net/tcp (and tcp6, for an
     IPv6 socket connected to ::ffff:127.0.0.1). Correct but slow: the kernel walks its
     whole established-connection hash table for each read, ~5 ms on a 24 GB machine,
     more on a big login node.

It runs once per connection, never per call. None means "cannot tell" (not Linux, not
TCP, the peer already closed, a /proc entry skipped while the table changed): the caller
then falls back to the handshake, which is secure on its own.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_NO_COOKIE = 0xFFFFFFFF
_NLMSG_HEADER = struct.Struct("=IHHII")     # len, type, flags, seq, pid
_DIAG_REQUEST = struct.Struct("=BBBBI")     # family, protocol, ext, pad, states (+ sockid)
_UID_INODE_AT = _NLMSG_HEADER.size + 64     # inet_diag_msg: 4 bytes, sockid (48), 3 x u32, uid, inode


def peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the local peer socket of the connected TCP socket `sock`, or None."""
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return None
        ours = sock.getsockname()[:2]
        theirs = sock.getpeername()[:2]
        our_ip, their_ip = _ip(ours[0]), _ip(theirs[0])
    except (OSError, ValueError):
        return None
    try:
        return _netlink_uid(their_ip, theirs[1], our_ip, ours[1])
    except _Unavailable:
        return _proc_uid(their_ip, theirs[1], our_ip, ours[1])


class _Unavailable(Exception):
    """sock_diag cannot answer here (no netlink, no inet_diag in the kernel, a filter)."""


def _netlink_uid(src: ipaddress._BaseAddress, sport: int, dst: ipaddress._BaseAddress,
                 dport: int) -> int | None:
    """The owner of the socket whose local end is src:sport and remote end dst:dport."""
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        # An AF_INET query also finds an IPv6 socket connected to ::ffff:127.0.0.1: both
        # live in the same established table, keyed by the IPv4 addresses.
        family, src_raw, dst_raw = socket.AF_INET, src.packed + bytes(12), dst.packed + bytes(12)
    else:
        family, src_raw, dst_raw = socket.AF_INET6, _as_v6(src).packed, _as_v6(dst).packed
    sockid = struct.pack("!HH", sport, dport) + src_raw + dst_raw + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    body = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(header + body)
            reply = nl.recv(8192)
    except (OSError, AttributeError) as exc:  # AttributeError: no AF_NETLINK (not Linux)
        raise _Unavailable() from exc
    if len(reply) < _NLMSG_HEADER.size:
        raise _Unavailable()
    _length, kind, _flags, _seq, _pid = _NLMSG_HEADER.unpack_from(reply)
    if kind == _NLMSG_ERROR:
        code = -struct.unpack_from("=i", reply, _NLMSG_HEADER.size)[0] if len(reply) >= 20 else 0
        if code == errno.ENOENT:
            return None  # no such socket (any more): the peer closed, cannot tell
        raise _Unavailable()
    if kind != _SOCK_DIAG_BY_FAMILY or len(reply) < _UID_INODE_AT + 8:
        raise _Unavailable()
    uid, inode = struct.unpack_from("=II", reply, _UID_INODE_AT)
    # inode 0: TIME_WAIT, or an orphan its owner already closed; its uid reads 0 then
    return uid if inode else None


def _proc_uid(src: ipaddress._BaseAddress, sport: int, dst: ipaddress._BaseAddress,
              dport: int) -> int | None:
    for table, encode in zip(TABLES, (_hex_v4, _hex_v6)):
        try:
            key = f" {encode(src)}:{sport:04X} {encode(dst)}:{dport:04X} ".encode("ascii")
        except ValueError:  # not expressible in this table (an IPv6-only address in tcp)
            continue
        uid = _find_uid(table, key)
        if uid is not None:
            return uid
    return None


def _find_uid(table: str, key: bytes) -> int | None:
    try:
        with open(table, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    start = data.find(key)
    while start != -1:
        line_start = data.rfind(b"\n", 0, start) + 1
        line_end = data.find(b"\n", start)
        fields = data[line_start:line_end if line_end != -1 else len(data)].split()
        # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        try:
            uid, inode = int(fields[7]), int(fields[9])
        except (IndexError, ValueError):
            return None
        if inode != 0:  # inode 0: TIME_WAIT or a closed orphan (uid reads 0); look further
            return uid
        start = data.find(key, start + 1)
    return None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(host.split("%", 1)[0])


def _as_v6(ip: ipaddress._BaseAddress) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(bytes(10) + b"\xff\xff" + ip.packed)  # ::ffff:a.b.c.d
    return ip


def _hex_v4(ip: ipaddress._BaseAddress) -> str:
    """An address as /proc/net/tcp prints it: the 32-bit word in host byte order, %08X."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            raise ValueError("not an IPv4 address")
        ip = ip.ipv4_mapped
    return f"{struct.unpack('=I', ip.packed)[0]:08X}"


def _hex_v6(ip: ipaddress._BaseAddress) -> str:
    """An address as /proc/net/tcp6 prints it: four 32-bit words in host byte order."""
    return "".join(f"{word:08X}" for word in struct.unpack("=4I", _as_v6(ip).packed))
