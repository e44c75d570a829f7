"""Agent lifecycle with real detached agent processes: private files, one agent per base,
stale state after SIGKILL, idle exit, stop, version upgrade, server-side config, CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seamless_service import __version__
from seamless_service.agent import lifecycle
from seamless_service.client.transport.agent_conn import AgentAuthError, AgentConnection
from seamless_service.protocol import ErrorCode
from seamless_service.protocol import auth as pauth
from seamless_service.protocol.version import PROTOCOL_VERSION
from tests.support.agent import spawn_agent


@pytest.fixture
def base(tmp_path, monkeypatch):
    """A private launcher base for this test; every agent started in it is stopped after."""
    path = tmp_path / "rhl"
    monkeypatch.setenv("REMOTE_HTTP_LAUNCHER_DIR", str(path))
    yield path
    lifecycle.stop(path, timeout=5)


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seamless_service", "agent", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while lifecycle.process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def assert_serves(info: dict, base: Path) -> None:
    with AgentConnection.connect("127.0.0.1", info["port"], lifecycle.read_secret(base)) as conn:
        assert conn.batch([("nope", {})])[0]["error"]["code"] == ErrorCode.UNKNOWN_OP


def test_files_are_private_and_state_is_complete(base):
    info = lifecycle.start_detached(base, idle_timeout=60)
    folder = base / "agent"
    assert mode(folder) == 0o700
    for name in ("agent.json", "secret", "agent.lock", "agent.log"):
        assert mode(folder / name) == 0o600, name
    state = json.loads((folder / "agent.json").read_text())
    assert state["pid"] == info["pid"] and state["port"] == info["port"]
    assert state["host"] == "127.0.0.1"
    assert state["protocol"] == PROTOCOL_VERSION
    assert state["version"] == __version__
    assert abs(state["started"] - time.time()) < 60
    assert state["python"] == sys.executable
    assert info["reused"] is False
    assert info["state_path"] == str(folder / "agent.json")
    assert info["secret_path"] == str(folder / "secret")
    # 32 random bytes as lowercase hex, one line, readable by the owner only (checked above)
    text = (folder / "secret").read_text()
    secret = text.strip()
    assert text == secret + "\n"
    assert re.fullmatch(r"[0-9a-f]{64}", secret), secret
    assert secret == lifecycle.read_secret(base)
    assert len(set(secret)) > 4  # not a constant or a counter
    # no temp files left behind by the atomic writes
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert_serves(info, base)


def test_loose_folder_is_tightened(base):
    folder = base / "agent"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    lifecycle.start_detached(base, idle_timeout=60)
    assert mode(folder) == 0o700


def test_secret_stays_out_of_argv_environment_and_log(base):
    info = lifecycle.start_detached(base, idle_timeout=60)
    secret = lifecycle.read_secret(base)
    assert_serves(info, base)
    with pytest.raises(AgentAuthError):
        AgentConnection.connect("127.0.0.1", info["port"], pauth.make_secret())
    pid = info["pid"]
    assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    log = (base / "agent" / "agent.log").read_text()
    assert "serving on 127.0.0.1" in log
    assert secret not in log
    status = cli("status", "--json")
    assert status.returncode == 0 and secret not in status.stdout + status.stderr


def test_second_start_reuses_the_running_agent(base):
    first = lifecycle.start_detached(base, idle_timeout=60)
    second = lifecycle.start_detached(base, idle_timeout=60)
    assert second["pid"] == first["pid"] and second["port"] == first["port"]
    assert second["reused"] is True
    result = cli("start", "--json")
    assert result.returncode == 0, result.stderr
    third = json.loads(result.stdout)
    assert third["pid"] == first["pid"] and third["reused"] is True


def test_concurrent_starts_make_one_agent(base):
    procs = [subprocess.Popen([sys.executable, "-m", "seamless_service", "agent", "start", "--json",
                               "--idle-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL) for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    infos = [json.loads(out) for out, _ in outputs]
    assert len({i["pid"] for i in infos}) == 1
    assert sorted(i["reused"] for i in infos) == [False, True, True]
    running = lifecycle.find_running(base)
    assert running is not None and running["pid"] == infos[0]["pid"]


def test_a_second_serve_is_refused_while_one_runs(base):
    info = lifecycle.start_detached(base, idle_timeout=60)
    result = cli("serve", "--idle-timeout", "60", timeout=30)
    assert result.returncode == 1
    assert "already running" in result.stderr and str(info["pid"]) in result.stderr
    assert "Traceback" not in result.stderr
    assert lifecycle.find_running(base)["pid"] == info["pid"]  # untouched
    assert_serves(info, base)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_state(base, sig):
    proc, info = spawn_agent(base)
    assert (base / "agent" / "agent.json").exists()
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    assert not (base / "agent" / "agent.json").exists()
    assert not (base / "agent" / "secret").exists()
    assert lifecycle.find_running(base) is None
    assert not lifecycle.lock_held(base)


def test_sigkill_leaves_stale_state_that_the_next_start_replaces(base):
    first = lifecycle.start_detached(base, idle_timeout=60)
    old_secret = lifecycle.read_secret(base)
    os.kill(first["pid"], signal.SIGKILL)
    assert wait_gone(first["pid"])
    assert (base / "agent" / "agent.json").exists()  # stale: nobody cleaned up
    assert lifecycle.find_running(base) is None
    assert lifecycle.status(base) is None
    status = cli("status")
    assert status.returncode == 1 and "no agent running" in status.stderr
    second = lifecycle.start_detached(base, idle_timeout=60)
    assert second["pid"] != first["pid"] and second["reused"] is False
    assert lifecycle.read_secret(base) != old_secret
    assert json.loads((base / "agent" / "agent.json").read_text())["pid"] == second["pid"]
    assert_serves(second, base)


def test_state_naming_a_live_foreign_pid_is_stale(base):
    """A recycled pid (alive, but not holding the lock) is not mistaken for the agent."""
    info = lifecycle.start_detached(base, idle_timeout=60)
    lifecycle.stop(base)
    state = {k: info[k] for k in ("port", "version", "protocol", "started")}
    state["pid"] = os.getpid()  # alive, but not an agent
    lifecycle.ensure_agent_dir(base)
    lifecycle.write_state(base, state)
    assert lifecycle.find_running(base) is None
    assert lifecycle.stop(base) is False  # must not signal us
    assert not (base / "agent" / "agent.json").exists()


def test_idle_exit_removes_files(base):
    info = lifecycle.start_detached(base, idle_timeout=1)
    assert info["idle_timeout"] == 1
    assert wait_gone(info["pid"], 15)
    assert not (base / "agent" / "agent.json").exists()
    assert not (base / "agent" / "secret").exists()
    assert "idle for 1 s" in (base / "agent" / "agent.log").read_text()


def test_open_connection_holds_off_idle_exit(base):
    info = lifecycle.start_detached(base, idle_timeout=1)
    conn = AgentConnection.connect("127.0.0.1", info["port"], lifecycle.read_secret(base))
    try:
        time.sleep(2.5)
        assert lifecycle.process_alive(info["pid"])
        assert conn.batch([("nope", {})])[0]["error"]["code"] == ErrorCode.UNKNOWN_OP
    finally:
        conn.close()
    assert wait_gone(info["pid"], 15)


def test_zero_idle_timeout_never_exits(base):
    info = lifecycle.start_detached(base, idle_timeout=0)
    assert info["idle_timeout"] == 0
    time.sleep(1.5)
    assert lifecycle.find_running(base)["pid"] == info["pid"]


def test_stop(base):
    info = lifecycle.start_detached(base, idle_timeout=60)
    assert lifecycle.stop(base) is True
    assert not lifecycle.process_alive(info["pid"])
    assert not (base / "agent" / "agent.json").exists()
    assert not (base / "agent" / "secret").exists()
    assert lifecycle.stop(base) is False
    result = cli("stop")
    assert result.returncode == 0 and "no agent running" in result.stdout
    result = cli("status", "--json")
    assert result.returncode == 1 and "no agent running" in result.stderr


def test_cli_start_status_stop(base):
    started = cli("start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("agent started: pid ")
    status = cli("status", "--json")
    assert status.returncode == 0
    info = json.loads(status.stdout)
    assert info["pid"] == lifecycle.find_running(base)["pid"]
    stopped = cli("stop", "--json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout) == {"stopped": True}
    assert wait_gone(info["pid"])


def test_version_mismatch_replaces_the_agent(base):
    old = lifecycle.start_detached(base, idle_timeout=60)
    # Pretend the running agent is an older release: its state file is what start reads.
    state = json.loads((base / "agent" / "agent.json").read_text())
    state["version"] = "0.0.0-old"
    lifecycle.write_state(base, state)
    new = lifecycle.start_detached(base, idle_timeout=60)
    assert new["pid"] != old["pid"] and new["reused"] is False
    assert new["version"] == __version__
    assert not lifecycle.process_alive(old["pid"])
    assert_serves(new, base)


def test_protocol_mismatch_replaces_the_agent(base):
    old = lifecycle.start_detached(base, idle_timeout=60)
    state = json.loads((base / "agent" / "agent.json").read_text())
    state["protocol"] = -1
    lifecycle.write_state(base, state)
    new = lifecycle.start_detached(base, idle_timeout=60)
    assert new["pid"] != old["pid"] and new["reused"] is False


def test_config_file_and_flag_override(base):
    folder = lifecycle.ensure_agent_dir(base)
    (folder / "config.yaml").write_text("path_policy: marker:MYMARK\nidle_timeout: 123\n")
    info = lifecycle.start_detached(base)
    assert info["path_policy"] == "marker:MYMARK" and info["idle_timeout"] == 123
    lifecycle.stop(base)
    info = lifecycle.start_detached(base, idle_timeout=77, policy_spec="permissive")
    assert info["path_policy"] == "permissive" and info["idle_timeout"] == 77


def run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """`seamless-service agent ARGS` in this process (no interpreter start-up to pay)."""
    from seamless_service.agent.cli import main

    try:
        code = main(["agent", *args])
    except SystemExit as exc:  # argparse --help / usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("config, fragment", [
    ("idle_timeout: -5\n", "idle_timeout"),
    ("idle_timeout: soon\n", "idle_timeout"),
    ("path_policy: bogus\n", "path policy"),
    ("policy: seamless\n", "unknown key"),
    ("path_policy: [unclosed\n", "not valid YAML"),
    ("- a list\n", "mapping"),
])
def test_bad_config_is_one_line_and_exit_2(base, capsys, config, fragment):
    folder = lifecycle.ensure_agent_dir(base)
    (folder / "config.yaml").write_text(config)
    result = cli("serve")  # the real thing, in its own process
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    code, _, err = run_in_process(capsys, "start")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
    assert lifecycle.find_running(base) is None


def test_bad_flags_are_one_line_and_exit_2(base, capsys):
    for args in (["--path-policy", "nonsense"], ["--idle-timeout", "-1"]):
        result = cli("serve", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        code, _, err = run_in_process(capsys, "start", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert lifecycle.find_running(base) is None


def test_every_agent_command_has_help_with_an_example(capsys):
    for action in ("serve", "start", "status", "stop"):
        code, out, _ = run_in_process(capsys, action, "--help")
        assert code == 0
        assert "example" in out.lower(), action
    result = cli("--help")  # through `python -m seamless_service`
    assert result.returncode == 0 and "examples:" in result.stdout


STUBBORN = """
import fcntl, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_stop_falls_back_to_sigkill(base):
    """An 'agent' that holds the lock but ignores SIGTERM is killed, and its files cleaned."""
    folder = lifecycle.ensure_agent_dir(base)
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN, str(folder / "agent.lock")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        lifecycle.write_state(base, {"pid": proc.pid, "port": 1, "version": __version__,
                                     "protocol": PROTOCOL_VERSION, "started": time.time()})
        lifecycle.write_secret(base, pauth.make_secret())
        assert lifecycle.find_running(base)["pid"] == proc.pid
        assert lifecycle.stop(base, timeout=0.3) is True
        assert proc.wait(10) == -signal.SIGKILL
        assert not (folder / "agent.json").exists() and not (folder / "secret").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_running_agent_without_a_usable_secret_is_replaced(base):
    old = lifecycle.start_detached(base, idle_timeout=60)
    (base / "agent" / "secret").unlink()
    new = lifecycle.start_detached(base, idle_timeout=60)
    assert new["pid"] != old["pid"] and new["reused"] is False
    assert_serves(new, base)


