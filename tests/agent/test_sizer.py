"""The background directory sizer: totals, never blocking, change detection, bounds."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from seamless_service.agent.sizer import Sizer, measure

TIMEOUT = 60.0


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


_clock = [0]


def age(root: Path) -> None:
    """Move the recent timestamps under `root` into the past (each call to new values).

    A measurement whose timestamps are recent is "racily clean" and re-done at the next
    check; ageing what a test just touched keeps the test about the change check itself.
    Untouched paths keep their (old) timestamps, so ageing is no change of its own."""
    _clock[0] += 10
    past = time.time() - 10_000 - _clock[0]
    recent = time.time() - 1_000
    paths = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [os.path.join(dirpath, name) for name in filenames + dirnames]
    for path in paths:
        if os.lstat(path).st_mtime > recent:
            os.utime(path, (past, past), follow_symlinks=False)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    _write(root / "a.bin", 100)
    _write(root / "sub" / "b.bin", 250)
    _write(root / "sub" / "deep" / "d1" / "d2" / "d3" / "c.bin", 1000)
    _write(root / ".dot" / "e", 7)
    _write(root / "empty", 0)
    _write(outside / "big", 10_000)
    (root / "link_file").symlink_to(outside / "big")          # not followed, not counted
    (root / "link_dir").symlink_to(outside)                   # not followed
    (root / "sub" / "loop").symlink_to(root)                  # a symlink loop
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(root / "fifo")                                  # never opened, not counted
    age(root)
    return root


EXPECTED_BYTES = 100 + 250 + 1000 + 7 + 0
EXPECTED_FILES = 5


class GatedWalker:
    """The real walk, behind a gate the test opens; counts the walks it starts."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[str] = []

    def __call__(self, path, stop):
        self.calls.append(path)
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        return measure(path, stop)


@pytest.fixture
def sizer():
    made = []

    def make(**kw):
        kw.setdefault("recheck_interval", 0.0)
        s = Sizer(None, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_measure_counts_regular_files_only(tree):
    m = measure(str(tree))
    assert (m.bytes, m.files, m.skipped) == (EXPECTED_BYTES, EXPECTED_FILES, 0)
    assert not m.racy


def test_measure_of_missing_or_file_raises(tree):
    with pytest.raises(FileNotFoundError):
        measure(str(tree / "missing"))
    with pytest.raises(NotADirectoryError):
        measure(str(tree / "a.bin"))


def test_symlinked_root_is_sized_through_the_link(tree, tmp_path):
    link = tmp_path / "link-to-root"
    link.symlink_to(tree)
    assert measure(str(link)).bytes == EXPECTED_BYTES


def test_first_call_pending_then_fresh(sizer, tree):
    s = sizer()
    first = s.size(str(tree))
    assert first == {"bytes": None, "files": None, "measured": None, "state": "pending"}
    assert s.wait_idle(TIMEOUT)
    before = time.time()
    second = s.size(str(tree))
    assert second["state"] == "fresh"
    assert (second["bytes"], second["files"]) == (EXPECTED_BYTES, EXPECTED_FILES)
    assert second["measured"] <= before
    assert s.walks == 1


def test_changes_are_detected_and_rewalked(sizer, tree):
    s = sizer()
    s.size(str(tree))
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(tree))["bytes"] == EXPECTED_BYTES

    # a new file one level down: the subdirectory's mtime changes
    _write(tree / "sub" / "new.bin", 11)
    age(tree)
    answer = s.size(str(tree))
    assert answer["state"] == "stale" and answer["bytes"] == EXPECTED_BYTES  # old value meanwhile
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(tree)) | {"measured": None} == {
        "bytes": EXPECTED_BYTES + 11, "files": EXPECTED_FILES + 1, "measured": None, "state": "fresh"}

    # two levels down (a hashserver prefix dir inside a STAGE dir): still seen
    _write(tree / "sub" / "deep" / "x.bin", 13)
    age(tree)
    assert s.size(str(tree))["state"] == "stale"
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(tree))["bytes"] == EXPECTED_BYTES + 24

    # a top-level file growing in place (a database file): its size is tracked
    with open(tree / "a.bin", "ab") as handle:
        handle.write(b"y" * 5)
    age(tree)
    assert s.size(str(tree))["state"] == "stale"
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(tree))["bytes"] == EXPECTED_BYTES + 29

    # deeper than the tracked depth: not noticed until asked to refresh (documented)
    _write(tree / "sub" / "deep" / "d1" / "d2" / "y.bin", 17)
    age(tree)
    walks = s.walks
    assert s.size(str(tree)) | {"measured": None} == {
        "bytes": EXPECTED_BYTES + 29, "files": EXPECTED_FILES + 2, "measured": None, "state": "fresh"}
    assert s.walks == walks
    assert s.size(str(tree), refresh=True)["state"] == "stale"
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(tree))["bytes"] == EXPECTED_BYTES + 46


