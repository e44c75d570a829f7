"""client/transport/agent.py: automatic deploy, the rows it answers, and repair after the
agent or sshd died — against real sshd, real agents and real launched services."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from seamless_service import __version__
from seamless_service.client.transport.agent import AgentTransport
from seamless_service.client.errors import AuthFailed, ConnectionFailed
from seamless_service.deploy import cache
from tests.support.remote import Remote
from tests.support.remote_state import ODD_STATES, RUNNING_KEYS
from tests.support.services import wait_until
from tests.support.transports import Notices

# Rows where the agent deliberately differs from rhl-ps (README, Deliberate differences #15): pid 0 is not alive.
CORRECTED = {"hashserver-clu-rw-zeropid": {"status": "stale", "live": False}}


@pytest.fixture
def notices() -> Notices:
    return Notices()


@pytest.fixture
def transport(remote: Remote, notices: Notices):
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=notices) as t:
        yield t


def _ps(transport: AgentTransport, **args) -> list[dict]:
    (result,) = transport.batch([("ps", args)])
    assert result["ok"], result
    return result["value"]["rows"]


def test_first_call_deployed_the_agent_automatically(remote: Remote):
    (hello,) = remote.first_call_results
    assert hello["ok"] and hello["value"]["version"] == __version__
    assert any("starting the agent" in n and "first use" in n for n in remote.first_call_notices)
    # the slow steps of an install from nothing are said as they happen (issue: progress)
    said = [n for n in remote.first_call_notices if n.startswith(f"seamless-service: {remote.alias}: ")]
    assert any("creating the agent environment" in n for n in said), remote.first_call_notices
    assert any(": installing " in n for n in said), remote.first_call_notices
    endpoint = cache.load(remote.alias)
    assert endpoint is not None and endpoint.version == __version__
    status = remote.agent_status()
    assert status is not None and status["port"] == endpoint.remote_port
    assert (remote.venv / "bin/python").exists()
    assert "secret" not in repr(endpoint)  # the secret never shows in a repr
    print(f"first call from nothing (deploy included): {remote.first_call_seconds:.1f} s")


def test_ps_rows_are_the_remote_users_rows(remote: Remote, transport: AgentTransport):
    rows = _ps(transport)
    expected = remote.helper_rows("rhl-ps", "--json")  # rhl-ps itself, as that user, over ssh
    assert [r["key"] for r in rows] == [r["key"] for r in expected]
    assert set(RUNNING_KEYS) | set(ODD_STATES) <= {r["key"] for r in rows}
    for got, want in zip(rows, expected):
        want = {**want, **CORRECTED.get(want["key"], {})}
        assert got == want, f"row {want['key']} differs"
    running = {r["key"]: r for r in rows if r["status"] == "running"}
    assert set(RUNNING_KEYS) <= set(running)
    assert all(isinstance(running[k]["pid"], int) and running[k]["live"] is True for k in RUNNING_KEYS)


def test_describe_never_shows_the_secret(remote: Remote, transport: AgentTransport):
    _ps(transport)
    info = transport.describe()
    assert info["connected"] is True and info["host"] == remote.alias
    assert cache.load(remote.alias).secret not in json.dumps(info, default=str)


def test_agent_killed_between_calls_is_repaired_with_a_notice(remote: Remote, transport: AgentTransport,
                                                               notices: Notices):
    before = _ps(transport)
    old_pid = remote.kill_agent()
    after = _ps(transport)
    assert [r["key"] for r in after] == [r["key"] for r in before]
    assert len(notices) == 1 and notices[0] == f"seamless-service: reconnected to {remote.alias} (agent restarted)"
    status = remote.agent_status()
    assert status is not None and status["pid"] != old_pid
    assert cache.load(remote.alias).pid == status["pid"]  # the cache holds the new agent
    assert transport.describe()["repairs"] == 1


def test_sshd_restart_with_open_tunnel_is_repaired(remote: Remote, transport: AgentTransport, notices: Notices):
    _ps(transport)
    agent_pid = remote.agent_status()["pid"]
    old_tunnel = transport.tunnel
    sessions = remote.sshd_session_pids()
    assert sessions, "the open tunnel should have an sshd session process"
    for pid in sessions:  # what a reboot of sshd or a network cut does to open sessions
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    remote.server.restart()  # sshd back on the same port, same host key
    wait_until(lambda: not old_tunnel.alive)
    rows = _ps(transport)
    assert {r["key"] for r in rows} >= set(RUNNING_KEYS)
    assert notices == [f"seamless-service: reconnected to {remote.alias} (SSH connection re-established)"]
    assert transport.tunnel is not old_tunnel and transport.tunnel.alive
    assert remote.agent_status()["pid"] == agent_pid  # the agent itself was never touched


def test_stop_is_not_sent_again_after_a_failure_mid_call(remote: Remote, transport: AgentTransport,
                                                         notices: Notices):
    key = "hashserver-clu-rw-stubborn"
    state = remote.launch(key, "--ignore-signals")  # rhl-stop needs ~10 s (SIGKILL at the end)
    try:
        _ps(transport)  # connected before the stop
        stops_seen: set[int] = set()
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                stops_seen.update(remote.processes(b"rhl-stop"))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        outcome: dict = {}

        def stop() -> None:
            try:
                outcome["results"] = transport.batch([("stop", {"keys": [key]})])
            except ConnectionFailed as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=stop)
        caller.start()
        wait_until(lambda: stops_seen, timeout=20)  # rhl-stop runs: the request reached the agent
        remote.kill_agent()
        caller.join(timeout=30)
        assert not caller.is_alive()
        error = outcome.get("error")
        assert isinstance(error, ConnectionFailed), outcome
        assert "stop" in str(error) and "not sent again" in str(error) and remote.alias in str(error)
        # A re-sent stop would start a second rhl-stop within a repair (~1-2 s) while the
        # stubborn service still lives (~10 s): watch for a while.
        time.sleep(3)
        watching.set()
        watcher.join()
        assert len(stops_seen) == 1, f"rhl-stop ran {len(stops_seen)} times"
        assert not any("reconnected" in n for n in notices)
        # The next call repairs (the agent is gone) and answers.
        assert {r["key"] for r in _ps(transport)} >= {key}
    finally:
        remote.kill_service(key)
        wait_until(lambda: state["pid"] not in remote.server.user_processes(), timeout=15)
        # The orphaned rhl-stop ends once its target is gone and rewrites the state file:
        # wait for it, then leave no trace for the tests that compare rows.
        wait_until(lambda: not remote.processes(b"rhl-stop"), timeout=15)
        for suffix in (".json", ".log"):
            (remote.state_dir / f"{key}{suffix}").unlink(missing_ok=True)


def test_unknown_host_key_surfaces_the_cause(sshd, tmp_path):
    config = sshd.write_ssh_config(tmp_path / "cfg", known_hosts=tmp_path / "nothing")
    with AgentTransport(sshd.alias, ssh_config=config, notice=Notices()) as t:
        with pytest.raises(AuthFailed) as info:
            t.batch([("ps", {})])
    assert str(info.value).startswith(f"{sshd.alias}: ")
    assert "known_hosts" in str(info.value)
    assert cache.load(sshd.alias) is None  # nothing was deployed


def test_unreachable_host_is_connection_failed(sshd):
    sshd.stop()
    with AgentTransport(sshd.alias, ssh_config=sshd.ssh_config, notice=Notices()) as t:
        with pytest.raises(ConnectionFailed) as info:
            t.batch([("hello", {})])
    assert "refused" in str(info.value).lower() and sshd.alias in str(info.value)


def test_keeper_pool_keeps_the_connection_between_calls(remote: Remote, monkeypatch):
    from seamless_service.client.transport.open import open_transport
    from seamless_service.client.transport.pool import TransportPool
    from seamless_service.client.transport.pooled import PooledTransport

    pool = TransportPool()
    pool.keep_between_commands(threading.Event())  # as inside the tunnel keeper
    family = f"transport:agent:{remote.alias}|{remote.ssh_config}"
    name = family
    try:
        first = open_transport(remote.alias, "agent", ssh_config=remote.ssh_config, notice=Notices(), pool=pool)
        # the name is the family plus a tag of the caller's environment (transport/open.py REMOTE_ENV)
        assert isinstance(first, PooledTransport) and first.pool_name.startswith(family + "#")
        name = first.pool_name
        assert {r["key"] for r in _ps(first)} >= set(RUNNING_KEYS)
        tunnel = first.inner.tunnel
        first.close()  # one CLI call ends: the pooled tunnel stays open for the next
        assert tunnel.alive
        second = open_transport(remote.alias, "agent", ssh_config=remote.ssh_config, notice=Notices(), pool=pool)
        assert second.inner is first.inner and second.inner.tunnel is tunnel
        # Each command's --timeout applies to its own calls on the shared connection.
        slow = open_transport(remote.alias, "agent", ssh_config=remote.ssh_config, notice=Notices(),
                              timeout=77.0, pool=pool)
        slow.batch([("hello", {})])
        assert slow.inner is first.inner and first.inner.timeout == 77.0
        second.batch([("hello", {})])
        assert first.inner.timeout == 30.0  # back to the default for a call that gave none
        (entry,) = [e for e in pool.describe() if e["name"] == name]
        assert entry["details"]["connected"] is True
        # A fatal error (repair impossible: the host is gone) drops it from the pool.
        remote.server.stop()
        for pid in remote.sshd_session_pids():
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not tunnel.alive)
        with pytest.raises(ConnectionFailed):
            second.batch([("ps", {})])
        assert pool.peek(name) is None
    finally:
        if not remote.server.running:
            remote.server.restart()
        pool.close_all()
