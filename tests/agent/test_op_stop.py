"""`stop` on real services launched by remote-http-launcher, compared with rhl-stop alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from seamless_service.agent import procinfo
from seamless_service.agent.context import AgentContext
from seamless_service.agent.dispatch import handle
from seamless_service.agent.statefiles import server_row
from seamless_service.protocol import decode_reply, encode_request
from tests.support.processes import alive, dead_pid, gone
from tests.support.services import LauncherSandbox, wait_for


def call(op: str, **args):
    reply = decode_reply(handle(AgentContext(), encode_request([(op, args)])), expected=1)
    assert reply[0]["ok"], reply[0]
    return reply[0]["value"]


@pytest.fixture
def spawn():
    """Start helper processes (reaped in the background, so a dead one does not linger)."""
    procs: list[subprocess.Popen] = []

    def start(argv, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
        procs.append(proc)
        threading.Thread(target=proc.wait, daemon=True).start()
        return proc

    yield start
    for proc in procs:
        try:
            if proc.poll() is None:
                proc.kill()
        except OSError:
            pass


def copy_state(sandbox, tmp_path):
    """A second HOME holding a copy of the sandbox's server state, and its environment."""
    home = tmp_path / "copy-home"
    shutil.copytree(sandbox.server_dir, home / ".remote-http-launcher" / "server")
    env = sandbox.env()
    env["HOME"] = str(home)
    return home / ".remote-http-launcher" / "server", env


def rhl_stop(env, *keys, timeout=60):
    return subprocess.run(["rhl-stop", *keys], env=env, capture_output=True, text=True, timeout=timeout)


def test_stop_running_service_like_rhl_stop(sandbox):
    a = sandbox.launch("toy-a")
    b = sandbox.launch("toy-b")
    helper = sandbox.run_helper("rhl-stop", "toy-a")
    assert helper.returncode == 0 and helper.stdout.strip() == "toy-a: stopped"

    value = call("stop", keys=["toy-b", "toy-b"])  # a repeated key is stopped once, reported twice
    assert value["exit_status"] == 0
    assert [r["key"] for r in value["results"]] == ["toy-b", "toy-b"]
    for result in value["results"]:
        assert result["outcome"] == "stopped"
        assert result["stopped"] is True and result["signalled"] is True
        assert result["status"] == "running" and result["pid"] == b["pid"]

    assert not alive(a["pid"]) and not alive(b["pid"])
    assert server_row(sandbox.server_dir / "toy-b.json")["status"] == "stale"
    # Same state file as rhl-stop alone leaves: everything kept, status stale.
    after_a = json.loads((sandbox.server_dir / "toy-a.json").read_text())
    after_b = json.loads((sandbox.server_dir / "toy-b.json").read_text())
    assert after_a == {**a, "status": "stale"}
    assert after_b == {**b, "status": "stale"}


