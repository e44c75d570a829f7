"""The `ps` op on hand-written state files whose pids are real: a `sleep` child (in its own
process group, as a launched service) for a live service, a reaped child for a dead one.

No service is launched, so the module runs in about a second: it is the `ps` op's
mutation-test selection (tools/mutate.py), and what it checks is what a user reads in
`seamless-service ps`: the rows, their status and `process`, and which rows a filter keeps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from seamless_service.agent import fswatch, statefiles
from seamless_service.agent.watch import current_token
from seamless_service.protocol import ErrorCode, ProtocolError
from tests.support.agent import call
from tests.support.processes import dead_pid

UP = "hashserver-c1-rw-proj"                       # running, pid alive
DIED = "database-c1-rw-proj"                       # running, pid dead: stale
BOOT = "jobserver-c1-rw-proj--STAGE-s1"            # starting, pid alive
BOOT_DIED = "jobserver-c1-rw-proj--STAGE-s2"       # starting, pid dead: failed (#16)
FAILED = "hashserver-c2-ro-other"                  # failed
ODD = "sp ace"                                     # listed, but not a valid key


def _keys(rows: list[dict]) -> list[str]:
    return [row["key"] for row in rows]


@pytest.fixture
def state(sandbox, sleeper):
    """Server files of every status, and client files pointing at some of them."""
    live, dead = sleeper().pid, dead_pid()
    sandbox.write_state(UP, {"status": "running", "pid": live, "port": 5100})
    sandbox.write_state(DIED, {"status": "running", "pid": dead, "port": 5200})
    sandbox.write_state(BOOT, {"status": "starting", "pid": live})
    sandbox.write_state(BOOT_DIED, {"status": "starting", "pid": dead})
    sandbox.write_state(FAILED, {"status": "failed", "pid": dead, "port": 5300})
    sandbox.write_state(ODD, {"status": "failed"})
    # client side: UP and DIED reached directly (same port), one remote, one marked stale
    sandbox.write_state(UP, {"hostname": "localhost", "port": 5100}, side="client")
    sandbox.write_state(DIED, {"hostname": "localhost", "port": 5200}, side="client")
    sandbox.write_state("hashserver-remote-rw-proj", {
        "hostname": "localhost", "port": 6000, "tunneled-host": "hpc", "tunneled-port": 6000}, side="client")
    sandbox.write_state("database-remote-rw-proj", {
        "hostname": "front", "ssh_hostname": "hpc", "port": 6001, "status": "stale"}, side="client")
    return live, dead


def test_server_rows_carry_the_derived_status(state, make_ctx):
    live, dead = state
    ctx = make_ctx()
    value = call(ctx, "ps")
    rows = {row["key"]: row for row in value["rows"]}
    assert _keys(value["rows"]) == sorted(rows)  # by file name, as rhl-ps
    assert {key: (row["status"], row["live"]) for key, row in rows.items()} == {
        UP: ("running", True), DIED: ("stale", False), BOOT: ("starting", True),
        BOOT_DIED: ("failed", False), FAILED: ("failed", None), ODD: ("failed", None)}
    assert (rows[UP]["pid"], rows[UP]["port"]) == (live, 5100)
    assert rows[ODD]["valid_key"] is False
    assert all("valid_key" not in row for key, row in rows.items() if key != ODD)
    # the reply says which state and which change it reflects, and how it was looked at
    assert value["token"] == current_token(ctx)
    assert value["state"] == ctx.state_id()
    assert value["watch"] in ("inotify", "stat")


def test_no_status_probes_no_pid(state, make_ctx):
    rows = {row["key"]: row for row in call(make_ctx(), "ps", no_status=True)["rows"]}
    assert {key: (row["status"], row["live"]) for key, row in rows.items()} == {
        UP: ("running", None), DIED: ("running", None), BOOT: ("starting", None),
        BOOT_DIED: ("starting", None), FAILED: ("failed", None), ODD: ("failed", None)}


@pytest.mark.parametrize("status,expected", [
    ("running", [UP]), ("stale", [DIED]), ("starting", [BOOT]), ("failed", [BOOT_DIED, FAILED, ODD]),
    ("error", []),
])
def test_status_filter_keeps_rows_of_that_status(state, make_ctx, status, expected):
    assert _keys(call(make_ctx(), "ps", status=status)["rows"]) == sorted(expected)


def test_status_filter_without_probes_uses_the_files_status(state, make_ctx):
    assert _keys(call(make_ctx(), "ps", status="running", no_status=True)["rows"]) == sorted([UP, DIED])


@pytest.mark.parametrize("filters,expected", [
    ({"cluster": "c1"}, [UP, DIED, BOOT, BOOT_DIED]),
    ({"cluster": "c1", "status": "running"}, [UP]),
    ({"stage": "s2"}, [BOOT_DIED]),
    ({"mode": "ro"}, [FAILED]),
    ({"service": "jobserver", "stage": "s1"}, [BOOT]),
    ({"project": "nowhere"}, []),
])
def test_key_filters_combine(state, make_ctx, filters, expected):
    assert _keys(call(make_ctx(), "ps", **filters)["rows"]) == sorted(expected)


def test_host_filter_needs_the_client_side(state, make_ctx):
    with pytest.raises(ProtocolError) as info:
        call(make_ctx(), "ps", host="hpc")
    assert info.value.code == ErrorCode.BAD_ARGS
    assert info.value.message == "ps: the 'host' filter needs side='client'"


def test_client_rows_carry_the_process_of_their_service(state, make_ctx):
    ctx = make_ctx()
    value = call(ctx, "ps", side="client")
    process = {row["key"]: row["process"] for row in value["rows"]}
    assert process == {
        UP: "running",                           # the server file here, same port, pid alive
        DIED: "stale",                           # its pid is dead
        "hashserver-remote-rw-proj": "client",   # no server file here: liveness unknown
        "database-remote-rw-proj": "stale",      # the client file's own status
    }
    assert _keys(value["rows"]) == sorted(process)
    assert all("valid_key" not in row for row in value["rows"])
    assert value["state"] == ctx.state_id() and value["token"] == current_token(ctx)


def test_client_process_without_probes_is_the_files_status(state, make_ctx):
    process = {row["key"]: row["process"] for row in call(make_ctx(), "ps", side="client", no_status=True)["rows"]}
    assert (process[UP], process[DIED]) == ("running", "running")


@pytest.mark.parametrize("filters,expected", [
    ({"status": "running"}, [UP]),                                   # applies to `process` (#6)
    ({"status": "stale"}, [DIED, "database-remote-rw-proj"]),
    ({"status": "client"}, ["hashserver-remote-rw-proj"]),
    ({"host": "hpc"}, ["database-remote-rw-proj", "hashserver-remote-rw-proj"]),
    ({"host": "hpc", "status": "stale"}, ["database-remote-rw-proj"]),
    ({"host": "localhost"}, [UP, DIED]),
    ({"cluster": "remote", "service": "database"}, ["database-remote-rw-proj"]),
])
def test_client_filters(state, make_ctx, filters, expected):
    assert _keys(call(make_ctx(), "ps", side="client", **filters)["rows"]) == sorted(expected)


def test_unreadable_files_are_error_rows_and_the_rest_listed(sandbox, make_ctx):
    sandbox.write_state("hashserver-c1-rw-bad", None, raw='{"status": ')
    sandbox.write_state("hashserver-c1-rw-ok", {"status": "failed"})
    sandbox.write_state("broken key", None, raw="[1]", side="client")
    ctx = make_ctx()
    rows = call(ctx, "ps")["rows"]
    assert [(row["key"], row["status"]) for row in rows] == [
        ("hashserver-c1-rw-bad", "error"), ("hashserver-c1-rw-ok", "failed")]
    assert rows[0]["error"].startswith("malformed JSON in ")
    (client,) = call(ctx, "ps", side="client")["rows"]
    assert (client["key"], client["process"], client["valid_key"]) == ("broken key", "error", False)


def test_a_client_file_removed_while_listed_is_left_out(sandbox, make_ctx, monkeypatch):
    """Listed, then removed (rhl-rm) before it could be read: as if listed a moment later;
    the files listed after it are all still shown."""
    for key in ("hashserver-c1-rw-kept", "hashserver-c1-rw-kept2"):
        sandbox.write_state(key, {"hostname": "localhost", "port": 1}, side="client")
    listing = statefiles.list_state_files

    def racing_listing(directory: Path) -> list[Path]:
        return [directory / "aa-removed.json"] + listing(directory) + [directory / "zz-removed.json"]

    monkeypatch.setattr(statefiles, "list_state_files", racing_listing)
    assert _keys(call(make_ctx(), "ps", side="client")["rows"]) == ["hashserver-c1-rw-kept", "hashserver-c1-rw-kept2"]


def test_no_state_at_all(sandbox, make_ctx):
    ctx = make_ctx()
    assert call(ctx, "ps")["rows"] == [] == call(ctx, "ps", side="client")["rows"]


def test_a_service_that_exited_unreaped_is_stale(sandbox, zombie, make_ctx):
    """A zombie (exited, its parent has not reaped it) runs nothing: kill(pid, 0) still
    succeeds on it, ps must not show it running."""
    sandbox.write_state(UP, {"status": "running", "pid": zombie(), "port": 5100})
    sandbox.write_state(BOOT, {"status": "starting", "pid": zombie()})
    sandbox.write_state(UP, {"hostname": "localhost", "port": 5100}, side="client")
    ctx = make_ctx()
    rows = {row["key"]: (row["status"], row["live"]) for row in call(ctx, "ps")["rows"]}
    assert rows == {UP: ("stale", False), BOOT: ("failed", False)}
    assert [row["process"] for row in call(ctx, "ps", side="client")["rows"]] == ["stale"]


class Polls:
    """What the agent does to the state folders and the pids during a `ps`, counted at the
    boundary to the OS: the state files it stats and opens, the pids it probes
    (kill(pid, 0)), and the rows it builds from a file (statefiles.server_row)."""

    def __init__(self, monkeypatch):
        self.stats: list[str] = []
        self.opens: list[str] = []
        self.probes: list[int] = []
        self.built: list[str] = []
        real_stat, real_open, real_kill, real_row = os.stat, os.open, os.kill, statefiles.server_row

        def stat(path, *args, **kwargs):
            self._note(self.stats, path)
            return real_stat(path, *args, **kwargs)

        def open_(path, *args, **kwargs):
            self._note(self.opens, path)
            return real_open(path, *args, **kwargs)

        def kill(pid, sig):
            if sig == 0:
                self.probes.append(pid)
            return real_kill(pid, sig)

        def server_row(path, **kwargs):
            self.built.append(os.path.basename(os.fspath(path)))
            return real_row(path, **kwargs)

        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "kill", kill)
        monkeypatch.setattr(statefiles, "server_row", server_row)

    @staticmethod
    def _note(seen: list[str], path) -> None:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith(".json"):
            seen.append(os.path.basename(os.fspath(path)))

    def poll(self, ctx, **args) -> dict[str, dict]:
        for seen in (self.stats, self.opens, self.probes, self.built):
            seen.clear()
        reply = call(ctx, "ps", **args)
        assert reply["watch"] == "inotify"  # the mode under test really ran
        return {row["key"]: row for row in reply["rows"]}


@pytest.fixture
def polls(monkeypatch):
    if not fswatch.available():
        pytest.skip("needs Linux inotify")
    # one liveness answer per pid for the whole test: a slow machine cannot make a second
    # probe look like a cache miss
    monkeypatch.setattr(statefiles.LivenessCache, "TTL", 60.0)
    return Polls(monkeypatch)


def test_a_poll_reads_and_probes_only_what_changed(state, make_ctx, polls):
    """Issue 13's contract: a pid shared by several rows (server and client side) is probed
    once; a poll of unchanged files stats, reads and builds nothing again; after one file
    changed only that one is read again."""
    live, dead = state
    ctx = make_ctx()
    rows = polls.poll(ctx)
    assert (rows[UP]["status"], rows[BOOT]["status"]) == ("running", "starting")
    assert sorted(polls.probes) == sorted([live, dead])   # UP and BOOT share `live`
    assert polls.poll(ctx)[UP]["status"] == "running"
    assert (polls.stats, polls.opens, polls.probes, polls.built) == ([], [], [], [])
    sandbox_path = ctx.server_dir / f"{FAILED}.json"
    sandbox_path.write_text(json.dumps({"status": "failed", "pid": dead, "port": 5301}))
    assert polls.poll(ctx)[FAILED]["port"] == 5301
    assert set(polls.stats) == set(polls.opens) == {f"{FAILED}.json"}
    assert polls.probes == []
    # the client side: its files read once, its services' server files not read again,
    # their pids not probed again (all within the liveness answers' lifetime)
    rows = polls.poll(ctx, side="client")
    assert (rows[UP]["process"], rows[DIED]["process"]) == ("running", "stale")
    assert [name for name in polls.opens if name.endswith(".json")] == sorted(
        f"{key}.json" for key in (UP, DIED, "hashserver-remote-rw-proj", "database-remote-rw-proj"))
    assert polls.probes == []
    assert polls.poll(ctx, side="client")[UP]["process"] == "running"
    assert (polls.opens, polls.probes) == ([], [])


def test_a_service_whose_pid_dies_is_stale_on_the_next_poll(sandbox, make_ctx, sleeper):
    """No file changes when a service dies: the rows a poll keeps for unchanged files must
    still follow the liveness answers."""
    proc = sleeper()
    sandbox.write_state(UP, {"status": "running", "pid": proc.pid, "port": 5100})
    ctx = make_ctx()
    assert [row["status"] for row in call(ctx, "ps")["rows"]] == ["running"]
    assert [row["status"] for row in call(ctx, "ps")["rows"]] == ["running"]
    proc.kill()
    proc.wait()
    time.sleep(statefiles.LivenessCache.TTL)
    assert [row["status"] for row in call(ctx, "ps")["rows"]] == ["stale"]
    assert [row["status"] for row in call(ctx, "ps", no_status=True)["rows"]] == ["running"]


def test_a_server_file_removed_between_the_scan_and_its_read_is_left_out(sandbox, make_ctx, monkeypatch):
    """rm between the poll's scan (which stat-ed the file) and the read of its row: as if
    listed a moment later; the files listed after it are all still shown."""
    sandbox.write_state("aa-removed", {"status": "failed"})
    for key in ("hashserver-c1-rw-kept", "hashserver-c1-rw-kept2"):
        sandbox.write_state(key, {"status": "failed"})
    removed, real_stat = str(sandbox.server_dir / "aa-removed.json"), os.stat

    def stat_then_remove(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if os.fspath(path) == removed:
            os.unlink(removed)
        return st

    monkeypatch.setattr(os, "stat", stat_then_remove)
    assert _keys(call(make_ctx(), "ps")["rows"]) == ["hashserver-c1-rw-kept", "hashserver-c1-rw-kept2"]


def test_a_server_file_rewritten_between_the_scan_and_its_read(sandbox, make_ctx, sleeper, monkeypatch):
    """The row shows the file as read, with the liveness of the pid it names, even when the
    scan saw another pid there (a restart racing the poll)."""
    live = sleeper().pid
    path = sandbox.write_state(UP, {"status": "running", "pid": dead_pid(), "port": 5100})
    real_open, opened = os.open, []

    def open_(name, *args, **kwargs):
        if os.fspath(name) == str(path):
            opened.append(name)
            if len(opened) == 2:   # the scan read the dead pid; the row reads the new one
                with open(path, "w") as handle:
                    json.dump({"status": "running", "pid": live, "port": 5101}, handle)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    ctx = make_ctx()
    [row] = call(ctx, "ps")["rows"]
    assert len(opened) == 2   # the race really happened
    assert (row["pid"], row["port"], row["status"], row["live"]) == (live, 5101, "running", True)
    [row] = call(ctx, "ps")["rows"]
    assert (row["pid"], row["status"]) == (live, "running")
