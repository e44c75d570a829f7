"""The `ps` world: a sandbox HOME with a local cluster `loc` whose services are launched
through remote-http-launcher (keys from seamless-service-resolve), data directories with
markers and files, and the row helpers the ps tests compare with (`World.build(root)`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from tests.support.cli import ndjson
from tests.support.services import VENV_BIN, LauncherSandbox


HS = ".HASHSERVER_PREFIX"


DB = "seamless.db"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when we return: nothing listens there


def file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


@dataclass
class World:
    box: LauncherSandbox
    proj: Path
    buf: Path
    db: Path
    keys: dict[str, str] = field(default_factory=dict)   # name -> key
    sizes: dict[str, int] = field(default_factory=dict)  # data dir -> bytes in it
    more_clusters: dict[str, Any] = field(default_factory=dict)  # written to clusters.yaml too

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, root: Path, *, dead_cluster: bool = True) -> "World":
        box = LauncherSandbox(root / "rhl")
        data = root / "data"
        world = cls(box, root / "proj", data / "buf", data / "db")
        world.proj.mkdir(parents=True)
        (world.proj / "seamless.yaml").write_text(yaml.safe_dump([{"project": "myproj"}, {"cluster": "loc"}]))
        world.write_clusters(dead=dead_cluster)
        world._data()
        return world

    def write_clusters(self, *, dead: bool) -> None:
        clusters: dict[str, Any] = {
            "local_cluster": "loc",
            "loc": {"type": "local", "frontends": [{
                "hashserver": {"bufferdir": str(self.buf), "network_interface": "127.0.0.1",
                               "port_start": 61000, "port_end": 61099},
                "database": {"database_dir": str(self.db), "network_interface": "127.0.0.1",
                             "port_start": 61100, "port_end": 61199},
            }]},
        }
        if dead:
            clusters["dead"] = {"type": "local", "frontends": [{
                "hostname": "dead.example.org", "ssh_hostname": "deadhost",
                "hashserver": {"bufferdir": "/srv/buf"}, "database": {"database_dir": "/srv/db"},
            }]}
            ssh_dir = self.box.home / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            (ssh_dir / "config").write_text(
                f"Host deadhost\n  HostName 127.0.0.1\n  Port {closed_port()}\n"
                "  BatchMode yes\n  ConnectTimeout 5\n  StrictHostKeyChecking yes\n")
        clusters.update(self.more_clusters)
        folder = self.box.home / ".seamless"
        folder.mkdir(exist_ok=True)
        (folder / "clusters.yaml").write_text(yaml.safe_dump(clusters, sort_keys=False))

    @contextlib.contextmanager
    def without_dead_cluster(self) -> Iterator[None]:
        self.write_clusters(dead=False)
        try:
            yield
        finally:
            self.write_clusters(dead=True)

    def _data(self) -> None:
        """Data dirs: the roots have no marker (#11); a subproject with a stage (#10)."""
        layout = {
            self.buf / "myproj": [(HS, 0), ("ab/ab" + "0" * 62, 1000), ("cd/cd" + "1" * 62, 2345)],
            self.buf / "myproj" / "STAGE-s1": [(HS, 0), ("ef/ef" + "2" * 62, 500)],
            self.buf / "myproj" / "sub": [(HS, 0), ("12/12" + "3" * 62, 300)],
            self.buf / "myproj" / "sub" / "STAGE-x": [(HS, 0), ("34/34" + "4" * 62, 200)],
            self.buf / "nomarker": [("file", 77)],
            self.db / "myproj": [(DB, 8192)],
            self.db / "myproj" / "STAGE-s1": [(DB, 4096)],
        }
        for folder, files in layout.items():
            for name, size in files:
                file(folder / name, size)
        # a directory's size is everything below it (a project dir includes its stages)
        for folder in layout:
            self.sizes[str(folder)] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    def resolve(self, service: str, *args: str) -> dict[str, Any]:
        result = subprocess.run([str(VENV_BIN / "seamless-service-resolve"), "--service", service,
                                 "--workdir", ".", *args], cwd=self.proj, env=self.box.env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def launch(self, name: str, service: str, *args: str, meta: dict | None = None,
               key: str | None = None, workdir: str | None = None) -> str:
        """Launch a toy service under the key seamless-service-resolve gives (or `key`)."""
        if key is None:
            resolved = self.resolve(service, *args)
            key, workdir = resolved["key"], resolved["workdir"]
        state = self.box.launch(key, workdir or self.box.root / "work" / key, meta=meta)
        assert state["status"] == "running", state
        self.keys[name] = key
        return key

    def env(self, **extra: str) -> dict[str, str]:
        env = self.box.env()
        env["SEAMLESS_SERVICE_NO_DAEMON"] = "1"
        env.pop("SEAMLESS_CACHE", None)
        env.update(extra)
        return env

    # ------------------------------------------------------------------ running ps

    def old_ps(self, *argv: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        """seamless-config's seamless-service-ps on the same state."""
        return subprocess.run([str(VENV_BIN / "seamless-service-ps"), *argv], cwd=cwd or self.proj,
                              env=self.env(**env), capture_output=True, text=True, timeout=120)

    def old_json(self, *argv: str, **env: str) -> list[dict[str, Any]]:
        result = self.old_ps(*argv, "--json", **env)
        assert result.returncode == 0, result.stderr
        return ndjson(result.stdout)

    def new_ps(self, *argv: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        """`seamless-service ps` as a user runs it (its own process, no keeper)."""
        return subprocess.run([sys.executable, "-m", "seamless_service.client.entry", "ps", *argv],
                              cwd=cwd or self.proj, env=self.env(**env), capture_output=True, text=True,
                              timeout=120)

    @contextlib.contextmanager
    def inside(self, **env: str) -> Iterator[None]:
        """This process sees the sandbox (HOME, PATH) and stands in the project directory."""
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        wanted = self.env(**env)  # built from os.environ: before clearing it
        os.environ.clear()
        os.environ.update(wanted)
        os.chdir(self.proj)
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)

    def ps(self, *argv: str, cwd: Path | None = None, **env: str) -> tuple[int, str, str]:
        """`seamless-service ps ARGV` in this process (fast): (exit code, stdout, stderr)."""
        from seamless_service.client.cli.main import main

        out, err = io.StringIO(), io.StringIO()
        with self.inside(**env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if cwd is not None:
                os.chdir(cwd)
            code = main(["ps", *argv])
        return code, out.getvalue(), err.getvalue()

    def ps_json(self, *argv: str, **env: str) -> list[dict[str, Any]]:
        code, out, err = self.ps(*argv, "--json", **env)
        assert code == 0, err
        return ndjson(out)


JOB_META = {"service": "jobserver", "cluster": "loc", "mode": "rw", "project": "myproj", "subproject": None,
            "stage": "s1", "substage": None, "queue": None}


COMPARED = ("service", "cluster", "project", "stage", "process", "port", "persistent", "path")


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows if r["key"]}


def by_path(rows: list[dict]) -> dict[str, dict]:
    """Persistent-only rows (no process) by path."""
    return {r["path"]: r for r in rows if r["key"] is None}


def pick(row: dict, fields=COMPARED) -> dict:
    return {f: row.get(f) for f in fields}


def as_user(server, relpath: str, text: str) -> None:
    """A file in the remote user's HOME, owned by that user (as the user would have it)."""
    server.write_file(relpath, text)


def link_helpers(server) -> None:
    """~/miniforge3/bin/rhl-* -> the deployed agent venv's (the ssh transport's PATH prefix
    looks there, as on a cluster where the helpers come from the user's conda base)."""
    import pwd

    pw = pwd.getpwnam(server.user)
    venv_bin = server.home / ".local/share/seamless-service/agent-venv/bin"
    as_user(server, "miniforge3/bin/.keep", "")
    for helper in sorted(venv_bin.glob("rhl-*")):
        link = server.home / "miniforge3/bin" / helper.name
        if not link.exists():
            link.symlink_to(helper)
            os.lchown(link, pw.pw_uid, pw.pw_gid)