def test_mixed_batch_where_rhl_stop_alone_aborts(sandbox, spawn, tmp_path):
    toy = sandbox.launch("toy-run")
    sleeper = spawn(["sleep", "30"])
    sandbox.write_state("toy-dry", {"workdir": "/tmp/x", "log": "/tmp/x.log", "command": "seamless-toy-service",
                                    "dry_run": True})
    sandbox.write_state("toy-early", {"workdir": "/tmp/x", "command": "seamless-toy-service", "status": "starting"})
    # A stale row whose pid now belongs to an unrelated live process.
    sandbox.write_state("toy-stale", {**toy, "status": "stale", "pid": sleeper.pid})
    keys = ["toy-dry", "toy-run", "toy-missing", "toy-early", "toy-stale"]

    # rhl-stop alone, on a copy of the same state: the whole batch aborts, nothing stopped.
    _, copy_env = copy_state(sandbox, tmp_path)
    alone = rhl_stop(copy_env, *keys)
    assert alone.returncode == 1 and "invalid PID" in alone.stderr and alone.stdout == ""
    assert alive(toy["pid"]) and alive(sleeper.pid)

    value = call("stop", keys=keys)
    by_key = {r["key"]: r for r in value["results"]}
    assert [r["key"] for r in value["results"]] == keys
    assert by_key["toy-run"]["outcome"] == "stopped" and by_key["toy-run"]["signalled"] is True
    assert by_key["toy-missing"] == {**by_key["toy-missing"], "outcome": "missing state",
                                     "stopped": False, "signalled": False}
    assert by_key["toy-dry"]["outcome"] == "not running" and by_key["toy-dry"]["signalled"] is False
    assert by_key["toy-early"]["outcome"] == "invalid pid" and by_key["toy-early"]["stopped"] is False
    assert by_key["toy-stale"]["outcome"] == "not running" and by_key["toy-stale"]["signalled"] is False
    assert value["exit_status"] == 0
    assert not alive(toy["pid"])
    assert alive(sleeper.pid), "a stale row's reused pid was signalled"
    assert server_row(sandbox.server_dir / "toy-run.json")["status"] == "stale"
    # Files of keys not passed to rhl-stop are left exactly as they were.
    assert json.loads((sandbox.server_dir / "toy-early.json").read_text())["status"] == "starting"
    assert "status" not in json.loads((sandbox.server_dir / "toy-dry.json").read_text())

    # And rhl-stop alone on the stale row signals the unrelated process (#17).
    alone = rhl_stop(copy_env, "toy-stale")
    assert alone.stdout.strip() == "toy-stale: stopped"
    wait_for(lambda: not alive(sleeper.pid))


@pytest.mark.parametrize("pid", [0, -1, 2**70, 4.7, "12x", True, None])
def test_unusable_pid_never_reaches_rhl_stop(sandbox, pid):
    sandbox.write_state("toy-bad", {"command": "seamless-toy-service", "uid": os.getuid(),
                                    "status": "running", "pid": pid})
    value = call("stop", keys=["toy-bad"])
    assert value["exit_status"] is None, "rhl-stop was run"
    (result,) = value["results"]
    assert result["outcome"] == "invalid pid"
    assert result["stopped"] is False and result["signalled"] is False
    assert os.getpgrp() > 0 and alive(os.getpid())  # we (and our process group) are unharmed
    assert json.loads((sandbox.server_dir / "toy-bad.json").read_text())["status"] == "running"


def _stop_one(sandbox, key, state):
    sandbox.write_state(key, state)
    value = call("stop", keys=[key])
    assert value["exit_status"] is None
    return value["results"][0]


def test_reused_pid_is_not_signalled(sandbox, spawn):
    uid = os.getuid()
    # Different program than the state's command.
    sleeper = spawn(["sleep", "30"])
    result = _stop_one(sandbox, "toy-prog", {"command": "seamless-toy-service --status-file x",
                                              "uid": uid, "status": "running", "pid": sleeper.pid})
    assert result["outcome"] == "pid belongs to another process"
    assert "not 'seamless-toy-service'" in result["detail"]
    assert result["stopped"] is False and result["signalled"] is False

    # Same program, another user.
    other = spawn(["sleep", "31"], user=65534)
    result = _stop_one(sandbox, "toy-uid", {"command": "sleep 31", "uid": uid, "status": "running",
                                            "pid": other.pid})
    assert result["outcome"] == "pid belongs to another process" and "uid 65534" in result["detail"]

    # Same program and user, but younger than the state file.
    path = sandbox.write_state("toy-young", {"command": "sleep 30", "uid": uid, "status": "running",
                                             "pid": sleeper.pid})
    old = time.time() - 600
    os.utime(path, (old, old))
    value = call("stop", keys=["toy-young"])
    assert value["results"][0]["outcome"] == "pid belongs to another process"
    assert "started after the state file" in value["results"][0]["detail"]

    # A thread id: kill(tid, 0) succeeds, but it names a thread of this test process.
    release, tids = threading.Event(), []
    worker = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), release.wait(30)))
    worker.start()
    try:
        wait_for(lambda: tids)
        result = _stop_one(sandbox, "toy-tid", {"command": "python", "uid": uid, "status": "running",
                                                "pid": tids[0]})
        assert result["outcome"] == "pid belongs to another process"
        assert f"thread of process {os.getpid()}" in result["detail"]
    finally:
        release.set()
        worker.join()

    assert alive(sleeper.pid) and alive(other.pid)


