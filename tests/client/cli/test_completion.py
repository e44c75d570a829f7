"""`-V`, and `seamless-service completion bash|zsh`: the scripts are valid, and completing a
partial word in a real bash or zsh gives the subcommands, flags, service, status and
cluster names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seamless_service import __version__
from seamless_service.client import entry
from seamless_service.client.cli.ps_cmd import STATUS_CHOICES
from seamless_service.protocol.keys import SERVICES

SHELLS = ["bash", pytest.param("zsh", marks=pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (.ci/run installs it)"))]
# Sets COMP_WORDS/COMP_CWORD as the shell does for `seamless-service ARGS<TAB>` and prints
# what the completion function offers, one per line.
COMPLETE = """
COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_seamless_service
printf '%s\\n' "${COMPREPLY[@]}"
"""


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seamless_service.client.entry", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "SEAMLESS_SERVICE_NO_DAEMON": "1", **(env or {})})


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("completion")
    out = {}
    for shell in ("bash", "zsh"):
        result = cli("completion", shell)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        out[shell] = folder / f"seamless-service.{shell}"
        out[shell].write_text(result.stdout)
    return out


@pytest.fixture
def home(tmp_path) -> Path:
    """A HOME whose clusters files define alpha, beta-2 (and local_cluster, which is no cluster) and gamma."""
    (tmp_path / ".seamless" / "clusters").mkdir(parents=True)
    (tmp_path / ".seamless" / "clusters.yaml").write_text(
        "alpha:\n  type: local\n  frontends: []\nbeta-2:   # a comment\n  type: local\nlocal_cluster: alpha\n")
    (tmp_path / ".seamless" / "clusters" / "more.yaml").write_text("gamma:\n  type: slurm\n")
    return tmp_path


def complete(shell: str, script: Path, home: Path, *words: str) -> list[str]:
    code = f"source {script}\n{COMPLETE}"
    result = subprocess.run([shell, "-c", code, shell, "seamless-service", *words], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "HOME": str(home)})
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout.split()


def test_dash_capital_v_is_version():
    for flag in ("-V", "--version"):
        result = cli(flag)
        assert (result.returncode, result.stdout) == (0, f"seamless-service {__version__}\n")


def test_completion_runs_in_process_and_never_starts_a_tunnel_keeper(monkeypatch):
    monkeypatch.delenv("SEAMLESS_SERVICE_NO_DAEMON", raising=False)
    assert entry.route(["completion", "bash"]) == "local"


@pytest.mark.parametrize("shell", SHELLS)
def test_the_script_is_valid_shell(shell, scripts):
    check = subprocess.run([shell, "-n", str(scripts[shell])], capture_output=True, text=True)
    assert (check.returncode, check.stderr) == (0, "")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("words, expected", [
    (["p"], ["ps"]),
    ([""], ["ps", "resolve", "inspect", "logs", "stop", "rm", "clear", "start", "restart", "reset", "demo",
            "agent", "tunnel", "completion"]),
    (["restart", "--k"], ["--key"]),                                  # the shared target flags
    (["-"], ["-h", "--help", "-V", "--version", "--debug"]),
    (["ps", "--st"], ["--stage", "--status"]),
    (["ps", "--status", ""], list(STATUS_CHOICES)),
    (["ps", "--status", "st"], ["starting", "stale"]),
    (["logs", "--service", ""], list(SERVICES)),
    (["--debug", "stop", "--service", "d"], ["database", "daskserver"]),
    (["ps", "--cluster", ""], ["alpha", "beta-2", "gamma"]),
    (["inspect", "--project", "p", "--cluster", "b"], ["beta-2"]),   # a flag's value is skipped
    (["ps", "--transport", ""], ["auto", "agent", "ssh", "local"]),
    (["ps", "--project", ""], []),                                     # free text: nothing offered
    (["agent", "st"], ["start", "status", "stop"]),
    (["agent", "status", "--js"], ["--json"]),
    (["tunnel", ""], ["status", "stop"]),
    (["demo", "start", "--d"], ["--debug"]),
    (["completion", ""], ["bash", "zsh"]),
])
def test_completing_a_partial_word(shell, scripts, home, words, expected):
    assert complete(shell, scripts[shell], home, *words) == expected


@pytest.mark.parametrize("shell", SHELLS)
def test_no_clusters_file_completes_no_cluster(shell, scripts, tmp_path):
    assert complete(shell, scripts[shell], tmp_path, "ps", "--cluster", "") == []


def test_zsh_registers_the_completion():
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (.ci/run installs it)")
    result = subprocess.run(["zsh", "-c", 'eval "$1"; print -r -- ${_comps[seamless-service]}', "zsh",
                             cli("completion", "zsh").stdout], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "_bash_complete -F _seamless_service"


def test_unknown_shell_is_a_usage_error():
    result = cli("completion", "fish")
    assert result.returncode == 2 and "invalid choice: 'fish'" in result.stderr
