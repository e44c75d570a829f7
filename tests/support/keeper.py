"""A private tunnel keeper for tests: its folder (`KeeperPlace`, optionally running the test
main `HOOKS` instead of the real CLI), raw and thin clients, and commands run through it
with a caller's own environment (`through_keeper`, `ssh_home`)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

from seamless_service.client.keeper import client
from tests.support.processes import gone
from tests.support.services import LauncherSandbox

HOOKS = textwrap.dedent('''
    import json, os, sys, time
    from seamless_service.client.transport.pool import default_pool as pool

    class Thing:
        def __init__(self, marker):
            self.marker = marker
        def describe(self):
            return {"kind": "thing"}
        def close(self):
            touch(self.marker, "closed")

    def touch(path, text):
        # Atomic, so a test that sees the file also sees its text.
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    def main(argv):
        cmd, *rest = argv or ["none"]
        deadline = time.monotonic() + 20
        if cmd == "env":
            print(json.dumps({"cwd": os.getcwd(), "var": os.environ.get("SSD_VAR"),
                              "argv": sys.argv, "in_keeper": pool.in_keeper,
                              "tty": sys.stdout.isatty()}))
            return 0
        if cmd == "environ":        # the whole environment the command sees
            print(json.dumps(dict(os.environ)))
            return 0
        if cmd == "setenv":         # a command that changes its environment: NAME=VALUE or -NAME
            for item in rest:
                if item.startswith("-"):
                    os.environ.pop(item[1:], None)
                else:
                    name, _, value = item.partition("=")
                    os.environ[name] = value
            return 0
        if cmd == "exit":
            print("to stdout")
            print("to stderr", file=sys.stderr)
            return int(rest[0])
        if cmd == "raise":
            raise RuntimeError("boom\\nsecond line")
        if cmd == "sysexit":
            sys.exit(int(rest[0]) if rest[0].isdigit() else rest[0])
        if cmd == "bytes":
            sys.stdout.buffer.write("h\\u00e9llo\\n".encode())
            return 0
        if cmd == "pool":
            pool.lease(rest[0], lambda: Thing(rest[1]))
            return 0
        if cmd == "wait-file":      # prints, then waits for a file: shows streaming
            print("first", flush=True)
            while not os.path.exists(rest[0]) and time.monotonic() < deadline:
                time.sleep(0.02)
            print("second")
            return 0
        if cmd == "coop":           # polls pool.cancelled(), as watch loops should
            touch(rest[0], "started")
            while not pool.wait_cancelled(0.05):
                if time.monotonic() > deadline:
                    return 3
            touch(rest[1], "cancelled")
            return 0
        if cmd == "spin":           # ignores cancellation: needs the injected Ctrl-C
            touch(rest[0], "started")
            try:
                while time.monotonic() < deadline:
                    time.sleep(0.01)
            except KeyboardInterrupt:
                touch(rest[1], "interrupted")
                raise
            return 3
        if cmd == "big":
            sys.stdout.write("x" * int(rest[0]))
            return 0
        print(f"unknown hook command {cmd}", file=sys.stderr)
        return 2
''')


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def keeper_pids(folder: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"seamless_service.client.keeper.server" in cmdline and \
                f"SEAMLESS_SERVICE_DAEMON_DIR={folder}".encode() in environ and not gone(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def kill_keepers(folder: Path) -> None:
    for pid in keeper_pids(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class KeeperPlace:
    """A private keeper folder (short path: unix socket paths are limited to 107 bytes)."""

    def __init__(self, monkeypatch, hooks: bool, idle: float = 60):
        self.root = Path(tempfile.mkdtemp(prefix="ssd-", dir="/tmp"))
        self.folder = self.root / "d"
        self.sock = self.folder / "daemon.sock"
        self.log = self.folder / "daemon.log"
        self.work = self.root / "work"
        self.work.mkdir()
        monkeypatch.setenv("SEAMLESS_SERVICE_DAEMON_DIR", str(self.folder))
        monkeypatch.setenv("SEAMLESS_SERVICE_DAEMON_IDLE", str(idle))
        monkeypatch.delenv("SEAMLESS_SERVICE_NO_DAEMON", raising=False)
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        if hooks:
            (self.root / "ssd_hooks.py").write_text(HOOKS)
            monkeypatch.setenv("SEAMLESS_SERVICE_DAEMON_MAIN", "ssd_hooks:main")
            monkeypatch.setenv("PYTHONPATH", str(self.root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        else:
            monkeypatch.delenv("SEAMLESS_SERVICE_DAEMON_MAIN", raising=False)

    def pid(self) -> int:
        info = client.ping()
        assert info is not None, "no keeper answers"
        return info["pid"]

    def cleanup(self) -> None:
        kill_keepers(self.folder)
        shutil.rmtree(self.root, ignore_errors=True)


def raw_connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def thin_client(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seamless_service.client.entry", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def through_keeper(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """`seamless-service ARGV` run by the keeper with this caller's env and cwd."""
    env = {k: v for k, v in env.items() if k != "SEAMLESS_SERVICE_NO_DAEMON"}
    out, err = io.StringIO(), io.StringIO()
    code = client.run(argv, stdout=out, stderr=err, env=env, cwd=str(cwd), start=True)
    return code, out.getvalue(), err.getvalue()


def ssh_home(root: Path, server, alias: str) -> dict[str, str]:
    """A HOME whose ~/.ssh/config names `server` as `alias`, and a cluster `clu` there (the cluster the keys of the remote state name)."""
    box = LauncherSandbox(root)
    ssh_dir = box.home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    server.write_ssh_config(ssh_dir / "config", alias=alias)
    (box.home / ".seamless").mkdir()
    (box.home / ".seamless" / "clusters.yaml").write_text(yaml.safe_dump({"clu": {"type": "local", "frontends": [{
        "hostname": "far.example.org", "ssh_hostname": alias,
        "hashserver": {"bufferdir": "~/data/buffers"}, "database": {"database_dir": "~/data/db"}}]}}))
    env = box.env()
    env.pop("XDG_CACHE_HOME", None)   # each HOME its own client cache, as for real users
    return env
