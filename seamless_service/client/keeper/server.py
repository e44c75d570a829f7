"""The tunnel keeper process: `python -m seamless_service.client.keeper.server`.

One per user (a flock on daemon.lock makes a second start exit quietly). It listens on a
0600 unix socket in a 0700 folder, checks SO_PEERCRED on every connection, handles each
connection in a thread, and exits after an idle time (SEAMLESS_SERVICE_DAEMON_IDLE
seconds, default 900), on SIGTERM or on a "stop" request, removing its socket.

Requests (framing.py maps):
  {"cmd": "ping"}    -> {"ok": true, "pid", "version", "started", "idle_timeout", "install"}
  {"cmd": "status"}  -> ping's fields plus activity ("idle_for": seconds since the last
                        command ended, 0 while one runs), "pool": pool.describe() and
                        "threads": connection threads started in all and idle now
  {"cmd": "stop"}    -> {"ok": true, ...}, then a clean exit (pool entries closed)
  {"cmd": "run", "argv": [...], "cwd": str, "env": {...}, optional "stream": bool,
   "tty": {"stdout": bool, "stderr": bool}, "umask": int, "version": str, "install": str,
   "prefix": str, optional "wait": seconds}
      runs the CLI's main(argv) inside this process with the caller's cwd, environment,
      umask and argv, capturing stdout/stderr. Commands run one at a time; with "wait", a
      command that cannot start within that many seconds (another one holds the keeper,
      e.g. a `ps --watch`) is not queued but answered with code "busy". Without "stream":
        -> {"ok": true, "exit": N, "stdout": str, "stderr": str}
      with "stream": true, output is sent while the command runs:
        -> {"stream": "stdout"|"stderr", "data": str} ... then {"ok": true, "exit": N}
Errors: {"ok": false, "error": "<one line>"} plus a "code" the client acts on: "retry"
(keeper shutting down: start a fresh one), "version" (the client is another install or
version: stop this keeper and start a fresh one), "busy" (only with "wait": another command
is running and nothing of this one ran; the thin client then runs it in its own process).
A bad request never stops the keeper.

TEST ONLY: SEAMLESS_SERVICE_DAEMON_MAIN="module:function", read at keeper start, replaces
the CLI main that "run" calls, so tests can run commands that print their cwd/env, sleep,
raise, and so on. It is not an extension point: do not set it in normal use.
"""

from __future__ import annotations

import fcntl
import importlib
import io
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

from ... import __version__
from . import INSTALL_DIR as INSTALL, KeeperDirError, check_dir, keeper_dir, lock_path, socket_path
from . import framing
from ..transport.pool import default_pool
from .framing import ReplyCode, peer_uid
from .threads import Ticker, Workers

DEFAULT_IDLE = 15 * 60.0
DEFAULT_MAIN = "seamless_service.client.cli.main:main"

REQUEST_READ_TIMEOUT = 30.0   # a connected client that sends nothing is dropped after this
LOCK_WAIT = 10.0              # how long a new keeper waits for one that is shutting down
STREAM_CHUNK = 64 << 10       # streamed output is flushed at this size ...
STREAM_TICK = 0.05            # ... or this often, so `--watch` output appears promptly
CANCEL_GRACE = 1.0            # after the client left: time for the command to notice cancelled()
CANCEL_REPEAT = 5.0           # then KeyboardInterrupt is injected, and again this often
CAPTURE_LIMIT = framing.MAX_FRAME // 4   # per stream, unstreamed; str chars may be 4 bytes
SHUTDOWN_WAIT = 3.0           # for a cancelled command to finish before the pool is closed

EXIT_ALREADY_RUNNING = 0      # lost the start race: not an error for the client that spawned us
EXIT_FAILED = 3


