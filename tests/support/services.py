"""Launch real services through remote-http-launcher itself, for tests.

A `LauncherSandbox` is a temporary HOME (state lands in
`$HOME/.remote-http-launcher/{server,client}`, see reference/launching-real-services.md:
REMOTE_HTTP_LAUNCHER_DIR is not used for isolation because the launcher and the helpers
read it differently), a tools.yaml whitelisting the toy service, and a bin folder that
holds the `seamless-toy-service` executable. `launch()` runs the real
`remote-http-launcher CONFIG`, so pids, ports, logs and state files are real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

TOY_NAME = "seamless-toy-service"
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


class LauncherSandbox:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.home = self.root / "home"
        self.bin = self.root / "bin"
        self.configs = self.root / "configs"
        for d in (self.home, self.bin, self.configs):
            d.mkdir(parents=True, exist_ok=True)
        toy = self.bin / TOY_NAME
        # A script file (not `python -m`), so the process's argv names the service binary
        # as a real launched service's does: the agent's pid-identity checks rely on that.
        toy.write_text(f"#!{sys.executable}\nimport sys\nfrom seamless_service.demo.service import main\n"
                       "sys.exit(main())\n")
        toy.chmod(0o755)
        self.tools_yaml = self.root / "tools.yaml"
        self.tools_yaml.write_text(yaml.safe_dump({
            "toy": {"command_template": TOY_NAME + " --status-file {status_file}"},
        }))
        self._launched: list[str] = []

    @property
    def base(self) -> Path:
        return self.home / ".remote-http-launcher"

    @property
    def server_dir(self) -> Path:
        return self.base / "server"

    @property
    def client_dir(self) -> Path:
        return self.base / "client"

    def env(self) -> dict[str, str]:
        """Environment in which helpers and the launcher see this sandbox."""
        env = dict(os.environ)
        env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)
        env["HOME"] = str(self.home)
        env["RHL_TOOLS_YAML"] = str(self.tools_yaml)
        env["PATH"] = os.pathsep.join([str(self.bin), str(VENV_BIN), env.get("PATH", "")])
        return env

    def run_helper(self, *argv: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run an installed rhl-* helper against this sandbox's state."""
        return subprocess.run(list(argv), env=self.env(), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def helper_ndjson(self, *argv: str) -> list[dict[str, Any]]:
        result = self.run_helper(*argv)
        if result.returncode != 0:
            raise AssertionError(f"{argv} failed ({result.returncode}): {result.stderr}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def launch(self, key: str, workdir: Path | str | None = None, *, extra_args: str = "",
               handshake: bool = True, meta: dict | None = None, timeout: float = 30) -> dict[str, Any]:
        """Launch the toy service under `key`; return its server state once the launcher is done."""
        workdir = Path(workdir) if workdir is not None else self.root / "work" / key
        workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "workdir": str(workdir),
            "key": key,
            "command": f"{TOY_NAME} --status-file {{status_file}}{(' ' + extra_args) if extra_args else ''}",
            "network_interface": "127.0.0.1",
            "timeout": 20,
        }
        if handshake:
            config["handshake"] = "healthcheck"
        if meta is not None:
            config["meta"] = meta
        path = self.configs / f"{key}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run([str(VENV_BIN / "remote-http-launcher"), str(path)], env=self.env(),
                                capture_output=True, text=True, timeout=timeout)
        self._launched.append(key)
        state_path = self.server_dir / f"{key}.json"
        if result.returncode != 0 and not state_path.exists():
            raise AssertionError(f"launch of {key} failed: {result.stdout}\n{result.stderr}")
        return json.loads(state_path.read_text())

    def write_state(self, key: str, data: Any, *, raw: str | None = None, side: str = "server") -> Path:
        """Hand-write a state file (for failed/stale/starting/malformed cases)."""
        directory = self.server_dir if side == "server" else self.client_dir
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{key}.json"
        path.write_text(raw if raw is not None else json.dumps(data))
        return path

    def kill_all(self) -> None:
        """Kill every process still named in a server state file (session leaders: whole group)."""
        if not self.server_dir.exists():
            return
        for path in self.server_dir.glob("*.json"):
            try:
                pid = json.loads(path.read_text()).get("pid")
            except (ValueError, OSError, AttributeError):
                continue
            if isinstance(pid, int) and pid > 1 and _is_toy(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass


def _is_toy(pid: int) -> bool:
    try:
        return TOY_NAME.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
