"""Talking to the tunnel keeper: connect (starting it on demand), run a command, status, stop.

Imported by the thin entry point on every call, so it imports only builtin modules (os,
sys, time, the C `_socket`) and framing.py, which imports nothing more; subprocess is
imported only when a keeper must be started.

Errors, each one line:
  KeeperUnavailable  the request was never delivered (no keeper and none could be
                     started, unsafe folder, ...): the caller may run the command itself.
  NotRunning         (a KeeperUnavailable) no keeper, and we were told not to start one.
  KeeperBusy         (a KeeperUnavailable) the keeper is running another command and this
                     one was not to wait for its turn (run(busy_wait=...)); nothing ran.
  KeeperLost         the keeper took the request and then went away: the command may have
                     run partly, so it must NOT be re-run in-process.
  KeeperImpostor     another user's process listens on our keeper socket: nothing was
                     sent to it (our environment holds tokens); the command is refused
                     rather than run here, so that the user looks into it.
"""

import os
# `_socket`, the C module: everything used here (AF_UNIX sockets, timeouts, SO_PEERCRED)
# is in it, and socket.py's enum conversions cost ~2 ms of every thin-client call.
import _socket as socket
import sys
import time

# typing costs ~3 ms to import: this module is on every CLI call's path. The names are
# only needed by type checkers; the annotations that use them are strings. No
# `from __future__ import annotations` either: that statement imports a module too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence, TextIO

from ... import __version__
from ..errors import ServiceError
from . import INSTALL_DIR, KeeperDirError, check_dir, keeper_dir, log_path, socket_path, uid_name
from . import framing
from .framing import ReplyCode

START_TIMEOUT = 10.0      # spawn -> socket answering
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0      # ping/status/stop; "run" waits as long as the command runs
LOG_ROTATE_BYTES = 1 << 20
RUN_ATTEMPTS = 3


class KeeperUnavailable(ServiceError):
    pass


class NotRunning(KeeperUnavailable):
    pass


class KeeperBusy(KeeperUnavailable):
    pass


class KeeperLost(ServiceError):
    pass


class KeeperImpostor(ServiceError):
    pass


def refusal(reply: "dict[str, Any]") -> ServiceError:
    """The error for a request the keeper refused (`{"ok": False, "code"?, "error"}`) that
    the caller does not handle itself (it retries on ReplyCode.RETRY and VERSION)."""
    if reply.get("code") == ReplyCode.BUSY:
        return KeeperBusy(reply.get("error") or "the tunnel keeper is busy")
    return KeeperLost(f"tunnel keeper: {reply.get('error', 'unknown error')}")


# -- connecting --------------------------------------------------------------------------