def test_stop_kills_surviving_group_members(sandbox, spawn):
    # A session leader with a child in its group, like a server with workers.
    leader = spawn(["bash", "-c", "sleep 300 & exec sleep 301"], start_new_session=True)
    members = wait_for(lambda: [p for p in procinfo.group_members(leader.pid) if p != leader.pid]
                       if procinfo.read_proc(leader.pid).argv[:1] == ("sleep",) else None)
    sandbox.write_state("toy-group", {"command": "sleep 301", "uid": os.getuid(), "status": "running",
                                      "pid": leader.pid})
    value = call("stop", keys=["toy-group"])
    (result,) = value["results"]
    assert result["outcome"] == "stopped" and result["group_killed"] == len(members) == 1
    wait_for(lambda: all(not alive(p) for p in [leader.pid, *members]))
    assert server_row(sandbox.server_dir / "toy-group.json")["status"] == "stale"


def test_keys_starting_with_dash_are_not_passed(sandbox):
    sandbox.write_state("-h", {"command": "seamless-toy-service", "status": "running", "pid": os.getpid()})
    # rhl-stop alone takes the key for a help request: exit 0, nothing stopped.
    alone = sandbox.run_helper("rhl-stop", "-h")
    assert alone.returncode == 0 and alone.stdout.startswith("usage:")
    # Ours refuses the key before anything runs (protocol key rule, tightened on purpose).
    reply = decode_reply(handle(AgentContext(), encode_request([("stop", {"keys": ["-h"]})])), expected=1)
    assert reply[0]["ok"] is False and reply[0]["error"]["code"] == "invalid_key"


def test_malformed_state_is_an_error_outcome(sandbox):
    toy = sandbox.launch("toy-ok")
    sandbox.write_state("toy-broken", None, raw="{not json")
    value = call("stop", keys=["toy-broken", "toy-ok"])
    broken, ok = value["results"]
    assert broken["outcome"].startswith("error: malformed JSON") and broken["stopped"] is False
    assert ok["outcome"] == "stopped"
    assert not alive(toy["pid"])


def test_stop_escalates_to_sigkill(sandbox):
    toy = sandbox.launch("toy-stubborn", extra_args="--ignore-signals")
    value = call("stop", keys=["toy-stubborn"])
    (result,) = value["results"]
    assert result["outcome"] == "kill required"
    assert result["stopped"] is True and result["signalled"] is True
    wait_for(lambda: not alive(toy["pid"]))
    wait_for(lambda: server_row(sandbox.server_dir / "toy-stubborn.json")["status"] == "stale")


def _info(argv, comm):
    return procinfo.ProcInfo(pid=10, tgid=10, state="S", pgrp=10, session=10, start_time=None,
                             uids=(1000, 1000, 1000, 1000), argv=tuple(argv), comm=comm)


CMD = "hashserver --status-file /h/.remote-http-launcher/server/k.json --timeout 600 /data"


@pytest.mark.parametrize("argv,comm,expected", [
    (["hashserver", "--status-file", "x"], "hashserver", True),                # plain exec
    (["/env/bin/python3.11", "/env/bin/hashserver", "--status-file", "x"], "hashserver", True),  # console script
    (["/usr/bin/python3", "-s", "/env/bin/hashserver"], "hashserver", True),   # shebang with an option
    (["bash", "-lc", f"conda activate e && exec {CMD}"], "bash", True),       # conda wrapper before exec
    ([], "hashserver", True),                                                  # argv hidden: comm decides
    (["sleep", "30"], "sleep", False),
    (["python3", "/srv/other.py", "hashserver"], "python3", False),            # name only as a later argument
    (["bash", "-c", "echo hi"], "bash", False),
])
def test_runs_command(argv, comm, expected):
    assert procinfo.runs_command(_info(argv, comm), CMD) is expected


