"""The inotify watch of the state folders (agent/fswatch.py, agent/watch.py): every kind of
change to the state shows on the very next `ps`, with real files, real processes and a
real agent process. Each test fails if the watch misses its kind of change (e.g. with
IN_CLOSE_WRITE/IN_MODIFY left out of the mask, or a queue overflow not answered by a
full rescan), because the watched mode does not stat a file that had no event."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seamless_service.agent import fswatch, lifecycle, statefiles
from seamless_service.agent.context import AgentContext
from seamless_service.agent.statefiles import LivenessCache
from seamless_service.agent.watch import watcher
from seamless_service.client.transport.agent_conn import AgentConnection
from tests.support.agent import call, end_agent, spawn_agent

pytestmark = pytest.mark.skipif(not fswatch.available(), reason="needs Linux inotify")

KEY = "hashserver-c1-rw-proj"


@pytest.fixture
def ctx(sandbox):
    context = AgentContext(base=sandbox.base)
    yield context
    context.close()


def rows(ctx: AgentContext) -> dict[str, dict]:
    reply = call(ctx, "ps")
    assert reply["watch"] == "inotify"  # the mode under test really ran
    return {row["key"]: row for row in reply["rows"]}


def settle() -> None:
    """Past the timestamp tick, so that a test cannot pass on a moved stat signature alone
    in one mode and fail in the other: both modes see these changes."""
    time.sleep(0.02)


def test_in_place_rewrite_of_the_same_size_is_seen(sandbox, ctx):
    path = sandbox.write_state(KEY, {"status": "failed", "port": 1111})
    assert rows(ctx)[KEY]["port"] == 1111
    before = os.stat(path)
    with open(path, "r+b") as handle:  # same inode, same size: only the content moves
        handle.write(json.dumps({"status": "failed", "port": 2222}).encode())
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert rows(ctx)[KEY]["port"] == 2222


def test_a_file_replaced_by_rename_is_seen(sandbox, ctx):
    path = sandbox.write_state(KEY, {"status": "failed", "port": 1111})
    assert rows(ctx)[KEY]["port"] == 1111
    tmp = path.with_name(".x.tmp")
    tmp.write_text(json.dumps({"status": "stale", "port": 3333}))
    os.replace(tmp, path)
    row = rows(ctx)[KEY]
    assert (row["status"], row["port"]) == ("stale", 3333)


def test_created_and_deleted_files_are_seen(sandbox, ctx):
    path = sandbox.write_state(KEY, {"status": "failed"})
    assert set(rows(ctx)) == {KEY}
    sandbox.write_state("database-c1-rw-proj", {"status": "failed"})
    assert set(rows(ctx)) == {KEY, "database-c1-rw-proj"}
    path.unlink()
    assert set(rows(ctx)) == {"database-c1-rw-proj"}


def test_a_chmod_that_makes_a_file_unreadable_is_seen(sandbox, ctx):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = sandbox.write_state(KEY, {"status": "failed"})
    assert rows(ctx)[KEY]["status"] == "failed"
    path.chmod(0)
    assert rows(ctx)[KEY]["status"] == "error"


def test_the_server_folder_replaced_is_seen(sandbox, ctx):
    sandbox.write_state(KEY, {"status": "failed"})
    assert set(rows(ctx)) == {KEY}
    old = sandbox.server_dir.with_name("server.old")
    sandbox.server_dir.rename(old)
    sandbox.server_dir.mkdir()
    sandbox.write_state("database-c1-rw-proj", {"status": "stale"})
    assert set(rows(ctx)) == {"database-c1-rw-proj"}
    # the old folder, still watched until the rescan, changes nothing any more
    (old / f"{KEY}.json").write_text(json.dumps({"status": "stale"}))
    assert set(rows(ctx)) == {"database-c1-rw-proj"}


def test_the_launcher_folder_replaced_is_seen(sandbox, ctx):
    # renaming the *parent* sends the watched folder no event: its inode is checked
    sandbox.write_state(KEY, {"status": "failed"})
    assert set(rows(ctx)) == {KEY}
    moved = sandbox.base.with_name("rhl-base.old")
    sandbox.base.rename(moved)
    shutil.copytree(moved, sandbox.base)
    (sandbox.server_dir / f"{KEY}.json").write_text(json.dumps({"status": "stale"}))
    assert rows(ctx)[KEY]["status"] == "stale"


def test_a_symlinked_state_file_whose_target_changes_is_seen(sandbox, ctx, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"status": "failed", "port": 1}))
    sandbox.server_dir.mkdir(parents=True, exist_ok=True)
    (sandbox.server_dir / f"{KEY}.json").symlink_to(target)
    assert rows(ctx)[KEY]["port"] == 1
    settle()
    target.write_text(json.dumps({"status": "failed", "port": 22}))  # no event in the folder
    assert rows(ctx)[KEY]["port"] == 22


def test_a_hard_linked_state_file_written_through_its_other_name_is_seen(sandbox, ctx, tmp_path):
    other = tmp_path / "other-name.json"
    other.write_text(json.dumps({"status": "failed", "port": 1}))
    sandbox.server_dir.mkdir(parents=True, exist_ok=True)
    os.link(other, sandbox.server_dir / f"{KEY}.json")
    assert rows(ctx)[KEY]["port"] == 1
    settle()
    with open(other, "r+b") as handle:  # the event goes to tmp_path's watchers, not ours
        handle.write(json.dumps({"status": "failed", "port": 2}).encode())
    assert rows(ctx)[KEY]["port"] == 2


def test_after_a_queue_overflow_everything_is_looked_at_again(sandbox, ctx):
    path = sandbox.write_state(KEY, {"status": "failed", "port": 1111})
    assert rows(ctx)[KEY]["port"] == 1111
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to overflow in a test")
    # the kernel merges an event identical to the last one queued: alternate two files
    with open(sandbox.server_dir / "a.log", "wb") as one, open(sandbox.server_dir / "b.log", "wb") as two:
        for _ in range(limit // 2 + 10):  # one IN_MODIFY per write: the queue overflows
            for handle in (one, two):
                handle.write(b"x")
                handle.flush()
    with open(path, "r+b") as handle:  # after the overflow: this event is dropped
        handle.write(json.dumps({"status": "failed", "port": 2222}).encode())
    folder_watch = watcher(ctx)._folders[0][1]._watch
    rescans = folder_watch.rescans
    assert rows(ctx)[KEY]["port"] == 2222
    assert folder_watch.rescans == rescans + 1


def test_a_dying_pid_is_seen_without_any_file_event(sandbox, ctx):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sandbox.write_state(KEY, {"status": "running", "pid": proc.pid, "port": 5})
        reply = call(ctx, "ps")
        assert reply["rows"][0]["status"] == "running"
        proc.kill()
        proc.wait()
        time.sleep(LivenessCache.TTL)  # the agent's liveness answers are this fresh
        after = call(ctx, "ps")
        assert after["rows"][0]["status"] == "stale"
        assert after["token"] != reply["token"]
    finally:
        proc.kill()


def test_unchanged_files_are_not_stat_ed_again(sandbox, ctx, monkeypatch):
    for i in range(5):
        sandbox.write_state(f"{KEY}{i}", {"status": "failed"})
    rows(ctx)
    stats: list[str] = []
    real_stat = os.stat

    def counting(path, *args, **kwargs):
        stats.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    rows(ctx)
    assert [p for p in stats if p.endswith(".json")] == []
    sandbox.write_state(f"{KEY}3", {"status": "stale"})
    assert rows(ctx)[f"{KEY}3"]["status"] == "stale"
    assert {p for p in stats if p.endswith(".json")} == {str(sandbox.server_dir / f"{KEY}3.json")}


def test_the_stat_fallback_is_said_and_still_right(sandbox, monkeypatch):
    monkeypatch.setenv("SEAMLESS_SERVICE_FSWATCH", "stat")
    context = AgentContext(base=sandbox.base)
    try:
        path = sandbox.write_state(KEY, {"status": "failed"})
        reply = call(context, "ps")
        assert reply["watch"] == "stat" and [r["key"] for r in reply["rows"]] == [KEY]
        assert call(context, "hello")["file_watch"] == "stat"
        path.unlink()
        assert call(context, "ps")["rows"] == []
    finally:
        context.close()


def test_a_real_agent_says_which_watch_ran_and_sees_a_rewrite(sandbox):
    proc, info = spawn_agent(sandbox.base)
    try:
        conn = AgentConnection.connect("127.0.0.1", info["port"], lifecycle.read_secret(sandbox.base))
        with conn:
            path = sandbox.write_state(KEY, {"status": "failed", "port": 1111})
            [hello, ps] = conn.batch([("hello", {}), ("ps", {})])
            assert hello["value"]["file_watch"] == "inotify" and ps["value"]["watch"] == "inotify"
            assert ps["value"]["rows"][0]["port"] == 1111
            with open(path, "r+b") as handle:
                handle.write(json.dumps({"status": "failed", "port": 2222}).encode())
            [ps] = conn.batch([("ps", {})])
            assert ps["value"]["rows"][0]["port"] == 2222
    finally:
        end_agent(proc)


def test_rows_kept_per_file_version_still_follow_the_pid_and_no_status(sandbox, ctx):
    """statefiles.ServerRows keeps each file's derived status per liveness answer and per
    no_status: one file version, asked both ways and across a death, answers each right."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sandbox.write_state(KEY, {"status": "running", "pid": proc.pid, "port": 5})
        assert [(r["status"], r["live"]) for r in call(ctx, "ps")["rows"]] == [("running", True)]
        assert [(r["status"], r["live"]) for r in call(ctx, "ps", no_status=True)["rows"]] == [("running", None)]
        proc.kill()
        proc.wait()
        time.sleep(LivenessCache.TTL)
        assert [(r["status"], r["live"]) for r in call(ctx, "ps")["rows"]] == [("stale", False)]
        assert [(r["status"], r["live"]) for r in call(ctx, "ps", no_status=True)["rows"]] == [("running", None)]
        # no pid at all: nothing is probed either way, and still the two answers differ
        sandbox.write_state(KEY, {"status": "running", "port": 5})
        assert [r["status"] for r in call(ctx, "ps")["rows"]] == ["stale"]
        assert [r["status"] for r in call(ctx, "ps", no_status=True)["rows"]] == ["running"]
    finally:
        proc.kill()


