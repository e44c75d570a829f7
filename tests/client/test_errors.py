"""client/errors.py: one tree, each lower layer mapped in one place, typed timeouts, causes kept.

The mappings are checked with the lower layers' real exceptions (pure logic), and with real
failures where they are cheap: a closed port, a wrong key on the real sshd, an agent frozen
with SIGSTOP, a listener that never speaks.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import signal
import socket
import subprocess
from pathlib import Path

import paramiko
import pytest
import sshtunnel

import seamless_service
from seamless_service import deploy
from seamless_service.client import errors
from seamless_service.client.errors import (
    AgentUnavailable, AgentUnreachable, AuthFailed, ConnectionFailed, ForwardingRefused, OpError,
    ProtocolMismatch, ServiceError, TimedOut, UsageError, from_protocol_error,
)
from seamless_service.client.keeper.client import KeeperBusy, KeeperLost, refusal
from seamless_service.client.keeper.framing import ReplyCode
from seamless_service.client.transport.agent_conn import AgentConnection, AgentConnectionError, AgentTimeout
from seamless_service.client.transport.ssh_errors import map_ssh_error
from seamless_service.client.transport.tunnel import Tunnel
from seamless_service.protocol import ErrorCode, ProtocolError
from tests.support.services import wait_until
from tests.support.agent import end_agent, start_test_agent
from tests.support.sshd import free_port

HOST = "h1"

# Exceptions that never leave their module: each is caught and mapped right there.
INTERNAL = {
    "seamless_service.client.transport.agent._AgentGone",       # AgentTransport: redeploy or AgentUnavailable
    "seamless_service.client.keeper.framing.FrameError",        # keeper/client.py: KeeperLost
    "seamless_service.client.keeper.framing.FrameTooLarge",
    "seamless_service.client.keeper.framing.FrameTruncated",
    "seamless_service.client.keeper.framing.OlderKeeper",      # keeper/client.py: replaces that keeper
    "seamless_service.client.keeper.KeeperDirError",            # keeper/client.py: KeeperUnavailable
    "seamless_service.client.transport.openssh.StartFailed",   # AgentTransport: AgentUnavailable
}


def _client_exception_classes() -> list[type]:
    import seamless_service.client as client

    found = []
    for info in pkgutil.walk_packages(client.__path__, client.__name__ + "."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_exception_the_client_raises_is_a_service_error():
    classes = _client_exception_classes()
    assert len(classes) > 15  # the walk found the client's modules
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes
              if not issubclass(c, ServiceError) and f"{c.__module__}.{c.__qualname__}" not in INTERNAL]
    assert strays == []


def test_one_auth_failed_and_the_public_names():
    # deploy/ keeps its own SSH errors (it runs without the client); the client has one AuthFailed.
    auth = [c for c in _client_exception_classes() if c.__name__ == "AuthFailed"]
    assert auth == [AuthFailed]
    for name in ("ServiceError", "ConnectionFailed", "AuthFailed", "TimedOut", "ProtocolMismatch",
                 "OpError", "UsageError"):
        assert getattr(seamless_service, name) is getattr(errors, name), name
    assert issubclass(TimedOut, ConnectionFailed) and issubclass(AgentUnavailable, ConnectionFailed)


# ------------------------------------------------------------------ SSH: one mapping point


def _channel_refused(code: int, text: str) -> paramiko.ChannelException:
    return paramiko.ChannelException(code, text)


@pytest.mark.parametrize("lower, expected", [
    (deploy.AuthFailed("authentication to h1 as u failed"), AuthFailed),
    (deploy.HostKeyChanged("host key for h1 CHANGED"), AuthFailed),
    (deploy.HostKeyUnknown("host key for h1 is not in known_hosts"), AuthFailed),
    (deploy.RemoteTimeout("cannot reach h1: timed out after 5 s"), TimedOut),
    (socket.timeout("timed out"), TimedOut),
    (deploy.SshError("cannot reach h1 (127.0.0.1:1): Connection refused"), ConnectionFailed),
    (paramiko.SSHException("Timeout opening channel."), ConnectionFailed),
    (EOFError(), ConnectionFailed),
    (sshtunnel.BaseSSHTunnelForwarderError("Could not establish session to SSH gateway"), ConnectionFailed),
])
def test_ssh_errors_map_by_type(lower, expected):
    mapped = map_ssh_error(HOST, lower)
    assert type(mapped) is expected
    assert isinstance(mapped, ServiceError) and str(mapped).startswith(f"{HOST}: ")
    assert (str(lower) or type(lower).__name__) in str(mapped)


def test_refused_channels_map_by_code():
    prohibited = map_ssh_error(HOST, _channel_refused(1, "Administratively prohibited"), port=4000)
    assert type(prohibited) is ForwardingRefused and "refuses port forwarding" in str(prohibited)
    closed = map_ssh_error(HOST, _channel_refused(2, "Connect failed"), port=4000)
    assert type(closed) is AgentUnreachable and "port 4000" in str(closed)


def test_refused_connection_keeps_the_socket_error_as_cause(tmp_path):
    """A closed port: ConnectionFailed (not a timeout), and the chain down to the socket."""
    config = tmp_path / "ssh_config"
    config.write_text(f"Host down\n  HostName 127.0.0.1\n  Port {free_port()}\n  StrictHostKeyChecking no\n"
                      "  UserKnownHostsFile /dev/null\n")
    with pytest.raises(ConnectionFailed) as info:
        Tunnel("down", ssh_config=config, connect_timeout=5).open()
    error = info.value
    assert type(error) is ConnectionFailed and "Connection refused" in str(error)
    assert isinstance(error.__cause__, deploy.SshError)
    assert isinstance(error.__cause__.__cause__, ConnectionRefusedError)


def test_wrong_key_on_the_real_sshd_is_auth_failed_with_paramikos_cause(sshd, tmp_path):
    identity = tmp_path / "not_authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(identity)], check=True)
    config = sshd.write_ssh_config(tmp_path / "cfg", identity=identity)
    with pytest.raises(ServiceError) as info:
        Tunnel(sshd.alias, ssh_config=config, connect_timeout=10).open()
    error = info.value
    assert type(error) is AuthFailed and "the server refused" in str(error)
    assert isinstance(error.__cause__, deploy.AuthFailed)
    assert isinstance(error.__cause__.__cause__, paramiko.AuthenticationException)


# ------------------------------------------------------------------ the agent connection


def _all_threads_stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for task in tasks.iterdir())


def test_a_frozen_agent_is_a_typed_timeout(tmp_path):
    agent = start_test_agent(tmp_path)
    try:
        with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"]) as conn:
            assert conn.batch([("hello", {})])[0]["ok"]
            os.kill(agent["pid"], signal.SIGSTOP)
            wait_until(lambda: _all_threads_stopped(agent["pid"]))  # a busy machine may take a moment
            try:
                with pytest.raises(AgentTimeout) as info:
                    conn.batch([("ps", {})], timeout=0.5)
            finally:
                os.kill(agent["pid"], signal.SIGCONT)
    finally:
        end_agent(agent["proc"])
    assert isinstance(info.value, ServiceError) and "did not answer within 0.5 s" in str(info.value)
    from rpyc.core.async_ import AsyncResultTimeout

    assert isinstance(info.value.__cause__, AsyncResultTimeout)  # rpyc's, kept for --debug


def test_a_peer_that_never_greets_is_a_typed_timeout():
    with socket.socket() as listener:  # accepts (backlog), never speaks
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with pytest.raises(AgentTimeout) as info:
            AgentConnection.connect("127.0.0.1", listener.getsockname()[1], "ab" * 32, timeout=0.3)
    assert "timed out" in str(info.value) and isinstance(info.value.__cause__, socket.timeout)


def test_a_closed_agent_port_is_a_connection_error_not_a_timeout():
    with pytest.raises(AgentConnectionError) as info:
        AgentConnection.connect("127.0.0.1", free_port(), "ab" * 32, timeout=2)
    assert not isinstance(info.value, AgentTimeout) and "is the agent running?" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


# ------------------------------------------------------------------ protocol and keeper


def test_protocol_errors_map_to_mismatch_or_op_error():
    mismatch = from_protocol_error(ProtocolError(ErrorCode.VERSION_MISMATCH, "protocol 9, not 1"), HOST)
    assert type(mismatch) is ProtocolMismatch and str(mismatch) == f"{HOST}: protocol 9, not 1"
    refused = from_protocol_error(ProtocolError(ErrorCode.TOO_LARGE, "request too large"), HOST)
    assert type(refused) is OpError and refused.code == ErrorCode.TOO_LARGE and refused.host == HOST


def test_op_error_from_a_result():
    error = OpError.from_result({"code": ErrorCode.CONFLICT, "message": "it runs"}, HOST)
    assert (error.code, error.message, str(error)) == (ErrorCode.CONFLICT, "it runs", f"{HOST}: it runs")
    assert OpError.from_result(None).code == ErrorCode.INTERNAL


def test_keeper_refusals_map_to_keeper_errors():
    busy = refusal({"ok": False, "code": ReplyCode.BUSY, "error": "running another command"})
    assert type(busy) is KeeperBusy and str(busy) == "running another command"
    other = refusal({"ok": False, "error": "unknown cmd 'x'"})
    assert type(other) is KeeperLost and str(other) == "tunnel keeper: unknown cmd 'x'"


def test_except_service_error_catches_every_kind():
    kinds = [AuthFailed(HOST, "m"), TimedOut(HOST, "m"), AgentUnavailable(HOST, "m"), ProtocolMismatch("m"),
             OpError(ErrorCode.NOT_FOUND, "m"), UsageError("m"), AgentTimeout("m"), KeeperLost("m"),
             map_ssh_error(HOST, OSError("m")), from_protocol_error(ProtocolError(ErrorCode.MALFORMED, "m"), HOST)]
    for error in kinds:
        try:
            raise error
        except ServiceError as caught:
            assert caught is error
