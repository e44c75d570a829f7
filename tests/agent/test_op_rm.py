"""`rm` on real launcher state: removal through rhl-rm, refusal to orphan running services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from seamless_service.agent import procinfo
from seamless_service.agent.context import AgentContext
from seamless_service.agent.dispatch import handle
from seamless_service.protocol import decode_reply, encode_request
from tests.support.processes import alive, dead_pid
from tests.support.services import LauncherSandbox

REFUSED = "refused: service is running (stop it first, or force)"


def call(op: str, **args):
    reply = decode_reply(handle(AgentContext(), encode_request([(op, args)])), expected=1)
    assert reply[0]["ok"], reply[0]
    return reply[0]["value"]


def files(sandbox, key):
    return sandbox.client_dir / f"{key}.json", sandbox.server_dir / f"{key}.json"


@pytest.fixture
def stale(sandbox):
    """Both state files of a stopped service (hand-written: cheaper than launch + rhl-stop)."""
    done = subprocess.Popen(["true"])
    done.wait()  # a pid that is dead by now
    sandbox.write_state("toy-stale", {"workdir": "/tmp/w", "command": "seamless-toy-service", "uid": os.getuid(),
                                      "pid": done.pid, "status": "stale", "port": 1})
    sandbox.write_state("toy-stale", {"hostname": "127.0.0.1", "port": 1}, side="client")


@pytest.fixture
def running(sandbox):
    """A real running service, killed at teardown even if its state file was removed."""
    state = sandbox.launch("toy-run")
    yield state
    info = procinfo.read_proc(state["pid"])
    if info is not None and any("seamless-toy-service" in a for a in info.argv):
        os.killpg(state["pid"], signal.SIGKILL)


def test_rm_really_stopped_service(sandbox):
    state = sandbox.launch("toy-real")
    assert sandbox.run_helper("rhl-stop", "toy-real").stdout.strip() == "toy-real: stopped"
    value = call("rm", keys=["toy-real"])
    client, server = files(sandbox, "toy-real")
    assert value["results"] == [{"key": "toy-real", "outcome": "removed", "removed": [str(client), str(server)]}]
    assert not client.exists() and not server.exists()
    assert os.path.exists(state["log"])  # logs are never removed


def test_rm_stale_service_and_not_found(sandbox, stale):
    client, server = files(sandbox, "toy-stale")
    assert client.exists() and server.exists()
    value = call("rm", keys=["toy-stale", "toy-nothing"])
    assert value["exit_status"] == 0
    removed, missing = value["results"]
    assert removed == {"key": "toy-stale", "outcome": "removed", "removed": [str(client), str(server)]}
    assert missing == {"key": "toy-nothing", "outcome": "not found", "removed": []}
    assert not client.exists() and not server.exists()


def test_rm_refuses_running_service_unless_forced(sandbox, stale, running):
    toy = running
    client, server = files(sandbox, "toy-run")
    value = call("rm", keys=["toy-run", "toy-stale"])
    refused, removed = value["results"]
    assert refused["outcome"] == "refused: service is running (stop it first, or force)"
    assert refused["removed"] == [] and refused["pid"] == toy["pid"]
    assert removed["outcome"] == "removed"
    assert client.exists() and server.exists() and alive(toy["pid"])

    # Alone, nothing runs rhl-rm at all.
    value = call("rm", keys=["toy-run"])
    assert value["exit_status"] is None and value["results"][0]["outcome"].startswith("refused")

    value = call("rm", keys=["toy-run"], force=True)
    (result,) = value["results"]
    assert result["outcome"] == "removed" and result["removed"] == [str(client), str(server)]
    assert f"process {toy['pid']} is still running" in result["warning"]
    assert not client.exists() and not server.exists()


def test_rm_one_side_only(sandbox, stale, running):
    toy = running
    # Removing only the client file of a running service orphans nothing: allowed.
    value = call("rm", keys=["toy-run", "toy-stale"], client=True)
    assert [r["outcome"] for r in value["results"]] == ["removed", "removed"]
    assert value["results"][0]["removed"] == [str(files(sandbox, "toy-run")[0])]
    assert not files(sandbox, "toy-run")[0].exists() and files(sandbox, "toy-run")[1].exists()
    assert not files(sandbox, "toy-stale")[0].exists() and files(sandbox, "toy-stale")[1].exists()
    assert alive(toy["pid"])

    # --server: the running one is refused, the stale one's server file goes.
    value = call("rm", keys=["toy-run", "toy-stale"], server=True)
    assert value["results"][0]["outcome"].startswith("refused")
    assert value["results"][1] == {"key": "toy-stale", "outcome": "removed",
                                   "removed": [str(files(sandbox, "toy-stale")[1])]}
    assert files(sandbox, "toy-run")[1].exists() and not files(sandbox, "toy-stale")[1].exists()

    # Both flags mean both sides, like no flag.
    sandbox.write_state("toy-both", {"status": "stale"})
    sandbox.write_state("toy-both", {"hostname": "127.0.0.1", "port": 1}, side="client")
    value = call("rm", keys=["toy-both"], client=True, server=True)
    assert len(value["results"][0]["removed"]) == 2


def test_rm_helper_error_is_reported_per_key(sandbox, stale):
    # A server "file" that is a directory: rhl-rm cannot unlink it and stops there.
    (sandbox.server_dir / "toy-dir.json").mkdir()
    value = call("rm", keys=["toy-dir", "toy-stale"], server=True)
    assert value["exit_status"] == 1
    broken, later = value["results"]
    assert broken["outcome"].startswith("error: could not remove ") and "toy-dir.json" in broken["outcome"]
    assert later["outcome"].startswith("error: rhl-rm did not process this key")
    assert "could not remove" in value["stderr"]
    assert files(sandbox, "toy-stale")[1].exists()


def test_rm_keys_starting_with_dash_are_not_flags(sandbox, stale):
    client, server = files(sandbox, "toy-stale")
    # Passed through, '--server' would narrow the removal to the server side only: the
    # whole op is refused before rhl-rm runs, and both files stay.
    reply = decode_reply(handle(AgentContext(), encode_request([("rm", {"keys": ["--server", "toy-stale"]})])),
                         expected=1)
    assert reply[0]["ok"] is False and reply[0]["error"]["code"] == "invalid_key"
    assert client.exists() and server.exists()


# ---- what decides "running" for rm (issue 14: mutants of rm.live_service_pid survived)


def test_a_running_state_whose_pid_died_is_removed_without_force(sandbox):
    # a service that died without rhl-stop: its file still says running, nothing runs
    sandbox.write_state("toy-died", {"command": "seamless-toy-service", "uid": os.getuid(),
                                     "pid": dead_pid(), "status": "running", "port": 1})
    value = call("rm", keys=["toy-died"])
    assert value["results"] == [{"key": "toy-died", "outcome": "removed",
                                 "removed": [str(files(sandbox, "toy-died")[1])]}]


def test_a_running_state_whose_pid_is_another_program_is_removed_without_force(sandbox):
    other = subprocess.Popen(["sleep", "60"])  # alive, but not the service the file describes
    try:
        sandbox.write_state("toy-other", {"command": "seamless-toy-service", "uid": os.getuid(),
                                          "pid": other.pid, "status": "running", "port": 1})
        (result,) = call("rm", keys=["toy-other"])["results"]
        assert result["outcome"] == "removed" and "warning" not in result
        assert not files(sandbox, "toy-other")[1].exists() and alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_a_state_file_older_than_its_pids_process_does_not_block_rm(sandbox, running):
    # pid reuse: the process now holding the pid started after the file was written
    client, server = files(sandbox, "toy-run")
    old = time.time() - 3600
    os.utime(server, (old, old))
    (result,) = call("rm", keys=["toy-run"])["results"]
    assert result["outcome"] == "removed" and "warning" not in result
    assert not server.exists()


def test_a_dry_run_record_is_removed_even_if_its_pid_is_a_live_service(sandbox, running):
    # a dry run launched nothing: whatever its pid field says, removing it orphans nothing
    sandbox.write_state("toy-dry", {**running, "dry_run": True})
    (result,) = call("rm", keys=["toy-dry"])["results"]
    assert result["outcome"] == "removed" and "warning" not in result
    assert alive(running["pid"])


def test_refused_keys_alone_run_no_helper_and_report_no_stderr(sandbox, running):
    value = call("rm", keys=["toy-run"])
    assert value == {"results": [{"key": "toy-run", "outcome": REFUSED, "removed": [], "pid": running["pid"]}],
                     "exit_status": None, "stderr": ""}


def test_keys_after_a_helper_failure_say_that_an_earlier_error_stopped_them(sandbox, stale):
    (sandbox.server_dir / "toy-dir.json").mkdir()
    value = call("rm", keys=["toy-dir", "toy-stale"], server=True)
    assert value["results"][1] == {"key": "toy-stale", "removed": [],
                                   "outcome": "error: rhl-rm did not process this key (an earlier error stopped it)"}


def test_without_rhl_rm_every_key_says_so_and_nothing_is_removed(sandbox, stale, monkeypatch, tmp_path):
    # remote-http-launcher not installed beside the agent, nor on PATH
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-venv" / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")
    value = call("rm", keys=["toy-stale", "toy-other"])
    message = "rhl-rm is not installed on this server (install remote-http-launcher in the agent's environment)"
    assert value == {"results": [{"key": "toy-stale", "removed": [], "outcome": f"error: {message}"},
                                 {"key": "toy-other", "removed": [], "outcome": f"error: {message}"}],
                     "exit_status": None, "stderr": message}
    assert all(path.exists() for path in files(sandbox, "toy-stale"))


def test_an_agent_on_another_launcher_base_removes_that_bases_files(sandbox, stale, tmp_path):
    # the helper must act on the agent's base, not on the one the environment names
    other = LauncherSandbox(tmp_path / "other")
    other.write_state("toy-stale", {"status": "stale"})
    ctx = AgentContext(base=other.base)
    try:
        reply = decode_reply(handle(ctx, encode_request([("rm", {"keys": ["toy-stale"], "server": True})])),
                             expected=1)
    finally:
        ctx.close()
    assert reply[0]["value"]["results"][0]["outcome"] == "removed"
    assert not (other.server_dir / "toy-stale.json").exists()
    assert files(sandbox, "toy-stale")[1].exists()  # the environment's base is untouched
