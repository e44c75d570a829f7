"""The public API (`seamless_service.Host`, `Fleet`) against this machine and real sshd hosts."""

from __future__ import annotations

import subprocess
import sys

import pytest

import seamless_service
from seamless_service import ConnectionFailed, Fleet, Host, OpError, ServiceError
from seamless_service.client import errors
from seamless_service.protocol import PROTOCOL_VERSION
from tests.support.remote import Remote
from tests.support.remote_state import RUNNING_KEYS
from tests.support.transports import Notices
from tests.support.sshd import combined_ssh_config


def test_import_is_light_and_reexports_the_api():
    code = ("import sys, seamless_service as s; heavy = [m for m in ('paramiko', 'rpyc', 'sshtunnel') "
            "if m in sys.modules]; s.Host, s.Fleet, s.ServiceError; "
            "heavy += [m for m in ('paramiko', 'rpyc', 'sshtunnel') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for name in ("ServiceError", "ConnectionFailed", "AuthFailed", "ProtocolMismatch", "OpError", "UsageError"):
        assert getattr(seamless_service, name) is getattr(errors, name)
    assert issubclass(seamless_service.AuthFailed, ConnectionFailed)
    assert "Host" in dir(seamless_service)


def test_local_host_ps(sandbox):
    state = sandbox.launch("hashserver-loc-rw-projL")
    with Host.local() as host:
        rows = host.ps()
        assert [r["key"] for r in rows] == ["hashserver-loc-rw-projL"]
        assert rows[0]["status"] == "running" and rows[0]["pid"] == state["pid"]
        assert host.ps(service="database") == []
        assert host.hello()["transport"] == "local"
        with pytest.raises(OpError) as info:
            host.inspect("no-such-key")
        assert info.value.code == "not_found"


def test_batch_is_one_round_trip_with_values_and_op_errors(remote: Remote):
    with Host(remote.alias, ssh_config=remote.ssh_config, notice=Notices()) as host:
        host.hello()  # connect (and repair, if an earlier test killed the agent)
        agent = host.transport.active
        calls = agent.calls
        ps, persistent, hello, missing = host.batch([
            ("ps", {}),
            ("persistent", {"paths": [str(remote.data / "buffers")], "level": 2, "marker": ".HASHSERVER_PREFIX"}),
            ("hello", {}),
            ("inspect", {"key": "no-such-key"}),
        ])
        assert agent.calls == calls + 1  # one request, one reply
        assert {r["key"] for r in ps["rows"]} >= set(RUNNING_KEYS)
        paths = [r["path"] for r in persistent["rows"]]
        assert str(remote.data / "buffers/projA") in paths and str(remote.data / "buffers/projB/STAGE-s1") in paths
        assert str(remote.data / "with space/projC") not in paths  # another root
        assert hello["version"] == seamless_service.__version__
        assert isinstance(missing, OpError) and missing.code == "not_found" and missing.host == remote.alias
        rows = host.ps(status="running")
        assert {r["key"] for r in rows} >= set(RUNNING_KEYS) and isinstance(rows.token, str)
        tunnel = agent.tunnel
        assert tunnel.alive
    assert not tunnel.alive  # the context manager closed the tunnel


def test_fleet_asks_hosts_in_parallel_and_reports_the_down_one(remote: Remote, second_remote: Remote, sshd,
                                                               tmp_path):
    config = combined_ssh_config(tmp_path / "fleet_config", [remote.server, second_remote.server, sshd])
    sshd.stop()  # the third host is down
    second_remote.write(".remote-http-launcher/server/database-two-rw-p.json",
                        '{"status": "failed", "workdir": "/tmp"}')
    names = [remote.alias, second_remote.alias, sshd.alias]
    with Fleet(names, ssh_config=config, notice=Notices()) as fleet:
        result = fleet.ps()
        assert set(result.errors) == {sshd.alias} and not result.ok
        error = result.errors[sshd.alias]
        assert isinstance(error, ConnectionFailed) and isinstance(error, ServiceError)
        assert sshd.alias in str(error)
        by_host: dict[str, set] = {}
        for row in result.rows:
            by_host.setdefault(row["host"], set()).add(row["key"])
        assert set(by_host) == {remote.alias, second_remote.alias}
        assert by_host[remote.alias] >= set(RUNNING_KEYS)
        assert by_host[second_remote.alias] == {"database-two-rw-p"}
        # Parallel, structurally: the two live hosts (each opening a new SSH connection)
        # were in flight at the same time, and the dead host was asked before either ended.
        (s1, e1), (s2, e2), (s3, _) = (result.timings[n] for n in names)
        assert max(s1, s2) < min(e1, e2)
        assert s3 < min(e1, e2)
        batch = fleet.batch([("hello", {}), ("inspect", {"key": "database-two-rw-p"})])
        assert set(batch.results) == {remote.alias, second_remote.alias}
        hello, inspected = batch.results[second_remote.alias]
        assert hello["protocol"] == PROTOCOL_VERSION and inspected["data"]["status"] == "failed"
        assert isinstance(batch.results[remote.alias][1], OpError)  # not on that host
        assert set(batch.errors) == {sshd.alias}


def test_bad_transport_choices_are_usage_errors():
    from seamless_service import UsageError, open_transport

    with pytest.raises(UsageError):
        open_transport("somehost", "carrier-pigeon")
    with pytest.raises(UsageError):
        open_transport("somehost", "local")
    with pytest.raises(UsageError):
        Host(None, transport="agent")
    with pytest.raises(UsageError):
        Fleet(["a", "b", "a"])
    local = open_transport(None)
    try:
        assert local.name == "local"
    finally:
        local.close()


def test_a_closed_host_refuses_calls_after_its_first_one(sandbox):
    """Host.transport answers without its lock once open (every call goes through it): a
    call after close() must still be refused, not sent through the closed transport."""
    host = Host.local()
    assert host.ps() == []
    host.close()
    with pytest.raises(seamless_service.UsageError, match="closed"):
        host.ps()
    with pytest.raises(seamless_service.UsageError, match="closed"):
        host.transport
