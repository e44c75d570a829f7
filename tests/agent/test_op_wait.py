"""The `wait` op and agent/watch.py change tokens, on real files and real processes."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from seamless_service.agent.context import AgentContext
from seamless_service.agent.watch import current_token
from tests.support.agent import call


def later(delay: float, action) -> threading.Event:
    """Run `action` after `delay` s in a thread; the event is set just before it runs."""
    started = threading.Event()

    def body():
        time.sleep(delay)
        started.set()
        action()

    threading.Thread(target=body, daemon=True).start()
    return started


@pytest.fixture
def ctx(sandbox):
    sandbox.write_state("hashserver-c1-rw-proj", {"status": "failed"})
    context = AgentContext()
    yield context
    context.close()


def test_stale_or_missing_token_returns_at_once(ctx):
    token = call(ctx, "ps")["token"]
    t0 = time.monotonic()
    assert call(ctx, "wait", token="not-the-token", timeout=30) == {"changed": True, "token": token}
    assert call(ctx, "wait", timeout=30) == {"changed": True, "token": token}
    assert time.monotonic() - t0 < 10  # generous: "at once" is milliseconds


def test_blocks_until_a_state_file_changes(sandbox, ctx):
    token = call(ctx, "ps")["token"]
    written = later(0.3, lambda: sandbox.write_state("database-c1-rw-proj", {"status": "failed"}))
    value = call(ctx, "wait", token=token, timeout=20)
    assert written.is_set()  # it did not return before the change
    assert value["changed"] is True and value["token"] != token
    assert value["token"] == call(ctx, "ps")["token"]  # the token describes the new state
    assert "database-c1-rw-proj" in [row["key"] for row in call(ctx, "ps")["rows"]]


def test_in_place_rewrite_of_same_size_is_seen(sandbox, ctx):
    path = sandbox.server_dir / "hashserver-c1-rw-proj.json"
    token = current_token(ctx)

    original = path.read_text()
    assert original == '{"status": "failed"}'

    def rewrite():
        path.write_text('{"status": "stale!"}')  # same length, same inode: only times change

    before = (os.stat(path).st_ino, os.stat(path).st_size)
    written = later(0.3, rewrite)
    value = call(ctx, "wait", token=token, timeout=20)
    assert written.is_set() and value["changed"] is True
    assert (os.stat(path).st_ino, os.stat(path).st_size) == before


def test_removal_is_seen(sandbox, ctx):
    token = current_token(ctx)
    later(0.2, lambda: (sandbox.server_dir / "hashserver-c1-rw-proj.json").unlink())
    assert call(ctx, "wait", token=token, timeout=20)["changed"] is True
    assert call(ctx, "ps")["rows"] == []


def test_times_out_without_change(sandbox, ctx):
    token = current_token(ctx)
    # a log is not state: appending to it changes nothing
    (sandbox.server_dir / "hashserver-c1-rw-proj.log").write_text("log line\n")
    assert call(ctx, "wait", token=token, timeout=0.3) == {"changed": False, "token": token}
    assert call(ctx, "wait", token=token, timeout=0) == {"changed": False, "token": token}


def test_state_appearing_from_nothing(sandbox):
    ctx = AgentContext()
    assert not ctx.server_dir.exists()
    token = call(ctx, "ps")["token"]
    later(0.2, lambda: sandbox.write_state("x", {"status": "failed"}, side="client"))
    assert call(ctx, "wait", token=token, timeout=20)["changed"] is True


def test_a_dying_service_changes_the_token(sandbox):
    # No file changes when a service dies, but its derived status does (running -> stale).
    state = sandbox.launch("hashserver-c1-rw-proj")
    ctx = AgentContext()
    value = call(ctx, "ps")
    assert value["rows"][0]["status"] == "running"
    later(0.2, lambda: os.killpg(state["pid"], signal.SIGKILL))
    result = call(ctx, "wait", token=value["token"], timeout=30)
    assert result["changed"] is True
    assert call(ctx, "ps")["rows"][0]["status"] == "stale"


def test_a_waiting_client_does_not_block_others(sandbox, ctx):
    token = current_token(ctx)
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.update(call(ctx, "wait", token=token, timeout=30)))
    waiter.start()
    try:
        time.sleep(0.2)
        assert [row["key"] for row in call(ctx, "ps")["rows"]] == ["hashserver-c1-rw-proj"]
        assert waiter.is_alive()  # still waiting: ps did not have to wait for it
    finally:
        sandbox.write_state("other", {"status": "failed"})
        waiter.join(20)
    assert not waiter.is_alive() and outcome["changed"] is True


def test_agent_shutdown_wakes_waiters(sandbox):
    ctx = AgentContext()
    token = current_token(ctx)
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.update(call(ctx, "wait", token=token, timeout=60)))
    waiter.start()
    time.sleep(0.2)
    ctx.close()
    waiter.join(20)
    assert not waiter.is_alive() and outcome == {"changed": False, "token": token}
