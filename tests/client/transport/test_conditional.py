"""Conditional replies, client side (client/transport/held.py, AgentTransport.batch): through
the real sshd tunnel to the real deployed agent, an unchanged answer comes back as "same"
and is returned as an independent copy of the held value; plus the pure pieces."""

from __future__ import annotations

import copy
import json

import pytest

from seamless_service.client.errors import OpError
from seamless_service.client.transport.agent import AgentTransport, held_values
from seamless_service.client.transport.held import Asked, HeldValues, freeze, thaw
from seamless_service.protocol import ErrorCode, ProtocolError
from seamless_service.protocol.conditional import CONDITIONAL_OPS, slot_key
from tests.support.remote import Remote
from tests.support.transports import Notices

KEY = "hashserver-clu-rw-conditional"


def _state(port: int) -> str:
    return json.dumps({"key": KEY, "status": "running", "pid": 0, "port": port, "hostname": "127.0.0.1"})


@pytest.fixture
def notices() -> Notices:
    return Notices()


@pytest.fixture
def transport(remote: Remote, notices: Notices):
    remote.write(f".remote-http-launcher/server/{KEY}.json", _state(5000))
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=notices) as t:
        yield t
    (remote.state_dir / f"{KEY}.json").unlink(missing_ok=True)


def _held(transport: AgentTransport) -> HeldValues:
    held = transport._conn.held  # the connection's own: what the wire said lands here
    assert isinstance(held, HeldValues)
    return held


def _rows(transport: AgentTransport) -> list[dict]:
    (result,) = transport.batch([("ps", {})])
    assert set(result) == {"ok", "value"}, result  # never a "same" or a "tag" for the caller
    return result["value"]["rows"]


def test_unchanged_state_twice_is_same_and_a_distinct_copy(transport: AgentTransport):
    first = _rows(transport)
    held = _held(transport)
    before = held.same_received
    second = _rows(transport)
    assert held.same_received == before + 1  # the agent answered "same" on the wire
    assert second == first and second is not first
    mine = next(r for r in second if r["key"] == KEY)
    mine["port"] = -1                      # a caller mutates what it got...
    mine["meta"]["service"] = "changed"
    second.clear()
    third = _rows(transport)
    assert held.same_received == before + 2
    assert third == first                  # ...and the next answer is untouched
    assert next(r for r in third if r["key"] == KEY)["port"] == 5000


def test_a_changed_state_file_gets_the_full_value(remote: Remote, transport: AgentTransport):
    _rows(transport)
    held = _held(transport)
    same, values = held.same_received, held.values_received
    remote.write(f".remote-http-launcher/server/{KEY}.json", _state(6001))
    rows = _rows(transport)
    assert next(r for r in rows if r["key"] == KEY)["port"] == 6001
    assert (held.same_received, held.values_received) == (same, values + 1)


def test_a_reconnect_starts_empty(remote: Remote, transport: AgentTransport, notices: Notices):
    _rows(transport)
    _rows(transport)
    old = _held(transport)
    assert old.same_received >= 1 and len(old) == 1
    remote.kill_agent()
    rows = _rows(transport)
    assert any(r["key"] == KEY for r in rows)
    assert notices and "reconnected" in notices[-1]
    new = _held(transport)
    assert new is not old and new.same_received == 0 and new.values_received == 1


def test_a_tag_the_agent_does_not_know_gets_the_full_value(transport: AgentTransport):
    first = _rows(transport)
    held = _held(transport)
    slot = slot_key("ps", {})
    tag, frozen = held._slots[slot]
    held._slots[slot] = ("ffffff", frozen)  # a tag this connection's agent never gave
    again = _rows(transport)
    assert again == first
    assert held.same_received == 0 and held._slots[slot][0] not in ("ffffff", tag)


