"""The client's end of one agent connection: raw TCP, mutual auth, then rpyc.

    conn = AgentConnection.connect("127.0.0.1", port, secret)
    results = conn.batch([("hello", {}), ("ps", {})])   # one round trip
    conn.close()

The connection goes to a local port (the SSH tunnel's end, or the agent itself). Before
rpyc starts, the client proves it knows the agent secret and checks that the agent proves
it too: a process squatting the port of a dead agent learns nothing and is refused.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from ...protocol import auth as pauth
from ...protocol.codec import decode_reply, encode_request
from ..errors import ServiceError
from ...sockopts import set_nodelay

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_CALL_TIMEOUT = pauth.SYNC_REQUEST_TIMEOUT  # a `wait` long-poll may take 60 s


class AgentError(ServiceError):
    """Base of the errors of one agent connection (this module). The agent transport
    (agent.py) maps them to the client's errors; other callers see them as ServiceErrors."""


class AgentConnectionError(AgentError):
    """The agent cannot be reached, the connection broke, or a call timed out."""


class AgentTimeout(AgentConnectionError):
    """The agent did not answer within the time limit (a call, or the handshake)."""


class AgentBusyError(AgentConnectionError):
    """The agent refused the connection: it serves as many as it allows."""


class AgentAuthError(AgentConnectionError):
    """Authentication failed: wrong secret, or the peer is not our agent."""


