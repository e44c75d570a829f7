"""`seamless-service inspect | logs | stop | rm | clear` on real toy services, launched by the
real remote-http-launcher under the keys resolution gives, compared with seamless-config's
`seamless-service-*` commands on identically prepared state."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from seamless_service.client.config.resolve import resolve_service
from seamless_service.client.config.selection import Selection
from tests.support.cli import SHIM, Home, assert_one_line_error, cli, make_home, seamless_config_cli
from tests.support.processes import alive, dead_pid
from tests.support.services import wait_for


@pytest.fixture
def seamless_home(sandbox, monkeypatch) -> Home:
    return make_home(sandbox, monkeypatch)


def resolve(home: Home, **sel) -> tuple[str, str]:
    """(key, expanded workdir) of a service in the project folder."""
    cwd = os.getcwd()
    os.chdir(home.proj)
    try:
        got = resolve_service(Selection(**sel))
    finally:
        os.chdir(cwd)
    return got.key, got.local_workdir()


def launch(home: Home, **sel) -> tuple[str, dict]:
    key, workdir = resolve(home, **sel)
    state = home.sandbox.launch(key, workdir=workdir)
    assert state["status"] == "running", state
    return key, state


def server_status(home: Home, key: str) -> str | None:
    rows = home.sandbox.helper_ndjson("rhl-ps", "--json")
    return next((r["status"] for r in rows if r["key"] == key), None)


def client_path(home: Home, key: str) -> Path:
    return home.sandbox.client_dir / f"{key}.json"


# ---------------------------------------------------------------- inspect, logs, stop


def test_inspect_logs_stop_like_seamless_config(seamless_home):
    home = seamless_home
    ours_key, ours_state = launch(home, service="hashserver", stage="a")
    their_key, their_state = launch(home, service="hashserver", stage="b")
    sel_a, sel_b = ["--service", "hashserver", "--stage", "a"], ["--service", "hashserver", "--stage", "b"]

    for command, extra in (("inspect", []), ("logs", ["--tail", "2"]), ("logs", [])):
        ours = cli(home, command, *sel_a, *extra)
        theirs = seamless_config_cli(home, command, *sel_a, *extra)
        assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
        assert ours.stdout == theirs.stdout, command
    assert json.loads(cli(home, "inspect", *sel_a).stdout)["pid"] == ours_state["pid"]
    assert len(cli(home, "logs", *sel_a, "--tail", "2").stdout.splitlines()) == 2

    ours = cli(home, "stop", *sel_a)
    theirs = seamless_config_cli(home, "stop", *sel_b)
    assert (ours.returncode, ours.stdout) == (0, f"{ours_key}: stopped\n"), ours.stderr
    assert (theirs.returncode, theirs.stdout) == (0, f"{their_key}: stopped\n")
    for key, state in ((ours_key, ours_state), (their_key, their_state)):
        wait_for(lambda: not alive(state["pid"]))
        assert server_status(home, key) == "stale"
        data = json.loads(client_path(home, key).read_text())
        assert list(data) == ["hostname", "port", "status"] and data["status"] == "stale"
    # #19: ours stays 0600 and leaves no temp file behind
    assert client_path(home, ours_key).stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in home.sandbox.client_dir.iterdir()) == sorted(
        [f"{ours_key}.json", f"{their_key}.json"])
    # The log outlives the service, for both
    assert cli(home, "logs", *sel_a).stdout == seamless_config_cli(home, "logs", *sel_a).stdout != ""


def test_stop_missing_state_does_not_mark_client_20(seamless_home):
    home = seamless_home
    key, _ = resolve(home, service="database", stage="gone")
    home.sandbox.write_state(key, {"hostname": "127.0.0.1", "port": 1}, side="client")
    ours = cli(home, "stop", "--service", "database", "--stage", "gone")
    assert (ours.returncode, ours.stdout) == (0, f"{key}: missing state\n")
    assert "no state file on this machine" in ours.stderr
    assert "status" not in json.loads(client_path(home, key).read_text())
    theirs = seamless_config_cli(home, "stop", "--service", "database", "--stage", "gone")
    assert theirs.stdout == ours.stdout
    assert json.loads(client_path(home, key).read_text())["status"] == "stale"  # seamless-config's #20


def test_logs_follow_until_ctrl_c(seamless_home, tmp_path):
    home = seamless_home
    key, state = launch(home, service="database")
    out = tmp_path / "follow.out"
    with out.open("wb") as handle:
        proc = subprocess.Popen([sys.executable, "-c", SHIM, "logs", "--service", "database", "--tail", "1",
                                 "--follow"], cwd=home.proj, env=home.env(), stdout=handle,
                                stderr=subprocess.PIPE)
    try:
        wait_for(lambda: out.read_bytes().endswith(b"\n"), timeout=30)
        urllib.request.urlopen(f"http://127.0.0.1:{state['port']}/follow-marker", timeout=10).read()
        wait_for(lambda: b"/follow-marker" in out.read_bytes(), timeout=30)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2 and b"/follow-marker" in lines[1]


def test_logs_errors(seamless_home):
    home = seamless_home
    line = assert_one_line_error(cli(home, "logs", "--service", "hashserver", "--stage", "none"), 1)
    assert "no log file for 'hashserver-lc-rw-myproj--STAGE-none'" in line
    assert "--tail must be >= 0" in assert_one_line_error(cli(home, "logs", "--service", "hashserver",
                                                              "--tail", "-1"), 2)
    assert "no state file" in assert_one_line_error(cli(home, "inspect", "--service", "hashserver"), 1)


def test_key_names_the_service_on_the_cluster_host_from_any_folder(seamless_home):
    """`--key KEY --cluster C`: the launcher's raw key, no resolution (seamless.yaml unread)."""
    home = seamless_home
    key, state = launch(home, service="hashserver", stage="k")
    outside = home.sandbox.root     # no seamless.yaml here
    by_key = cli(home, "inspect", "--key", key, "--cluster", "lc", cwd=outside)
    by_service = cli(home, "inspect", "--service", "hashserver", "--stage", "k")
    assert by_key.returncode == by_service.returncode == 0, (by_key.stderr, by_service.stderr)
    assert by_key.stdout == by_service.stdout and json.loads(by_key.stdout)["pid"] == state["pid"]
    logs = cli(home, "logs", "--key", key, "--cluster", "lc", "--tail", "1", cwd=outside)
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 1
    stop = cli(home, "stop", "--key", key, "--cluster", "lc", cwd=outside)
    assert (stop.returncode, stop.stdout) == (0, f"{key}: stopped\n"), stop.stderr
    wait_for(lambda: not alive(state["pid"]))
    assert json.loads(client_path(home, key).read_text())["status"] == "stale"
    # a key that is not there: the agent's not-found, one line
    missing = cli(home, "inspect", "--key", key + "x", "--cluster", "lc", cwd=outside)
    assert "no state file" in assert_one_line_error(missing, 1)
    # the cluster must be known: it chooses the host
    assert "unknown cluster 'nope'" in assert_one_line_error(
        cli(home, "inspect", "--key", key, "--cluster", "nope", cwd=outside), 2)


