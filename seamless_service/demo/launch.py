"""`seamless-service demo start|stop`: a few real services on this machine, launched through
remote-http-launcher exactly as Seamless launches its own, so that `ps --local` has
something real to show (state files, pids, ports, logs, data directories with sizes).

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
from pathlib import Path
from typing import Any

import yaml

from ..client.daemon import uid_name
from ..deploy.cache import cache_root, write_private

DEMO_KEYS = {
    # key -> (data subfolder or None, marker or data file)
    "hashserver-demo-rw-tour": ("buffers/tour", ".HASHSERVER_PREFIX"),
    "database-demo-rw-tour": ("db/tour", "seamless.db"),
    "jobserver-demo-rw-tour--STAGE-try": (None, None),
}
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


def _open_private_dir(path: Path, dir_fd: int | None = None) -> int:
    """An fd of the directory `path` (its last part relative to `dir_fd` if given), never
    through a symlink, if it is ours and open to nobody else; else DemoFolderError."""
    name = path if dir_fd is None else path.name
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):   # which one a link gives depends on the flags
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                    reason = "it is a symbolic link"
        raise DemoFolderError(f"cannot use {path}: {reason}") from None
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.getuid():
        problem = f"owned by {uid_name(st.st_uid)}, not by you"
    elif stat.S_IMODE(st.st_mode) & 0o077:
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
                pass   # from an earlier start: reused only while still private (next line)
            fd_next = _open_private_dir(path, dir_fd=fd)
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


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["RHL_TOOLS_YAML"] = str(TOOLS_YAML)
    # The launcher runs rhl-* helpers and the demo binary by name: ours come first.
    env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")])
    env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)  # the launcher misreads it (anchor §6 #24)
    return env


def _prepare_data(root: Path, root_fd: int, key: str, sub: str | None, marker: str | None) -> Path:
    relative = sub if sub is not None else f"work/{key}"
    fd = _subdirs(root, root_fd, relative)
    try:
        if marker == ".HASHSERVER_PREFIX":
            _write_new(fd, marker, b"")
            for i in range(40):  # a few "buffers", named by checksum like a hashserver's
                _write_new(fd, f"{i:064x}", os.urandom(1000 + 250 * i))
        elif marker == "seamless.db":
            _write_new(fd, marker, b"SQLite format 3\x00" + os.urandom(20_000))
    finally:
        os.close(fd)
    return root / relative


def _prepare(keys: list[str] | None = None) -> Path:
    """Data folders, data files and launcher configs of the demo keys to launch (all by
    default; a running service's data is left as it is); the data root."""
    root, root_fd = _open_root()
    try:
        configs_fd = _subdirs(root, root_fd, "configs")
        try:
            for key in DEMO_KEYS if keys is None else keys:
                config = {
                    "workdir": str(_prepare_data(root, root_fd, key, *DEMO_KEYS[key])), "key": key,
                    "command": "seamless-service-demo --status-file {status_file}",
                    "network_interface": "127.0.0.1", "handshake": "healthcheck", "timeout": 20,
                }
                _write_new(configs_fd, f"{key}.yaml", yaml.safe_dump(config).encode())
        finally:
            os.close(configs_fd)
    finally:
        os.close(root_fd)
    return root


def _running() -> set[str]:
    """The demo keys whose service runs now (the launcher would only reuse them)."""
    from ..client.local import LocalTransport, unwrap

    with LocalTransport() as transport:
        rows = unwrap(transport.batch([("ps", {"side": "server", "status": "running"})])[0],
                      host="localhost")["rows"]
    return {row.get("key") for row in rows} & set(DEMO_KEYS)


NEXT_STEPS = """next, try:
  seamless-service ps --local --persistent --health
  seamless-service logs --local --service hashserver --tail 5
  seamless-service inspect --local --service database
  seamless-service demo stop        (stops the demo services and removes their data)"""


def start(*, echo: Any = print) -> int:
    launcher = BIN_DIR / "remote-http-launcher"
    if not launcher.exists():
        echo("seamless-service demo: remote-http-launcher is not installed next to this Python", file=sys.stderr)
        return 1
    running = _running()
    to_start = [key for key in DEMO_KEYS if key not in running]
    try:
        root = _prepare(to_start)
    except DemoFolderError as exc:
        echo(f"seamless-service demo: {exc}; 'seamless-service demo stop' forgets that folder, "
             "then start again", file=sys.stderr)
        return 1
    except OSError as exc:
        echo(f"seamless-service demo: cannot write the demo data: {exc.strerror or exc}"
             + (f" ({exc.filename})" if exc.filename else ""), file=sys.stderr)
        return 1
    failures = 0
    for key in DEMO_KEYS:
        if key in running:
            echo(f"{key}: already running")
            continue
        path = root / "configs" / f"{key}.yaml"
        result = subprocess.run([str(launcher), str(path)], env=_env(), capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        if result.returncode == 0:
            echo(f"{key}: started")
        else:
            failures += 1
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            echo(f"seamless-service demo: could not start {key}: {last[0]}", file=sys.stderr)
    if failures == 0:
        echo(NEXT_STEPS)
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