def age_past_orphan_grace(pid: int) -> None:
    """Wait until `pid` is older than lifecycle.ORPHAN_GRACE (younger, it may be starting)."""
    started = lifecycle.procinfo.read_proc(pid).start_time
    time.sleep(max(0.0, started + lifecycle.ORPHAN_GRACE + 0.2 - time.time()))


def test_a_corrupt_or_missing_state_file_does_not_orphan_the_agent(base):
    # Before: `status` said "no agent running", `start` failed with "already running" and
    # `stop` said "no agent running" (exit 0), leaving the agent running unreachable.
    first = lifecycle.start_detached(base, idle_timeout=60)
    age_past_orphan_grace(first["pid"])
    state = base / "agent" / "agent.json"
    state.write_text('{"pid": 12, "po')  # truncated
    status = cli("status")
    assert status.returncode == 3, status
    assert f"agent pid {first['pid']} is running but clients cannot use it" in status.stderr
    assert "unreadable" in status.stderr and "Traceback" not in status.stderr
    assert len(status.stderr.strip().splitlines()) == 1
    started = cli("start", "--json")
    assert started.returncode == 0, started.stderr
    second = json.loads(started.stdout)
    assert second["pid"] != first["pid"] and second["reused"] is False
    assert wait_gone(first["pid"])
    assert_serves(second, base)

    state.unlink()  # missing: the newest agent's file is gone
    age_past_orphan_grace(second["pid"])
    status = cli("status", "--json")
    assert status.returncode == 3 and "is missing" in status.stderr
    assert json.loads(status.stdout)["pid"] == second["pid"]
    stopped = cli("stop", "--json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout) == {"stopped": True}
    assert wait_gone(second["pid"])
    assert cli("status").returncode == 1


class NotAnAgent:
    """A listener on a port of its own that greets every connection with junk."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n".ljust(pauth.SERVER_HELLO_BYTES))

    def close(self) -> None:
        self.sock.close()


def test_a_port_that_does_not_answer_as_the_agent_is_never_reported(base):
    first = lifecycle.start_detached(base, idle_timeout=60)
    foreign = NotAnAgent()
    try:
        state = base / "agent" / "agent.json"
        data = json.loads(state.read_text())
        data["port"] = foreign.port  # pid and lock are right; the port is someone else's
        state.write_text(json.dumps(data))
        status = cli("status")
        assert status.returncode == 3, status
        assert f"port {foreign.port} in its state file does not answer as the agent" in status.stderr
        assert "not a seamless-service agent" in status.stderr
        second = lifecycle.start_detached(base, idle_timeout=60)
        assert second["reused"] is False and second["port"] != foreign.port
        assert wait_gone(first["pid"])
        assert_serves(second, base)
        assert cli("status").returncode == 0
    finally:
        foreign.close()
