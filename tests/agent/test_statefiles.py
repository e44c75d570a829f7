"""agent/statefiles.py against the real rhl-ps on the same files.

Every case of rhl-ps's status derivation (status x pid x liveness) is written as a real state file;
our row must equal rhl-ps's row field for field, except for the deliberate corrections
(#15 unusable pids, #16 starting with a dead pid), where both sides are pinned.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from seamless_service.agent import statefiles
from tests.support.processes import dead_pid

ALIVE = os.getpid()  # the test process: alive for us and for the rhl-ps subprocess


DEAD = dead_pid()
HUGE = 99999999999999999999

# name -> (state data, ours (status, live), rhl-ps (status, live) or None when equal)
CASES: dict[str, tuple[dict, tuple, tuple | None]] = {
    "status-missing": ({"pid": ALIVE}, ("failed", None), None),
    "status-null": ({"status": None, "pid": ALIVE}, ("failed", None), None),
    "status-number": ({"status": 5, "pid": ALIVE}, ("failed", None), None),
    "starting-no-pid": ({"status": "starting"}, ("starting", None), None),
    "starting-pid-text": ({"status": "starting", "pid": "abc"}, ("starting", None), None),
    "starting-pid-bool": ({"status": "starting", "pid": True}, ("starting", None), None),
    "failed-alive": ({"status": "failed", "pid": ALIVE}, ("failed", None), None),
    "failed-dead": ({"status": "failed", "pid": DEAD}, ("failed", None), None),
    "dry-run": ({"dry_run": True, "workdir": "/w", "command": "x"}, ("failed", None), None),
    "dry-run-running": ({"dry_run": True, "status": "running", "pid": ALIVE}, ("running", None), None),
    "running-alive": ({"status": "running", "pid": ALIVE, "port": 1234}, ("running", True), None),
    "running-alive-str": ({"status": "running", "pid": str(ALIVE)}, ("running", True), None),
    "running-alive-float": ({"status": "running", "pid": float(ALIVE)}, ("running", True), None),
    "running-dead": ({"status": "running", "pid": DEAD}, ("stale", False), None),
    "running-no-pid": ({"status": "running"}, ("stale", None), None),
    "running-pid-text": ({"status": "running", "pid": "abc"}, ("stale", None), None),
    "starting-alive": ({"status": "starting", "pid": ALIVE}, ("starting", True), None),
    "stale-alive": ({"status": "stale", "pid": ALIVE}, ("stale", True), None),
    "stale-dead": ({"status": "stale", "pid": DEAD}, ("stale", False), None),
    "other-alive": ({"status": "paused", "pid": ALIVE}, ("paused", True), None),
    "other-no-pid": ({"status": "paused"}, ("paused", None), None),
    # deliberate corrections
    "c16-starting-dead": ({"status": "starting", "pid": DEAD}, ("failed", False), ("starting", False)),
    "c15-running-pid-0": ({"status": "running", "pid": 0}, ("stale", False), ("running", True)),
    "c15-running-pid-minus-1": ({"status": "running", "pid": -1}, ("stale", False), ("running", True)),
    "c15-running-pid-fraction": ({"status": "running", "pid": ALIVE + 0.5}, ("stale", False), ("running", True)),
    "c15-starting-pid-0": ({"status": "starting", "pid": 0}, ("failed", False), ("starting", True)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_derive_status_table(name):
    data, ours, _ = CASES[name]
    assert statefiles.derive_status(data) == ours


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_status_never_probes(name):
    data, _, _ = CASES[name]
    raw = data.get("status")
    assert statefiles.derive_status(data, check_pid=False) == (raw if isinstance(raw, str) else "failed", None)


def test_huge_pid_is_unusable_not_a_crash(sandbox):
    data = {"status": "running", "pid": HUGE}
    assert statefiles.derive_status(data) == ("stale", False)
    sandbox.write_state("huge", data)
    result = sandbox.run_helper("rhl-ps", "--json")
    assert result.returncode == 1 and "OverflowError" in result.stderr  # the defect we fix (#15)
    # derived alone it is stale, but a row carrying it could not be sent (msgpack holds 64
    # bits): the row is an error row like any other unusable file (issue 8, item 3)
    row = statefiles.server_row(sandbox.server_dir / "huge.json")
    assert row["status"] == "error" and ".pid: an integer beyond the 64-bit range" in row["error"]


def _write_cases(sandbox) -> None:
    for name, (data, _, _) in CASES.items():
        sandbox.write_state(name, data)


def test_rows_equal_rhl_ps_except_corrections(sandbox):
    _write_cases(sandbox)
    theirs = {row["key"]: row for row in sandbox.helper_ndjson("rhl-ps", "--json")}
    paths = statefiles.list_state_files(sandbox.server_dir)
    assert [p.stem for p in paths] == list(theirs)  # same files, same order
    for path in paths:
        ours = statefiles.server_row(path)
        data, expected, rhl = CASES[path.stem]
        theirs_row = theirs[path.stem]
        assert (ours["status"], ours["live"]) == expected, path.stem
        assert (theirs_row["status"], theirs_row["live"]) == (rhl or expected), path.stem
        strip = lambda row: {k: v for k, v in row.items() if k not in ("status", "live")}  # noqa: E731
        assert strip(ours) == strip(theirs_row), path.stem
        assert ("json_status" in ours) == (data.get("status") is not None)
        assert ours["meta"] == {}


def test_no_status_rows_equal_rhl_ps_exactly(sandbox):
    _write_cases(sandbox)
    theirs = sandbox.helper_ndjson("rhl-ps", "--no-status", "--json")
    ours = [statefiles.server_row(p, check_pid=False) for p in statefiles.list_state_files(sandbox.server_dir)]
    assert ours == theirs


def test_meta_is_kept(sandbox):
    meta = {"service": "hashserver", "cluster": "c1"}
    path = sandbox.write_state("with-meta", {"status": "failed", "meta": meta})
    assert statefiles.server_row(path)["meta"] == meta
    assert sandbox.helper_ndjson("rhl-ps", "--json")[0]["meta"] == meta


# -- unusable files ---------------------------------------------------------------------

def _bad_file(sandbox, kind: str) -> Path:
    if kind == "malformed":
        return sandbox.write_state("bad", None, raw='{"status": "running",')
    if kind == "list":
        return sandbox.write_state("bad", None, raw="[1, 2]")
    if kind == "directory":
        # We run as root, so chmod 000 would not stop a read; a directory named
        # bad.json is unreadable as a file for every user.
        path = sandbox.server_dir / "bad.json"
        path.mkdir(parents=True)
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,prefix", [
    ("malformed", "malformed JSON in "),
    ("list", "state file must contain a JSON object: "),
    ("directory", "could not read "),
])
def test_unusable_file_is_an_error_row_with_the_helpers_message(sandbox, kind, prefix):
    path = _bad_file(sandbox, kind)
    row = statefiles.server_row(path)
    assert row["key"] == "bad" and row["status"] == "error" and row["live"] is None
    assert row["error"].startswith(prefix + str(path))
    result = sandbox.run_helper("rhl-ps", "--json")
    assert result.returncode == 1
    assert result.stderr == f"rhl-ps: {row['error']}\n"  # same words as the helper
    client = statefiles.client_row(path)
    assert client["status"] == "error" and client["error"] == row["error"]


def test_undecodable_file_is_an_error_row(sandbox):
    path = sandbox.server_dir / "latin.json"
    sandbox.server_dir.mkdir(parents=True)
    path.write_bytes(b'\xff{"status": "running"}')
    row = statefiles.server_row(path)
    assert row["status"] == "error" and row["error"].startswith(f"could not read {path}")
    # rhl-ps dies with a traceback on this file
    result = sandbox.run_helper("rhl-ps", "--json")
    assert result.returncode == 1 and "UnicodeDecodeError" in result.stderr


def test_vanished_file_is_an_error_row(tmp_path):
    path = tmp_path / "gone.json"
    row = statefiles.server_row(path)
    assert row["status"] == "error" and "vanished" in row["error"]
    assert statefiles.client_row(path)["status"] == "error"
    assert statefiles.read_state(path) is None


# -- listing and client rows ------------------------------------------------------------

def test_listing_matches_rhl_ps(sandbox):
    for key in ("b", "a", "A", "a.b", "a_b", "-x", "sp ace"):
        sandbox.write_state(key, {"status": "failed"})
    (sandbox.server_dir / "a.tmp").write_text("{}")
    (sandbox.server_dir / ".a.XYZ.tmp").write_text("{}")
    (sandbox.server_dir / "a.log").write_text("log\n")
    keys = sandbox.run_helper("rhl-ps", "--key").stdout.splitlines()
    assert [p.stem for p in statefiles.list_state_files(sandbox.server_dir)] == keys
    assert "sp ace" in keys and "a" in keys


def test_missing_directory_lists_nothing(tmp_path):
    assert statefiles.list_state_files(tmp_path / "nope") == []


def test_client_rows_equal_rhl_ps_client(sandbox):
    files = {
        "plain": {"hostname": "127.0.0.1", "port": 4000},
        "named": {"hostname": "front.example.org", "ssh_hostname": "front-ssh", "port": 4001,
                  "meta": {"service": "database"}},
        "tunnel": {"hostname": "localhost", "port": 5000, "tunneled-host": "hpc",
                   "tunneled-port": 6000, "tunneled-network-interface": "0.0.0.0",
                   "dashboard_port": 5001, "tunneled-dashboard_port": 6001},
        "stopped": {"hostname": "127.0.0.1", "port": 4002, "status": "stale"},
        "empty": {},
    }
    for key, data in files.items():
        sandbox.write_state(key, data, side="client")
    theirs = sandbox.helper_ndjson("rhl-ps", "--client", "--json")
    ours = [statefiles.client_row(p) for p in statefiles.list_state_files(sandbox.client_dir)]
    assert ours == theirs
    by_key = {row["key"]: row for row in ours}
    assert by_key["tunnel"]["ssh_host"] == "hpc"
    assert by_key["named"]["ssh_host"] == "front-ssh"
    assert "status" not in by_key["plain"]


# --- through the ps op, as a client sees it (issue 14) ---

def _ps_row(ctx, key: str) -> dict:
    from tests.support.agent import call
    [row] = [r for r in call(ctx, "ps")["rows"] if r["key"] == key]
    return row


def test_a_state_file_rewritten_in_place_at_the_same_size_is_not_served_stale(sandbox, make_ctx):
    """The launcher's dry-run path writes in place: same inode, and a new content of the same
    size must still be read again, not answered from the agent's cache."""
    ctx = make_ctx()
    path = sandbox.write_state("svc", {"status": "failed", "port": 7001})
    before = os.stat(path)
    assert _ps_row(ctx, "svc")["port"] == 7001
    time.sleep(0.05)  # a later timestamp tick, as any real rewrite is
    with open(path, "r+") as f:  # in place: same inode
        f.write(json.dumps({"status": "failed", "port": 7002}))
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert _ps_row(ctx, "svc")["port"] == 7002
    # rewritten again and its mtime set back to what the cache saw (a writer that keeps
    # mtime, like `cp -p` or a restore): only ctime tells, and it is enough
    time.sleep(0.05)
    with open(path, "r+") as f:
        f.write(json.dumps({"status": "failed", "port": 7003}))
    os.utime(path, ns=(after.st_atime_ns, after.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == after.st_mtime_ns
    assert _ps_row(ctx, "svc")["port"] == 7003


def test_an_unchanged_state_file_is_served_from_the_cache(sandbox, make_ctx, monkeypatch):
    ctx = make_ctx()
    sandbox.write_state("svc", {"status": "failed", "port": 7001})
    assert _ps_row(ctx, "svc")["port"] == 7001
    reads = []
    real = statefiles.read_sendable
    monkeypatch.setattr(statefiles, "read_sendable", lambda p: reads.append(p) or real(p))
    assert _ps_row(ctx, "svc")["port"] == 7001
    assert reads == []


@pytest.fixture
def zombie():
    """A child that exited and is not reaped: kill(pid, 0) still succeeds on it."""
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never became a zombie"
        time.sleep(0.01)
    os.kill(proc.pid, 0)  # the helpers' probe calls it alive
    yield proc.pid
    proc.wait()


def test_ps_shows_a_zombie_service_as_stale(sandbox, make_ctx, zombie):
    ctx = make_ctx()
    sandbox.write_state("svc", {"status": "running", "pid": zombie, "port": 7001})
    sandbox.write_state("boot", {"status": "starting", "pid": zombie})
    row = _ps_row(ctx, "svc")
    assert row["status"] == "stale"
    assert _ps_row(ctx, "boot")["status"] == "failed"


# --- messages, limits and caches as a client sees them (issue 14, mutation survivors) ---

def test_every_unusable_file_says_what_is_wrong_in_full(sandbox):
    """The error row's whole message, per way a state file can be unusable."""
    d = sandbox.server_dir
    d.mkdir(parents=True, exist_ok=True)
    malformed = sandbox.write_state("bad", None, raw='{"status": "running",')
    try:
        json.loads('{"status": "running",')
    except json.JSONDecodeError as exc:
        why = str(exc)
    assert statefiles.server_row(malformed)["error"] == f"malformed JSON in {malformed}: {why}"
    listed = sandbox.write_state("list", None, raw="[1]")
    assert statefiles.server_row(listed)["error"] == f"state file must contain a JSON object: {listed}"
    folder = d / "dir.json"
    folder.mkdir()
    assert statefiles.server_row(folder)["error"] == f"could not read {folder}: [Errno 21] Is a directory: '{folder}'"
    digits = sandbox.write_state("digits", None, raw='{"pid": ' + "9" * 5000 + "}")
    assert statefiles.server_row(digits)["error"] == (
        f"malformed JSON in {digits}: Exceeds the limit (4300 digits) for integer string conversion: "
        "value has 5000 digits")
    deep = sandbox.write_state("deep", None, raw='{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert statefiles.server_row(deep)["error"] == f"malformed JSON in {deep}: nested too deeply to parse"
    deep.unlink()  # the sandbox's clean-up reads every state file
    surrogate = sandbox.write_state("surrogate", None, raw='{"name": "\\ud800"}')
    assert statefiles.server_row(surrogate)["error"].startswith("state file holds a value the agent cannot send (")
    assert statefiles.server_row(surrogate)["error"].endswith(f"): {surrogate}")


def test_a_state_file_of_exactly_the_maximum_size_is_read_one_byte_more_is_not(sandbox):
    limit = statefiles.MAX_STATE_BYTES
    body = '{"status": "failed", "port": 7001}'
    at_limit = sandbox.write_state("at", None, raw=body + " " * (limit - len(body)))
    assert os.path.getsize(at_limit) == limit
    assert statefiles.server_row(at_limit)["port"] == 7001
    over = sandbox.write_state("over", None, raw=body + " " * (limit + 1 - len(body)))
    assert statefiles.server_row(over)["error"] == (
        f"state file of {limit + 1} bytes is larger than the {limit} bytes a state file may hold: {over}")


def test_error_rows_carry_exactly_key_status_live_error_meta(tmp_path):
    gone = tmp_path / "gone.json"
    message = f"state file vanished while reading: {gone}"
    expected = {"key": "gone", "status": "error", "live": None, "error": message, "meta": {}}
    assert statefiles.server_row(gone) == expected
    assert statefiles.client_row(gone) == expected
    assert statefiles.client_row(gone, cache=statefiles.StateCache()) == expected
    assert statefiles.server_row(gone, cache=statefiles.StateCache()) == expected


def test_a_file_named_just_dot_json_keeps_the_helpers_key(sandbox):
    """rhl-ps lists `.json` too (glob matches dot files) and keys it by Path.stem: `.json`."""
    sandbox.write_state("", {"status": "failed"})
    assert sandbox.run_helper("rhl-ps", "--key").stdout.splitlines() == [".json"]
    [path] = statefiles.list_state_files(sandbox.server_dir)
    assert statefiles.server_row(path)["key"] == ".json"
    sandbox.write_state("x", {"status": "failed"})  # and an ordinary name loses its suffix
    assert [statefiles.server_row(p)["key"] for p in statefiles.list_state_files(sandbox.server_dir)] == [".json", "x"]


def test_an_unusable_file_stays_an_error_row_from_the_cache_and_recovers_when_fixed(sandbox, make_ctx):
    ctx = make_ctx()
    path = sandbox.write_state("svc", None, raw='{"status": ')
    first = _ps_row(ctx, "svc")
    assert first["status"] == "error" and first["error"].startswith("malformed JSON in ")
    assert _ps_row(ctx, "svc") == first  # unchanged file: the same error, from the cache
    time.sleep(0.05)
    path.write_text(json.dumps({"status": "failed", "port": 7001}))
    assert _ps_row(ctx, "svc")["port"] == 7001


def test_client_rows_through_the_agent_are_the_files_own_and_follow_changes(sandbox, make_ctx):
    ctx = make_ctx()
    path = sandbox.write_state("c", {"hostname": "127.0.0.1", "port": 4000}, side="client")
    rows = call_ps(ctx, side="client")
    assert [(r["key"], r["host"], r["port"]) for r in rows] == [("c", "127.0.0.1", 4000)]
    time.sleep(0.05)
    path.write_text(json.dumps({"hostname": "127.0.0.1", "port": 4001}))
    assert [r["port"] for r in call_ps(ctx, side="client")] == [4001]
    path.write_text("[]")
    [row] = call_ps(ctx, side="client")
    assert row["status"] == "error" and row["error"] == f"state file must contain a JSON object: {path}"


def call_ps(ctx, **args) -> list[dict]:
    from tests.support.agent import call
    return call(ctx, "ps", **args)["rows"]


def test_the_state_cache_is_bounded_and_rereads_after_it_is_emptied(tmp_path, monkeypatch):
    """At exactly MAX_ENTRIES files the cache starts over (memory stays bounded); a file
    read again after that is parsed again, and still answers right."""
    cache = statefiles.StateCache()
    cache.MAX_ENTRIES = 2
    paths = []
    for n in range(3):
        paths.append(tmp_path / f"s{n}.json")
        paths[-1].write_text(json.dumps({"port": n}))
    reads = []
    real = statefiles.read_sendable
    monkeypatch.setattr(statefiles, "read_sendable", lambda p: reads.append(os.fspath(p)) or real(p))
    assert [cache.read(p)["port"] for p in paths[:2]] == [0, 1]
    assert cache.read(paths[0])["port"] == 0 and len(reads) == 2  # cached
    assert cache.read(paths[2])["port"] == 2  # the third: over the bound, the cache starts over
    assert cache.read(paths[0])["port"] == 0
    assert reads == [os.fspath(p) for p in (paths[0], paths[1], paths[2], paths[0])]


def test_the_state_cache_forgets_a_removed_file_and_reports_an_unreachable_one(tmp_path):
    cache = statefiles.StateCache()
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"port": 1}))
    assert cache.read(path) == {"port": 1}
    path.unlink()
    assert cache.read(path) is None
    path.write_text(json.dumps({"port": 2}))  # a new file, perhaps at the same inode
    assert cache.read(path) == {"port": 2}
    below_a_file = tmp_path / "s.json" / "x.json"
    with pytest.raises(statefiles.StateFileError, match=f"^could not read {below_a_file}: .*Not a directory"):
        cache.read(below_a_file)


