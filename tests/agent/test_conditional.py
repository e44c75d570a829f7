"""Conditional replies, agent side (agent/sent.py, dispatch, protocol/conditional.py): a real
agent process answers "same as <tag>" only for the value it sent on that connection under
that tag, and only when asked; plus the pure pieces (the proof walk, slot keys, bounds)."""

from __future__ import annotations

import json
import os
import time

import msgpack
import pytest

from seamless_service.agent import dispatch, lifecycle, sent as sent_mod
from seamless_service.agent.context import AgentContext
from seamless_service.agent.sent import SentValues, provably_same
from seamless_service.client.transport.agent_conn import AgentConnection
from seamless_service.protocol import ErrorCode, decode_reply, encode_request
from seamless_service.protocol.conditional import MAX_TAG_LEN, check_held, slot_key
from seamless_service.protocol.errors import ProtocolError

from tests.support.agent import end_agent, spawn_agent

KEYS = [f"hashserver-clu-rw-cond{i}" for i in range(40)]


def _state(key: str, port: int = 5000) -> str:
    # pid 0: never alive, so the row is the same on every poll (no process can start or die)
    return json.dumps({"key": key, "status": "running", "pid": 0, "port": port, "hostname": "127.0.0.1"})


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)  # as the launcher writes its state


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    base = tmp_path_factory.mktemp("conditional") / "rhl"
    server_dir = AgentContext(base=base).server_dir
    server_dir.mkdir(parents=True)
    for key in KEYS:
        _write(str(server_dir / f"{key}.json"), _state(key))
    proc, info = spawn_agent(base)
    info.update(secret=lifecycle.read_secret(base), base=base, server_dir=server_dir)
    yield info
    assert end_agent(proc) == 0


def _connect(agent: dict) -> AgentConnection:
    return AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"])


def _ask(conn: AgentConnection, ops: list, held: list | None) -> tuple[list[dict], int]:
    reply = conn.call(encode_request(ops, held=held))
    return decode_reply(reply, expected=len(ops)), len(reply)


def test_hello_advertises_the_conditional_ops(agent):
    with _connect(agent) as conn:
        (hello,) = conn.batch([("hello", {})])
    assert hello["value"]["conditional"] == ["inspect", "logs", "persistent", "ps"]


def test_unchanged_state_twice_is_answered_same(agent):
    with _connect(agent) as conn:
        (first,), first_bytes = _ask(conn, [("ps", {})], [None])
        assert first["ok"] and len(first["value"]["rows"]) == len(KEYS)
        tag = first["tag"]
        assert isinstance(tag, str) and 0 < len(tag) <= MAX_TAG_LEN
        (second,), second_bytes = _ask(conn, [("ps", {})], [tag])
        assert second == {"ok": True, "same": tag}
        assert second_bytes < 100 < 2000 < first_bytes  # the rows did not travel again
        # the defaults filled in by the schema name the same slot as the bare call
        (third,), _ = _ask(conn, [("ps", {"side": "server", "no_status": False})], [tag])
        assert third == {"ok": True, "same": tag}


def test_a_changed_state_file_gets_the_full_value(agent):
    path = str(agent["server_dir"] / f"{KEYS[0]}.json")
    with _connect(agent) as conn:
        (first,), _ = _ask(conn, [("ps", {})], [None])
        try:
            _write(path, _state(KEYS[0], port=6001))
            # no waiting for a file event: the agent must never answer "same" for a changed file
            (second,), _ = _ask(conn, [("ps", {})], [first["tag"]])
        finally:
            _write(path, _state(KEYS[0]))
        assert "same" not in second and second["tag"] != first["tag"]
        row = next(r for r in second["value"]["rows"] if r["key"] == KEYS[0])
        assert row["port"] == 6001


def test_a_tag_from_another_connection_is_unknown(agent):
    with _connect(agent) as one:
        (first,), _ = _ask(one, [("ps", {})], [None])
        with _connect(agent) as two:
            (other,), _ = _ask(two, [("ps", {})], [first["tag"]])
    assert "same" not in other and other["value"] == first["value"] and "tag" in other