def _kill_behind_its_back(pid: int) -> None:
    """SIGKILL a launched service's group, then wait until its pid is gone (reaped), as
    when a service dies without the launcher knowing."""
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)


def test_dead_pid_is_already_gone_and_marked_stale_like_rhl_stop(sandbox, tmp_path):
    """rhl-stop's outcome (`already gone`) and file (`"status": "stale"`, the same bytes)
    for every row whose pid no longer exists, without signalling anything; the file keeps
    its mode (rhl-stop's rewrite takes the umask, #19)."""
    running = sandbox.launch("toy-died")
    starting = sandbox.launch("toy-boot")
    _kill_behind_its_back(running["pid"])
    _kill_behind_its_back(starting["pid"])
    sandbox.write_state("toy-boot", {**starting, "status": "starting"})  # died while starting
    dead = dead_pid()
    sandbox.write_state("toy-failed", {"command": "seamless-toy-service", "status": "failed", "pid": dead})
    sandbox.write_state("toy-stale", {"command": "seamless-toy-service", "status": "stale", "pid": dead})
    for key in ("toy-boot", "toy-failed", "toy-stale"):
        (sandbox.server_dir / f"{key}.json").chmod(0o600)
    keys = ["toy-died", "toy-boot", "toy-failed", "toy-stale"]
    before = {k: (sandbox.server_dir / f"{k}.json").read_bytes() for k in keys}

    copy_dir, copy_env = copy_state(sandbox, tmp_path)
    alone = rhl_stop(copy_env, *keys)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout == "".join(f"{k}: already gone\n" for k in keys)

    value = call("stop", keys=keys)
    assert value["exit_status"] is None, "rhl-stop was run for pids that are gone"
    for key, result in zip(keys, value["results"]):
        assert (result["key"], result["outcome"], result["stopped"], result["signalled"]) == (
            key, "already gone", True, False)
    for key in keys:
        path = sandbox.server_dir / f"{key}.json"
        assert path.read_bytes() == (copy_dir / f"{key}.json").read_bytes(), key
        assert json.loads(path.read_text()) == {**json.loads(before[key]), "status": "stale"}
        assert path.stat().st_mode & 0o777 == 0o600, key
        assert server_row(path)["status"] == "stale"
    assert sorted(p.name for p in sandbox.server_dir.iterdir() if p.suffix != ".log") == sorted(
        f"{k}.json" for k in keys)  # no temp file left behind
    # the already-stale file was not rewritten at all
    assert (sandbox.server_dir / "toy-stale.json").read_bytes() == before["toy-stale"]


def test_a_relaunch_meanwhile_is_not_marked_stale(sandbox):
    """The file is marked only if it still names the pid found dead: a launch between the
    check and the write (another pid) keeps its own state."""
    from seamless_service.agent.ops import stop as stop_op

    dead = dead_pid()
    path = sandbox.write_state("toy-again", {"command": "seamless-toy-service", "status": "running", "pid": dead})
    ctx = AgentContext(base=sandbox.base)
    plan = stop_op.plan_key(ctx, "toy-again")
    assert (plan.outcome, plan.raw_pid) == ("already gone", dead)
    relaunched = {"command": "seamless-toy-service", "status": "running", "pid": os.getpid()}
    path.write_text(json.dumps(relaunched))
    assert stop_op._mark_gone(ctx, plan) is None
    assert json.loads(path.read_text()) == relaunched