def test_a_death_is_seen_once_the_liveness_answer_expires(monkeypatch):
    child = subprocess.Popen(["sleep", "60"])
    cache = statefiles.LivenessCache()
    cache.TTL = 60.0
    assert cache.alive(child.pid) is True
    child.kill()
    child.wait()
    assert cache.alive(child.pid) is True  # remembered: a poll's rows share one probe
    cache.TTL = 0.0
    assert cache.alive(child.pid) is False


def test_a_service_of_another_user_is_alive(tmp_path):
    """kill(pid, 0) on another user's process fails with EPERM: it exists, so `running`."""
    # real and effective uid both (kill checks the real one too); the saved uid stays 0
    os.setresuid(65534, 65534, 0)
    try:
        with pytest.raises(PermissionError):
            os.kill(1, 0)
        assert statefiles.derive_status({"status": "running", "pid": 1}) == ("running", True)
    finally:
        os.setresuid(0, 0, 0)


def test_a_zombie_whose_name_holds_a_parenthesis_is_still_seen(sandbox, make_ctx, tmp_path):
    """/proc/PID/stat wraps the command name in parentheses, and the name may hold `) S (`."""
    odd = tmp_path / "x) S (y"
    odd.write_bytes(Path("/bin/true").read_bytes())
    odd.chmod(0o755)
    proc = subprocess.Popen([str(odd)])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "(x) S (y)" in Path(f"/proc/{proc.pid}/stat").read_text()
        sandbox.write_state("svc", {"status": "running", "pid": proc.pid})
        assert _ps_row(make_ctx(), "svc")["status"] == "stale"
    finally:
        proc.wait()


