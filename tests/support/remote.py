"""A deployed sshd server seen as a remote host (`Remote`): its alias, its user's files and
processes, services launched on it for real, its rhl-* helpers on the ssh transport's PATH
prefix and its keys forced through rhl-guard; `start_deployed` starts one whose first
contact deployed the agent. The client tests' `remote` fixtures (tests/client/conftest.py)
hand these out; tests/support/remote_state.py is what the session puts there."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import alive
from tests.support.services import wait_until
from tests.support.sshd import SshServer, _keygen
from tests.support.transports import Notices

VENV_REL = ".local/share/seamless-service/agent-venv"
# The demo service module is stdlib-only, so it runs as a plain script under the remote
# user's own Python.
TOY_SOURCE = Path(__file__).resolve().parents[2] / "seamless_service" / "demo" / "service.py"
HELPERS = ("rhl-ps", "rhl-ps-persistent", "rhl-inspect", "rhl-logs", "rhl-stop", "rhl-rm", "rhl-clear",
           "rhl-pid-alive", "rhl-launch-service")


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


def _first_contact(remote: Remote) -> None:
    """The first call ever to this host, through the agent transport: it must deploy."""
    from seamless_service.client.transport.agent import AgentTransport

    notices = Notices()
    start = time.monotonic()
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=notices) as transport:
        remote.first_call_results = transport.batch([("hello", {})])
    remote.first_call_seconds = time.monotonic() - start
    remote.first_call_notices = list(notices)


def start_deployed(alias: str) -> Remote:
    """A new sshd server under `alias` whose first contact (through `AgentTransport`)
    deployed the agent; the server is closed again if that fails."""
    server = SshServer.start(alias=alias)
    remote = Remote(server)
    try:
        _first_contact(remote)
    except BaseException:
        server.close()
        raise
    return remote
