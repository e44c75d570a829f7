"""Issue 9, items 6 and 7: a stuck agent holds a caller no longer than the caller's timeout
(close included), and one slow moment does not pin a host to the ssh fallback.

Real parts only: agents are real processes, made to get stuck for real — the whole agent
frozen with SIGSTOP (every op it runs, and every new connection, hangs), or the `rhl-stop`
helper a `stop` op waits for frozen the same way (the agent itself keeps serving other
connections: the op's thread is stuck, as with a hung filesystem); real sshd, the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

from seamless_service import Host, TimedOut
from seamless_service.client.transport.agent_conn import AgentConnection, AgentTimeout
from seamless_service.client.transport.auto import AutoTransport
from seamless_service.client.transport.choice import forget_choice, remembered_choice
from seamless_service.client.transport.open import open_transport
from tests.support.remote import Remote
from tests.support.services import wait_until
from tests.support.transports import Notices
from tests.support.cli import cli
from tests.support.cli import SHARED
from tests.support.agent import end_agent, start_test_agent
from tests.support.sshd import _keygen

T = 3.0                  # the caller's timeout in these tests
BOUND = 2 * T + 5        # generous; the old code took 100 s and more
FALLBACK = "using per-call ssh (agent unavailable: "


@contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """The processes stopped (SIGSTOP) for the block: alive, holding their sockets, silent."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def timed(fn: Callable[[], Any], limit: float) -> tuple[Any, float]:
    """(fn's result or the exception it raised, seconds it took); fails if it takes more
    than `limit` (in a daemon thread: a call that hangs for minutes cannot hold the test)."""
    box: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        try:
            box["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            box["value"] = exc
        box["took"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still waiting after {limit:g} s"
    return box["value"], box["took"]


def ours(home: Any, remote: Remote, *argv: str, timeout: float = 120) -> Any:
    """`seamless-service ARGV --ssh-config ...` as a subprocess, killed after `timeout`."""
    return cli(home, *argv, "--ssh-config", str(remote.ssh_config), timeout=timeout)


def agent_pid(remote: Remote) -> int:
    status = remote.agent_status()
    assert status is not None, "no agent runs"
    return int(status["pid"])


def connected_host(remote: Remote, notices: Notices, alias: str | None = None) -> Host:
    host = Host(alias or remote.alias, ssh_config=remote.ssh_config, timeout=T, notice=notices)
    assert host.hello()["transport"] == "agent"  # connected (repaired, if an earlier test killed it)
    return host


# --------------------------------------------------------------------------- item 6


def test_close_does_not_wait_for_an_agent_stuck_in_an_op(tmp_path):
    """rpyc's own close() waits 90 s for the reply to its close request."""
    agent = start_test_agent(tmp_path)
    try:
        conn = AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"])
        (hello,) = conn.batch([("hello", {})])
        assert hello["ok"]
        with frozen(agent["pid"]):
            with pytest.raises(AgentTimeout, match="did not answer within 1 s"):
                conn.batch([("ps", {})], timeout=1)
            _, took = timed(conn.close, limit=10)
            assert took < 2 and conn.closed
    finally:
        end_agent(agent["proc"])


def test_host_call_to_a_stuck_agent_ends_within_its_timeout(remote: Remote):
    notices = Notices()
    with connected_host(remote, notices) as host:
        with frozen(agent_pid(remote)):
            error, took = timed(lambda: host.batch([("ps", {})]), limit=BOUND)
        assert isinstance(error, TimedOut), error  # a ConnectionFailed, recognised by its type
        message = str(error)
        assert message.startswith(f"{remote.alias}: ") and "\n" not in message
        assert f"did not answer within {T:g} s" in message and "stuck" in message
        assert took < BOUND, took
        # A timed-out call is not sent again (it would hold the caller as long once more).
        assert not any("reconnected" in n for n in notices), notices
        # The agent answers again once it moves: the next call reconnects to it.
        (ps,) = host.batch([("ps", {})])
        assert "rows" in ps and host.transport.kind == "agent" and host.fallback is None


def test_cli_stop_stuck_in_its_helper_ends_within_the_timeout(rhome, remote: Remote):  # noqa: F811
    """The agent keeps serving; only the op's thread is stuck (in rhl-stop, frozen): the
    command ends at its --timeout plus stop's own allowance, close included, with one line."""
    from seamless_service.client.transport.agent import _OP_ALLOWANCE

    key = "hashserver-clu-rw-stuck"
    state = remote.launch(key, "--ignore-signals")  # rhl-stop runs ~10 s: time to freeze it
    limit = T + _OP_ALLOWANCE["stop"]
    helpers: set[int] = set()
    stop_watching = threading.Event()

    def freeze_rhl_stop() -> None:
        while not stop_watching.is_set():
            for pid in remote.processes(b"rhl-stop"):
                if pid not in helpers:
                    os.kill(pid, signal.SIGSTOP)
                    helpers.add(pid)
            time.sleep(0.01)

    watcher = threading.Thread(target=freeze_rhl_stop, daemon=True)
    watcher.start()
    try:
        start = time.monotonic()
        result = ours(rhome, remote, "stop", "--service", "hashserver", "--cluster", "clu", "--project", "stuck",
                      "--transport", "agent", "--timeout", f"{T:g}", timeout=limit + 10)
        took = time.monotonic() - start
        assert helpers, "rhl-stop never ran"
        assert result.returncode == 1, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"seamless-service: {remote.alias}: the connection to the agent broke during stop")
        assert f"did not answer within {limit:g} s" in lines[0] and "not sent again" in lines[0]
        assert took < limit + 10, took
    finally:
        stop_watching.set()
        watcher.join()
        for pid in helpers:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        remote.kill_service(key)
        wait_until(lambda: state["pid"] not in remote.server.user_processes(), timeout=15)
        for suffix in (".json", ".log"):
            (remote.state_dir / f"{key}{suffix}").unlink(missing_ok=True)


def test_cli_timeout_bounds_connecting_to_a_stuck_agent(rhome, remote: Remote):  # noqa: F811
    """A fresh command whose agent does not even answer the handshake: the handshake and
    the repair fit in --timeout too; `--transport agent` fails with one line."""
    connected_host(remote, Notices()).close()
    with frozen(agent_pid(remote)):
        start = time.monotonic()
        result = ours(rhome, remote, "inspect", *SHARED, "--transport", "agent", "--timeout", f"{T:g}",
                      timeout=BOUND + 30)
        took = time.monotonic() - start
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"seamless-service: {remote.alias}: "), result.stderr
    assert "did not answer in time" in lines[0]
    assert took < BOUND, took