def kill_behind_its_back(pid: int) -> None:
    """The service dies without the launcher knowing: its state file still says running."""
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)


def test_stop_of_a_dead_service_says_already_gone_and_marks_stale_like_seamless_config(seamless_home):
    """rhl-stop's `already gone` (seamless-service-stop prints it), the server file marked
    stale, the client file too; before, ours said `not running` and left `running`."""
    home = seamless_home
    sel = ["--service", "hashserver", "--stage"]
    launched = {stage: launch(home, service="hashserver", stage=stage) for stage in ("a", "b")}
    for stage, (key, state) in launched.items():
        home.sandbox.write_state(key, {"hostname": "127.0.0.1", "port": state["port"]}, side="client")
        client_path(home, key).chmod(0o600)
        kill_behind_its_back(state["pid"])
    (ours_key, _), (their_key, _) = launched["a"], launched["b"]
    ours = cli(home, "stop", *sel, "a")
    theirs = seamless_config_cli(home, "stop", *sel, "b")
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, f"{ours_key}: already gone\n", "")
    assert (theirs.returncode, theirs.stdout) == (0, f"{their_key}: already gone\n")
    for key, _ in launched.values():
        assert server_status(home, key) == "stale"
        assert json.loads((home.sandbox.server_dir / f"{key}.json").read_text())["status"] == "stale"
        assert json.loads(client_path(home, key).read_text())["status"] == "stale"
    assert (home.sandbox.server_dir / f"{ours_key}.json").stat().st_mode & 0o777 == 0o600  # #19
    assert client_path(home, ours_key).stat().st_mode & 0o777 == 0o600