def test_after_kill_required_the_whole_group_is_gone(sandbox, spawn):
    """A server that ignores SIGINT and SIGTERM, with a worker in its process group that
    ignores them too (dispositions survive exec): rhl-stop escalates to SIGKILL of the
    leader ("kill required"). `stopped: true` must then be true of the service: its
    orphaned worker is killed as well, not left running."""
    leader = spawn(["bash", "-c", "trap '' INT TERM; sleep 300 & exec sleep 302"], start_new_session=True)
    members = wait_for(lambda: [p for p in procinfo.group_members(leader.pid) if p != leader.pid]
                       if procinfo.read_proc(leader.pid).argv[:1] == ("sleep",) else None)
    sandbox.write_state("toy-stubborn-group", {"command": "sleep 302", "uid": os.getuid(), "status": "running",
                                               "pid": leader.pid})
    (result,) = call("stop", keys=["toy-stubborn-group"])["results"]
    assert (result["outcome"], result["stopped"], result["signalled"]) == ("kill required", True, True)
    assert result["group_killed"] == len(members) == 1
    wait_for(lambda: all(gone(p) for p in [leader.pid, *members]))


# ---- issue 14: what the surviving mutants of stop.py would have changed


def _group_leader(spawn, sandbox, key):
    """A live session leader the state of `key` names, as a launched service is."""
    leader = spawn(["sleep", "303"], start_new_session=True)
    wait_for(lambda: procinfo.read_proc(leader.pid).argv[:1] == ("sleep",) or None)
    sandbox.write_state(key, {"command": "sleep 303", "uid": os.getuid(), "status": "running", "pid": leader.pid})
    return leader


def test_without_rhl_stop_every_key_that_needed_it_says_so_and_nothing_is_signalled(sandbox, spawn, monkeypatch,
                                                                                  tmp_path):
    leader = _group_leader(spawn, sandbox, "toy-up")
    before = (sandbox.server_dir / "toy-up.json").read_bytes()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-venv" / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")
    value = call("stop", keys=["toy-up", "toy-missing"])
    message = "rhl-stop is not installed on this server (install remote-http-launcher in the agent's environment)"
    assert value["exit_status"] is None and value["stderr"] == message
    up, missing = value["results"]
    assert up == {"key": "toy-up", "outcome": f"error: {message}", "stopped": False, "signalled": False,
                  "status": "running", "pid": leader.pid}
    assert missing["outcome"] == "missing state"
    assert alive(leader.pid) and (sandbox.server_dir / "toy-up.json").read_bytes() == before


def test_an_agent_on_another_launcher_base_stops_that_bases_service(sandbox, spawn, tmp_path):
    other = LauncherSandbox(tmp_path / "other")
    leader = _group_leader(spawn, other, "toy-elsewhere")
    ctx = AgentContext(base=other.base)
    try:
        reply = decode_reply(handle(ctx, encode_request([("stop", {"keys": ["toy-elsewhere"]})])), expected=1)
    finally:
        ctx.close()
    (result,) = reply[0]["value"]["results"]
    assert (result["outcome"], result["stopped"], result["signalled"]) == ("stopped", True, True)
    wait_for(lambda: not alive(leader.pid))
    assert json.loads((other.server_dir / "toy-elsewhere.json").read_text())["status"] == "stale"


def test_only_keys_that_need_rhl_stop_run_it(sandbox):
    sandbox.write_state("toy-old", {"command": "seamless-toy-service", "status": "stale", "pid": dead_pid()})
    value = call("stop", keys=["toy-old", "toy-missing"])
    assert (value["exit_status"], value["stderr"]) == (None, "")


def test_a_file_already_stale_is_left_byte_for_byte(sandbox):
    # written by another tool (indented): "already gone" must not rewrite it as rhl-stop would
    raw = json.dumps({"command": "seamless-toy-service", "status": "stale", "pid": dead_pid()}, indent=2) + "\n"
    path = sandbox.write_state("toy-stale-indented", None, raw=raw)
    inode = path.stat().st_ino
    (result,) = call("stop", keys=["toy-stale-indented"])["results"]
    assert (result["outcome"], result["stopped"], result["signalled"]) == ("already gone", True, False)
    assert path.read_text() == raw and path.stat().st_ino == inode