def test_a_rewritten_state_file_is_whole_keeps_its_mode_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """As rhl-stop writes it (json.dumps, key order, no newline), but beside the file
    (so TMPDIR does not matter), with the file's own mode, and nothing else left behind."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    path = tmp_path / "svc.json"
    statefiles.write_state_json(path, {"status": "stale", "pid": 5})
    assert path.read_text() == '{"status": "stale", "pid": 5}'
    assert os.stat(path).st_mode & 0o777 == 0o600  # a new file: private
    path.chmod(0o644)
    statefiles.write_state_json(path, {"pid": 5, "status": "stale"})
    assert path.read_text() == '{"pid": 5, "status": "stale"}'
    assert os.stat(path).st_mode & 0o777 == 0o644
    with pytest.raises(TypeError):
        statefiles.write_state_json(path, {"pid": object()})
    assert path.read_text() == '{"pid": 5, "status": "stale"}'
    assert sorted(os.listdir(tmp_path)) == ["svc.json"]


def test_a_pid_beyond_the_kernels_range_is_not_alive():
    assert statefiles.pid_alive(2**63) is False
    assert statefiles.pid_alive(HUGE) is False


def test_an_unusable_client_file_is_an_error_row_under_its_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[]")
    expected = {"key": "c", "status": "error", "live": None, "meta": {},
                "error": f"state file must contain a JSON object: {path}"}
    assert statefiles.client_row(path) == expected
    assert statefiles.client_row(path, cache=statefiles.StateCache()) == expected


def test_an_unchanged_client_file_is_served_from_the_cache(sandbox, make_ctx, monkeypatch):
    ctx = make_ctx()
    sandbox.write_state("c", {"hostname": "127.0.0.1", "port": 4000}, side="client")
    assert [r["port"] for r in call_ps(ctx, side="client")] == [4000]
    reads = []
    real = statefiles.read_sendable
    monkeypatch.setattr(statefiles, "read_sendable", lambda p: reads.append(p) or real(p))
    assert [r["port"] for r in call_ps(ctx, side="client")] == [4000]
    assert reads == []


def test_the_rows_of_a_poll_share_one_probe_per_pid(sandbox, make_ctx):
    """ps answers liveness from the agent's LivenessCache (one probe per pid per TTL), not
    with a probe per row: a death is seen once that answer expires."""
    from seamless_service.agent.watch import watcher
    ctx = make_ctx()
    child = subprocess.Popen(["sleep", "60"])
    try:
        sandbox.write_state("svc", {"status": "running", "pid": child.pid})
        watcher(ctx).liveness.TTL = 60.0
        assert _ps_row(ctx, "svc")["status"] == "running"
    finally:
        child.kill()
        child.wait()
    assert _ps_row(ctx, "svc")["status"] == "running"  # the shared answer, still within its TTL
    watcher(ctx).liveness.TTL = 0.0
    assert _ps_row(ctx, "svc")["status"] == "stale"
