"""The agent through the user's own OpenSSH client (transport/openssh.py, `via="openssh"`),
on the real sshd and agent of tests/client/conftest.py: the same answers as the paramiko
tunnel, repairs, ssh's failures in one line, and no ssh process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from seamless_service import Host, __version__
from seamless_service.client.errors import AgentUnreachable, AuthFailed, ConnectionFailed, UsageError
from seamless_service.client.transport.agent import AgentTransport
from seamless_service.client.transport.open import VIA_ENV, choose_via, default_via, open_transport
from seamless_service.client.transport.ssh_errors import map_ssh_failure
from seamless_service.deploy import cache
from tests.support.remote import Remote
from tests.support.remote_state import BIG_LOG_BYTES, ODD_STATES, RUNNING_KEYS
from tests.support.services import wait_until
from tests.support.transports import Notices


@pytest.fixture
def notices() -> Notices:
    return Notices()


@pytest.fixture
def openssh(remote: Remote, notices: Notices):
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=notices, via="openssh") as t:
        yield t


def _ps(transport: AgentTransport) -> list[dict]:
    (result,) = transport.batch([("ps", {})])
    assert result["ok"], result
    return result["value"]["rows"]


def _ssh_pids(transport: AgentTransport) -> list[int]:
    return transport.describe()["tunnel"]["ssh_pids"]


def _in_proc(pid: int) -> bool:
    """Still in the process table, zombies included (no reaping here, unlike processes.alive)."""
    return os.path.exists(f"/proc/{pid}")


def _our_ssh_children() -> list[int]:
    """This process's child processes running ssh, zombies included."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and "(ssh)" in stat:
            found.append(int(entry))
    return found


# --------------------------------------------------------------------------- answers


def test_hello_goes_through_one_ssh_W_process(remote: Remote, openssh: AgentTransport):
    (hello,) = openssh.batch([("hello", {})])
    assert hello["ok"] and hello["value"]["version"] == __version__
    (pid,) = _ssh_pids(openssh)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[0].endswith(b"ssh") and b"-W" in argv
    assert f"127.0.0.1:{cache.load(remote.alias).remote_port}".encode() in argv
    assert openssh.describe()["via"] == "openssh"


def test_a_session_runs_on_the_connection_and_ends_with_it(remote: Remote, openssh: AgentTransport):
    """sshd turns TCP_NODELAY on only once a session starts on a connection (a lone
    `ssh -W` opens none: a ps of 200 rows stalled ~40 ms): the master runs `cat` there."""
    before = set(remote.processes(b"cat"))
    openssh.batch([("hello", {})])
    wait_until(lambda: set(remote.processes(b"cat")) - before, timeout=5)
    assert openssh.describe()["tunnel"]["control_master"] == "ours"
    openssh.close()
    wait_until(lambda: not set(remote.processes(b"cat")) - before)  # nothing left on the host


def test_ps_rows_match_the_paramiko_tunnel(remote: Remote, openssh: AgentTransport):
    rows = _ps(openssh)
    assert set(RUNNING_KEYS) | set(ODD_STATES) <= {r["key"] for r in rows}
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=Notices()) as paramiko:
        assert _ps(paramiko) == rows


def test_a_200kb_reply_arrives_whole_and_repeatedly(remote: Remote, openssh: AgentTransport):
    big = (remote.state_dir / "big.log").read_bytes()
    for _ in range(3):  # a second large reply must not stall or mix with the first
        (result,) = openssh.batch([("logs", {"key": "big"})])
        assert result["ok"], result
        assert len(result["value"]["data"]) == BIG_LOG_BYTES and result["value"]["data"] == big


def test_close_ends_and_reaps_the_ssh_processes(openssh: AgentTransport):
    openssh.batch([("hello", {})])
    (pid,) = _ssh_pids(openssh)
    master = openssh.describe()["tunnel"]["master_pid"]
    assert set(_our_ssh_children()) == {pid, master}
    openssh.close()
    assert not _in_proc(pid) and not _in_proc(master), "an ssh process outlived the transport (or is a zombie)"
    assert not _our_ssh_children()
    with pytest.raises(ConnectionFailed, match="closed"):
        openssh.batch([("hello", {})])


# --------------------------------------------------------------------------- repairs


def test_agent_killed_is_restarted_over_ssh(remote: Remote, openssh: AgentTransport, notices: Notices):
    before = _ps(openssh)
    (old_ssh,) = _ssh_pids(openssh)
    old_pid = remote.kill_agent()
    wait_until(lambda: not _in_proc(old_ssh) or openssh._conn.sock.closed)  # ssh -W ends with the channel
    after = _ps(openssh)
    assert [r["key"] for r in after] == [r["key"] for r in before]
    assert notices == [f"seamless-service: reconnected to {remote.alias} (agent restarted)"]
    status = remote.agent_status()
    assert status is not None and status["pid"] != old_pid
    assert cache.load(remote.alias).pid == status["pid"]  # started by `ssh HOST python -`, cached
    assert not _in_proc(old_ssh), "the dead connection's ssh process was not reaped"
    assert len(_ssh_pids(openssh)) == 1