def log(message: str) -> None:
    # The keeper's stderr is its log file. sys.stderr is swapped during "run" calls, so
    # write to the original stream: log lines must never reach a user's terminal.
    stream = sys.__stderr__
    if stream is None:
        return
    try:
        stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def idle_timeout_from_env() -> float:
    raw = os.environ.get("SEAMLESS_SERVICE_DAEMON_IDLE")
    if not raw:
        return DEFAULT_IDLE
    try:
        value = float(raw)
    except ValueError:
        log(f"ignoring SEAMLESS_SERVICE_DAEMON_IDLE={raw!r}: not a number")
        return DEFAULT_IDLE
    return max(value, 0.1)


def load_main(spec: str) -> Callable[[list[str]], Any]:
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"{spec!r} is not 'module:function'")
    return getattr(importlib.import_module(module_name), func_name)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- captured output ---------------------------------------------------------------------


class _BinaryAdapter:
    """`sys.stdout.buffer` for code that writes bytes: decoded as UTF-8 into the text writer."""

    def __init__(self, text: "_CaptureWriter"):
        import codecs

        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> int:
        self._text.write(self._decoder.decode(bytes(data)))
        return len(data)

    def flush(self) -> None:
        self._text.flush()

    def writable(self) -> bool:
        return True


class _CaptureWriter(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr during a "run": text goes to the caller, either
    streamed in frames (flushed by size, by flush() and by the session's ticker) or kept
    and returned in the final reply."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, name: str, session: "_RunSession", tty: bool):
        super().__init__()
        self.name = name
        self._session = session
        self._tty = tty
        self._parts: list[str] = []
        self._size = 0
        self._kept = 0
        self._truncated = False
        self._lock = threading.Lock()
        self.buffer = _BinaryAdapter(self)

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        with self._lock:
            if self._session.streaming:
                self._parts.append(s)
                self._size += len(s)
                if self._size >= STREAM_CHUNK:
                    self._flush_locked()
            elif self._kept + len(s) <= CAPTURE_LIMIT:
                self._parts.append(s)
                self._kept += len(s)
            else:
                self._truncated = True
        return len(s)

    def flush(self) -> None:
        if self._session.streaming:
            with self._lock:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._parts:
            return
        data = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        self._session.emit(self.name, data)

    def getvalue(self) -> str:
        with self._lock:
            text = "".join(self._parts)
        if self._truncated:
            text += f"\n[seamless-service: output truncated at {CAPTURE_LIMIT} characters]\n"
        return text

    def isatty(self) -> bool:
        return self._tty

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("captured stream has no file descriptor")


def switch_environ(current: dict[str, str], target: dict[str, str]) -> None:
    """Make os.environ equal `target`, given that it equals `current` now (a copy).

    Only what differs is set or removed: each os.environ change is a putenv or unsetenv
    call plus encoding in Python, and a caller's environment mostly equals the keeper's
    own (the keeper started with a caller's). Clearing and refilling it, there and back,
    took 190-240 us of every command for 36 variables; this 50-80 us, most of it the two
    copies of os.environ that tell what differs."""
    environ = os.environ
    for key in current.keys() - target.keys():
        del environ[key]
    for key, value in target.items():
        if current.get(key) != value:
            environ[key] = value


def _inject_keyboard_interrupt(thread_id: int) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(KeyboardInterrupt))


def _clear_injected(thread_id: int) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class _RunSession:
    """One "run" request: its captured streams, its cancellation, its ticks.

    The keeper's ticker (one thread for all runs, threads.Ticker) calls tick() every
    STREAM_TICK from start() to stop(): it flushes streamed output (blocking while the
    client does not read: a paused pager pauses the command, which runs alone anyway) and
    watches the connection: when
    the client goes away (Ctrl-C on the thin client closes the socket), the command is
    cancelled: the keeper's cancel_flag turns True at once (commands see it as
    default_pool.cancelled(): the keeper handed the flag to the pool at start-up), and if the command is still running
    CANCEL_GRACE later, KeyboardInterrupt is raised in it (as Ctrl-C would in a normal
    process; blocking C calls see it only when they return).
    """

    def __init__(self, keeper: "Keeper", conn: socket.socket, req: dict[str, Any]):
        self.keeper = keeper
        self.conn = conn
        self.req = req
        self.argv: list[str] = req["argv"]
        self.streaming = bool(req.get("stream"))
        tty = req.get("tty") if isinstance(req.get("tty"), dict) else {}
        self.stdout = _CaptureWriter("stdout", self, bool(tty.get("stdout")))
        self.stderr = _CaptureWriter("stderr", self, bool(tty.get("stderr")))
        self.broken = False              # the client is gone: no more writes
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._cancelled_at: float | None = None
        self._active = False             # holds the run lock: mirrors cancellation into cancel_flag
        self._in_main = False
        self._thread_id = threading.get_ident()
        self._done = threading.Event()
        self._last_inject = 0.0

    # cancellation ------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._cancelled_at is not None

    def cancel(self, why: str) -> None:
        with self._state_lock:
            if self._cancelled_at is None:
                self._cancelled_at = time.monotonic()
                log(f"cancelling {self.argv!r}: {why}")
            if self._active:
                self.keeper.cancel_flag.set()

    def activate(self) -> None:
        with self._state_lock:
            self._active = True
            self.keeper.cancel_flag.clear()
            if self._cancelled_at is not None:
                self.keeper.cancel_flag.set()

    def deactivate(self) -> None:
        with self._state_lock:
            self._active = False
            self.keeper.cancel_flag.clear()

    def _peer_gone(self) -> bool:
        try:
            data = self.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        # b"" is EOF. Any bytes are a protocol violation during a run; leave them unread.
        return data == b""

    def tick(self) -> None:
        """One step of the keeper's ticker (threads.Ticker, every STREAM_TICK while this run
        is registered): flush streamed output, notice a client that left, and once the grace
        is over, interrupt the command."""
        if self._done.is_set():
            return
        if self.streaming and not self.broken:
            self.stdout.flush()
            self.stderr.flush()
        if not self.cancelled and self._peer_gone():
            self.cancel("client disconnected")
        if self._cancelled_at is None:
            return
        now = time.monotonic()
        if now - self._cancelled_at < CANCEL_GRACE or now - self._last_inject < CANCEL_REPEAT:
            return
        # Only while the command is inside main(): see _call_main for the other half.
        if self._state_lock.acquire(timeout=1.0):
            try:
                if self._in_main:
                    _inject_keyboard_interrupt(self._thread_id)
                    self._last_inject = now
            finally:
                self._state_lock.release()

    # output -----------------------------------------------------------------------------

    def emit(self, stream: str, data: str) -> None:
        if self.broken:
            return
        try:
            with self._send_lock:
                for start in range(0, len(data), STREAM_CHUNK):
                    framing.send(self.conn, {"stream": stream, "data": data[start:start + STREAM_CHUNK]})
        except OSError:
            self.broken = True
            self.cancel("client stopped reading")

    def reply(self, message: dict[str, Any]) -> None:
        if self.broken:
            return
        try:
            with self._send_lock:
                framing.send(self.conn, message)
        except OSError:
            self.broken = True

    # running ----------------------------------------------------------------------------

    def start(self) -> None:
        self.keeper.ticker.add(self)

    def stop(self) -> None:
        self._done.set()   # a tick already under way on another thread returns at its first check
        self.keeper.ticker.remove(self)

    def execute(self, main: Callable[[list[str]], Any]) -> int:
        """Run main(argv) with the caller's cwd, env, umask, argv and our captured streams,
        then put the keeper's own back (they are process-global: hence the run lock)."""
        req = self.req
        saved_env = dict(os.environ)
        saved_streams = (sys.stdout, sys.stderr, sys.stdin)
        saved_argv = sys.argv
        saved_umask = os.umask(0o077)
        os.umask(req["umask"] if req.get("umask") is not None else saved_umask)
        try:
            switch_environ(saved_env, req["env"])
            sys.stdout, sys.stderr = self.stdout, self.stderr
            sys.stdin = io.StringIO("")  # no terminal here: a prompt reads EOF
            # Our CLI takes its command line from main(argv); sys.argv is set too because the
            # command runs as if it were its own process: code that reads sys.argv (argparse's
            # default prog for parsers built without one, the test hooks' main, libraries)
            # sees the caller's command, not the keeper's start-up line.
            sys.argv = ["seamless-service", *self.argv]
            try:
                os.chdir(req["cwd"])
            except OSError as exc:
                print(f"seamless-service: cannot enter working directory {req['cwd']}: {exc.strerror}",
                      file=sys.stderr)
                return 1
            return self._call_main(main)
        finally:
            sys.stdout, sys.stderr, sys.stdin = saved_streams
            sys.argv = saved_argv
            switch_environ(dict(os.environ), saved_env)   # the command may have changed it
            os.umask(saved_umask)
            try:
                os.chdir("/")
            except OSError:
                pass

    def _call_main(self, main: Callable[[list[str]], Any]) -> int:
        # An injected KeyboardInterrupt may only land while _in_main is True (the ticker
        # checks under _state_lock). Once _in_main is False, a still-pending one is cleared;
        # if it fires before that, we are still inside the outer try and it becomes 130.
        # So it can never escape into the code that releases the run lock.
        try:
            try:
                with self._state_lock:
                    self._in_main = True
                result = main(list(self.argv))
            finally:
                with self._state_lock:
                    self._in_main = False
                _clear_injected(self._thread_id)
            if result is None:
                return 0
            return int(result) if isinstance(result, int) else 1
        except SystemExit as exc:
            code = exc.code
            if code is None:
                return 0
            if isinstance(code, int):
                return code
            print(code, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            with self._state_lock:
                self._in_main = False
            _clear_injected(self._thread_id)
            return 130
        except BaseException as exc:  # never let a command take the keeper down
            if "--debug" in self.argv:
                sys.stderr.write(traceback.format_exc())
            else:
                print(f"seamless-service: internal error: {one_line(exc)}", file=sys.stderr)
            return 1

    def finish(self, code: int) -> None:
        if self.streaming:
            self.stdout.flush()
            self.stderr.flush()
            self.reply({"ok": True, "exit": code})
        else:
            self.reply({"ok": True, "exit": code,
                        "stdout": self.stdout.getvalue(), "stderr": self.stderr.getvalue()})


# -- the keeper --------------------------------------------------------------------------


def same_install(theirs: Any) -> bool:
    """Whether a client's package folder (as it imported it, unresolved) is ours, through
    symbolic links: the common case, the very path the keeper was started on, is settled
    before this is asked."""
    if not isinstance(theirs, str):
        return False
    try:
        return os.path.realpath(theirs) == os.path.realpath(INSTALL)
    except (OSError, ValueError):
        return False


def _validate_run(req: dict[str, Any]) -> str | None:
    argv, cwd, env = req.get("argv"), req.get("cwd"), req.get("env")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return "run: 'argv' must be a list of strings"
    if not isinstance(cwd, str) or not os.path.isabs(cwd) or "\0" in cwd:
        return "run: 'cwd' must be an absolute path"
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()):
        return "run: 'env' must map variable names to strings"
    umask = req.get("umask")
    if umask is not None and (isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777):
        return "run: 'umask' must be a file mode mask between 0 and 0o777"
    wait = req.get("wait")
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float))
                             or not 0 <= wait < float("inf")):
        return "run: 'wait' must be a number of seconds"
    return None


