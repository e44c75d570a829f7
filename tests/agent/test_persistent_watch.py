"""The persistent op's walk kept under inotify (agent/ops/persistent.py: WalkCache, _Tracker):
every kind of change to a walked tree shows on the very next call, with real folders,
real files and (last test) a real agent process.

Each test first makes sure the second call was answered from the kept walk (`hits`), then
changes one thing and compares the next answer with a walk made from scratch (a context
that keeps nothing). A missing invalidation (an event left out of the mask, the root's
inode or a symlink's target not re-checked, the mount table not compared, an argument
left out of the key) makes the kept walk answer and the test fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from seamless_service.agent import fswatch, lifecycle
from seamless_service.agent.context import AgentContext
from seamless_service.agent.ops.persistent import WalkCache
from seamless_service.agent.policy import parse_policy
from seamless_service.client.transport.agent_conn import AgentConnection
from tests.support.agent import call, end_agent, spawn_agent
from tests.support.trees import HS

pytestmark = pytest.mark.skipif(not fswatch.available(), reason="needs Linux inotify")

DB = "seamless.db"


@pytest.fixture
def tree(sandbox, tmp_path) -> Path:
    """data/buffers/proj{0,1,2} with the marker and a file each, proj3 without a marker."""
    root = tmp_path / "data" / "buffers"
    for i in range(3):
        (root / f"proj{i}" / "ab").mkdir(parents=True)
        (root / f"proj{i}" / HS).write_bytes(b"")
        (root / f"proj{i}" / "ab" / "buffer").write_bytes(b"x" * 10)
    (root / "proj3").mkdir()
    return root


@pytest.fixture
def contexts(sandbox):
    """(the agent's context, keeping walks; one that keeps nothing, for the truth)."""
    kept = AgentContext(base=sandbox.base, policy=parse_policy("permissive"))
    fresh = AgentContext(base=sandbox.base, policy=parse_policy("permissive"))
    fresh.shared("persistent_walks", WalkCache).enabled = False
    yield kept, fresh
    kept.close()
    fresh.close()


def ask(ctx: AgentContext, root: Path, **args) -> dict:
    args = {"paths": [str(root)], "level": 2, "marker": HS, "sizes": False, **args}
    return call(ctx, "persistent", **args)


def walks(ctx: AgentContext) -> WalkCache:
    return ctx.shared("persistent_walks", WalkCache)


def kept(contexts, root: Path, **args) -> list[dict]:
    """The rows, once the walk is kept: the second call must be answered from it."""
    ctx, _fresh = contexts
    first = ask(ctx, root, **args)
    assert first["watch"] == "inotify", walks(ctx).refused
    hits = walks(ctx).hits
    again = ask(ctx, root, **args)
    assert walks(ctx).hits == hits + 1 and again == first
    return first["rows"]


def check(contexts, root: Path, before: list[dict], **args) -> list[dict]:
    """The next answer is the truth, and the change made a difference."""
    ctx, fresh = contexts
    now = ask(ctx, root, **args)
    truth = ask(fresh, root, **args)
    assert truth["watch"] == "stat"
    assert now["rows"] == truth["rows"]
    assert now["rows"] != before
    assert now["watch"] == "inotify"
    return now["rows"]


def paths(rows: list[dict]) -> set[str]:
    return {row["path"] for row in rows}


def test_a_created_project_folder_shows(contexts, tree):
    before = kept(contexts, tree)
    (tree / "proj9").mkdir()
    (tree / "proj9" / HS).write_bytes(b"")
    assert str(tree / "proj9") in paths(check(contexts, tree, before))


def test_a_removed_project_folder_goes(contexts, tree):
    before = kept(contexts, tree)
    shutil.rmtree(tree / "proj1")
    assert str(tree / "proj1") not in paths(check(contexts, tree, before))


def test_a_renamed_project_folder_moves(contexts, tree):
    before = kept(contexts, tree)
    (tree / "proj1").rename(tree / "proj7")
    rows = check(contexts, tree, before)
    assert str(tree / "proj7") in paths(rows) and str(tree / "proj1") not in paths(rows)


def test_a_marker_renamed_away_and_back_shows(contexts, tree):
    before = kept(contexts, tree)
    (tree / "proj0" / HS).rename(tree / "proj0" / "was-a-marker")   # an entry moved, no folder
    rows = check(contexts, tree, before)
    assert str(tree / "proj0") not in paths(rows)
    (tree / "proj0" / "was-a-marker").rename(tree / "proj0" / HS)
    assert str(tree / "proj0") in paths(check(contexts, tree, rows))


def test_a_marker_created_and_removed_deep_down_shows(contexts, tree):
    before = kept(contexts, tree)
    (tree / "proj3" / HS).write_bytes(b"")   # proj3 now holds the marker: a row
    rows = check(contexts, tree, before)
    assert str(tree / "proj3") in paths(rows)
    (tree / "proj0" / "ab" / HS).write_bytes(b"")   # level 0: a row there too
    rows = check(contexts, tree, rows)
    (tree / "proj0" / "ab" / HS).unlink()
    check(contexts, tree, rows)


def test_a_first_entry_in_a_deepest_folder_makes_it_populated(contexts, tree):
    (tree / "proj2" / "ab" / "buffer").unlink()
    (tree / "proj2" / "ab" / HS).write_bytes(b"")
    before = kept(contexts, tree)
    assert {r["path"]: r["state"] for r in before}[str(tree / "proj2" / "ab")] == "empty"
    (tree / "proj2" / "ab" / "buffer").write_bytes(b"y")
    rows = check(contexts, tree, before)
    assert {r["path"]: r["state"] for r in rows}[str(tree / "proj2" / "ab")] == "populated"


def test_a_folder_touched_shows_its_new_time(contexts, tree):
    before = kept(contexts, tree)
    os.utime(tree / "proj0", (1_000_000_000, 1_000_000_000))   # only the folder's own attributes
    rows = check(contexts, tree, before)
    assert {r["path"]: r["modified"] for r in rows}[str(tree / "proj0")].startswith("2001-")


def test_a_database_file_written_in_place_shows_its_size(contexts, tree):
    db = tree / "proj0" / DB
    db.write_bytes(b"x" * 100)
    before = kept(contexts, tree, file=DB, marker=DB, level=1)
    with open(db, "r+b") as handle:   # same inode, grows in place
        handle.seek(0, 2)
        handle.write(b"y" * 50)
    rows = check(contexts, tree, before, file=DB, marker=DB, level=1)
    assert {r["path"]: r["size"] for r in rows}[str(tree / "proj0")] == 150


def test_a_hard_linked_database_written_through_its_other_name_shows(contexts, tree, tmp_path):
    other = tmp_path / "elsewhere.db"
    other.write_bytes(b"x" * 100)
    os.link(other, tree / "proj0" / DB)
    before = kept(contexts, tree, file=DB, marker=DB, level=1)
    with open(other, "ab") as handle:   # the event goes to tmp_path's watchers, not ours
        handle.write(b"y" * 50)
    check(contexts, tree, before, file=DB, marker=DB, level=1)


def test_a_symlinked_marker_whose_target_goes_is_seen(contexts, tree, tmp_path):
    target = tmp_path / "marker-target"
    target.write_bytes(b"")
    (tree / "proj3" / HS).symlink_to(target)
    before = kept(contexts, tree)
    assert str(tree / "proj3") in paths(before)
    target.unlink()   # no event in proj3: the link is still there, dangling now
    assert str(tree / "proj3") not in paths(check(contexts, tree, before))


def test_a_symlinked_project_whose_target_is_replaced_is_seen(contexts, tree, tmp_path):
    (tmp_path / "scratch" / "target" / "cd").mkdir(parents=True)
    (tmp_path / "scratch" / "target" / "cd" / HS).write_bytes(b"")
    (tree / "projL").symlink_to(tmp_path / "scratch" / "target")
    before = kept(contexts, tree)
    # the link and its target path stay the same; what is there is another folder now
    (tmp_path / "scratch").rename(tmp_path / "scratch.old")
    (tmp_path / "scratch" / "target" / "ef").mkdir(parents=True)
    (tmp_path / "scratch" / "target" / "ef" / HS).write_bytes(b"")
    rows = check(contexts, tree, before)
    assert str(tree / "projL" / "ef") in paths(rows) and str(tree / "projL" / "cd") not in paths(rows)


def test_the_root_replaced_through_its_parent_is_seen(contexts, tree):
    before = kept(contexts, tree)
    # renaming a parent of the root sends the root's own watch no event
    data = tree.parent
    data.rename(data.with_name("data.old"))
    (tree / "projN").mkdir(parents=True)
    (tree / "projN" / HS).write_bytes(b"")
    assert paths(check(contexts, tree, before)) == {str(tree / "projN")}


def test_a_mount_over_a_walked_folder_is_seen(contexts, tree, tmp_path):
    other = tmp_path / "mounted"
    (other / "gh").mkdir(parents=True)
    (other / "gh" / HS).write_bytes(b"")
    before = kept(contexts, tree)
    if subprocess.run(["mount", "--bind", str(other), str(tree / "proj1")], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        rows = check(contexts, tree, before)
        assert str(tree / "proj1" / "gh") in paths(rows)
    finally:
        subprocess.run(["umount", str(tree / "proj1")], check=True)


def test_each_question_gets_its_own_answer(contexts, tree):
    """Level, marker, file and the roots are part of what a kept walk answers."""
    ctx, fresh = contexts
    (tree / "proj0" / "ab" / HS).write_bytes(b"")   # so that level 2 differs from level 1
    questions = [{}, {"level": 1}, {"level": 0}, {"marker": None}, {"file": "buffer"},
                 {"paths": [str(tree / "proj0")]}, {"paths": [str(tree / "proj0"), str(tree)]}]
    answers = []
    for _ in range(2):   # the second round is answered from the kept walks
        answers = [ask(ctx, tree, **q) for q in questions]
        assert [a["rows"] for a in answers] == [ask(fresh, tree, **q)["rows"] for q in questions]
    assert len({repr(a["rows"]) for a in answers}) == len(questions), [len(a["rows"]) for a in answers]
    assert walks(ctx).hits >= len(questions)


def test_sizes_are_not_kept_with_the_walk(contexts, tree):
    ctx, _fresh = contexts
    ask(ctx, tree, sizes=True, marker=None)
    ctx.extras["sizer"].wait_idle(30)
    first = {r["path"]: r["bytes"] for r in ask(ctx, tree, sizes=True, marker=None)["rows"]}
    assert first[str(tree / "proj0" / "ab")] == 10
    (tree / "proj0" / "ab" / "buffer").write_bytes(b"x" * 1000)   # an event: walked again anyway
    with open(tree / "proj0" / "ab" / "buffer", "ab"):
        pass
    ask(ctx, tree, sizes=True, refresh=True, marker=None)
    ctx.extras["sizer"].wait_idle(30)
    after = ask(ctx, tree, sizes=True, marker=None)
    assert walks(ctx).hits >= 1 and after["watch"] == "inotify"
    assert {r["path"]: r["bytes"] for r in after["rows"]}[str(tree / "proj0" / "ab")] == 1000


def test_off_a_local_filesystem_nothing_is_kept(contexts, tree, monkeypatch):
    # on NFS, Lustre, GPFS, ... another machine's change sends no event here
    monkeypatch.setattr(fswatch, "LOCAL_FS", frozenset())
    ctx, _fresh = contexts
    first = ask(ctx, tree)
    assert first["watch"] == "stat" and "filesystem" in walks(ctx).refused
    (tree / "proj1").rename(tree / "proj8")
    assert str(tree / "proj8") in paths(ask(ctx, tree)["rows"])
    assert walks(ctx).hits == 0


def test_an_absent_root_is_not_kept(contexts, tree):
    ctx, _fresh = contexts
    missing = tree / "later"
    assert ask(ctx, missing)["watch"] == "stat"
    missing.mkdir()   # its parent is not watched: no event would say so
    (missing / HS).write_bytes(b"")
    assert [r["state"] for r in ask(ctx, missing)["rows"]] == ["empty"]


def test_the_stat_fallback_is_said(sandbox, tree, monkeypatch):
    monkeypatch.setenv("SEAMLESS_SERVICE_FSWATCH", "stat")
    ctx = AgentContext(base=sandbox.base, policy=parse_policy("permissive"))
    try:
        assert ask(ctx, tree)["watch"] == "stat"
        (tree / "proj1").rename(tree / "proj8")
        reply = ask(ctx, tree)
        assert reply["watch"] == "stat" and str(tree / "proj8") in paths(reply["rows"])
    finally:
        ctx.close()


def test_fs_types_reads_the_mount_table():
    table = (b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
             b"60 27 0:52 / /home rw shared:5 - nfs4 server:/home rw,vers=4.2\n"
             b"garbage\n")
    assert fswatch.fs_types(table) == {os.makedev(254, 0): "ext4", os.makedev(0, 52): "nfs4"}


def test_a_real_agent_keeps_the_walk_and_sees_a_new_folder(sandbox, tree):
    proc, info = spawn_agent(sandbox.base, "--path-policy", "permissive")
    try:
        conn = AgentConnection.connect("127.0.0.1", info["port"], lifecycle.read_secret(sandbox.base))
        op = ("persistent", {"paths": [str(tree)], "level": 2, "marker": HS, "sizes": False})
        with conn:
            first, second = conn.batch([op, op])
            assert first["value"]["watch"] == second["value"]["watch"] == "inotify"
            assert first["value"]["rows"] == second["value"]["rows"]
            (tree / "proj5").mkdir()
            (tree / "proj5" / HS).write_bytes(b"")
            [third] = conn.batch([op])
            assert str(tree / "proj5") in paths(third["value"]["rows"])
    finally:
        end_agent(proc)
