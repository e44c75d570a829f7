"""Fuzzing what is ON DISK (test_fuzz.py fuzzes the requests): random state files and
random names in a data directory, read by the real ops.

A state file may hold anything: a pid of 99999999999999999999, a `"\\ud800"` escape, a
key that is not UTF-8, arrays nested 3000 deep, an integer of 5000 digits, NaN, a
megabyte of text; its name may be any bytes. Whatever they hold, every op's reply must
encode and decode, every well-formed file keeps its row, and each bad file gives exactly
one error row (never an op-level failure). In-process through the agent's real dispatch
(as the local transport runs it), and through a real agent process over rpyc.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seamless_service.agent.context import AgentContext
from seamless_service.agent.dispatch import handle
from seamless_service.client.transport.agent_conn import AgentConnection
from seamless_service.protocol import ErrorCode, decode_reply, encode_request
from seamless_service.protocol.keys import is_valid_key
from seamless_service.protocol.wiresafe import display_text
from tests.support.agent import end_agent, spawn_agent

MARKER = ".HASHSERVER_PREFIX"


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=True, database=None)


# -- what a state file may hold ------------------------------------------------------------

good_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
good_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), good_text)
good_values = st.recursive(
    good_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(good_text, inner, max_size=4)),
    max_leaves=15)
# pids that name no process this test could harm, or the test process itself (a "running"
# service whose port health then probes; no op here signals anything)
pids = st.one_of(st.none(), st.sampled_from([0, -1, 4.5, "12x", 1 << 22, os.getpid()]))


@st.composite
def good_state(draw) -> dict:
    state = {"status": draw(st.sampled_from(["running", "starting", "failed", "stale", None, 3])),
             "pid": draw(pids), "port": draw(st.one_of(st.none(), st.integers(0, 70000), good_text)),
             "network_interface": draw(st.sampled_from(["127.0.0.1", "", "::1", "a" * 300, "x\x00y"]))}
    state.update(draw(st.dictionaries(good_text, good_values, max_size=4)))
    return state


def _json(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def bad_content(draw) -> bytes:
    """A file that must become one error row: unsendable, unparsable or not an object."""
    state = draw(good_state())
    kind = draw(st.sampled_from(["bigint", "surrogate", "surrogate_key", "deep", "deeper",
                                 "digits", "not_utf8", "not_object", "truncated", "huge"]))
    field = draw(st.sampled_from(["pid", "port", "uid", "meta", "x"]))
    if kind == "bigint":
        big = draw(st.one_of(st.integers(min_value=2**64, max_value=10**400),
                             st.integers(min_value=-(10**400), max_value=-(2**63) - 1)))
        state[field] = {"nested": [big]} if field in ("meta", "x") else big
    elif kind == "surrogate":
        state[field] = draw(st.sampled_from(["\ud800", "a\udcff", "\udfff\u00e9"]))
    elif kind == "surrogate_key":
        state["meta"] = {draw(st.sampled_from(["\ud800", "\udc80k"])): 1}
    elif kind in ("deep", "deeper"):
        depth = draw(st.integers(33, 600) if kind == "deep" else st.integers(2000, 5000))
        return b'{"status": "failed", "x": ' + _deep(depth).encode() + b"}"
    elif kind == "digits":
        return b'{"status": "failed", "pid": ' + b"7" * draw(st.integers(4301, 6000)) + b"}"
    elif kind == "not_utf8":
        return b"\xff" + draw(st.binary(max_size=40))
    elif kind == "not_object":
        return _json(draw(st.one_of(good_scalars, st.lists(good_scalars, max_size=3))))
    elif kind == "truncated":
        text = _json(state)
        return text[: draw(st.integers(0, len(text) - 1))]
    else:  # over the size limit
        state["x"] = "a" * ((1 << 20) + 1)
    return _json(state)


name_part = st.one_of(
    st.from_regex(r"hashserver-c-rw-[a-z0-9_]{1,12}", fullmatch=True).map(str.encode),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b))


@st.composite
def state_dir(draw) -> list[tuple[bytes, bytes, bool]]:
    """(file name, content, well formed?) for a server directory."""
    files = []
    for index in range(draw(st.integers(1, 6))):
        good = draw(st.booleans())
        content = _json(draw(good_state())) if good else draw(bad_content())
        # an index prefix keeps names unique; a valid key stays valid with it
        name = draw(name_part)
        name = name.replace(b"hashserver-c-rw-", b"hashserver-c-rw-%d" % index, 1) \
            if name.startswith(b"hashserver-c-rw-") else b"%d" % index + name
        files.append((name + b".json", content, good))
    return files


def write_files(directory: Path, files: list[tuple[bytes, bytes, bool]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content, _ in files:
        with open(os.path.join(os.fsencode(directory), name), "wb") as handle:
            handle.write(content)


def expected_key(name: bytes) -> str:
    return display_text(os.fsdecode(name[: -len(".json")]))


# -- what the replies must be ---------------------------------------------------------------

def ask(call, ops: list[tuple[str, dict]]) -> list[dict]:
    """One batch; the reply must decode and no op may fail with an internal error."""
    reply = call(encode_request(ops))
    msgpack.unpackb(reply, raw=False)  # decodes with the client's strict settings too
    results = decode_reply(reply, expected=len(ops))
    for (op, _), result in zip(ops, results):
        assert result["ok"] or result["error"]["code"] != ErrorCode.INTERNAL, (op, result)
    return results


def check_rows(rows: list[dict], files: list[tuple[bytes, bytes, bool]]) -> None:
    """One row per file; a well-formed file's row is not an error, a bad one's is."""
    by_key = {}
    for row in rows:
        assert row["key"] not in by_key, f"two rows for {row['key']!r}"
        by_key[row["key"]] = row
    assert sorted(by_key) == sorted(expected_key(name) for name, _, _ in files)
    for name, content, good in files:
        row = by_key[expected_key(name)]
        if good:
            assert row["status"] != "error", (content[:200], row)
        else:
            assert row["status"] == "error" and row["error"], (content[:200], row)


def data_dir(root: Path, names: list[bytes]) -> list[str]:
    """A hashserver-like data dir: `root` and one marker-holding subdirectory per name,
    plus a file of that name; returns the row paths `persistent` must give."""
    root.mkdir(parents=True)
    (root / MARKER).write_bytes(b"")
    shown = [str(root)]
    for name in names:
        sub = os.path.join(os.fsencode(root), name)
        os.mkdir(sub)
        open(os.path.join(sub, os.fsencode(MARKER)), "wb").close()
        open(sub + b".f", "wb").close()
        shown.append(display_text(os.fsdecode(sub)))
    return sorted(shown)


def check_ops(call, base: Path, files: list[tuple[bytes, bytes, bool]], data: Path | None = None,
              data_rows: list[str] | None = None) -> None:
    keys = [expected_key(name) for name, _, _ in files if is_valid_key(expected_key(name))]
    ops: list[tuple[str, dict]] = [("ps", {}), ("ps", {"side": "client"}), ("ps", {"no_status": True}),
                                   ("health", {"timeout": 0.3}), ("wait", {"timeout": 0})]
    ops += [("inspect", {"key": key}) for key in keys]
    ops += [("logs", {"key": key, "tail": 3}) for key in keys[:2]]
    if data is not None:
        ops.append(("persistent", {"paths": [str(data)], "level": 1, "marker": MARKER}))
    results = ask(call, ops)
    for result in results[:3]:
        assert result["ok"], result
        check_rows(result["value"]["rows"], files)
    assert results[3]["ok"] and results[4]["ok"]
    for (_, args), result in zip(ops[5:5 + len(keys)], results[5:]):
        # a bad file is the op's own error; a good or unsendable one is shown
        assert result["ok"] or result["error"]["code"] == ErrorCode.OP_FAILED, result
    if data is not None:
        assert results[-1]["ok"], results[-1]
        assert sorted(row["path"] for row in results[-1]["value"]["rows"]) == data_rows


odd_names = st.lists(st.binary(min_size=1, max_size=10).filter(
    lambda b: b"/" not in b and b"\0" not in b and not b.startswith(b".")), max_size=4, unique=True)


@fuzz(120)
@given(files=state_dir(), names=odd_names)
def test_random_state_files_in_process(tmp_path_factory, files, names):
    base = tmp_path_factory.mktemp("fz") / "rhl"
    write_files(base / "server", files)
    write_files(base / "client", files)
    for name, content, _ in files[:2]:
        (base / "server").joinpath(os.fsdecode(name[:-5]) + ".log").write_bytes(content[:100])
    data = base.parent / "data"
    data_rows = data_dir(data, names)
    ctx = AgentContext(base=base)
    try:
        check_ops(lambda request: handle(ctx, request), base, files, data, data_rows)
    finally:
        ctx.close()


def test_one_bad_pid_leaves_the_others_listed(tmp_path):
    """The issue's own case: one file with a pid beyond 64 bits; ps lists the rest."""
    files = [(b"hashserver-c-rw-a.json", b'{"status": "failed", "port": 1}', True),
             (b"hashserver-c-rw-b.json", b'{"status": "running", "pid": 99999999999999999999}', False),
             (b"database-c-rw-a.json", b'{"status": "failed", "uid": -99999999999999999999}', False)]
    base = tmp_path / "rhl"
    write_files(base / "server", files)
    ctx = AgentContext(base=base)
    try:
        [ps, inspect] = ask(lambda r: handle(ctx, r), [("ps", {}), ("inspect", {"key": "hashserver-c-rw-b"})])
    finally:
        ctx.close()
    rows = {row["key"]: row for row in ps["value"]["rows"]}
    assert rows["hashserver-c-rw-a"]["status"] == "failed"
    assert rows["hashserver-c-rw-b"]["status"] == "error"
    assert ".pid: an integer beyond the 64-bit range" in rows["hashserver-c-rw-b"]["error"]
    assert rows["database-c-rw-a"]["status"] == "error"
    # inspect shows the file, the unsendable value as text, and says so
    assert inspect["value"]["data"]["pid"] == "99999999999999999999"
    assert inspect["value"]["unsendable"] == [".pid: an integer beyond the 64-bit range, sent as text"]