def test_recent_timestamps_are_measured_again(sizer, tmp_path):
    root = tmp_path / "fresh-tree"
    _write(root / "sub" / "f", 3)  # timestamps are "now": the walk cannot trust them
    s = sizer()
    s.size(str(root))
    assert s.wait_idle(TIMEOUT)
    assert s.walks == 1
    assert s.size(str(root))["state"] == "stale"  # re-walk scheduled
    assert s.wait_idle(TIMEOUT)
    assert s.walks == 2
    age(root)
    s.size(str(root), refresh=True)
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(root))["state"] == "fresh" and s.size(str(root))["bytes"] == 3


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch dir on tmpfs when there is one: 20,000 creates on this VM's disk take ~10 s."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    scratch = Path(tempfile.mkdtemp(prefix="seamless-service-sizer-", dir=shm))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_large_dir_cached_answer_served_while_refresh_pending(sizer, fast_tmp):
    big = fast_tmp / "buffers"
    big.mkdir()
    (big / ".HASHSERVER_PREFIX").write_bytes(b"")
    total = 0
    for i in range(20_000):
        data = b"b" * (i % 97)
        (big / f"{i:064x}").write_bytes(data)
        total += len(data)
    age(big)
    walker = GatedWalker()
    s = sizer(walker=walker)
    assert s.size(str(big))["state"] == "pending"
    assert s.wait_idle(TIMEOUT)
    cached = s.size(str(big))
    assert cached["state"] == "fresh" and (cached["bytes"], cached["files"]) == (total, 20_001)

    # unchanged: served from the cache, no walk at all
    for _ in range(20):
        assert s.size(str(big)) == cached
    assert len(walker.calls) == 1

    # a refresh while the worker is held: the cached value is still served at once
    walker.gate.clear()
    walker.entered.clear()
    assert s.size(str(big), refresh=True) == cached | {"state": "stale"}
    assert walker.entered.wait(TIMEOUT)          # the re-walk has started and is held
    for _ in range(5):
        assert s.size(str(big)) == cached | {"state": "stale"}
        assert s.size(str(big), refresh=True) == cached | {"state": "stale"}
    assert len(walker.calls) == 2                # queued once, not per call
    (big / "extra").write_bytes(b"z" * 1000)
    age(big)
    walker.gate.set()
    assert s.wait_idle(TIMEOUT)
    after = s.size(str(big))
    assert after["state"] == "fresh" and after["bytes"] == total + 1000
    assert after["measured"] >= cached["measured"]


def test_errors_are_reported(sizer, tree):
    s = sizer()
    missing, regular = str(tree / "missing"), str(tree / "a.bin")
    assert s.size(missing)["state"] == "pending"
    assert s.size(regular)["state"] == "pending"
    assert s.wait_idle(TIMEOUT)
    gone = s.size(missing)
    assert gone["state"] == "error" and gone["bytes"] is None and "FileNotFoundError" in gone["error"]
    assert "not a directory" in s.size(regular)["error"]
    # a refresh retries at once; the directory now exists
    (tree / "missing").mkdir()
    _write(tree / "missing" / "f", 21)
    age(tree)
    assert s.size(missing, refresh=True)["state"] == "pending"
    assert s.wait_idle(TIMEOUT)
    assert s.size(missing)["bytes"] == 21


