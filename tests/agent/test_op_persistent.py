"""The persistent op gives rhl-ps-persistent's rows (plus real sizes) under the agent's path policy."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from seamless_service.agent.dispatch import handle
from seamless_service.agent.ops import handler
from seamless_service.agent.policy import parse_policy
from seamless_service.protocol import ErrorCode, ProtocolError, decode_reply, encode_request, validate_args
from tests.support.persistent import helper_rows, persistent, strip
from tests.support.trees import HS, du

DB = "seamless.db"
TIMEOUT = 60.0


def age(root: Path) -> None:
    """Every timestamp under `root` an hour into the past."""
    past = time.time() - 3600
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (past, past), follow_symlinks=False)
    os.utime(root, (past, past))


def _file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


@pytest.fixture
def layout(sandbox, tmp_path):
    """A hashserver bufferdir and a database dir as seamless lays them out."""
    buffers = tmp_path / "data" / "buffers"
    _file(buffers / "proj1" / HS, 0)
    _file(buffers / "proj1" / "ab" / ("ab" + "0" * 62), 1000)
    _file(buffers / "proj1" / "cd" / ("cd" + "1" * 62), 2345)
    _file(buffers / "proj1" / "STAGE-s1" / HS, 0)
    _file(buffers / "proj1" / "STAGE-s1" / "ef" / ("ef" + "2" * 62), 777)
    _file(buffers / "proj2" / HS, 0)                       # only the marker: "empty" with --marker
    _file(buffers / "proj3" / "STAGE-x" / HS, 0)           # project dir without marker
    _file(buffers / "proj3" / "STAGE-x" / "12" / ("12" + "3" * 62), 55)
    (buffers / "proj4").mkdir()                            # marker-less, empty
    database = tmp_path / "data" / "db"
    _file(database / "projA" / DB, 8192)
    _file(database / "projA" / "STAGE-a" / DB, 4096)
    _file(database / "projB" / "STAGE-b" / DB, 12288)      # project dir without database
    (database / "projC").mkdir()
    (database / "projC" / DB).write_bytes(b"")
    (tmp_path / "data" / "not-a-dir").write_text("x")
    return {"buffers": buffers, "db": database, "top": tmp_path / "data"}


def without_bare(rows: list[dict], options: dict) -> list[dict]:
    """Our rows minus the deliberate addition (issue 8): with `file` and a marker, an empty
    directory lacking the marker (a cleared database dir) gets an `empty` row."""
    if not (options.get("file") and options.get("marker")):
        return rows
    bare = [r for r in rows if r["state"] == "empty" and os.path.isdir(r["path"])
            and not os.listdir(r["path"])]
    assert all(r["bytes"] in (0, None) for r in bare)
    return [r for r in rows if r not in bare]


OPTIONS = [
    {},
    {"marker": HS},
    {"file": DB, "marker": DB},
    {"file": DB},
    {"marker": DB},
]


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_rows_equal_helper_permissive(sandbox, layout, make_ctx, level, options):
    ctx = make_ctx("permissive")
    roots = [layout["buffers"], layout["db"], layout["buffers"] / "proj1", layout["top"] / "missing"]
    ours = persistent(ctx, paths=[str(p) for p in roots], level=level, sizes=False, **options)
    theirs = helper_rows(sandbox, roots, level, **options)
    assert theirs  # the comparison is about something
    assert strip(without_bare(ours, options)) == theirs
    assert all(row["bytes"] is None and row["bytes_state"] is None for row in ours)


def test_cluster_roots_under_seamless_policy_work(sandbox, layout, make_ctx):
    """seamless-config's `ps --cluster` queries (#11): the roots hold no marker, yet it works."""
    ctx = make_ctx("seamless")
    hs = persistent(ctx, paths=[str(layout["buffers"])], level=2, marker=HS)
    assert strip(hs) == helper_rows(sandbox, [layout["buffers"]], 2, marker=HS)
    assert [r["path"] for r in hs] == [str(layout["buffers"] / p) for p in
                                       ("proj1", "proj1/STAGE-s1", "proj2", "proj3/STAGE-x")]
    db = persistent(ctx, paths=[str(layout["db"])], level=2, file=DB, marker=DB)
    assert strip(db) == helper_rows(sandbox, [layout["db"]], 2, file=DB, marker=DB)
    assert {r["path"]: r["size"] for r in db} == {
        str(layout["db"] / "projA"): 8192, str(layout["db"] / "projA" / "STAGE-a"): 4096,
        str(layout["db"] / "projB" / "STAGE-b"): 12288, str(layout["db"] / "projC"): 0}


def _authorised(path: str, root: Path) -> bool:
    p = Path(path)
    while True:
        if (p / HS).is_file() or (p / DB).is_file():
            return True
        if p == root or p == p.parent:
            return False
        p = p.parent


