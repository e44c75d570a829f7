"""The clear op: rhl-clear's deletion under the agent's policy, through descriptors (see
test_clear_race.py for the attack), keeping sentinels, no spurious failure, no clearing under a
running service."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from seamless_service.agent.context import AgentContext
from seamless_service.agent.ops import clear as clear_op
from seamless_service.agent.ops import handler
from seamless_service.agent.policy import parse_policy
from seamless_service.protocol import ErrorCode, ProtocolError, validate_args
from tests.support.other_user import OTHER_UID, as_user, needs_root
from tests.support.trees import HS, put_file, tree

@pytest.fixture(scope="module", autouse=True)
def _in_empty_cwd(empty_cwd):
    """A clear that lost its descriptor empties the current folder: let it be an empty one."""


def hashserver_dir(path: Path) -> Path:
    """A hashserver buffer dir: marker, prefix dirs, a stage, a symlink, a dot dir, a/b/.keep."""
    put_file(path / HS, b"")
    put_file(path / "ab" / ("ab" + "0" * 62), b"1" * 100)
    put_file(path / "cd" / ("cd" + "1" * 62), b"2" * 200)
    put_file(path / "STAGE-s1" / HS, b"")
    put_file(path / "STAGE-s1" / "ef" / ("ef" + "2" * 62), b"3" * 50)
    put_file(path / "STAGE-s1" / "gh" / ("gh" + "3" * 62), b"4" * 60)
    put_file(path / "deep" / "x" / "y" / "z" / "f", b"5")
    put_file(path / ".dotfile", b"dot")                      # top-level dot file: rhl-clear removes it
    put_file(path / ".keepme" / "inside", b"kept")           # top-level dot dir: skipped
    put_file(path / "a" / "b" / ".keep" / "x", b"nested")    # #22: a dot dir two levels down
    put_file(path / "a" / "b" / "c" / ".keep" / "y", b"nested")
    put_file(path / "a" / "z.bin", b"6")                     # removable, beside the dot chains
    (path / "link").symlink_to(path / "ab")
    return path


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


def clear(ctx: AgentContext, **args) -> dict:
    return handler("clear")(ctx, validate_args("clear", args))


def test_clear_hashserver_dir_keeps_marker_and_succeeds(sandbox, data, make_ctx):
    ctx = make_ctx("seamless")
    proj = hashserver_dir(data / "buffers" / "proj")
    marker_inode = os.stat(proj / HS).st_ino
    result = clear(ctx, path=str(proj))
    assert result["ok"] is True and result["exit_status"] == 0 == result["helper_exit_status"]
    assert result["stderr"] == ""                     # no spurious "Directory not empty" (#22)
    assert result["preserved"] == [HS]
    assert result["path"] == str(proj.resolve())
    # every entry removed, at any depth: ab + 1 file, cd + 1 file, STAGE-s1 + its marker,
    # 2 prefix dirs and 2 files, deep/x/y/z/f (5), .dotfile, link, a/z.bin; a, a/b and
    # a/b/c stay (they hold dot directories). rhl-clear's final run counts 6 top-level ones.
    assert result["removed"] == 18 and result["helper_removed"] == 6
    assert result["stdout"].strip() == f"removed 18 item(s) from {proj.resolve()}"
    assert "No such file" not in result["stderr"]
    assert tree(proj) == {HS, ".keepme", ".keepme/inside", "a", "a/b", "a/b/.keep", "a/b/.keep/x",
                          "a/b/c", "a/b/c/.keep", "a/b/c/.keep/y"}
    assert os.stat(proj / HS).st_ino == marker_inode   # the same file, not a re-creation
    # the directory still passes the marker policy: a second clear is accepted (#21)
    again = clear(ctx, path=str(proj))
    assert again["ok"] and again["removed"] == 0 and (proj / HS).is_file()


def test_count_includes_nested_removals(sandbox, data, make_ctx):
    """Issue 8 item 5: files deleted inside a directory that itself stays (it holds a dot
    directory) were not counted: `removed 0 item(s)` after deleting them."""
    ctx = make_ctx("seamless")
    proj = data / "buffers" / "nested"
    put_file(proj / HS, b"")
    put_file(proj / "a" / "b" / ".keep" / "x", b"kept")
    put_file(proj / "a" / "f1", b"1")
    put_file(proj / "a" / "b" / "f2", b"2")
    put_file(proj / "a" / "c" / "d" / "f3", b"3")
    result = clear(ctx, path=str(proj))
    assert tree(proj) == {HS, "a", "a/b", "a/b/.keep", "a/b/.keep/x"}
    # f1, f2, f3, c, c/d were deleted; the helper's own final count is 0
    assert result["ok"] and result["helper_removed"] == 0
    assert result["removed"] == 5
    assert result["stdout"].strip() == f"removed 5 item(s) from {proj.resolve()}"


def rhl_clear_twin(path: Path) -> Path:
    """A tree on which rhl-clear has none of its defects (no directory two levels down,
    no marker): files, a top-level dot file and dot directory, a directory of files, one
    holding only a dot directory, symlinks (to a directory, dangling) and a FIFO."""
    put_file(path / "f.bin", b"1")
    put_file(path / ".dotfile", b"d")
    put_file(path / ".dotdir" / "inside", b"k")
    put_file(path / "flat" / "x", b"x")
    put_file(path / "flat" / "y", b"y")
    put_file(path / "only-dots" / ".cache" / "z", b"z")
    (path / "link-to-dir").symlink_to("flat")
    (path / "dangling").symlink_to("nowhere")
    os.mkfifo(path / "fifo")
    return path


def test_removes_and_counts_what_rhl_clear_removes(sandbox, data, make_ctx):
    """The deletion is the agent's own now (descriptors, not paths): on the same tree it
    leaves what rhl-clear leaves and counts top-level entries as rhl-clear does."""
    theirs_dir, ours_dir = rhl_clear_twin(data / "theirs"), rhl_clear_twin(data / "ours")
    theirs = sandbox.run_helper("rhl-clear", str(theirs_dir))
    assert theirs.returncode == 0, theirs.stderr
    ours = clear(make_ctx("permissive"), path=str(ours_dir))
    assert tree(ours_dir) == tree(theirs_dir) == {".dotdir", ".dotdir/inside", "only-dots", "only-dots/.cache",
                                                  "only-dots/.cache/z"}
    helper_count = int(re.fullmatch(rf"removed (\d+) item\(s\) from {re.escape(str(theirs_dir))}\n",
                                    theirs.stdout).group(1))
    assert helper_count == 6 == ours["helper_removed"]        # f.bin .dotfile flat link dangling fifo
    assert ours["removed"] == 8                               # ... and flat/x, flat/y
    assert ours["stdout"] == f"removed 8 item(s) from {ours_dir}\n"
    assert (ours["ok"], ours["exit_status"], ours["stderr"]) == (True, 0, "")


def test_plain_rhl_clear_loses_the_marker(sandbox, data):
    """The defects the op fixes, shown on the installed helper itself."""
    proj = hashserver_dir(data / "twin")
    result = sandbox.run_helper("rhl-clear", str(proj))
    assert result.returncode == 1 and "Directory not empty" in result.stderr   # #22
    assert not (proj / HS).exists()                                             # #21
    # a child holding subdirectories is abandoned after its first one (ENOENT)
    assert f"could not remove {proj / 'STAGE-s1'}: [Errno 2]" in result.stderr
    assert len({"ef", "gh"} & set(os.listdir(proj / "STAGE-s1"))) == 1


def test_too_deep_is_said_and_the_rest_cleared(sandbox, data, make_ctx, monkeypatch):
    monkeypatch.setattr(clear_op, "MAX_DEPTH", 3)
    d = data / "deep"
    put_file(d / "a" / "b" / "c" / "d" / "f")
    put_file(d / "a" / "b" / "c" / "g")
    put_file(d / "top.txt")
    result = clear(make_ctx("permissive"), path=str(d))
    assert result["stderr"] == f"seamless-service: could not remove {d}/a/b/c/d: more than 3 levels down\n"
    assert (result["ok"], result["exit_status"], result["removed"]) == (False, 1, 2)
    assert tree(d) == {"a", "a/b", "a/b/c", "a/b/c/d", "a/b/c/d/f"}


def test_database_dir_loses_seamless_db(sandbox, data, make_ctx):
    """seamless.db is the data: cleared, so the directory is no marker directory any more."""
    ctx = make_ctx("seamless")
    db = data / "db" / "proj"
    put_file(db / "seamless.db", b"d" * 4096)
    put_file(db / "seamless.db-wal", b"w" * 10)
    result = clear(ctx, path=str(db))
    assert result["ok"] and result["preserved"] == [] and result["removed"] == 2
    assert tree(db) == set()
    with pytest.raises(ProtocolError) as info:
        clear(ctx, path=str(db))
    assert info.value.code == ErrorCode.POLICY_REFUSED


def test_custom_marker_is_kept(sandbox, data, make_ctx):
    ctx = make_ctx("marker:.rhl-clearable")
    d = data / "custom"
    put_file(d / ".rhl-clearable", b"")
    put_file(d / HS, b"")
    put_file(d / "payload" / "f")
    result = clear(ctx, path=str(d))
    assert result["ok"] and sorted(result["preserved"]) == sorted([HS, ".rhl-clearable"])
    assert tree(d) == {HS, ".rhl-clearable"}


def test_outside_policy_is_refused_and_intact(sandbox, data, make_ctx, tmp_path):
    plain = data / "plain"
    put_file(plain / "keep-me", b"precious")
    before = tree(plain)
    for spec, path, why in (
        ("seamless", plain, "required marker file"),
        ("seamless", plain / ".." / "plain", "dot-prefixed"),
        ("permissive", Path("/etc"), "system-root"),
        ("permissive", Path(os.environ["HOME"]), "$HOME"),
    ):
        with pytest.raises(ProtocolError) as info:
            clear(make_ctx(spec), path=str(path))
        assert info.value.code == ErrorCode.POLICY_REFUSED and why in info.value.message, spec
    roots = tmp_path / "roots"
    roots.write_text(str(data / "allowed") + "\n")
    with pytest.raises(ProtocolError) as info:
        clear(make_ctx(f"data-roots:{roots}"), path=str(plain))
    assert "outside configured --data-roots" in info.value.message
    assert tree(plain) == before and (plain / "keep-me").read_bytes() == b"precious"


def test_symlink_into_a_marked_dir_clears_the_target(sandbox, data, make_ctx):
    ctx = make_ctx("seamless")
    proj = hashserver_dir(data / "buffers" / "proj")
    link = data / "link-to-proj"
    link.symlink_to(proj)
    result = clear(ctx, path=str(link))
    assert result["ok"] and result["path"] == str(proj.resolve())
    assert link.is_symlink() and (proj / HS).is_file() and not (proj / "ab").exists()


def test_missing_and_non_directories(sandbox, data, make_ctx):
    ctx = make_ctx("permissive")
    with pytest.raises(ProtocolError) as info:
        clear(ctx, path=str(data / "missing"))
    assert info.value.code == ErrorCode.NOT_FOUND
    put_file(data / "file")
    with pytest.raises(ProtocolError) as info:
        clear(ctx, path=str(data / "file"))
    assert info.value.code == ErrorCode.BAD_ARGS and "not a directory" in info.value.message


def test_running_service_blocks_clear(sandbox, data, make_ctx):
    ctx = make_ctx("seamless")
    proj = hashserver_dir(data / "buffers" / "proj")
    stage = proj / "STAGE-s1"
    key = "hashserver-test-rw-proj--STAGE-s1"
    state = sandbox.launch(key, workdir=stage)
    assert state["status"] == "running"
    before_stage, before_proj = tree(stage), tree(proj)

    with pytest.raises(ProtocolError) as info:          # named service (#23)
        clear(ctx, path=str(stage), key=key)
    assert info.value.code == ErrorCode.CONFLICT
    assert info.value.message == f"service {key} is running; stop it first"
    with pytest.raises(ProtocolError) as info:          # any service working in it
        clear(ctx, path=str(stage))
    assert info.value.code == ErrorCode.CONFLICT and key in info.value.message
    with pytest.raises(ProtocolError) as info:          # a project-level clear wipes its stages
        clear(ctx, path=str(proj))
    assert info.value.code == ErrorCode.CONFLICT and key in info.value.message
    assert tree(stage) == before_stage and tree(proj) == before_proj

    # a stopped service no longer blocks
    stopped = sandbox.run_helper("rhl-stop", key)
    assert stopped.returncode == 0, stopped.stderr
    result = clear(ctx, path=str(stage), key=key)
    assert result["ok"] and tree(stage) == {HS}


def test_force_clears_under_a_running_service(sandbox, data, make_ctx):
    ctx = make_ctx("seamless")
    proj = hashserver_dir(data / "buffers" / "forced")
    key = "hashserver-test-rw-forced"
    assert sandbox.launch(key, workdir=proj)["status"] == "running"
    result = clear(ctx, path=str(proj), key=key, force=True)
    assert result["ok"] and (proj / HS).is_file() and not (proj / "ab").exists()


def test_stranded_markers_are_put_back(sandbox, data, make_ctx):
    """An agent that died mid-clear left the marker in its keep folder."""
    ctx = make_ctx("permissive")
    d = data / "stranded"
    put_file(d / f"{clear_op.KEEP_PREFIX}dead" / HS, b"prefix")
    put_file(d / "junk")
    result = clear(ctx, path=str(d))
    assert result["ok"] and result["preserved"] == [HS]
    assert tree(d) == {HS} and (d / HS).read_bytes() == b"prefix"


def test_a_failure_is_said_and_the_rest_cleared(tmp_path):
    """A file the clearing user may not remove: one line saying so, exit status 1, the
    rest removed. Run as another uid (root may remove anything)."""
    needs_root()
    root = Path(tempfile.mkdtemp(prefix="ssclr-", dir="/tmp"))
    try:
        os.chmod(root, 0o711)
        d = root / "data"
        put_file(d / "mine.txt")
        put_file(d / "sub" / "mine-too")
        put_file(d / "locked" / "f")
        for path in (d, d / "mine.txt", d / "sub", d / "sub" / "mine-too"):
            os.chown(path, OTHER_UID, OTHER_UID)
        ctx = AgentContext(base=root / "rhl", policy=parse_policy("permissive"))

        def as_them() -> dict:
            return clear_op.run(ctx, validate_args("clear", {"path": str(d), "force": True}))

        result = as_user(OTHER_UID, OTHER_UID, as_them)
        assert result["stderr"] == f"seamless-service: could not remove {d}/locked/f: [Errno 13] Permission denied\n"
        assert (result["ok"], result["exit_status"], result["removed"], result["helper_removed"]) == (False, 1, 3, 2)
        assert tree(d) == {"locked", "locked/f"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_starting_service_with_a_live_pid_blocks_clear(sandbox, data, make_ctx, live_pid):
    """A service still starting (its state file says "starting", its pid lives) owns its
    workdir as much as a running one: wiping it would pull the data from under it."""
    ctx = make_ctx("seamless")
    proj = hashserver_dir(data / "buffers" / "booting")
    stage = proj / "STAGE-s1"
    key = "hashserver-test-rw-booting--STAGE-s1"
    sandbox.write_state(key, {"status": "starting", "pid": live_pid, "workdir": str(stage)})
    before = tree(proj)
    for args, message in (
        ({"path": str(stage), "key": key}, f"service {key} is running; stop it first"),
        ({"path": str(stage)}, f"service {key} is running in {stage}; stop it first"),
        ({"path": str(proj)}, f"service {key} is running in {stage}; stop it first"),
    ):
        with pytest.raises(ProtocolError) as info:
            clear(ctx, **args)
        assert (info.value.code, info.value.message) == (ErrorCode.CONFLICT, message)
    assert tree(proj) == before


def test_a_service_that_died_starting_does_not_block_clear(sandbox, data, make_ctx):
    ctx = make_ctx("seamless")
    proj = hashserver_dir(data / "buffers" / "died")
    key = "hashserver-test-rw-died"
    dead = subprocess.Popen(["true"])
    dead.wait()
    sandbox.write_state(key, {"status": "starting", "pid": dead.pid, "workdir": str(proj)})
    assert clear(ctx, path=str(proj), key=key)["ok"]
    assert (proj / HS).is_file() and not (proj / "ab").exists() and not (proj / "STAGE-s1").exists()