# --------------------------------------------------------------------------- item 7


def test_api_falls_back_once_and_retries_the_agent_next_time(remote: Remote):
    connected_host(remote, Notices()).close()
    forget_choice(remote.alias)
    notices = Notices()
    with Host(remote.alias, ssh_config=remote.ssh_config, timeout=T, notice=notices) as host:
        with frozen(agent_pid(remote)):
            (ps,), took = timed(lambda: host.batch([("ps", {})]), limit=BOUND + 10)
        # transient: answered through ssh this time, nothing remembered
        assert remembered_choice(remote.alias) is None
        assert took < BOUND + 5, took
        assert "rows" in ps and host.transport.kind == "ssh"
        assert host.fallback is not None and "did not answer in time" in host.fallback
        assert host.describe()["fallback_reason"] == host.fallback
        said = [n for n in notices if FALLBACK in n]
        assert len(said) == 1 and said[0].startswith(f"seamless-service: {remote.alias}: {FALLBACK}"), notices
        assert "tried again on the next command" in said[0]
        host.batch([("ps", {})])
        assert len([n for n in notices if FALLBACK in n]) == 1  # once per host, not per call
    # the next Host talks to the agent again
    notices = Notices()
    with Host(remote.alias, ssh_config=remote.ssh_config, timeout=T, notice=notices) as host:
        assert host.hello()["transport"] == "agent" and host.fallback is None
    assert not any(FALLBACK in n for n in notices), notices


def test_cli_says_it_used_the_fallback_and_uses_the_agent_next_time(rhome, remote: Remote):  # noqa: F811
    connected_host(remote, Notices()).close()
    forget_choice(remote.alias)
    args = ["inspect", *SHARED, "--timeout", f"{T:g}"]
    with frozen(agent_pid(remote)):
        slow = ours(rhome, remote, *args, timeout=BOUND + 30)
    assert slow.returncode == 0, slow.stderr
    assert json.loads(slow.stdout)["status"] == "running"  # answered through ssh
    assert remembered_choice(remote.alias) is None  # a transient reason is not remembered
    lines = slow.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"seamless-service: {remote.alias}: {FALLBACK}"), slow.stderr
    fast = ours(rhome, remote, *args)
    assert fast.returncode == 0 and json.loads(fast.stdout) == json.loads(slow.stdout)
    assert fast.stderr == ""  # the agent answered: no fallback line
    transport = open_transport(remote.alias, ssh_config=remote.ssh_config, notice=Notices())
    try:
        transport.batch([("hello", {})])
        assert transport.kind == "agent"
    finally:
        transport.close()


