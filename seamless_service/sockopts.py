"""TCP_NODELAY on real TCP sockets, for every side that sends rpyc replies: the agent's
accepted connections, the client's tunnel, local forward and direct agent connection, the
deploy's SSH connection. Without it, replies over 64 KB stall ~45 ms (Nagle + delayed ACK)."""

from __future__ import annotations

import socket
from typing import Any


def set_nodelay(sock: Any) -> bool:
    """TCP_NODELAY on a real TCP socket; False for anything else (a unix socket, a ProxyJump
    channel...), where there is nothing to tune."""
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True
    except OSError:
        return False


def has_nodelay(sock: Any) -> bool:
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except (OSError, AttributeError):
        return False