def _recv_exact(sock: socket.socket, size: int, deadline: float, what: str) -> bytes:
    chunks = []
    missing = size
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout(f"timed out waiting for {what}")
        sock.settimeout(remaining)
        chunk = sock.recv(missing)
        if not chunk:
            raise ConnectionResetError(f"connection closed while waiting for {what}")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def client_handshake(sock: socket.socket, secret: str, *, timeout: float = pauth.HANDSHAKE_TIMEOUT,
                     where: str = "the agent") -> None:
    """The client half of the mutual challenge-response on a connected raw socket.

    Raises AgentAuthError if the agent refuses us or cannot prove the secret itself,
    AgentConnectionError if the peer is not an agent or the connection fails.
    """
    try:
        pauth.secret_key(secret)
    except ValueError as exc:
        raise AgentAuthError(f"unusable agent secret: {exc}") from exc
    deadline = time.monotonic() + timeout
    try:
        hello = _recv_exact(sock, pauth.SERVER_HELLO_BYTES, deadline, "the agent's greeting")
        try:
            server_nonce = pauth.parse_server_hello(hello)
        except pauth.AgentBusy as exc:
            raise AgentBusyError(f"{where} refused the connection: {exc}") from exc
        except ValueError as exc:
            raise AgentConnectionError(f"{where} is not a seamless-service agent (unexpected greeting)") from exc
        client_nonce = pauth.make_nonce()
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(pauth.client_answer(secret, server_nonce, client_nonce))
        try:
            proof = _recv_exact(sock, pauth.SERVER_PROOF_BYTES, deadline, "the agent's proof")
        except ConnectionError as exc:
            # The agent closes the connection without a word when our proof is wrong.
            raise AgentAuthError(
                f"{where} refused the secret (the agent was restarted? fetch its secret again)") from exc
    except OSError as exc:
        raise _lost(exc, f"authentication with {where} failed: {_reason(exc)}") from exc
    expected = pauth.response(secret, "agent", server_nonce, client_nonce)
    if not pauth.verify(expected, proof):
        raise AgentAuthError(
            f"{where} could not prove it knows the secret: not our agent (another process on that port?)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return str(exc) or "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _lost(exc: BaseException, message: str) -> AgentConnectionError:
    """The error for a socket or rpyc failure: AgentTimeout when it was a timeout."""
    return (AgentTimeout if isinstance(exc, socket.timeout) else AgentConnectionError)(message)


def _rpyc_error(exc: BaseException, where: str, doing: str, limit: float | None = None) -> AgentError:
    """rpyc's (and the stream's) errors as this module's: the one place that knows them.

    `doing` is "call" (a call sent on an open session: `limit` is its time limit) or
    "session" (opening rpyc on an authenticated stream)."""
    from rpyc.core.async_ import AsyncResultTimeout

    if isinstance(exc, AgentError):
        return exc
    if doing == "session":
        detail = _reason(exc) if isinstance(exc, (OSError, EOFError)) else f"{type(exc).__name__}: {exc}"
        return _lost(exc, f"cannot open a session with {where}: {detail}")
    if isinstance(exc, AsyncResultTimeout):
        return AgentTimeout(f"{where} did not answer within {limit:g} s")
    if isinstance(exc, (EOFError, OSError)):
        return _lost(exc, f"connection to {where} was lost: {_reason(exc)}")
    # anything else is a remote exception: the agent refused the call
    return AgentConnectionError(f"{where} failed the call: {type(exc).__name__}: {exc}")


class AgentConnection:
    """One authenticated rpyc connection to an agent. Thread-safe for concurrent calls."""

    def __init__(self, rpyc_conn: Any, sock: socket.socket, where: str, call_timeout: float,
                 channel: Any = None):
        import rpyc

        self._conn = rpyc_conn
        self._channel = channel  # rpyc's Channel over `sock`: closed first by close()
        self.sock = sock
        self.where = where
        self.call_timeout = call_timeout
        self._remote_call = rpyc_conn.root.call
        # answers held for conditional replies (held.py), set by the transport once this
        # agent's hello advertised them; per connection, so a reconnect starts empty
        self.held: Any = None
        self._async_call = rpyc.async_(self._remote_call)  # keep a reference: rpyc caches it weakly

    @classmethod
    def connect(cls, host: str, port: int, secret: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                call_timeout: float = DEFAULT_CALL_TIMEOUT) -> "AgentConnection":
        """Connect, authenticate both ways, and open rpyc (uncompressed, hardened config)."""
        where = f"the agent at {host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            hint = " (is the agent running?)" if isinstance(exc, ConnectionRefusedError) else ""
            raise _lost(exc, f"cannot connect to {where}: {_reason(exc)}{hint}") from exc
        set_nodelay(sock)
        return cls.over(sock, secret, where=where, timeout=timeout, call_timeout=call_timeout)

    @classmethod
    def over(cls, stream: Any, secret: str, *, where: str, timeout: float = DEFAULT_CONNECT_TIMEOUT,
             call_timeout: float = DEFAULT_CALL_TIMEOUT) -> "AgentConnection":
        """Authenticate and open rpyc over any connected socket-like object: a TCP socket,
        or a paramiko Channel (recv/sendall/settimeout/fileno/shutdown/close are all that
        the handshake and rpyc's SocketStream use). The stream is closed on failure."""
        try:
            client_handshake(stream, secret, timeout=timeout, where=where)
            stream.settimeout(None)  # rpyc polls with its own timeouts
            rpyc_conn, channel = _open_rpyc(stream)
            return cls(rpyc_conn, stream, where, call_timeout, channel)
        except AgentError:
            stream.close()
            raise
        except Exception as exc:  # noqa: BLE001 - rpyc errors come in many types
            stream.close()
            raise _rpyc_error(exc, where, "session") from exc

    def call(self, request: bytes, *, timeout: float | None = None) -> bytes:
        """Send one msgpack request, return the agent's msgpack reply."""
        limit = self.call_timeout if timeout is None else timeout
        sent = self.send(request)
        sent.set_expiry(limit)
        return self._reply(sent, limit)

    def send(self, request: bytes) -> Any:
        """Send one msgpack request without waiting: what wait() takes to get its reply.
        Sending to many agents before waiting for any is how Fleet asks N hosts in about
        the time of one (api.py)."""
        if type(request) is not bytes:
            raise TypeError("request must be bytes")
        try:
            return self._async_call(request)
        except Exception as exc:  # noqa: BLE001 - a lost stream
            raise _rpyc_error(exc, self.where, "call", self.call_timeout) from exc

    def wait(self, sent: Any, *, timeout: float | None = None) -> bytes:
        """The reply to what send() sent, waiting at most `timeout` seconds from now (None:
        the connection's call timeout). A reply that arrived while the caller was busy
        elsewhere is taken even when the time is up: what is late is then the caller."""
        limit = self.call_timeout if timeout is None else timeout
        try:
            # `ready` reads what already arrived, without waiting (send() set no expiry)
            if not sent.ready:
                sent.set_expiry(max(0.0, limit))
        except Exception as exc:  # noqa: BLE001 - a lost stream
            raise _rpyc_error(exc, self.where, "call", limit) from exc
        return self._reply(sent, limit)

    def _reply(self, sent: Any, limit: float) -> bytes:
        try:
            reply = sent.value
        except Exception as exc:  # noqa: BLE001 - rpyc's timeout, a lost stream, a remote exception
            raise _rpyc_error(exc, self.where, "call", limit) from exc
        if type(reply) is not bytes:
            raise AgentConnectionError(f"{self.where} sent a reply that is not bytes")
        return reply

    def batch(self, ops: list[tuple[str, dict]], *, timeout: float | None = None) -> list[dict]:
        """Run `ops` in one round trip; one result dict per op, in order.

        A request-level refusal (malformed, version mismatch, too large) raises
        protocol.ProtocolError.
        """
        reply = self.call(encode_request(ops), timeout=timeout)
        return decode_reply(reply, expected=len(ops))

    @property
    def closed(self) -> bool:
        return bool(self._conn.closed)

    def close(self) -> None:
        """Close at once, never waiting for the agent. Never raises.

        rpyc's own Connection.close() sends HANDLE_CLOSE and waits for the reply up to
        sync_request_timeout (90 s): an agent whose thread for this connection is stuck in
        an op never replies, so closing held the caller for 90 s after its call had
        already timed out. Closing the channel first ends the connection on our side:
        rpyc's close() then fails its send at once (EOFError, which it ignores) and only
        releases what it holds. The agent reads EOF, which ends its side as HANDLE_CLOSE
        would (once its op returns).
        """
        if self._channel is not None:
            try:
                self._channel.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not raise
                pass
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "AgentConnection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open_rpyc(sock: socket.socket) -> tuple[Any, Any]:
    """rpyc over an authenticated socket: our hardened config, no frame compression.
    Returns the connection and its Channel (AgentConnection.close() closes that first)."""
    from rpyc.core.service import VoidService
    from rpyc.core.stream import SocketStream
    from rpyc.utils.factory import connect_channel

    from ...protocol.frames import MAX_REPLY_FRAME_BYTES, LimitedChannel

    # connect_stream() would build a compressing Channel; ours skips zlib (~5 ms per 180 KB).
    # LimitedChannel also reads a small reply in one recv() (rpyc's Channel: two) and
    # refuses a frame past the reply limit before reading its body.
    channel = LimitedChannel(SocketStream(sock), limit=MAX_REPLY_FRAME_BYTES)
    return connect_channel(channel, service=VoidService, config=dict(pauth.RPYC_CONFIG)), channel