def test_persistent_logs_and_inspect_are_conditional_too(remote: Remote, transport: AgentTransport):
    remote.write(f".remote-http-launcher/server/{KEY}.log", "line one\nline two\n")
    ops = [("inspect", {"key": KEY}), ("logs", {"key": KEY, "tail": 5}),
           ("persistent", {"paths": [str(remote.data)], "level": 0})]
    first = transport.batch(ops)
    assert all(result["ok"] for result in first), first
    held = _held(transport)
    before = held.same_received
    assert transport.batch(ops) == first
    assert held.same_received == before + 3


def test_conditional_off_sends_no_tags(transport: AgentTransport, remote: Remote):
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=lambda m: None,
                        conditional=False) as plain:
        assert _rows(plain) == _rows(plain)
        assert plain._conn.held is None


# -- the pure pieces


def test_the_client_gate_follows_the_hello():
    assert held_values({"version": "x", "protocol": 1}) is None   # an agent from before
    assert held_values({"conditional": "ps"}) is None
    assert held_values({"conditional": ["stop", 3]}) is None       # never for other ops
    got = held_values({"conditional": ["ps", "logs", "future-op"]})
    assert isinstance(got, HeldValues) and got.ops == {"ps", "logs"}
    # and a connection without any held answers sends the request as it was built
    class Conn:
        held = None
    assert AgentTransport._ask(Conn(), [("ps", {})], b"plain") == (None, b"plain")
    Conn.held = HeldValues(frozenset({"ps"}))
    asked, request = AgentTransport._ask(Conn(), [("ps", {}), ("hello", {})], b"plain")
    assert asked.held == [None, None] and b"held" in request
    assert AgentTransport._ask(Conn(), [("hello", {})], b"plain") == (None, b"plain")


def test_same_for_a_tag_not_held_clears_and_fails():
    held = HeldValues(frozenset(CONDITIONAL_OPS))
    asked = held.ask([("ps", {})])
    held.resolve(asked, [{"ok": True, "value": {"rows": [1]}, "tag": "a"}])
    assert len(held) == 1
    asked = held.ask([("ps", {}), ("logs", {"key": "k"})])
    assert asked.held == ["a", None]
    for results in ([{"ok": True, "same": "b"}, {"ok": True, "value": 1}],   # another tag
                    [{"ok": True, "value": 1}, {"ok": True, "same": "a"}]):  # a slot holding none
        held.resolve(held.ask([("ps", {})]), [{"ok": True, "value": {"rows": [1]}, "tag": "a"}])
        with pytest.raises(ProtocolError) as info:
            held.resolve(asked, results)
        assert info.value.code == ErrorCode.MALFORMED and "does not hold" in info.value.message
        assert len(held) == 0


def test_same_is_resolved_from_what_the_request_named():
    """Another thread replacing the slot between request and reply changes nothing."""
    held = HeldValues(frozenset({"ps"}))
    held.resolve(held.ask([("ps", {})]), [{"ok": True, "value": {"n": 1}, "tag": "a"}])
    asked = held.ask([("ps", {})])
    held.resolve(held.ask([("ps", {})]), [{"ok": True, "value": {"n": 2}, "tag": "b"}])
    assert held.resolve(asked, [{"ok": True, "same": "a"}]) == [{"ok": True, "value": {"n": 1}}]


def test_errors_and_untagged_values_drop_the_slot():
    held = HeldValues(frozenset({"ps", "logs"}))
    held.resolve(held.ask([("ps", {}), ("logs", {})]),
                 [{"ok": True, "value": 1, "tag": "a"}, {"ok": True, "value": 2, "tag": "b"}])
    assert len(held) == 2
    out = held.resolve(held.ask([("ps", {}), ("logs", {})]),
                       [{"ok": False, "error": {"code": "x", "message": "y"}}, {"ok": True, "value": 3}])
    assert len(held) == 0 and out[1] == {"ok": True, "value": 3}
    assert held.ask([("ps", {})]).held == [None]


