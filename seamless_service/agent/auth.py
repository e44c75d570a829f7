"""The agent's half of the mutual challenge-response (see protocol/auth.py), as an rpyc
`authenticator=` callable: it runs on each raw accepted socket before rpyc speaks.

Two steps, so the agent's accept loop can do the cheap one before any thread exists
(server.py): `admit()` closes a connection opened by another local user (peercred.py) at
once and takes a handshake slot, so other users cannot lock the owner out by holding
silent connections, nor make the agent start a thread per connection; `authenticate()`
then runs the handshake in the connection's own thread. `__call__` does both (rpyc's
authenticator protocol).

A refused connection is logged with the peer address and the reason only: never the
secret, never the client's answer. At most REFUSAL_LOG_LIMIT such lines a minute (every
other line about connections the agent could not serve counts too), then one summary
line: a flood cannot fill the disk with agent.log (rotated only at start).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import NoReturn

from rpyc.utils.authenticators import AuthenticationError

from ..protocol import auth as pauth
from ..sockopts import set_nodelay
from .peercred import peer_uid

log = logging.getLogger("seamless_service.agent.auth")

# Connections allowed to be mid-handshake at once. Each holds a thread for up to the
# handshake timeout; past this, new ones are refused at once instead of piling up threads.
#
# The count is global, not per peer: every peer address is 127.0.0.1 (every legitimate
# connection through SSH comes from the user's own sshd), and once other users' connections
# are refused by uid, whoever is left is the owner, or a peer whose uid we could not tell.
# What keeps such a flood from locking the owner out is EVICT_AFTER: when all slots are
# taken, a new connection takes the slot of the oldest pending handshake if that one has
# been pending this long (a real client answers within one round trip; a silent one has
# nothing to lose). So silent connections can hold every slot only by being renewed more
# than MAX_PENDING / EVICT_AFTER times a second, and a slow client is only cut short when
# the slots are actually needed, never by a shorter timeout.
MAX_PENDING = 32
EVICT_AFTER = 1.0

REFUSAL_LOG_LIMIT = 10      # refusal lines per REFUSAL_LOG_WINDOW; past that, one summary line
REFUSAL_LOG_WINDOW = 60.0


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


class RefusalLog:
    """Logs refused connections: the first `limit` of each `window` seconds one by one, the
    rest as one summary line at the end of the window. A sustained flood thus writes about
    limit + 1 lines a minute instead of one per connection."""

    def __init__(self, logger: logging.Logger = log, *, limit: int = REFUSAL_LOG_LIMIT,
                 window: float = REFUSAL_LOG_WINDOW):
        self.logger = logger
        self.limit = int(limit)
        self.window = float(window)
        self._lock = threading.Lock()
        self._window_start = -float("inf")
        self._logged = 0
        self._suppressed = 0
        self._timer: threading.Timer | None = None

    def refused(self, peer: str, reason: str) -> None:
        self.note(f"refused connection from {peer}: {reason}")

    def note(self, message: str) -> None:
        """Log `message` (one line about a connection not served) within the same budget."""
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self.window:
                summary = self._take_summary()  # normally done by the timer already
                self._window_start, self._logged = now, 0
            else:
                summary = 0
            emit = self._logged < self.limit
            if emit:
                self._logged += 1
            else:
                self._suppressed += 1
                if self._timer is None:
                    self._timer = threading.Timer(self._window_start + self.window - now, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
        self._summarise(summary)
        if emit:
            self.logger.warning("%s", message)

    def flush(self) -> None:
        """Write the summary line of the current window now, if anything was left out."""
        with self._lock:
            summary = self._take_summary()
        self._summarise(summary)

    def _take_summary(self) -> int:
        count, self._suppressed = self._suppressed, 0
        if self._timer is not None:
            self._timer.cancel()  # harmless when called from the timer itself
            self._timer = None
        return count

    def _summarise(self, count: int) -> None:
        if count:
            self.logger.warning("%d more refused connections in the last minute (not logged one by one)", count)


class _Slot:
    """One connection in the middle of its handshake."""

    __slots__ = ("sock", "since", "evicted")

    def __init__(self, sock: socket.socket, since: float):
        self.sock = sock
        self.since = since
        self.evicted = False


class SecretAuthenticator:
    """rpyc authenticator: the peer must prove it knows the agent secret; then we prove it too."""

    def __init__(self, secret: str, *, timeout: float = pauth.HANDSHAKE_TIMEOUT,
                 max_pending: int = MAX_PENDING, evict_after: float = EVICT_AFTER,
                 refusals: RefusalLog | None = None):
        pauth.secret_key(secret)  # fail at start-up, not at the first connection
        self._secret = secret
        self.timeout = float(timeout)
        self.max_pending = int(max_pending)
        self.evict_after = float(evict_after)
        self.refusals = refusals if refusals is not None else RefusalLog()
        # Our own user, and root: some SSH servers (e.g. Dropbear) open forwarded
        # connections from a root process, and root could read the secret anyway, so a
        # root peer goes through the handshake like the owner rather than being refused.
        self._own_uids = frozenset({os.getuid(), os.geteuid(), 0})
        self._lock = threading.Lock()
        self._pending: dict[_Slot, None] = {}  # insertion order = age order

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a log line
        return f"SecretAuthenticator(timeout={self.timeout:g})"

    def __call__(self, sock: socket.socket) -> tuple[socket.socket, None]:
        peer = _peer(sock)
        return self.authenticate(sock, peer, self.admit(sock, peer))

    def admit(self, sock: socket.socket, peer: str, *, busy: str | None = None) -> _Slot:
        """The checks that need no waiting: refuse (AuthenticationError, logged) a connection
        of another user, with a decoy greeting; one finding every handshake slot taken, or
        arriving while the caller is `busy` (the reason), with the BUSY greeting; else take
        a slot for `authenticate`. Never blocks."""
        set_nodelay(sock)
        owner = peer_uid(sock)  # None: cannot tell; the handshake decides alone
        if owner is not None and owner not in self._own_uids:
            send_now(sock, pauth.server_hello(pauth.make_nonce()))  # a decoy: see send_now
            self._refuse(peer, f"opened by another user (uid {owner})")
        slot = None if busy else self._take_slot(sock)
        if slot is None:
            send_now(sock, pauth.server_busy())
            self._refuse(peer, busy or "too many connections authenticating at once")
        return slot

    def authenticate(self, sock: socket.socket, peer: str, slot: _Slot) -> tuple[socket.socket, None]:
        """The handshake on an admitted connection (releases its slot); AuthenticationError
        (logged) if the peer does not prove the secret in time."""
        reason = None
        try:
            try:
                self._handshake(sock)
            finally:
                self.release(slot)
        except AuthenticationError as exc:
            reason = str(exc)
        except (OSError, ValueError) as exc:  # timeouts, resets, EOF, malformed frames
            reason = _describe(exc)
        finally:
            try:
                sock.settimeout(None)  # rpyc serves the connection in blocking mode
            except OSError:
                pass
        if slot.evicted:  # read after release: no eviction can happen any more
            reason = (f"handshake still unfinished after {self.evict_after:g} s while every slot "
                      "was taken: its slot was needed by a new connection")
        if reason is not None:
            self._refuse(peer, reason)
        log.debug("authenticated connection from %s", peer)
        return sock, None

    def _refuse(self, peer: str, reason: str) -> NoReturn:
        self.refusals.refused(peer, reason)
        raise AuthenticationError(reason)

    def _take_slot(self, sock: socket.socket) -> _Slot | None:
        with self._lock:
            now = time.monotonic()
            if len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending), None)
                if oldest is None or now - oldest.since < self.evict_after:
                    return None
                # Its thread is still in _handshake (it leaves _pending under this lock
                # first), so the socket is open: shutdown wakes its recv with EOF.
                oldest.evicted = True
                del self._pending[oldest]
                try:
                    oldest.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            slot = _Slot(sock, now)
            self._pending[slot] = None
            return slot

    def release(self, slot: _Slot) -> None:
        with self._lock:
            self._pending.pop(slot, None)

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


def send_now(sock: socket.socket, data: bytes) -> None:
    """Send a few bytes without ever blocking (the accept loop calls this), then leave the
    socket blocking. A fresh connection's send buffer is empty, so they fit; a peer that is
    already gone just gets nothing.

    To another user's connection this sends a decoy greeting whose answer is never read:
    their copy of our client then reports "refused" (an authentication error) rather than
    a broken connection. No proof is computed; the caller closes at once."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass
    finally:
        try:
            sock.setblocking(True)
        except OSError:
            pass


def peer_address(sock: socket.socket) -> str | None:
    """"host:port" of the peer; None if it is already gone (ENOTCONN after a reset)."""
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, ValueError):
        return None


def _peer(sock: socket.socket) -> str:
    return peer_address(sock) or "unknown peer"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "handshake timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()  # "connection reset by peer", without "[Errno 104]"
    return str(exc) or type(exc).__name__