def test_cache_is_bounded_lru(sizer, tmp_path):
    dirs = []
    for i in range(5):
        d = tmp_path / f"d{i}"
        _write(d / "f", i)
        age(d)
        dirs.append(str(d))
    s = sizer(max_entries=3)
    for d in dirs:
        s.size(d)
        assert s.wait_idle(TIMEOUT)
    assert len(s) == 3
    assert s.size(dirs[0])["state"] == "pending"   # evicted: measured again
    assert s.size(dirs[4])["state"] == "fresh"


def test_queue_is_bounded_and_deduplicated(sizer, tmp_path):
    walker = GatedWalker()
    walker.gate.clear()
    s = sizer(walker=walker, max_queue=2)
    dirs = []
    for i in range(6):
        d = tmp_path / f"q{i}"
        _write(d / "f", 1)
        age(d)
        dirs.append(str(d))
    for _ in range(3):
        for d in dirs:
            assert s.size(d)["state"] == "pending"   # never waits, whatever the queue holds
    walker.gate.set()
    assert s.wait_idle(TIMEOUT)
    assert len(walker.calls) == len(set(walker.calls)) <= 3  # 1 running + 2 queued, no duplicates
    # the ones that did not fit are measured when asked again
    for d in dirs:
        s.size(d)
        assert s.wait_idle(TIMEOUT)
    assert all(s.size(d)["state"] == "fresh" for d in dirs)


def test_tolerates_files_vanishing_mid_walk(tmp_path):
    root = tmp_path / "churn"
    still_bytes = 0
    for i in range(10):  # a part nobody touches: always counted, exactly
        _write(root / "still" / f"s{i}", 100 + i)
        still_bytes += 100 + i
    for i in range(20):
        _write(root / f"sub{i}" / "f", 2)
    stop = threading.Event()

    def churn():
        n = 0
        while not stop.is_set():
            sub = root / f"sub{n % 20}"
            for p in list(sub.glob("*")):
                p.unlink(missing_ok=True)
            sub.rmdir() if n % 3 == 0 and sub.exists() else None
            _write(sub / f"g{n}", 2)
            n += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(200):
            m = measure(str(root))
            # every churned file is at most 2 bytes (0 or 1 while being written): whatever
            # the walk caught of them, the untouched part is counted whole
            churned = m.files - 10
            assert churned >= 0 and still_bytes <= m.bytes <= still_bytes + 2 * churned, (m.bytes, m.files)
    finally:
        stop.set()
        thread.join()
    settled = measure(str(root))
    files = [p for p in root.rglob("*") if p.is_file()]
    assert (settled.bytes, settled.files) == (sum(p.stat().st_size for p in files), len(files))


def test_close_stops_the_worker(sizer, tree):
    s = sizer()
    s.size(str(tree))
    assert s.wait_idle(TIMEOUT)
    thread = s._worker._thread
    assert thread is not None and thread.is_alive()
    s.close()
    assert not thread.is_alive()
    assert s.wait_idle(0)


def test_a_flat_directory_changed_in_the_walks_timestamp_tick_is_measured_again(sizer, tmp_path):
    """The racily-clean guard on the root itself: a flat buffer dir (too many files to track
    one by one) gains a file in the same timestamp tick as the walk, so its mtime does not
    move. The measurement must not be trusted: the next check re-walks it."""
    root = tmp_path / "flat"
    for i in range(100):  # more than the top-level files tracked: only the root's mtime tells
        _write(root / f"h{i:03}", 1)
    age(root)
    os.utime(root)  # the root was modified just now, as during a hashserver's writes
    tick = os.stat(root)
    s = sizer()
    s.size(str(root))
    assert s.wait_idle(TIMEOUT)
    assert s.walks == 1
    _write(root / "late", 5)
    os.utime(root, ns=(tick.st_atime_ns, tick.st_mtime_ns))  # same tick: the mtime did not move
    answer = s.size(str(root))
    assert answer["state"] == "stale" and answer["bytes"] == 100
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(root))["bytes"] == 105