def test_an_unknown_tag_gets_the_full_value(agent):
    with _connect(agent) as conn:
        (first,), _ = _ask(conn, [("ps", {})], [None])
        (other,), _ = _ask(conn, [("ps", {})], ["not-a-tag-of-mine"])
        assert "same" not in other and other["value"]["rows"] == first["value"]["rows"]
        # the tag of one slot never stands for another (ps of the client side)
        (client_side,), _ = _ask(conn, [("ps", {"side": "client"})], [first["tag"]])
        assert "same" not in client_side and client_side["ok"]


def test_without_held_the_reply_is_as_before(agent):
    """A new agent with an old client: no "same", no tags, ever."""
    with _connect(agent) as conn:
        for _ in range(2):
            (result,) = conn.batch([("ps", {})])
            assert set(result) == {"ok", "value"}


def test_ops_outside_the_conditional_set_are_never_tagged(agent):
    with _connect(agent) as conn:
        (hello, wait), _ = _ask(conn, [("hello", {}), ("wait", {"timeout": 0})], [None, "1"])
    assert set(hello) == {"ok", "value"} and set(wait) == {"ok", "value"}


@pytest.mark.parametrize("held", [
    "1", None, {"0": "1"}, [], ["1", "2"], [1], [b"1"], [""], ["x" * (MAX_TAG_LEN + 1)], [True],
], ids=["string", "nil", "map", "too-short", "too-long", "int", "bytes", "empty-tag", "long-tag", "bool"])
def test_malformed_held_is_a_one_line_malformed_error(agent, held):
    request = msgpack.packb({"v": 1, "ops": [{"op": "ps", "args": {}}], "held": held}, use_bin_type=True)
    with _connect(agent) as conn:
        reply = msgpack.unpackb(conn.call(request), raw=False)
        assert reply["error"]["code"] == ErrorCode.MALFORMED
        assert "held" in reply["error"]["message"] and "\n" not in reply["error"]["message"]
        assert conn.batch([("ps", {})])[0]["ok"]  # the connection is unharmed


def test_a_failed_op_is_never_remembered(agent):
    key = "hashserver-clu-rw-comesandgoes"
    path = str(agent["server_dir"] / f"{key}.json")
    _write(path, _state(key))
    mtime = os.stat(path).st_mtime_ns
    with _connect(agent) as conn:
        (first,), _ = _ask(conn, [("inspect", {"key": key})], [None])
        assert first["ok"]
        os.unlink(path)
        (gone,), _ = _ask(conn, [("inspect", {"key": key})], [first["tag"]])
        assert gone["ok"] is False and "tag" not in gone
        _write(path, _state(key))  # back exactly as it was
        os.utime(path, ns=(mtime, mtime))
        (back,), _ = _ask(conn, [("inspect", {"key": key})], [first["tag"]])
    os.unlink(path)
    # the same value as the tag's, but the client may have dropped it on the error
    assert "same" not in back and back["value"] == first["value"]


# -- in-process: the reply budget, the memory's bounds, the pure pieces


@pytest.fixture
def ctx(tmp_path):
    context = AgentContext(base=tmp_path / "rhl")
    context.server_dir.mkdir(parents=True)
    for key in KEYS:
        _write(str(context.server_dir / f"{key}.json"), _state(key))
    yield context
    context.close()


def test_a_result_replaced_by_too_large_is_forgotten(ctx):
    memory = SentValues()
    request = encode_request([("ps", {})], held=[None])
    (fits,) = decode_reply(dispatch.handle(ctx, request, sent=memory))
    assert len(memory) == 1
    small = 1000  # below the 40 rows' ~5 KB
    (dropped,) = decode_reply(dispatch.handle(
        ctx, encode_request([("ps", {})], held=[None]), sent=memory, max_reply_bytes=small))
    assert dropped.get("error", {}).get("code") == ErrorCode.TOO_LARGE, dropped
    assert len(memory) == 0  # no tag the client never received is remembered
    (again,) = decode_reply(dispatch.handle(ctx, encode_request([("ps", {})], held=[fits["tag"]]), sent=memory))
    assert "same" not in again and again["value"]["rows"] == fits["value"]["rows"]


def test_a_same_answer_counts_and_fits_any_budget(ctx):
    memory = SentValues()
    (first,) = decode_reply(dispatch.handle(ctx, encode_request([("ps", {})], held=[None]), sent=memory))
    tight = len(encode_request([("ps", {})])) + 200 + dispatch.RESERVED_PER_OP
    (same,) = decode_reply(dispatch.handle(ctx, encode_request([("ps", {})], held=[first["tag"]]),
                                           sent=memory, max_reply_bytes=tight))
    assert same == {"ok": True, "same": first["tag"]}
    assert (memory.values_sent, memory.same_sent) == (1, 1)