def _try_connect(path: str) -> socket.socket | None:
    """A connected socket, or None when nobody listens (no socket file, or a stale one
    left by a killed keeper: connection refused)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
        _check_peer(sock, path)
        return sock
    except KeeperImpostor:
        sock.close()
        raise
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except socket.timeout as exc:
        sock.close()
        raise KeeperUnavailable(f"the tunnel keeper at {path} does not accept connections") from exc
    except OSError as exc:
        sock.close()
        raise KeeperUnavailable(f"cannot connect to the tunnel keeper at {path}: {exc.strerror or exc}") from exc


def _check_peer(sock: socket.socket, path: str) -> None:
    """Refuse a socket served by another user, before anything is sent on it.

    The folder checks are not enough: a socket planted while the folder was open to
    others survives a later chmod, and the folder can be swapped between the check and
    the connect where its parent is writable by others."""
    uid = framing.peer_uid(sock)
    if uid is not None and uid != os.getuid():
        raise KeeperImpostor(
            f"refusing the tunnel keeper socket {path}: it is served by {uid_name(uid)}, not by you "
            f"(uid {os.getuid()}), so nothing was sent to it; remove that socket, or set "
            "SEAMLESS_SERVICE_DAEMON_DIR to a private folder of yours")


def connect(*, start: bool) -> socket.socket:
    """A socket connected to the keeper; with `start`, spawn one if none runs."""
    folder = keeper_dir()
    try:
        exists = check_dir(folder, create=start)
    except KeeperDirError as exc:
        raise KeeperUnavailable(str(exc)) from exc
    except OSError as exc:
        raise KeeperUnavailable(f"cannot create daemon folder {folder}: {exc.strerror or exc}") from exc
    path = socket_path(folder)
    sock = _try_connect(path) if exists else None
    if sock is not None:
        return sock
    if not start:
        raise NotRunning("no tunnel keeper running")
    return _start_and_connect(folder, path)


def _open_log(folder: str) -> int:
    path = log_path(folder)
    try:
        if os.path.getsize(path) > LOG_ROTATE_BYTES:
            os.replace(path, path + ".1")
    except OSError:
        pass
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _last_log_line(folder: str) -> str:
    try:
        with open(log_path(folder), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _start_and_connect(folder: str, path: str) -> socket.socket:
    import subprocess

    env = dict(os.environ)
    # The keeper must import this very installation, even when it was found through
    # PYTHONPATH or a working directory rather than site-packages.
    root = os.path.dirname(INSTALL_DIR)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("SEAMLESS_SERVICE_NO_DAEMON", None)
    try:
        log_fd = _open_log(folder)
    except OSError as exc:   # e.g. the folder was removed since check_dir made it
        raise KeeperUnavailable(f"cannot open {log_path(folder)}: {exc.strerror or exc}") from exc
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seamless_service.client.keeper.server"],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, cwd=folder, env=env,
            start_new_session=True, close_fds=True,   # no terminal, no Ctrl-C from it
        )
    except OSError as exc:
        raise KeeperUnavailable(f"cannot start the tunnel keeper: {exc.strerror or exc}") from exc
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        sock = _try_connect(path)
        if sock is not None:
            return sock
        code = proc.poll()
        # Exit 0 means another keeper won the start race: keep waiting for its socket.
        if code not in (None, 0):
            detail = _last_log_line(folder)
            raise KeeperUnavailable(f"the tunnel keeper failed to start{': ' + detail if detail else ''}")
        if time.monotonic() > deadline:
            raise KeeperUnavailable(
                f"the tunnel keeper did not start within {START_TIMEOUT:g} s (see {log_path(folder)})")
        time.sleep(0.02)


def request(message: "dict[str, Any]", *, start: bool = False) -> "dict[str, Any]":
    """Send one request and return the one reply (not for "run": see run())."""
    try:
        return _request_once(message, start=start)
    except framing.OlderKeeper:
        stop_older_keeper()
        return _request_once(message, start=start)


def _request_once(message: "dict[str, Any]", *, start: bool) -> "dict[str, Any]":
    sock = connect(start=start)
    try:
        sock.settimeout(REPLY_TIMEOUT)
        try:
            framing.send(sock, message)
        except OSError as exc:
            raise KeeperUnavailable(f"cannot send to the tunnel keeper: {exc.strerror or exc}") from exc
        try:
            reply = framing.recv(sock)
        except framing.OlderKeeper:
            raise
        except (OSError, framing.FrameError) as exc:
            raise KeeperLost(f"no answer from the tunnel keeper: {exc}") from exc
        if reply is None:
            raise KeeperLost("the tunnel keeper closed the connection without answering")
        return reply
    finally:
        sock.close()


# -- the public helpers ------------------------------------------------------------------


def ping(*, start: bool = False) -> "dict[str, Any] | None":
    """The keeper's pid/version/started/idle_timeout, or None if none runs (and not start)."""
    try:
        return request({"cmd": "ping"}, start=start)
    except NotRunning:
        return None


def ensure_keeper() -> "dict[str, Any]":
    """Start the keeper if needed; its ping reply."""
    reply = ping(start=True)
    assert reply is not None
    return reply


def keeper_status() -> "dict[str, Any] | None":
    """Status of the running keeper (with its pool entries), or None if none runs."""
    try:
        reply = request({"cmd": "status"})
    except NotRunning:
        return None
    if not reply.get("ok"):
        if reply.get("code") == ReplyCode.RETRY:   # caught it while exiting
            return None
        raise refusal(reply)
    return reply


