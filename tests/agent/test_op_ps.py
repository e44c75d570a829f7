"""The `ps` op against the real `rhl-ps` on the same state: real launched services, a
stopped one, hand-written failed/stale/starting/dry-run files, client files.

Every call goes through dispatch.handle with real msgpack bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from seamless_service.agent import dispatch, statefiles
from seamless_service.agent.context import AgentContext
from seamless_service.agent.watch import current_token
from seamless_service.protocol import ErrorCode, ProtocolError, decode_reply, encode_request
from tests.support.agent import call
from tests.support.processes import dead_pid
from tests.support.services import LauncherSandbox

HASH = "hashserver-c1-rw-proj"
DB = "database-c1-ro-proj--STAGE-s1"
JOB = "jobserver-my-rw-cluster-rw-proj--STAGE-s1SUBSTAGE-gpu"
STOPPED = "daskserver-c2-rw-other"
STARTING_DEAD = "jobserver-c1-rw-proj--STAGE-boot"  # #16: rhl-ps says starting, we say failed
ODD = "sp ace"                                      # #36: listed, but not a valid key
LAUNCHED = (HASH, DB, JOB, STOPPED)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared, read-only state for this module (launching and stopping cost ~3 s)."""
    box = LauncherSandbox(tmp_path_factory.mktemp("ps") / "rhl")
    try:
        for key in LAUNCHED:
            assert box.launch(key)["status"] == "running"
        stop = box.run_helper("rhl-stop", STOPPED)
        assert stop.returncode == 0, stop.stderr
        dead = dead_pid()
        hand = {
            "hashserver-c1-rw-proj--STAGE-failed": {"status": "failed", "pid": dead, "port": 7},
            "hashserver-c1-rw-proj--STAGE-stale": {"status": "stale", "pid": dead, "port": 8},
            "database-c1-rw-proj--STAGE-boot": {"status": "starting", "workdir": "/w"},
            STARTING_DEAD: {"status": "starting", "pid": dead},
            "hashserver-c1-rw-proj--STAGE-dry": {"dry_run": True, "workdir": "/w", "log": "/w/x.log",
                                                 "command": "hashserver", "network_interface": "0.0.0.0"},
            "pure-daskserver-c1-my-queue": {"status": "running", "pid": dead, "port": 9},
            "notes": {"status": "failed"},
            ODD: {"status": "failed"},
            "custom-key": {"status": "failed", "meta": {
                "service": "hashserver", "cluster": "metacluster", "mode": "rw", "project": "p",
                "subproject": None, "stage": None, "substage": None, "queue": None}},
        }
        for key, data in hand.items():
            box.write_state(key, data)
        box.write_state("hashserver-remote-rw-proj", {
            "hostname": "localhost", "port": 5000, "tunneled-host": "hpc", "tunneled-port": 6000,
            "tunneled-network-interface": "0.0.0.0"}, side="client")
        box.write_state("database-remote-rw-proj", {
            "hostname": "front", "ssh_hostname": "hpc", "port": 5001, "status": "stale"}, side="client")
        yield box, AgentContext(base=box.base)
    finally:
        box.kill_all()


def _keys(rows):
    return [row["key"] for row in rows]


def _without(row, *fields):
    return {k: v for k, v in row.items() if k not in fields}


# -- server side -------------------------------------------------------------------------

def test_server_rows_equal_rhl_ps(world):
    box, ctx = world
    theirs = box.helper_ndjson("rhl-ps", "--json")
    value = call(ctx, "ps")
    ours = value["rows"]
    assert _keys(ours) == _keys(theirs)
    for mine, helper in zip(ours, theirs):
        if mine["key"] == STARTING_DEAD:
            assert (helper["status"], helper["live"]) == ("starting", False)
            assert (mine["status"], mine["live"]) == ("failed", False)
            assert _without(mine, "status", "live") == _without(helper, "status", "live")
        elif mine["key"] == ODD:
            assert mine.pop("valid_key") is False
            assert mine == helper
        else:
            assert "valid_key" not in mine
            assert mine == helper, mine["key"]
    by_key = {row["key"]: row for row in ours}
    for key in (HASH, DB, JOB):
        assert (by_key[key]["status"], by_key[key]["live"]) == ("running", True)
        assert isinstance(by_key[key]["port"], int) and by_key[key]["pid"] > 0
    assert (by_key[STOPPED]["status"], by_key[STOPPED]["json_status"]) == ("stale", "stale")
    assert isinstance(value["token"], str) and value["token"]


