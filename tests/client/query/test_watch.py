"""`ps --watch`: a live table that follows real launches, in a pipe and in a pty, over
several hosts at once; Ctrl-C (or the keeper's cancellation) ends it with exit 0."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seamless_service.agent.context import AgentContext
from seamless_service.client.query import ps as ps_query
from seamless_service.client.errors import ConnectionFailed
from seamless_service.client.transport.local import LocalTransport
from seamless_service.client.query.render import columns_for, table
from seamless_service.client.query.watch import CLEAR, Watch
from tests.support.cli import TIMEOUT, Output, interrupt
from tests.support.services import LauncherSandbox, wait_for


def start_watch(sandbox: LauncherSandbox, *args: str, tty: bool) -> tuple[subprocess.Popen, Output]:
    argv = [sys.executable, "-m", "seamless_service.client.entry", "ps", "--local", "--wide", *args]
    env = dict(sandbox.env(), SEAMLESS_SERVICE_NO_DAEMON="1", COLUMNS="250")
    if tty:
        master, slave = pty.openpty()
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env)
        os.close(slave)
        return proc, Output(master)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    return proc, Output(proc.stdout.fileno())


def test_watch_in_a_pipe_prints_a_new_frame_when_a_service_starts(sandbox):
    first = sandbox.launch("hashserver-c1-rw-first")
    assert first["status"] == "running"
    # 60 s between redraws if nothing changed: a row seen well before that (wait_for gives
    # up after 30 s) was drawn because the agent's `wait` reported the change, not by a timer
    proc, out = start_watch(sandbox, "--watch", "60", tty=False)
    try:
        text = out.wait_for(lambda t: "hashserver-c1-rw-first" in t)
        assert CLEAR not in text                       # no ANSI codes into a pipe
        # while nothing changes, nothing more is printed (one frame per change)
        sandbox.launch("database-c1-rw-second")
        text = out.wait_for(lambda t: "database-c1-rw-second" in t, timeout=20)
    finally:
        code, err = interrupt(proc)
    assert code == 0 and "Traceback" not in err, err
    frames = text.split("\n\n")
    assert len(frames) >= 2
    for frame in frames:
        lines = frame.strip("\n").splitlines()
        time.strptime(lines[0], "%Y-%m-%d %H:%M:%S")   # a timestamp line first
        assert lines[1].split()[0] == "CLUSTER"         # then the table
    assert "database-c1-rw-second" not in frames[0] and "database-c1-rw-second" in frames[-1]


def test_an_unchanged_state_is_not_printed_again(sandbox):
    sandbox.launch("hashserver-c1-rw-only")
    proc, out = start_watch(sandbox, "--watch", "0.2", tty=False)
    try:
        out.wait_for(lambda t: "hashserver-c1-rw-only" in t)
        # 10+ rounds of `wait` pass; the rows stay the same, so the output does too
        time.sleep(2.5)
        text = out.text
    finally:
        code, err = interrupt(proc)
    assert code == 0, err
    assert text.count("hashserver-c1-rw-only") == 1


def test_watch_in_a_terminal_redraws_in_place_and_ctrl_c_exits_0(sandbox):
    proc, out = start_watch(sandbox, "--watch", "5", tty=True)
    try:
        text = out.wait_for(lambda t: "CLUSTER" in t)
        assert text.startswith(CLEAR) and "Every 5s: seamless-service ps --local --wide --watch 5" in text
        sandbox.launch("hashserver-c1-rw-late")
        text = out.wait_for(lambda t: "hashserver-c1-rw-late" in t)
    finally:
        code, err = interrupt(proc)
    assert code == 0 and "Traceback" not in err, err
    last = text.rsplit(CLEAR, 1)[1]
    assert "hashserver-c1-rw-late" in last and text.count(CLEAR) >= 2


def _request() -> ps_query.PsRequest:
    return ps_query.PsRequest("all")


class Hosts:
    """Two 'hosts' with launcher state of their own (each an in-process agent on its own
    base directory) and one that cannot be reached."""

    def __init__(self, root: Path):
        self.boxes = {"alpha": LauncherSandbox(root / "alpha"), "beta": LauncherSandbox(root / "beta")}
        self.transports = {h: LocalTransport(AgentContext(base=b.base)) for h, b in self.boxes.items()}

    def open(self, host):
        if host not in self.transports:
            raise ConnectionFailed(host, "ssh: connect to host gone port 22: Connection refused")
        return self.transports[host]

    def close(self):
        for box in self.boxes.values():
            box.kill_all()
        for transport in self.transports.values():
            transport.close()


@pytest.fixture
def hosts(tmp_path):
    h = Hosts(tmp_path)
    yield h
    h.close()


def _watch(hosts: Hosts, interval: float, **kwargs) -> tuple[Watch, io.StringIO, io.StringIO]:
    request = _request()
    queries = [ps_query.HostQuery(h, f"cluster {h}", [ps_query.Part("process", {"side": "server"})])
               for h in ("alpha", "beta", "gone")]

    def frame(outcomes):
        rows = ps_query.assemble(outcomes, request)
        return table(rows, columns_for(wide=True)), ps_query.errors_of(outcomes)

    out, err = io.StringIO(), io.StringIO()
    return Watch(queries, hosts.open, frame, interval=interval, title="t", out=out, err=err, **kwargs), out, err


def test_several_hosts_are_watched_at_once_and_a_change_anywhere_redraws(hosts):
    hosts.boxes["alpha"].launch("hashserver-alpha-rw-p")
    # 60 s between rounds: only the agent's `wait` can bring the change in time
    watch, out, err = _watch(hosts, interval=60.0)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(watch.run()))
    thread.start()
    try:
        wait_for(lambda: "hashserver-alpha-rw-p" in out.getvalue(), timeout=TIMEOUT)
        assert err.getvalue() == "seamless-service: cluster gone: gone: ssh: connect to host gone port 22: " \
                                 "Connection refused\n"
        hosts.boxes["beta"].launch("database-beta-rw-p")
        wait_for(lambda: "database-beta-rw-p" in out.getvalue(), timeout=TIMEOUT)
    finally:
        watch.stop()
        thread.join(TIMEOUT)
    assert result == [0]
    last = out.getvalue().split("\n\n")[-1]
    assert "hashserver-alpha-rw-p" in last and "database-beta-rw-p" in last
    assert err.getvalue().count("\n") == 1   # the dead host is said once, not every round


def test_the_keeper_cancellation_ends_the_watch(hosts, monkeypatch):
    """In the tunnel keeper Ctrl-C cannot reach the command: the thin client going away sets
    the keeper's cancel flag, which the watch polls (through the pool, by default)."""
    flag = threading.Event()   # the keeper's (keeper/server.py hands it to the pool)
    watch, out, _ = _watch(hosts, interval=60.0, cancelled=flag.is_set)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(watch.run()))
    thread.start()
    try:
        wait_for(lambda: "CLUSTER" in out.getvalue(), timeout=TIMEOUT)
        flag.set()
        thread.join(TIMEOUT)
        assert result == [0]
    finally:
        if thread.is_alive():
            watch.stop()
            thread.join(TIMEOUT)


