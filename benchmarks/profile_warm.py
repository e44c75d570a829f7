#!/usr/bin/env python3
"""Where a warm command's time goes inside the tunnel keeper: cProfile of the CLI's main,
run as the keeper runs it (pool in keeper mode, the caller's env and cwd), against
bench_cli.py's sandbox (a real sshd on 127.0.0.1, cluster X with 40 state files, the agent
deployed), after a few untimed warm-up commands.

    python benchmarks/profile_warm.py [--runs N] [--top N] [COMMAND ...]

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
            profile_in_process(argv, env, cwd, args.runs, args.top, args.callers)
        finally:
            subprocess.run(ours + ["agent", "stop", server.alias], env=env, capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)


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
