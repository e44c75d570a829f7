"""Faults on the agent side: a SIGKILL in the middle of a batch, a full disk under the
agent's state folder. The client gets one clear line; no state file is left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seamless_service.agent import lifecycle
from seamless_service.client.transport.agent_conn import AgentConnection, AgentConnectionError
from tests.support.agent import end_agent, spawn_agent
from tests.support.services import wait_for


def test_sigkill_in_the_middle_of_a_batch(tmp_path):
    base = tmp_path / "rhl"
    (base / "server").mkdir(parents=True)
    proc, info = spawn_agent(base)
    try:
        secret = lifecycle.read_secret(base)
        conn = AgentConnection.connect("127.0.0.1", info["port"], secret)
        token = conn.batch([("wait", {"timeout": 0})])[0]["value"]["token"]
        outcome: dict = {}

        def long_batch():
            try:
                outcome["value"] = conn.batch([("ps", {}), ("wait", {"token": token, "timeout": 20})])
            except Exception as exc:  # noqa: BLE001 - the test inspects what the client saw
                outcome["error"] = exc

        worker = threading.Thread(target=long_batch)
        worker.start()
        time.sleep(0.5)  # the batch is now inside the agent, blocked in `wait`
        os.kill(proc.pid, signal.SIGKILL)
        worker.join(30)
        assert not worker.is_alive(), "the client hung on a dead agent"
        error = outcome.get("error")
        assert isinstance(error, AgentConnectionError), outcome
        message = str(error)
        assert "\n" not in message and "127.0.0.1" in message and secret not in message
        conn.close()
        # The killed agent's state file is whole (written atomically) and recognised as stale.
        state = json.loads((base / "agent" / "agent.json").read_text())
        assert state["pid"] == proc.pid
        # The connection drops while the kernel is still tearing the process down (files are
        # closed before it becomes a zombie): under load the pid may look alive a moment longer.
        wait_for(lambda: lifecycle.find_running(base) is None, timeout=5)
        assert not list((base / "agent").glob("*.tmp")) and not list((base / "agent").glob(".*tmp*"))
        # A new agent replaces it and answers.
        proc.wait(5)
        proc2, info2 = spawn_agent(base)
        try:
            with AgentConnection.connect("127.0.0.1", info2["port"], lifecycle.read_secret(base)) as conn2:
                assert conn2.batch([("ps", {})])[0]["ok"]
        finally:
            end_agent(proc2)
    finally:
        end_agent(proc)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: a real 'no space left on device'."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    with open(disk / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def test_agent_start_on_a_full_disk_says_so_and_leaves_nothing_half_written(tiny_disk):
    base = tiny_disk / "rhl"
    (base / "server").mkdir(parents=True)
    fill(tiny_disk)
    env = dict(os.environ, REMOTE_HTTP_LAUNCHER_DIR=str(base))
    result = subprocess.run([sys.executable, "-m", "seamless_service", "agent", "start", "--timeout", "5"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no space left" in lines[0]
    agent = base / "agent"
    if agent.exists():
        for path in agent.iterdir():
            if path.name == "agent.json":
                json.loads(path.read_text())  # never half-written
            assert not path.name.endswith(".tmp")
    assert lifecycle.find_running(base) is None


def test_running_agent_keeps_answering_when_the_disk_fills(tiny_disk, tmp_path):
    base = tiny_disk / "rhl"
    (base / "server").mkdir(parents=True)
    (base / "server" / "hashserver-c-rw-p.json").write_text('{"status": "failed", "port": 3}')
    proc, info = spawn_agent(base)
    try:
        fill(tiny_disk)
        with AgentConnection.connect("127.0.0.1", info["port"], lifecycle.read_secret(base)) as conn:
            results = conn.batch([("ps", {}), ("hello", {})])
            assert [r["key"] for r in results[0]["value"]["rows"]] == ["hashserver-c-rw-p"]
            assert results[1]["ok"]
    finally:
        end_agent(proc)
    # SIGTERM cleanup removes files even on a full disk.
    wait_for(lambda: not (base / "agent" / "agent.json").exists())
