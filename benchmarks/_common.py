"""Shared bits of the benchmark scripts: timing, state generation, a private agent."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from tests.support.sshd import SshServer

VENV_BIN = Path(sys.executable).parent


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 2) -> tuple[float, float]:
    """(median, p99) wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]
    return statistics.median(samples), p99


def spawn_sleepers(n: int) -> list[subprocess.Popen]:
    """n live processes, so that "running" rows probe n distinct real pids."""
    return [subprocess.Popen(["sleep", "3600"]) for _ in range(n)]


def write_state_files(server_dir: Path, n: int, bufferdir: Path, pids: list[int] | None = None) -> None:
    """n realistic server state files: a mix of running (distinct live pids), stale, failed."""
    server_dir.mkdir(parents=True, exist_ok=True)
    pids = pids or [os.getpid()]
    for i in range(n):
        live_pid = pids[i % len(pids)]
        service = ("hashserver", "database", "jobserver")[i % 3]
        mode = "rw" if service == "jobserver" else ("rw", "ro")[i % 2]
        key = f"{service}-bench-{mode}-proj{i // 3}" + (f"--STAGE-s{i % 5}" if i % 4 == 0 else "")
        status = ("running", "running", "stale", "failed")[i % 4]
        data = {
            "workdir": str(bufferdir / f"proj{i // 3}"),
            "log": str(server_dir / f"{key}.log"),
            "command": f"{service} --status-file {server_dir / key}.json",
            "uid": os.getuid(), "pid": live_pid, "status": status,
            "network_interface": "127.0.0.1", "port": 40000 + i,
        }
        (server_dir / f"{key}.json").write_text(json.dumps(data))


BIG = 200 * 1024  # bytes of big.log, the large reply of bench_tunnel.py


def make_state(server: "SshServer", n: int = 12, cluster: str = "bench") -> None:
    """n hashserver state files of `cluster` (running/stale/failed in turn, pids that are not
    live), their buffer folders, and a BIG-byte big.log, in the sshd user's HOME (owned by
    that user). Module-level so that the scripts import it without each other's imports."""
    for i in range(n):
        key = f"hashserver-{cluster}-rw-proj{i}"
        state = {"status": ("running", "stale", "failed")[i % 3], "pid": 4_000_000 - i, "port": 40000 + i,
                 "workdir": str(server.home / f"data/buffers/proj{i}"), "uid": server.uid}
        server.write_file(f".remote-http-launcher/server/{key}.json", json.dumps(state).encode())
        server.write_file(f"data/buffers/proj{i}/.HASHSERVER_PREFIX", b"")
    line = b"x" * 99 + b"\n"
    server.write_file(".remote-http-launcher/server/big.log", (line * (BIG // len(line) + 1))[:BIG])


def make_bufferdir(root: Path, projects: int, files_per_project: int = 3) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".HASHSERVER_PREFIX").touch()
    for p in range(projects):
        d = root / f"proj{p}"
        d.mkdir(exist_ok=True)
        (d / ".HASHSERVER_PREFIX").touch()
        for f in range(files_per_project):
            (d / f"{f:064x}").write_bytes(b"x" * 100)


def run_helper_cmd(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(argv, env=env, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {result.stderr.decode()[:300]}")


def sandbox_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)
    env["HOME"] = str(home)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# ---------------------------------------------------------------- how the figures were obtained

def machine_summary() -> str:
    """Cores, CPU model and load average: printed with the figures, which depend on them."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/loadavg") as handle:
            load = " ".join(handle.read().split()[:3])
    except OSError:
        load = "unknown"
    return f"{os.cpu_count()} cores, {model}, load average {load}"


def install_mode(dist: str = "seamless-service") -> str:
    """'editable (URL)' or 'not editable (site-packages)', from the installed distribution's
    direct_url.json (PEP 610), which is what the console scripts of this venv run."""
    import importlib.metadata
    import json as json_
    import sysconfig

    # Only the venv's site-packages: a checkout's own *.egg-info (left by setuptools next
    # to the sources, which the scripts put on sys.path) would answer first otherwise.
    site = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    found = next(iter(importlib.metadata.distributions(name=dist, path=site)), None)
    if found is None:
        return f"{dist} is not installed in {sys.prefix}"
    text = found.read_text("direct_url.json")
    info = json_.loads(text) if text else {}
    if info.get("dir_info", {}).get("editable"):
        return f"editable install of {info.get('url', '?')} (its import finder runs at every start)"
    return f"not editable ({found.locate_file('')})"


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """`python -X importtime` lines as (module, depth, self us, cumulative us), in order."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), depth, int(own), int(cumulative)))
    return rows
