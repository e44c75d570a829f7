"""Authentication against a real agent process: only a client that proves the secret gets
rpyc, and a client only trusts an agent that proves it too. After every refused attempt the
agent still serves a correct client."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import rpyc

from seamless_service.agent import lifecycle
from seamless_service.agent.auth import SecretAuthenticator
from seamless_service.client.transport.agent_conn import (
    AgentAuthError,
    AgentConnection,
    AgentConnectionError,
    client_handshake,
)
from seamless_service.protocol import ErrorCode
from seamless_service.protocol import auth as pauth
from tests.support.agent import end_agent, spawn_agent

HANDSHAKE_TIMEOUT = 1.0  # the agent under test gives a new connection this long to authenticate


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth") / "rhl"
    proc, info = spawn_agent(base, "--handshake-timeout", str(HANDSHAKE_TIMEOUT))
    info["secret"] = lifecycle.read_secret(base)
    info["log"] = base / "serve.stderr"
    yield info
    assert end_agent(proc) == 0


def assert_serves(agent: dict) -> None:
    with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"]) as conn:
        assert conn.batch([("nope", {})])[0]["error"]["code"] == ErrorCode.UNKNOWN_OP


def raw_socket(agent: dict, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", agent["port"]), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True if the peer closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_correct_secret_is_served(agent):
    assert_serves(agent)


def test_plain_rpyc_without_secret_is_refused(agent):
    with pytest.raises(Exception) as info:
        conn = rpyc.connect("127.0.0.1", agent["port"], config={"sync_request_timeout": 5})
        try:
            conn.root.call(b"\x80")
        finally:
            conn.close()
    # refused by the authenticator (the connection is closed before rpyc's handshake), not
    # answered: no reply bytes, no rpyc-level error from a running service
    assert isinstance(info.value, (EOFError, ConnectionError)), repr(info.value)
    assert_serves(agent)


def test_wrong_secret_is_refused(agent):
    wrong = pauth.make_secret()
    with pytest.raises(AgentAuthError) as info:
        AgentConnection.connect("127.0.0.1", agent["port"], wrong)
    message = str(info.value)
    assert "refused" in message
    assert wrong not in message and agent["secret"] not in message
    assert_serves(agent)


def test_malformed_secret_is_refused_locally(agent):
    with pytest.raises(AgentAuthError) as info:
        AgentConnection.connect("127.0.0.1", agent["port"], "not-a-secret")
    assert "not-a-secret" not in str(info.value)
    assert_serves(agent)


def test_replayed_answer_is_refused(agent):
    # A genuine exchange, captured...
    first = raw_socket(agent)
    nonce1 = pauth.parse_server_hello(read_exact(first, pauth.SERVER_HELLO_BYTES))
    answer = pauth.client_answer(agent["secret"], nonce1, pauth.make_nonce())
    first.sendall(answer)
    assert len(read_exact(first, pauth.SERVER_PROOF_BYTES)) == pauth.SERVER_PROOF_BYTES
    first.close()
    # ...and replayed on a new connection: the agent's nonce differs, so the proof fails.
    second = raw_socket(agent)
    nonce2 = pauth.parse_server_hello(read_exact(second, pauth.SERVER_HELLO_BYTES))
    assert nonce2 != nonce1
    second.sendall(answer)
    assert read_exact(second, pauth.SERVER_PROOF_BYTES) == b""  # closed without a proof
    second.close()
    log = agent["log"].read_text()
    assert answer.hex() not in log and answer[pauth.NONCE_BYTES:].hex() not in log
    assert_serves(agent)


def test_garbage_answer_is_refused(agent):
    sock = raw_socket(agent)
    read_exact(sock, pauth.SERVER_HELLO_BYTES)
    sock.sendall(b"\x00" * pauth.CLIENT_ANSWER_BYTES)
    assert read_exact(sock, pauth.SERVER_PROOF_BYTES) == b""
    sock.close()
    assert_serves(agent)


def test_silent_client_does_not_block_others_and_is_dropped(agent):
    silent = raw_socket(agent)
    assert len(read_exact(silent, pauth.SERVER_HELLO_BYTES)) == pauth.SERVER_HELLO_BYTES
    assert_serves(agent)  # served while the silent client is still connected
    assert closed_by_peer(silent, HANDSHAKE_TIMEOUT + 10)
    silent.close()
    assert_serves(agent)


def test_dripping_client_is_dropped_at_the_deadline(agent):
    sock = raw_socket(agent)
    read_exact(sock, pauth.SERVER_HELLO_BYTES)
    start = time.monotonic()
    dropped = False
    for _ in range(int(pauth.CLIENT_ANSWER_BYTES)):  # one byte at a time, never a whole frame in time
        try:
            sock.sendall(b"\x01")
        except OSError:
            dropped = True
            break
        if closed_by_peer(sock, 0.25):
            dropped = True
            break
    sock.close()
    assert dropped
    assert time.monotonic() - start < HANDSHAKE_TIMEOUT + 10
    assert_serves(agent)


def test_refusals_are_logged_without_secrets(agent):
    with pytest.raises(AgentAuthError):
        AgentConnection.connect("127.0.0.1", agent["port"], pauth.make_secret())
    deadline = time.monotonic() + 5
    while "refused connection" not in agent["log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = agent["log"].read_text()
    assert "refused connection from 127.0.0.1" in log
    assert agent["secret"] not in log
    assert "Traceback" not in log


# ---------------------------------------------------------------- the client checks the agent


class FakeAgent:
    """A TCP listener on 127.0.0.1 that plays the agent's part without knowing the secret."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            if self.behaviour == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            conn.sendall(pauth.server_hello(pauth.make_nonce()))
            self.received = read_exact(conn, pauth.CLIENT_ANSWER_BYTES)
            if self.behaviour == "random-proof":
                conn.sendall(pauth.make_nonce())  # 32 random bytes: a guess at the proof
                time.sleep(0.5)
            elif self.behaviour == "reflect":
                conn.sendall(self.received[pauth.NONCE_BYTES:])  # the client's own proof back

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize("behaviour", ["random-proof", "reflect"])
def test_client_rejects_an_agent_that_cannot_prove_the_secret(behaviour):
    fake = FakeAgent(behaviour)
    secret = pauth.make_secret()
    try:
        with pytest.raises(AgentAuthError) as info:
            AgentConnection.connect("127.0.0.1", fake.port, secret, timeout=5)
        assert "could not prove" in str(info.value)
        assert secret not in str(info.value)
    finally:
        fake.close()


