"""A command never waits behind another one in the tunnel keeper: while one holds it (a
`ps --watch`, a slow command), the thin client is answered "busy" at once and runs the
command in its own process; API callers without `busy_wait` still queue for their turn.
Real keeper processes, real thin clients, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from seamless_service import __version__
from seamless_service.client.keeper import client, framing
from tests.support.keeper import KeeperPlace, raw_connect, thin_client, wait_for

ENTRY = [sys.executable, "-m", "seamless_service.client.entry"]
PROMPT = 10.0   # "at once", with room for a cold start of the CLI on a loaded 2-core machine


@pytest.fixture
def place(monkeypatch):
    """A private keeper folder; runs go to the test main HOOKS (tests/support/keeper.py)."""
    p = KeeperPlace(monkeypatch, hooks=True)
    yield p
    p.cleanup()


def status() -> dict:
    info = client.keeper_status()
    assert info is not None, "no keeper answers"
    return info


def test_a_thin_client_is_not_queued_behind_a_running_command(place):
    client.ensure_keeper()
    gate = place.work / "gate"
    holder = thin_client("wait-file", str(gate))       # the test main: holds the keeper until gate
    queued: dict = {}
    try:
        assert holder.stdout.readline() == "first\n"
        before = status()
        assert before["current"] == ["wait-file", str(gate)]

        start = time.monotonic()
        second = subprocess.run([*ENTRY, "--version"], capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - start
        # The real CLI answered, in the thin client's process (the keeper's test main does
        # not know --version), without a notice, and without waiting for the gate.
        assert (second.returncode, second.stdout, second.stderr) == (0, f"seamless-service {__version__}\n", "")
        assert elapsed < PROMPT
        after = status()
        assert after["busy_replies"] == before["busy_replies"] + 1
        assert after["current"] == ["wait-file", str(gate)] and holder.poll() is None

        # The API: with busy_wait, KeeperBusy (nothing ran) after about that long ...
        start = time.monotonic()
        with pytest.raises(client.KeeperBusy):
            client.run(["exit", "0"], busy_wait=0.2)
        assert 0.15 < time.monotonic() - start < 3
        # ... and without it a run still queues for its turn.
        thread = threading.Thread(target=lambda: queued.setdefault("code", client.run(
            ["exit", "5"], stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()
        gate.touch()
        out, err = holder.communicate(timeout=20)
        assert (holder.returncode, out, err) == (0, "second\n", "")
        thread.join(20)
        assert queued == {"code": 5}
    finally:
        gate.touch()
        holder.kill()
        holder.wait()

    # Once it is free, the keeper serves the thin client again (its test main answers).
    before = status()
    again = thin_client("exit", "3")
    out, err = again.communicate(timeout=30)
    assert (again.returncode, out, err) == (3, "to stdout\n", "to stderr\n")
    after = status()
    assert after["requests"] == before["requests"] + 2      # the run, then our status
    assert after["busy_replies"] == before["busy_replies"]


def test_a_bad_wait_is_refused(place):
    client.ensure_keeper()
    for bad in ("soon", -1, float("nan"), True):
        with raw_connect(place.sock) as s:
            framing.send(s, {"cmd": "run", "argv": ["exit", "0"], "cwd": "/", "env": {}, "wait": bad})
            assert framing.recv(s) == {"ok": False, "error": "run: 'wait' must be a number of seconds"}
    with raw_connect(place.sock) as s:      # wait 0 on a free keeper: runs
        framing.send(s, {"cmd": "run", "argv": ["exit", "0"], "cwd": "/", "env": {}, "wait": 0})
        assert framing.recv(s)["exit"] == 0


def test_a_bad_umask_is_refused_and_the_keeper_keeps_serving(place):
    client.ensure_keeper()
    for bad in ("022", -1, 1 << 40, 0o1000, True):
        with raw_connect(place.sock) as s:
            framing.send(s, {"cmd": "run", "argv": ["exit", "0"], "cwd": "/", "env": {}, "umask": bad})
            assert framing.recv(s) == {"ok": False,
                                       "error": "run: 'umask' must be a file mode mask between 0 and 0o777"}
    with raw_connect(place.sock) as s:
        framing.send(s, {"cmd": "run", "argv": ["exit", "0"], "cwd": "/", "env": {}, "umask": 0o022})
        assert framing.recv(s)["exit"] == 0


def test_ps_answers_at_once_while_a_watch_holds_the_tunnel_keeper(tmp_path, monkeypatch):
    """The review case: `ps --watch` in one terminal, `ps --json` in another."""
    from tests.support.world import World
    from tests.support.cli import Output, interrupt

    keeper = KeeperPlace(monkeypatch, hooks=False)
    world = World.build(tmp_path / "w", dead_cluster=False)
    env = {k: v for k, v in world.env().items() if k != "SEAMLESS_SERVICE_NO_DAEMON"}
    env.update({k: os.environ[k] for k in ("SEAMLESS_SERVICE_DAEMON_DIR", "SEAMLESS_SERVICE_DAEMON_IDLE")})
    ps = [*ENTRY, "ps", "--cluster", "loc", "--server"]

    def ps_json() -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        result = subprocess.run([*ps, "--json"], cwd=world.proj, env=env, capture_output=True, text=True,
                                timeout=60)
        return result, time.monotonic() - start

    try:
        world.box.launch("hashserver-loc-rw-busy")
        watch = subprocess.Popen([*ps, "--wide", "--watch", "5"], cwd=world.proj, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = Output(watch.stdout.fileno())
        try:
            out.wait_for(lambda t: "hashserver-loc-rw-busy" in t, timeout=60)
            pid = keeper.pid()
            before = status()
            assert before["current"] == ["ps", "--cluster", "loc", "--server", "--wide", "--watch", "5"]

            result, elapsed = ps_json()
            assert result.returncode == 0, result.stderr
            assert result.stderr == ""
            assert elapsed < PROMPT
            rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
            assert "hashserver-loc-rw-busy" in [row.get("key") for row in rows]
            during = status()
            assert during["busy_replies"] == before["busy_replies"] + 1   # ran in its own process
            assert during["current"] == before["current"] and watch.poll() is None
        finally:
            code, err = interrupt(watch)
        assert code == 0 and "Traceback" not in err, err

        # The watch is over (the keeper notices the thin client left within moments): a
        # plain command is served by the same keeper again.
        assert wait_for(lambda: status()["current"] is None, timeout=10)
        before = status()
        result, _ = ps_json()
        assert result.returncode == 0, result.stderr
        assert "hashserver-loc-rw-busy" in result.stdout
        after = status()
        assert after["requests"] == before["requests"] + 2          # the run, then our status
        assert after["busy_replies"] == before["busy_replies"]
        assert after["current"] is None and keeper.pid() == pid
    finally:
        world.box.kill_all()
        keeper.cleanup()