def test_no_status_rows_equal_rhl_ps(world):
    box, ctx = world
    theirs = box.helper_ndjson("rhl-ps", "--no-status", "--json")
    ours = call(ctx, "ps", no_status=True)["rows"]
    for row in ours:
        if row["key"] == ODD:
            assert row.pop("valid_key") is False
        assert row["live"] is None
    assert ours == theirs


@pytest.mark.parametrize("status", ["running", "stale", "failed", "starting"])
def test_status_filter_matches_rhl_ps(world, status):
    box, ctx = world
    theirs = _keys(box.helper_ndjson("rhl-ps", "--json", "--status", status))
    # the one correction: a starting row with a dead pid is failed
    expected = sorted(set(theirs) - {STARTING_DEAD} | ({STARTING_DEAD} if status == "failed" else set()))
    ours = _keys(call(ctx, "ps", status=status)["rows"])
    assert ours == expected
    assert ours  # every status has rows in this world


def test_no_status_with_status_filter(world):
    box, ctx = world
    theirs = _keys(box.helper_ndjson("rhl-ps", "--json", "--no-status", "--status", "running"))
    assert _keys(call(ctx, "ps", no_status=True, status="running")["rows"]) == theirs
    assert "pure-daskserver-c1-my-queue" in theirs  # not probed: stays "running"


def test_host_filter_refused_on_server_side(world):
    _, ctx = world
    with pytest.raises(ProtocolError) as info:
        call(ctx, "ps", host="hpc")
    assert info.value.code == ErrorCode.BAD_ARGS
    assert "client" in info.value.message


@pytest.mark.parametrize("filters,expected", [
    ({"cluster": "my-rw-cluster"}, [JOB]),                  # cluster containing -rw- (#30)
    ({"substage": "gpu"}, [JOB]),                           # SUBSTAGE split (#30)
    ({"stage": "s1"}, [DB, JOB]),
    ({"stage": "s1", "substage": "gpu", "service": "jobserver"}, [JOB]),
    ({"mode": "ro"}, [DB]),
    ({"service": "pure-daskserver", "queue": "my-queue"}, ["pure-daskserver-c1-my-queue"]),
    ({"cluster": "metacluster"}, ["custom-key"]),           # the meta block wins over the key
    ({"cluster": "c1", "status": "running"}, [DB, HASH]),
    ({"cluster": "c2"}, [STOPPED]),
    ({"project": "other"}, [STOPPED]),
    ({"cluster": "nowhere"}, []),
])
def test_key_filters(world, filters, expected):
    _, ctx = world
    assert _keys(call(ctx, "ps", **filters)["rows"]) == sorted(expected)


def test_filters_without_meta_parse_every_reading(world):
    _, ctx = world
    rows = call(ctx, "ps", service="hashserver")["rows"]
    keys = _keys(rows)
    assert "custom-key" in keys and HASH in keys
    assert "notes" not in keys and ODD not in keys  # not Seamless keys: fail any key filter
    assert all(k.startswith("hashserver-") or k == "custom-key" for k in keys)


# -- client side -------------------------------------------------------------------------

def test_client_rows_equal_rhl_ps_client_plus_process(world):
    box, ctx = world
    theirs = box.helper_ndjson("rhl-ps", "--client", "--json")
    ours = call(ctx, "ps", side="client")["rows"]
    assert [_without(row, "process") for row in ours] == theirs
    process = {row["key"]: row["process"] for row in ours}
    assert process == {
        HASH: "running", DB: "running", JOB: "running",
        STOPPED: "stale",                       # server file says so; the client file does not (#40)
        "hashserver-remote-rw-proj": "client",  # remote: liveness unknown here
        "database-remote-rw-proj": "stale",     # raw status of the client file
    }


@pytest.mark.parametrize("host", ["127.0.0.1", "hpc", "front"])
def test_client_host_filter_matches_rhl_ps(world, host):
    box, ctx = world
    theirs = box.helper_ndjson("rhl-ps", "--client", "--json", "--host", host)
    ours = call(ctx, "ps", side="client", host=host)["rows"]
    assert [_without(row, "process") for row in ours] == theirs
    if host != "front":
        assert ours