def test_stop_cluster_reports_and_marks_dead_rows_like_seamless_config(seamless_home, tmp_path):
    """A cluster-wide stop passes the stale/failed/dead rows too, as seamless-service-stop
    does (run on an identical copy of the state): same lines, same files."""
    home = seamless_home
    keys = []
    for project in ("d1", "d2"):
        key, state = launch(home, service="hashserver", cluster="lc", project=project)
        home.sandbox.write_state(key, {"hostname": "127.0.0.1", "port": state["port"]}, side="client")
        kill_behind_its_back(state["pid"])
        keys.append(key)
    dead = dead_pid()
    for key, status in (("database-lc-rw-d1", "failed"), ("database-lc-rw-d2", "stale")):
        home.sandbox.write_state(key, {"workdir": "/tmp", "status": status, "pid": dead})
        keys.append(key)
    keys.sort()  # rhl-ps order
    copy = tmp_path / "copy-home"
    shutil.copytree(home.home, copy, symlinks=True)
    theirs = seamless_config_cli(home, "stop", "--cluster", "lc", env=home.env(HOME=str(copy)))
    ours = cli(home, "stop", "--cluster", "lc")
    assert theirs.returncode == ours.returncode == 0, (theirs.stderr, ours.stderr)
    assert ours.stdout == theirs.stdout == "".join(f"{k}: already gone\n" for k in keys)
    for side in ("server", "client"):
        for path in sorted((home.sandbox.base / side).glob("*.json")):
            mine = json.loads(path.read_text())
            assert mine["status"] == "stale", path
            assert mine == json.loads((copy / ".remote-http-launcher" / side / path.name).read_text()), path


# ---------------------------------------------------------------- stop --cluster


def test_stop_cluster_filters_and_pidless_rows_12_13(seamless_home):
    home = seamless_home
    k1, s1 = launch(home, service="hashserver", cluster="lc", project="p1")
    k1ro, s1ro = launch(home, service="hashserver", cluster="lc", project="p1", mode="ro")
    k2, s2 = launch(home, service="hashserver", cluster="lc", project="p2")
    starting = "database-lc-rw-p2"  # early `starting`: no pid yet (#13)
    starting_path = home.sandbox.write_state(starting, {"workdir": "/tmp", "status": "starting"})
    home.sandbox.write_state("database-lc-ro-p1", {"workdir": "/tmp", "dry_run": True, "command": "x"})
    stale_before = home.sandbox.write_state("database-lc-rw-p1", {"workdir": "/tmp", "status": "stale", "pid": 1})

    ours = cli(home, "stop", "--cluster", "lc", "--project", "p1")
    # no --mode: both modes (the ps order is the key order: -ro- before -rw-); every row of
    # the cluster, as seamless-service-stop: the dry-run one and the stale one (whose pid 1
    # lives, but is not the service) are reported, not signalled
    assert (ours.returncode, ours.stdout) == (0, "database-lc-ro-p1: not running\ndatabase-lc-rw-p1: not running\n"
                                              f"{k1ro}: stopped\n{k1}: stopped\n"), ours.stderr
    wait_for(lambda: not alive(s1["pid"]) and not alive(s1ro["pid"]))
    assert alive(s2["pid"]) and server_status(home, k2) == "running"  # #12: p2 untouched
    assert json.loads(stale_before.read_text())["status"] == "stale"  # stale rows not re-signalled

    ours = cli(home, "stop", "--cluster", "lc", "--project", "p2")
    assert ours.returncode == 1  # the starting row could not be stopped ...
    lines = ours.stdout.splitlines()
    assert f"{k2}: stopped" in lines  # ... but it did not block the others (#13)
    assert any(line.startswith(f"{starting}: invalid pid") for line in lines)
    wait_for(lambda: not alive(s2["pid"]))
    assert json.loads(starting_path.read_text()) == {"workdir": "/tmp", "status": "starting"}

    nothing = cli(home, "stop", "--cluster", "lc", "--project", "p3")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert nothing.stderr == "seamless-service: this machine: no service matched; nothing stopped\n"
    assert "--service or --cluster is required" in assert_one_line_error(cli(home, "stop"), 2)


# ---------------------------------------------------------------- rm


