"""`seamless-service demo start|stop`: a few real services on this machine, launched through
remote-http-launcher exactly as Seamless launches its own, so that `ps --local` has
something real to show (state files, pids, ports, logs, data directories with sizes).

When the real Seamless services are installed (`seamless-service[services]`: their
executables next to this Python or on PATH), the hashserver and the database are the real
`hashserver` and `seamless-database`, configured as Seamless configures them (real.py), and
a few real buffers go through their HTTP APIs. The jobserver is always the small built-in
service (service.py): a real seamless-jobserver needs Seamless' transformer and workers.
Without the real services, all three are the built-in one, with stand-in data files.

Where the demo data lives: not under a dot folder of $HOME (~/.local/share, ~/.cache),
which the path policy refuses, but in a fresh private folder under the system temp folder,
made by mkdtemp (0700, a name nobody can predict or take first). Its path is recorded in
the user's private cache folder, per launcher state folder (which lives under HOME), so
that `demo stop` finds and removes it and two sandboxes of one user never clear each
other's demo data. A recorded folder is reused only while it is still this user's own
private folder, and nothing in it is written through a link: folders are opened with
O_NOFOLLOW and checked (owner, mode), files are created with O_EXCL | O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
from pathlib import Path
from typing import Any

import yaml

from ..agent import paths
from ..agent.statefiles import StateFileError, read_state
from ..client.keeper import uid_name
from ..deploy.cache import cache_root, write_private
from . import real

DEMO_KEYS = {
    # key -> (data subfolder or None, marker or data file)
    "hashserver-demo-rw-tour": ("buffers/tour", ".HASHSERVER_PREFIX"),
    "database-demo-rw-tour": ("db/tour", "seamless.db"),
    "jobserver-demo-rw-tour--STAGE-try": (None, None),
}
# The keys the real services take over, with the launcher's tool name: real.launcher_config
# of cluster "demo", project "tour" evaluates to exactly these keys.
REAL_KEYS = {"hashserver-demo-rw-tour": "hashserver", "database-demo-rw-tour": "database"}
DEMO_CLUSTER, DEMO_PROJECT = "demo", "tour"
TOOLS_YAML = Path(__file__).with_name("tools.yaml")
BIN_DIR = Path(sys.executable).parent


class DemoFolderError(Exception):
    """A folder the demo would use is not the user's own private folder (one line)."""


def _record() -> Path:
    """The file that holds this HOME's demo data folder: per launcher state folder, so two
    sandboxes (different HOME) of one user, even with one XDG cache, keep apart."""
    launcher_dir = str(Path("~/.remote-http-launcher").expanduser())
    tag = hashlib.sha256(launcher_dir.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return cache_root() / "demo" / f"root-{tag}"


def demo_root() -> Path | None:
    """The demo data folder `demo start` made for this HOME, or None if there is none."""
    try:
        text = _record().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(text) if text.startswith("/") else None


def _open_private_dir(path: Path, dir_fd: int | None = None, *, any_mode: bool = False) -> int:
    """An fd of the directory `path` (its last part relative to `dir_fd` if given), never
    through a symlink, if it is ours and open to nobody else (any mode if `any_mode`);
    else DemoFolderError."""
    name = path if dir_fd is None else path.name
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):   # which one a link gives depends on the flags
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                    reason = "it is a symbolic link"
        raise DemoFolderError(f"cannot use {path}: {reason}") from exc
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.getuid():
        problem = f"owned by {uid_name(st.st_uid)}, not by you"
    elif stat.S_IMODE(st.st_mode) & 0o077 and not any_mode:
        problem = f"mode {stat.S_IMODE(st.st_mode):o} opens it to other users"
    if problem:
        os.close(fd)
        raise DemoFolderError(f"refusing {path}: {problem}")
    return fd


