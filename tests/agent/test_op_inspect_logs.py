"""The `inspect` and `logs` ops against the real `rhl-inspect` and `rhl-logs`."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading

import pytest

from seamless_service.agent import dispatch
from seamless_service.agent.context import AgentContext
from seamless_service.agent.ops.logs import read_tail
from seamless_service.protocol import ErrorCode, ProtocolError, decode_reply, encode_request
from tests.support.services import LauncherSandbox
from tests.support.agent import call

KEY = "hashserver-c1-rw-proj"


def helper_bytes(box: LauncherSandbox, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=box.env(), capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    box = LauncherSandbox(tmp_path_factory.mktemp("inspect") / "rhl")
    try:
        box.launch(KEY)
        yield box, AgentContext(base=box.base)
    finally:
        box.kill_all()


def write_log(box: LauncherSandbox, key: str, data: bytes) -> None:
    box.server_dir.mkdir(parents=True, exist_ok=True)
    (box.server_dir / f"{key}.log").write_bytes(data)


# -- inspect ---------------------------------------------------------------------------

def test_inspect_matches_rhl_inspect(world):
    box, ctx = world
    value = call(ctx, "inspect", key=KEY)
    assert value["key"] == KEY and value["data"]["status"] == "running"
    plain = box.run_helper("rhl-inspect", KEY)
    assert plain.returncode == 0
    assert plain.stdout == json.dumps(value["data"], indent=2, sort_keys=True) + "\n"
    timed = json.loads(box.run_helper("rhl-inspect", KEY, "--with-mtime").stdout)
    assert timed["data"] == value["data"]
    assert list(timed["data"]) == list(value["data"])  # file order kept
    assert timed["mtime"] == value["mtime"]
    assert call(ctx, "inspect", key=KEY, with_mtime=True) == value


def test_inspect_missing_key_is_not_found(world):
    box, ctx = world
    with pytest.raises(ProtocolError) as info:
        call(ctx, "inspect", key="no-such-key")
    assert info.value.code == ErrorCode.NOT_FOUND
    assert info.value.message == "no state file for 'no-such-key'"
    assert box.run_helper("rhl-inspect", "no-such-key").stderr == f"rhl-inspect: {info.value.message}\n"


@pytest.mark.parametrize("kind", ["malformed", "list", "directory"])
def test_inspect_unusable_file_is_op_failed_with_helper_message(sandbox, kind):
    key = f"bad-{kind}"
    if kind == "directory":
        (sandbox.server_dir / f"{key}.json").mkdir(parents=True)
    else:
        sandbox.write_state(key, None, raw='{"pid": ' if kind == "malformed" else "[]")
    with pytest.raises(ProtocolError) as info:
        call(AgentContext(), "inspect", key=key)
    assert info.value.code == ErrorCode.OP_FAILED
    helper = sandbox.run_helper("rhl-inspect", key)
    assert helper.returncode == 1
    assert helper.stderr == f"rhl-inspect: {info.value.message}\n"


def test_invalid_key_is_refused_before_any_op(world):
    _, ctx = world
    request = encode_request([("inspect", {"key": "../etc/passwd"}), ("logs", {"key": "a b"}),
                              ("inspect", {"key": KEY})])
    results = decode_reply(dispatch.handle(ctx, request), expected=3)
    assert [r["ok"] for r in results] == [False, False, True]
    assert results[0]["error"]["code"] == results[1]["error"]["code"] == ErrorCode.INVALID_KEY


# -- logs: content like rhl-logs -------------------------------------------------------

def test_logs_whole_file_matches_rhl_logs(world):
    box, ctx = world
    theirs = helper_bytes(box, "rhl-logs", KEY)
    assert theirs.returncode == 0 and b"demo-service: serving on port" in theirs.stdout
    value = call(ctx, "logs", key=KEY)
    assert value["data"] == theirs.stdout
    assert (value["offset"], value["next_offset"], value["size"]) == (0, len(theirs.stdout), len(theirs.stdout))
    assert value["truncated"] is False and value["reset"] is False


@pytest.mark.parametrize("tail", [0, 1, 2, 3, 1000, 100_000])
def test_logs_tail_matches_rhl_logs_on_real_log(world, tail):
    box, ctx = world
    theirs = helper_bytes(box, "rhl-logs", KEY, "--tail", str(tail)).stdout
    value = call(ctx, "logs", key=KEY, tail=tail)
    assert value["data"] == theirs
    assert value["next_offset"] == value["size"] and value["offset"] == value["size"] - len(theirs)
    assert value["truncated"] is False


MIXED = b"one\ntwo\r\nthree\rfour\n\n\r\n\rsix\r\r\nlast without newline"


@pytest.mark.parametrize("tail", [0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 50])
def test_logs_tail_line_endings_match_rhl_logs(world, tail):
    box, ctx = world
    write_log(box, "mixed", MIXED)
    theirs = helper_bytes(box, "rhl-logs", "mixed", "--tail", str(tail)).stdout
    assert call(ctx, "logs", key="mixed", tail=tail)["data"] == theirs


def test_read_tail_is_exact_at_every_block_boundary(tmp_path):
    # Small blocks put the backwards-read boundary everywhere, including between \r and \n.
    samples = [MIXED, b"\r\n" * 7, b"a\r\nb\r\n", b"\n\n\n", b"x", b"\rx\r", MIXED + b"\n"]
    for index, data in enumerate(samples):
        path = tmp_path / f"s{index}.log"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            for lines in range(0, 14):
                expected = b"".join(data.splitlines(keepends=True)[-lines:] if lines else [])
                for block in range(1, 9):
                    start, got, truncated = read_tail(fd, len(data), lines, 1 << 20, block=block)
                    assert (got, start, truncated) == (expected, len(data) - len(expected), False), (
                        data, lines, block)
        finally:
            os.close(fd)


def test_logs_tail_on_a_big_log(world):
    box, ctx = world
    big = b"".join(b"line %06d of the big log\n" % i for i in range(200_000))  # ~5 MB
    write_log(box, "big", big)
    for tail in (3, 100_000):
        theirs = helper_bytes(box, "rhl-logs", "big", "--tail", str(tail)).stdout
        value = call(ctx, "logs", key="big", tail=tail, max_bytes=8 << 20)
        assert value["data"] == theirs and value["truncated"] is False
    # more lines wanted than max_bytes holds: the last max_bytes bytes, flagged
    value = call(ctx, "logs", key="big", tail=100_000, max_bytes=1000)
    assert value["data"] == big[-1000:] and value["truncated"] is True
    assert value["offset"] == len(big) - 1000


# -- logs: offsets and limits ---------------------------------------------------------

def test_logs_offset_follows_appends(world):
    box, ctx = world
    write_log(box, "follow", b"first\n")
    first = call(ctx, "logs", key="follow", offset=0)
    assert (first["data"], first["next_offset"]) == (b"first\n", 6)
    with open(box.server_dir / "follow.log", "ab") as handle:
        handle.write(b"second\nthird\n")
    more = call(ctx, "logs", key="follow", offset=first["next_offset"])
    assert more["data"] == b"second\nthird\n"
    assert (more["key"], more["offset"], more["next_offset"], more["size"]) == ("follow", 6, 19, 19)
    assert more["truncated"] is False  # read up to the end: nothing left for next time
    idle = call(ctx, "logs", key="follow", offset=more["next_offset"])
    assert idle["data"] == b"" and idle["next_offset"] == 19 and not idle["reset"]


def test_logs_offset_in_pieces_of_max_bytes(world):
    box, ctx = world
    content = bytes(range(256)) * 4
    write_log(box, "pieces", content)
    got, offset = b"", 0
    while True:
        value = call(ctx, "logs", key="pieces", offset=offset, max_bytes=100)
        got += value["data"]
        assert value["offset"] == offset and len(value["data"]) <= 100
        offset = value["next_offset"]
        if not value["truncated"]:
            break
    assert got == content


def test_logs_offset_past_end_means_truncated_log(world):
    box, ctx = world
    write_log(box, "rotated", b"a long first generation of the log\n")
    old = call(ctx, "logs", key="rotated")
    write_log(box, "rotated", b"new\n")  # a relaunch truncates the log
    value = call(ctx, "logs", key="rotated", offset=old["next_offset"])
    assert value["reset"] is True
    assert (value["data"], value["offset"], value["next_offset"]) == (b"new\n", 0, 4)


def test_logs_whole_file_over_max_bytes_gives_the_end(world):
    box, ctx = world
    write_log(box, "long", b"0123456789" * 10)
    value = call(ctx, "logs", key="long", max_bytes=15)
    assert value["data"] == b"567890123456789" and value["truncated"] is True
    assert (value["offset"], value["next_offset"], value["size"]) == (85, 100, 100)


def test_logs_tail_and_offset_together_is_bad_args(world):
    _, ctx = world
    with pytest.raises(ProtocolError) as info:
        call(ctx, "logs", key=KEY, tail=1, offset=0)
    assert info.value.code == ErrorCode.BAD_ARGS
    assert info.value.message == "logs: give 'tail' or 'offset', not both"


def test_logs_missing_is_not_found(world):
    box, ctx = world
    with pytest.raises(ProtocolError) as info:
        call(ctx, "logs", key="no-such-key")
    assert info.value.code == ErrorCode.NOT_FOUND
    assert info.value.message == "no log file for 'no-such-key'"
    assert helper_bytes(box, "rhl-logs", "no-such-key").stderr.decode() == f"rhl-logs: {info.value.message}\n"


def test_logs_directory_is_op_failed(world):
    box, ctx = world
    (box.server_dir / "dir-log.log").mkdir()
    with pytest.raises(ProtocolError) as info:
        call(ctx, "logs", key="dir-log")
    assert info.value.code == ErrorCode.OP_FAILED


def test_logs_readable_without_state_file(sandbox):
    # like rhl-logs, the JSON is not consulted: logs outlive rhl-rm
    sandbox.write_state("gone", {"status": "failed"})
    write_log(sandbox, "gone", b"post mortem\n")
    assert sandbox.run_helper("rhl-rm", "gone").returncode == 0
    assert not (sandbox.server_dir / "gone.json").exists()
    assert call(AgentContext(), "logs", key="gone", tail=1)["data"] == b"post mortem\n"


# -- logs: the default cap and the error messages (issue 14: mutants of logs.py survived) --

def test_logs_without_max_bytes_return_at_most_one_mib(world):
    box, ctx = world
    mib = 1 << 20
    write_log(box, "cap", b"x" * (mib - 1) + b"\n")   # exactly the default cap: whole
    value = call(ctx, "logs", key="cap")
    assert (len(value["data"]), value["offset"], value["truncated"]) == (mib, 0, False)
    write_log(box, "cap", b"a" + b"x" * (mib - 1) + b"\n")  # one byte more: the end, flagged
    value = call(ctx, "logs", key="cap")
    assert (len(value["data"]), value["offset"], value["truncated"]) == (mib, 1, True)
    assert value["data"][:1] == b"x"


def test_logs_of_a_directory_say_what_failed(world):
    box, ctx = world
    (box.server_dir / "dir-log2.log").mkdir()
    with pytest.raises(ProtocolError) as info:
        call(ctx, "logs", key="dir-log2")
    assert info.value.code == ErrorCode.OP_FAILED
    assert info.value.message.startswith("could not read log of 'dir-log2': ")
    assert "Is a directory" in info.value.message


def test_logs_tail_of_more_than_max_bytes_over_several_blocks_gives_the_last_max_bytes(world):
    # 5000 lines of 25 bytes do not fit in 100 000 bytes; the first backwards block
    # (64 KiB) holds fewer lines, the cap is reached in the second read
    box, ctx = world
    big = b"".join(b"line %06d of the big log\n" % i for i in range(20_000))
    write_log(box, "big2", big)
    value = call(ctx, "logs", key="big2", tail=5000, max_bytes=100_000)
    assert value["data"] == big[-100_000:] and value["truncated"] is True
    assert value["offset"] == len(big) - 100_000


def _pattern(start: int, length: int) -> bytes:
    """The log content at positions start.. (every byte is its position mod 251)."""
    return bytes((start + i) % 251 for i in range(length))


def test_a_log_rewritten_while_it_is_read_gives_only_bytes_it_held_up_to_the_size_said(world):
    # A relaunch truncates the log and the service writes it again, while a follower
    # reads: every answer is bytes the log held at those positions, never past `size`.
    box, ctx = world
    path = box.server_dir / "hot.log"
    write_log(box, "hot", _pattern(0, 200_000))
    block = _pattern(0, 251 * 64)
    stop = threading.Event()

    def relaunches() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            with open(path, "wb", buffering=0) as log:   # truncated, as a relaunch does
                for _ in range(rng.randint(1, 40)):
                    log.write(block)                     # block is a whole number of periods

    writer = threading.Thread(target=relaunches, daemon=True)
    writer.start()
    rng = random.Random(2)
    try:
        for _ in range(1500):
            offset = rng.randint(0, 300_000)
            for args in ({"offset": offset, "max_bytes": 1 << 21}, {"max_bytes": 1000}):
                value = call(ctx, "logs", key="hot", **args)
                data, start = value["data"], value["offset"]
                assert data == _pattern(start, len(data)), args
                assert value["next_offset"] == start + len(data) <= value["size"], args
    finally:
        stop.set()
        writer.join()
