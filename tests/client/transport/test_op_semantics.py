"""What the ops mean, on every transport (the `transport` fixture: local, agent, ssh).

The values have the same shape everywhere (client/transport/ssh.py's promise); these tests
pin the semantics a caller relies on whichever transport answered: derived statuses, what
a stop leaves behind, rm refusing a running service, a log's tail, clear refusing a path
its policy forbids. Deliberate differences are marked per transport (`differs`,
tests/support/transports.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest

from tests.support.processes import dead_pid
from tests.support.transports import Place, differs
from tests.support.trees import HS
from tests.support.world import DB


def value(result: dict) -> dict:
    assert result["ok"], result
    return result["value"]


def test_ps_derives_the_status_of_each_state_file(transport: Place):
    """Running with a live pid stays running; a dead pid makes running `stale` and starting
    `failed` (#16); pid 0 names no process (#15); failed stays failed."""
    me, dead = os.getpid(), dead_pid()  # the test runs on the host of every transport
    states = {
        "alive": ({"status": "running", "pid": me, "port": 1}, "running"),
        "dead": ({"status": "running", "pid": dead, "port": 1}, "stale"),
        "zero": ({"status": "running", "pid": 0, "port": 1}, "stale"),
        "startdead": ({"status": "starting", "pid": dead}, "failed"),
        "failed": ({"status": "failed", "pid": dead}, "failed"),
    }
    keys = {stem: transport.key(f"ps{stem}") for stem in states}
    for stem, (data, _) in states.items():
        transport.write_state(keys[stem], {**data, "workdir": "/tmp"})
    (ps,) = transport.batch(("ps", {}))
    got = {row["key"]: row["status"] for row in value(ps)["rows"]}
    assert {stem: got.get(key) for stem, key in keys.items()} == {stem: want for stem, (_, want) in states.items()}
    (stale,) = transport.batch(("ps", {"status": "stale"}))
    assert {keys["dead"], keys["zero"]} <= {row["key"] for row in value(stale)["rows"]}
    assert keys["alive"] not in {row["key"] for row in value(stale)["rows"]}


def test_rm_refuses_a_running_service_and_stop_leaves_it_stale(transport: Place):
    key = transport.key("life")
    try:
        state = transport.launch(key)
        (rm,) = transport.batch(("rm", {"keys": [key]}))
        refused = value(rm)["results"][0]
        assert refused["outcome"].startswith("refused: service is running") and refused["pid"] == state["pid"]
        assert (transport.state_dir / f"{key}.json").exists()

        (stop,) = transport.batch(("stop", {"keys": [key, transport.key("nosuchkey")]}))
        stopped, missing = value(stop)["results"]
        assert (stopped["outcome"], stopped["stopped"], stopped["signalled"]) == ("stopped", True, True)
        assert (missing["outcome"], missing["stopped"]) == ("missing state", False)
        left = json.loads((transport.state_dir / f"{key}.json").read_text())
        assert left["status"] == "stale" and left["pid"] == state["pid"]  # rhl-stop's mark, pid kept

        (rm,) = transport.batch(("rm", {"keys": [key], "server": True}))
        assert value(rm)["results"][0]["outcome"] == "removed"
        assert not (transport.state_dir / f"{key}.json").exists()
    finally:
        transport.kill(key)


def test_logs_tail(transport: Place):
    key = transport.key("logs")
    transport.write_state(key, {"status": "stale", "pid": dead_pid(), "workdir": "/tmp"})
    transport.put(transport.state_dir / f"{key}.log", "".join(f"line {i}\n" for i in range(50)))
    (logs,) = transport.batch(("logs", {"key": key, "tail": 3}))
    assert value(logs)["data"] == b"line 47\nline 48\nline 49\n"


def test_clear_refuses_a_system_root(transport: Place):
    (clear,) = transport.batch(("clear", {"path": "/usr"}))
    assert not clear["ok"] and clear["error"]["code"] == "policy_refused", clear
    assert os.listdir("/usr")


def test_clear_refuses_a_folder_below_a_system_root(transport: Place):
    # A folder that does not exist: where the policy does not refuse it, nothing is cleared.
    (clear,) = transport.batch(("clear", {"path": "/usr/seamless-service-test-no-such-folder"}))
    assert not clear["ok"] and clear["error"]["code"] == "policy_refused", clear


MARKER_RULE = "path does not contain required marker file (seamless.db, .HASHSERVER_PREFIX)"


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_clear_refuses_a_folder_without_a_marker_and_keeps_its_files(transport: Place, force: bool):
    """The default policy: a folder of the user's own without seamless.db or
    .HASHSERVER_PREFIX is no data directory of seamless; `force` skips the running-service
    check, never the policy."""
    folder = transport.data / f"nomarker-{transport.name}-{force}"
    try:
        transport.write(folder / "a" / "x", "data")
        transport.write(folder / "y", "data")
        (clear,) = transport.batch(("clear", {"path": str(folder), "force": force}))
        assert not clear["ok"] and clear["error"] == {"code": "policy_refused",
                                                      "message": f"{MARKER_RULE}: {folder}"}, clear
        assert sorted(os.listdir(folder)) == ["a", "y"] and os.listdir(folder / "a") == ["x"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_clear_empties_the_marked_folder_a_symlink_names(transport: Place):
    """Policy and clear concern the directory the path resolves to; the value names it."""
    real = transport.data / f"marked-{transport.name}"
    link = transport.data / f"marked-link-{transport.name}"
    try:
        transport.write(real / DB, "db")
        transport.write(real / "sub" / "x", "data")
        os.symlink(real, link)
        (clear,) = transport.batch(("clear", {"path": str(link)}))
        assert value(clear)["path"] == str(real)
        assert os.listdir(real) == []  # seamless.db is the data itself: cleared too
        assert os.path.islink(link)
    finally:
        shutil.rmtree(real, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


def test_clear_refuses_a_symlink_from_a_marked_folder_to_an_unmarked_one(transport: Place):
    """A stage folder in a marked project that is a link to a folder without a marker: the
    marker is looked for where the path resolves to, and that folder keeps its files."""
    project = transport.data / f"linkproj-{transport.name}"
    unmarked = transport.data / f"unmarked-{transport.name}"
    link = project / "STAGE-s1"
    try:
        transport.write(project / HS, "")
        transport.write(unmarked / "x", "data")
        os.symlink(unmarked, link)
        (clear,) = transport.batch(("clear", {"path": str(link)}))
        assert not clear["ok"] and clear["error"] == {"code": "policy_refused",
                                                      "message": f"{MARKER_RULE}: {link}"}, clear
        assert os.listdir(unmarked) == ["x"] and sorted(os.listdir(project)) == sorted([HS, "STAGE-s1"])
    finally:
        shutil.rmtree(project, ignore_errors=True)
        shutil.rmtree(unmarked, ignore_errors=True)


def test_clear_refuses_a_path_that_resolves_into_a_dot_folder(transport: Place):
    """A link to a marked folder below a dot folder (~/.config, ~/.ssh...): the resolved path
    has a dot-prefixed segment."""
    hidden = transport.data / f".hidden-{transport.name}" / "proj"
    link = transport.data / f"hidden-link-{transport.name}"
    try:
        transport.write(hidden / HS, "")
        transport.write(hidden / "x", "data")
        os.symlink(hidden, link)
        (clear,) = transport.batch(("clear", {"path": str(link)}))
        assert not clear["ok"] and clear["error"] == {
            "code": "policy_refused", "message": f"path must not contain dot-prefixed segments: {link}"}, clear
        assert sorted(os.listdir(hidden)) == sorted([HS, "x"])
    finally:
        shutil.rmtree(hidden.parent, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


@differs("ssh", "rhl-clear counts only the top-level entries it removed entirely, and removes "
                "the marker; the agent counts every entry and keeps the marker (README, "
                "Deliberate differences #21 and `removed N`)")
def test_clear_counts_every_entry_removed_and_keeps_the_marker(transport: Place):
    folder = transport.data / f"clearcount-{transport.name}"
    try:
        for name in (HS, "a/x", "a/y", "b"):
            transport.write(folder / name, "data")
        (clear,) = transport.batch(("clear", {"path": str(folder)}))
        assert value(clear)["removed"] == 4  # a/x, a/y, a, b
        assert os.listdir(folder) == [HS]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