def test_rm_running_refused_then_sides(seamless_home):
    home = seamless_home
    key, state = launch(home, service="hashserver", stage="r")
    sel = ["--service", "hashserver", "--stage", "r"]
    server_file = home.sandbox.server_dir / f"{key}.json"

    refused = cli(home, "rm", *sel)
    assert refused.returncode == 1 and "refused: service is running" in refused.stderr
    assert refused.stdout == ""
    assert server_file.exists() and client_path(home, key).exists() and alive(state["pid"])

    client = cli(home, "rm", "--client", *sel)
    assert (client.returncode, client.stdout) == (0, f"removed {client_path(home, key)}\n")
    assert server_file.exists() and not client_path(home, key).exists()

    assert cli(home, "stop", *sel).returncode == 0
    server = cli(home, "rm", "--server", *sel)
    assert (server.returncode, server.stdout) == (0, f"removed {server_file}\n")
    assert (home.sandbox.server_dir / f"{key}.log").exists()  # logs are kept

    ours, theirs = cli(home, "rm", *sel), seamless_config_cli(home, "rm", *sel)
    assert ours.returncode == theirs.returncode == 0
    assert theirs.stdout == f"{key}: not found\n{key}: not found\n"  # twice, saying neither side
    assert ours.stdout == (f"{key}: not found (no server state file on this machine)\n"
                           f"{key}: not found (no client file on this machine)\n")


def test_rm_force_removes_running_state(seamless_home):
    home = seamless_home
    key, state = launch(home, service="database", stage="f")
    forced = cli(home, "rm", "--server", "--force", "--service", "database", "--stage", "f")
    assert forced.returncode == 0 and "still running" in forced.stderr
    assert not (home.sandbox.server_dir / f"{key}.json").exists()
    os.killpg(state["pid"], signal.SIGKILL)  # the orphan --force made


def test_rm_cluster_honours_filters_12(seamless_home):
    home = seamless_home
    for project in ("q1", "q2"):
        for side in ("server", "client"):
            home.sandbox.write_state(f"hashserver-lc-rw-{project}",
                                     {"status": "stale", "pid": 1, "port": 5} if side == "server"
                                     else {"hostname": "127.0.0.1", "port": 5}, side=side)
    home.sandbox.write_state("hashserver-rc-rw-q1", {"hostname": "rc.invalid", "port": 5}, side="client")
    ours = cli(home, "rm", "--cluster", "lc", "--project", "q1")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == (f"removed {home.sandbox.server_dir}/hashserver-lc-rw-q1.json\n"
                           f"removed {home.sandbox.client_dir}/hashserver-lc-rw-q1.json\n")
    names = sorted(p.name for p in home.sandbox.client_dir.iterdir())
    assert names == ["hashserver-lc-rw-q2.json", "hashserver-rc-rw-q1.json"]
    assert (home.sandbox.server_dir / "hashserver-lc-rw-q2.json").exists()
    # seamless-config ignores --project in cluster mode (#12): q2 goes too
    assert seamless_config_cli(home, "rm", "--cluster", "lc", "--project", "q1").returncode == 0
    assert not (home.sandbox.server_dir / "hashserver-lc-rw-q2.json").exists()


# ---------------------------------------------------------------- clear


def _buffers(path: Path, fresh: bool = True) -> Path:
    (path / "ab").mkdir(parents=True, exist_ok=not fresh)
    (path / ".HASHSERVER_PREFIX").write_text("")
    (path / "ab" / ("ab" + "0" * 62)).write_bytes(b"x" * 100)
    (path / "cd").mkdir(exist_ok=not fresh)
    return path