def test_watch_through_the_tunnel_keeper_ends_when_the_thin_client_goes(tmp_path, monkeypatch):
    """`ps --cluster C --watch` runs in the tunnel keeper; Ctrl-C in the thin client makes the
    keeper cancel it (pool.cancelled()): the next command runs in the same keeper at once."""
    from seamless_service.client.keeper import client
    from tests.support.keeper import KeeperPlace
    from tests.support.world import World

    place = KeeperPlace(monkeypatch, hooks=False)
    world = World.build(tmp_path / "w", dead_cluster=False)
    env = {k: v for k, v in world.env().items() if k != "SEAMLESS_SERVICE_NO_DAEMON"}
    env.update({k: os.environ[k] for k in ("SEAMLESS_SERVICE_DAEMON_DIR", "SEAMLESS_SERVICE_DAEMON_IDLE")})
    argv = [sys.executable, "-m", "seamless_service.client.entry", "ps"]
    try:
        proc = subprocess.Popen([*argv, "--cluster", "loc", "--server", "--wide", "--watch", "5"], cwd=world.proj,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = Output(proc.stdout.fileno())
        try:
            out.wait_for(lambda t: "CLUSTER" in t, timeout=60)
            pid = place.pid()
            world.box.launch("hashserver-loc-rw-viadaemon")
            out.wait_for(lambda t: "hashserver-loc-rw-viadaemon" in t)
        finally:
            code, err = interrupt(proc)
        assert "Traceback" not in err, err
        assert code == 0  # Ctrl-C ends a watch: success, also through the tunnel keeper
        # the keeper runs one command at a time: had the watch outlived Ctrl-C, this one would
        # be turned away ("busy") and run in its own process; see test_keeper_busy.py
        after = subprocess.run([*argv, "--cluster", "loc", "--server", "--json"], cwd=world.proj, env=env,
                               capture_output=True, text=True, timeout=60)
        assert after.returncode == 0, after.stderr
        assert "hashserver-loc-rw-viadaemon" in after.stdout
        assert place.pid() == pid
        assert client.ping() is not None
    finally:
        world.box.kill_all()
        place.cleanup()
