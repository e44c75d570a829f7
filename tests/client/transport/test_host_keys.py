"""Host keys under the user's ssh_config settings, decided as OpenSSH decides (ssh_config(5)
StrictHostKeyChecking yes/accept-new/no/off/ask, UserKnownHostsFile none and /dev/null):
the tunnel (deploy/ssh.py's connection) against a real sshd, side by side with the real
`ssh` client on the same config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from seamless_service.client.errors import AuthFailed
from seamless_service.client.transport.tunnel import Tunnel
from tests.support.transports import Notices

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C7apJYLFmQ5ThCTO"


def setup(sshd, tmp_path: Path, strict: str | None, known: str) -> tuple[Path, Path]:
    """An ssh config for `sshd` with StrictHostKeyChecking `strict` (None: not set, i.e.
    ask) and a UserKnownHostsFile that is `empty`, holds another key (`changed`), or is
    `/dev/null` or `none`."""
    known_hosts = tmp_path / "known_hosts"
    if known == "empty":
        known_hosts.write_text("")
    elif known == "changed":
        known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {OTHER_KEY}\n")
    extra = {"UserKnownHostsFile": str(known_hosts) if known in ("empty", "changed") else known}
    config = sshd.config_block(extra=extra)
    if strict is None:
        config = "\n".join(line for line in config.splitlines() if "StrictHostKeyChecking" not in line) + "\n"
    else:
        config = config.replace("StrictHostKeyChecking yes", f"StrictHostKeyChecking {strict}")
    path = tmp_path / "ssh_config"
    path.write_text(config)
    return path, known_hosts


def openssh(sshd, config: Path, *forward: str) -> int:
    """The real ssh client's verdict on the same config: log in (or, with `-W`, forward)."""
    argv = ["ssh", "-F", str(config), *forward, sshd.alias] + ([] if forward else ["true"])
    return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=30).returncode


def opened(sshd, config: Path, notices: Notices) -> Tunnel:
    tunnel = Tunnel(sshd.alias, ssh_config=config, notice=notices, keep_session=False).open()
    assert tunnel.alive
    tunnel.close()
    return tunnel


@pytest.mark.parametrize("strict", ["no", "off"])
def test_no_with_dev_null_connects_and_says_so_once(sshd, tmp_path, strict):
    """Common on cluster frontends, in containers and CI: OpenSSH connects; so do we, with
    one notice line per host and key in this process (the tunnel keeper's life)."""
    config, _ = setup(sshd, tmp_path, strict, "/dev/null")
    assert openssh(sshd, config) == 0
    notices = Notices()
    opened(sshd, config, notices)
    opened(sshd, config, notices)  # every key is unknown again: accepted again, not said again
    assert len(notices) == 1, notices
    assert notices[0].startswith(f"seamless-service: {sshd.alias}: host key ssh-ed25519 SHA256:")
    assert f"accepted unchecked (StrictHostKeyChecking no, UserKnownHostsFile /dev/null)" in notices[0]
    assert Path("/dev/null").stat().st_size == 0 and Path("/dev/null").is_char_device()


@pytest.mark.parametrize("strict", ["accept-new", "no"])
def test_unknown_key_is_added_to_the_known_hosts_file(sshd, tmp_path, strict):
    config, known_hosts = setup(sshd, tmp_path, strict, "empty")
    notices = Notices()
    opened(sshd, config, notices)
    assert known_hosts.read_text() == sshd.known_hosts_line() + "\n"
    assert len(notices) == 1 and f"added to {known_hosts} (StrictHostKeyChecking {strict})" in notices[0]
    opened(sshd, config, notices)  # known now: nothing more to say
    assert len(notices) == 1
    assert openssh(sshd, config) == 0  # the line we wrote is one OpenSSH verifies with


@pytest.mark.parametrize("strict", ["yes", "ask", None])
def test_unknown_key_refused_under_yes_and_ask(sshd, tmp_path, strict):
    config, known_hosts = setup(sshd, tmp_path, strict, "empty")
    assert openssh(sshd, config) == 255
    notices = Notices()
    with pytest.raises(AuthFailed) as info:
        opened(sshd, config, notices)
    message = str(info.value)
    assert "\n" not in message and "is not in known_hosts" in message and "--accept-new-host-key" in message
    assert ("StrictHostKeyChecking yes" in message) == (strict == "yes")
    assert known_hosts.read_text() == "" and notices == []


@pytest.mark.parametrize("strict", ["accept-new", "no"])
def test_unknown_key_refused_with_user_known_hosts_none(sshd, tmp_path, strict):
    """Nowhere to record the key: OpenSSH refuses ("Host key verification failed")."""
    config, _ = setup(sshd, tmp_path, strict, "none")
    assert openssh(sshd, config) == 255
    with pytest.raises(AuthFailed) as info:
        opened(sshd, config, Notices())
    assert "UserKnownHostsFile is none" in str(info.value)


@pytest.mark.parametrize("strict", ["yes", "accept-new", "no", None])
def test_changed_key_refused(sshd, tmp_path, strict):
    """yes/accept-new/ask: OpenSSH refuses. no: OpenSSH logs in but refuses to forward, and
    the tunnel is a forward: refused, saying why."""
    config, known_hosts = setup(sshd, tmp_path, strict, "changed")
    assert openssh(sshd, config) == (0 if strict == "no" else 255)
    assert openssh(sshd, config, "-W", f"127.0.0.1:{sshd.port}") == 255
    notices = Notices()
    with pytest.raises(AuthFailed) as info:
        opened(sshd, config, notices)
    message = str(info.value)
    assert "\n" not in message and "host key CHANGED" in message
    assert ("disables port forwarding" in message) == (strict == "no")
    assert known_hosts.read_text() == f"[127.0.0.1]:{sshd.port} {OTHER_KEY}\n" and notices == []


def test_bad_value_is_one_line(sshd, tmp_path):
    config, _ = setup(sshd, tmp_path, "maybe", "empty")
    assert openssh(sshd, config) == 255  # OpenSSH: unsupported option
    with pytest.raises(Exception) as info:
        opened(sshd, config, Notices())
    assert "StrictHostKeyChecking 'maybe'" in str(info.value) and "\n" not in str(info.value)