def test_clear_refused_while_running_then_keeps_marker_23(seamless_home):
    home = seamless_home
    key, workdir = resolve(home, service="hashserver", stage="c")
    path = _buffers(Path(workdir))
    state = home.sandbox.launch(key, workdir=path)
    sel = ["--service", "hashserver", "--stage", "c"]

    running = cli(home, "clear", *sel, "--yes")
    assert f"service {key} is running; stop it first (or pass --force)" in assert_one_line_error(running, 1)
    assert (path / "ab").is_dir()
    forced = cli(home, "clear", *sel, "--yes", "--force")  # the user insists: cleared under it
    # ab, the buffer in it, cd: every entry removed counts, not only the top-level ones
    assert (forced.returncode, forced.stdout) == (0, f"removed 3 item(s) from {path}\n"), forced.stderr
    assert alive(state["pid"]) and sorted(os.listdir(path)) == [".HASHSERVER_PREFIX"]
    _buffers(path, fresh=False)

    assert cli(home, "stop", *sel).returncode == 0
    wait_for(lambda: not alive(state["pid"]))
    unconfirmed = cli(home, "clear", *sel)
    assert "pass --yes to confirm" in assert_one_line_error(unconfirmed, 2)
    assert (path / "ab").is_dir()

    cleared = cli(home, "clear", *sel, "--yes")
    assert (cleared.returncode, cleared.stdout) == (0, f"removed 3 item(s) from {path}\n"), cleared.stderr
    assert sorted(os.listdir(path)) == [".HASHSERVER_PREFIX"]

    # seamless-config on an identical directory: same line format, but it also deletes the marker
    their_path = _buffers(Path(resolve(home, service="hashserver", stage="d")[1]))
    theirs = seamless_config_cli(home, "clear", "--service", "hashserver", "--stage", "d")
    assert re.fullmatch(rf"removed 3 item\(s\) from {re.escape(str(their_path))}\n", theirs.stdout)
    assert os.listdir(their_path) == []


def test_clear_usage_errors(seamless_home):
    home = seamless_home
    for service in ("jobserver", None):
        argv = ["clear", "--yes"] + (["--service", service] if service else [])
        assert "--service must be hashserver or database" in assert_one_line_error(cli(home, *argv), 2)
    (home.home / ".seamless" / "clusters.yaml").write_text(
        "local_cluster: t\nt:\n  frontends:\n    - hostname: x\n      hashserver: {bufferdir: /tmp}\n")
    line = assert_one_line_error(cli(home, "clear", "--service", "hashserver", "--cluster", "t",
                                     "--project", "p", "--yes"), 1)
    # /tmp/p is not /tmp, so it goes to the agent, whose path policy refuses it (no marker)
    assert "does not contain required marker file" in line and "/tmp/p" in line


# ---------------------------------------------------------------- bad input, hosts down


def test_unreachable_host_is_one_line(seamless_home, tmp_path):
    home = seamless_home
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host downhost\n  HostName 127.0.0.1\n  Port {port}\n  BatchMode yes\n"
                          f"  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    with (home.home / ".seamless" / "clusters.yaml").open("a") as handle:
        handle.write("down:\n  frontends:\n    - hostname: down.invalid\n      ssh_hostname: downhost\n"
                     "      hashserver: {bufferdir: /srv/down}\n")
    common = ["--cluster", "down", "--project", "p", "--ssh-config", str(ssh_config), "--timeout", "10"]
    for argv in (["inspect", "--service", "hashserver"], ["logs", "--service", "hashserver"],
                 ["stop", "--service", "hashserver"], ["rm", "--server", "--service", "hashserver"],
                 ["clear", "--service", "hashserver", "--yes"], ["stop"]):
        result = cli(home, *argv, *common)
        assert "downhost" in assert_one_line_error(result, 1), argv


def test_unknown_cluster_everywhere(seamless_home):
    home = seamless_home
    for argv in (["inspect", "--service", "hashserver"], ["stop"], ["rm"], ["stop", "--service", "database"]):
        line = assert_one_line_error(cli(home, *argv, "--cluster", "nope"), 2)
        assert "unknown cluster 'nope' (known: lc, rc, r2, xtra, lh)" in line, argv


def test_rm_keeps_client_files_when_the_server_side_cannot_be_checked_38(seamless_home):
    home = seamless_home
    key = "hashserver-rc-rw-p"
    client_file = home.sandbox.write_state(key, {"hostname": "rc.invalid", "port": 60101}, side="client")
    kept = cli(home, "rm", "--cluster", "rc", "--transport", "ssh", "--timeout", "5")
    assert kept.returncode == 1 and kept.stdout == ""
    assert "client files kept: could not check the server side on rc-ssh" in kept.stderr
    assert client_file.exists()  # the service may still run: its connection file stays
    forced = cli(home, "rm", "--cluster", "rc", "--transport", "ssh", "--timeout", "5", "--force")
    assert forced.returncode == 1  # the host is still unreachable ...
    assert not client_file.exists()  # ... but the user insisted on the client side
