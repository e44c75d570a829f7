"""Real agent processes for tests: `python -m seamless_service agent serve` as a child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from seamless_service.agent import dispatch, lifecycle
from seamless_service.agent.context import AgentContext
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


def call(ctx: AgentContext, op: str, **args):
    """One op through the agent's real dispatch (msgpack in, msgpack out): its value, or
    the ProtocolError it answered with."""
    reply = dispatch.handle(ctx, encode_request([(op, args)]))
    [result] = decode_reply(reply, expected=1)
    if not result["ok"]:
        raise ProtocolError(result["error"]["code"], result["error"]["message"])
    return result["value"]
