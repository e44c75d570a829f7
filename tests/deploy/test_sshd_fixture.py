"""The sshd fixture itself: a real OpenSSH server, a separate throwaway account, strict keys."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from tests.support.sshd import SshServer, combined_ssh_config, sshd_available

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


def test_ssh_runs_as_the_throwaway_user_with_its_own_home(sshd: SshServer):
    result = sshd.ssh("id -un; echo $HOME; python3 -c 'import sys; print(sys.version_info >= (3, 10))'")
    assert result.returncode == 0, result.stderr
    user, home, python_ok = result.stdout.split()
    assert user == sshd.user != pwd.getpwuid(os.getuid()).pw_name
    assert home == str(sshd.home)
    assert python_ok == "True"  # the remote account can run a Python >= 3.10 from its PATH
    assert sshd.python and os.path.isabs(sshd.python)


def test_list_commands_are_quoted_for_the_remote_shell(sshd: SshServer):
    word = "a b;$HOME'\"*"
    result = sshd.ssh(["printf", "%s\n", word])
    assert result.returncode == 0, result.stderr
    assert result.stdout == word + "\n"


def test_known_hosts_is_enforced(sshd: SshServer, tmp_path):
    """The client files work because of the known_hosts line, not because checking is off."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = sshd.write_ssh_config(tmp_path / "config", known_hosts=empty)
    result = subprocess.run(sshd.ssh_argv("true", config=config), capture_output=True, text=True, timeout=60)
    assert result.returncode == 255
    assert "host key" in result.stderr.lower()


def test_restart_keeps_port_and_keys(sshd: SshServer):
    port, pid = sshd.port, sshd.sshd_pid
    sshd.restart()
    assert sshd.port == port and sshd.sshd_pid != pid
    result = sshd.ssh("id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == sshd.user


def test_stop_refuses_connections(sshd: SshServer):
    sshd.stop()
    assert not sshd.running
    assert sshd.ssh("true").returncode == 255


def test_two_servers_at_once(tmp_path):
    with SshServer.start() as first, SshServer.start() as second:
        assert first.port != second.port
        assert first.user != second.user and first.home != second.home
        config = combined_ssh_config(tmp_path / "config", [first, second])
        for server in (first, second):
            result = subprocess.run(["ssh", "-F", str(config), server.alias, "id -un"],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == server.user
        # Each server only accepts its own client key.
        crossed = second.write_ssh_config(tmp_path / "crossed", identity=first.identity)
        result = subprocess.run(second.ssh_argv("true", config=crossed), capture_output=True, text=True, timeout=60)
        assert result.returncode == 255


def test_close_removes_user_processes_and_files():
    server = SshServer.start()
    result = subprocess.run(server.ssh_argv("nohup sleep 300 >/dev/null 2>&1 & echo $!"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert server.user_processes()
    uid, user, root = server.uid, server.user, server.root
    server.close()
    assert not root.exists()
    try:
        pwd.getpwnam(user)
        raise AssertionError(f"user {user} still exists")
    except KeyError:
        pass
    from tests.support.sshd import processes_of_uid

    assert processes_of_uid(uid) == []
