"""What the ops mean, on every transport (the `transport` fixture: local, agent, ssh).

The values have the same shape everywhere (client/transport/ssh.py's promise); these tests
pin the semantics a caller relies on whichever transport answered: derived statuses, what
a stop leaves behind, rm refusing a running service, a log's tail, clear refusing a path
its policy forbids. Deliberate differences are marked per transport (`differs`,
tests/support/transports.py)."""

from __future__ import annotations

import json
import os
import shutil

from tests.support.processes import dead_pid
from tests.support.transports import Place, differs
from tests.support.trees import HS


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


@differs("ssh", "without rhl-guard only rhl-clear's own check applies: it refuses the system "
                "roots themselves (/usr, /etc...), not the folders below them (here: not found)")
def test_clear_refuses_a_folder_below_a_system_root(transport: Place):
    # A folder that does not exist: where the policy does not refuse it, nothing is cleared.
    (clear,) = transport.batch(("clear", {"path": "/usr/seamless-service-test-no-such-folder"}))
    assert not clear["ok"] and clear["error"]["code"] == "policy_refused", clear


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