def test_an_old_flat_directory_is_trusted_until_it_changes(sizer, tmp_path):
    root = tmp_path / "flat"
    for i in range(100):
        _write(root / f"h{i:03}", 1)
    age(root)
    s = sizer()
    s.size(str(root))
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(root)) | {"measured": None} == {"bytes": 100, "files": 100, "measured": None, "state": "fresh"}
    assert s.walks == 1
    _write(root / "new", 5)  # moves the root's mtime
    assert s.size(str(root))["state"] == "stale"
    assert s.wait_idle(TIMEOUT)
    assert (s.size(str(root))["bytes"], s.walks) == (105, 2)


# --- the change check's timing, as a poll sees it (issue 14, mutation survivors) ---

def _known(s: Sizer, d: Path) -> dict:
    s.size(str(d))
    assert s.wait_idle(TIMEOUT)
    return s.size(str(d))


def _long_interval() -> float:
    # longer than the test, yet not longer than the monotonic clock has run: a directory
    # just walked (never checked) is checked at its first poll
    return time.monotonic() / 2


def test_within_the_recheck_interval_a_checked_directory_is_trusted(sizer, tmp_path):
    d = tmp_path / "d"
    _write(d / "f", 10)
    age(d)
    s = sizer(recheck_interval=_long_interval())
    assert _known(s, d)["state"] == "fresh"  # checked once: unchanged
    _write(d / "g", 5)
    for _ in range(3):  # no stat of it again until the interval is over: same answer
        answer = s.size(str(d))
        assert (answer["state"], answer["bytes"]) == ("fresh", 10)


def test_a_known_directory_is_walked_again_after_max_age_even_unchanged(sizer, tmp_path):
    d = tmp_path / "d"
    _write(d / "f", 10)
    age(d)
    s = sizer(max_age=0.5, recheck_interval=_long_interval())
    assert _known(s, d)["state"] == "fresh"
    time.sleep(0.6)
    assert s.size(str(d))["state"] == "stale"


def test_a_closed_sizer_never_calls_a_changed_directory_fresh(sizer, tmp_path):
    """No re-walk can be queued any more: every poll checks again and says stale."""
    d = tmp_path / "d"
    _write(d / "f", 10)
    age(d)
    s = sizer(recheck_interval=_long_interval())
    s.size(str(d))
    assert s.wait_idle(TIMEOUT)
    s.close()
    _write(d / "g", 5)
    assert [s.size(str(d))["state"] for _ in range(3)] == ["stale"] * 3


def test_a_failed_directory_being_walked_again_is_pending(sizer, tmp_path):
    walker = GatedWalker()
    s = sizer(walker=walker)
    missing = tmp_path / "later"
    s.size(str(missing))
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(missing))["state"] == "error"
    failed = s.size(str(missing))
    missing.mkdir()
    walker.gate.clear()
    walker.entered.clear()
    # asked again: pending, and still saying when and why the last walk failed
    assert s.size(str(missing), refresh=True) == failed | {"state": "pending"}
    assert failed["error"] == "FileNotFoundError: No such file or directory"
    assert walker.entered.wait(TIMEOUT)
    held = s.size(str(missing))  # the re-walk is running: no numbers yet, none made up
    assert (held["state"], held["bytes"]) == ("pending", None)
    walker.gate.set()
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(missing))["bytes"] == 0


def test_a_signature_covers_every_tracked_path_and_none_once_the_root_is_gone(tree, tmp_path):
    from seamless_service.agent.sizer import signature_of
    m = measure(str(tree))
    assert signature_of(str(tree), m.tracked) == m.signature
    shutil.rmtree(tree / "sub" / "deep")  # a tracked subdirectory vanishes: a change, the root is still there
    gone = signature_of(str(tree), m.tracked)
    assert isinstance(gone, int) and gone != m.signature
    with open(tree / "a.bin", "ab") as f:  # and a tracked file listed after it grows
        f.write(b"more")
    assert signature_of(str(tree), m.tracked) not in (gone, m.signature, None)
    empty = tmp_path / "empty-root"
    empty.mkdir()
    tracked = measure(str(empty)).tracked
    empty.rmdir()
    assert signature_of(str(empty), tracked) is None


class _Clock:
    """The sizer module's view of `time`, with a monotonic clock the test moves."""

    def __init__(self, now: float):
        self.now = now
        self.time, self.time_ns = time.time, time.time_ns

    def monotonic(self) -> float:
        return self.now


