"""Real agent processes for tests: `python -m seamless_service agent serve` as a child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from seamless_service.agent import dispatch, lifecycle
from seamless_service.agent.context import AgentContext
from seamless_service.client.transport.agent_conn import AgentConnection
from seamless_service.protocol import ProtocolError, decode_reply, encode_request

START_TIMEOUT = 15.0


def spawn_agent(base: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    """A foreground agent as a child process; returns it and its agent.json (plus paths)."""
    base.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, REMOTE_HTTP_LAUNCHER_DIR=str(base))
    err = open(base / "serve.stderr", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamless_service", "agent", "serve", "--idle-timeout", "60", *args],
        env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    err.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        info = lifecycle.find_running(base)
        if info is not None and info["pid"] == proc.pid:
            return proc, info
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"agent did not start: {(base / 'serve.stderr').read_text()}")


def end_agent(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def start_test_agent(tmp_path: Path, *args: str) -> dict:
    """A foreground agent on a fresh base: its agent.json plus base, secret, log, proc."""
    base = tmp_path / "rhl"
    (base / "server").mkdir(parents=True)
    proc, info = spawn_agent(base, *args)
    info["base"] = base
    info["secret"] = lifecycle.read_secret(base)
    info["log"] = base / "serve.stderr"
    info["proc"] = proc
    return info


def owner_is_served(agent: dict, timeout: float = 10) -> float:
    """hello + ps with the secret; the seconds it took."""
    start = time.monotonic()
    with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"], timeout=timeout) as conn:
        hello, ps = conn.batch([("hello", {}), ("ps", {})])
    elapsed = time.monotonic() - start
    assert hello["ok"] and hello["value"]["protocol"] >= 1, hello
    assert ps["ok"], ps
    return elapsed


def log_lines(agent: dict) -> list[str]:
    return agent["log"].read_text(errors="replace").splitlines()


def settled_log(agent: dict, quiet: float = 0.5, limit: float = 10.0) -> list[str]:
    """The log once it has stopped growing for `quiet` seconds."""
    deadline = time.monotonic() + limit
    lines = log_lines(agent)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = log_lines(agent)
        if again == lines:
            break
        lines = again
    return lines


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/<pid>/status: "Threads", "VmRSS" or "VmHWM" (kB), ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise KeyError(field)


def call(ctx: AgentContext, op: str, **args):
    """One op through the agent's real dispatch (msgpack in, msgpack out): its value, or
    the ProtocolError it answered with."""
    reply = dispatch.handle(ctx, encode_request([(op, args)]))
    [result] = decode_reply(reply, expected=1)
    if not result["ok"]:
        raise ProtocolError(result["error"]["code"], result["error"]["message"])
    return result["value"]