def test_client_rejects_a_foreign_service():
    fake = FakeAgent("http")
    try:
        with pytest.raises(AgentConnectionError) as info:
            AgentConnection.connect("127.0.0.1", fake.port, pauth.make_secret(), timeout=5)
        assert "not a seamless-service agent" in str(info.value)
    finally:
        fake.close()


def test_connection_refused_is_a_readable_error():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(AgentConnectionError) as info:
        AgentConnection.connect("127.0.0.1", port, pauth.make_secret(), timeout=5)
    assert "is the agent running?" in str(info.value)


def test_authenticator_sets_nodelay_on_accepted_sockets():
    secret = pauth.make_secret()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=5)
    accepted, _ = listener.accept()
    listener.close()
    outcome: dict = {}

    def server_side() -> None:
        try:
            outcome["result"] = SecretAuthenticator(secret, timeout=5)(accepted)
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=server_side)
    thread.start()
    client_handshake(client, secret, timeout=5)
    thread.join(5)
    try:
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"][0] is accepted
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert accepted.gettimeout() is None  # blocking again for rpyc
        assert secret not in repr(SecretAuthenticator(secret))
    finally:
        client.close()
        accepted.close()


def test_too_many_pending_handshakes_are_refused_at_once():
    secret = pauth.make_secret()
    authenticator = SecretAuthenticator(secret, timeout=5, max_pending=1)
    listener = socket.create_server(("127.0.0.1", 0))
    first_client = socket.create_connection(listener.getsockname(), timeout=5)
    first, _ = listener.accept()
    second_client = socket.create_connection(listener.getsockname(), timeout=5)
    second, _ = listener.accept()
    listener.close()
    outcome: dict = {}

    def occupy() -> None:  # a silent client holds the only slot
        try:
            authenticator(first)
        except Exception as exc:  # noqa: BLE001
            outcome["first"] = exc

    thread = threading.Thread(target=occupy)
    thread.start()
    try:
        read_exact(first_client, pauth.SERVER_HELLO_BYTES)  # the slot is taken now
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            authenticator(second)
        assert "too many" in str(info.value)
        assert time.monotonic() - start < 2  # refused at once, not after a timeout
    finally:
        first_client.close()
        thread.join(10)
        for sock in (second_client, first, second):
            sock.close()
    assert "first" in outcome  # the silent one was refused when it hung up
