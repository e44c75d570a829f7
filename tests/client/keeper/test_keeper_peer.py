"""The thin client trusts no socket but its own user's: attacks by a second local user (a
real throwaway account) on the folder of the tunnel keeper, on real unix sockets.

A "run" request carries the caller's whole environment (tokens included) and its answer
is printed as the command's output, so the client must check who listens before it
sends anything: SO_PEERCRED on the connection, and the folder's owner and mode on every
connect, not only when it creates the folder.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from seamless_service import __version__
from seamless_service.client import entry
from seamless_service.client.keeper import check_dir, client, keeper_dir, framing
from tests.support.other_user import ForeignListener, local_user, unused_uid

SECRET = "tok-" + "5" * 24   # stands for a token in the caller's environment
# What a fake keeper answers: output the victim would take for its command's.
FAKE_REPLY = framing.encode({"stream": "stdout", "data": "FAKE OUTPUT\n"}) + framing.encode({"ok": True, "exit": 0})


@pytest.fixture
def place(monkeypatch):
    """A temp root (reachable by other users) holding the keeper folder `d`."""
    root = Path(tempfile.mkdtemp(prefix="ssk-", dir="/tmp"))  # short: socket paths <= 107 bytes
    os.chmod(root, 0o711)
    folder = root / "d"
    monkeypatch.setenv("SEAMLESS_SERVICE_DAEMON_DIR", str(folder))
    monkeypatch.delenv("SEAMLESS_SERVICE_NO_DAEMON", raising=False)
    monkeypatch.delenv("SEAMLESS_SERVICE_DAEMON_MAIN", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield folder
    if folder.exists():
        os.chmod(folder, 0o700)
    info = None
    try:
        info = client.ping()
    except client.ServiceError:
        pass
    if info:
        os.kill(info["pid"], signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def thin_client(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEAMLESS_TOKEN": SECRET}
    return subprocess.run([sys.executable, "-m", "seamless_service.client.entry", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_another_users_socket_in_our_own_folder_gets_nothing(place):
    """The socket was planted while the folder was open to others (a shared folder later
    tightened, or a race on its creation): folder checks pass, the peer check must not."""
    with local_user() as attacker:
        place.mkdir(mode=0o777)
        os.chmod(place, 0o777)
        with ForeignListener(attacker.pw_uid, attacker.pw_gid, str(place / "daemon.sock"), FAKE_REPLY) as fake:
            os.chmod(place, 0o700)   # ours and private now, with the attacker's socket inside
            result = thin_client("--version")
        report = fake.report()
    assert "crashed" not in report, report
    assert report["received"] == 0                # no request, no environment, no token
    assert "FAKE" not in result.stdout
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"uid {attacker.pw_uid} ({attacker.pw_name})" in lines[0]
    assert str(place / "daemon.sock") in lines[0] and "SEAMLESS_SERVICE_DAEMON_DIR" in lines[0]


def test_a_shared_writable_keeper_folder_is_refused_before_connecting(place):
    """SEAMLESS_SERVICE_DAEMON_DIR (ours) left writable by others, with another user's fake
    keeper in it: refused in one line naming that socket's owner; the command runs here."""
    with local_user() as attacker:
        place.mkdir(mode=0o777)
        os.chmod(place, 0o777)
        with ForeignListener(attacker.pw_uid, attacker.pw_gid, str(place / "daemon.sock"), FAKE_REPLY) as fake:
            result = thin_client("--version")
        report = fake.report()
    assert "crashed" not in report, report
    assert report == {"connections": 0, "received": 0, "uid": attacker.pw_uid}
    assert (result.returncode, result.stdout) == (0, f"seamless-service {__version__}\n")
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "mode 777" in lines[0] and f"uid {attacker.pw_uid} ({attacker.pw_name})" in lines[0]
    assert lines[0].endswith("running in this process")
    assert stat.S_IMODE(place.stat().st_mode) == 0o777   # not tightened around a foreign socket


def test_folder_loosened_or_given_away_while_the_keeper_runs_is_refused_on_connect(place):
    pid = client.ensure_keeper()["pid"]
    os.chmod(place, 0o770)                     # e.g. a group-shared folder
    with pytest.raises(client.KeeperUnavailable) as info:
        client.ping()
    assert "mode 770" in str(info.value) and "\n" not in str(info.value)
    assert stat.S_IMODE(place.stat().st_mode) == 0o770
    os.chmod(place, 0o700)
    assert client.ping()["pid"] == pid
    if os.geteuid() == 0:
        os.chown(place, unused_uid(), -1)
        with pytest.raises(client.KeeperUnavailable, match="owned by uid"):
            client.ping()
        os.chown(place, 0, -1)


def test_app_cache_folder_is_private_from_creation(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SEAMLESS_SERVICE_DAEMON_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    old = os.umask(0o022)
    try:
        assert check_dir(keeper_dir(), create=True)
    finally:
        os.umask(old)
    assert keeper_dir() == str(tmp_path / "cache" / "seamless-service" / "run")
    assert stat.S_IMODE((tmp_path / "cache" / "seamless-service").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "cache" / "seamless-service" / "run").stat().st_mode) == 0o700


def test_folder_removed_mid_start_gives_one_line(place, monkeypatch, capsys):
    real_check = client.check_dir

    def check_then_vanish(folder: str, *, create: bool) -> bool:
        exists = real_check(folder, create=create)
        shutil.rmtree(folder)                  # e.g. a temp cleaner, or `rm -r` in another shell
        return exists

    monkeypatch.setattr(client, "check_dir", check_then_vanish)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with pytest.raises(SystemExit) as done:   # argparse's --version, run in this process
        entry.main(["--version"])
    assert done.value.code in (0, None)
    assert sys.stdout.getvalue() == f"seamless-service {__version__}\n"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("seamless-service: tunnel keeper unavailable (")
    assert str(place) in lines[0] and lines[0].endswith("running in this process")
