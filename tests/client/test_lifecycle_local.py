"""start on this machine (the local transport: the agent's ops in-process) with the real
hashserver, and what Seamless itself then does with it; `--dry-run` of stop/rm/clear.

* a service started by seamless-service is found and reused by remote-http-launcher's own
  `run()` (what seamless-remote calls), same pid and port: no second launch;
* the launch uses the launcher folder the agent serves, so a REMOTE_HTTP_LAUNCHER_DIR that
  makes remote-http-launcher itself refuse the launch (anchor §6 #24/#43) works here;
* the start op's argv is the launcher's own (RemoteState.launch_process).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from seamless_service.client.launch import launcher_argv, start_args
from seamless_service.client.lifecycle import start_service
from seamless_service.client.local import LocalTransport
from seamless_service.client.sconfig import Selection, resolve_service
from tests.client.test_sconfig import cli, make_home

pytestmark = pytest.mark.skipif(shutil.which("hashserver") is None and
                                not (Path(sys.executable).parent / "hashserver").exists(),
                                reason="the real hashserver is not installed")

KEY = "hashserver-lc-rw-myproj"


@pytest.fixture
def home(sandbox, monkeypatch):
    home = make_home(sandbox, monkeypatch)
    monkeypatch.chdir(home.proj)
    monkeypatch.delenv("RHL_TOOLS_YAML")  # the packaged whitelist, which names the real services
    yield home
    _kill_services(sandbox.root)


def _kill_services(root: Path) -> None:
    """SIGKILL the process group of every real service a state file below `root` names
    (the sandbox's own clean-up kills only its toy service)."""
    import signal

    for path in root.rglob("server/*.json"):
        try:
            pid = json.loads(path.read_text()).get("pid")
            if isinstance(pid, int) and pid > 1 and b"hashserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError, AttributeError):
            continue


def _cli(home, *argv: str):
    env = home.env()
    env.pop("RHL_TOOLS_YAML")
    return cli(home, *argv, env=env)


def _config() -> dict:
    return resolve_service(Selection(service="hashserver", cluster="lc", project="myproj")).config


def test_start_args_are_the_launchers_own(home):
    config = _config()
    argv = launcher_argv(config)
    assert argv[:5] == ["rhl-launch-service", "--key", KEY, "--workdir", "~/buf/myproj"]
    args = start_args(config)
    assert args["argv"] == argv[argv.index("--") + 1:]
    assert f"~/.remote-http-launcher/server/{KEY}.json" in args["argv"]
    assert "meta" not in args  # seamless-remote passes none: the state file is Seamless's own


def test_seamless_reuses_what_start_launched(home, sandbox):
    import remote_http_launcher

    with LocalTransport() as transport:
        value = start_service(transport, _config())
    assert (value["outcome"], value["launched"]) == ("started", True)
    state = json.loads((sandbox.server_dir / f"{KEY}.json").read_text())
    conf = {k: v for k, v in _config().items() if k != "meta"}
    payload = remote_http_launcher.run(conf)  # what seamless-remote's buffer client calls
    assert payload["port"] == state["port"] == value["port"]
    assert json.loads((sandbox.server_dir / f"{KEY}.json").read_text())["pid"] == state["pid"]


def test_start_uses_the_folder_the_agent_serves_43(home, sandbox, monkeypatch, tmp_path):
    import remote_http_launcher

    other = sandbox.root / "rhl-dir"  # below the sandbox: cleaned up with it
    monkeypatch.setenv("REMOTE_HTTP_LAUNCHER_DIR", str(other))
    with pytest.raises(remote_http_launcher.LauncherError, match="status-file must live under"):
        remote_http_launcher.run({k: v for k, v in _config().items() if k != "meta"})
    with LocalTransport() as transport:
        value = start_service(transport, _config())
    assert value["outcome"] == "started"
    state = json.loads((other / "server" / f"{KEY}.json").read_text())
    assert state["status"] == "running" and state["pid"] == value["pid"]
    assert f"--status-file {other}/server/{KEY}.json" in state["command"]


def test_dry_run_of_stop_rm_clear_changes_nothing(home, sandbox):
    result = _cli(home, "start", "--service", "hashserver")
    assert result.returncode == 0, result.stderr
    state_file = sandbox.server_dir / f"{KEY}.json"
    before = state_file.read_text()
    buffers = sandbox.home / "buf" / "myproj"
    (buffers / "ab").mkdir(exist_ok=True)
    (buffers / "ab" / "abcdef").write_text("x" * 100)
    for argv, expected in (
        (["stop", "--cluster", "lc", "--dry-run"], f"would stop {KEY} (running, pid "),
        (["stop", "--service", "hashserver", "--dry-run"], f"would stop {KEY} (running, pid "),
        (["rm", "--cluster", "lc", "--dry-run"], f"would remove the state of {KEY} (running, pid "),
        (["clear", "--service", "hashserver", "--dry-run"], f"would clear {buffers} (populated, "),
    ):
        result = _cli(home, *argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert expected in result.stdout, (argv, result.stdout)
        assert state_file.read_text() == before
        assert (buffers / "ab" / "abcdef").exists()
        assert os.path.exists(f"/proc/{json.loads(before)['pid']}")