class Keeper:
    def __init__(self, folder: str, idle_timeout: float, main_spec: str):
        self.folder = folder
        self.sock_path = socket_path(folder)
        self.idle_timeout = idle_timeout
        self.main_spec = main_spec
        self.main: Callable[[list[str]], Any] | None = None
        self.main_error: str | None = None
        self.started = time.time()
        self.pid = os.getpid()
        self.uid = os.getuid()
        self.listener: socket.socket | None = None
        self.sock_ino: int | None = None
        self.lock_fd: int | None = None
        self.stopping: str | None = None          # why we are exiting, once we are
        # "run" calls one at a time: cwd, os.environ, umask, sys.argv and sys.stdout/stderr are
        # process-global, and so is state the CLI keeps in modules (seamless-config's
        # resolution caches its loaded configuration at module level). Pool entries survive
        # between runs; that is where sharing pays, not in running commands side by side.
        # A command never queues behind a long one, though: a client that sends "wait" gets
        # "busy" when the lock is not free in time, and runs the command itself (see _run).
        self.run_lock = threading.Lock()
        self.current: _RunSession | None = None
        # Set while the running command's caller is gone (its _RunSession mirrors its own
        # cancellation here while it holds run_lock); the pool shows it to the command.
        self.cancel_flag = threading.Event()
        self.busy_replies = 0                     # runs turned away with "busy" (status)
        self._activity = threading.Lock()
        self._active = 0
        self._last_activity = time.monotonic()
        # when the last command ended: `status` reports idle time from here, since its own
        # connection (like any) counts as activity for the idle exit
        self._last_command = time.monotonic()
        self.requests = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        # Reused, not started per command (threads.py says what that saves).
        self.workers = Workers("conn")
        self.ticker = Ticker(STREAM_TICK)

    # start-up -----------------------------------------------------------------------------

    def acquire_lock(self) -> bool:
        """True once we hold daemon.lock; False if another keeper is serving."""
        fd = os.open(lock_path(self.folder), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            # Held: either a keeper serves (its socket answers) or one is starting up or
            # shutting down (socket not there yet / already removed): wait for it.
            if self._socket_answers():
                os.close(fd)
                return False
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(f"{lock_path(self.folder)} stays locked but nothing answers on the socket")
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.pid}\n".encode())
        self.lock_fd = fd
        return True

    def _socket_answers(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.sock_path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def bind(self) -> None:
        # We hold the lock, so any socket file here is stale (its keeper died): replace it.
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)   # born 0600: no window where others could connect
        try:
            listener.bind(self.sock_path)
        finally:
            os.umask(old_umask)
        os.chmod(self.sock_path, 0o600)
        listener.listen(128)
        self.sock_ino = os.stat(self.sock_path).st_ino
        self.listener = listener

    def load_main(self) -> None:
        try:
            self.main = load_main(self.main_spec)
        except Exception as exc:  # keep serving: ping/status/stop still work, runs explain
            self.main_error = f"cannot load the command line ({self.main_spec}): {one_line(exc)}"
            log(self.main_error)

    # serving ------------------------------------------------------------------------------

    def wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def request_stop(self, why: str) -> None:
        if self.stopping is None:
            self.stopping = why
        self.wake()

    def _idle_remaining(self) -> float | None:
        with self._activity:
            if self._active:
                return None
            return self.idle_timeout - (time.monotonic() - self._last_activity)

    def _enter(self) -> None:
        with self._activity:
            self._active += 1
            self._last_activity = time.monotonic()

    def _leave(self) -> None:
        with self._activity:
            self._active -= 1
            self._last_activity = time.monotonic()

    def serve(self) -> None:
        assert self.listener is not None
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        while self.stopping is None:
            remaining = self._idle_remaining()
            if remaining is not None and remaining <= 0:
                self.stopping = "idle"
                break
            timeout = 1.0 if remaining is None else min(remaining, 1.0)
            for key, _ in sel.select(timeout):
                if key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                else:
                    self._accept_one()
        sel.close()

    def _accept_one(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log(f"accept failed: {exc}")
            return
        self._enter()
        self.workers.submit(self._handle_conn, conn)

    def _handle_conn(self, conn: socket.socket) -> None:
        try:
            uid = peer_uid(conn)
            if uid is not None and uid != self.uid:
                log(f"refused a connection from uid {uid}")
                return
            conn.settimeout(REQUEST_READ_TIMEOUT)
            while True:
                try:
                    req = framing.recv(conn)
                except framing.FrameTooLarge as exc:
                    self._send_quietly(conn, {"ok": False, "error": str(exc)})
                    return   # cannot skip an unread body safely: drop the connection
                except framing.FrameTruncated:
                    return
                except framing.FrameError as exc:
                    self._send_quietly(conn, {"ok": False, "error": str(exc)})
                    continue
                except (socket.timeout, OSError):
                    return
                if req is None:
                    return
                with self._activity:
                    self.requests += 1
                if not self._dispatch(conn, req):
                    return
        except Exception as exc:  # a bug in one connection must not take the keeper down
            log(f"connection handler failed: {one_line(exc)}\n{traceback.format_exc()}")
        finally:
            try:
                conn.close()
            finally:
                self._leave()

    @staticmethod
    def _send_quietly(conn: socket.socket, message: dict[str, Any]) -> bool:
        try:
            framing.send(conn, message)
            return True
        except OSError:
            return False

    def info(self) -> dict[str, Any]:
        return {"ok": True, "pid": self.pid, "version": __version__, "started": self.started,
                "idle_timeout": self.idle_timeout, "install": INSTALL}

    def _dispatch(self, conn: socket.socket, req: dict[str, Any]) -> bool:
        """Answer one request; False when the connection should be closed."""
        cmd = req.get("cmd")
        if self.stopping is not None and cmd != "ping":
            return self._send_quietly(conn, {"ok": False, "code": ReplyCode.RETRY,
                                             "error": "the tunnel keeper is shutting down"})
        if cmd == "ping":
            return self._send_quietly(conn, self.info())
        if cmd == "status":
            reply = self.info()
            with self._activity:
                active = self._active
            current = self.current
            idle_for = 0.0 if current is not None else time.monotonic() - self._last_command
            reply.update({
                "socket": self.sock_path, "connections": active, "idle_for": idle_for,
                "requests": self.requests, "busy_replies": self.busy_replies,
                "current": None if current is None else current.argv,
                "pool": default_pool.describe(),
                "threads": {"started": self.workers.started, "idle": self.workers.idle},
            })
            return self._send_quietly(conn, reply)
        if cmd == "stop":
            reply = self.info()
            reply["stopping"] = True
            self._send_quietly(conn, reply)
            self.request_stop("stop requested")
            return False
        if cmd == "run":
            self._run(conn, req)
            return False   # the run protocol ends the conversation
        return self._send_quietly(conn, {"ok": False, "error": f"unknown cmd {cmd!r}"})

    def _run(self, conn: socket.socket, req: dict[str, Any]) -> None:
        problem = _validate_run(req)
        if problem:
            self._send_quietly(conn, {"ok": False, "error": problem})
            return
        # Another version or another installation must not run on our code: "install" is the
        # package folder, "prefix" the environment (two venvs may share one editable tree).
        for field, ours in (("version", __version__), ("install", INSTALL), ("prefix", sys.prefix)):
            theirs = req.get(field)
            if theirs is not None and theirs != ours and not (field == "install" and same_install(theirs)):
                self._send_quietly(conn, {"ok": False, "code": ReplyCode.VERSION,
                                          "error": f"tunnel keeper runs {field} {ours}, client is {theirs}"})
                return
        if self.main is None:
            self._send_quietly(conn, {"ok": True, "exit": 1, "stdout": "",
                                      "stderr": f"seamless-service: {self.main_error}\n"})
            return
        # Blocking from here on: a paused reader (a pager, Ctrl-Z) should pause the command,
        # and the ticker's MSG_DONTWAIT peek must not wait out a socket timeout.
        conn.settimeout(None)
        session = _RunSession(self, conn, req)
        session.start()
        acquired = False
        code: int | None = None
        # Without "wait" (API callers) a run queues for its turn as long as it takes; the thin
        # client waits only a moment: behind a `ps --watch` or `logs --follow` it would wait
        # until that ends, so it is told "busy" and runs the command itself instead.
        wait = req.get("wait")
        deadline = None if wait is None else time.monotonic() + float(wait)
        try:
            while not acquired:
                if session.cancelled:
                    return       # the client left while waiting for its turn
                if self.stopping is not None:
                    session.reply({"ok": False, "code": ReplyCode.RETRY, "error": "the tunnel keeper is shutting down"})
                    return
                step = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
                acquired = self.run_lock.acquire(timeout=step)
                if not acquired and deadline is not None and time.monotonic() >= deadline:
                    with self._activity:
                        self.busy_replies += 1
                    session.reply({"ok": False, "code": ReplyCode.BUSY,
                                   "error": "the tunnel keeper is running another command"})
                    return
            if self.stopping is not None:
                session.reply({"ok": False, "code": ReplyCode.RETRY, "error": "the tunnel keeper is shutting down"})
                return
            self.current = session
            session.activate()
            code = session.execute(self.main)
        finally:
            if acquired:
                session.deactivate()
                self._last_command = time.monotonic()
                self.current = None
                self.run_lock.release()
            # The final reply goes out after the lock is free: once a client has its exit
            # code, the keeper is ready for the next command (and says so in "status").
            if code is not None:
                session.finish(code)
            session.stop()

    # shutting down ------------------------------------------------------------------------

    def shutdown(self) -> None:
        log(f"exiting: {self.stopping}")
        # Remove the socket first: from now on clients get "no keeper" and start a new one
        # (it waits for our lock). Then answer "retry" to whoever was already queued.
        try:
            if self.sock_ino is not None and os.stat(self.sock_path).st_ino == self.sock_ino:
                os.unlink(self.sock_path)
        except OSError:
            pass
        if self.listener is not None:
            self.listener.setblocking(False)
            while True:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    break
                conn.setblocking(True)
                self._enter()
                threading.Thread(target=self._handle_conn, args=(conn,), daemon=True).start()
            self.listener.close()
        current = self.current
        if current is not None:
            current.cancel(f"tunnel keeper exiting ({self.stopping})")
        if self.run_lock.acquire(timeout=SHUTDOWN_WAIT):
            self.run_lock.release()
        default_pool.close_all()
        deadline = time.monotonic() + 1.0   # let the "retry" answers go out
        while time.monotonic() < deadline:
            with self._activity:
                if not self._active:
                    break
            time.sleep(0.02)


def main() -> int:
    # Many threads (one per connection, plus paramiko's per SSH connection) hand a reply
    # along; a 0.5 ms switch interval instead of 5 ms cut the p99 of a 200 KB reply from
    # ~7 ms to under 3 ms (benchmarks/bench_tunnel.py).
    sys.setswitchinterval(0.0005)
    try:
        folder = keeper_dir()
        check_dir(folder, create=True)
        keeper = Keeper(folder, idle_timeout_from_env(),
                        os.environ.get("SEAMLESS_SERVICE_DAEMON_MAIN") or DEFAULT_MAIN)
        if not keeper.acquire_lock():
            log("another tunnel keeper is already running")
            return EXIT_ALREADY_RUNNING
        keeper.bind()
    except (KeeperDirError, RuntimeError) as exc:
        log(f"cannot start: {exc}")
        return EXIT_FAILED
    except OSError as exc:
        log(f"cannot start: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''})")
        return EXIT_FAILED
    os.chdir("/")   # hold no user folder busy; each run enters its caller's cwd
    default_pool.keep_between_commands(keeper.cancel_flag)
    signal.signal(signal.SIGTERM, lambda *_: keeper.request_stop("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: keeper.request_stop("SIGINT"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log(f"listening on {keeper.sock_path} (version {__version__}, idle timeout {keeper.idle_timeout:g} s)")
    keeper.load_main()
    try:
        keeper.serve()
    finally:
        keeper.shutdown()
    return 0


if __name__ == "__main__":
    # `python -m` puts the start-up cwd (the keeper folder) first on sys.path; drop it so
    # that nothing but installed code is importable by name.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # os._exit: threads that pool entries left behind (SSH transports) must not keep a
    # finished keeper alive.
    os._exit(code)