def test_real_agent_over_rpyc(tmp_path):
    """The same generated files read by a real agent process, asked over rpyc."""
    base = tmp_path / "rhl"
    (base / "server").mkdir(parents=True)
    proc, info = spawn_agent(base)
    try:
        secret = (base / "agent" / "secret").read_text().strip()
        with AgentConnection.connect("127.0.0.1", info["port"], secret) as conn:
            rounds = []

            @fuzz(25)
            @given(files=state_dir())
            def over_rpyc(files):
                # new names per example: the agent caches files by path and stat
                for sub in (base / "server", base / "client"):
                    sub.mkdir(exist_ok=True)
                    for entry in os.listdir(os.fsencode(sub)):
                        os.unlink(os.path.join(os.fsencode(sub), entry))
                prefix = b"%d" % len(rounds)
                files = [(n.replace(b"hashserver-c-rw-", b"hashserver-c-rw-" + prefix, 1)
                          if n.startswith(b"hashserver-c-rw-") else prefix + b"x" + n, c, g)
                         for n, c, g in files]
                write_files(base / "server", files)
                write_files(base / "client", files)
                rounds.append(1)
                check_ops(conn.call, base, files)

            over_rpyc()
        assert len(rounds) == 25
        assert proc.poll() is None, "the agent died"
    finally:
        end_agent(proc)
