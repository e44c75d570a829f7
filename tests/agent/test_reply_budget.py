"""The reply size is budgeted per op: a result that does not fit becomes that op's own
`too_large` error, the results before it are kept, the ops after it are not run (each says
so), the reply never exceeds the limit, and the agent never holds a whole batch of big
results in memory.

Real log files and real ops through the real dispatch; only the limit is lowered (through
`handle`'s `max_reply_bytes`) where the real 64 MiB would make a test slow.
"""

from __future__ import annotations

import re
import tracemalloc

import msgpack
import pytest

from seamless_service.agent.dispatch import RESERVED_PER_OP, handle, run_op
from seamless_service.protocol import (
    MAX_REPLY_BYTES, PROTOCOL_VERSION, ErrorCode, ProtocolError, decode_reply, encode_request,
)
from seamless_service.protocol.codec import encode_packed_reply, encode_reply, pack_result
from seamless_service.protocol.schema import MAX_LOG_BYTES
from tests.support.processes import alive
from tests.support.services import wait_for

MiB = 1 << 20


def write_log(sandbox, key: str, size: int) -> None:
    sandbox.server_dir.mkdir(parents=True, exist_ok=True)
    line = b"0123456789abcdef" * 7 + b"log line\n"
    (sandbox.server_dir / f"{key}.log").write_bytes((line * (size // len(line) + 1))[:size])


def logs(key: str, max_bytes: int) -> tuple[str, dict]:
    return ("logs", {"key": key, "max_bytes": max_bytes})


def results_of(reply: bytes, n: int) -> list[dict]:
    return decode_reply(reply, expected=n)  # also proves the client accepts the reply's size


def assert_too_large(result: dict, position: int, n: int, limit: int) -> None:
    assert result["ok"] is False and result["error"]["code"] == ErrorCode.TOO_LARGE
    message = result["error"]["message"]
    assert f"op {position} of {n} ('logs')" in message
    assert f"reply's {limit} bytes" in message
    assert "smaller max_bytes" in message and "split the batch" in message


def assert_not_run(result: dict, position: int, n: int, spent_by: int) -> None:
    assert result["ok"] is False and result["error"]["code"] == ErrorCode.TOO_LARGE
    message = result["error"]["message"]
    assert f"op {position} of {n} " in message and "was not run" in message, message
    assert f"op {spent_by}'s result did not fit" in message and "another batch" in message


def test_an_oversized_result_fails_and_the_rest_is_not_run(sandbox, make_ctx):
    write_log(sandbox, "big", 3 * MiB)
    limit = 2 * MiB
    request = encode_request([("hello", {}), logs("big", 3 * MiB), ("hello", {})])
    reply = handle(make_ctx(), request, max_reply_bytes=limit)
    assert len(reply) <= limit
    first, big, last = results_of(reply, 3)
    assert first["ok"] and first["value"]["protocol"] == PROTOCOL_VERSION
    assert_too_large(big, 2, 3, limit)
    size = int(re.search(r"its result of (\d+) bytes", big["error"]["message"]).group(1))
    assert 3 * MiB < size < 3 * MiB + 1000  # the packed size: 3 MiB of log plus its fields
    assert_not_run(last, 3, 3, spent_by=2)


def test_results_beyond_the_real_limit_end_the_batch_in_order(sandbox, make_ctx):
    # With the real limits: ten logs results of MAX_LOG_BYTES (8 MiB) each, 80 MiB in all.
    write_log(sandbox, "big", MAX_LOG_BYTES)
    n = 10
    reply = handle(make_ctx(), encode_request([logs("big", MAX_LOG_BYTES)] * n))
    assert len(reply) <= MAX_REPLY_BYTES
    results = results_of(reply, n)
    fit = (MAX_REPLY_BYTES - n * RESERVED_PER_OP) // (MAX_LOG_BYTES + 200)
    assert fit == 7
    for result in results[:fit]:
        assert result["ok"] and len(result["value"]["data"]) == MAX_LOG_BYTES
    assert_too_large(results[fit], fit + 1, n, MAX_REPLY_BYTES)
    for position, result in enumerate(results[fit + 1:], start=fit + 2):
        assert_not_run(result, position, n, spent_by=fit + 1)


def bytes_read() -> int:
    """Bytes this process has read through read() and friends (Linux /proc/self/io)."""
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_spent_budget_reads_no_more(sandbox, make_ctx):
    # 40 logs ops of 8 MiB: 7 results fit the 64 MiB reply. Every op used to run anyway,
    # reading 320 MiB to return 56; now reading stops at the op that did not fit.
    write_log(sandbox, "big", MAX_LOG_BYTES)
    ctx = make_ctx()
    n = 40
    request = encode_request([logs("big", MAX_LOG_BYTES)] * n)
    before = bytes_read()
    reply = handle(ctx, request)
    read = bytes_read() - before
    results = results_of(reply, n)
    assert sum(r["ok"] for r in results) == 7
    assert read < 8 * MAX_LOG_BYTES + 4 * MiB, f"{read / MiB:.0f} MiB read for 7 results"


def test_ops_after_a_full_budget_are_not_run(sandbox, make_ctx):
    write_log(sandbox, "big", MiB)
    limit = 3 * MiB
    ops = [logs("big", MiB)] * 4 + [("hello", {}), ("logs", {"key": "no-such-key"}),
                                    ("no_such_op", {}), ("inspect", {"key": "../x"})]
    reply = handle(make_ctx(), encode_request(ops), max_reply_bytes=limit)
    assert len(reply) <= limit
    results = results_of(reply, len(ops))
    assert [r["ok"] for r in results[:2]] == [True, True]
    assert_too_large(results[2], 3, len(ops), limit)
    for position, result in enumerate(results[3:], start=4):
        assert_not_run(result, position, len(ops), spent_by=3)


def test_stop_after_a_full_budget_is_not_run_and_says_so(sandbox, make_ctx):
    # The side effect proves it: the service is still running after the batch.
    state = sandbox.launch("toy-budget")
    pid = state["pid"]
    write_log(sandbox, "big", MiB)
    ops = [logs("big", MiB)] * 4 + [("stop", {"keys": ["toy-budget"]})]
    reply = handle(make_ctx(), encode_request(ops), max_reply_bytes=3 * MiB)
    results = results_of(reply, len(ops))
    assert [r["ok"] for r in results[:3]] == [True, True, False]
    assert_not_run(results[3], 4, len(ops), spent_by=3)
    assert_not_run(results[4], 5, len(ops), spent_by=3)
    assert alive(pid)
    assert handle(make_ctx(), encode_request([("stop", {"keys": ["toy-budget"]})]))  # on its own it runs
    assert wait_for(lambda: not alive(pid))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 65535, 65536])
def test_packed_reply_is_byte_identical_to_encode_reply(n):
    # Array header sizes change at 16 and 65536 items; values of every kind a result holds.
    kinds = [
        {"ok": True, "value": {"key": "k", "data": b"\x00\xffbytes", "n": -(2**40), "f": 1.5,
                               "none": None, "rows": [{"a": [1, 2, {"b": True}]}], "s": "é" * 40}},
        {"ok": False, "error": {"code": ErrorCode.NOT_FOUND, "message": "no log file for 'x'"}},
        {"ok": True, "value": "x" * 70_000},
    ]
    results = [kinds[i % len(kinds)] if i < 50 else {"ok": True, "value": i} for i in range(n)]
    assert encode_packed_reply([pack_result(r) for r in results]) == encode_reply(results)


def test_handle_reply_is_byte_identical_to_encode_reply(sandbox, make_ctx):
    write_log(sandbox, "small", 5000)
    ctx = make_ctx()
    deterministic = [logs("small", 1000), ("logs", {"key": "small", "tail": 3}),
                     ("inspect", {"key": "no-such-key"}), ("logs", {"key": "a b"}),
                     ("no_such_op", {}), ("ps", {"side": "sideways"}), "not a map"]
    request = msgpack.packb(
        {"v": PROTOCOL_VERSION, "ops": [e if isinstance(e, str) else {"op": e[0], "args": e[1]}
                                        for e in deterministic]}, use_bin_type=True)
    raw_ops = msgpack.unpackb(request, raw=False)["ops"]
    # What the old dispatch produced: every result in memory, encoded together.
    assert handle(ctx, request) == encode_reply([run_op(ctx, entry) for entry in raw_ops])
    # Batches with time-dependent values (hello's uptime, ps): the reply re-encodes to itself.
    for batch in ([("hello", {}), ("ps", {})], [("hello", {})] * 20, []):
        reply = handle(ctx, encode_request(batch))
        assert encode_reply(results_of(reply, len(batch))) == reply


def test_request_level_errors_are_unchanged(make_ctx):
    ctx = make_ctx()
    with pytest.raises(ProtocolError) as info:
        decode_reply(handle(ctx, b"\xc1"))
    assert info.value.code == ErrorCode.MALFORMED
    with pytest.raises(ProtocolError) as info:
        decode_reply(handle(ctx, encode_request([("hello", {})], version=PROTOCOL_VERSION + 1)))
    assert info.value.code == ErrorCode.VERSION_MISMATCH


def test_memory_stays_near_one_result_plus_the_reply(sandbox, make_ctx):
    # 24 results of 1 MiB against a 4 MiB reply: holding them all (the old way) would peak
    # above 24 MiB; budgeted, the peak is the reply so far, its final join (a second copy),
    # and one op's result while it is packed (the object plus its packed bytes).
    write_log(sandbox, "big", MiB)
    ctx = make_ctx()
    limit, n = 4 * MiB, 24
    request = encode_request([logs("big", MiB)] * n)
    handle(ctx, request, max_reply_bytes=limit)  # warm up imports and caches outside the trace
    tracemalloc.start()
    try:
        reply = handle(ctx, request, max_reply_bytes=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(reply) <= limit
    assert sum(r["ok"] for r in results_of(reply, n)) == 3
    assert peak < 2 * limit + 3 * MiB + MiB, peak
