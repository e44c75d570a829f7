"""The thin `seamless-service` entry point with the real CLI behind it, as a user runs it:
a separate process per call, a real keeper started on demand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from seamless_service import __version__
from seamless_service.client import entry
from seamless_service.client.keeper import client
from tests.support.keeper import KeeperPlace, wait_for
from tests.support.other_user import unused_uid
from tests.support.processes import gone

# What the thin path must never import: the whole point is not paying for these per call.
HEAVY = ("argparse", "seamless_service.client.cli", "seamless_service.client.cli.main",
         "rpyc", "paramiko", "sshtunnel", "tabulate", "yaml", "seamless_service.agent")


@pytest.fixture
def place(monkeypatch):
    p = KeeperPlace(monkeypatch, hooks=False)
    yield p
    p.cleanup()


def cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seamless_service.client.entry", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def requests_served() -> int:
    return client.keeper_status()["requests"]


def test_version_goes_through_a_keeper_started_on_demand_and_reused(place):
    assert not place.sock.exists()
    first = cli("--version")
    assert (first.returncode, first.stdout, first.stderr) == (0, f"seamless-service {__version__}\n", "")
    pid = place.pid()
    before = requests_served()
    second = cli("--version")
    assert second.stdout == f"seamless-service {__version__}\n"
    assert requests_served() == before + 2     # the --version run, then our own status
    assert place.pid() == pid


def test_bad_subcommand_gives_usage_and_exit_2_through_the_keeper(place):
    client.ensure_keeper()
    before = requests_served()
    result = cli("frobnicate")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("seamless-service: error: argument COMMAND: invalid choice: 'frobnicate'")
    assert result.stderr.count("\n") == 1  # one line, not argparse's usage block
    assert requests_served() == before + 2


def test_no_keeper_env_runs_in_process(place):
    result = cli("--version", env={"SEAMLESS_SERVICE_NO_DAEMON": "1"})
    assert (result.returncode, result.stdout) == (0, f"seamless-service {__version__}\n")
    assert not place.sock.exists()


def test_help_never_starts_a_keeper_but_uses_a_running_one(place):
    result = cli("ps", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: seamless-service ps")
    assert not place.sock.exists()
    bare = cli()
    assert bare.returncode == 2 and "usage: seamless-service" in bare.stdout
    top = cli("--help")
    assert top.returncode == 0 and top.stdout == bare.stdout
    assert not place.sock.exists()
    client.ensure_keeper()
    before = requests_served()
    via_keeper = cli("ps", "--help")
    assert via_keeper.stdout == result.stdout
    assert requests_served() == before + 2
    cli("--help")  # the top-level help is a constant: it does not even ask the keeper
    assert requests_served() == before + 3  # only our own status call


def test_tunnel_status_and_stop(place):
    none = cli("tunnel", "status")
    assert (none.returncode, none.stdout) == (1, "no tunnel keeper running\n")
    assert not place.sock.exists()             # status does not start one
    pid = client.ensure_keeper()["pid"]
    status = cli("tunnel", "status")
    assert status.returncode == 0
    assert f"tunnel keeper: running, pid {pid}, version {__version__}" in status.stdout
    assert "connections: none" in status.stdout
    as_json = json.loads(cli("tunnel", "status", "--json").stdout)
    assert as_json["running"] is True and as_json["pid"] == pid and as_json["pool"] == []
    stop = cli("tunnel", "stop")
    assert (stop.returncode, stop.stdout) == (0, f"stopped the tunnel keeper (pid {pid})\n")
    assert not place.sock.exists() and wait_for(lambda: gone(pid))
    again = cli("tunnel", "stop")
    assert (again.returncode, again.stdout) == (0, "no tunnel keeper running\n")
    bad = cli("tunnel", "restart")
    assert bad.returncode == 2 and "unrecognised arguments" in bad.stderr
    assert bad.stderr.count("\n") == 1 and "--help'" in bad.stderr  # one line, like every usage error
    help_ = cli("tunnel", "--help")
    assert help_.returncode == 0 and "examples:\n  seamless-service tunnel status" in help_.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_unusable_keeper_folder_falls_back_in_process_with_a_notice(place):
    place.folder.mkdir(mode=0o700)
    os.chown(place.folder, unused_uid(), -1)
    result = cli("--version")
    assert (result.returncode, result.stdout) == (0, f"seamless-service {__version__}\n")
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("seamless-service: tunnel keeper unavailable (refusing")
    assert lines[0].endswith("running in this process")


def run_and_list_modules(argv: list[str], tmp_path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the thin client's main(argv) in a fresh interpreter; (the process, {"rc", "modules"})."""
    report = tmp_path / "modules.json"
    code = (
        "import json, sys\n"
        "from seamless_service.client.entry import main\n"
        f"rc = main({argv!r})\n"
        f"json.dump({{'rc': rc, 'modules': sorted(sys.modules)}}, open({str(report)!r}, 'w'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return result, json.loads(report.read_text())


def test_thin_path_imports_nothing_heavy(place, tmp_path):
    client.ensure_keeper()
    result, seen = run_and_list_modules(["--version"], tmp_path)
    assert result.stdout == f"seamless-service {__version__}\n"
    assert seen["rc"] == 0
    assert [m for m in seen["modules"] if m in HEAVY or m.split(".")[0] in HEAVY] == []
    assert "seamless_service.client.keeper.client" in seen["modules"]


def test_thin_path_talks_to_the_keeper_without_socket_py(place, tmp_path):
    """Issue 13: the C module `_socket` has all the thin client needs; socket.py's enum
    conversions cost ~2 ms of every call."""
    client.ensure_keeper()
    result, seen = run_and_list_modules(["--version"], tmp_path)
    assert (seen["rc"], result.stdout) == (0, f"seamless-service {__version__}\n")
    assert "_socket" in seen["modules"] and "socket" not in seen["modules"]


@pytest.mark.parametrize("args, expected", [
    (["ps", "--cluster", "x"], "keeper"),
    (["--version"], "keeper"),
    (["--debug", "ps"], "keeper"),
    (["ps", "--local"], "local"),
    (["agent", "status"], "local"),
    (["--debug", "agent", "start"], "local"),
    (["tunnel", "status"], "tunnel"),
    (["--help"], "help"),
    (["ps", "-h"], "help"),
    ([], "help"),
])
def test_routing(args, expected, monkeypatch):
    monkeypatch.delenv("SEAMLESS_SERVICE_NO_DAEMON", raising=False)
    assert entry.route(args) == expected
    monkeypatch.setenv("SEAMLESS_SERVICE_NO_DAEMON", "1")
    assert entry.route(args) == ("tunnel" if expected == "tunnel" else "local")


def test_top_level_help_constant_is_argparse_own_output(monkeypatch):
    from seamless_service.client.cli.main import build_parser
    from seamless_service.client.cli.toplevel_help import TOP_HELP

    monkeypatch.setenv("COLUMNS", "80")
    # If this fails, the parser changed: regenerate cli/toplevel_help.py from build_parser().
    assert TOP_HELP == build_parser().format_help()


def test_top_level_help_builds_no_parser_and_starts_nothing(tmp_path):
    result, seen = run_and_list_modules(["--help"], tmp_path)
    assert result.stdout.startswith("usage: seamless-service [-h]") and "examples:" in result.stdout
    assert seen["rc"] == 0
    assert not {"argparse", "seamless_service.client.keeper.client", "seamless_service.client.config",
                "socket"} & set(seen["modules"])
