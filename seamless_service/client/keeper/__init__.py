"""The per-user tunnel keeper and where it lives.

A short-lived `seamless-service` process must not pay heavy imports (paramiko, sshtunnel,
rpyc: ~370 ms) nor an SSH handshake (~300 ms) per call, so one long-lived process per user
keeps those and runs CLI commands on the thin client's behalf, like ssh's ControlPersist.

    framing.py  length-prefixed frames (a small tagged encoding) over a unix socket
    server.py   the keeper process (python -m seamless_service.client.keeper.server)
    client.py   talking to it, starting it on demand

The long-lived per-host objects it keeps between calls are in transport/pool.py: the pool
belongs to the transports, the keeper only makes pooled transports outlive a command
(server.py: `default_pool.keep_between_commands(cancel_flag)`, the flag being the keeper's).

This module only knows the folder layout: it is imported by the thin entry point on every
call, so it imports nothing but os and stat.

Folder: $SEAMLESS_SERVICE_DAEMON_DIR if set, else $XDG_RUNTIME_DIR/seamless-service when
that runtime dir is usable, else $XDG_CACHE_HOME (default ~/.cache)/seamless-service/run.
It must be a real directory owned by this user with mode 0700, checked on every connect:
the socket inside is what keeps other users away from our SSH connections, and the
client sends it our whole environment. Both ends check SO_PEERCRED too, as a second wall
(a socket planted while the folder was open, or a folder swapped after the check).
"""

import os
import stat

SOCKET_NAME = "daemon.sock"
LOCK_NAME = "daemon.lock"
LOG_NAME = "daemon.log"

# The installed package this code runs from: a keeper only serves clients of the same
# installation (two venvs of one user must not run each other's code). As imported, not
# resolved: realpath costs ~50-80 us of every thin-client call, and the keeper, which is
# started on this very path, compares resolved paths only when they differ as given.
INSTALL_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Linux sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class KeeperDirError(Exception):
    """The keeper folder cannot be used safely; the message is one readable line."""


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


def keeper_dir() -> str:
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
    return os.path.join(folder or keeper_dir(), SOCKET_NAME)


def lock_path(folder: str | None = None) -> str:
    return os.path.join(folder or keeper_dir(), LOCK_NAME)


def log_path(folder: str | None = None) -> str:
    return os.path.join(folder or keeper_dir(), LOG_NAME)


def _make_private(folder: str) -> None:
    """Create `folder` and every missing folder above it with mode 0700.

    os.makedirs gives only the last folder its mode: ~/.cache/seamless-service would be
    0755 until the first cache write tightened it. Nothing but ours belongs in them."""
    missing = []
    path = folder
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass   # made meanwhile by a racing start; the checks below judge the result


def uid_name(uid: int) -> str:
    """'uid N (name)', for messages about someone else's file."""
    import pwd   # only on a refusal

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _foreign_socket(folder: str) -> str:
    """', and <socket> in it belongs to uid N (name)' when someone else's socket is there."""
    try:
        st = os.lstat(socket_path(folder))
    except OSError:
        return ""
    if st.st_uid == os.getuid():
        return ""
    return f", and {SOCKET_NAME} in it belongs to {uid_name(st.st_uid)}"


def check_dir(folder: str, *, create: bool) -> bool:
    """Make sure `folder` is safe to use; return False if it does not exist (and not create).

    Called on every connect, not only when the folder is made. Safe means: a real
    directory (not a symlink), owned by us, writable by nobody else. A folder that others
    could write in is refused, never tightened: they may already have planted a socket
    that impersonates the keeper (reading the environment we send, answering with fake
    output). Mode bits that only let others read or enter it (an old 0755) are tightened
    to 0700. Raises KeeperDirError with one readable line.
    """
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        if not create:
            return False
        try:
            _make_private(folder)
            st = os.lstat(folder)
        except OSError as exc:
            raise KeeperDirError(f"cannot create daemon folder {folder}: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise KeeperDirError(f"cannot use daemon folder {folder}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise KeeperDirError(f"refusing daemon folder {folder}: not a directory (or a symlink)")
    if st.st_uid != os.getuid():
        raise KeeperDirError(
            f"refusing daemon folder {folder}: owned by {uid_name(st.st_uid)}, not by you (uid {os.getuid()}); "
            "set SEAMLESS_SERVICE_DAEMON_DIR to a private folder of yours"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise KeeperDirError(
            f"refusing daemon folder {folder}: mode {mode:o} lets other users write in it{_foreign_socket(folder)}; "
            "remove it, or set SEAMLESS_SERVICE_DAEMON_DIR to a private folder (mode 700) of yours"
        )
    if mode != 0o700:
        try:
            os.chmod(folder, 0o700)
        except OSError as exc:
            raise KeeperDirError(
                f"refusing daemon folder {folder}: mode {mode:o} and cannot chmod 700 ({exc.strerror})"
            ) from exc
    path = socket_path(folder)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise KeeperDirError(
            f"daemon socket path too long ({len(os.fsencode(path))} > {MAX_SOCKET_PATH} bytes): "
            "set SEAMLESS_SERVICE_DAEMON_DIR to a shorter folder"
        )
    return True
