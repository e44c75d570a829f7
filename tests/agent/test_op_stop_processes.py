"""The `stop` op on hand-written state files naming real processes of this test only: `sleep`
children, each leading its own process group as a launched service does, for live services,
and unreaped finished children (zombies: dead to every check, their numbers never handed
on) for services that died. No pid in these files can name anything else, and none is 0,
negative or another process's, so even a broken `stop` signals nothing but these children.

No service is launched: the module is the `stop` op's mutation-test selection
(tools/mutate.py). It checks what a user sees: each key's outcome, `stopped` and
`signalled`, the state file afterwards, and which processes are left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from seamless_service.agent import procinfo
from seamless_service.agent.context import AgentContext
from seamless_service.protocol import ErrorCode, ProtocolError
from tests.support.agent import call
from tests.support.processes import alive, gone
from tests.support.services import LauncherSandbox, wait_for

UID = os.getuid()


def service(sleeper, sandbox, key: str, *, status: str = "running", shell: str | None = None,
            command: str = "sleep 300", **kw) -> tuple[int, dict]:
    """A live process standing for the service `key`, and the state file naming it."""
    proc = sleeper(shell=shell, **kw) if shell else sleeper(300, **kw)
    wait_for(lambda: (info := procinfo.read_proc(proc.pid)) is not None and info.argv[:1] == ("sleep",))
    state = {"command": command, "uid": UID, "status": status, "pid": proc.pid, "port": 5000}
    sandbox.write_state(key, state)
    return proc.pid, state


def state_of(sandbox, key: str) -> dict:
    return json.loads((sandbox.server_dir / f"{key}.json").read_text())


def outcome(result: dict) -> tuple:
    return result["outcome"], result["stopped"], result["signalled"]


def test_a_running_service_is_stopped_and_its_file_marked_stale(sandbox, sleeper, make_ctx):
    pid, state = service(sleeper, sandbox, "toy-up")
    value = call(make_ctx(), "stop", keys=["toy-up", "toy-up"])  # given twice: stopped once, reported twice
    assert value["results"] == [{"key": "toy-up", "outcome": "stopped", "stopped": True, "signalled": True,
                                 "status": "running", "pid": pid}] * 2   # a leader alone: no group_killed
    assert (value["exit_status"], value["stderr"]) == (0, "")
    wait_for(lambda: gone(pid))
    assert state_of(sandbox, "toy-up") == {**state, "status": "stale"}


def test_the_group_of_a_stopped_service_goes_with_it(sandbox, sleeper, make_ctx):
    """A server with a worker in its process group (its own pid the group's id)."""
    pid, _ = service(sleeper, sandbox, "toy-group", shell="sleep 300 & exec sleep 301", command="sleep 301")
    members = wait_for(lambda: [p for p in procinfo.group_members(pid) if p != pid])
    (result,) = call(make_ctx(), "stop", keys=["toy-group"])["results"]
    assert outcome(result) == ("stopped", True, True) and result["group_killed"] == len(members) == 1
    wait_for(lambda: all(gone(p) for p in [pid, *members]))


def test_a_dead_service_is_already_gone_and_marked_stale_without_rhl_stop(sandbox, zombie, make_ctx):
    keys = {"toy-died": "running", "toy-died-starting": "starting", "toy-died-failed": "failed"}
    pids, before = {}, {}
    for key, status in keys.items():
        pids[key] = zombie()
        before[key] = {"command": "sleep 300", "status": status, "pid": pids[key]}
        path = sandbox.write_state(key, before[key])
        path.chmod(0o600)
    raw = json.dumps({"command": "sleep 300", "status": "stale", "pid": zombie()}, indent=2) + "\n"
    stale = sandbox.write_state("toy-stale", None, raw=raw)   # written by another tool: left as it is
    inode = stale.stat().st_ino

    value = call(make_ctx(), "stop", keys=[*keys, "toy-stale"])
    assert (value["exit_status"], value["stderr"]) == (None, ""), "rhl-stop was run"
    assert [(r["key"], *outcome(r), r["status"], r["pid"]) for r in value["results"]] == [
        ("toy-died", "already gone", True, False, "stale", pids["toy-died"]),
        ("toy-died-starting", "already gone", True, False, "failed", pids["toy-died-starting"]),
        ("toy-died-failed", "already gone", True, False, "failed", pids["toy-died-failed"]),
        ("toy-stale", "already gone", True, False, "stale", json.loads(raw)["pid"]),
    ]
    for key in keys:  # as rhl-stop marks it: the same json.dumps, the mode kept
        path = sandbox.server_dir / f"{key}.json"
        assert path.read_text() == json.dumps({**before[key], "status": "stale"}), key
        assert path.stat().st_mode & 0o777 == 0o600
    assert stale.read_text() == raw and stale.stat().st_ino == inode
    assert sorted(p.name for p in sandbox.server_dir.iterdir()) == sorted(
        f"{k}.json" for k in [*keys, "toy-stale"])  # no temp file left behind


def test_a_stale_row_whose_pid_lives_is_not_signalled(sandbox, sleeper, zombie, make_ctx):
    """The number may name another process by now (#17): "not running", nothing signalled."""
    pid, _ = service(sleeper, sandbox, "toy-old", status="stale")
    before = (sandbox.server_dir / "toy-old.json").read_bytes()
    (result,) = call(make_ctx(), "stop", keys=["toy-old"])["results"]
    assert outcome(result) == ("not running", True, False) and result["status"] == "stale"
    time.sleep(0.2)
    assert alive(pid) and (sandbox.server_dir / "toy-old.json").read_bytes() == before


@pytest.mark.parametrize("state,expected", [
    ({"status": "running"}, ("invalid pid", False, False)),                 # no pid: would abort rhl-stop (#13)
    ({"status": "starting", "pid": "12x"}, ("invalid pid", False, False)),
    ({"status": "running", "pid": True}, ("invalid pid", False, False)),
    ({"status": "stale"}, ("not running", True, False)),
    ({"dry_run": True, "workdir": "/w"}, ("not running", True, False)),
])
def test_keys_decided_from_the_file_alone(sandbox, make_ctx, state, expected):
    path = sandbox.write_state("toy-k", {"command": "sleep 300", **state})
    before = path.read_bytes()
    value = call(make_ctx(), "stop", keys=["toy-k"])
    (result,) = value["results"]
    assert outcome(result) == expected and value["exit_status"] is None
    if expected[0] == "invalid pid":
        assert result["detail"] == f"pid {state['pid']!r} cannot name a process" if "pid" in state \
            else result["detail"] == "pid None cannot name a process"
    else:
        assert "detail" not in result
    assert path.read_bytes() == before


def test_a_missing_state_is_no_success(sandbox, make_ctx):
    value = call(make_ctx(), "stop", keys=["toy-none"])
    assert value["results"] == [{"key": "toy-none", "outcome": "missing state", "stopped": False,
                                 "signalled": False, "status": None, "pid": None}]
    assert value["exit_status"] is None


def test_a_pid_that_is_not_the_service_is_not_signalled(sandbox, sleeper, make_ctx):
    other, _ = service(sleeper, sandbox, "toy-prog", command="seamless-toy-service --status-file x")
    (result,) = call(make_ctx(), "stop", keys=["toy-prog"])["results"]
    assert outcome(result) == ("pid belongs to another process", False, False)
    assert result["detail"] == f"process {other} runs 'sleep 300', not 'seamless-toy-service'"

    # the same program, started after the state file was written
    young, _ = service(sleeper, sandbox, "toy-young")
    old = time.time() - 600
    os.utime(sandbox.server_dir / "toy-young.json", (old, old))
    (result,) = call(make_ctx(), "stop", keys=["toy-young"])["results"]
    assert outcome(result) == ("pid belongs to another process", False, False)
    assert result["detail"] == f"process {young} started after the state file was written"

    # the same program, run by another user
    theirs, _ = service(sleeper, sandbox, "toy-uid", user=65534)
    (result,) = call(make_ctx(), "stop", keys=["toy-uid"])["results"]
    assert result["detail"] == f"process {theirs} runs as uid 65534, the service was launched as uid {UID}"
    time.sleep(0.2)
    assert alive(other) and alive(young) and alive(theirs)


def test_a_batch_reports_each_key_in_order(sandbox, sleeper, make_ctx):
    pid, _ = service(sleeper, sandbox, "toy-b")
    sandbox.write_state("toy-broken", None, raw="{not json")
    value = call(make_ctx(), "stop", keys=["toy-broken", "toy-missing", "toy-b"])
    broken, missing, stopped = value["results"]
    assert broken["outcome"].startswith("error: malformed JSON in ") and not broken["stopped"]
    assert (broken["status"], broken["pid"]) == (None, None)
    assert outcome(missing) == ("missing state", False, False)
    assert outcome(stopped) == ("stopped", True, True) and value["exit_status"] == 0
    wait_for(lambda: gone(pid))


def test_rhl_stop_that_fails_without_an_outcome_is_an_error_for_its_keys(sandbox, sleeper, make_ctx):
    """rhl-stop marks a stopped key stale through KEY.tmp: a directory of that name makes
    it die before it prints the key's outcome line."""
    pid, _ = service(sleeper, sandbox, "toy-t")
    other, _ = service(sleeper, sandbox, "toy-u")
    (sandbox.server_dir / "toy-t.tmp").mkdir()
    value = call(make_ctx(), "stop", keys=["toy-t", "toy-none", "toy-u"])
    said = value["stderr"].strip().splitlines()[-1]
    assert said.startswith("rhl-stop: could not mark toy-t stale: ")
    assert value["exit_status"] == 1
    (result, missing, after) = value["results"]
    assert result == {"key": "toy-t", "outcome": f"error: rhl-stop gave no outcome ({said})", "stopped": False,
                      "signalled": False, "status": "running", "pid": pid}
    assert outcome(missing) == ("missing state", False, False)  # decided here: never sent to rhl-stop
    # rhl-stop died before it got to the next key's line: that key says so too
    assert after == {**result, "key": "toy-u", "pid": other}


def test_without_rhl_stop_each_key_that_needed_it_says_so(sandbox, sleeper, make_ctx, monkeypatch, tmp_path):
    pid, _ = service(sleeper, sandbox, "toy-up")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-venv" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    value = call(make_ctx(), "stop", keys=["toy-up", "toy-none"])
    message = "rhl-stop is not installed on this server (install remote-http-launcher in the agent's environment)"
    assert (value["exit_status"], value["stderr"]) == (None, message)
    up, missing = value["results"]
    assert up == {"key": "toy-up", "outcome": f"error: {message}", "stopped": False, "signalled": False,
                  "status": "running", "pid": pid}
    assert outcome(missing) == ("missing state", False, False)
    assert alive(pid)


def test_keys_read_as_options_are_refused(sandbox, make_ctx):
    with pytest.raises(ProtocolError) as info:
        call(make_ctx(), "stop", keys=["-h"])
    assert info.value.code == ErrorCode.INVALID_KEY


def test_a_dead_service_whose_file_cannot_be_marked_is_an_error(sandbox, zombie, make_ctx):
    """The state folder may not be written (immutable: for root too): rhl-stop would exit 1
    then; the key says why and is not reported stopped, and its file is as it was."""
    path = sandbox.write_state("toy-died", {"command": "sleep 300", "status": "running", "pid": zombie()})
    before = path.read_bytes()
    folder = sandbox.server_dir
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {done.stderr.strip()}")
    try:
        (result,) = call(make_ctx(), "stop", keys=["toy-died"])["results"]
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert result["outcome"].startswith("error: could not mark toy-died stale: [Errno 1] Operation not permitted")
    assert (result["stopped"], result["signalled"]) == (False, False)
    assert path.read_bytes() == before and sorted(os.listdir(folder)) == ["toy-died.json"]


def test_an_agent_on_another_launcher_base_stops_that_bases_service(sandbox, sleeper, tmp_path):
    """rhl-stop is pointed at the agent's base, not at the one of $HOME (the sandbox's, empty)."""
    other = LauncherSandbox(tmp_path / "other")
    pid, state = service(sleeper, other, "toy-elsewhere")
    ctx = AgentContext(base=other.base)
    try:
        (result,) = call(ctx, "stop", keys=["toy-elsewhere"])["results"]
    finally:
        ctx.close()
    assert outcome(result) == ("stopped", True, True)
    wait_for(lambda: gone(pid))
    assert state_of(other, "toy-elsewhere") == {**state, "status": "stale"}
