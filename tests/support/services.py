"""Launch real services through remote-http-launcher itself, for tests.

A `LauncherSandbox` is a temporary HOME (state lands in
`$HOME/.remote-http-launcher/{server,client}`;
REMOTE_HTTP_LAUNCHER_DIR is not used for isolation because the launcher and the helpers
read it differently), a tools.yaml whitelisting the toy service, and a bin folder that
holds the `seamless-toy-service` executable. `launch()` runs the real
`remote-http-launcher CONFIG`, so pids, ports, logs and state files are real.

The real Seamless services (hashserver, seamless-database; the `[services]` extra, which
the `[test]` extra pulls in) are launched as Seamless launches them, under the launcher's
own tools.yaml whitelist, with `real.launcher_config` (the config seamless-config makes):
- here: `LauncherSandbox.launch_real(tool, project=..., stage=...)`;
- on a test sshd "server": `launch_real_remote(server, tool, project=..., stage=...)`, from
  a venv of the services that the server's throwaway user can run (`real_services_bin`).
Tests that need them call `skip_without_real_services()` first.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from seamless_service.demo import real

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

    def launch_real(self, tool: str, *, project: str, stage: str | None = None, cluster: str = "local",
                    mode: str = "rw", data_root: Path | None = None, timeout: float = 60) -> dict[str, Any]:
        """Launch the real `tool` ("hashserver" or "database") of CLUSTER/PROJECT[/STAGE] as
        Seamless would (data in DATA_ROOT/buffers or DATA_ROOT/db, default ROOT/data); its
        server state (with its "key") once it runs."""
        config = real.launcher_config(tool, data_root=data_root or self.root / "data", cluster=cluster,
                                      project=project, stage=stage, mode=mode)
        key = real.launcher_key(config)
        Path(config["workdir"]).mkdir(parents=True, exist_ok=True)
        path = self.configs / f"{key}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = self.env()
        env.pop("RHL_TOOLS_YAML")   # the launcher's own whitelist, which names the real services
        result = subprocess.run([str(VENV_BIN / "remote-http-launcher"), str(path)], env=env,
                                capture_output=True, text=True, timeout=timeout)
        self._launched.append(key)
        state = _running_state(self.server_dir / f"{key}.json", result)
        return {**state, "key": key}

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
    """A process this sandbox launched: the toy service or a real one."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(name.encode() in cmdline for name in (TOY_NAME, *real.REAL_SERVICES.values()))


def _running_state(state_path: Path, result: subprocess.CompletedProcess) -> dict[str, Any]:
    """The launched service's server state; AssertionError (with the launcher's output and
    the log's tail) unless it runs."""
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    if result.returncode != 0 or state.get("status") != "running":
        log = Path(state.get("log") or state_path.with_suffix(".log"))
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise AssertionError(f"launch of {state_path.stem} failed ({result.returncode}, {state.get('status')}): "
                             f"{result.stdout}\n{result.stderr}\nlog: {tail}")
    return state


# --------------------------------------------------------------------------- real services

def skip_without_real_services() -> None:
    """pytest.skip, saying why, unless the real services are installed next to this Python."""
    import pytest

    missing = real.missing_services(str(VENV_BIN))
    try:
        import aiofiles  # noqa: F401 - hashserver imports it without declaring it
    except ImportError:
        missing.append("aiofiles")
    if missing:
        pytest.skip(f"the real Seamless services are not installed ({', '.join(missing)}): "
                    "pip install -e '.[test]' (the [services] extra)")


# The packages of a venv for another user, at the versions installed here.
REAL_PACKAGES = ("hashserver", "aiofiles", "seamless-database", "remote-http-launcher")
_venvs: dict[str, Path] = {}
_venvs_lock = threading.Lock()


def real_services_bin(python: str) -> Path:
    """The bin folder of a venv that any local user can run (made with `python`, e.g. a test
    sshd's `server.python`), holding the real services and remote-http-launcher at the
    versions installed here: a test sshd's throwaway user cannot read this venv (under
    /root). Made once per test process (~12 s with pip's cache), removed at exit."""
    with _venvs_lock:
        if python not in _venvs:
            _venvs[python] = _make_services_venv(python)
        return _venvs[python] / "bin"


def _make_services_venv(python: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="seamless-real-services-"))
    atexit.register(shutil.rmtree, root, True)
    root.chmod(0o755)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in REAL_PACKAGES]
    for argv in ([python, "-m", "venv", str(root / "venv")],
                 [str(root / "venv/bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, umask=0o022)
        if result.returncode != 0:
            tail = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")][-3:]
            raise AssertionError(f"could not make the real services' venv ({' '.join(argv[:4])}): {tail}")
    return root / "venv"


def launch_real_remote(server: Any, tool: str, *, project: str, stage: str | None = None,
                       cluster: str = "local", mode: str = "rw", data_root: Path | None = None,
                       timeout: float = 120) -> dict[str, Any]:
    """Launch the real `tool` on a test sshd (tests/support/sshd.py SshServer) as its user,
    through that server's remote-http-launcher over ssh, as Seamless would (data under
    DATA_ROOT, default ~/data); its server state (with its "key") once it runs."""
    bin_dir = real_services_bin(server.python)
    config = real.launcher_config(tool, data_root=data_root or server.home / "data", cluster=cluster,
                                  project=project, stage=stage, mode=mode)
    key = real.launcher_key(config)
    path = server.write_file(f"launch/{key}.yaml", json.dumps(config))   # JSON is YAML
    command = (f"mkdir -p {shlex.quote(config['workdir'])} && env -u RHL_TOOLS_YAML "
               f"PATH={shlex.quote(str(bin_dir))}:\"$PATH\" remote-http-launcher {shlex.quote(str(path))}")
    result = server.ssh(command, timeout=timeout)
    state = _running_state(server.home / ".remote-http-launcher" / "server" / f"{key}.json", result)
    return {**state, "key": key}


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    """`wait_for`, polling more often (the client tests' waits on processes and tunnels)."""
    return wait_for(predicate, timeout=timeout, interval=interval)


def without_real_services(root: Path, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A Python as `pip install 'seamless-service[client]'` leaves it, without the
    [services] extra, and `env` with a PATH to match: this environment's packages (through
    a .pth), its console scripts, but none of the real services' executables, next to the
    interpreter or on PATH. The interpreter's path and the environment."""
    import sysconfig

    venv = Path(root)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # `import` lines of a .pth run: addsitedir also reads the .pth files there (the editable install's).
    (site / "with_test_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    skip = set(real.REAL_SERVICES.values()) | {"seamless-jobserver"}
    for script in VENV_BIN.iterdir():
        target = venv / "bin" / script.name
        if script.name not in skip and not target.exists() and not script.name.startswith(("python", "activate", "pip")):
            target.symlink_to(script)
    env = {**env, "PATH": os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])}
    assert real.missing_services(env["PATH"]) == list(real.REAL_SERVICES.values()), "a real service is still on PATH"
    return str(venv / "bin" / "python"), env
