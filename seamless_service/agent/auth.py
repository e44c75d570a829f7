"""The agent's half of the mutual challenge-response (see protocol/auth.py), as an rpyc
`authenticator=` callable: it runs on each raw accepted socket before rpyc speaks.

A refused connection is logged with the peer address and the reason only: never the
secret, never the client's answer.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from rpyc.utils.authenticators import AuthenticationError

from ..protocol import auth as pauth

log = logging.getLogger("seamless_service.agent.auth")

# Connections allowed to be mid-handshake at once. Each holds a thread for up to the
# handshake timeout; past this, new ones are refused at once instead of piling up threads.
MAX_PENDING = 32


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY: without it, replies over 64 KB stall ~45 ms (Nagle + delayed ACK)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (e.g. a unix socket in a test): nothing to tune
        pass


def recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Exactly `size` bytes before `deadline` (time.monotonic), else ConnectionError/TimeoutError.

    The deadline covers the whole frame, so a peer dripping one byte at a time cannot
    extend it.
    """
    chunks = []
    missing = size
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("handshake timed out")
        sock.settimeout(remaining)
        chunk = sock.recv(missing)
        if not chunk:
            raise ConnectionError("peer closed the connection during the handshake")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


class SecretAuthenticator:
    """rpyc authenticator: the peer must prove it knows the agent secret; then we prove it too."""

    def __init__(self, secret: str, *, timeout: float = pauth.HANDSHAKE_TIMEOUT,
                 max_pending: int = MAX_PENDING):
        pauth.secret_key(secret)  # fail at start-up, not at the first connection
        self._secret = secret
        self.timeout = float(timeout)
        self._pending = threading.BoundedSemaphore(max_pending)

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a log line
        return f"SecretAuthenticator(timeout={self.timeout:g})"

    def __call__(self, sock: socket.socket) -> tuple[socket.socket, None]:
        set_nodelay(sock)
        peer = _peer(sock)
        if not self._pending.acquire(blocking=False):
            log.warning("refused connection from %s: too many connections authenticating at once", peer)
            raise AuthenticationError("too many connections authenticating at once")
        try:
            self._handshake(sock)
        except AuthenticationError as exc:
            log.warning("refused connection from %s: %s", peer, exc)
            raise
        except (OSError, ValueError) as exc:  # timeouts, resets, EOF, malformed frames
            log.warning("refused connection from %s: %s", peer, _describe(exc))
            raise AuthenticationError(_describe(exc)) from None
        finally:
            self._pending.release()
            try:
                sock.settimeout(None)  # rpyc serves the connection in blocking mode
            except OSError:
                pass
        log.debug("authenticated connection from %s", peer)
        return sock, None

    def _handshake(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + self.timeout
        server_nonce = pauth.make_nonce()
        sock.settimeout(self.timeout)
        sock.sendall(pauth.server_hello(server_nonce))
        answer = recv_exact(sock, pauth.CLIENT_ANSWER_BYTES, deadline)
        client_nonce, proof = pauth.split_client_answer(answer)
        expected = pauth.response(self._secret, "client", server_nonce, client_nonce)
        if not pauth.verify(expected, proof):
            raise AuthenticationError("wrong proof of the agent secret")
        sock.sendall(pauth.response(self._secret, "agent", server_nonce, client_nonce))


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, ValueError):
        return "unknown peer"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "handshake timed out"
    text = str(exc) or type(exc).__name__
    return text
