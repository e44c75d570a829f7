#!/usr/bin/env python3
"""The user's view, side by side in one run against the same sshd and the same state
(40 state files of cluster X):

  * seamless-config's `seamless-service-ps --cluster X --persistent`, `seamless-service-inspect`
    and `seamless-service-logs --tail N`, each (a) over per-call SSH (a fresh login per helper,
    as they run by default) and (b) over an OpenSSH ControlMaster connection (what a savvy
    user does today: a `ControlMaster auto` / `ControlPersist 60` / `ControlPath` block for
    the host, the master opened before timing starts)
  * ours: `seamless-service ps --cluster X --persistent`, `inspect`, `logs --tail N`, tunnel
    keeper warm
  * a 10x polling loop of `seamless-service ps --cluster X`
  * `seamless-service --help`, `seamless-service ps --help`
  * a Python `Host.batch` poll (ps + 2 x persistent) in a long-lived process
  * the first call with nothing running (tunnel keeper start, SSH, agent start)
  * the thin client's imports (`python -X importtime` of a warm `ps`), the interpreter's own
    start, the install mode (an editable install adds its import finder to every start)
    and the machine.

The variants are run round-robin (ours, ControlMaster, per-call, in turn) so that the load
of a shared machine falls on all of them alike. Medians, p99 of ours and the ratios against
both are printed; targets from issue 13 in brackets.

A real OpenSSH sshd on 127.0.0.1 with a throwaway user (tests/support/sshd.py) stands for
the cluster frontend; the client side lives in a sandbox HOME (its ~/.ssh/config has the
host alias; seamless-config's plain `ssh` gets the same file through a wrapper on PATH,
since OpenSSH reads the passwd home, not $HOME; the ControlMaster variant gets a second
wrapper whose config adds the ControlMaster block). The script removes that config and
closes the master (`ssh -O exit`) at the end. Needs root.

    python benchmarks/bench_cli.py [--runs N] [--quick]
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
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import install_mode, machine_summary, make_state, median_ms, parse_importtime  # noqa: E402
from tests.support.sshd import SshServer  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CLUSTER = "benchc"
STATES = 40
TAIL = 20
LOOP = 10


def ssh_wrapper(bin_dir: Path, config: Path) -> Path:
    """bin_dir/ssh running the real ssh with `config`: seamless-config calls plain `ssh`."""
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


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
    ssh_wrapper(bin_dir, server.ssh_config)
    env = dict(os.environ)
    env.update({
        "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "SEAMLESS_SERVICE_DAEMON_DIR": str(tmp / "daemon"), "XDG_CACHE_HOME": str(tmp / "cache"),
    })
    env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)
    env.pop("SEAMLESS_SERVICE_NO_DAEMON", None)
    return env


class ControlMaster:
    """The ControlMaster variant: an ssh config for the benchmark's host with a
    `ControlMaster auto` / `ControlPersist 60` / `ControlPath <tmp>/cm-%C` block, an `ssh`
    wrapper on PATH that uses it, and the master itself, opened once before timing (a user
    with ControlMaster has it open from their own earlier login). `close()` ends the master
    with `ssh -O exit` and removes the config."""

    def __init__(self, tmp: Path, server: SshServer, env: dict[str, str]):
        self.alias = server.alias
        self.config = tmp / "ssh_config_controlmaster"
        self.config.write_text(server.config_block(extra={
            "ControlMaster": "auto", "ControlPersist": "60", "ControlPath": str(tmp / "cm-%C")}))
        self.config.chmod(0o600)
        bin_dir = tmp / "bin-controlmaster"
        ssh_wrapper(bin_dir, self.config)
        self.env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
        # -f backgrounds the master after login; its stdio must not be our pipes, or
        # waiting for their EOF would wait for the master's end.
        subprocess.run(self._ssh("-f", "-N"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=True)
        check = subprocess.run(self._ssh("-O", "check"), capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise SystemExit(f"the ControlMaster did not start: {check.stderr.strip()}")

    def _ssh(self, *args: str) -> list[str]:
        return ["/usr/bin/ssh", "-F", str(self.config), *args, self.alias]

    def close(self) -> None:
        subprocess.run(self._ssh("-O", "exit"), capture_output=True, timeout=30)
        self.config.unlink(missing_ok=True)


def link_remote_helpers(server: SshServer) -> None:
    """seamless-config runs `PATH=$HOME/miniforge3/bin:... rhl-*`: point that at the agent venv."""
    venv_bin = server.home / ".local/share/seamless-service/agent-venv/bin"
    for helper in sorted(venv_bin.glob("rhl-*")):
        target = server.write_file(f"miniforge3/bin/{helper.name}", b"")
        target.unlink()
        target.symlink_to(helper)


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-400:]}")
    return result


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    run(argv, env, cwd)
    return (time.perf_counter() - t0) * 1000


def side_by_side(variants: dict[str, tuple[Callable[[], float], int]]) -> dict[str, list[float]]:
    """{label: samples}: each variant `runs` times, round-robin, the ones with fewer runs
    spread evenly over the rounds; one untimed warm-up each."""
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for fn, _ in variants.values():
        fn()
    rounds = max(runs for _, runs in variants.values())
    for i in range(rounds):
        for label, (fn, runs) in variants.items():
            if len(samples[label]) < runs and i * runs // rounds >= len(samples[label]):
                samples[label].append(fn())
    return samples


def p99(samples: list[float]) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]


def import_cost(argv: list[str], env: dict[str, str], cwd: Path, tries: int = 5) -> dict:
    """The thin client's imports in one warm call: `python -X importtime` of the installed
    script, minus what the bare interpreter imports (site, the editable finder, ...). Best
    of `tries` (the run least disturbed by other load), since one run is one sample."""
    python = str(VENV_BIN / "python")

    def importtime(args: list[str]) -> list[tuple[str, int, int, int]]:
        stderr = subprocess.run([python, "-X", "importtime", *args], env=env, cwd=cwd,
                                capture_output=True, text=True).stderr
        return parse_importtime(stderr)

    def top_level_us(rows: list[tuple[str, int, int, int]]) -> int:
        return sum(cumulative for _, depth, _, cumulative in rows if depth == 0)

    bare = min((importtime(["-c", "pass"]) for _ in range(tries)), key=top_level_us)
    startup = {name for name, *_ in bare}
    client = min(([row for row in importtime(argv) if row[0] not in startup] for _ in range(tries)),
                 key=top_level_us)
    return {
        "startup_ms": top_level_us(bare) / 1000,
        "client_ms": top_level_us(client) / 1000,
        "modules": len(client),
        "names": [name for name, *_ in client],
        "top": sorted(client, key=lambda row: -row[2])[:5],
    }


def interpreter_start(env: dict[str, str], cwd: Path, runs: int) -> tuple[float, float]:
    """Median wall ms of the venv's `python -c pass` (site included), and with -I -S (bare)."""
    python = str(VENV_BIN / "python")
    full, _ = median_ms(lambda: timed([python, "-c", "pass"], env, cwd), runs)
    bare, _ = median_ms(lambda: timed([python, "-I", "-S", "-c", "pass"], env, cwd), runs)
    return full, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs of each of our commands (default 20)")
    parser.add_argument("--quick", action="store_true", help="--runs 8")
    args = parser.parse_args()
    runs = 8 if args.quick else args.runs
    print(f"machine: {machine_summary()}")
    print(f"install: {install_mode()}; Python {sys.version.split()[0]}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-cli-"))
    cwd = tmp / "cwd"  # empty: neither tool finds a seamless.yaml here
    cwd.mkdir()
    master: ControlMaster | None = None
    ours = [str(VENV_BIN / "seamless-service")]
    with SshServer.start(alias="benchcli", parent=Path(tempfile.gettempdir())) as server:
        try:
            make_state(server, STATES, cluster=CLUSTER)
            server.write_file("data/db/proj0/seamless.db", b"\0" * 50_000)
            env = setup_client(tmp, server)
            # Install the agent once (not timed), then stop everything: "nothing running yet".
            run(ours + ["agent", "deploy", server.alias], env, cwd)
            link_remote_helpers(server)
            run(ours + ["agent", "stop", server.alias], env, cwd)
            subprocess.run(ours + ["tunnel", "stop"], env=env, capture_output=True)
            ps = ["ps", "--cluster", CLUSTER, "--persistent", "--json"]
            first = timed(ours + ps, env, cwd)

            # One service that both tools resolve to the same key, with a state file and a log.
            select = ["--service", "hashserver", "--cluster", CLUSTER, "--project", "proj0"]
            key = json.loads(run([str(VENV_BIN / "seamless-service-resolve"), *select], env, cwd).stdout)["key"]
            server.write_file(f".remote-http-launcher/server/{key}.json", json.dumps(
                {"status": "running", "pid": 4_100_000, "port": 41000, "uid": server.uid,
                 "workdir": str(server.home / "data/buffers/proj0")}))
            server.write_file(f".remote-http-launcher/server/{key}.log",
                              "".join(f"line {i} of the service log\n" for i in range(2000)))

            master = ControlMaster(tmp, server, env)
            commands = {
                "ps --cluster X --persistent": (ps, ["seamless-service-ps", *ps[1:]]),
                "inspect --service S": (["inspect", *select], ["seamless-service-inspect", *select]),
                f"logs --service S --tail {TAIL}": (["logs", *select, "--tail", str(TAIL)],
                                                    ["seamless-service-logs", *select, "--tail", str(TAIL)]),
            }
            results = {}
            for name, (our_args, their_args) in commands.items():
                theirs = [str(VENV_BIN / their_args[0]), *their_args[1:]]
                results[name] = side_by_side({
                    "ours": (lambda a=our_args: timed(ours + a, env, cwd), runs),
                    "controlmaster": (lambda t=theirs: timed(t, master.env, cwd), max(5, runs // 2)),
                    "per-call": (lambda t=theirs: timed(t, env, cwd), max(3, runs // 4)),
                })
                print(f"  measured {name}", flush=True)
            poll = ours + ["ps", "--cluster", CLUSTER]
            loop, loop_p99 = median_ms(lambda: sum(timed(poll, env, cwd) for _ in range(LOOP)),
                                       max(3, runs // 4), warmup=1)
            helps, _ = median_ms(lambda: timed(ours + ["--help"], env, cwd), runs)  # a constant: no keeper
            ps_helps, _ = median_ms(lambda: timed(ours + ["ps", "--help"], env, cwd), runs)  # keeper warm
            start_full, start_bare = interpreter_start(env, cwd, runs)
            imports = import_cost([str(VENV_BIN / "seamless-service"), *ps], env, cwd)

            os.environ.update({k: env[k] for k in ("HOME", "XDG_CACHE_HOME")})
            from seamless_service import Host

            with Host(server.alias) as host:
                ops = [("ps", {}),
                       ("persistent", {"paths": ["~/data/buffers"], "level": 2, "marker": ".HASHSERVER_PREFIX"}),
                       ("persistent", {"paths": ["~/data/db"], "level": 2, "file": "seamless.db",
                                       "marker": "seamless.db"})]
                api, api_p99 = median_ms(lambda: host.batch(ops), 200)
        finally:
            if master is not None:
                master.close()
            if "env" in locals():
                subprocess.run(ours + ["tunnel", "stop"], env=env, capture_output=True)
                subprocess.run(ours + ["agent", "stop", server.alias], env=env, capture_output=True)

    print(f"\nmachine at the end: {machine_summary()}")
    report(results, loop, loop_p99, helps, ps_helps, api, api_p99, first, start_full, start_bare, imports)
    shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict, loop: float, loop_p99: float, helps: float, ps_helps: float, api: float,
           api_p99: float, first: float, start_full: float, start_bare: float, imports: dict) -> None:
    targets = {"ps --cluster X --persistent": (25, "[<= 25 ms]  [>= 12x ControlMaster]  [>= 40x per-call]")}
    print(f"\n{'medians, ms':34} {'per-call ssh':>13} {'ControlMaster':>14} {'ours':>8} {'ours p99':>9}"
          f" {'vs CM':>7} {'vs per-call':>12}")
    for name, samples in results.items():
        ours, cm, per_call = (statistics.median(samples[k]) for k in ("ours", "controlmaster", "per-call"))
        target = targets.get(name, (20, "[<= 20 ms]"))[1]
        print(f"{name:34} {per_call:>13.0f} {cm:>14.0f} {ours:>8.1f} {p99(samples['ours']):>9.1f}"
              f" {cm / ours:>6.1f}x {per_call / ours:>11.1f}x   {target}")
    print(f"  (runs: ours {len(samples['ours'])}, ControlMaster {len(samples['controlmaster'])}, "
          f"per-call {len(samples['per-call'])}; ratio = theirs / ours)")
    print(f"\n{f'{LOOP}x polling loop of seamless-service ps --cluster X':58} {loop:>7.0f} ms   "
          f"p99 {loop_p99:.0f} ms   [<= 250 ms]")
    print(f"{'seamless-service --help':58} {helps:>7.1f} ms   [<= 20 ms]")
    print(f"{'seamless-service ps --help (tunnel keeper warm)':58} {ps_helps:>7.1f} ms")
    ps_cm = statistics.median(results["ps --cluster X --persistent"]["controlmaster"])
    print(f"{'Python Host.batch(ps + 2 x persistent), long-lived':58} {api:>7.2f} ms   "
          f"p99 {api_p99:.2f} ms   {ps_cm / api:.0f}x faster than ControlMaster")
    print(f"{'first call, nothing running (keeper + SSH + agent start)':58} {first:>7.0f} ms")
    print("\nwhere a warm call's time goes before it reaches the keeper:")
    print(f"  {'interpreter start (venv python -c pass; site included)':66} {start_full:>7.1f} ms wall")
    print(f"  {'interpreter start without site (-I -S)':66} {start_bare:>7.1f} ms wall")
    print(f"  {'imports at start (-X importtime: site, .pth, finders; best of 5)':66} {imports['startup_ms']:>7.1f} ms")
    print(f"  {'the thin client imports of a warm ps (-X importtime; best of 5)':66} {imports['client_ms']:>7.1f} ms"
          f" ({imports['modules']} modules); top 5 by own time:")
    for name, _, own, cumulative in imports["top"]:
        print(f"    {name:64} {own / 1000:>7.2f} ms own, {cumulative / 1000:.2f} ms with its imports")
    # The whole list: the warm path should import builtin modules and ours only
    # (tests/client/keeper/test_thin_client.py checks the names).
    print(f"  all {imports['modules']} modules, in import order: {', '.join(imports['names'])}")


if __name__ == "__main__":
    main()