def test_client_status_filter_fixes_defect_6(world):
    box, ctx = world
    # rhl-ps matches the raw status only: "running" can never match a client row (#6)
    assert box.helper_ndjson("rhl-ps", "--client", "--json", "--status", "running") == []
    assert _keys(call(ctx, "ps", side="client", status="running")["rows"]) == sorted([HASH, DB, JOB])
    theirs = _keys(box.helper_ndjson("rhl-ps", "--client", "--json", "--status", "stale"))
    assert theirs == ["database-remote-rw-proj"]
    ours = _keys(call(ctx, "ps", side="client", status="stale")["rows"])
    assert ours == sorted(["database-remote-rw-proj", STOPPED])
    assert _keys(call(ctx, "ps", side="client", status="stale", host="hpc")["rows"]) == ["database-remote-rw-proj"]


def test_client_key_filters(world):
    _, ctx = world
    assert _keys(call(ctx, "ps", side="client", cluster="remote")["rows"]) == [
        "database-remote-rw-proj", "hashserver-remote-rw-proj"]
    assert _keys(call(ctx, "ps", side="client", substage="gpu")["rows"]) == [JOB]


def test_batch_of_ps_ops_through_dispatch(world):
    box, ctx = world
    request = encode_request([
        ("ps", {"status": "running"}),
        ("ps", {"host": "hpc"}),                  # refused: server side
        ("ps", {"side": "client", "host": "hpc"}),
        ("ps", {"side": "both"}),                 # schema: not a choice
    ])
    results = decode_reply(dispatch.handle(ctx, request), expected=4)
    assert results[0]["ok"] and _keys(results[0]["value"]["rows"]) == sorted([HASH, DB, JOB])
    assert results[1] == {"ok": False, "error": results[1]["error"]}
    assert results[1]["error"]["code"] == ErrorCode.BAD_ARGS
    assert results[2]["ok"] and _keys(results[2]["value"]["rows"]) == [
        "database-remote-rw-proj", "hashserver-remote-rw-proj"]
    assert results[3]["error"]["code"] == ErrorCode.BAD_ARGS
    # the reply survived msgpack: rows are plain maps equal to the JSON rows
    theirs = box.helper_ndjson("rhl-ps", "--json", "--status", "running")
    assert results[0]["value"]["rows"] == theirs


def test_token_tracks_state(world):
    _, ctx = world
    token = call(ctx, "ps")["token"]
    assert token == current_token(ctx)
    assert call(ctx, "wait", token=token, timeout=0) == {"changed": False, "token": token}


# -- defect #36 and races (own sandbox: these mutate the state) ---------------------------

def test_malformed_files_do_not_abort_the_listing(sandbox):
    sandbox.launch(HASH)
    sandbox.write_state("database-c1-rw-proj", {"status": "failed"})
    sandbox.write_state("hashserver-c1-rw-bad", None, raw='{"status": ')
    sandbox.write_state("database-c1-rw-list", None, raw='["not", "an", "object"]')
    broken = sandbox.run_helper("rhl-ps", "--json")
    assert broken.returncode == 1 and broken.stdout == ""

    ctx = AgentContext()
    rows = {row["key"]: row for row in call(ctx, "ps")["rows"]}
    assert sorted(rows) == sorted([HASH, "database-c1-rw-proj", "hashserver-c1-rw-bad", "database-c1-rw-list"])
    assert rows[HASH]["status"] == "running" and rows["database-c1-rw-proj"]["status"] == "failed"
    bad, lst = rows["hashserver-c1-rw-bad"], rows["database-c1-rw-list"]
    assert bad["status"] == "error" and bad["error"].startswith("malformed JSON in ")
    assert lst["status"] == "error" and lst["error"].startswith("state file must contain a JSON object: ")
    # rhl-ps stopped at the first bad file (sorted: the list), with the same words
    assert broken.stderr == f"rhl-ps: {lst['error']}\n"
    # error rows are filtered like any row: by status, and by their key
    assert _keys(call(ctx, "ps", status="error")["rows"]) == ["database-c1-rw-list", "hashserver-c1-rw-bad"]
    assert _keys(call(ctx, "ps", service="hashserver")["rows"]) == ["hashserver-c1-rw-bad", HASH]
    # and the same on the client side
    sandbox.write_state("broken", None, raw="{", side="client")
    client = {row["key"]: row for row in call(ctx, "ps", side="client")["rows"]}
    assert client["broken"]["process"] == "error" and client[HASH]["process"] == "running"


