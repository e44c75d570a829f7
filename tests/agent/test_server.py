"""A real agent process (`python -m seamless_service agent serve`), real sockets on 127.0.0.1:
the batch call works, the listening socket is loopback-only, and nothing but `call(bytes)`
is reachable through rpyc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import msgpack
import pytest
import rpyc
from rpyc.core import consts
from rpyc.core.channel import Channel
from rpyc.core.netref import BaseNetref
from rpyc.core.stream import SocketStream
from rpyc.utils.factory import connect_channel
from rpyc.utils.teleportation import export_function

from seamless_service.agent import lifecycle
from seamless_service.client.transport.agent_conn import AgentConnection, AgentConnectionError, client_handshake
from seamless_service.protocol import ErrorCode, ProtocolError, decode_reply, encode_request

from tests.support.agent import end_agent, spawn_agent  # noqa: E402


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    base = tmp_path_factory.mktemp("server") / "rhl"
    proc, info = spawn_agent(base)
    info["secret"] = lifecycle.read_secret(base)
    info["base"] = base
    yield info
    assert end_agent(proc) == 0


def raw_rpyc(agent: dict, service=rpyc.VoidService, config=None, channel_cls=Channel):
    """An authenticated socket wrapped in rpyc with whatever service/config a test wants."""
    sock = socket.create_connection(("127.0.0.1", agent["port"]), timeout=10)
    client_handshake(sock, agent["secret"])
    sock.settimeout(None)
    return connect_channel(channel_cls(SocketStream(sock)), service=service,
                           config=config or {"sync_request_timeout": 10})


def test_batch_round_trip_and_unknown_op(agent):
    with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"]) as conn:
        results = conn.batch([("no_such_op", {}), ("hello", {})])
        assert len(results) == 2
        assert results[0]["ok"] is False
        assert results[0]["error"]["code"] == ErrorCode.UNKNOWN_OP
        assert "ok" in results[1]
        # the connection keeps working after an op failed
        again = conn.batch([("another_unknown", {"x": 1})])
        assert again[0]["error"]["code"] == ErrorCode.UNKNOWN_OP


def test_malformed_request_is_a_request_level_error(agent):
    with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"]) as conn:
        reply = msgpack.unpackb(conn.call(b"\xc1 not msgpack"), raw=False)
        assert reply["error"]["code"] == ErrorCode.MALFORMED
        reply = msgpack.unpackb(conn.call(msgpack.packb([1, 2])), raw=False)
        assert reply["error"]["code"] == ErrorCode.MALFORMED
        with pytest.raises(ProtocolError) as info:
            decode_reply(conn.call(encode_request([("hello", {})], version=999)))
        assert info.value.code == ErrorCode.VERSION_MISMATCH
        assert conn.batch([("nope", {})])[0]["error"]["code"] == ErrorCode.UNKNOWN_OP


def test_call_timeout_leaves_the_connection_usable(agent):
    with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"]) as conn:
        first = conn.batch([("wait", {"timeout": 0})])[0]
        assert first["ok"], first
        token = first["value"]["token"]
        with pytest.raises(AgentConnectionError) as info:
            conn.batch([("wait", {"token": token, "timeout": 1.5})], timeout=0.2)
        assert "did not answer within 0.2 s" in str(info.value)
        assert conn.batch([("nope", {})])[0]["error"]["code"] == ErrorCode.UNKNOWN_OP
        time.sleep(1.6)  # the late reply arrives now and must be dropped, not mistaken
        assert conn.batch([("nope", {})])[0]["error"]["code"] == ErrorCode.UNKNOWN_OP


def test_client_socket_has_nodelay_and_no_compression(agent):
    with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"]) as conn:
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert conn._conn._channel.compress is False


class RecordingChannel(Channel):
    """Records the 'compressed' flag of every frame the agent sends."""

    flags: list = []

    def recv(self):
        header = self.stream.read(self.FRAME_HEADER.size)
        length, compressed = self.FRAME_HEADER.unpack(header)
        RecordingChannel.flags.append((length, compressed))
        data = self.stream.read(length + len(self.FLUSHER))[:-len(self.FLUSHER)]
        return zlib.decompress(data) if compressed else data


def test_agent_sends_large_frames_uncompressed(agent):
    RecordingChannel.flags = []
    conn = raw_rpyc(agent, channel_cls=RecordingChannel)
    try:
        request = encode_request([(f"unknown_{i}", {}) for i in range(200)])
        reply = conn.root.call(request)
        assert len(reply) > 5 * Channel.COMPRESSION_THRESHOLD
    finally:
        conn.close()
    big = [(n, c) for n, c in RecordingChannel.flags if n > Channel.COMPRESSION_THRESHOLD]
    assert big, "the reply frame was not seen"
    assert all(c == 0 for _, c in big)


def _listeners(table: str, port: int) -> list[str]:
    """Local addresses (hex) of LISTEN sockets on `port` in /proc/net/tcp or tcp6."""
    found = []
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        address, hexport = fields[1].rsplit(":", 1)
        if int(hexport, 16) == port and fields[3] == "0A":
            found.append(address)
    return found


def test_listens_on_loopback_only(agent):
    v4 = _listeners("/proc/net/tcp", agent["port"])
    assert v4 == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert _listeners("/proc/net/tcp6", agent["port"]) == []
    assert agent["host"] == "127.0.0.1"


def test_serve_refuses_other_addresses(tmp_path):
    env = dict(os.environ, REMOTE_HTTP_LAUNCHER_DIR=str(tmp_path / "rhl"))
    for host in ("0.0.0.0", "::", "192.168.1.1"):
        result = subprocess.run(
            [sys.executable, "-m", "seamless_service", "agent", "serve", "--host", host],
            env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert "127.0.0.1 only" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "rhl" / "agent" / "agent.json").exists()


def _teleported(x):
    return x + 1


def test_only_call_is_reachable(agent):
    conn = raw_rpyc(agent)
    try:
        reply = conn.root.call(encode_request([("nope", {})]))
        assert type(reply) is bytes
        for name in ("_conn", "_ctx", "getattr", "getmodule", "eval", "execute", "teleport",
                     "namespace", "__dict__", "get_service_name", "exposed_get_service_name",
                     "on_connect", "_rpyc_getattr"):
            with pytest.raises(AttributeError):
                getattr(conn.root, name)
        for name in ("__globals__", "__func__", "__self__", "__code__", "__closure__"):
            with pytest.raises(AttributeError):
                getattr(conn.root.call, name)
            with pytest.raises(AttributeError):
                getattr(conn.root.exposed_call, name)
        with pytest.raises(AttributeError):
            conn.root.x = 1
        # __class__ of a netref is resolved locally: no remote class object comes back
        assert not isinstance(conn.root.__class__, BaseNetref)
        assert type(conn.root.__class__) is type
        # this is not a classic connection, and the agent has no classic surface
        assert not hasattr(conn, "modules") and not hasattr(conn, "eval")
        # teleporting a function: what rpyc.classic.teleport_function sends, made to reach
        # the agent (called on this connection it fails locally: no `namespace`/`modules`).
        # The agent refuses the module a classic peer would import it with, and the
        # exported code itself sent to `call`; both errors come from the agent.
        exported = export_function(_teleported)
        with pytest.raises(AttributeError, match="access denied") as refused:
            conn.root.getmodule("rpyc.utils.teleportation").import_function(exported, {}, True)
        assert hasattr(refused.value, "_remote_tb")  # raised by the agent, not locally
        with pytest.raises(TypeError, match="takes one msgpack request as bytes") as refused:
            conn.root.call(exported)
        assert hasattr(refused.value, "_remote_tb")
        # pickling is off
        with pytest.raises(ValueError):
            conn.sync_request(consts.HANDLE_PICKLE, conn.root, 2)
        with pytest.raises(ValueError):
            rpyc.classic.obtain(conn.root)
        # introspection is refused: no attribute names, addresses or class paths
        for ask in (dir, repr, str, hash):
            with pytest.raises(ValueError, match="answers only call"):
                ask(conn.root)
        with pytest.raises(ValueError, match="answers only call"):
            repr(conn.root.call)
        # still serving after all that
        assert type(conn.root.call(encode_request([("nope", {})]))) is bytes
    finally:
        conn.close()


def test_classic_client_cannot_even_connect(agent):
    with pytest.raises(AttributeError):
        raw_rpyc(agent, service=rpyc.ClassicService)


class Tripwire:
    """A local object that records any use made of it (through a netref, by the agent)."""

    touched: list = []

    def __bytes__(self):
        Tripwire.touched.append("__bytes__")
        return b"x"

    def __len__(self):
        Tripwire.touched.append("__len__")
        return 1

    def __iter__(self):
        Tripwire.touched.append("__iter__")
        return iter([])

    def __repr__(self):
        Tripwire.touched.append("__repr__")
        return "Tripwire()"

    def __str__(self):
        Tripwire.touched.append("__str__")
        return "Tripwire"


class BytesLike(bytes):
    pass


def test_non_bytes_arguments_are_refused_untouched(agent):
    # Our side would let the agent poke at our objects; the agent must not even try.
    conn = raw_rpyc(agent, config={"sync_request_timeout": 10, "allow_public_attrs": True,
                                   "allow_all_attrs": True})
    asked = []  # every request the agent sends us, by handler id
    original = conn._dispatch_request

    def spy(seq, raw_args):
        asked.append(raw_args[0])
        return original(seq, raw_args)

    conn._dispatch_request = spy
    try:
        Tripwire.touched = []
        for bad in ([1, 2], {"op": "ps"}, bytearray(b"\x80"), BytesLike(b"\x80"), Tripwire(), "text", 7):
            with pytest.raises(TypeError):
                conn.root.call(bad)
        with pytest.raises(TypeError):
            conn.root.call()
        with pytest.raises(TypeError):
            conn.root.call(b"a", b"b")
        assert Tripwire.touched == []
        # not even rpyc's own bookkeeping: the agent refused the references while unboxing,
        # before asking us what class they are (HANDLE_INSPECT) - it never called us back
        assert asked == [], asked
        assert type(conn.root.call(encode_request([("nope", {})]))) is bytes
    finally:
        conn.close()


def test_comparison_and_inspection_handlers_are_refused(agent):
    # HANDLE_CMP looked its operator up on type(root): any class-level exposed_* attribute
    # (rpyc.Service's exposed_get_service_name, our exposed_call) was reachable that way.
    # HANDLE_INSPECT listed every method name and docstring of the service.
    conn = raw_rpyc(agent)
    try:
        request = encode_request([("hello", {})])
        for op in ("exposed_call", "exposed_get_service_name", "__eq__"):
            with pytest.raises(ValueError, match="answers only call"):
                conn.sync_request(consts.HANDLE_CMP, conn.root, request, op)
        assert conn.sync_request(consts.HANDLE_INSPECT, conn.root.____id_pack__) == ()
        for handler in (consts.HANDLE_INSTANCECHECK, consts.HANDLE_BUFFITER, consts.HANDLE_PING,
                        consts.HANDLE_CTXEXIT):
            with pytest.raises(Exception, match="answers only call"):
                conn.sync_request(handler, conn.root, 1)
        with pytest.raises(TypeError, match="answers only call"):  # only root.call is callable
            conn.sync_request(consts.HANDLE_CALL, conn.root, (request,))
        assert decode_reply(conn.root.call(request))[0]["ok"]
    finally:
        conn.close()


def test_remote_errors_carry_no_traceback(agent):
    conn = raw_rpyc(agent)
    try:
        with pytest.raises(TypeError) as info:
            conn.root.call([1])
        text = str(info.value)
        assert "service.py" not in text and 'File "' not in text
    finally:
        conn.close()


def test_port_in_use_is_a_readable_error(agent, tmp_path):
    env = dict(os.environ, REMOTE_HTTP_LAUNCHER_DIR=str(tmp_path / "rhl"))
    result = subprocess.run(
        [sys.executable, "-m", "seamless_service", "agent", "serve", "--port", str(agent["port"])],
        env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "rhl" / "agent" / "agent.json").exists()
    assert not (tmp_path / "rhl" / "agent" / "secret").exists()
