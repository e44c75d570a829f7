"""The `clear` op beside hand-written service states whose pids are real (a `sleep` child
leading its own process group for a live service, an unreaped zombie for a dead one), and
the directory trees a user clears: what is refused, what is left on disk, what the reply says.

No service is launched: with test_op_clear.py's quick tests this is the clear op's
mutation-test selection (tools/mutate.py). Like them it runs in an empty folder of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from seamless_service.agent.context import AgentContext
from seamless_service.agent.ops import clear as clear_op
from seamless_service.agent.policy import parse_policy
from seamless_service.protocol import ErrorCode, ProtocolError
from tests.support.agent import call
from tests.support.other_user import OTHER_UID, as_user, needs_root
from tests.support.persistent import persistent
from tests.support.trees import HS, put_file, tree


@pytest.fixture(scope="module", autouse=True)
def _in_empty_cwd(empty_cwd):
    """A clear that lost its descriptor empties the current folder: let it be an empty one."""


@pytest.fixture
def buffers(tmp_path) -> Path:
    """A hashserver buffer folder with a stage: marker, prefix dirs and buffers in each."""
    proj = tmp_path / "data" / "buffers" / "proj"
    for where in (proj, proj / "STAGE-s1"):
        put_file(where / HS, b"")
        put_file(where / "ab" / ("ab" + "0" * 62), b"1" * 10)
    return proj


def refused(ctx, code: str, **args) -> str:
    with pytest.raises(ProtocolError) as info:
        call(ctx, "clear", **args)
    assert info.value.code == code, info.value.message
    return info.value.message


KEY = "hashserver-c1-rw-proj--STAGE-s1"


@pytest.mark.parametrize("status", ["running", "starting"])
def test_a_live_service_blocks_a_clear_of_its_workdir_and_above(sandbox, sleeper, make_ctx, buffers, status):
    stage = buffers / "STAGE-s1"
    sandbox.write_state(KEY, {"status": status, "pid": sleeper().pid, "workdir": str(stage)})
    ctx = make_ctx()
    before = tree(buffers)
    assert refused(ctx, ErrorCode.CONFLICT, path=str(stage), key=KEY) == f"service {KEY} is running; stop it first"
    assert refused(ctx, ErrorCode.CONFLICT, path=str(stage)) == f"service {KEY} is running in {stage}; stop it first"
    assert refused(ctx, ErrorCode.CONFLICT, path=str(buffers)) == f"service {KEY} is running in {stage}; stop it first"
    assert tree(buffers) == before


def test_force_clears_under_a_live_service(sandbox, sleeper, make_ctx, buffers):
    sandbox.write_state(KEY, {"status": "running", "pid": sleeper().pid, "workdir": str(buffers)})
    result = call(make_ctx(), "clear", path=str(buffers), key=KEY, force=True)
    assert result["ok"] and result["removed"] == 6 and tree(buffers) == {HS}


@pytest.mark.parametrize("state", [
    {"status": "stale"}, {"status": "failed"}, {"status": "running", "dead": True},
    {"status": "starting", "dead": True}, {"status": "running", "workdir": "sibling"},
    {"status": "running", "workdir": "inside-sibling"}, {"status": "running", "workdir": ""},
    {"status": "running", "workdir": 7},
])
def test_services_that_do_not_block(sandbox, sleeper, zombie, make_ctx, buffers, state):
    """Not running, dead, or working elsewhere (a sibling whose name starts the same is
    elsewhere): the clear goes ahead, markers kept."""
    workdir: object = str(buffers)
    if state.get("workdir") == "sibling":
        workdir = str(buffers) + "2"
    elif state.get("workdir") == "inside-sibling":
        workdir = str(buffers.parent / "proj2" / "STAGE-s1")
    elif "workdir" in state:
        workdir = state["workdir"]
    pid = zombie() if state.get("dead") or state["status"] not in ("running", "starting") else sleeper().pid
    other = "hashserver-c1-rw-proj"
    sandbox.write_state(other, {"status": state["status"], "pid": pid, "workdir": workdir})
    # the key named too, unless it lives (then it blocks whatever its workdir: see above)
    named = {"key": other} if "workdir" not in state else {}
    result = call(make_ctx(), "clear", path=str(buffers), **named)
    assert result["ok"] and tree(buffers) == {HS}


def test_a_workdir_reached_through_a_symlink_still_blocks(sandbox, sleeper, make_ctx, buffers, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(buffers)
    sandbox.write_state(KEY, {"status": "running", "pid": sleeper().pid, "workdir": str(link / "STAGE-s1")})
    assert KEY in refused(make_ctx(), ErrorCode.CONFLICT, path=str(buffers))


def test_a_workdir_under_home_written_with_a_tilde_blocks(sandbox, sleeper, make_ctx, tmp_path):
    home = Path(os.environ["HOME"])     # the sandbox's HOME
    data = home / "data" / "buffers" / "p"
    put_file(data / HS, b"")
    put_file(data / "f")
    sandbox.write_state(KEY, {"status": "running", "pid": sleeper().pid, "workdir": "~/data/buffers/p"})
    assert KEY in refused(make_ctx("permissive"), ErrorCode.CONFLICT, path=str(data))
    assert tree(data) == {HS, "f"}


def test_a_workdir_not_made_yet_blocks_and_one_that_cannot_be_resolved_does_not(sandbox, sleeper, make_ctx,
                                                                                buffers):
    """A live service whose workdir inside the directory does not exist (yet) still owns
    it; a workdir that cannot be resolved (a symlink loop) names no directory at all."""
    key = "hashserver-c1-rw-proj--STAGE-new"
    path = sandbox.write_state(key, {"status": "running", "pid": sleeper().pid, "workdir": str(buffers / "STAGE-new")})
    assert key in refused(make_ctx(), ErrorCode.CONFLICT, path=str(buffers))
    (buffers / "loop").symlink_to("loop")
    path.write_text(path.read_text().replace("STAGE-new", "loop/x"))
    assert call(make_ctx(), "clear", path=str(buffers))["ok"] and tree(buffers) == {HS}


# -- what is said when the path is not what was checked ----------------------------------

def test_open_directory_says_which_component_changed(tmp_path):
    real = tmp_path / "real" / "data"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    put_file(tmp_path / "file")
    for path, where, what, code in (
        (tmp_path / "link" / "data", tmp_path / "link", "is now a symlink", ErrorCode.POLICY_REFUSED),
        (tmp_path / "file" / "data", tmp_path / "file", "is now not a directory", ErrorCode.POLICY_REFUSED),
    ):
        with pytest.raises(ProtocolError) as info:
            os.close(clear_op.open_directory(path))
        assert (info.value.code, info.value.message) == (
            code, f"{path} changed after it was checked: {where} {what}; nothing was cleared")
    missing = tmp_path / "gone" / "data"
    with pytest.raises(ProtocolError) as info:
        clear_op.open_directory(missing)
    assert (info.value.code, info.value.message) == (ErrorCode.NOT_FOUND, f"path does not exist: {missing}")
    for path in (Path("relative/data"), Path("/")):
        with pytest.raises(ProtocolError) as info:
            clear_op.open_directory(path)
        assert (info.value.code, info.value.message) == (ErrorCode.POLICY_REFUSED, f"refusing to clear {path}")


def test_check_opened_names_the_markers_it_wanted(tmp_path, make_ctx):
    ctx = make_ctx("seamless")
    data = tmp_path / "plain"
    data.mkdir()
    fd = clear_op.open_directory(data)
    try:
        with pytest.raises(ProtocolError) as info:
            clear_op.check_opened(ctx.policy, fd, data)
    finally:
        os.close(fd)
    assert (info.value.code, info.value.message) == (
        ErrorCode.POLICY_REFUSED, f"{data} changed after it was checked: it holds no marker file "
                                  f"(seamless.db, .HASHSERVER_PREFIX) any more; nothing was cleared")


def test_a_missing_path_is_named(sandbox, make_ctx, tmp_path):
    missing = tmp_path / "data" / "missing"
    assert refused(make_ctx("permissive"), ErrorCode.NOT_FOUND, path=str(missing)) == f"path does not exist: {missing}"


# -- what cannot be removed (immutable entries: even root may not remove them) -------------

@pytest.fixture
def immutable():
    """chattr +i on paths (their removal fails with EPERM, for root too), undone afterwards."""
    made: list[Path] = []

    def make(*paths: Path) -> None:
        for path in paths:
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"chattr +i not supported here: {done.stderr.strip()}")
            made.append(path)

    yield make
    for path in reversed(made):
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_what_cannot_be_removed_is_said_and_the_rest_cleared(sandbox, make_ctx, tmp_path, immutable):
    d = tmp_path / "data" / "frozen"
    put_file(d / "locked")                 # a file that cannot be unlinked
    put_file(d / "sub" / "also-locked")    # ... below: its directory stays
    put_file(d / "sub" / "free")
    put_file(d / "still" / "inside")       # a directory whose entries cannot be removed
    (d / "empty-but-frozen").mkdir()       # a directory that cannot be removed
    put_file(d / "f1")
    (d / ".dotlink").symlink_to(d / "sub")  # a dot link (not a dot directory): removed as rhl-clear does
    immutable(d / "locked", d / "sub" / "also-locked", d / "still", d / "empty-but-frozen")
    result = call(make_ctx("permissive"), "clear", path=str(d))
    eperm = "[Errno 1] Operation not permitted"
    assert sorted(result["stderr"].splitlines()) == sorted(
        f"seamless-service: could not remove {p}: {eperm}"
        for p in (d / "empty-but-frozen", d / "locked", d / "still" / "inside", d / "sub" / "also-locked"))
    assert result["stderr"].endswith("\n") and result["stderr"].count("\n") == 4
    assert (result["ok"], result["exit_status"], result["helper_exit_status"]) == (False, 1, 1)
    assert (result["removed"], result["helper_removed"]) == (3, 2)   # sub/free, f1, .dotlink
    assert result["stdout"] == f"removed 3 item(s) from {d}\n"
    assert tree(d) == {"locked", "sub", "sub/also-locked", "still", "still/inside", "empty-but-frozen"}


def test_a_directory_where_no_keep_folder_can_be_made_is_not_cleared(sandbox, make_ctx, tmp_path, immutable):
    d = tmp_path / "data" / "buffers" / "p"
    put_file(d / HS, b"")
    put_file(d / "f")
    immutable(d)
    message = refused(make_ctx(), ErrorCode.OP_FAILED, path=str(d))
    assert message == f"could not create a folder to keep markers in {d}: Operation not permitted"
    assert tree(d) == {HS, "f"}


def test_a_marker_that_cannot_be_set_aside_stops_the_clear_and_the_others_go_back(sandbox, make_ctx, tmp_path,
                                                                                   immutable):
    d = tmp_path / "data" / "custom"
    put_file(d / HS, b"hs")
    put_file(d / ".mine", b"m")
    put_file(d / "f")
    immutable(d / ".mine")
    ctx = make_ctx("marker:.mine")
    assert refused(ctx, ErrorCode.OP_FAILED, path=str(d)) == "could not set marker .mine aside: Operation not permitted"
    assert tree(d) == {HS, ".mine", "f"} and (d / HS).read_bytes() == b"hs"


# -- markers stranded by an agent that died mid-clear --------------------------------------

def test_a_stranded_marker_loses_to_one_made_since(sandbox, make_ctx, tmp_path):
    d = tmp_path / "data" / "again"
    put_file(d / f"{clear_op.KEEP_PREFIX}dead" / HS, b"old")
    put_file(d / HS, b"new")
    put_file(d / "junk")
    result = call(make_ctx("permissive"), "clear", path=str(d))
    assert result["ok"] and result["preserved"] == [HS] and result["removed"] == 1
    assert tree(d) == {HS} and (d / HS).read_bytes() == b"new"


def test_stranded_markers_are_put_back_past_a_keep_folder_that_is_not_ours(sandbox, make_ctx, tmp_path):
    """A keep-named folder holding a directory whose name is taken cannot be put back: it
    stays (a dot directory), and every other stranded marker is still put back."""
    d = tmp_path / "data" / "several"
    for n in range(8):
        put_file(d / f"{clear_op.KEEP_PREFIX}odd{n}" / "taken" / "x")
    put_file(d / "taken" / "y")
    put_file(d / f"{clear_op.KEEP_PREFIX}dead" / HS, b"prefix")
    result = call(make_ctx("permissive"), "clear", path=str(d))
    assert result["ok"] and result["preserved"] == [HS] and (d / HS).read_bytes() == b"prefix"
    assert not (d / f"{clear_op.KEEP_PREFIX}dead").exists() and not (d / "taken").exists()
    assert all((d / f"{clear_op.KEEP_PREFIX}odd{n}" / "taken" / "x").is_file() for n in range(8))


# -- the next `persistent` after a clear ----------------------------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_persistent_says_empty_right_after_a_clear(sandbox, make_ctx, tmp_path, force):
    """The clear drops what the agent knew of the directory and measures it again: the next
    `persistent` says empty, 0 B (fresh, unless forced: a service may be writing there)."""
    root = tmp_path / "data" / "buffers"
    d = root / "sized"
    put_file(d / HS, b"")
    put_file(d / "ab" / "buf", b"x" * 5000)
    old = time.time() - 3600  # old timestamps: the first walk is trusted (not "racily clean")
    for path in (d / HS, d / "ab" / "buf", d / "ab", d, root):
        os.utime(path, (old, old))
    ctx = make_ctx()
    query = {"paths": [str(root)], "level": 1, "marker": HS}
    persistent(ctx, **query)
    assert ctx.extras["sizer"].wait_idle(60)
    [before] = persistent(ctx, **query)
    assert (before["state"], before["bytes"], before["bytes_state"]) == ("populated", 5000, "fresh")
    assert call(ctx, "clear", path=str(d), force=force)["ok"]
    [after] = persistent(ctx, **query)
    assert (after["state"], after["bytes"]) == ("empty", 0)
    if not force:  # forced: re-walked in the background, so "stale" or, a moment later, "fresh"
        assert after["bytes_state"] == "fresh"


# -- as another user (root may open and remove anything) -----------------------------------

def test_as_another_user_an_unreadable_directory_is_said_and_search_only_parents_do(sandbox, make_ctx):
    """Their data directory below a 0711 parent (listable by none but root), holding a
    folder of root's they may not read: the walk goes through the parent (search only),
    the folder is said, the rest cleared. Root then clears it all (the same tree)."""
    needs_root()
    root = Path(tempfile.mkdtemp(prefix="ssclr-", dir="/tmp"))
    try:
        os.chmod(root, 0o711)
        (root / "hidden").mkdir(mode=0o711)
        d = root / "hidden" / "data"
        put_file(d / "mine")
        put_file(d / "private" / "f")
        os.chmod(d / "private", 0o700)
        # stranded markers: in keep folders they may not open, and in theirs
        for n in range(8):
            (d / f"{clear_op.KEEP_PREFIX}root{n}").mkdir(mode=0o700)
        # (several of each: the order in which they are listed is the file system's)
        theirs = [d / f"{clear_op.KEEP_PREFIX}theirs{n}" for n in range(8)]
        for keep in theirs:
            put_file(keep / HS, b"prefix")
        for path in (d, d / "mine", *theirs, *(keep / HS for keep in theirs)):
            os.chown(path, OTHER_UID, OTHER_UID)
        (root / "locked").mkdir(mode=0o700)
        ctx = AgentContext(base=root / "rhl", policy=parse_policy("permissive"))

        def as_them() -> dict:
            try:
                os.close(clear_op.open_directory(root / "locked" / "data"))
            except ProtocolError as exc:
                locked = [exc.code, exc.message]
            try:
                return {**call(ctx, "clear", path=str(d), force=True), "locked": locked}
            except ProtocolError as exc:
                return {"refused": exc.message}

        result = as_user(OTHER_UID, OTHER_UID, as_them)
        assert result["locked"] == [ErrorCode.OP_FAILED, f"could not open {root}/locked/data: Permission denied"]
        assert result.get("stderr") == f"seamless-service: could not remove {d}/private: [Errno 13] Permission denied\n", result
        assert (result["ok"], result["removed"], result["preserved"]) == (False, 1, [HS])
        assert tree(d) == {"private", "private/f", HS, *(f"{clear_op.KEEP_PREFIX}root{n}" for n in range(8))}
        mine = call(make_ctx("permissive"), "clear", path=str(d))
        assert (mine["ok"], mine["removed"], mine["preserved"]) == (True, 2, [HS])  # private/f, private
        with pytest.raises(ProtocolError) as info:   # in this process too (what mutation runs see)
            clear_op.open_directory(root / "locked" / "gone")
        assert info.value.code == ErrorCode.NOT_FOUND
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- a directory that changes while it is cleared -------------------------------------------

class _Listed(list):
    """A listing taken earlier, handed out as os.scandir's context manager."""

    def __enter__(self) -> "_Listed":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def after_listing(monkeypatch):
    """arm(where, action, skip=0): run `action` once, right after the clear has listed the
    directory `where` (its `skip`+1-th listing; the cleared directory itself is listed once
    for stranded markers first), as if another process changed it at that moment. The
    clear then works from the listing it took, as it would in that race."""
    real = os.scandir

    def arm(where: Path, action, skip: int = 0) -> None:
        target, seen = os.stat(where), []

        def scandir(*args):
            found = real(*args)
            if not args or not isinstance(args[0], int) or not os.path.samestat(os.fstat(args[0]), target):
                return found
            seen.append(1)
            if len(seen) != skip + 1:
                return found
            with found:
                entries = _Listed(found)
            action()
            return entries

        monkeypatch.setattr(os, "scandir", scandir)

    return arm


