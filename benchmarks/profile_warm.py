#!/usr/bin/env python3
"""Where a warm command's time goes inside the tunnel keeper: cProfile of the CLI's main,
run as the keeper runs it (pool in keeper mode, the caller's env and cwd), against
bench_cli.py's sandbox (a real sshd on 127.0.0.1, cluster X with 40 state files, the agent
deployed), after a few untimed warm-up commands.

    python benchmarks/profile_warm.py [--runs N] [--top N] [--callers PATTERN] [COMMAND ...]
    python benchmarks/profile_warm.py --split [COMMAND ...]   # where the wall time goes
    (SPLIT_PROFILE=1 also profiles the thin client in its fresh process)

COMMAND defaults to `ps --cluster benchc --persistent --json`. Needs root (the sshd's
throwaway user). Not a timing: cProfile slows Python code down; read it for the shares.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_state  # noqa: E402
from bench_cli import CLUSTER, STATES, VENV_BIN, run, setup_client  # noqa: E402
from tests.support.sshd import SshServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--callers", action="append", default=[], metavar="PATTERN",
                        help="also print who calls the functions matching PATTERN")
    parser.add_argument("--split", action="store_true",
                        help="instead of profiling: time the installed command, the bare "
                             "interpreter, and the keeper round trip from a running process")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.command or ["ps", "--cluster", CLUSTER, "--persistent", "--json"]
    tmp = Path(tempfile.mkdtemp(prefix="ss-profile-warm-"))
    cwd = tmp / "cwd"
    cwd.mkdir()
    ours = [str(VENV_BIN / "seamless-service")]
    with SshServer.start(alias="profwarm", parent=Path(tempfile.gettempdir())) as server:
        env = setup_client(tmp, server)
        make_state(server, STATES, cluster=CLUSTER)
        try:
            run(ours + ["agent", "deploy", server.alias], env, cwd)
            if args.split:
                split(argv, env, cwd, args.runs)
            else:
                profile_in_process(argv, env, cwd, args.runs, args.top, args.callers)
        finally:
            subprocess.run(ours + ["agent", "stop", server.alias], env=env, capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)


SPLIT_CLIENT = """
import io, statistics, sys, time
from seamless_service.client.keeper import client
argv, runs = sys.argv[2:], int(sys.argv[1])
samples = []
for i in range(runs + 2):
    t0 = time.perf_counter()
    code = client.run(argv, stdout=io.StringIO(), stderr=io.StringIO(), start=True)
    samples.append((time.perf_counter() - t0) * 1000)
    assert code == 0, code
print(statistics.median(samples[2:]))
"""


SPLIT_FRESH = """
import cProfile, io, os, pstats, sys, time
t1 = time.perf_counter()
from seamless_service.client.entry import main
t2 = time.perf_counter()
sys.stdout = io.StringIO()
profiler = cProfile.Profile() if os.environ.get("SPLIT_PROFILE") else None
if profiler: profiler.enable()
main(sys.argv[1:])
if profiler: profiler.disable()
t3 = time.perf_counter()
sys.stdout = sys.__stdout__
if profiler: pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
print(f"entry imports {(t2 - t1) * 1000:.1f} ms, main {(t3 - t2) * 1000:.1f} ms")
"""


def split(argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> None:
    """Medians: the installed command (a user's warm command), `python -c pass`, and
    client.run from one running process (the keeper's share, no interpreter start)."""
    import statistics

    def wall(cmd: list[str]) -> float:
        samples = []
        for i in range(runs + 2):
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, check=True)
            samples.append((time.perf_counter() - t0) * 1000)
        return statistics.median(samples[2:])

    python = str(VENV_BIN / "python")
    script = wall([str(VENV_BIN / "seamless-service"), *argv])
    bare = wall([python, "-c", "pass"])
    fresh = subprocess.run([python, "-c", SPLIT_FRESH, *argv], env=env, cwd=cwd, capture_output=True,
                           text=True, check=True)
    inside = fresh.stdout.strip()
    if "SPLIT_PROFILE" in env:
        print(fresh.stderr)
    keeper = float(subprocess.run([python, "-c", SPLIT_CLIENT, str(runs), *argv], env=env, cwd=cwd,
                                  capture_output=True, text=True, check=True).stdout)
    print(f"{' '.join(argv)}: the command {script:.1f} ms, python -c pass {bare:.1f} ms, "
          f"keeper round trip from a running process {keeper:.1f} ms (medians of {runs}); "
          f"in one fresh process: {inside}")
    subprocess.run([str(VENV_BIN / "seamless-service"), "tunnel", "stop"], env=env, capture_output=True)


def profile_in_process(argv: list[str], env: dict[str, str], cwd: Path, runs: int, top: int,
                       callers: list[str]) -> None:
    from seamless_service.client.cli.main import main as cli_main
    from seamless_service.client.transport.pool import default_pool

    default_pool.keep_between_commands(threading.Event())
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)

    def once() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli_main(list(argv))
        if code:
            raise SystemExit(f"{argv} exited {code}")

    for _ in range(3):
        once()
    t0 = time.perf_counter()
    for _ in range(runs):
        once()
    print(f"{' '.join(argv)}: {(time.perf_counter() - t0) * 1000 / runs:.2f} ms per command in process "
          f"(unprofiled, mean of {runs})")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        once()
    profiler.disable()
    for key in ("cumulative", "tottime"):
        stats = pstats.Stats(profiler).strip_dirs().sort_stats(key)
        print(f"\n--- by {key}, {runs} commands")
        stats.print_stats(top)
    for pattern in callers:
        pstats.Stats(profiler).strip_dirs().sort_stats("cumulative").print_callers(pattern)
    default_pool.close_all()


if __name__ == "__main__":
    main()
