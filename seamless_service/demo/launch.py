"""`seamless-service demo start|stop`: a few real services on this machine, launched through
remote-http-launcher exactly as Seamless launches its own, so that `ps --local` has
something real to show (state files, pids, ports, logs, data directories with sizes).

The demo data lives under the system temp folder (not under a dot folder of $HOME, which
the path policy refuses), and `demo stop` removes it together with the demo's state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

DEMO_KEYS = {
    # key -> (data subfolder or None, marker or data file)
    "hashserver-demo-rw-tour": ("buffers/tour", ".HASHSERVER_PREFIX"),
    "database-demo-rw-tour": ("db/tour", "seamless.db"),
    "jobserver-demo-rw-tour--STAGE-try": (None, None),
}
TOOLS_YAML = Path(__file__).with_name("tools.yaml")
BIN_DIR = Path(sys.executable).parent


def demo_root() -> Path:
    """Where the demo keeps its data: per user and per launcher state folder (which lives
    under HOME), so two sandboxes of one user never clear each other's demo data."""
    import hashlib

    launcher_dir = str(Path("~/.remote-http-launcher").expanduser())
    tag = hashlib.sha256(launcher_dir.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"seamless-service-demo-{os.getuid()}-{tag}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["RHL_TOOLS_YAML"] = str(TOOLS_YAML)
    # The launcher runs rhl-* helpers and the demo binary by name: ours come first.
    env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")])
    env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)  # the launcher misreads it (anchor §6 #24)
    return env


def _prepare_data(key: str, sub: str | None, marker: str | None) -> Path:
    if sub is None:
        workdir = demo_root() / "work" / key
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir
    workdir = demo_root() / sub
    workdir.mkdir(parents=True, exist_ok=True)
    if marker == ".HASHSERVER_PREFIX":
        (workdir / marker).touch()
        for i in range(40):  # a few "buffers", named by checksum like a hashserver's
            (workdir / f"{i:064x}").write_bytes(os.urandom(1000 + 250 * i))
    elif marker == "seamless.db":
        (workdir / marker).write_bytes(b"SQLite format 3\x00" + os.urandom(20_000))
    return workdir


def start(*, echo: Any = print) -> int:
    launcher = BIN_DIR / "remote-http-launcher"
    if not launcher.exists():
        echo("seamless-service demo: remote-http-launcher is not installed next to this Python", file=sys.stderr)
        return 1
    configs = demo_root() / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    failures = 0
    for key, (sub, marker) in DEMO_KEYS.items():
        workdir = _prepare_data(key, sub, marker)
        config = {
            "workdir": str(workdir), "key": key,
            "command": "seamless-service-demo --status-file {status_file}",
            "network_interface": "127.0.0.1", "handshake": "healthcheck", "timeout": 20,
        }
        path = configs / f"{key}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run([str(launcher), str(path)], env=_env(), capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        if result.returncode == 0:
            echo(f"started {key}")
        else:
            failures += 1
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            echo(f"seamless-service demo: could not start {key}: {last[0]}", file=sys.stderr)
    if failures == 0:
        echo("now try:  seamless-service ps --local --persistent --health")
    return 1 if failures else 0


def stop(*, echo: Any = print) -> int:
    from ..client.local import LocalTransport, unwrap

    keys = list(DEMO_KEYS)
    with LocalTransport() as transport:
        stop_result, rm_result = transport.batch([("stop", {"keys": keys}), ("rm", {"keys": keys, "force": True})])
        stopped = unwrap(stop_result, host="localhost")
        unwrap(rm_result, host="localhost")
    for item in stopped["results"]:
        echo(f"{item['key']}: {item['outcome']}")
    shutil.rmtree(demo_root(), ignore_errors=True)
    return 0


def describe() -> dict[str, Any]:
    return {"root": str(demo_root()), "keys": list(DEMO_KEYS), "tools_yaml": str(TOOLS_YAML)}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(describe()))