def test_invalid_stem_is_listed_but_marked(sandbox):
    sandbox.write_state("sp ace", {"status": "failed"})
    sandbox.write_state("ok-key", {"status": "failed"})
    theirs = sandbox.helper_ndjson("rhl-ps", "--json")
    rows = call(AgentContext(), "ps")["rows"]
    assert _keys(rows) == _keys(theirs) == ["ok-key", "sp ace"]
    assert rows[1]["valid_key"] is False and "valid_key" not in rows[0]
    # it really cannot be inspected: the key rule refuses it
    with pytest.raises(ProtocolError) as info:
        call(AgentContext(), "inspect", key="sp ace")
    assert info.value.code == ErrorCode.INVALID_KEY


def test_file_removed_during_listing_is_left_out(sandbox, monkeypatch):
    sandbox.write_state("kept", {"status": "failed"})
    listing = statefiles.list_state_files

    def racing_listing(directory: Path):
        # a file that was listed and then removed (rhl-rm) before it could be read
        return listing(directory) + [directory / "zz-removed.json"]

    monkeypatch.setattr(statefiles, "list_state_files", racing_listing)
    assert _keys(call(AgentContext(), "ps")["rows"]) == ["kept"]


def test_empty_and_missing_state(sandbox):
    ctx = AgentContext()
    assert not ctx.server_dir.exists()
    assert call(ctx, "ps")["rows"] == []
    assert call(ctx, "ps", side="client")["rows"] == []
    assert sandbox.helper_ndjson("rhl-ps", "--json") == []


def test_rows_are_json_like_the_helper(world):
    _, ctx = world
    # every value is JSON-encodable (the CLI prints rows as NDJSON, like rhl-ps)
    for row in call(ctx, "ps")["rows"] + call(ctx, "ps", side="client")["rows"]:
        json.dumps(row, sort_keys=True)


def test_state_names_the_launcher_state_whatever_the_door(world, tmp_path):
    """`state` is the same for two contexts on one base (two ssh aliases reach one agent
    state; a symlinked path is the same directory) and differs for another base, so a
    client asking several hosts can show one server's rows once."""
    box, ctx = world
    state = call(ctx, "ps")["state"]
    assert call(ctx, "ps", side="client")["state"] == state
    link = tmp_path / "link"
    link.symlink_to(box.base)
    assert call(AgentContext(base=link), "ps")["state"] == state
    other = tmp_path / "other-base"
    other.mkdir()
    assert call(AgentContext(base=other), "ps")["state"] != state
    # a base that does not exist yet is named by its path
    missing = call(AgentContext(base=tmp_path / "none"), "ps")["state"]
    assert missing == call(AgentContext(base=tmp_path / "none"), "ps")["state"] != state


def test_a_client_file_left_at_an_old_port_does_not_take_the_servers_running(sandbox, make_ctx):
    """The same key runs on this machine, relaunched on another port: a client file still
    pointing at the old port describes an instance that is gone, whatever the new one does."""
    ctx = make_ctx()
    sandbox.write_state("hashserver-c1-rw-p", {"status": "running", "pid": os.getpid(), "port": 7001})
    sandbox.write_state("hashserver-c1-rw-p", {"hostname": "localhost", "port": 7000}, side="client")
    sandbox.write_state("database-c1-rw-p", {"status": "running", "pid": os.getpid(), "port": 7101})
    sandbox.write_state("database-c1-rw-p", {"hostname": "localhost", "port": 7101}, side="client")
    # through a tunnel: the tunneled port is the server's, the local one is not
    sandbox.write_state("jobserver-c1-rw-p", {"status": "running", "pid": os.getpid(), "port": 7201})
    sandbox.write_state("jobserver-c1-rw-p", {"hostname": "localhost", "port": 5000, "tunneled-host": "h",
                                              "tunneled-port": 7201}, side="client")
    sandbox.write_state("daskserver-c1-rw-p", {"status": "running", "pid": os.getpid(), "port": 5001})
    sandbox.write_state("daskserver-c1-rw-p", {"hostname": "localhost", "port": 5001, "tunneled-host": "h",
                                               "tunneled-port": 7301}, side="client")
    process = {row["key"]: row["process"] for row in call(ctx, "ps", side="client")["rows"]}
    assert process == {"hashserver-c1-rw-p": "client", "database-c1-rw-p": "running",
                       "jobserver-c1-rw-p": "running", "daskserver-c1-rw-p": "client"}
