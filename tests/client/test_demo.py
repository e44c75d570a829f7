"""The newcomer path: `demo start`, `ps --local`, `demo stop`, on real launched services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from seamless_service.demo.launch import DEMO_KEYS, demo_root

CLI = [sys.executable, "-m", "seamless_service"]


def run(sandbox, *argv: str) -> subprocess.CompletedProcess:
    env = sandbox.env()
    env["SEAMLESS_SERVICE_NO_DAEMON"] = "1"
    return subprocess.run([*CLI, *argv], env=env, capture_output=True, text=True, timeout=120)


def test_demo_start_ps_stop(sandbox):
    started = run(sandbox, "demo", "start")
    assert started.returncode == 0, started.stderr
    assert all(f"started {key}" in started.stdout for key in DEMO_KEYS)

    listing = run(sandbox, "ps", "--local", "--persistent", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["key"]: row for row in map(json.loads, listing.stdout.splitlines())}
    assert set(rows) == set(DEMO_KEYS)
    assert all(row["process"] == "running" for row in rows.values())
    hashserver = rows["hashserver-demo-rw-tour"]
    assert hashserver["persistent"] == "populated" and hashserver["size"] > 40_000  # real bytes
    assert rows["database-demo-rw-tour"]["size"] > 20_000
    assert rows["jobserver-demo-rw-tour--STAGE-try"]["stage"] == "try"
    pids = [json.loads((sandbox.server_dir / f"{key}.json").read_text())["pid"] for key in DEMO_KEYS]

    table = run(sandbox, "ps", "--local", "--health")
    assert table.stdout.splitlines()[0].split() == [
        "SERVICE", "PROJECT", "STAGE", "PROCESS", "PORT", "PERSISTENT", "SIZE", "HEALTH"]
    assert table.stdout.count(" ok") == 3

    stopped = run(sandbox, "demo", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.count(": stopped") == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not any((sandbox.server_dir / f"{key}.json").exists() for key in DEMO_KEYS)
    assert not demo_root().exists()
    empty = run(sandbox, "ps", "--local", "--json")
    assert empty.returncode == 0 and empty.stdout == ""


def test_demo_data_is_per_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    first = demo_root()
    monkeypatch.setenv("HOME", str(tmp_path / "b"))
    second = demo_root()
    assert first != second and first.parent == second.parent
    assert str(os.getuid()) in first.name