def test_ssh_process_killed_next_call_reconnects(remote: Remote, openssh: AgentTransport, notices: Notices):
    _ps(openssh)
    (old_ssh,) = _ssh_pids(openssh)
    agent_pid = remote.agent_status()["pid"]
    os.kill(old_ssh, signal.SIGKILL)
    wait_until(lambda: openssh._conn.sock.closed)
    assert {r["key"] for r in _ps(openssh)} >= set(RUNNING_KEYS)
    assert notices == [f"seamless-service: reconnected to {remote.alias} (connection re-established)"]
    (new_ssh,) = _ssh_pids(openssh)
    assert new_ssh != old_ssh and not _in_proc(old_ssh)
    assert remote.agent_status()["pid"] == agent_pid  # the agent was not touched


def test_ssh_master_killed_next_call_logs_in_again(remote: Remote, openssh: AgentTransport, notices: Notices):
    _ps(openssh)
    old_master = openssh.describe()["tunnel"]["master_pid"]
    os.kill(old_master, signal.SIGKILL)
    wait_until(lambda: not openssh.tunnel.alive)
    assert {r["key"] for r in _ps(openssh)} >= set(RUNNING_KEYS)
    assert notices == [f"seamless-service: reconnected to {remote.alias} (SSH connection re-established)"]
    assert openssh.describe()["tunnel"]["master_pid"] != old_master
    assert len(_our_ssh_children()) == 2  # the new master and its one stream; the old ones reaped


