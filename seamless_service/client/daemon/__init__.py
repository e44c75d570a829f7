"""The per-user client daemon ("tunnel keeper") and where it lives.

A short-lived `seamless-service` process must not pay heavy imports (paramiko, sshtunnel,
rpyc: ~370 ms) nor an SSH handshake (~300 ms) per call, so one long-lived process per user
keeps those and runs CLI commands on the thin client's behalf, like ssh's ControlPersist.

    framing.py  length-prefixed msgpack frames over a unix socket
    server.py   the daemon process (python -m seamless_service.client.daemon.server)
    client.py   talking to it, starting it on demand
    pool.py     the long-lived per-host objects it keeps between calls

This module only knows the folder layout: it is imported by the thin entry point on every
call, so it imports nothing but os and stat.

Folder: $SEAMLESS_SERVICE_DAEMON_DIR if set, else $XDG_RUNTIME_DIR/seamless-service when
that runtime dir is usable, else $XDG_CACHE_HOME (default ~/.cache)/seamless-service/run.
It must be a real directory owned by this user with mode 0700: the socket inside is the
only thing keeping other users away from our SSH connections (SO_PEERCRED is checked
too, as a second wall).
"""

from __future__ import annotations

import os
import stat

SOCKET_NAME = "daemon.sock"
LOCK_NAME = "daemon.lock"
LOG_NAME = "daemon.log"

# The installed package this code runs from: a daemon only serves clients of the same
# installation (two venvs of one user must not run each other's code).
INSTALL_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

# Linux sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class DaemonDirError(Exception):
    """The daemon folder cannot be used safely; the message is one readable line."""


def _runtime_dir() -> str | None:
    path = os.environ.get("XDG_RUNTIME_DIR")
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    # "Usable": a directory that is ours and that we can write; anything else (a stale
    # variable after `su`, a root-owned /run/user/0 seen by another uid) is ignored.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        return None
    return os.path.join(path, "seamless-service")


def daemon_dir() -> str:
    """The folder that holds the socket, the lock file and the log."""
    override = os.environ.get("SEAMLESS_SERVICE_DAEMON_DIR")
    if override:
        return os.path.abspath(os.path.expanduser(override))
    runtime = _runtime_dir()
    if runtime:
        return runtime
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "seamless-service", "run")


def socket_path(folder: str | None = None) -> str:
    return os.path.join(folder or daemon_dir(), SOCKET_NAME)


def lock_path(folder: str | None = None) -> str:
    return os.path.join(folder or daemon_dir(), LOCK_NAME)


def log_path(folder: str | None = None) -> str:
    return os.path.join(folder or daemon_dir(), LOG_NAME)


def check_dir(folder: str, *, create: bool) -> bool:
    """Make sure `folder` is safe to use; return False if it does not exist (and not create).

    Safe means: a real directory (not a symlink), owned by us, mode 0700. A looser mode on
    our own folder is tightened; a folder owned by someone else is refused, because its
    owner could plant a socket that impersonates the daemon or read what we send.
    """
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        if not create:
            return False
        # Parents (e.g. ~/.cache/seamless-service) are made private too: nothing else
        # belongs in them.
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        raise DaemonDirError(f"cannot use daemon folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DaemonDirError(f"refusing daemon folder {folder}: not a directory (or a symlink)")
    if st.st_uid != os.getuid():
        raise DaemonDirError(
            f"refusing daemon folder {folder}: owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        try:
            os.chmod(folder, 0o700)
        except OSError as exc:
            raise DaemonDirError(
                f"refusing daemon folder {folder}: mode {stat.S_IMODE(st.st_mode):o} and cannot chmod 700 ({exc.strerror})"
            ) from None
    path = socket_path(folder)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise DaemonDirError(
            f"daemon socket path too long ({len(os.fsencode(path))} > {MAX_SOCKET_PATH} bytes): "
            "set SEAMLESS_SERVICE_DAEMON_DIR to a shorter folder"
        )
    return True