@pytest.mark.parametrize("level", [0, 1, 2])
def test_marker_less_root_reports_only_authorised_subtrees(sandbox, layout, make_ctx, level):
    ctx = make_ctx("seamless")
    root = layout["buffers"]
    ours = strip(persistent(ctx, paths=[str(root)], level=level, sizes=False))
    theirs = helper_rows(sandbox, [root], level)
    expected = [row for row in theirs if _authorised(row["path"], root)]
    assert ours == expected
    if level == 2:
        assert len(theirs) > len(expected) > 0
        assert str(root / "proj1" / "ab") in {r["path"] for r in ours}   # below a marker dir
        assert str(root / "proj3") not in {r["path"] for r in ours}      # no marker, not below one


def test_marked_root_is_walked_like_the_guard_lets_the_helper(sandbox, layout, make_ctx):
    ctx = make_ctx("seamless")
    proj1 = layout["buffers"] / "proj1"
    for level in (0, 1, 2):
        assert strip(persistent(ctx, paths=[str(proj1)], level=level, sizes=False)) == \
            helper_rows(sandbox, [proj1], level)


def test_missing_project_is_absent_not_refused(sandbox, layout, make_ctx):
    ctx = make_ctx("seamless")
    missing = layout["buffers"] / "newproj"
    for level in (0, 2):
        rows = persistent(ctx, paths=[str(missing)], level=level, marker=HS)
        assert strip(rows) == helper_rows(sandbox, [missing], level, marker=HS)
        assert rows == [{"path": str(missing), "state": "absent", "size": None, "modified": None,
                         "bytes": None, "bytes_measured": None, "bytes_state": None}]


def test_home_relative_and_symlinked_paths_print_like_the_helper(sandbox, layout, make_ctx):
    ctx = make_ctx("seamless")
    _file(sandbox.home / "lbuf" / "p" / HS, 0)
    _file(sandbox.home / "lbuf" / "p" / "STAGE-st" / HS, 0)
    link = layout["top"] / "buffer-link"
    link.symlink_to(layout["buffers"] / "proj1")
    for path, level in (("~/lbuf/p", 1), ("~/lbuf", 2), (str(link), 2)):
        ours = persistent(ctx, paths=[path], level=level, marker=HS, sizes=False)
        assert strip(ours) == helper_rows(sandbox, [path], level, marker=HS), path
        assert ours and not any(r["path"].startswith("~") for r in ours)
    assert persistent(ctx, paths=[str(link)], level=0, sizes=False)[0]["path"] == str(link)


def test_not_a_directory_is_an_error_row(sandbox, layout, make_ctx):
    ctx = make_ctx("permissive")
    target = layout["top"] / "not-a-dir"
    failed = sandbox.run_helper("rhl-ps-persistent", "--json", str(target))
    assert failed.returncode == 1 and "not a directory" in failed.stderr
    rows = persistent(ctx, paths=[str(layout["buffers"] / "proj2"), str(target)], level=1)
    assert rows[0]["state"] == "populated"
    assert rows[-1]["state"] == "error" and rows[-1]["path"] == str(target)
    assert "not a directory" in rows[-1]["error"]


def test_refused_paths_fail_the_op(sandbox, layout, make_ctx):
    ctx = make_ctx("seamless")
    good = str(layout["buffers"] / "proj1")
    for bad, why in (("/etc", "system-root"), ("data/buffers", "absolute"),
                     (str(layout["top"] / "not-a-dir"), "marker"),
                     (str(layout["buffers"] / ".." / "db"), "dot-prefixed"), ("~", "$HOME")):
        with pytest.raises(ProtocolError) as info:
            persistent(ctx, paths=[good, bad])
        assert info.value.code == ErrorCode.POLICY_REFUSED
        assert why in info.value.message and bad.lstrip("~") in info.value.message
    ctx_roots = make_ctx("permissive")
    roots_file = layout["top"] / "roots"
    roots_file.write_text(str(layout["db"]) + "\n")
    ctx_roots.policy = parse_policy(f"data-roots:{roots_file}")
    with pytest.raises(ProtocolError) as info:
        persistent(ctx_roots, paths=[str(layout["db"]), str(layout["buffers"] / "missing")])
    assert info.value.code == ErrorCode.POLICY_REFUSED and "outside configured --data-roots" in info.value.message
    assert "sizer" not in ctx.extras  # nothing was walked or sized


