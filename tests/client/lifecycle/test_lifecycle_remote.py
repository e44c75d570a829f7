"""start / restart / reset against a REAL sshd "server" with the REAL Seamless services
(hashserver, seamless-database) on the server user's PATH, reached through its deployed
agent. One server and one launched set per module (the services take ~1 s to start); the
tests run in file order and build on each other's state, as a user's session would.

The server user's ~/.bashrc puts a folder with the real `hashserver` and
`seamless-database` first on PATH (bash sources it for ssh commands), so the agent,
started over ssh, launches them through `rhl-launch-service` as on a real cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import alive
from tests.support.services import wait_for
from tests.support.sshd import SshServer, require_sshd

VENV_BIN = Path(sys.executable).parent
SERVICES = ("hashserver", "seamless-database")
MAIN = "import sys; from seamless_service.client.cli.main import main; sys.exit(main(sys.argv[1:]))"
HS_KEY = "hashserver-rem-rw-projL--STAGE-s1"
DB_KEY = "database-rem-rw-projL--STAGE-s1"
SEL = ["--cluster", "rem", "--project", "projL", "--stage", "s1"]


def _services_installed() -> str | None:
    missing = [name for name in SERVICES if not (VENV_BIN / name).exists()]
    return f"real services not installed in the test venv: {', '.join(missing)}" if missing else None


def _service_script(path: Path, installed: Path, python: str) -> None:
    """The installed console script, run by the server user's own Python (this test venv's
    interpreter lives under /root, which the throwaway user cannot enter) with this venv's
    site-packages (same CPython minor version) on its path: the real service code."""
    import sysconfig

    body = installed.read_text().split("\n", 1)[1]
    site = sysconfig.get_paths()["purelib"]
    path.write_text(f"#!{python}\nimport sys\nsys.path.insert(0, {site!r})\n{body}")
    path.chmod(0o755)


class Life:
    def __init__(self, server: SshServer, client_home: Path, xdg: Path, busy_port: int):
        self.server, self.client_home, self.xdg, self.busy_port = server, client_home, xdg, busy_port

    @property
    def state_dir(self) -> Path:
        return self.server.home / ".remote-http-launcher" / "server"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)
        env.update(HOME=str(self.client_home), XDG_CACHE_HOME=str(self.xdg),
                   PATH=f"{VENV_BIN}:{env.get('PATH', '')}")
        return env

    def cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        ssh = [] if argv[0] == "resolve" else ["--ssh-config", str(self.server.ssh_config)]
        return subprocess.run([sys.executable, "-c", MAIN, *argv, *ssh],
                              env=self.env(), cwd=self.client_home, capture_output=True, text=True,
                              timeout=timeout)

    def state(self, key: str) -> dict | None:
        path = self.state_dir / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def snapshot(self) -> dict[str, float]:
        """Every file of the server's launcher state and data, with its mtime."""
        found = {}
        for folder in (self.state_dir, self.server.home / "data"):
            for path in folder.rglob("*") if folder.exists() else []:
                found[str(path)] = path.stat().st_mtime_ns
        return found


@pytest.fixture(scope="module")
def life(tmp_path_factory) -> Life:
    require_sshd()
    reason = _services_installed()
    if reason:
        pytest.skip(reason)
    server = SshServer.start(alias=f"life-{os.getpid()}")
    busy = socket.socket()
    try:
        services_bin = server.root / "services-bin"
        services_bin.mkdir(mode=0o755)
        for name in SERVICES:
            _service_script(services_bin / name, VENV_BIN / name, server.python)
        # + the agent venv's rhl-* helpers, for the ssh fallback (a user's remote-http-launcher)
        agent_bin = server.home / ".local/share/seamless-service/agent-venv/bin"
        server.write_file(".bashrc", f"export PATH={services_bin}:{agent_bin}:$PATH\n")
        client_home = tmp_path_factory.mktemp("life-client")
        (client_home / ".seamless").mkdir()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        (client_home / ".seamless" / "clusters.yaml").write_text(
            f"rem:\n  type: local\n  frontends:\n    - hostname: {server.alias}\n      ssh_hostname: {server.alias}\n"
            "      hashserver: {bufferdir: ~/data/buffers, network_interface: 127.0.0.1}\n"
            "      database: {database_dir: ~/data/db, network_interface: 127.0.0.1}\n"
            # a hashserver that cannot start: its only port is taken
            f"busy:\n  type: local\n  frontends:\n    - hostname: {server.alias}\n      ssh_hostname: {server.alias}\n"
            f"      hashserver: {{bufferdir: ~/data/busy, network_interface: 127.0.0.1, "
            f"port_start: {port}, port_end: {port}}}\n")
        yield Life(server, client_home, tmp_path_factory.mktemp("life-xdg"), port)
    finally:
        busy.close()
        server.close()