def test_entries_swapped_after_the_listing(sandbox, make_ctx, tmp_path, after_listing, immutable):
    """Each entry is removed as what it is when it is removed, never through a link: a file
    that became a directory is emptied and removed (a dot directory now: kept), a directory
    that became a symlink loses the link only, one that became a file that cannot be
    removed is said."""
    d = tmp_path / "data" / "swapped"
    sub = d / "sub"
    put_file(sub / "f")
    put_file(sub / ".g")
    put_file(sub / "dir" / "x")
    put_file(sub / "dir2" / "y")
    elsewhere = tmp_path / "elsewhere"
    put_file(elsewhere / "precious", b"p")

    def swap() -> None:
        for name in ("f", ".g"):
            (sub / name).unlink()
            put_file(sub / name / "inner")
        shutil.rmtree(sub / "dir")
        (sub / "dir").symlink_to(elsewhere)
        shutil.rmtree(sub / "dir2")
        put_file(sub / "dir2")
        immutable(sub / "dir2")

    after_listing(sub, swap)
    result = call(make_ctx("permissive"), "clear", path=str(d))
    assert result["stderr"] == f"seamless-service: could not remove {sub}/dir2: [Errno 1] Operation not permitted\n"
    assert (result["ok"], result["removed"], result["helper_removed"]) == (False, 3, 0)  # f/inner, f, the link
    assert tree(d) == {"sub", "sub/.g", "sub/.g/inner", "sub/dir2"}
    assert tree(elsewhere) == {"precious"}


def test_markers_that_cannot_be_put_back_are_said(sandbox, make_ctx, tmp_path, after_listing, immutable):
    """The directory made immutable once listed: nothing can be removed, and the marker set
    aside cannot go back either; the reply says where it waits."""
    d = tmp_path / "data" / "buffers" / "locked-late"
    put_file(d / HS, b"")
    put_file(d / "a")
    after_listing(d, lambda: immutable(d), skip=1)
    message = refused(make_ctx(), ErrorCode.OP_FAILED, path=str(d))
    [keep] = [name for name in os.listdir(d) if name.startswith(clear_op.KEEP_PREFIX)]
    assert message == (f"cleared, but could not restore markers ['{HS}'] from {d}/{keep}: "
                       "Operation not permitted")
    assert tree(d) == {"a", keep, f"{keep}/{HS}"}
