"""Driving the CLI as a user does, shared by the CLI, config, lifecycle and query tests:
a sandbox HOME with clusters and a project (`make_home`, `remote_home`), `seamless-service`
and seamless-config's `seamless-service-*` as subprocesses (`cli`, `seamless_config_cli`), their
one-line errors, NDJSON output, and a child's output read while it runs (`Output`,
`interrupt` for `--watch`)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.services import wait_for


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# Runs `seamless-service ARGS` in-process in a fresh interpreter. Until the lead wires
# service_cmds into cli/main.py, the subcommands are added to its parser here.
SHIM = textwrap.dedent("""
    import argparse, sys
    from seamless_service.client.cli import main as m
    build = m.build_parser
    def patched():
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "resolve" not in sub.choices:
            from seamless_service.client.cli import service_cmds
            service_cmds.add_parsers(sub)
        return parser
    m.build_parser = patched
    sys.exit(m.main(sys.argv[1:]))
""")


CLUSTERS = """\
local_cluster: lc
lc:
  type: local
  workers: 2
  frontends:
    - hashserver: {bufferdir: ~/buf}
      database: {database_dir: ~/db}
      jobserver: {conda: x, network_interface: 127.0.0.1, port_start: 60300, port_end: 60399}
rc:
  type: local
  frontends:
    - hostname: rc.invalid
      ssh_hostname: rc-ssh
      hashserver: {bufferdir: /srv/rc/buf}
      database: {database_dir: /srv/rc/db}
r2:
  frontends:
    - hostname: login.r2.invalid
      hashserver: {bufferdir: /srv/r2/buf}
xtra:
  type: local
  frontends:
    - hostname: xtra.invalid
      hashserver: {bufferdir: /srv/xtra/buf}
lh:
  type: local
  frontends:
    - hashserver: {bufferdir: ~/lhbuf}
"""


PROJECT = """\
- project: myproj
- cluster: lc
- stage s1:
  - cluster: xtra
  - project: other
"""


# a cluster defined in the project's own seamless.yaml
PROJECT_WITH_INLINE_CLUSTER = PROJECT + """\
- clusters:
    inline:
      frontends:
        - hostname: inline.invalid
          hashserver: {bufferdir: /srv/inline}
"""

# resolve arguments whose output must equal seamless-config's, byte for byte
SAME = [
    ["--service", "hashserver", "--workdir", "."],
    ["--service", "database", "--workdir", ".", "--stage", "fingertip"],
    ["--service", "database", "--workdir", ".", "--mode", "ro", "--subproject", "sub/a", "--stage", "s2"],
    ["--service", "jobserver", "--workdir", ".", "--stage", "s2", "--substage", "gpu"],
    ["--service", "hashserver", "--cluster", "lc", "--project", "other"],
    ["--service", "hashserver", "--cluster", "rc", "--project", "p", "--mode", "ro"],
    ["--service", "database", "--workdir", ".", "--cluster", "rc", "--subproject", "s"],
]

# a cluster with queues and two frontends that can both run a daskserver and a jobserver
# (not in CLUSTERS: the other tests' "known: lc, rc, ..." lists stay as they are)
DASK_CLUSTER = """\
dk:
  type: slurm
  workers: 2
  default_queue: main
  queues:
    main: {conda: dkenv, walltime: "01:00:00", memory: 4GB, cores: 2, unknown_task_duration: 1m,
           target_duration: 10m, maximum_jobs: 4}
    big: {TEMPLATE: main, conda: bigenv, memory: 64GB}
  frontends:
    - hostname: dk.invalid
      ssh_hostname: dk-ssh
      hashserver: {bufferdir: /srv/dk/buf}
      database: {database_dir: /srv/dk/db}
      daskserver: {network_interface: eth0, port_start: 61000, port_end: 61099}
      jobserver: {conda: jobenv, network_interface: eth0, port_start: 63000, port_end: 63099}
    - hostname: dk2.invalid
      hashserver: {bufferdir: /srv/dk2/buf}
      database: {database_dir: /srv/dk2/db}
      daskserver: {network_interface: ib0, port_start: 62000, port_end: 62099}
      jobserver: {conda: jobenv, network_interface: ib0, port_start: 63000, port_end: 63099}
"""


@dataclass
class Home:
    sandbox: object
    home: Path
    proj: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = self.sandbox.env()
        env.pop("SEAMLESS_CACHE", None)
        env.update(extra)
        return env


def make_home(sandbox, monkeypatch) -> Home:
    """The sandbox HOME with ~/.seamless/clusters.yaml and a project folder with seamless.yaml."""
    monkeypatch.delenv("SEAMLESS_CACHE", raising=False)
    (sandbox.home / ".seamless").mkdir()
    (sandbox.home / ".seamless" / "clusters.yaml").write_text(CLUSTERS)
    proj = sandbox.root / "proj"
    proj.mkdir()
    (proj / "seamless.yaml").write_text(PROJECT)
    return Home(sandbox, sandbox.home, proj)


def cli(home: Home, *argv: str, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """`seamless-service ARGV` as a subprocess."""
    return subprocess.run([sys.executable, "-c", SHIM, *argv], cwd=cwd or home.proj,
                          env=env or home.env(), capture_output=True, text=True, timeout=timeout)


def seamless_config_cli(home: Home, command: str, *argv: str, cwd: Path | None = None, env: dict | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """seamless-config's own `seamless-service-COMMAND ARGV`."""
    exe = str(Path(sys.executable).parent / f"seamless-service-{command}")
    return subprocess.run([exe, *argv], cwd=cwd or home.proj, env=env or home.env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seamless-service: ")
    return lines[0]


def remote_home(sandbox, monkeypatch, remote, *, ssh_hostname: bool = True) -> Home:
    home = make_home(sandbox, monkeypatch)
    frontend = f"    - hostname: {remote.alias}\n"
    if ssh_hostname:
        frontend += f"      ssh_hostname: {remote.alias}\n"
    with (home.home / ".seamless" / "clusters.yaml").open("a") as handle:
        handle.write("clu:\n  type: local\n  frontends:\n" + frontend +
                     "      hashserver: {bufferdir: ~/data/buffers}\n"
                     "      database: {database_dir: ~/data/db}\n")
    wrapper = sandbox.bin / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {remote.ssh_config} "$@"\n')
    wrapper.chmod(0o755)
    return home


SHARED = ["--service", "hashserver", "--cluster", "clu", "--project", "projA"]


TIMEOUT = 30.0


class Output:
    """Collects a child's output from a pipe or pty master in a thread."""

    def __init__(self, fd: int):
        self.fd = fd
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self.fd, 65536)
            except OSError:  # pty master after the child closed its side
                return
            if not data:
                return
            with self.lock:
                self.chunks.append(data)

    @property
    def text(self) -> str:
        with self.lock:
            return b"".join(self.chunks).decode(errors="replace")

    def wait_for(self, predicate, timeout: float = TIMEOUT) -> str:
        wait_for(lambda: predicate(self.text), timeout=timeout)
        return self.text


def interrupt(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, proc.stderr.read().decode()
