#!/usr/bin/env python3
"""The small call (`hello`) on the agent's side: what one costs in-process and what it
costs an agent process over loopback rpyc, optionally against another checkout.

Rows, in-process (medians over repeats, microseconds per call): `dispatch.handle` of a
hello request (decode, validate, run, encode), `decode_request` alone, the client's
`decode_reply` of the hello reply. Over loopback: a real agent process (`agent serve`),
an authenticated AgentConnection sending the same encoded hello request; wall p50/p99 of
`conn.call`, and the agent's own CPU time per call (user + system, from /proc/PID/stat
over the whole run: the figure a busy machine disturbs least).

With `--baseline DIR` (another checkout, e.g. `git clone -q . /tmp/base`), the same rows
are measured for that tree too, each in its own interpreter or agent, alternating slices
so that the load of a shared machine falls on both alike.

    python benchmarks/bench_small_call.py [--baseline DIR] [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IN_PROCESS = r"""
import json, statistics, sys, tempfile, timeit
from pathlib import Path
from seamless_service.agent import dispatch
from seamless_service.agent.context import AgentContext
from seamless_service.agent.sent import SentValues
from seamless_service.protocol.codec import decode_reply, decode_request, encode_request
ctx = AgentContext(base=Path(tempfile.mkdtemp(prefix="ss-bench-small-")))
request = encode_request([("hello", {})])
sent = SentValues()
reply = dispatch.handle(ctx, request, sent=sent)
def us(fn, number=2000, repeat=7):
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
print(json.dumps({
    "handle": us(lambda: dispatch.handle(ctx, request, sent=sent)),
    "decode_request": us(lambda: decode_request(request), 10000),
    "decode_reply": us(lambda: decode_reply(reply, 1), 10000),
}))
"""


def env_for(tree: Path, base: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    if base is not None:
        env["REMOTE_HTTP_LAUNCHER_DIR"] = str(base)
    return env


def in_process(tree: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", IN_PROCESS], env=env_for(tree), cwd=tree,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


class Agent:
    """An agent process of `tree`, and one connection to it."""

    def __init__(self, tree: Path, home: Path):
        from seamless_service.agent import lifecycle
        from seamless_service.client.transport.agent_conn import AgentConnection

        self.base = home / "rhl"
        self.base.mkdir(parents=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seamless_service", "agent", "serve", "--idle-timeout", "600",
             "--log-level", "WARNING"], env=env_for(tree, self.base), cwd=tree,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while (info := lifecycle.find_running(self.base)) is None or info["pid"] != self.proc.pid:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the agent of {tree} did not start")
            time.sleep(0.05)
        self.conn = AgentConnection.connect("127.0.0.1", info["port"], lifecycle.read_secret(self.base))
        self.samples: list[float] = []
        self.user = self.system = 0.0
        self.calls = 0

    def run(self, request: bytes, calls: int) -> None:
        call = self.conn.call
        user0, system0 = cpu_seconds(self.proc.pid)
        for _ in range(calls):
            t0 = time.perf_counter()
            call(request)
            self.samples.append((time.perf_counter() - t0) * 1e6)
        user, system = cpu_seconds(self.proc.pid)
        self.user += user - user0
        self.system += system - system0
        self.calls += calls

    def close(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(10)


def pct(samples: list[float], q: float) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(round(q * (len(samples) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alongside this one")
    parser.add_argument("--calls", type=int, default=2000, help="calls per slice over loopback")
    parser.add_argument("--rounds", type=int, default=10, help="slices per agent (and in-process runs)")
    args = parser.parse_args()
    trees = {"this": ROOT}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), "this": ROOT}

    rows: dict[str, dict[str, list[float]]] = {label: {} for label in trees}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            for key, value in in_process(tree).items():
                rows[label].setdefault(key, []).append(value)

    from seamless_service.protocol.codec import encode_request

    request = encode_request([("hello", {})])
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-small-"))
    agents = {label: Agent(tree, tmp / label) for label, tree in trees.items()}
    try:
        for agent in agents.values():
            agent.run(request, 200)  # warm-up
            agent.samples.clear()
            agent.user = agent.system = 0.0
            agent.calls = 0
        for _ in range(args.rounds):
            for agent in agents.values():
                agent.run(request, args.calls)
    finally:
        for agent in agents.values():
            agent.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print("in-process, us per call (min of 7 repeats per run, median over runs):")
    for key in rows["this"]:
        print("  " + f"{key:16}" + "  ".join(
            f"{label} {statistics.median(rows[label][key]):6.2f}" for label in trees))
    print(f"loopback rpyc, {args.rounds} x {args.calls} hello calls per agent:")
    for label, agent in agents.items():
        print(f"  {label:8} wall p50 {pct(agent.samples, 0.5):6.1f} us  p99 {pct(agent.samples, 0.99):6.1f} us  "
              f"agent CPU {(agent.user + agent.system) / agent.calls * 1e6:6.1f} us per call "
              f"(user {agent.user / agent.calls * 1e6:.1f}, system {agent.system / agent.calls * 1e6:.1f})")


if __name__ == "__main__":
    main()