def test_real_sizes_for_buffer_dirs(sandbox, layout, make_ctx):
    ctx = make_ctx("seamless")
    args = {"paths": [str(layout["buffers"])], "level": 2, "marker": HS}
    first = persistent(ctx, **args)
    assert {r["bytes_state"] for r in first} == {"pending"} and all(r["bytes"] is None for r in first)
    assert ctx.extras["sizer"].wait_idle(TIMEOUT)
    second = {r["path"]: r for r in persistent(ctx, **args)}
    for path, row in second.items():
        assert row["bytes"] == du(Path(path)), path
        assert row["bytes_state"] in ("fresh", "stale")   # stale: just-written files are re-checked
        assert isinstance(row["bytes_measured"], float)
    proj1 = second[str(layout["buffers"] / "proj1")]
    assert proj1["bytes"] == 1000 + 2345 + 777 and proj1["size"] is None   # size stays the helper's


def test_database_file_sizes_and_refresh(sandbox, layout, make_ctx):
    ctx = make_ctx("seamless")
    rows = persistent(ctx, paths=[str(layout["db"])], level=2, file=DB, marker=DB)
    by_path = {r["path"]: r for r in rows}
    a = by_path[str(layout["db"] / "projA")]
    assert (a["size"], a["bytes"], a["bytes_state"]) == (8192, 8192, "fresh")
    c = by_path[str(layout["db"] / "projC")]
    assert (c["state"], c["size"], c["bytes"]) == ("populated", 0, 0)
    # plain directory totals; refresh asks again without waiting
    persistent(ctx, paths=[str(layout["db"] / "projA")], level=0)
    assert ctx.extras["sizer"].wait_idle(TIMEOUT)
    refreshed = persistent(ctx, paths=[str(layout["db"] / "projA")], level=0, refresh=True)
    assert refreshed[0]["bytes"] == 8192 + 4096 and refreshed[0]["bytes_state"] == "stale"


def test_sizes_false_creates_no_sizer(sandbox, layout, make_ctx):
    ctx = make_ctx("seamless")
    rows = persistent(ctx, paths=[str(layout["buffers"] / "proj1")], level=1, sizes=False)
    assert rows and all(r["bytes"] is None and r["bytes_state"] is None for r in rows)
    assert "sizer" not in ctx.extras


def test_through_dispatch(sandbox, layout, make_ctx):
    ctx = make_ctx("seamless")
    request = encode_request([
        ("persistent", {"paths": [str(layout["buffers"])], "level": 2, "marker": HS}),
        ("persistent", {"paths": ["/etc"]}),
    ])
    ok, refused = decode_reply(handle(ctx, request), expected=2)
    assert ok["ok"] and len(ok["value"]["rows"]) == 4
    assert not refused["ok"] and refused["error"]["code"] == ErrorCode.POLICY_REFUSED


def test_cleared_database_dir_keeps_its_row(sandbox, layout, make_ctx):
    """Issue 8 item 8: seamless.db is the database dir's marker AND its data, so a clear
    removed the marker and the row vanished. Right after a clear it says empty, 0 B, fresh
    (the helper, and this op before, gave it no row at all)."""
    ctx = make_ctx("seamless")
    db = layout["db"]
    query = {"paths": [str(db)], "level": 2, "file": DB, "marker": DB}
    before = {r["path"]: r for r in persistent(ctx, **query)}
    assert before[str(db / "projA" / "STAGE-a")]["state"] == "populated"
    cleared = handler("clear")(ctx, validate_args("clear", {"path": str(db / "projA" / "STAGE-a")}))
    assert cleared["ok"] and cleared["removed"] == 1
    after = {r["path"]: r for r in persistent(ctx, **query)}
    row = after[str(db / "projA" / "STAGE-a")]
    assert (row["state"], row["size"], row["bytes"], row["bytes_state"]) == ("empty", None, 0, "fresh")
    assert str(db / "projA" / "STAGE-a") not in {r["path"] for r in helper_rows(sandbox, [db], 2, file=DB, marker=DB)}
    # a directory holding something other than seamless.db still gets no row (marker rule)
    assert str(db / "projB") not in after


def test_clear_drops_the_cached_size(sandbox, layout, make_ctx):
    """Issue 8 item 8: right after a clear, persistent said the old size (`stale`) until
    the background re-walk; the clear now drops and re-measures what it cleared."""
    ctx = make_ctx("seamless")
    root, proj = layout["buffers"], layout["buffers"] / "proj1"
    query = {"paths": [str(root)], "level": 2, "marker": HS}
    age(root)  # old timestamps: the first walk is trusted (not "racily clean")
    persistent(ctx, **query)
    assert ctx.extras["sizer"].wait_idle(TIMEOUT)
    sized = {r["path"]: r for r in persistent(ctx, **query)}[str(proj)]
    assert sized["bytes"] == 1000 + 2345 + 777 and sized["bytes_state"] == "fresh"
    assert handler("clear")(ctx, validate_args("clear", {"path": str(proj)}))["ok"]
    row = {r["path"]: r for r in persistent(ctx, **query)}[str(proj)]
    assert (row["state"], row["bytes"], row["bytes_state"]) == ("empty", 0, "fresh")
