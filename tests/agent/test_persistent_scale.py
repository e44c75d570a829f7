"""`persistent` on large, changing directories, and sizes only where the policy allows.

Real directories and files throughout. Timing is never asserted: the listing cache's
counters say whether a poll waited for a full listing (`full_scans`), answered from the
previous one while a relist ran in the background (`stale_answers`), or how many
directory entries it read (`entries_read`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from seamless_service.agent.listing import DirListings
from seamless_service.agent.policy import parse_policy, size_refusal
from tests.support.persistent import helper_rows, persistent, strip
from tests.support.trees import HS, du

TIMEOUT = 60.0
BIG = 20_000


def make_buffer_dir(path: Path, files: int, marker: bool = True) -> None:
    """A flat hashserver buffer directory: one file per buffer, named by checksum."""
    path.mkdir(parents=True)
    if marker:
        (path / HS).touch()
    for i in range(files):
        with open(path / f"{i:064x}", "wb") as handle:
            handle.write(b"x" * (i % 7))


def add_buffer(path: Path, n: int) -> None:
    (path / f"new{n:061x}").write_bytes(b"y")


def listings(ctx) -> DirListings:
    return ctx.extras["listings"]


def test_large_changing_dir_is_answered_without_relisting_it(sandbox, make_ctx, tmp_path):
    ctx = make_ctx("permissive")
    big = tmp_path / "data" / "big"
    make_buffer_dir(big, BIG)
    (big / "sub0").mkdir()
    (big / "sub1").mkdir()
    args = {"paths": [str(big)], "level": 1, "sizes": False}
    first = persistent(ctx, **args)
    assert strip(first) == helper_rows(sandbox, [big], 1)
    cache = listings(ctx)
    assert cache.full_scans == 1          # the first listing ever is synchronous
    for n in range(10):
        add_buffer(big, n)                 # a new buffer arrives between polls
        rows = persistent(ctx, **args)
        assert [r["path"] for r in rows] == [str(big), str(big / "sub0"), str(big / "sub1")]
        assert rows[0]["state"] == "populated"
    # every poll was answered from the previous listing; none waited for a full one
    assert cache.full_scans == 1
    assert cache.stale_answers == 10
    # a subdirectory that goes away is left out at once, not reported `absent`
    (big / "sub1").rmdir()
    add_buffer(big, 99)
    rows = persistent(ctx, **args)
    assert [r["path"] for r in rows] == [str(big), str(big / "sub0")]
    # a new subdirectory shows up after one background relist
    (big / "sub2").mkdir()
    deadline = time.monotonic() + 10
    while True:
        rows = persistent(ctx, **args)
        if str(big / "sub2") in {r["path"] for r in rows}:
            break
        assert time.monotonic() < deadline, "the subdirectory list never caught up"
        time.sleep(0.05)
    assert cache.full_scans == 1 and cache.background_scans >= 1
    assert cache.wait_idle(TIMEOUT)
    state = cache.state(str(big))
    assert state["full"] and state["count"] == 1 + BIG + 2 + 11
    assert strip(persistent(ctx, **args)) == helper_rows(sandbox, [big], 1)


def test_small_changing_dir_is_still_listed_synchronously(sandbox, make_ctx, tmp_path):
    ctx = make_ctx("permissive")
    small = tmp_path / "data" / "small"
    make_buffer_dir(small, 10)
    args = {"paths": [str(small)], "level": 1, "sizes": False}
    persistent(ctx, **args)
    (small / "sub").mkdir()
    rows = persistent(ctx, **args)             # no lag: the new subdirectory is there at once
    assert strip(rows) == helper_rows(sandbox, [small], 1)
    assert str(small / "sub") in {r["path"] for r in rows}
    assert listings(ctx).full_scans == 2 and listings(ctx).stale_answers == 0


def test_directory_replaced_by_a_new_one_is_listed_synchronously(sandbox, make_ctx, tmp_path):
    ctx = make_ctx("permissive")
    big = tmp_path / "data" / "big"
    make_buffer_dir(big, 6_000)
    (big / "old").mkdir()
    args = {"paths": [str(big)], "level": 1, "sizes": False}
    persistent(ctx, **args)
    big.rename(tmp_path / "data" / "gone")          # e.g. cleared and recreated: a new inode
    make_buffer_dir(big, 1)
    (big / "new").mkdir()
    rows = persistent(ctx, **args)
    assert strip(rows) == helper_rows(sandbox, [big], 1)
    assert listings(ctx).full_scans == 2 and listings(ctx).stale_answers == 0


@pytest.mark.parametrize("marker", [None, HS])
def test_deepest_level_reads_at_most_two_entries(sandbox, make_ctx, tmp_path, marker):
    ctx = make_ctx("permissive")
    big = tmp_path / "data" / "buffers" / "big"
    only_marker = tmp_path / "data" / "buffers" / "only-marker"
    make_buffer_dir(big, BIG)
    make_buffer_dir(only_marker, 0)
    for path in (big, only_marker):
        rows = persistent(ctx, paths=[str(path)], level=0, marker=marker, sizes=False)
        assert strip(rows) == helper_rows(sandbox, [path], 0, marker=marker)
    cache = listings(ctx)
    assert cache.full_scans == 0 and cache.entries_read <= 2 + 1
    assert persistent(ctx, paths=[str(only_marker)], level=0, marker=HS, sizes=False)[0]["state"] == "empty"
    # one level up: the parent is listed in full (2 entries), its children are not
    parent = big.parent
    before = cache.entries_read
    add_buffer(big, 1)
    rows = persistent(ctx, paths=[str(parent)], level=1, marker=marker, sizes=False)
    assert strip(rows) == helper_rows(sandbox, [parent], 1, marker=marker)
    assert cache.entries_read - before <= 2 + 2 + 1 and cache.full_scans == 1


def test_file_option_reads_no_entries_at_the_deepest_level(sandbox, make_ctx, tmp_path):
    ctx = make_ctx("permissive")
    big = tmp_path / "data" / "big"
    make_buffer_dir(big, BIG)
    (big / "seamless.db").write_bytes(b"d" * 100)
    rows = persistent(ctx, paths=[str(big)], level=0, file="seamless.db")
    assert strip(rows) == helper_rows(sandbox, [big], 0, file="seamless.db")
    assert rows[0]["bytes"] == 100
    assert listings(ctx).entries_read == 0


# -- sizes only where the policy allows ---------------------------------------------------


@pytest.fixture
def linked(sandbox, tmp_path):
    """A buffer root whose project holds symlinks to trees inside and outside the policy."""
    buffers = tmp_path / "data" / "buffers"
    proj1, proj2, plain = buffers / "proj1", buffers / "proj2", buffers / "plain"
    for directory in (proj1 / "ab", proj2, plain):
        directory.mkdir(parents=True)
    (proj1 / HS).touch()
    (proj2 / HS).touch()
    (proj1 / "ab" / ("ab" + "0" * 62)).write_bytes(b"a" * 300)
    (proj2 / ("cd" + "1" * 62)).write_bytes(b"b" * 700)
    (plain / "f").write_bytes(b"c" * 50)
    links = {
        "system": Path("/usr"),                     # a system root
        "share": Path("/usr/share"),                # a big tree outside every data root
        "home": sandbox.home,                       # $HOME
        "above-home": sandbox.root,                 # an ancestor of $HOME
        "marked": proj2,                            # inside the root, holds a marker
        "inner": proj1 / "ab",                      # inside proj1 (the marker dir above)
        "unmarked": plain,                          # inside the root, no marker anywhere
    }
    for name, target in links.items():
        (proj1 / name).symlink_to(target)
    roots_file = tmp_path / "roots"
    roots_file.write_text(f"{buffers}\n")
    return {"buffers": buffers, "proj1": proj1, "roots_file": roots_file}


# for each mode: link name -> expected fragment of bytes_error, or None if it is sized
EXPECTED = {
    "permissive": {"system": "system-root", "home": "$HOME", "above-home": "$HOME",
                   "marked": None, "inner": None, "unmarked": None},
    "seamless": {"system": "system-root", "share": "marker", "home": "$HOME", "above-home": "$HOME",
                 "marked": None, "inner": None, "unmarked": "marker"},
    "data-roots": {"system": "system-root", "share": "data-roots", "home": "$HOME",
                   "above-home": "$HOME", "marked": None, "inner": None, "unmarked": None},
}


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_symlinked_children_are_sized_only_where_the_policy_allows(sandbox, make_ctx, linked, mode):
    ctx = make_ctx("permissive" if mode == "data-roots" else mode)
    if mode == "data-roots":
        ctx.policy = parse_policy(f"data-roots:{linked['roots_file']}")
    proj1 = linked["proj1"]
    if mode == "permissive":
        (proj1 / "share").unlink()  # permissive allows /usr/share: do not size it in a test
    expected = EXPECTED[mode]
    root = linked["buffers"]
    args = {"paths": [str(root)], "level": 2}
    first = persistent(ctx, **args)
    # the rows stay the helper's (under the seamless preset: its authorised subtrees)
    theirs = helper_rows(sandbox, [root], 2)
    if mode == "seamless":
        theirs = [r for r in theirs if r["path"].startswith((str(proj1), str(root / "proj2")))]
    assert strip(first) == theirs
    assert ctx.extras["sizer"].wait_idle(TIMEOUT)
    rows = {r["path"]: r for r in persistent(ctx, **args)}
    for name, why in expected.items():
        row = rows[str(proj1 / name)]
        assert row["state"] in ("empty", "populated"), name
        if why is None:
            assert row["bytes_state"] in ("fresh", "stale"), (name, row)
            assert row["bytes"] == du(Path(os.path.realpath(proj1 / name))), name
            assert "bytes_error" not in row
        else:
            assert row["bytes"] is None and row["bytes_measured"] is None, (name, row)
            assert row["bytes_state"] == "refused", (name, row)
            assert why in row["bytes_error"], (name, row["bytes_error"])
            assert str(sandbox.home) not in row["bytes_error"]   # the link's target is not told
    # plain (non-linked) rows keep their sizes
    assert rows[str(proj1)]["bytes"] == du(proj1) == 300
    # and nothing refused was ever handed to the sizer: its cache holds only allowed trees
    sized = {os.path.realpath(path) for path, row in rows.items()
             if row["state"] in ("empty", "populated") and row["bytes_state"] != "refused"}
    assert len(ctx.extras["sizer"]) == len(sized)


def test_marker_inside_a_linked_tree_authorises_its_own_size(sandbox, make_ctx, tmp_path):
    """Past a link out of a marker directory, a directory holding a marker itself is sized."""
    ctx = make_ctx("seamless")
    buffers = tmp_path / "data" / "buffers"
    elsewhere = tmp_path / "data" / "elsewhere"
    (buffers / "proj1").mkdir(parents=True)
    (buffers / "proj1" / HS).touch()
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub" / HS).touch()
    (elsewhere / "sub" / "f").write_bytes(b"z" * 40)
    (elsewhere / "g").write_bytes(b"z" * 10)
    (buffers / "proj1" / "out").symlink_to(elsewhere)
    args = {"paths": [str(buffers)], "level": 3}
    persistent(ctx, **args)
    assert ctx.extras["sizer"].wait_idle(TIMEOUT)
    rows = {r["path"]: r for r in persistent(ctx, **args)}
    out, sub = rows[str(buffers / "proj1" / "out")], rows[str(buffers / "proj1" / "out" / "sub")]
    assert out["bytes_state"] == "refused" and "marker" in out["bytes_error"]
    assert sub["bytes"] == 40 and sub["bytes_state"] in ("fresh", "stale")


def test_dot_named_subdirectory_is_not_sized(sandbox, make_ctx, tmp_path):
    ctx = make_ctx("permissive")
    root = tmp_path / "data" / "proj"
    (root / ".hidden").mkdir(parents=True)
    (root / ".hidden" / "f").write_bytes(b"h" * 5)
    rows = {r["path"]: r for r in persistent(ctx, paths=[str(root)], level=1)}
    hidden = rows[str(root / ".hidden")]
    assert hidden["bytes_state"] == "refused" and "dot-prefixed" in hidden["bytes_error"]
    assert rows[str(root)]["bytes_state"] == "pending"   # the root itself is sized


def test_size_refusal_names_the_rule_not_the_path(sandbox, tmp_path):
    data = tmp_path / "data"
    (data / "x").mkdir(parents=True)
    policy = parse_policy("permissive")
    assert size_refusal(policy, str(data)) is None
    assert size_refusal(policy, "/usr") == "refusing system-root directory"
    assert size_refusal(policy, str(sandbox.home)) == "path must not be $HOME or an ancestor of $HOME"
    assert size_refusal(policy, str(tmp_path)) == "path must not be $HOME or an ancestor of $HOME"
    marker = parse_policy("seamless")
    assert "marker" in size_refusal(marker, str(data / "x"), ())
    assert size_refusal(marker, str(data / "x"), (str(data),)) is None
