#!/usr/bin/env python3
"""Load and memory figures for one agent behind a real SSH tunnel (issue: reliability).

* 32 concurrent clients, each with its own SSH connection (a real OpenSSH sshd on
  127.0.0.1, throwaway user) and its own authenticated agent connection, each doing 500
  polls (a batch `ps` + `hello`): errors (must be 0), p50/p99 latency, throughput.
* The agent's memory (RSS) before and after 100,000 calls on one connection.

Needs root (the sshd fixture creates a throwaway user) and openssh-server.

    python benchmarks/bench_reliability.py [--clients 32] [--polls 500] [--calls 100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seamless_service.client.transport.tunnel import Tunnel  # noqa: E402
from seamless_service.deploy import bootstrap  # noqa: E402
from tests.support.sshd import SshServer  # noqa: E402


def rss_kb(server: SshServer, pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def write_state(server: SshServer, n: int) -> None:
    """n realistic server state files in the remote user's launcher state."""
    import json
    import os

    directory = server.home / ".remote-http-launcher" / "server"
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = directory / f"hashserver-load-rw-proj{i}.json"
        path.write_text(json.dumps({"status": ("running", "stale", "failed")[i % 3], "pid": 1 + i,
                                    "port": 50000 + i, "workdir": f"/data/proj{i}"}))
        os.chown(path, server.uid, server.uid)
    for d in (directory, directory.parent):
        os.chown(d, server.uid, server.uid)


def load(server: SshServer, endpoint, clients: int, polls: int) -> dict:
    tunnels = [Tunnel(server.alias, ssh_config=server.ssh_config).open() for _ in range(clients)]
    conns = [t.connect_agent(endpoint.remote_port, endpoint.secret) for t in tunnels]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        conn = conns[i]
        barrier.wait()
        for _ in range(polls):
            t0 = time.perf_counter()
            try:
                results = conn.batch([("ps", {}), ("hello", {})])
                if not all(r["ok"] for r in results):
                    errors.append(str(results))
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies[i].append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for conn in conns:
        conn.close()
    for tunnel in tunnels:
        tunnel.close()
    flat = sorted(x for per in latencies for x in per)
    return {"calls": len(flat), "errors": errors, "p50": statistics.median(flat),
            "p99": flat[int(0.99 * (len(flat) - 1))], "wall": wall}


def memory(server: SshServer, endpoint, calls: int) -> dict:
    with Tunnel(server.alias, ssh_config=server.ssh_config).open() as tunnel:
        conn = tunnel.connect_agent(endpoint.remote_port, endpoint.secret)
        for _ in range(2000):  # warm up caches and allocator pools
            conn.batch([("ps", {})])
        before = rss_kb(server, endpoint.pid)
        t0 = time.perf_counter()
        for _ in range(calls):
            conn.batch([("ps", {})])
        seconds = time.perf_counter() - t0
        after = rss_kb(server, endpoint.pid)
        conn.close()
    return {"before": before, "after": after, "calls": calls, "seconds": seconds}


MAX_RSS_GROWTH_MB = 5.0  # "no growth beyond a few MB" over the calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--states", type=int, default=20, help="state files the agent lists per poll")
    args = parser.parse_args()
    with SshServer.start(alias="bench-reliability", parent=Path(tempfile.gettempdir())) as server:
        write_state(server, args.states)
        t0 = time.perf_counter()
        endpoint = bootstrap.deploy(server.alias, ssh_config=server.ssh_config)
        print(f"deploy from nothing: {time.perf_counter() - t0:.1f} s")
        r = load(server, endpoint, args.clients, args.polls)
        print(f"load: {args.clients} clients x {args.polls} polls (ps of {args.states} services + hello, "
              f"each over its own SSH tunnel): {r['calls']} calls, {len(r['errors'])} errors, "
              f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, {r['calls'] / r['wall']:.0f} calls/s")
        for e in r["errors"][:5]:
            print("  error:", e)
        m = memory(server, endpoint, args.calls)
        print(f"agent RSS: {m['before'] / 1024:.1f} MB before, {m['after'] / 1024:.1f} MB after "
              f"{m['calls']:,} calls ({(m['after'] - m['before']) / 1024:+.1f} MB; "
              f"{m['calls'] / m['seconds']:.0f} calls/s on one connection)")
        bootstrap.stop(server.alias, ssh_config=server.ssh_config)
    # A figure is not a test, but a script run by hand or in a pipeline should still say
    # when a goal was missed: exit 1 on any error or on memory growth beyond a few MB.
    missed = []
    if r["errors"]:
        missed.append(f"{len(r['errors'])} errors under load (goal: 0)")
    growth = (m["after"] - m["before"]) / 1024
    if growth > MAX_RSS_GROWTH_MB:
        missed.append(f"agent RSS grew {growth:.1f} MB (goal: <= {MAX_RSS_GROWTH_MB:g})")
    for line in missed:
        print(f"MISSED: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