def keeper_stop(timeout: float = 5.0) -> "dict[str, Any] | None":
    """Stop the running keeper and wait until its socket is gone; its info, or None if none
    was running."""
    try:
        reply = request({"cmd": "stop"})
    except NotRunning:
        return None
    if not reply.get("ok"):
        if reply.get("code") == ReplyCode.RETRY:
            return None
        raise refusal(reply)
    # Done when the process is gone, not merely its socket: it closes its connections
    # (pool entries) after removing the socket.
    pid = reply.get("pid")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and isinstance(pid, int) and _pid_running(pid):
        time.sleep(0.02)
    return reply


def stop_older_keeper(timeout: float = 5.0) -> None:
    """Stop a keeper of an earlier seamless-service (still running after an upgrade in
    place, it speaks length-prefixed msgpack) and wait until it has exited and released
    its lock, so that a keeper of this version can start. Rare: msgpack is imported here."""
    import msgpack

    try:
        sock = connect(start=False)
    except NotRunning:
        return
    try:
        sock.settimeout(REPLY_TIMEOUT)
        body = msgpack.packb({"cmd": "stop"}, use_bin_type=True)
        sock.sendall(len(body).to_bytes(4, "big") + body)
        header = _recv_legacy(sock, 4)
        reply = msgpack.unpackb(_recv_legacy(sock, int.from_bytes(header, "big")), raw=False)
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        raise KeeperUnavailable(
            f"a tunnel keeper of an earlier seamless-service is running and did not stop ({exc});"
            " stop it with that install's `seamless-service tunnel stop`, or wait until it exits"
            " when idle") from exc
    finally:
        sock.close()
    pid = reply.get("pid") if isinstance(reply, dict) else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and isinstance(pid, int) and _pid_running(pid):
        time.sleep(0.02)


