#!/usr/bin/env python3
"""The user's view, side by side in one run against the same sshd and the same state:

  * `seamless-service-ps --cluster X --persistent`  (seamless-config: a fresh ssh per helper)
  * `seamless-service ps --cluster X --persistent`  (tunnel keeper warm: one agent round trip)
  * a Python `Host.batch` poll (ps + 2 x persistent) in a long-lived process
  * `seamless-service --help`
  * the first call with nothing running (tunnel keeper start, SSH, agent start)

Medians and ratios are printed. Targets (loopback): --help <= 60 ms; warm CLI ps
<= 80 ms and >= 10x faster than seamless-service-ps --persistent; first call <= 1.5 s.

A real OpenSSH sshd on 127.0.0.1 with a throwaway user (tests/support/sshd.py) stands for
the cluster frontend; the client side lives in a sandbox HOME (its ~/.ssh/config has the
host alias; seamless-config's plain `ssh` gets the same file through a wrapper on PATH,
since OpenSSH reads the passwd home, not $HOME). Needs root.

    python benchmarks/bench_cli.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_ms  # noqa: E402
from bench_tunnel import make_state, write_as  # noqa: E402
from tests.support.sshd import SshServer  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CLUSTER = "benchc"


def setup_client(tmp: Path, server: SshServer) -> dict[str, str]:
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(server.ssh_config, home / ".ssh" / "config")
    (home / ".seamless").mkdir()
    (home / ".seamless" / "clusters.yaml").write_text(
        f"{CLUSTER}:\n  type: local\n  frontends:\n"
        f"    - hostname: {server.alias}\n      ssh_hostname: {server.alias}\n"
        f"      hashserver: {{bufferdir: ~/data/buffers}}\n      database: {{database_dir: ~/data/db}}\n")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {server.ssh_config} "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ)
    env.update({
        "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "SEAMLESS_SERVICE_DAEMON_DIR": str(tmp / "daemon"), "XDG_CACHE_HOME": str(tmp / "cache"),
    })
    env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)
    env.pop("SEAMLESS_SERVICE_NO_DAEMON", None)
    return env


def link_remote_helpers(server: SshServer) -> None:
    """seamless-config runs `PATH=$HOME/miniforge3/bin:... rhl-*`: point that at the agent venv."""
    venv_bin = server.home / ".local/share/seamless-service/agent-venv/bin"
    for helper in sorted(venv_bin.glob("rhl-*")):
        write_as(server, f"miniforge3/bin/{helper.name}", b"")
        target = server.home / "miniforge3/bin" / helper.name
        target.unlink()
        target.symlink_to(helper)


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = (time.perf_counter() - t0) * 1000
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-400:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-cli-"))
    with SshServer.start(alias="benchcli", parent=Path(tempfile.gettempdir())) as server:
        make_state(server)
        write_as(server, "data/db/proj0/seamless.db", b"\0" * 50_000)
        env = setup_client(tmp, server)
        ours = [str(VENV_BIN / "seamless-service")]
        ps = ["ps", "--cluster", CLUSTER, "--persistent", "--json"]
        # Install the agent once (not timed), then stop everything: "nothing running yet".
        timed(ours + ["agent", "deploy", server.alias], env)
        link_remote_helpers(server)
        timed(ours + ["agent", "stop", server.alias], env)
        subprocess.run(ours + ["tunnel", "stop"], env=env, capture_output=True)
        first = timed(ours + ps, env)
        warm, warm_p99 = median_ms(lambda: timed(ours + ps, env), args.runs)
        helps, _ = median_ms(lambda: timed(ours + ["--help"], env), args.runs)  # a constant: no keeper
        ps_helps, _ = median_ms(lambda: timed(ours + ["ps", "--help"], env), args.runs)  # keeper warm
        seamless_config_cmd = [str(VENV_BIN / "seamless-service-ps"), "--cluster", CLUSTER, "--persistent", "--json"]
        theirs, _ = median_ms(lambda: timed(seamless_config_cmd, env), max(3, args.runs // 4), warmup=1)

        os.environ.update({k: env[k] for k in ("HOME", "XDG_CACHE_HOME")})
        from seamless_service import Host

        with Host(server.alias) as host:
            ops = [("ps", {}),
                   ("persistent", {"paths": ["~/data/buffers"], "level": 2, "marker": ".HASHSERVER_PREFIX"}),
                   ("persistent", {"paths": ["~/data/db"], "level": 2, "file": "seamless.db",
                                   "marker": "seamless.db"})]
            api, api_p99 = median_ms(lambda: host.batch(ops), 200)
        subprocess.run(ours + ["tunnel", "stop"], env=env, capture_output=True)
        subprocess.run(ours + ["agent", "stop", server.alias], env=env, capture_output=True)

    print(f"{'':54} {'median':>9}")
    print(f"{'seamless-service-ps --cluster X --persistent (per-call ssh)':54} {theirs:>7.0f} ms")
    print(f"{'seamless-service ps --cluster X --persistent (warm)':54} {warm:>7.0f} ms   "
          f"p99 {warm_p99:.0f} ms   {theirs / warm:.1f}x faster")
    print(f"{'Python Host.batch(ps + 2 x persistent), long-lived':54} {api:>7.2f} ms   "
          f"p99 {api_p99:.2f} ms   {theirs / api:.0f}x faster")
    print(f"{'seamless-service --help':54} {helps:>7.0f} ms")
    print(f"{'seamless-service ps --help (tunnel keeper warm)':54} {ps_helps:>7.0f} ms")
    print(f"{'first call, nothing running (keeper + SSH + agent start)':54} {first:>7.0f} ms")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