def test_a_swapped_symlink_is_followed_from_ten_seconds_on(sizer, tmp_path, monkeypatch):
    """A poll asks for the same directories every time, so a resolved path is remembered
    for 10 s: a symlink swapped under a data dir shows that late, and no later."""
    import seamless_service.agent.sizer as sizer_module
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a / "f", 1)
    _write(b / "f", 2)
    age(a)
    age(b)
    link = tmp_path / "link"
    link.symlink_to(a)
    clock = _Clock(1000.0)
    monkeypatch.setattr(sizer_module, "time", clock)
    s = sizer()
    assert _known(s, link)["bytes"] == 1
    link.unlink()
    link.symlink_to(b)
    clock.now = 1009.75
    assert s.size(str(link))["bytes"] == 1
    clock.now = 1010.0
    assert s.size(str(link))["state"] == "pending"  # b, not known yet
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(link))["bytes"] == 2


# --- after a clear, at the limits, and what a failed walk says (issue 14) ---

def test_after_a_clear_below_is_forgotten_above_is_rechecked_beside_is_kept(sizer, tmp_path):
    top = tmp_path / "buffers"
    for name in ("proj", "proj/STAGE-a", "proj2", "pro"):
        _write(top / name / "f", 10)
    age(top)
    s = sizer(recheck_interval=_long_interval())
    for name in ("", "proj", "proj/STAGE-a", "proj2", "pro"):
        assert _known(s, top / name)["state"] == "fresh", name
    # a clear empties proj (nothing else writes there meanwhile)
    shutil.rmtree(top / "proj")
    (top / "proj").mkdir()
    walks = s.walks
    s.forget_below(str(top / "proj"))
    now = s.size(str(top / "proj"))
    assert (now["state"], now["bytes"], now["files"]) == ("fresh", 0, 0)  # measured at once
    assert s.walks == walks  # inline, not by the worker
    assert s.size(str(top / "proj" / "STAGE-a"))["state"] == "pending"  # forgotten
    # beside it, names that start alike: untouched
    assert s.size(str(top / "proj2"))["state"] == s.size(str(top / "pro"))["state"] == "fresh"
    above = s.size(str(top))
    assert (above["state"], above["bytes"]) == ("stale", 40)  # its total included proj
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(top))["bytes"] == 20


def test_a_cleared_directory_is_measured_inline_up_to_the_small_limit(sizer, tmp_path):
    from seamless_service.agent.sizer import SMALL_ENTRIES
    s = sizer()
    for count, expected in ((SMALL_ENTRIES, "fresh"), (SMALL_ENTRIES + 1, "pending")):
        d = tmp_path / f"d{count}"
        d.mkdir()
        for i in range(count):
            (d / f"{i}").touch()
        s.forget_below(str(d))
        assert s.size(str(d))["state"] == expected, count
    assert s.wait_idle(TIMEOUT)


def test_a_clear_while_others_write_is_not_trusted(sizer, tmp_path):
    """quiet=False: timestamps just set may hide a write in the same tick: re-walked."""
    d = tmp_path / "d"
    d.mkdir()
    s = sizer()
    s.forget_below(str(d), quiet=False)
    assert s.size(str(d))["state"] == "stale"
    assert s.wait_idle(TIMEOUT)


def test_top_level_files_growing_in_place_are_tracked_up_to_64(sizer, tmp_path):
    """A database dir holds few files that grow without touching a directory mtime; past 64
    top-level files (a flat buffer dir) none is tracked, and max_age catches it."""
    s = sizer()
    for count, seen in ((64, True), (65, False)):
        d = tmp_path / f"flat{count}"
        for i in range(count):
            _write(d / f"{i:03}", 1)
        age(d)
        assert _known(s, d)["state"] == "fresh"
        with open(d / "000", "ab") as f:
            f.write(b"grown")
        age(d)
        assert (s.size(str(d))["state"] == "stale") is seen, count
        assert s.wait_idle(TIMEOUT)