def _add_key(remote: Remote, alias: str, options: str) -> None:
    """Another client key for the remote user, its authorized_keys line starting with
    `options`, and its alias in the ssh config."""
    identity = remote.server.client_dir / f"id_{alias}"
    pub = _keygen(identity, alias)
    with open(remote.server.server_dir / "authorized_keys", "a") as fh:
        fh.write(f"{options} {pub}\n")
    with open(remote.ssh_config, "a") as fh:
        fh.write("\n" + remote.server.config_block(alias=alias, identity=identity))


@pytest.fixture(scope="module")
def no_forwarding_alias(remote: Remote) -> Iterator[str]:
    alias = remote.alias + "-nofwd"
    _add_key(remote, alias, "no-port-forwarding")
    yield alias
    forget_choice(alias)


def test_forwarding_refused_is_remembered(remote: Remote, no_forwarding_alias: str):
    forget_choice(no_forwarding_alias)
    notices = Notices()
    transport = open_transport(no_forwarding_alias, ssh_config=remote.ssh_config, timeout=T, notice=notices)
    try:
        (ps,) = transport.batch([("ps", {})])
        assert ps["ok"] and transport.kind == "ssh"
        assert "port forwarding" in transport.fallback_reason
    finally:
        transport.close()
    said = [n for n in notices if FALLBACK in n]
    assert len(said) == 1 and "port forwarding" in said[0], notices
    remembered = remembered_choice(no_forwarding_alias)
    assert remembered is not None and remembered["guarded"] is False
    # the next command goes straight to ssh, and says so (once)
    notices = Notices()
    again = open_transport(no_forwarding_alias, ssh_config=remote.ssh_config, timeout=T, notice=notices)
    try:
        assert isinstance(again, AutoTransport) and again.kind == "ssh"
        again.batch([("ps", {})])
        again.batch([("hello", {})])
    finally:
        again.close()
    said = [n for n in notices if FALLBACK in n]
    assert len(said) == 1 and "port forwarding" in said[0] and "remembered until" in said[0], notices


# --------------------------------------------------------------------------- pure logic


class _Agent:
    """Stands for an agent transport: unavailable (transient) while `down` says so."""

    connected_once = False

    def __init__(self, down: list[bool]):
        self.down = down
        self.closed = False

    def batch(self, ops):
        from seamless_service.client.transport.agent import AgentUnavailable

        if self.down[0]:
            raise AgentUnavailable("h", "the agent did not answer in time: timed out")
        return [{"ok": True, "value": "agent"} for _ in ops]

    def close(self) -> None:
        self.closed = True


class _Ssh:
    def batch(self, ops):
        return [{"ok": True, "value": "ssh"} for _ in ops]

    def close(self) -> None:
        pass


def test_a_long_lived_auto_transport_tries_the_agent_again(monkeypatch):
    """An API Host or `ps --watch` keeps its transport: after a transient fallback it goes
    back to the agent once the agent answers (tried every AGENT_RETRY_AFTER seconds)."""
    from seamless_service.client.transport import auto as auto_module

    monkeypatch.setattr(auto_module, "remember_choice", lambda *a, **k: pytest.fail("remembered a transient reason"))
    down = [True]
    made: list[_Agent] = []

    def make_agent() -> _Agent:
        made.append(_Agent(down))
        return made[-1]

    notices = Notices()
    auto = AutoTransport("h", make_agent, lambda guarded: _Ssh(), notice=notices)
    assert auto.batch([("ps", {})])[0]["value"] == "ssh" and auto.kind == "ssh"
    assert made[0].closed and auto.fallback_reason.startswith("the agent did not answer in time")
    down[0] = False
    assert auto.batch([("ps", {})])[0]["value"] == "ssh"  # not yet: one try per interval
    monkeypatch.setattr(auto_module, "AGENT_RETRY_AFTER", 0.0)
    auto._retry_at = 0.0
    assert auto.batch([("ps", {})])[0]["value"] == "agent" and auto.kind == "agent"
    assert auto.fallback_reason is None and len(made) == 2
    assert len(notices) == 1  # said once
