"""client/transport/tunnel.py against a real sshd and a real agent: binding, NODELAY, large replies,
the kept session channel, and the real cause of SSH failures."""

from __future__ import annotations

import socket

import pytest
import sshtunnel

from seamless_service.client.transport.agent_conn import AgentConnection, AgentConnectionError
from seamless_service.client.errors import AuthFailed, ConnectionFailed
from seamless_service.sockopts import has_nodelay
from seamless_service.client.transport.tunnel import AgentUnreachable, Tunnel
from seamless_service.deploy import cache
from tests.support.remote import Remote
from tests.support.remote_state import BIG_LOG_BYTES
from tests.support.services import wait_until


def _endpoint(remote: Remote):
    endpoint = cache.load(remote.alias)
    assert endpoint is not None, "the first contact should have cached the endpoint"
    return endpoint


@pytest.fixture
def tunnel(remote: Remote):
    with Tunnel(remote.alias, ssh_config=remote.ssh_config) as t:
        yield t


def _big_log(remote: Remote) -> bytes:
    return (remote.state_dir / "big.log").read_bytes()


def test_channel_round_trips_a_200kb_reply(remote: Remote, tunnel: Tunnel):
    endpoint = _endpoint(remote)
    conn = tunnel.connect_agent(endpoint.remote_port, endpoint.secret)
    try:
        for _ in range(3):  # repeated: a second large reply must not stall or mix
            (result,) = conn.batch([("logs", {"key": "big"})])
            assert result["ok"], result
            assert len(result["value"]["data"]) == BIG_LOG_BYTES
            assert result["value"]["data"] == _big_log(remote)
    finally:
        conn.close()


def test_local_forward_binds_loopback_only_and_carries_200kb(remote: Remote, tunnel: Tunnel):
    endpoint = _endpoint(remote)
    conn = tunnel.connect_agent(endpoint.remote_port, endpoint.secret, via="forward")
    try:
        (forward,) = tunnel._forwards
        # sshtunnel's forwarder, on the Tunnel's own (host-key verified) transport
        assert isinstance(forward._forwarder, sshtunnel.SSHTunnelForwarder)
        assert forward._forwarder._transport is tunnel.transport
        host, port = forward.local_address
        assert host == "127.0.0.1"  # never 0.0.0.0 (sshtunnel's default)
        listener = forward.sockets()[0]
        assert listener.getsockname()[0] == "127.0.0.1"
        (result,) = conn.batch([("logs", {"key": "big"})])
        assert result["value"]["data"] == _big_log(remote)
        # NODELAY: the client's socket and the forward's accepted socket
        assert has_nodelay(conn.sock)
        accepted = forward.sockets()[1:]
        assert accepted and all(has_nodelay(sock) for sock in accepted)
    finally:
        conn.close()


def test_closing_the_forward_ends_its_connections_but_keeps_the_ssh_connection(remote: Remote, tunnel: Tunnel):
    endpoint = _endpoint(remote)
    forward = tunnel.forward(endpoint.remote_port)
    port = forward.local_port
    conn = AgentConnection.connect("127.0.0.1", port, endpoint.secret)
    try:
        assert conn.batch([("hello", {})])[0]["ok"]
        forward.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with pytest.raises(AgentConnectionError):
            conn.batch([("hello", {})])
    finally:
        conn.close()
    # sshtunnel's stop() would close the transport it was given; ours must stay up
    assert tunnel.alive
    again = tunnel.connect_agent(endpoint.remote_port, endpoint.secret, via="forward")
    try:
        assert again.batch([("hello", {})])[0]["ok"]
    finally:
        again.close()


def test_a_forward_to_a_dead_port_is_silent_and_gives_eof(tunnel: Tunnel, capfd):
    with socket.socket() as probe:  # a port nothing listens on (bound, not listening)
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
        forward = tunnel.forward(dead)
        with socket.create_connection(("127.0.0.1", forward.local_port), timeout=5) as client:
            client.settimeout(5)
            assert client.recv(1) == b""  # the channel could not open: the client sees EOF
    # sshtunnel logs that failure at ERROR level; nothing may reach the user's terminal
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert tunnel.alive


def test_the_forward_never_reads_keys_or_config_of_its_own(remote: Remote, tunnel: Tunnel, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sshtunnel looked for keys or authenticated by itself")

    monkeypatch.setattr(sshtunnel.SSHTunnelForwarder, "get_agent_keys", staticmethod(refuse))
    monkeypatch.setattr(sshtunnel.SSHTunnelForwarder, "read_private_key_file", staticmethod(refuse))
    monkeypatch.setattr(sshtunnel.SSHTunnelForwarder, "_get_transport", refuse)
    endpoint = _endpoint(remote)
    conn = tunnel.connect_agent(endpoint.remote_port, endpoint.secret, via="forward")
    try:
        assert conn.batch([("hello", {})])[0]["ok"]
    finally:
        conn.close()


def test_nodelay_on_the_ssh_transport_socket(tunnel: Tunnel):
    sock = tunnel.transport.sock
    assert isinstance(sock, socket.socket)
    assert has_nodelay(sock)
    assert tunnel.describe()["nodelay"] is True


def test_session_channel_kept_open_and_nothing_left_after_close(remote: Remote):
    before = set(remote.processes(b"cat"))
    t = Tunnel(remote.alias, ssh_config=remote.ssh_config).open()
    try:
        assert t.describe()["session_channel"] is True
        mine = wait_until(lambda: set(remote.processes(b"cat")) - before)
        assert mine, "the kept session should run `cat` on the host"
    finally:
        t.close()
    # `cat` exits when its stdin closes: nothing of ours stays on the host.
    wait_until(lambda: not (set(remote.processes(b"cat")) & mine))


def test_closed_port_is_agent_unreachable(remote: Remote, tunnel: Tunnel):
    with socket.socket() as probe:  # a port nothing listens on (bound, not listening)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with pytest.raises(AgentUnreachable) as info:
            tunnel.open_channel(port)
    assert remote.alias in str(info.value) and str(port) in str(info.value)


def test_unknown_host_key_is_refused_with_its_real_cause(sshd, tmp_path):
    config = sshd.write_ssh_config(tmp_path / "cfg", known_hosts=tmp_path / "empty_known_hosts")
    with pytest.raises(AuthFailed) as info:
        Tunnel(sshd.alias, ssh_config=config).open()
    message = str(info.value)
    assert "not in known_hosts" in message and "Could not establish" not in message
    assert "\n" not in message


def test_changed_host_key_is_refused(sshd):
    sshd.rotate_host_key()
    with pytest.raises(AuthFailed) as info:
        Tunnel(sshd.alias, ssh_config=sshd.ssh_config).open()
    assert "CHANGED" in str(info.value)


def test_refused_connection_names_host_and_cause(sshd):
    sshd.stop()
    with pytest.raises(ConnectionFailed) as info:
        Tunnel(sshd.alias, ssh_config=sshd.ssh_config, connect_timeout=5).open()
    assert not isinstance(info.value, AuthFailed)
    assert str(info.value).startswith(f"{sshd.alias}: ")
    assert "refused" in str(info.value).lower()


def test_dead_transport_is_noticed(remote: Remote):
    t = Tunnel(remote.alias, ssh_config=remote.ssh_config).open()
    try:
        assert t.alive
        t.transport.sock.shutdown(socket.SHUT_RDWR)  # as if the network dropped it
        wait_until(lambda: not t.alive)
        with pytest.raises(ConnectionFailed):
            t.open_channel(_endpoint(remote).remote_port)
        t.open()  # reopening gives a working connection again
        assert t.alive
    finally:
        t.close()
