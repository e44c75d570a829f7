"""A server-only install (`pip install seamless-service`, no [client] extra): the server side
works, and a client command says in one line what to install instead of a ModuleNotFoundError.

The install is simulated by a sitecustomize that makes the [client] extra's modules
unimportable in every Python process started with it (the CLI, and the tunnel keeper it
starts); everything else is the real package and the real entry point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.keeper import KeeperPlace
from tests.support.packaging import client_extra_modules

BLOCKER = textwrap.dedent("""\
    import sys

    BLOCKED = {blocked!r}

    class _ServerOnly:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _ServerOnly())
""")
CLUSTERS = """\
rc:
  type: local
  frontends:
    - hostname: rc.invalid
      ssh_hostname: rc-ssh
      hashserver: {bufferdir: /srv/rc/buf}
"""
INSTALL = "pip install 'seamless-service[client]' (from a checkout: pip install '.[client]')"


@pytest.fixture
def server_only(sandbox, monkeypatch, tmp_path) -> dict[str, str]:
    """The environment of a machine where seamless-service is installed without [client]."""
    blocked = sorted(client_extra_modules())
    assert {"paramiko", "seamless_config"} <= set(blocked)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked))
    (sandbox.home / ".seamless").mkdir()
    (sandbox.home / ".seamless" / "clusters.yaml").write_text(CLUSTERS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, "-c", "import seamless_config"], env=env, capture_output=True, text=True)
    assert check.returncode == 1 and "No module named 'seamless_config'" in check.stderr  # the simulation holds
    return env


def cli(env: dict[str, str], *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seamless_service.client.entry", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv, missing", [
    (["ps", "--cluster", "rc"], "seamless_config"),
    (["logs", "--service", "hashserver", "--cluster", "rc", "--project", "p"], "seamless_config"),
    (["agent", "deploy", "rc-ssh"], "paramiko"),
])
def test_a_client_command_says_what_to_install(server_only, tmp_path, argv, missing):
    result = cli({**server_only, "SEAMLESS_SERVICE_NO_DAEMON": "1"}, *argv, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr == (f"seamless-service: '{argv[0]}' needs the client side of seamless-service, not "
                             f"installed here (no module '{missing}'): {INSTALL}\n")


def test_through_the_tunnel_keeper_too_and_the_server_side_still_works(server_only, tmp_path, monkeypatch):
    place = KeeperPlace(monkeypatch, hooks=False)
    try:
        env = {**server_only, **{k: os.environ[k] for k in ("SEAMLESS_SERVICE_DAEMON_DIR", "SEAMLESS_SERVICE_DAEMON_IDLE")}}
        env.pop("SEAMLESS_SERVICE_NO_DAEMON", None)
        result = cli(env, "ps", "--cluster", "rc", cwd=tmp_path)
        assert place.sock.exists()  # it ran in the keeper, which lacks the modules as well
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.endswith(f"(no module 'seamless_config'): {INSTALL}\n")
        # what a server-only install is for: this machine's services and its agent
        local = cli(env, "ps", "--local", cwd=tmp_path)
        assert (local.returncode, local.stderr) == (0, "") and local.stdout.startswith("SERVICE")
        agent = cli(env, "agent", "status", cwd=tmp_path)
        assert agent.returncode == 1 and agent.stderr == "seamless-service agent: no agent running\n"
    finally:
        place.cleanup()