def _subdirs(root: Path, root_fd: int, relative: str) -> int:
    """An fd of root/relative, each folder on the way made 0700, or checked if it exists."""
    fd, path = os.dup(root_fd), root
    for name in relative.split("/"):
        path = path / name
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                pass   # from an earlier start: reused only while still ours (next line)
            # Below the private root only the owner matters: nobody else can reach in, and
            # a real hashserver opens its own folder up (chmod 3775) on every start.
            fd_next = _open_private_dir(path, dir_fd=fd, any_mode=True)
        finally:
            os.close(fd)
        fd = fd_next
    return fd


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    """Write `name` in the folder as a new 0600 file; whatever was there (a link too) is
    replaced, never written through."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _open_root() -> tuple[Path, int]:
    """The demo data folder (recorded, or made now and recorded) and an fd of it."""
    root = demo_root()
    if root is not None and os.path.lexists(root):
        return root, _open_private_dir(root)
    root = Path(tempfile.mkdtemp(prefix=f"seamless-service-demo-{os.getuid()}-"))
    write_private(_record(), str(root).encode("utf-8", "surrogateescape"))
    return root, _open_private_dir(root)


def _env(*, for_real: bool = False) -> dict[str, str]:
    """The launcher's environment: the built-in service needs the demo's whitelist; the
    real services are launched under the launcher's own, as Seamless launches them."""
    env = dict(os.environ)
    if for_real:
        env.pop("RHL_TOOLS_YAML", None)
    else:
        env["RHL_TOOLS_YAML"] = str(TOOLS_YAML)
    # The launcher runs rhl-* helpers and the service binaries by name: ours come first.
    env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")])
    env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)  # the launcher misreads it (README, Deliberate differences #24)
    return env


def real_services_installed() -> bool:
    """Are the real hashserver and seamless-database where the launcher will look for them?"""
    return not real.missing_services(_env(for_real=True)["PATH"])


def _prepare_data(root: Path, root_fd: int, key: str, sub: str | None, marker: str | None,
                  *, stand_in: bool = True) -> Path:
    """The key's data folder; with stand-in data files for the built-in service (a real
    service writes its own marker and database file, and gets real buffers later)."""
    relative = sub if sub is not None else f"work/{key}"
    fd = _subdirs(root, root_fd, relative)
    try:
        if stand_in and marker == ".HASHSERVER_PREFIX":
            _write_new(fd, marker, b"")
            for i in range(40):  # a few "buffers", named by checksum like a hashserver's
                _write_new(fd, f"{i:064x}", os.urandom(1000 + 250 * i))
        elif stand_in and marker == "seamless.db":
            _write_new(fd, marker, b"SQLite format 3\x00" + os.urandom(20_000))
    finally:
        os.close(fd)
    return root / relative


def _config(root: Path, root_fd: int, key: str, use_real: bool) -> dict[str, Any]:
    tool = REAL_KEYS.get(key) if use_real else None
    workdir = _prepare_data(root, root_fd, key, *DEMO_KEYS[key], stand_in=tool is None)
    if tool is None:
        return {"workdir": str(workdir), "key": key,
                "command": "seamless-service-demo --status-file {status_file}",
                "network_interface": "127.0.0.1", "handshake": "healthcheck", "timeout": 20}
    config = real.launcher_config(tool, data_root=root, cluster=DEMO_CLUSTER, project=DEMO_PROJECT)
    if config["workdir"] != str(workdir):   # the launcher's tools.yaml changed its layout
        raise DemoFolderError(f"the launcher's tools.yaml puts {key}'s data in {config['workdir']}, "
                              f"not in {workdir}")
    return config


def _prepare(keys: list[str] | None = None, use_real: bool = False) -> Path:
    """Data folders, data files and launcher configs of the demo keys to launch (all by
    default; a running service's data is left as it is); the data root."""
    root, root_fd = _open_root()
    try:
        configs_fd = _subdirs(root, root_fd, "configs")
        try:
            for key in DEMO_KEYS if keys is None else keys:
                config = _config(root, root_fd, key, use_real)
                _write_new(configs_fd, f"{key}.yaml", yaml.safe_dump(config).encode())
        finally:
            os.close(configs_fd)
    finally:
        os.close(root_fd)
    return root


def _running() -> set[str]:
    """The demo keys whose service runs now (the launcher would only reuse them)."""
    from ..client.transport.local import LocalTransport, unwrap

    with LocalTransport() as transport:
        rows = unwrap(transport.batch([("ps", {"side": "server", "status": "running"})])[0],
                      host="localhost")["rows"]
    return {row.get("key") for row in rows} & set(DEMO_KEYS)


NEXT_STEPS = """next, try:
  seamless-service ps --local --persistent --health
  seamless-service logs --local --service hashserver --tail 5
  seamless-service inspect --local --service database
  seamless-service demo stop        (stops the demo services and removes their data)"""


def _server_state(key: str) -> dict[str, Any]:
    """The launcher's server state of `key` (the launcher ran without REMOTE_HTTP_LAUNCHER_DIR)."""
    try:
        state = read_state(paths.server_dir(Path(paths.BASE_DEFAULT).expanduser()) / f"{key}.json")
    except StateFileError:
        return {}
    return state or {}


def _program(state: dict[str, Any]) -> str:
    """The executable a state's command line starts with ("" if none)."""
    words = str(state.get("command") or "").split()
    return os.path.basename(words[0]) if words else ""


