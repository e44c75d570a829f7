"""Fixtures for the transport and API tests: real sshd servers, real agents, real services.

Nothing here is autouse: tests that want a remote host ask for one.

- `client_cache` (session): a private XDG_CACHE_HOME (endpoints, wheels, transport choices).
- `remote` (session): ONE sshd server whose first contact went through
  `AgentTransport.batch` (so the agent was deployed automatically by the client), with
  remote state made as a user would: real toy services launched by remote-http-launcher
  as the throwaway user, hand-written odd state files, a 200 KB log, data directories
  (one with a space, one with shell metacharacters), the rhl-* helpers linked into
  ~/miniforge3/bin (what the ssh transport's PATH prefix looks at), and a second client
  key forced through `rhl-guard --data-roots FILE` (alias `<alias>-guard`) and a third
  through `rhl-guard --clear-policy seamless` (alias `<alias>-guard-seamless`).
- `second_remote` (session): another deployed server (fan-out), deployed in parallel with
  the first.
- `sshd`: a fresh server, never deployed (host-key and refusal cases).

Everything runs as the throwaway users of tests/support/sshd.py; helpers below act on
the remote side through the real `ssh` client or, for files, as root with chown.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import private_xdg_cache
from tests.support.cli import Home, remote_home
from tests.support.processes import alive
from tests.support.services import wait_for
from tests.support.sshd import SshServer, _keygen, sshd_available

REASON = sshd_available()
VENV_REL = ".local/share/seamless-service/agent-venv"
# The demo service module is stdlib-only, so it runs as a plain script under the remote
# user's own Python.
TOY_SOURCE = Path(__file__).resolve().parents[2] / "seamless_service" / "demo" / "service.py"
BIG_LOG_BYTES = 200 * 1024
HELPERS = ("rhl-ps", "rhl-ps-persistent", "rhl-inspect", "rhl-logs", "rhl-stop", "rhl-rm", "rhl-clear",
           "rhl-pid-alive", "rhl-launch-service")


def require_sshd() -> None:
    if REASON is not None:
        pytest.skip(REASON)


@pytest.fixture(scope="session")
def client_cache(tmp_path_factory) -> Iterator[Path]:
    yield from private_xdg_cache(tmp_path_factory, "xdg-cache-client")


class Notices(list):
    """A `notice` callable that records the one-line messages."""

    def __call__(self, message: str) -> None:
        self.append(message)


# --------------------------------------------------------------------------- remote side


@dataclass
class Remote:
    """An sshd server seen as a remote host: its alias, its user's files and processes."""

    server: SshServer
    first_call_results: list = field(default_factory=list)
    first_call_notices: list = field(default_factory=list)
    first_call_seconds: float = 0.0

    @property
    def alias(self) -> str:
        return self.server.alias

    @property
    def guard_alias(self) -> str:
        return self.server.alias + "-guard"

    @property
    def seamless_guard_alias(self) -> str:
        """The alias of the key forced through `rhl-guard --clear-policy seamless`."""
        return self.server.alias + "-guard-seamless"

    @property
    def ssh_config(self) -> Path:
        return self.server.ssh_config

    @property
    def home(self) -> Path:
        return self.server.home

    @property
    def venv(self) -> Path:
        return self.server.home / VENV_REL

    @property
    def state_dir(self) -> Path:
        return self.server.home / ".remote-http-launcher" / "server"

    @property
    def data(self) -> Path:
        return self.server.home / "data"

    # -- files, owned by the remote user as if they had made them

    def write(self, relpath: str, data: str | bytes, mode: int = 0o644) -> Path:
        return self.server.write_file(relpath, data, mode)

    def mkdir(self, relpath: str) -> Path:
        pw = pwd.getpwnam(self.server.user)
        folder = self.home
        for part in Path(relpath).parts:
            folder = folder / part
            if not folder.exists():
                folder.mkdir(mode=0o755)
                os.chown(folder, pw.pw_uid, pw.pw_gid)
        return folder

    # -- commands as the remote user

    def ssh(self, argv: list[str] | str, *, timeout: float = 60, alias: str | None = None):
        import subprocess

        remote = argv if isinstance(argv, str) else shlex.join(argv)
        return subprocess.run(["ssh", "-F", str(self.ssh_config), alias or self.alias, remote],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def helper_rows(self, *argv: str) -> list[dict[str, Any]]:
        """NDJSON of an rhl-* helper run as the remote user (from the agent venv)."""
        result = self.ssh([str(self.venv / "bin" / argv[0]), *argv[1:]])
        assert result.returncode == 0, f"{argv} failed: {result.stderr}"
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def agent_status(self) -> dict[str, Any] | None:
        result = self.ssh([str(self.venv / "bin/python"), "-m", "seamless_service", "agent", "status", "--json"])
        lines = result.stdout.strip().splitlines()
        return json.loads(lines[-1]) if result.returncode == 0 and lines else None

    def kill_agent(self) -> int:
        """SIGKILL the running agent (pid from `agent status --json`); return its pid."""
        status = self.agent_status()
        assert status is not None, "no agent runs"
        pid = int(status["pid"])
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), timeout=10)
        return pid

    def processes(self, needle: bytes) -> list[int]:
        """Pids of the remote user whose command line contains `needle`."""
        found = []
        for pid in self.server.user_processes():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline:
                found.append(pid)
        return found

    def sshd_session_pids(self) -> list[int]:
        """The per-connection sshd processes of this user (root monitor + user child)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"sshd") and self.server.user.encode() in cmdline:
                found.append(int(entry))
        return found

    # -- services launched for real, as the remote user

    def launch(self, key: str, *extra_args: str, timeout: float = 60,
               workdir: Path | None = None) -> dict[str, Any]:
        """Launch the toy service under `key` with remote-http-launcher, over ssh (in
        `workdir`, default data/work/KEY)."""
        config = {
            "workdir": str(workdir or self.data / "work" / key),
            "key": key,
            "command": "seamless-toy-service --status-file {status_file}" + "".join(f" {a}" for a in extra_args),
            "network_interface": "127.0.0.1",
            "timeout": 20,
            "handshake": "healthcheck",
        }
        path = self.write(f"launch/{key}.yaml", json.dumps(config))  # JSON is YAML
        env = (f"PATH={shlex.quote(str(self.home / 'launch/bin'))}:{shlex.quote(str(self.venv / 'bin'))}:$PATH "
               f"RHL_TOOLS_YAML={shlex.quote(str(self.home / 'launch/tools.yaml'))}")
        result = self.ssh(f"{env} {shlex.quote(str(self.venv / 'bin/remote-http-launcher'))} "
                          f"{shlex.quote(str(path))}", timeout=timeout)
        state_path = self.state_dir / f"{key}.json"
        assert state_path.exists(), f"launch of {key} failed: {result.stdout}\n{result.stderr}"
        state = json.loads(state_path.read_text())
        assert state.get("status") == "running", f"{key} did not come up: {state} {result.stderr}"
        return state

    def install_launcher_tools(self) -> None:
        self.write("launch/bin/seamless-toy-service",
                   f"#!{self.server.python}\n" + TOY_SOURCE.read_text(), mode=0o755)
        self.write("launch/tools.yaml", json.dumps(
            {"toy": {"command_template": "seamless-toy-service --status-file {status_file}"}}))

    def kill_service(self, key: str) -> None:
        """SIGKILL a launched service's process group (cleanup)."""
        try:
            pid = json.loads((self.state_dir / f"{key}.json").read_text()).get("pid")
        except (OSError, ValueError):
            return
        if isinstance(pid, int) and pid > 1 and pid in self.server.user_processes():
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    # -- the ssh fallback's view: helpers on the PATH prefix, a guarded key

    def link_helpers(self) -> None:
        """~/miniforge3/bin/rhl-* -> the agent venv's: found through the transport's PATH
        prefix, as on a cluster where the helpers come from the user's conda base."""
        pw = pwd.getpwnam(self.server.user)
        target = self.mkdir("miniforge3/bin")
        for name in HELPERS:
            link = target / name
            if not link.exists():
                link.symlink_to(self.venv / "bin" / name)
                os.lchown(link, pw.pw_uid, pw.pw_gid)

    def add_guarded_key(self, alias: str, policy: str) -> None:
        """Another client key whose authorized_keys line forces `rhl-guard POLICY`, and its
        alias in the ssh config."""
        identity = self.server.client_dir / f"id_{alias}"
        pub = _keygen(identity, f"guard-{alias}")
        guard = self.venv / "bin" / "rhl-guard"
        line = f'command="{guard} {policy}",no-port-forwarding {pub}\n'
        with open(self.server.server_dir / "authorized_keys", "a") as fh:
            fh.write(line)
        block = self.server.config_block(alias=alias, identity=identity)
        with open(self.ssh_config, "a") as fh:
            fh.write("\n" + block)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    return wait_for(predicate, timeout=timeout, interval=interval)