def test_subdirectories_tracked_are_capped_at_max_tracked(tmp_path):
    root = tmp_path / "r"
    for i in range(5):
        (root / f"s{i}").mkdir(parents=True)
    tracked = measure(str(root), max_tracked=3).tracked.split("\0")
    assert sum(t.startswith("d:") for t in tracked) == 1 + 3  # the root and 3 subdirectories
    assert sum(t.startswith("d:") for t in measure(str(root)).tracked.split("\0")) == 1 + 5


def test_a_failed_walk_says_why_in_one_line(sizer, tmp_path):
    s = sizer()
    s.size(str(tmp_path / "missing"))

    def broken(path, stop):
        raise ValueError("walker bug")
    t = sizer(walker=broken)
    t.size(str(tmp_path))
    assert s.wait_idle(TIMEOUT) and t.wait_idle(TIMEOUT)
    gone = s.size(str(tmp_path / "missing"))
    assert gone == {"bytes": None, "files": None, "measured": gone["measured"], "state": "error",
                    "error": "FileNotFoundError: No such file or directory"}
    assert t.size(str(tmp_path))["error"] == "ValueError: walker bug"
    assert (s.walks, t.walks) == (1, 1)


def test_unreadable_subdirectories_are_counted_as_skipped(sizer):
    """As another user (the agent need not be root): what it cannot read is counted, the
    rest summed; an unreadable root is an error."""
    top = Path(tempfile.mkdtemp(prefix="seamless-sizer-perm-"))
    try:
        top.chmod(0o755)
        _write(top / "root" / "ok" / "f", 5)
        _write(top / "root" / "locked1" / "f", 7)
        _write(top / "root" / "locked2" / "f", 7)
        _write(top / "closed" / "f", 1)
        _write(top / "root" / "listonly" / "g1", 1)  # may be listed, not looked into
        _write(top / "root" / "listonly" / "g2", 1)
        (top / "root" / "listonly").chmod(0o744)
        _write(top / "ok-too" / "f", 1)
        (top / "ok-too").chmod(0o755)
        (top / "ok-too" / "f").chmod(0o644)
        for path in (top / "root", top / "root" / "ok", top / "root" / "ok" / "f"):
            path.chmod(0o755)
        for path in (top / "root" / "locked1", top / "root" / "locked2", top / "closed"):
            path.chmod(0o700)
        age(top)
        s = sizer()
        os.setresuid(65534, 65534, 0)  # every thread's, the sizer's worker too
        try:
            m = measure(str(top / "root"))
            with pytest.raises(PermissionError):
                measure(str(top / "closed"))
            s.size(str(top / "root"))
            s.size(str(top / "ok-too"))
            assert s.wait_idle(TIMEOUT)
        finally:
            os.setresuid(0, 0, 0)
        assert (m.bytes, m.files, m.skipped) == (5, 1, 4)  # 2 unreadable dirs, 2 unstattable files
        answer = s.size(str(top / "root"))
        assert (answer["bytes"], answer["files"], answer["skipped"]) == (5, 1, 4)
        assert "skipped" not in s.size(str(top / "ok-too"))  # only said when there are some
    finally:
        shutil.rmtree(top)


def test_a_clear_deeper_than_the_tracked_depth_still_updates_the_totals_above(sizer, tmp_path):
    """The cleared directory's mtime is below what `top` tracks: only the mark forget_below
    sets on the directories above makes them re-walked."""
    top = tmp_path / "top"
    _write(top / "proj" / "STAGE-a" / "prefix" / "f", 10)
    _write(top / "other", 1)
    age(top)
    s = sizer(recheck_interval=_long_interval())
    assert _known(s, top)["bytes"] == 11
    (top / "proj" / "STAGE-a" / "prefix" / "f").unlink()
    s.forget_below(str(top / "proj" / "STAGE-a" / "prefix"))
    assert s.size(str(top))["state"] == "stale"
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(top))["bytes"] == 1
    # the cleared directory's inline measurement counts as its check: trusted for the interval
    _write(top / "proj" / "STAGE-a" / "prefix" / "g", 3)
    cleared = s.size(str(top / "proj" / "STAGE-a" / "prefix"))
    assert (cleared["state"], cleared["bytes"]) == ("fresh", 0)