def _seed(key: str, state: dict[str, Any]) -> str | None:
    """Put the demo buffers through the real service of `key`; why not, or None."""
    port = state.get("port")
    if not isinstance(port, int):
        return f"no port in its state: {state.get('status', 'no state')}"
    host = "127.0.0.1"
    buffers = real.demo_buffers()
    try:
        if REAL_KEYS[key] == "hashserver":
            real.seed_hashserver(host, port, buffers)
        else:
            real.seed_database(host, port, buffers)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", None) or exc)
    return None


def _which_ran(programs: dict[str, str]) -> str:
    """One line: which services ran (the real ones, or the built-in stand-in)."""
    reals = sorted(p for p in programs.values() if p in real.REAL_SERVICES.values())
    if reals:
        return f"services: the real {' and '.join(reals)}; the jobserver is the built-in demo service"
    return ("services: the built-in demo service "
            "(pip install 'seamless-service[services]' for the real hashserver and seamless-database)")


def start(*, echo: Any = print) -> int:
    launcher = BIN_DIR / "remote-http-launcher"
    if not launcher.exists():
        echo("seamless-service demo: remote-http-launcher is not installed next to this Python", file=sys.stderr)
        return 1
    running = _running()
    to_start = [key for key in DEMO_KEYS if key not in running]
    use_real = real_services_installed()
    try:
        root = _prepare(to_start, use_real)
    except DemoFolderError as exc:
        echo(f"seamless-service demo: {exc}; 'seamless-service demo stop' forgets that folder, "
             "then start again", file=sys.stderr)
        return 1
    except OSError as exc:
        echo(f"seamless-service demo: cannot write the demo data: {exc.strerror or exc}"
             + (f" ({exc.filename})" if exc.filename else ""), file=sys.stderr)
        return 1
    failures = 0
    programs: dict[str, str] = {}
    for key in DEMO_KEYS:
        if key in running:
            programs[key] = _program(_server_state(key))
            echo(f"{key}: already running")
            continue
        path = root / "configs" / f"{key}.yaml"
        env = _env(for_real=use_real and key in REAL_KEYS)
        result = subprocess.run([str(launcher), str(path)], env=env, capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            failures += 1
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            echo(f"seamless-service demo: could not start {key}: {last[0]}", file=sys.stderr)
            continue
        state = _server_state(key)
        if not state:   # e.g. the launcher's tools.yaml now makes another key
            failures += 1
            echo(f"seamless-service demo: the launcher reported success but wrote no state for {key}",
                 file=sys.stderr)
            continue
        programs[key] = _program(state)
        # Seeded by what runs (a service already running from an earlier start may be the
        # other kind): only a real service has an API to put buffers through.
        problem = _seed(key, state) if programs[key] in real.REAL_SERVICES.values() else None
        if problem is not None:
            failures += 1
            echo(f"seamless-service demo: started {key}, but could not put the demo data into it: {problem}",
                 file=sys.stderr)
            continue
        echo(f"{key}: started")
    if programs:
        echo(_which_ran(programs))
    if failures == 0:
        echo(NEXT_STEPS)
    return 1 if failures else 0


def stop(*, echo: Any = print) -> int:
    from ..client.transport.local import LocalTransport, unwrap

    keys = list(DEMO_KEYS)
    with LocalTransport() as transport:
        stop_result, rm_result = transport.batch([("stop", {"keys": keys}), ("rm", {"keys": keys, "force": True})])
        stopped = unwrap(stop_result, host="localhost")
        unwrap(rm_result, host="localhost")
    for item in stopped["results"]:
        echo(f"{item['key']}: {item['outcome']}")
    return _remove_root(echo)


def _remove_root(echo: Any) -> int:
    """Remove the recorded demo data folder, if it is still ours, and forget it."""
    root = demo_root()
    code = 0
    if root is not None and os.path.lexists(root):
        try:
            os.close(_open_private_dir(root))
            shutil.rmtree(root)   # fd-based on Linux: never follows a link inside
        except DemoFolderError as exc:
            echo(f"seamless-service demo: left {root} alone: {exc}", file=sys.stderr)
            code = 1
        except OSError as exc:
            echo(f"seamless-service demo: could not remove {root}: {exc.strerror or exc}", file=sys.stderr)
            code = 1
    try:
        _record().unlink()
    except FileNotFoundError:
        pass
    return code


def describe() -> dict[str, Any]:
    root = demo_root()
    return {"root": str(root) if root else None, "keys": list(DEMO_KEYS), "tools_yaml": str(TOOLS_YAML)}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(describe()))