def test_memory_is_bounded(monkeypatch):
    memory = SentValues()
    for i in range(sent_mod.MAX_SLOTS + 5):
        piece, pending = memory.answer("inspect", slot_key("inspect", {"key": f"k{i}"}), None, {"i": i})
        memory.commit(pending)
    assert len(memory) == sent_mod.MAX_SLOTS
    monkeypatch.setattr(sent_mod, "MAX_VALUE_BYTES", 100)
    piece, pending = memory.answer("logs", b"big", None, {"text": "x" * 200})
    memory.commit(pending)
    assert "tag" not in msgpack.unpackb(piece) and len(memory) == sent_mod.MAX_SLOTS


def test_a_value_msgpack_refuses_is_left_to_make_sendable():
    assert SentValues().answer("ps", b"slot", None, {"x": object()}) is None


def test_provably_same_accepts_only_what_msgpack_writes_alike():
    row = {"key": "a", "pid": 1, "live": True, "meta": {"x": 1}}
    rows = [row, dict(row)]
    assert provably_same({"rows": list(rows)}, {"rows": rows}, trust_identity=True)
    copies = [{**row, "meta": dict(row["meta"])} for row in rows]
    assert provably_same({"rows": copies}, {"rows": rows}, trust_identity=False)
    # a shallow copy shares `meta` with what was sent: that object may have changed since
    assert not provably_same({"rows": [dict(row) for row in rows]}, {"rows": rows}, trust_identity=False)
    for other in (1.0, True, "1"):   # == in Python, other bytes in msgpack
        assert not provably_same({"pid": other}, {"pid": 1}, trust_identity=True)
    assert not provably_same({"b": 1, "a": 2}, {"a": 2, "b": 1}, trust_identity=True)  # key order
    assert not provably_same([0.0], [-0.0], trust_identity=True)  # floats: the bytes decide
    # an identical object proves nothing unless the op's objects are never changed once made
    shared = {"size": 1}
    assert not provably_same([shared], [shared], trust_identity=False)
    # past its budget the walk gives up (the packed bytes then decide), never says "same"
    many = [{"i": i} for i in range(10)]
    assert not provably_same([dict(m) for m in many], many, trust_identity=False, budget=3)


def test_slot_keys_are_canonical():
    assert slot_key("ps", {"a": 1, "b": [1, 2]}) == slot_key("ps", {"b": [1, 2], "a": 1})
    assert slot_key("ps", {"a": 1}) != slot_key("ps", {"a": True}) != slot_key("ps", {"a": 1.0})
    assert slot_key("ps", {"a": 1}) != slot_key("logs", {"a": 1})
    assert slot_key("ps", {"a": object()}) is None


def test_check_held():
    assert check_held([None, "a"], 2) == [None, "a"]
    with pytest.raises(ProtocolError):
        check_held(["a"], 2)


def test_same_needs_no_packing_for_kept_ps_rows(ctx, monkeypatch):
    """The cheap path: kept rows are the very objects sent, so "same" is proved by identity."""
    memory = SentValues()
    (first,) = decode_reply(dispatch.handle(ctx, encode_request([("ps", {})], held=[None]), sent=memory))
    time.sleep(2.2)  # past the span in which the agent rebuilds rows of freshly changed files
    (first,) = decode_reply(dispatch.handle(ctx, encode_request([("ps", {})], held=[first["tag"]]), sent=memory))
    tag = first.get("tag") or first.get("same")
    digests = []
    real = sent_mod.digest
    monkeypatch.setattr(sent_mod, "digest", lambda data: digests.append(len(data)) or real(data))
    (same,) = decode_reply(dispatch.handle(ctx, encode_request([("ps", {})], held=[tag]), sent=memory))
    assert same == {"ok": True, "same": tag}
    assert digests == []  # the value was never packed (digest() is called on every packed value)
    (fresh,) = decode_reply(dispatch.handle(ctx, encode_request([("ps", {})], held=[None]), sent=memory))
    assert "tag" in fresh and digests  # the counter does count a packing
