#!/usr/bin/env python3
"""Agent vs rhl-* helper subprocesses, on the same state, in one run (issue: agent and protocol).

Prints, for 10, 200 and 1,000 state files: the median latency of `ps`, and of one batch
`ps`+`persistent` (and the agent's file-watch mode: inotify, or the stat fallback), through a real agent over rpyc on loopback, next to running
`rhl-ps --json` plus `rhl-ps-persistent --json` as subprocesses (what a poll costs on the
server without the agent); then the cached `persistent` size answer on a 100,000-file
buffer directory next to `du -sb` on it, and, at level 0 and level 1 with a poll every
50 ms, static next to while a thread adds a buffer file every 50 ms (so nearly every poll
sees a changed directory).

Targets: batch poll of 200 services < 5 ms median, >= 20x faster than the two helpers;
cached size answer < 5 ms whatever the directory size.

    python benchmarks/bench_agent.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    VENV_BIN, make_bufferdir, median_ms, run_helper_cmd, sandbox_env, spawn_sleepers, write_state_files,
)

from seamless_service.agent import lifecycle  # noqa: E402
from seamless_service.client.transport.agent_conn import AgentConnection  # noqa: E402


def start_agent(home: Path):
    os.environ["HOME"] = str(home)
    os.environ.pop("REMOTE_HTTP_LAUNCHER_DIR", None)
    base = home / ".remote-http-launcher"
    info = lifecycle.start_detached(base, idle_timeout=600)
    secret = lifecycle.read_secret(base)
    return base, info, AgentConnection.connect("127.0.0.1", info["port"], secret)


def bench_states(n: int, runs: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-"))
    home = tmp / "home"
    bufferdir = tmp / "data" / "buffers"
    make_bufferdir(bufferdir, projects=max(1, n // 3))
    sleepers = spawn_sleepers(min(n, 250))
    write_state_files(home / ".remote-http-launcher" / "server", n, bufferdir, [p.pid for p in sleepers])
    base, info, conn = start_agent(home)
    try:
        persistent = {"paths": [str(bufferdir)], "level": 2, "marker": ".HASHSERVER_PREFIX"}
        conn.batch([("ps", {}), ("persistent", persistent)])  # first answer starts the sizer
        # Steady state: real data directories are older than the 2 s within which the
        # agent distrusts cached listings and sizes (same-tick changes), and sized.
        time.sleep(2.5)
        conn.batch([("ps", {}), ("persistent", persistent)])
        time.sleep(0.5)
        ps_ms, _ = median_ms(lambda: conn.batch([("ps", {})]), runs)
        batch_ms, batch_p99 = median_ms(lambda: conn.batch([("ps", {}), ("persistent", persistent)]), runs)
        env = sandbox_env(home)
        rhl_ps = [str(VENV_BIN / "rhl-ps"), "--json"]
        rhl_pp = [str(VENV_BIN / "rhl-ps-persistent"), "--json", "--level", "2",
                  "--marker", ".HASHSERVER_PREFIX", str(bufferdir)]
        helpers_ms, _ = median_ms(lambda: (run_helper_cmd(rhl_ps, env), run_helper_cmd(rhl_pp, env)),
                                  max(5, runs // 10), warmup=1)
        reply = conn.batch([("ps", {})])[0]["value"]
        assert len(reply["rows"]) == n, (len(reply["rows"]), n)
        return {"n": n, "ps": ps_ms, "batch": batch_ms, "batch_p99": batch_p99, "helpers": helpers_ms,
                "watch": reply.get("watch", "stat")}
    finally:
        conn.close()
        lifecycle.stop(base)
        for proc in sleepers:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_big_dir(files: int, runs: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-big-"))
    home = tmp / "home"
    (home / ".remote-http-launcher" / "server").mkdir(parents=True)
    buf = tmp / "data" / "buffers" / "bigproj"
    buf.mkdir(parents=True)
    (buf / ".HASHSERVER_PREFIX").touch()
    # A flat hashserver buffer dir: one file per buffer, named by checksum.
    for i in range(files):
        with open(buf / f"{i:064x}", "wb") as handle:
            handle.write(b"y" * (i % 4096))
    base, info, conn = start_agent(home)
    try:
        args = {"paths": [str(buf)], "level": 0}
        t0 = time.perf_counter()
        first = conn.batch([("persistent", args)])[0]["value"]["rows"][0]
        first_ms = (time.perf_counter() - t0) * 1000
        deadline = time.time() + 300
        while True:
            row = conn.batch([("persistent", args)])[0]["value"]["rows"][0]
            if row.get("bytes_state") == "fresh" or time.time() > deadline:
                break
            time.sleep(0.2)
        cached_ms, cached_p99 = median_ms(lambda: conn.batch([("persistent", args)]), runs)
        du_ms, _ = median_ms(lambda: run_helper_cmd(["du", "-sb", str(buf)], dict(os.environ)), 3, warmup=1)
        levels = {level: {"paths": [str(buf)], "level": level} for level in (0, 1)}
        conn.batch([("persistent", levels[1])])  # the first level-1 listing (synchronous, once)
        time.sleep(2.5)                           # settled, as for level 0 above
        # paced polls cost more than back-to-back ones (idle CPU, cold caches): compare
        # the growing directory with the static one polled at the same pace
        static = {level: paced(conn, buf, levels[level], runs, grow=False) for level in (0, 1)}
        growing = {level: paced(conn, buf, levels[level], runs, grow=True) for level in (0, 1)}
        return {"files": files, "first_ms": first_ms, "first_state": first.get("bytes_state"),
                "cached": cached_ms, "cached_p99": cached_p99, "du": du_ms, "bytes": row.get("bytes"),
                "static": static, "growing": growing}
    finally:
        conn.close()
        lifecycle.stop(base)
        shutil.rmtree(tmp, ignore_errors=True)


def paced(conn, buf: Path, args: dict, runs: int, grow: bool, every: float = 0.05) -> tuple[float, float, int]:
    """(median, p99, files added) of the `persistent` answer, one poll per `every` s; with
    `grow`, while a thread adds one buffer file every `every` s (each poll sees a change)."""
    stop = threading.Event()
    added = [0]

    def add() -> None:
        while grow and not stop.wait(every):
            with open(buf / f"{time.time_ns():064x}", "wb") as handle:
                handle.write(b"z" * 1000)
            added[0] += 1

    adder = threading.Thread(target=add, daemon=True)
    adder.start()
    try:
        samples = []
        for i in range(runs + 2):
            time.sleep(every)
            t0 = time.perf_counter()
            row = conn.batch([("persistent", args)])[0]["value"]["rows"][0]
            if i >= 2:  # warm-up
                samples.append((time.perf_counter() - t0) * 1000)
            assert row["state"] == "populated", row
    finally:
        stop.set()
        adder.join()
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]
    return statistics.median(samples), p99, added[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller big dir")
    args = parser.parse_args()
    runs = 30 if args.quick else 200
    print(f"{'state files':>11} {'ps (ms)':>9} {'ps+persistent (ms)':>19} {'p99':>7} "
          f"{'rhl-ps + rhl-ps-persistent (ms)':>32} {'speed-up':>9} {'file watch':>10}")
    for n in (10, 200, 1000):
        r = bench_states(n, runs)
        print(f"{r['n']:>11} {r['ps']:>9.2f} {r['batch']:>19.2f} {r['batch_p99']:>7.2f} "
              f"{r['helpers']:>32.1f} {r['helpers'] / r['batch']:>8.0f}x {r['watch']:>10}")
    files = 20_000 if args.quick else 100_000
    b = bench_big_dir(files, runs)
    print()
    print(f"buffer dir of {b['files']:,} files ({b['bytes']:,} bytes): first answer {b['first_ms']:.1f} ms "
          f"({b['first_state']}, never waits for the walk); cached answer median {b['cached']:.2f} ms "
          f"(p99 {b['cached_p99']:.2f}); du -sb {b['du']:.0f} ms -> {b['du'] / b['cached']:.0f}x")
    for level, (median, p99, added) in b["growing"].items():
        s_median, s_p99, _ = b["static"][level]
        print(f"  level {level}, a poll every 50 ms: static median {s_median:.2f} ms (p99 {s_p99:.2f}); "
              f"while growing (+1 file / 50 ms, {added} added) median {median:.2f} ms (p99 {p99:.2f})")


if __name__ == "__main__":
    main()