def _one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seamless-service"), result.stderr
    return lines[0]


def _health_row(life: Life, key: str) -> dict:
    result = life.cli("ps", "--cluster", "rem", "--health", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return next(r for r in rows if r.get("key") == key)


def test_start_runs_it_as_seamless_would(life):
    result = life.cli("start", "--service", "hashserver", *SEL)
    assert result.returncode == 0, result.stderr
    state = life.state(HS_KEY)
    assert state["status"] == "running"
    assert result.stdout == f"{HS_KEY}: running on {life.server.alias}:{state['port']}\n"
    # the key is resolve's; the state file is where the server's launcher keeps it, the
    # command is the one tools.yaml gives, with the status file in the SERVER's directory
    resolved = json.loads(life.cli("resolve", "--service", "hashserver", *SEL).stdout)
    assert resolved["key"] == HS_KEY
    assert state["workdir"] == "~/data/buffers/projL/STAGE-s1"
    assert state["command"].split()[0] == "hashserver"
    assert f"--status-file {life.state_dir}/{HS_KEY}.json" in state["command"]
    assert state["log"] == f"{life.state_dir}/{HS_KEY}.log"
    row = _health_row(life, HS_KEY)
    assert (row["process"], row["health"]) == ("running", "ok"), row


def test_buffer_put_through_hashserver_shows_populated_with_its_size(life):
    port = life.state(HS_KEY)["port"]
    data = b"a buffer put through the real hashserver\n" * 100
    checksum = hashlib.sha256(data).hexdigest()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{checksum}", data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201)

    def populated():
        result = life.cli("ps", "--cluster", "rem", "--persistent", "--json")
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        row = next((r for r in rows if r.get("service") == "hashserver" and r.get("stage") == "s1"), None)
        return row if row and row.get("persistent") == "populated" and (row.get("size") or 0) >= len(data) else None

    row = wait_for(populated, timeout=30, interval=0.5)
    assert row["size"] >= len(data)


def test_second_start_changes_nothing(life):
    before = life.state(HS_KEY)
    mtime = (life.state_dir / f"{HS_KEY}.json").stat().st_mtime_ns
    result = life.cli("start", "--service", "hashserver", *SEL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{HS_KEY}: already running on ")
    assert f"(pid {before['pid']})" in result.stdout
    assert life.state(HS_KEY) == before
    assert (life.state_dir / f"{HS_KEY}.json").stat().st_mtime_ns == mtime


def test_start_by_key_on_the_cluster_finds_it_and_local_is_refused(life):
    """--key with --cluster: resolved from the key, on the cluster's frontend (the server);
    --local for a service the configuration puts on the server: one line, nothing launched."""
    before = life.state(HS_KEY)
    by_key = life.cli("start", "--key", HS_KEY, "--cluster", "rem")
    assert by_key.returncode == 0, by_key.stderr
    assert by_key.stdout == (f"{HS_KEY}: already running on {life.server.alias}:{before['port']} "
                             f"(pid {before['pid']}); nothing changed\n")
    snapshot = life.snapshot()
    local = _one_line_error(life.cli("start", "--local", "--service", "hashserver", *SEL), 2)
    assert local == (f"seamless-service: --local: the configuration puts {HS_KEY} on {life.server.alias}, not on "
                     "this machine (Seamless launches the hashserver of cluster 'rem' there): drop --local, "
                     "or select the local cluster")
    assert life.snapshot() == snapshot and life.state(HS_KEY) == before


def test_restart_gives_a_new_pid_and_keeps_the_old_log(life):
    before = life.state(HS_KEY)
    old_log = (life.state_dir / f"{HS_KEY}.log").read_bytes()
    assert b"PUT" in old_log
    result = life.cli("restart", "--service", "hashserver", *SEL)
    assert result.returncode == 0, result.stderr
    after = life.state(HS_KEY)
    assert after["status"] == "running" and after["pid"] != before["pid"]
    assert result.stdout == f"{HS_KEY}: running on {life.server.alias}:{after['port']}\n"
    assert (life.state_dir / f"{HS_KEY}.log.1").read_bytes().startswith(old_log)  # + its shutdown lines
    assert b"PUT" not in (life.state_dir / f"{HS_KEY}.log").read_bytes()
    assert not alive(before["pid"])


def test_reset_dry_run_changes_nothing(life):
    assert life.cli("start", "--service", "database", *SEL).returncode == 0
    before = life.snapshot()
    result = life.cli("reset", *SEL, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for key in (HS_KEY, DB_KEY):
        assert f"stop {key} (running" in out and f"remove the state of {key}" in out
    # the workdirs as seamless-config gives them: `~` is the server user's home
    assert "clear ~/data/buffers/projL/STAGE-s1 (hashserver data, populated, " in out
    assert "clear ~/data/db/projL/STAGE-s1 (database data, populated, " in out
    assert "size unknown" not in out
    assert life.snapshot() == before
    for key in (HS_KEY, DB_KEY):
        assert _health_row(life, key)["health"] == "ok"


def test_reset_without_yes_is_refused(life):
    before = life.snapshot()
    line = _one_line_error(life.cli("reset", *SEL), 2)
    assert "--yes" in line
    assert life.snapshot() == before


def test_reset_yes_leaves_no_process_no_state_no_data(life):
    pids = [life.state(key)["pid"] for key in (HS_KEY, DB_KEY)]
    result = life.cli("reset", *SEL, "--yes")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "no service, no state, no data left" in result.stdout
    for pid in pids:
        assert not alive(pid), pid
    for key in (HS_KEY, DB_KEY):
        assert life.state(key) is None
    buffers = life.server.home / "data/buffers/projL/STAGE-s1"
    assert sorted(p.name for p in buffers.iterdir()) == [".HASHSERVER_PREFIX"]
    assert list((life.server.home / "data/db/projL/STAGE-s1").iterdir()) == []


def test_start_through_the_ssh_fallback(life):
    """The rhl-* helpers over plain ssh, as remote-http-launcher does it: same state file."""
    result = life.cli("start", "--service", "hashserver", *SEL, "--transport", "ssh")
    assert result.returncode == 0, result.stderr
    state = life.state(HS_KEY)
    assert state["status"] == "running"
    assert result.stdout == f"{HS_KEY}: running on {life.server.alias}:{state['port']}\n"
    assert f"--status-file {life.state_dir}/{HS_KEY}.json" in state["command"]
    again = life.cli("start", "--service", "hashserver", *SEL, "--transport", "ssh")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{HS_KEY}: already running on ") and f"(pid {state['pid']})" in again.stdout
    assert life.state(HS_KEY) == state
    assert _health_row(life, HS_KEY)["health"] == "ok"  # and the agent finds it healthy


@pytest.mark.parametrize("argv, code, words", [
    (["start", "--service", "nosuch", *SEL], 2, "--service: invalid choice: 'nosuch'"),
    (["start", "--key", "hashserver-rem/../x"], 2, "invalid key"),
    (["start", "--key=-rf"], 2, "invalid key"),
    (["start", "--service", "hashserver", "--cluster", "rem", "--project", "projL", "--stage", "a--b"], 2,
     "invalid --stage 'a--b'"),
    (["start", "--service", "hashserver", "--cluster", "rem", "--project", "projL", "--stage", "x/y"], 2,
     "invalid --stage 'x/y'"),
])
def test_bad_input_is_one_line_and_touches_nothing(life, argv, code, words):
    before = life.snapshot()
    line = _one_line_error(life.cli(*argv), code)
    assert words in line
    assert life.snapshot() == before


def test_a_service_that_fails_to_start_shows_its_log(life):
    key = "hashserver-busy-rw-projF"
    result = life.cli("start", "--service", "hashserver", "--cluster", "busy", "--project", "projF")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback (most recent call last)" not in result.stderr.splitlines()[0]
    assert result.stderr.startswith(f"seamless-service: {key}: failed to start")
    assert result.stdout == ""
    log = (life.state_dir / f"{key}.log").read_text().strip().splitlines()
    assert log and log[-1] in result.stderr  # the end of its log
    # the process is gone; its state says so (`starting` with a dead pid reads as failed)
    state = life.state(key)
    assert state is not None and not alive(state["pid"])
    rows = [json.loads(line) for line in life.cli("ps", "--cluster", "busy", "--json").stdout.splitlines()]
    assert [r["process"] for r in rows if r.get("key") == key] == ["failed"]