def test_a_failed_directory_stays_an_error_once_the_sizer_is_closed(sizer, tmp_path):
    s = sizer()
    missing = tmp_path / "missing"
    s.size(str(missing))
    assert s.wait_idle(TIMEOUT)
    s.close()
    missing.mkdir()
    answer = s.size(str(missing), refresh=True)  # no walk can be queued: not "pending" forever
    assert (answer["state"], answer["error"]) == ("error", "FileNotFoundError: No such file or directory")


def test_closing_stops_a_walk_in_progress(sizer, tmp_path):
    """A walk of a huge tree must not hold up the agent's exit: close() tells the walk."""
    entered, told = threading.Event(), []

    def endless(path, stop):
        entered.set()
        told.append(stop.wait(10))  # the real walk checks the same event every 4096 entries
        return measure(path, stop)
    s = sizer(walker=endless)
    s.size(str(tmp_path))
    assert entered.wait(TIMEOUT)
    assert s.wait_idle(0.05) is False  # the walk is still running
    started = time.monotonic()
    s.close()
    assert told == [True] and time.monotonic() - started < 10


def test_a_walk_that_started_before_a_clear_does_not_undo_it(sizer, tmp_path, monkeypatch):
    """The worker's walk read the directory before the clear and finishes after it: the
    clear's own inline measurement (0 B) is newer and stays."""
    import seamless_service.agent.sizer as sizer_module
    real = sizer_module.measure
    gate, walked = threading.Event(), threading.Event()

    def held(path, stop=None, **kw):
        m = real(path, stop, **kw)
        if stop is not None:  # the worker's walk (the inline one passes no stop event)
            walked.set()
            assert gate.wait(TIMEOUT)
        return m
    monkeypatch.setattr(sizer_module, "measure", held)
    d = tmp_path / "d"
    _write(d / "f", 10)
    age(d)
    s = sizer()
    s.size(str(d))
    assert walked.wait(TIMEOUT)  # measured 10 B, not yet stored
    (d / "f").unlink()
    s.forget_below(str(d))
    gate.set()
    assert s.wait_idle(TIMEOUT)
    answer = s.size(str(d))
    assert (answer["state"], answer["bytes"]) == ("fresh", 0)


def test_a_clear_touches_no_sibling_whose_name_differs_only_at_the_end(sizer, tmp_path):
    """`data`, `dataX` and `data ` are three directories: clearing one leaves the others'
    sizes alone (no forgetting, no re-walk)."""
    top = tmp_path / "top"
    names = ("data/sub", "dataX", "data ")
    for name in names:
        _write(top / name / "f", 10)
    age(top)
    s = sizer(recheck_interval=_long_interval())
    for name in names:
        assert _known(s, top / name)["state"] == "fresh", name
    for cleared in names:
        (top / cleared / "f").unlink(missing_ok=True)
        s.forget_below(str(top / cleared))
        for other in names:
            answer = s.size(str(top / other))
            assert answer["state"] == "fresh", (cleared, other)
            assert answer["bytes"] == (0 if names.index(other) <= names.index(cleared) else 10), (cleared, other)


def test_an_inline_measurement_keeps_the_cache_bound_evicting_the_least_recent(sizer, tmp_path):
    s = sizer(max_entries=2, recheck_interval=_long_interval())
    for name in ("a", "b"):
        _write(tmp_path / name / "f", 1)
        age(tmp_path / name)
        assert _known(s, tmp_path / name)["state"] == "fresh"
    (tmp_path / "c").mkdir()
    s.forget_below(str(tmp_path / "c"))  # measured inline: the third entry
    assert len(s) == 2
    assert s.size(str(tmp_path / "c"))["state"] == "fresh"
    assert s.size(str(tmp_path / "b"))["state"] == "fresh"
    assert s.size(str(tmp_path / "a"))["state"] == "pending"  # the least recently used went
    assert s.wait_idle(TIMEOUT)


def test_a_top_level_file_grown_with_its_mtime_kept_is_still_noticed(sizer, tmp_path):
    """A database file's size is tracked as well as its mtime: a writer that keeps the
    mtime (a restore, `cp -p`) still changes what the poll says."""
    d = tmp_path / "db"
    _write(d / "seamless.db", 100)
    age(d)
    s = sizer()
    assert _known(s, d)["bytes"] == 100
    before = os.stat(d / "seamless.db")
    with open(d / "seamless.db", "ab") as f:
        f.write(b"x" * 50)
    os.utime(d / "seamless.db", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert s.size(str(d))["state"] == "stale"
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(d))["bytes"] == 150