def test_the_users_own_controlmaster_is_reused(remote: Remote, tmp_path, notices: Notices):
    """A ControlMaster the user opened (e.g. after a 2FA login in a terminal) carries our
    streams: no new login (no new sshd connection), ControlPath not overridden."""
    control = tmp_path / "cm"
    config = tmp_path / "cfg"
    config.write_text(remote.server.config_block(extra={"ControlMaster": "auto", "ControlPath": str(control)}))
    config.chmod(0o600)
    users = subprocess.Popen(["ssh", "-F", str(config), "-N", remote.alias], stdin=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_until(control.exists)
        # a command through the user's master: its connection is fully up (both sshd processes)
        assert subprocess.run(["ssh", "-F", str(config), remote.alias, "true"], stdin=subprocess.DEVNULL,
                              timeout=30).returncode == 0
        sessions = sorted(remote.sshd_session_pids())
        with AgentTransport(remote.alias, ssh_config=config, notice=notices, via="openssh") as t:
            assert set(RUNNING_KEYS) <= {r["key"] for r in _ps(t)}
            (big,) = t.batch([("logs", {"key": "big"})])
            assert big["ok"] and len(big["value"]["data"]) == BIG_LOG_BYTES
            assert t.describe()["tunnel"]["control_master"] == "the user's"
            (pid,) = _ssh_pids(t)
            assert b"ControlPath" not in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert sorted(remote.sshd_session_pids()) == sessions  # no second login
        assert users.poll() is None  # closing ours leaves the user's master alone
    finally:
        users.terminate()
        users.wait()


def test_first_use_without_a_cached_endpoint_starts_over_ssh(remote: Remote, monkeypatch, tmp_path, notices: Notices):
    """No endpoint in the client cache (another machine, a wiped cache): the installed agent
    is found or started with `ssh HOST`, never through paramiko."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import seamless_service.deploy.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "deploy", lambda *a, **k: pytest.fail("deploy (paramiko) was used"))
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=notices, via="openssh") as t:
        (hello,) = t.batch([("hello", {})])
        assert hello["ok"]
        assert cache.load(remote.alias).remote_port == remote.agent_status()["port"]
    assert notices == [f"seamless-service: started the agent on {remote.alias} (first use)"]


# --------------------------------------------------------------------------- failures, one line


def test_a_refused_key_is_auth_failed_in_one_line(remote: Remote, tmp_path):
    config = remote.server.write_ssh_config(tmp_path / "cfg", identity=tmp_path / "no-such-key")
    with AgentTransport(remote.alias, ssh_config=config, notice=Notices(), via="openssh") as t:
        with pytest.raises(AuthFailed) as info:
            t.batch([("hello", {})])
    assert not _our_ssh_children()  # the master that could not log in was reaped
    message = str(info.value)
    assert message.startswith(f"{remote.alias}: ssh: ") and "Permission denied" in message
    assert "\n" not in message


def test_unknown_host_key_is_auth_failed(sshd, tmp_path):
    config = sshd.write_ssh_config(tmp_path / "cfg", known_hosts=tmp_path / "nothing")
    with AgentTransport(sshd.alias, ssh_config=config, notice=Notices(), via="openssh") as t:
        with pytest.raises(AuthFailed, match="Host key verification failed"):
            t.batch([("ps", {})])


def test_nothing_on_the_port_is_agent_unreachable(remote: Remote, openssh: AgentTransport):
    openssh.connect()
    from tests.support.world import closed_port

    with pytest.raises(AgentUnreachable, match="nothing listens on the agent's port"):
        openssh.tunnel.connect_agent(closed_port(), "a" * 64, timeout=5)
    assert len(_ssh_pids(openssh)) == 1  # the failed one was reaped; the agent's stays


def test_no_ssh_client_on_path_is_one_line(remote: Remote, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=Notices(), via="openssh") as t:
        with pytest.raises(ConnectionFailed, match=r"no `ssh` client on this machine's PATH"):
            t.batch([("hello", {})])


def test_map_ssh_failure_takes_the_last_line():
    error = map_ssh_failure("h", "Warning: something\nssh: connect to host h port 22: Connection refused\n", 255)
    assert type(error) is ConnectionFailed and str(error) == "h: ssh: connect to host h port 22: Connection refused"
    assert type(map_ssh_failure("h", "u@h: Permission denied (publickey).\n", 255)) is AuthFailed
    assert str(map_ssh_failure("h", "", 255)) == "h: ssh: ssh exited with status 255"


# --------------------------------------------------------------------------- choosing it


def test_host_via_openssh_and_fleet(remote: Remote):
    with Host(remote.alias, transport="agent", ssh_config=remote.ssh_config, via="openssh",
              notice=Notices()) as host:
        assert set(RUNNING_KEYS) <= {row["key"] for row in host.ps()}
        assert host.transport.describe()["via"] == "openssh"
    with Host(remote.alias, transport="agent", ssh_config=remote.ssh_config, via="paramiko",
              notice=Notices()) as host:
        host.ps()
        assert host.transport.describe()["via"] == "channel"


def test_choose_via(monkeypatch):
    monkeypatch.delenv(VIA_ENV, raising=False)
    assert choose_via("paramiko") == "paramiko"
    assert choose_via(None) == default_via() == "paramiko"  # measured: see transport/open.py
    monkeypatch.setenv(VIA_ENV, "paramiko")
    assert choose_via(None) == "paramiko"
    assert choose_via("openssh") == "openssh"  # the argument wins over the environment
    monkeypatch.setenv(VIA_ENV, "putty")
    with pytest.raises(UsageError, match=r"unknown SSH client 'putty' \(\$SEAMLESS_SERVICE_SSH\)"):
        choose_via(None)
    with pytest.raises(UsageError, match="choose openssh or paramiko"):
        open_transport("h", "agent", via="putty")


def test_the_pool_keeps_one_transport_per_ssh_client(remote: Remote):
    import threading

    from seamless_service.client.transport.pool import TransportPool

    pool = TransportPool()
    pool.keep_between_commands(threading.Event())
    try:
        made = [open_transport(remote.alias, "agent", ssh_config=remote.ssh_config, notice=Notices(),
                               pool=pool, via=via) for via in ("openssh", "paramiko", "openssh")]
        assert made[0].pool_name == made[2].pool_name != made[1].pool_name
        for lease in made:
            lease.batch([("hello", {})])
        assert made[0].inner.via == "openssh" and made[1].inner.via == "channel"
        for lease in made:
            lease.close()
    finally:
        pool.close_all()


def test_the_environment_chooses_openssh_for_agent_and_auto(remote: Remote, monkeypatch):
    """What `seamless-service --transport agent|auto` runs with SEAMLESS_SERVICE_SSH=openssh."""
    monkeypatch.setenv(VIA_ENV, "openssh")
    agent = open_transport(remote.alias, "agent", ssh_config=remote.ssh_config, notice=Notices())
    auto = open_transport(remote.alias, "auto", ssh_config=remote.ssh_config, notice=Notices())
    try:
        for transport in (agent, auto):
            (hello,) = transport.batch([("hello", {})])
            assert hello["ok"] and transport.kind == "agent"
        assert agent.describe()["via"] == "openssh"
        assert auto._agent.describe()["via"] == "openssh"
    finally:
        agent.close()
        auto.close()
    monkeypatch.delenv(VIA_ENV)
    with open_transport(remote.alias, "agent", ssh_config=remote.ssh_config, notice=Notices()) as default:
        assert default.via == "channel"


def test_a_key_forced_through_rhl_guard_is_guarded_and_auto_falls_back(remote: Remote):
    from seamless_service.client.errors import AgentUnavailable

    with AgentTransport(remote.guard_alias, ssh_config=remote.ssh_config, notice=Notices(), via="openssh") as t:
        with pytest.raises(AgentUnavailable) as info:
            t.batch([("hello", {})])
    assert info.value.guarded and "rhl-guard" in str(info.value) and "\n" not in str(info.value)
    assert not _our_ssh_children()
    notices = Notices()
    with open_transport(remote.guard_alias, "auto", ssh_config=remote.ssh_config, notice=notices,
                        via="openssh") as auto:
        (hello,) = auto.batch([("hello", {})])
        assert hello["ok"] and auto.kind == "ssh"
