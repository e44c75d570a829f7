"""start on this machine (the local transport: the agent's ops in-process) with the real
hashserver, and what Seamless itself then does with it; `--dry-run` of stop/rm/clear.

* a service started by seamless-service is found and reused by remote-http-launcher's own
  `run()` (what seamless-remote calls), same pid and port: no second launch;
* the launch uses the launcher folder the agent serves, so a REMOTE_HTTP_LAUNCHER_DIR that
  makes remote-http-launcher itself refuse the launch (README, Deliberate differences #24, #43) works here;
* the start op's argv is the launcher's own (RemoteState.launch_process).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from seamless_service.client.lifecycle.launch import launcher_argv, start_args
from seamless_service.client.lifecycle.control import start_service
from seamless_service.client.transport.local import LocalTransport
from seamless_service.client.config.resolve import resolve_service
from seamless_service.client.config.selection import Selection
from tests.support.cli import cli, make_home

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


def _cli(home, *argv: str, cwd: Path | None = None):
    """The CLI in the project folder (or cwd), with the launcher's packaged whitelist."""
    env = home.env()
    env.pop("RHL_TOOLS_YAML")
    return cli(home, *argv, env=env, cwd=cwd)


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


# ---------------------------------------------------------------- --local / --key on start, restart


def _state(sandbox, key: str = KEY) -> dict:
    return json.loads((sandbox.server_dir / f"{key}.json").read_text())


def _refused(result, needle: str) -> None:
    """Exit 2, nothing on stdout, one line on stderr that says `needle`, no traceback."""
    assert (result.returncode, result.stdout) == (2, ""), (result.returncode, result.stdout, result.stderr)
    assert len(result.stderr.splitlines()) == 1 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_start_and_restart_local_and_by_key(home, sandbox, tmp_path):
    """Issue 10's --local/--key on start/restart: --local launches on this machine what the
    configuration (local cluster lc) puts there; --key resolves the service from its key on
    the host --local or --cluster chooses; restart --local without --service restarts the
    running services of this machine that the filters match."""
    started = _cli(home, "start", "--local", "--service", "hashserver")
    assert started.returncode == 0, started.stderr
    first = _state(sandbox)
    assert started.stdout == f"{KEY}: running on 127.0.0.1:{first['port']}\n"
    assert first["status"] == "running" and first["workdir"] == "~/buf/myproj"  # as Seamless writes it

    outside = tmp_path / "outside"   # no seamless.yaml: the key alone names the service
    outside.mkdir()
    again = _cli(home, "start", "--key", KEY, "--cluster", "lc", cwd=outside)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{KEY}: already running on 127.0.0.1:{first['port']} (pid {first['pid']}); nothing changed\n"
    assert _state(sandbox) == first

    restarted = _cli(home, "restart", "--local", "--key", KEY, cwd=outside)
    assert restarted.returncode == 0, restarted.stderr
    second = _state(sandbox)
    assert second["status"] == "running" and second["pid"] != first["pid"]
    assert restarted.stdout == f"{KEY}: running on 127.0.0.1:{second['port']}\n"
    assert f"{KEY}: previous log kept as " in restarted.stderr
    assert (sandbox.server_dir / f"{KEY}.log.1").exists()

    # no --service: every running service of this machine the filters match (one here)
    nothing = _cli(home, "restart", "--local", "--project", "nosuch", cwd=outside)
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert "no running service matched on this machine; nothing restarted" in nothing.stderr
    assert _state(sandbox)["pid"] == second["pid"]
    all_of_project = _cli(home, "restart", "--local", "--project", "myproj", cwd=outside)
    assert all_of_project.returncode == 0, all_of_project.stderr
    third = _state(sandbox)
    assert third["pid"] not in (first["pid"], second["pid"]) and third["status"] == "running"
    assert all_of_project.stdout == f"{KEY}: running on 127.0.0.1:{third['port']}\n"


@pytest.mark.parametrize("argv, needle", [
    (["start", "--key", KEY, "--local", "--service", "hashserver"], "argument --key: not allowed with --service"),
    (["restart", "--key", KEY, "--stage", "s", "--mode", "rw", "--local"], "argument --key: not allowed with --stage, --mode"),
    (["start", "--key", KEY], "argument --key: needs --cluster C or --local"),
    (["restart", "--key", KEY, "--local", "--cluster", "lc"], "argument --key: give --cluster C or --local, not both"),
    (["start", "--key", "../../etc", "--local"], "argument --key: invalid key '../../etc'"),
    (["restart", "--key=-h", "--local"], "argument --key: invalid key '-h'"),
    (["start", "--key", KEY, "--cluster", "rc"], f"key {KEY} is not of cluster 'rc' (its cluster is 'lc')"),
    (["start", "--key", "notaservice-x", "--local"], "notaservice-x is not a Seamless service key"),
    (["start", "--local"], "--service is required (or --key KEY with --cluster C or --local)"),
    (["restart"], "--service, --key KEY, --cluster or --local is required"),
    # the configuration puts it on rc's frontend: not launched here where no Seamless would look
    (["start", "--local", "--service", "hashserver", "--cluster", "rc", "--project", "p"],
     "--local: the configuration puts hashserver-rc-rw-p on rc-ssh, not on this machine"),
    (["restart", "--local", "--key", "hashserver-rc-rw-p"],
     "--local: the configuration puts hashserver-rc-rw-p on rc-ssh, not on this machine"),
    (["start", "--local", "--key", "hashserver-nosuch-rw-p"],
     "cannot start hashserver-nosuch-rw-p: start needs the service's configuration, and its key does not "
     "resolve: unknown cluster 'nosuch' (known: lc, rc, r2, xtra, lh); define cluster 'nosuch' in "
     "~/.seamless/clusters.yaml"),
])
def test_start_restart_refuse_bad_targets_in_one_line_touching_nothing(home, sandbox, argv, needle):
    launcher = sandbox.home / ".remote-http-launcher"
    before = sorted(launcher.rglob("*"))
    _refused(_cli(home, *argv), needle)
    assert sorted(launcher.rglob("*")) == before   # no state file, no log: nothing launched