def test_a_walk_checks_the_stop_flag_every_4096_entries(fast_tmp):
    """Closing must be able to end a walk of a million-file directory: the walk looks at the
    stop flag once per 4096 entries (a cheap check, rarely)."""
    from seamless_service.agent.sizer import STOP_CHECK_EVERY, WalkStopped
    stop = threading.Event()
    stop.set()
    d = fast_tmp / "many"
    d.mkdir()
    for i in range(STOP_CHECK_EVERY - 1):
        (d / f"{i}").touch()
    assert measure(str(d), stop).files == STOP_CHECK_EVERY - 1  # never got to look
    (d / "one-more").touch()
    with pytest.raises(WalkStopped):
        measure(str(d), stop)


def test_a_recent_subdirectory_makes_the_measurement_racy(sizer, tmp_path):
    """Only a subdirectory was touched in the walk's timestamp tick (the root is old): the
    measurement is still re-done at the next check."""
    root = tmp_path / "r"
    _write(root / "sub" / "f", 3)
    age(root)
    os.utime(root / "sub")  # now
    s = sizer()
    s.size(str(root))
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(root))["state"] == "stale"
    assert s.wait_idle(TIMEOUT)


@pytest.fixture
def bind_mount():
    mounted: list[Path] = []

    def bind(source: Path, target: Path) -> None:
        done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
        mounted.append(target)
    yield bind
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


def test_a_bind_mount_loop_is_walked_once(tmp_path, bind_mount):
    """Symlinks are not followed, but a bind mount is a real directory: the (dev, inode) of
    every directory walked cuts the loop, and nothing is counted twice."""
    root = tmp_path / "r"
    for i in range(20):
        _write(root / "a" / f"f{i:02}", 1)
    (root / "a" / "again").mkdir()
    (root / "b" / "to-root").mkdir(parents=True)
    bind_mount(root / "a", root / "a" / "again")
    bind_mount(root, root / "b" / "to-root")
    m = measure(str(root))
    assert (m.bytes, m.files) == (20, 20)


def test_a_recent_top_level_file_makes_the_measurement_racy(sizer, tmp_path):
    root = tmp_path / "db"
    _write(root / "seamless.db", 3)
    age(root)
    os.utime(root / "seamless.db")  # now; the directory itself is old
    s = sizer()
    s.size(str(root))
    assert s.wait_idle(TIMEOUT)
    assert s.size(str(root))["state"] == "stale"
    assert s.wait_idle(TIMEOUT)


def test_a_file_vanishing_mid_walk_leaves_the_rest_of_its_directory_counted(fast_tmp):
    """A file deleted between its directory's listing and its stat is skipped, and the walk
    goes on with the rest of that directory (the churn test above, made deterministic: the
    files go when the walk looks at its stop flag, after 4096 entries, while the listing it
    is reading still names them)."""
    from seamless_service.agent.sizer import STOP_CHECK_EVERY

    d = fast_tmp / "big"
    for i in range(STOP_CHECK_EVERY + 1000):
        _write(d / f"file-{i:05d}", 0)
        if i % 51 == 0:  # made among the files: spread through the listing (tmpfs lists by age)
            _write(d / f"kept-{i:05d}" / "k", 10)
    kept = len(list(d.glob("kept-*")))

    class DeletingStop(threading.Event):
        """The stop flag, read once per 4096 entries: deletes every file-* (not stopping)."""

        def is_set(self) -> bool:
            for path in d.glob("file-*"):
                path.unlink()
            return False

    m = measure(str(d), DeletingStop())
    assert not list(d.glob("file-*"))  # the flag was read: the walk went past 4096 entries
    assert (m.bytes, m.skipped) == (kept * 10, 0)  # every kept-* directory was walked
    assert m.files < STOP_CHECK_EVERY + 1000 + kept  # some of the deleted files were not counted
