"""`seamless-service agent deploy|status|stop HOST` as a user runs them, against a real sshd."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CLI = [sys.executable, "-m", "seamless_service"]


def run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=300,
                          env=env or dict(os.environ))


def test_deploy_status_stop_through_the_cli(deployed):
    server = deployed.server
    cfg = str(server.ssh_config)
    # Already installed by the session fixture: this deploy reuses the install.
    result = run("agent", "deploy", server.alias, "--ssh-config", cfg)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("[connect] connecting to " + server.alias)
    assert lines[-1].startswith("[ready] agent ") and server.alias in lines[-1]
    assert deployed.endpoint.secret not in result.stdout + result.stderr

    status = run("agent", "status", server.alias, "--ssh-config", cfg, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["running"] is True and info["host"] == server.alias and isinstance(info["port"], int)
    assert deployed.endpoint.secret not in status.stdout

    stopped = run("agent", "stop", server.alias, "--ssh-config", cfg)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = run("agent", "status", server.alias, "--ssh-config", cfg)
    assert after.returncode == 1 and "not running" in after.stdout

    # Bring it back for other tests of the session.
    again = run("agent", "deploy", server.alias, "--ssh-config", cfg, "--json")
    assert again.returncode == 0, again.stderr
    endpoint = json.loads(again.stdout)
    assert "secret" not in endpoint and endpoint["host"] == server.alias


def test_unknown_host_key_is_one_readable_line(deployed, tmp_path):
    server = deployed.server
    empty_known = tmp_path / "known_hosts"
    empty_known.write_text("")
    cfg = server.write_ssh_config(tmp_path / "ssh_config", known_hosts=empty_known)
    result = run("agent", "deploy", server.alias, "--ssh-config", str(cfg))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("[")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "known_hosts" in errors[0] and "--accept-new-host-key" in errors[0]
