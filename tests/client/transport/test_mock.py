"""MockTransport: a batch answered by a function, with the results and errors a real
transport gives (pure logic: no host, no agent)."""

from __future__ import annotations

import pytest

from seamless_service.client.errors import AuthFailed, ConnectionFailed, OpError, UsageError
from seamless_service.client.transport.base import Transport
from seamless_service.client.transport.mock import MockTransport
from seamless_service.protocol import ErrorCode, ProtocolError
from seamless_service.protocol.codec import MAX_OPS_PER_REQUEST

ROWS = [{"key": "hashserver-c-rw-p", "status": "running", "port": 5000}]


def handler(op: str, args: dict) -> dict:
    if op == "ps":
        return {"rows": ROWS, "token": "t1", "args": args}
    if op == "inspect":
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no state file for {args['key']}")
    if op == "logs":
        raise OpError(ErrorCode.CONFLICT, "the log is being rotated")
    if op == "stop":
        raise RuntimeError("disk on fire")
    if op == "hello":
        return {"version": "mock", "protocol": 1}
    raise AssertionError(f"unexpected op {op}")


def test_each_op_is_answered_in_order_with_the_args_an_agent_op_gets():
    mock = MockTransport(handler, host="h")
    assert isinstance(mock, Transport) and mock.name == mock.kind == "mock" and mock.label == "h"
    ps, hello = mock.batch([("ps", {"side": "client"}), ("hello", {})])
    assert ps["ok"] and ps["value"]["rows"] == ROWS and ps["value"]["token"] == "t1"
    # checked against the op's schema, defaults filled in, as on the agent
    assert ps["value"]["args"]["side"] == "client" and ps["value"]["args"]["no_status"] is False
    assert hello == {"ok": True, "value": {"version": "mock", "protocol": 1}}
    assert mock.batches == [[("ps", {"side": "client"}), ("hello", {})]]


def test_what_the_handler_raises_is_that_ops_error_result_and_spares_its_neighbours():
    inspect, logs, stop, ps = MockTransport(handler).batch(
        [("inspect", {"key": "k1"}), ("logs", {"key": "k1"}), ("stop", {"keys": ["k1"]}), ("ps", {})])
    assert inspect == {"ok": False, "error": {"code": "not_found", "message": "no state file for k1"}}
    assert logs == {"ok": False, "error": {"code": "conflict", "message": "the log is being rotated"}}
    assert stop == {"ok": False, "error": {"code": "internal", "message": "agent error: RuntimeError: disk on fire"}}
    assert ps["ok"] and ps["value"]["rows"] == ROWS


def test_ops_the_agent_would_refuse_never_reach_the_handler():
    seen: list[str] = []

    def record(op: str, args: dict) -> dict:
        seen.append(op)
        return {}

    unknown, bad, missing = MockTransport(record).batch(
        [("frobnicate", {}), ("ps", {"side": "sideways"}), ("inspect", {})])
    assert unknown["error"]["code"] == "unknown_op" and "frobnicate" in unknown["error"]["message"]
    assert bad["error"]["code"] == "bad_args" and missing["error"]["code"] == "bad_args"
    assert seen == []


@pytest.mark.parametrize("error", [ConnectionFailed("h", "cannot connect: refused"),
                                   AuthFailed("h", "permission denied (publickey)")])
def test_a_host_that_cannot_answer_fails_the_whole_batch(error):
    def down(op: str, args: dict) -> dict:
        raise error

    with pytest.raises(ConnectionFailed) as caught:
        MockTransport(down, host="h").batch([("ps", {}), ("hello", {})])
    assert caught.value is error


def test_a_request_the_agent_refuses_as_a_whole_raises_as_from_a_real_transport():
    with pytest.raises(OpError) as caught:
        MockTransport(handler, host="h").batch([("hello", {})] * (MAX_OPS_PER_REQUEST + 1))
    assert caught.value.code == "too_large" and str(caught.value).startswith("h: ")


def test_a_closed_mock_answers_no_more():
    with MockTransport(handler, host="h") as mock:
        mock.batch([("hello", {})])
    with pytest.raises(ConnectionFailed, match="closed"):
        mock.batch([("hello", {})])


# --------------------------------------------------------------------------- the Python API


def test_a_host_answered_by_a_mock():
    from seamless_service import Host, MockTransport as Exported

    assert Exported is MockTransport
    mock = MockTransport(handler, host="frontend")
    with Host("frontend", transport=mock) as host:
        rows = host.ps(status="running")
        assert rows == ROWS and rows.token == "t1"
        assert mock.batches[-1] == [("ps", {"side": "server", "status": "running"})]
        with pytest.raises(OpError) as caught:
            host.inspect("k1")
        assert (caught.value.code, str(caught.value)) == ("not_found", "frontend: no state file for k1")
        value, error = host.batch([("hello", {}), ("inspect", {"key": "k2"})])
        assert value["version"] == "mock" and isinstance(error, OpError) and error.code == "not_found"
        assert host.hello()["transport"] == "mock" and host.fallback is None
        assert host.describe() == {"host": "frontend", "transport": "mock", "batches": 4}
    assert mock.closed  # the Host owns the transport it was given


def test_a_fleet_takes_a_kind_not_one_transport_for_every_host():
    from seamless_service import Fleet, Host

    with pytest.raises(UsageError, match="its own transport"):
        Fleet(["a", "b"], transport=MockTransport(handler))
    hosts = [Host(name, transport=MockTransport(handler, host=name)) for name in ("a", "b")]
    with Fleet(hosts) as fleet:
        result = fleet.ps()
    assert result.ok and [row["host"] for row in result.rows] == ["a", "b"]