def test_unchanged_server_rows_are_kept_and_every_change_rebuilds_them(sandbox, ctx, monkeypatch):
    """ps keeps its server rows while no file had an event and every liveness answer and
    no_status are the same (agent/ops/ps.py _KeptRows); each of those changes rebuilds them."""
    built: list[str] = []
    real_row = statefiles.server_row
    monkeypatch.setattr(statefiles, "server_row", lambda path, **kw: built.append(path) or real_row(path, **kw))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = sandbox.write_state(KEY, {"status": "running", "pid": proc.pid, "port": 1})
        rows(ctx)
        assert len(built) == 1
        assert rows(ctx)[KEY]["status"] == "running" and len(built) == 1   # kept
        with open(path, "r+b") as handle:   # same size, same inode: only an event says so
            handle.write(json.dumps({"status": "running", "pid": proc.pid, "port": 2}).encode())
        assert rows(ctx)[KEY]["port"] == 2
        assert [r["live"] for r in call(ctx, "ps", no_status=True)["rows"]] == [None]
        assert [r["live"] for r in call(ctx, "ps")["rows"]] == [True]
        proc.kill()
        proc.wait()
        time.sleep(LivenessCache.TTL)
        assert rows(ctx)[KEY]["status"] == "stale"
        assert len(built) == 5   # every call after the kept one was a change: built again
    finally:
        proc.kill()


def test_state_folders_on_a_network_filesystem_are_stat_ed_every_poll(sandbox, monkeypatch):
    # e.g. a $HOME on NFS shared by login nodes: a state file written on another node sends
    # no event here, so the watch must not be trusted there (no filesystem counts as local)
    monkeypatch.setattr(fswatch, "LOCAL_FS", frozenset())
    context = AgentContext(base=sandbox.base)
    try:
        sandbox.write_state(KEY, {"status": "failed"})
        reply = call(context, "ps")
        assert reply["watch"] == "stat" and [r["status"] for r in reply["rows"]] == ["failed"]
        assert call(context, "hello")["file_watch"] == "stat"
    finally:
        context.close()