# Remote state shared by the session (keys that tests compare; tests that change state
# use their own keys).
RUNNING_KEYS = ("hashserver-clu-rw-projA", "database-clu-rw-projA--STAGE-s1")
ODD_STATES = {
    # #15: pid 0 — rhl-ps says alive (kill(0, 0) succeeds); the agent says stale.
    "hashserver-clu-rw-zeropid": {"status": "running", "pid": 0, "port": 1, "workdir": "/tmp"},
    "database-clu-ro-failed": {"status": "failed", "pid": 999999, "workdir": "/tmp"},
    "jobserver-clu-rw-projB--STAGE-s2SUBSTAGE-gpu": {"status": "stale", "pid": 4_000_000, "port": 5,
                                                     "workdir": "/tmp", "meta": {}},
}
BUFFER_DIRS = ("data/buffers/projA", "data/buffers/projB/STAGE-s1", "data/with space/projC",
               "data/we;ird $(touch PWNED) 'q'/projD")


def _make_remote_state(remote: Remote) -> None:
    remote.install_launcher_tools()
    remote.link_helpers()
    for key in RUNNING_KEYS:
        remote.launch(key)
    for key, state in ODD_STATES.items():
        remote.write(f".remote-http-launcher/server/{key}.json", json.dumps(state))
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-" * 1 + b"\n"
    big = (line * (BIG_LOG_BYTES // len(line) + 1))[:BIG_LOG_BYTES]
    remote.write(".remote-http-launcher/server/big.log", big)
    for folder in BUFFER_DIRS:
        remote.write(f"{folder}/.HASHSERVER_PREFIX", "")
        remote.write(f"{folder}/ab/cdef0123", "buffer")
    remote.write("data/db/projA/seamless.db", b"x" * 4096)
    roots = remote.write("guard/data-roots", f"{remote.data}\n")
    remote.add_guarded_key(remote.guard_alias, f"--data-roots {roots}")
    remote.add_guarded_key(remote.seamless_guard_alias, "--clear-policy seamless")


def _first_contact(remote: Remote) -> None:
    """The first call ever to this host, through the agent transport: it must deploy."""
    from seamless_service.client.transport.agent import AgentTransport

    notices = Notices()
    start = time.monotonic()
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=notices) as transport:
        remote.first_call_results = transport.batch([("hello", {})])
    remote.first_call_seconds = time.monotonic() - start
    remote.first_call_notices = list(notices)


def _start_deployed(alias: str) -> Remote:
    server = SshServer.start(alias=alias)
    remote = Remote(server)
    try:
        _first_contact(remote)
    except BaseException:
        server.close()
        raise
    return remote


@pytest.fixture(scope="session")
def _deployed_pair(client_cache) -> Iterator[tuple[Remote, Remote]]:
    require_sshd()
    made: dict[str, Remote] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            made[name] = _start_deployed(f"{name}-{os.getpid()}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # Two deploys from nothing (~10 s each) run at once.
    threads = [threading.Thread(target=start, args=(name,)) for name in ("agent-main", "agent-second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        if errors:
            raise errors[0]
        main = made["agent-main"]
        _make_remote_state(main)
        yield main, made["agent-second"]
    finally:
        for remote in made.values():
            for key in RUNNING_KEYS:
                remote.kill_service(key)
            remote.server.close()


@pytest.fixture(scope="session")
def remote(_deployed_pair) -> Remote:
    return _deployed_pair[0]


@pytest.fixture(scope="session")
def second_remote(_deployed_pair) -> Remote:
    return _deployed_pair[1]


# A cluster's data roots laid out as seamless does (workdir = ROOT/PROJECT[/STAGE-x]), with
# real services launched there: roots without a marker, a project directory without one
# (only its stage has), a marked stage below a marked project with no service of its own, a
# marker-less directory, and an orphan (marked, but no state file names it). For #11 behind
# `rhl-guard --clear-policy seamless`.
G11 = "data/g11"
G11_SERVICES = {"hashserver-g11-rw-projG": "buffers/projG", "hashserver-g11-rw-projH--STAGE-s1": "buffers/projH/STAGE-s1",
                "database-g11-rw-projG": "db/projG"}
G11_MARKED = {"buffers/projG": ".HASHSERVER_PREFIX", "buffers/projG/STAGE-s3": ".HASHSERVER_PREFIX",
              "buffers/projH/STAGE-s1": ".HASHSERVER_PREFIX", "buffers/orphan": ".HASHSERVER_PREFIX",
              "db/projG": "seamless.db"}


@pytest.fixture(scope="session")
def g11(remote: Remote) -> Path:
    """The G11 layout on the remote host; its root. The services are launched, then
    stopped with the real rhl-stop: their state (and workdir) stays, and other tests that
    count running services are not disturbed."""
    root = remote.home / G11
    for folder, marker in G11_MARKED.items():
        remote.write(f"{G11}/{folder}/{marker}", b"x" * 4096 if marker == "seamless.db" else "")
        if marker != "seamless.db":
            remote.write(f"{G11}/{folder}/ab/cdef0123", "buffer")
    remote.mkdir(f"{G11}/buffers/nomarker/sub")
    for key, folder in G11_SERVICES.items():
        remote.launch(key, workdir=root / folder)
    stopped = remote.ssh([str(remote.venv / "bin/rhl-stop"), *G11_SERVICES])
    assert stopped.returncode == 0, stopped.stderr
    return root


@pytest.fixture
def sshd(client_cache) -> Iterator[SshServer]:
    require_sshd()
    server = SshServer.start()
    yield server
    server.close()


@pytest.fixture
def rhome(sandbox, monkeypatch, remote) -> Home:
    """The sandbox HOME with a cluster `clu` on the `remote` host (tests/support/cli.py remote_home)."""
    return remote_home(sandbox, monkeypatch, remote)
