"""The Transport contract as the callers use it: a keeper's lease forwards what the kept
transport is and knows, and hands it each caller's settings; the auto transport asks a
leased agent whether it ever connected; ps asks a transport to wait for its sizes
(pure logic: no host, no agent)."""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from seamless_service.client.errors import ConnectionFailed
from seamless_service.client.transport.pool import TransportPool
from seamless_service.client.transport.base import Op, Result, Transport
from seamless_service.client.transport.mock import MockTransport
from seamless_service.client.transport.pooled import PooledTransport


@pytest.fixture
def kept():
    pool = TransportPool()
    yield pool
    pool.close_all()


def hello(op: str, args: dict) -> dict:
    return {"version": "mock"}


def test_a_lease_is_what_it_leases_and_gives_it_the_callers_settings(kept):
    def say(line: str) -> None:
        pass

    pool = kept
    inner = pool.lease("transport:mock:h#t", lambda: MockTransport(hello, host="h"))
    lease = PooledTransport("transport:mock:h#t", inner, notice=say, timeout=77.0, pool=pool)
    assert (lease.name, lease.host, lease.kind, lease.label) == ("mock", "h", "mock", "h")
    assert lease.connected_once is False and lease.fallback_reason is None and lease.wait_sizes(1.0) is None
    assert lease.batch([("hello", {})]) == [{"ok": True, "value": {"version": "mock"}}]
    assert inner.notice is say  # this command's notices go to this command's caller
    assert lease.describe() == inner.describe() == {"transport": "mock", "host": "h", "batches": 1}
    lease.close()
    assert not inner.closed and pool.peek("transport:mock:h#t") is inner


def test_a_lease_whose_host_cannot_answer_drops_it_from_the_pool(kept):
    def down(op: str, args: dict) -> dict:
        raise ConnectionFailed("h", "connection reset")

    pool = kept
    inner = pool.lease("transport:mock:h#t", lambda: MockTransport(down, host="h"))
    with pytest.raises(ConnectionFailed):
        PooledTransport("transport:mock:h#t", inner, pool=pool).batch([("hello", {})])
    assert pool.peek("transport:mock:h#t") is None and inner.closed


def test_kept_agent_and_ssh_transports_take_each_callers_timeout_and_host_key_choice():
    from seamless_service.client.transport.agent import AgentTransport
    from seamless_service.client.transport.ssh import SshTransport

    agent, ssh = AgentTransport("h"), SshTransport("h")
    for transport in (agent, ssh):
        transport.configure(notice=print, timeout=77.0, accept_new_host_key=True)
        assert transport.notice is print and transport.timeout == 77.0
        transport.configure()  # None: each setting stays
        assert transport.notice is print and transport.timeout == 77.0
    assert agent.accept_new_host_key is True
    assert not hasattr(ssh, "accept_new_host_key")  # the ssh client keeps its own known_hosts


class _ConnectedAgent(Transport):
    """An agent transport that worked before and now cannot reach its agent."""

    name, host, connected_once = "agent", "h", True

    def batch(self, ops: Sequence[Op]) -> list[Result]:
        from seamless_service.client.transport.agent import AgentUnavailable

        raise AgentUnavailable("h", "the agent did not answer in time")


def test_auto_does_not_fall_back_from_a_leased_agent_that_connected_before(kept):
    from seamless_service.client.transport.agent import AgentUnavailable
    from seamless_service.client.transport.auto import AutoTransport

    def make_ssh(guarded: Any) -> Transport:
        raise AssertionError("fell back to ssh")

    lease = PooledTransport("transport:agent:h#t", _ConnectedAgent(), pool=kept)
    auto = AutoTransport("h", lambda: lease, make_ssh, notice=print)
    with pytest.raises(AgentUnavailable):
        auto.batch([("ps", {})])
    assert auto.kind == "agent" and auto.fallback_reason is None


def test_the_local_transport_waits_for_its_own_sizer(tmp_path, kept):
    from seamless_service.agent.context import AgentContext
    from seamless_service.agent.sizer import Sizer
    from seamless_service.client.transport.local import LocalTransport

    with LocalTransport(AgentContext(base=tmp_path)) as local:
        lease = PooledTransport("transport:local#t", local, pool=kept)
        assert local.wait_sizes(1.0) is None and lease.wait_sizes(1.0) is None  # no walk was asked for
        local.ctx.shared("sizer", Sizer)  # what a persistent op with sizes starts
        assert local.wait_sizes(1.0) is True and lease.wait_sizes(1.0) is True