def _recv_legacy(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ValueError("the connection closed mid-reply")
        data += chunk
    return data


def _pid_running(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)   # reap it if we started it (an API caller may have)
    except ChildProcessError:
        pass
    # only on `tunnel stop`, never on a command's path: the import costs nothing there
    from ...agent.statefiles import pid_alive

    return pid_alive(pid)         # kill(pid, 0), and an unreaped zombie has finished


def _tty(stream: "TextIO") -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def run_request(argv: "Sequence[str]", stdout: "TextIO", stderr: "TextIO",
                cwd: str | None = None, env: dict[str, str] | None = None) -> "dict[str, Any]":
    """The "run" request for argv, carrying what the command must see of our process."""
    env = dict(os.environ if env is None else env)
    if _tty(stdout) and "COLUMNS" not in env:
        # The keeper has no terminal: tell it our width so tables and help wrap as here.
        try:
            size = os.get_terminal_size(stdout.fileno())
            env["COLUMNS"], env["LINES"] = str(size.columns), str(size.lines)
        except (OSError, ValueError, AttributeError):
            pass
    umask = os.umask(0o077)
    os.umask(umask)
    return {
        "cmd": "run", "argv": list(argv), "cwd": cwd or os.getcwd(), "env": env,
        "stream": True, "tty": {"stdout": _tty(stdout), "stderr": _tty(stderr)},
        "umask": umask, "version": __version__, "install": INSTALL_DIR, "prefix": sys.prefix,
    }


def run(argv: "Sequence[str]", *, stdout: "TextIO | None" = None, stderr: "TextIO | None" = None,
        cwd: str | None = None, env: dict[str, str] | None = None, start: bool = True,
        busy_wait: float | None = None) -> int:
    """Run a CLI command in the keeper, streaming its output to stdout/stderr as it comes;
    returns its exit code.

    The keeper runs one command at a time. By default this one waits for its turn however
    long that takes; with `busy_wait`, if the keeper is still running another command after
    that many seconds, KeeperBusy is raised instead (nothing ran).

    Raises KeeperUnavailable (nothing ran: safe to run it elsewhere; KeeperBusy is one) or
    KeeperLost (it may have run partly). KeyboardInterrupt closes the connection, which
    makes the keeper cancel the command.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    try:
        req = run_request(argv, out, err, cwd=cwd, env=env)
    except FileNotFoundError as exc:
        raise KeeperUnavailable("the current directory no longer exists") from exc
    if busy_wait is not None:
        req["wait"] = max(0.0, float(busy_wait))
    streams = {"stdout": out, "stderr": err}
    for attempt in range(RUN_ATTEMPTS):
        sock = connect(start=start)
        try:
            sock.settimeout(None)
            try:
                framing.send(sock, req)
            except OSError:
                # Not (fully) delivered, so nothing ran; the keeper was probably exiting.
                time.sleep(0.05)
                continue
            while True:
                try:
                    frame = framing.recv(sock)
                except framing.OlderKeeper:
                    # Its refusal of a frame it could not read: nothing ran.
                    stop_older_keeper()
                    break
                except (OSError, framing.FrameError) as exc:
                    raise KeeperLost(f"lost the tunnel keeper mid-command: {exc}") from exc
                if frame is None:
                    raise KeeperLost("the tunnel keeper closed the connection mid-command")
                name = frame.get("stream")
                if name is not None:
                    stream = streams.get(name)
                    if stream is not None:
                        stream.write(frame.get("data", ""))
                        stream.flush()
                    continue
                if frame.get("ok"):
                    for name in ("stdout", "stderr"):   # unstreamed replies carry it all here
                        if frame.get(name):
                            streams[name].write(frame[name])
                            streams[name].flush()
                    return int(frame.get("exit", 1))
                code = frame.get("code")
                if code == ReplyCode.RETRY:
                    break
                if code == ReplyCode.VERSION:
                    # Another install or version of seamless-service: replace that keeper.
                    keeper_stop()
                    break
                raise refusal(frame)
        finally:
            sock.close()
        time.sleep(0.05 * (attempt + 1))
    raise KeeperUnavailable("the tunnel keeper kept restarting")


# -- `seamless-service tunnel ...` -------------------------------------------------------

TUNNEL_USAGE = """\
usage: seamless-service tunnel {status,stop} [--json]

The tunnel keeper is a per-user background process that keeps SSH tunnels and agent
connections open between seamless-service commands (started on demand, exits when idle).

  status    show whether it runs, and the connections it holds (exit 1 if not running)
  stop      stop it, closing its connections
  --json    machine-readable output

examples:
  seamless-service tunnel status
  seamless-service tunnel status --json
  seamless-service tunnel stop
"""


def format_status(info: "dict[str, Any]", now: float | None = None) -> str:
    """The readable `tunnel status` (status_view.py: imported only here)."""
    from .status_view import format_status as render

    return render(info, now)


def tunnel_command(args: "Sequence[str]", stdout: "TextIO | None" = None, stderr: "TextIO | None" = None) -> int:
    """`seamless-service tunnel status|stop [--json]`; returns the exit code."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    args = list(args)
    if not args or args[0] in ("-h", "--help") or "-h" in args or "--help" in args:
        (out if args else err).write(TUNNEL_USAGE)
        return 0 if args else 2
    action, rest = args[0], args[1:]
    if action not in ("status", "stop") or [a for a in rest if a != "--json"]:
        err.write(f"seamless-service tunnel: error: unrecognised arguments: {' '.join(args)} "
                  "(see 'seamless-service tunnel --help')\n")
        return 2
    as_json = "--json" in rest
    try:
        info = keeper_status() if action == "status" else keeper_stop()
    except ServiceError as exc:
        err.write(f"seamless-service: {exc}\n")
        return 1
    if as_json:
        import json

        from .status_view import status_json

        reply = status_json(info) if action == "status" else {"running": info is not None, **(info or {})}
        out.write(json.dumps(reply, sort_keys=True) + "\n")
    elif info is None:
        out.write("no tunnel keeper running\n")
    elif action == "status":
        out.write(format_status(info) + "\n")
    else:
        out.write(f"stopped the tunnel keeper (pid {info.get('pid')})\n")
    if info is None and action == "status":
        return 1
    return 0