def test_held_slots_are_bounded():
    held = HeldValues(frozenset({"logs"}), max_slots=3)
    for i in range(5):
        held.resolve(held.ask([("logs", {"key": f"k{i}"})]), [{"ok": True, "value": i, "tag": str(i)}])
    assert len(held) == 3 and held.ask([("logs", {"key": "k0"})]).held == [None]
    assert held.ask([("logs", {"key": "k4"})]).held == ["4"]
    small = HeldValues(frozenset({"logs"}), max_bytes=250)
    for i in range(3):
        small.resolve(small.ask([("logs", {"key": f"k{i}"})]), [{"ok": True, "value": "x" * 100, "tag": str(i)}])
    assert len(small) == 2 and small.ask([("logs", {"key": "k0"})]).held == [None]
    small.clear()
    small.resolve(small.ask([("logs", {"key": "k"})]), [{"ok": True, "value": "x" * 200, "tag": "a"}])
    assert len(small) == 1  # the count started again from nothing


def test_freeze_thaw_is_exact_and_independent():
    value = {"rows": [{"b": 1, "a": True, "f": -0.0, "x": None, "s": "é", "raw": b"\x00",
                       "big": 2**64 - 1, "meta": {"l": [1.5, [2]]}}], "token": "t"}
    frozen = freeze(value)
    one, two = thaw(frozen), thaw(frozen)
    assert one == value and one is not two and one["rows"][0]["meta"] is not two["rows"][0]["meta"]
    row = one["rows"][0]
    assert list(row) == list(value["rows"][0])                       # key order kept
    assert type(row["a"]) is bool and type(row["b"]) is int and str(row["f"]) == "-0.0"
    row["meta"]["l"].append(3)
    assert thaw(frozen) == value == copy.deepcopy(value)


def test_an_unfreezable_value_is_not_held():
    from msgpack import ExtType

    held = HeldValues(frozenset({"ps"}))
    out = held.resolve(held.ask([("ps", {})]), [{"ok": True, "value": ExtType(5, b"x"), "tag": "a"}])
    assert len(held) == 0 and out == [{"ok": True, "value": ExtType(5, b"x")}]


def test_a_malformed_same_from_the_agent_is_a_one_line_op_error(transport: AgentTransport, monkeypatch):
    """Through AgentTransport.batch: a "same" it did not ask for is an OpError naming the host."""
    _rows(transport)
    held = _held(transport)
    real = HeldValues.ask

    def naming_another_tag(self: HeldValues, ops) -> Asked:
        asked = real(self, ops)
        asked.kept = [("zz", freeze({"rows": []})) if kept else kept for kept in asked.kept]
        return asked

    monkeypatch.setattr(HeldValues, "ask", naming_another_tag)
    with pytest.raises(OpError) as info:
        transport.batch([("ps", {})])
    assert info.value.code == ErrorCode.MALFORMED and "\n" not in str(info.value)
    assert len(held) == 0
    monkeypatch.undo()
    assert any(r["key"] == KEY for r in _rows(transport))  # works again, from full values


def test_threads_sharing_the_connection_get_right_answers(remote: Remote, transport: AgentTransport):
    """Several threads poll one connection while the state changes under them: every
    answer is either the old or the new state, never an error or a mix."""
    import threading

    old = _rows(transport)
    ports, errors = [], []

    def poll() -> None:
        try:
            for _ in range(15):
                rows = _rows(transport)
                ports.append(next(r for r in rows if r["key"] == KEY)["port"])
                assert len(rows) == len(old)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for thread in threads:
        thread.start()
    remote.write(f".remote-http-launcher/server/{KEY}.json", _state(6002))
    for thread in threads:
        thread.join()
    assert errors == [] and set(ports) <= {5000, 6002} and len(ports) == 60
    assert next(r for r in _rows(transport) if r["key"] == KEY)["port"] == 6002
    assert _held(transport).same_received > 0
