"""Fleet sends to every connected host before it reads any answer (Transport.begin), on
real sshd servers with real agents: the answers, the errors, repairs and conditional
replies are the same as through Host.batch in threads."""

from __future__ import annotations

import time

import pytest

from seamless_service import ConnectionFailed, Fleet, Host, OpError
from seamless_service.protocol import encode_request
from seamless_service.client.transport.agent_conn import AgentTimeout
from tests.support.remote import Remote
from tests.support.remote_state import RUNNING_KEYS
from tests.support.transports import Notices
from tests.support.sshd import combined_ssh_config

ONLY_ON_SECOND = "database-ahead-rw-p"


@pytest.fixture
def pair(remote: Remote, second_remote: Remote, tmp_path):
    """Two connected Hosts (the caller's, so the Fleet does not close them) and the
    Remote behind each, with a state file only the second one has."""
    second_remote.write(f".remote-http-launcher/server/{ONLY_ON_SECOND}.json",
                        '{"status": "failed", "workdir": "/tmp"}')
    config = combined_ssh_config(tmp_path / "fleet_config", [remote.server, second_remote.server])
    notices = Notices()
    hosts = [Host(r.alias, ssh_config=config, notice=notices) for r in (remote, second_remote)]
    for host in hosts:
        host.hello()  # connected: what lets a Fleet send ahead
    try:
        yield hosts, (remote, second_remote), notices
    finally:
        for host in hosts:
            host.close()
        (second_remote.state_dir / f"{ONLY_ON_SECOND}.json").unlink(missing_ok=True)


def agent_of(host: Host):
    return host.transport.active


def test_connected_hosts_are_all_asked_before_any_answer_is_read_and_no_thread_is_used(pair):
    hosts, (first, second), _ = pair
    calls = [agent_of(host).calls for host in hosts]
    with Fleet(hosts) as fleet:
        batch = fleet.batch([("hello", {}), ("inspect", {"key": ONLY_ON_SECOND})])
        assert fleet._pool is None  # every host was sent ahead: no worker thread was started
    assert batch.ok and list(batch.results) == [first.alias, second.alias]
    assert [agent_of(host).calls for host in hosts] == [c + 1 for c in calls]  # one request each
    missing = batch.results[first.alias][1]
    assert isinstance(missing, OpError) and missing.code == "not_found" and missing.host == first.alias
    assert batch.results[second.alias][1]["data"]["status"] == "failed"
    (s1, e1), (s2, e2) = (batch.timings[h.name] for h in hosts)
    assert max(s1, s2) < min(e1, e2)  # both in flight at once


def test_fleet_ps_sent_ahead_sees_every_change_on_the_next_call(pair):
    hosts, (first, second), _ = pair
    extra = "database-ahead2-rw-p"
    with Fleet(hosts) as fleet:
        before = fleet.ps()
        again = fleet.ps()  # answered "same" where nothing changed (conditional replies)
        assert before.ok and again.ok
        assert sorted((r["host"], r["key"]) for r in again.rows) == sorted((r["host"], r["key"]) for r in before.rows)
        keys = {(r["host"], r["key"]) for r in before.rows}
        assert (second.alias, ONLY_ON_SECOND) in keys and (first.alias, ONLY_ON_SECOND) not in keys
        assert {(first.alias, key) for key in RUNNING_KEYS} <= keys
        second.write(f".remote-http-launcher/server/{extra}.json", '{"status": "failed", "workdir": "/tmp"}')
        try:
            added = {(r["host"], r["key"]) for r in fleet.ps().rows}
            assert added == keys | {(second.alias, extra)}
        finally:
            (second.state_dir / f"{extra}.json").unlink()
        assert {(r["host"], r["key"]) for r in fleet.ps().rows} == keys
        filtered = fleet.ps(status="failed")
        assert {(r["host"], r["key"]) for r in filtered.rows} >= {(second.alias, ONLY_ON_SECOND)}
        assert all(r["status"] == "failed" for r in filtered.rows)
        assert fleet._pool is None


def test_a_host_not_yet_connected_goes_to_a_thread_while_the_others_are_sent_ahead(pair, tmp_path):
    hosts, (first, second), _ = pair
    config = combined_ssh_config(tmp_path / "fresh_config", [second.server])
    fresh = Host(second.alias, ssh_config=config, notice=Notices())  # same server, not connected
    try:
        with Fleet([hosts[0], fresh]) as fleet:
            result = fleet.batch([("inspect", {"key": ONLY_ON_SECOND})])
            assert fleet._pool is not None  # the fresh host connected in a worker thread
        assert result.ok
        assert isinstance(result.results[first.alias][0], OpError)
        assert result.results[second.alias][0]["data"]["status"] == "failed"
    finally:
        fresh.close()


def test_a_read_only_call_sent_ahead_to_an_agent_that_dies_is_repaired_and_answered(pair):
    hosts, (first, second), notices = pair
    token = hosts[1].wait(None, 0)["token"]
    # begin() sends the wait; the agent is killed while it waits; the call is read-only, so
    # it is sent again to the restarted agent and answered (the state did not change)
    finish = hosts[1]._begin([("wait", {"token": token, "timeout": 1.0})])
    assert finish is not None
    second.kill_agent()
    (answer,) = finish()
    assert answer["changed"] is False
    assert any("reconnected" in line and second.alias in line for line in notices)
    with Fleet(hosts) as fleet:
        assert fleet.ps().ok


def test_a_mutating_call_sent_ahead_is_not_sent_again_when_the_connection_breaks(pair):
    hosts, (first, second), _ = pair
    token = hosts[1].wait(None, 0)["token"]
    state = second.state_dir / f"{ONLY_ON_SECOND}.json"
    # The agent runs the ops in order: it dies during the wait, before the rm. The client
    # cannot know that, so it must not send the rm again; the state file is untouched.
    finish = hosts[1]._begin([("wait", {"token": token, "timeout": 2.0}),
                              ("rm", {"keys": ["--server", ONLY_ON_SECOND]})])
    assert finish is not None
    second.kill_agent()
    with pytest.raises(ConnectionFailed) as info:
        finish()
    assert "not sent again" in str(info.value) and second.alias in str(info.value)
    assert state.exists()
    hosts[1].hello()  # repaired on the next call


def test_wait_takes_a_reply_that_arrived_while_the_caller_was_busy_even_past_its_time(pair):
    hosts, _, _ = pair
    conn = agent_of(hosts[0])._conn
    sent = conn.send(encode_request([("hello", {})]))
    time.sleep(0.3)  # the reply arrives meanwhile; nobody reads it yet
    assert isinstance(conn.wait(sent, timeout=0), bytes)
    token = hosts[0].wait(None, 0)["token"]
    slow = conn.send(encode_request([("wait", {"token": token, "timeout": 1.0})]))
    with pytest.raises(AgentTimeout):
        conn.wait(slow, timeout=0.1)  # not there yet, and no time to wait for it
