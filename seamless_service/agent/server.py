"""The agent's serve loop: lock, secret, rpyc server on 127.0.0.1, idle exit, signals.

`serve()` runs in the main thread (signal handlers need it) until SIGTERM/SIGINT/SIGHUP,
the idle timeout, or a fatal error; on the way out it removes agent.json and the secret
while still holding agent.lock, so no stale state file is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rpyc.core.stream import SocketStream
from rpyc.utils.authenticators import AuthenticationError
from rpyc.utils.server import ThreadedServer

from .. import __version__
from ..protocol import auth as pauth
from ..protocol.auth import HANDSHAKE_TIMEOUT, make_secret
from ..protocol.version import PROTOCOL_VERSION
from . import lifecycle
from .auth import RefusalLog, SecretAuthenticator, peer_address, send_now
from .context import AgentContext
from ..protocol.frames import LimitedChannel
from .service import Activity, AgentService, server_config

log = logging.getLogger("seamless_service.agent")

LISTENER_POLL = 0.5   # the accept loop notices a stop request within this many seconds
# Connections served at once (authenticated or authenticating), one thread each. The client
# keeps one connection per host; 32 concurrent clients is the reliability benchmark.
MAX_CONNECTIONS = 128
BACKOFF = 0.1         # seconds the accept loop waits when out of file descriptors or threads
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# A connection that died in the backlog, or a signal: just accept the next one.
ACCEPT_RETRY = frozenset({errno.EINTR, errno.EAGAIN, errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


class ServeError(lifecycle.LifecycleError):
    """The agent cannot serve (already running, port taken, bad address)."""


def check_host(host: str) -> str:
    if host != lifecycle.HOST:
        raise lifecycle.ConfigError(
            f"the agent listens on {lifecycle.HOST} only, not {host!r}; reach it through an SSH tunnel")
    return host


def setup_logging(level: str = "INFO") -> None:
    """Log lines to stderr (the detached agent's stderr is agent.log)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise lifecycle.ConfigError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


class AgentServer(ThreadedServer):
    """rpyc's ThreadedServer with an accept loop that a flood cannot stop or fill the log with.

    rpyc's own loop looked up the peer before our authenticator (a traceback per connection
    reset by its peer), started a thread per connection without limit, and ended the
    server at the first accept() error (EMFILE once ~1,000 threads held sockets). Here:

    * a peer already gone when accepted is closed at once, without a thread or a line;
    * another user's connection is refused in the loop itself (auth.SecretAuthenticator
      .admit), before a thread exists, as is one finding every handshake slot taken;
    * at most `max_connections` are served at once (authenticated or authenticating, one
      thread each); past that a connection gets the BUSY greeting (the client says the
      agent is at its limit) and is closed;
    * running out of file descriptors or threads is back-pressure: wait BACKOFF and go on
      (waiting connections stay in the kernel's backlog), never the end of the server;
    * every line about a connection not served goes through the refusal log's budget.
    """

    def __init__(self, service: AgentService, *, authenticator: SecretAuthenticator,
                 refusals: RefusalLog, max_connections: int = MAX_CONNECTIONS, **kwargs: Any):
        super().__init__(service, authenticator=authenticator, **kwargs)
        self.refusals = refusals
        self.max_connections = int(max_connections)
        self._count_lock = threading.Lock()
        self._serving = 0

    @property
    def serving(self) -> int:
        """Connections being served now (each holds one thread)."""
        with self._count_lock:
            return self._serving

    def accept(self) -> None:
        sock = self._next_socket()
        if sock is not None:
            self._admit(sock)

    def _next_socket(self) -> socket.socket | None:
        while self.active:
            try:
                sock, _address = self.listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if not self.active:  # request_stop() shut the listener down
                    return None
                if exc.errno in OUT_OF_RESOURCES:
                    self.refusals.note(f"cannot accept connections for now ({os.strerror(exc.errno)}); "
                                       f"they wait in the backlog, retrying every {BACKOFF:g} s")
                    time.sleep(BACKOFF)
                    continue
                if exc.errno in ACCEPT_RETRY:
                    continue
                raise EOFError(f"the listening socket failed: {exc}") from None
            return sock
        return None

    def _admit(self, sock: socket.socket) -> None:
        peer = peer_address(sock)
        if peer is None:  # reset by its peer before we got to it: nobody to answer
            _close(sock)
            return
        full = self.serving >= self.max_connections  # only this thread adds to the count
        busy = f"{self.max_connections} connections are being served already (the agent's limit)" if full else None
        try:
            slot = self.authenticator.admit(sock, peer, busy=busy)
        except AuthenticationError:
            _close(sock)
            return
        with self._count_lock:
            self._serving += 1
        self.clients.add(sock)
        try:
            threading.Thread(target=self._serve_one, args=(sock, peer, slot), daemon=True,
                             name=f"conn-{peer}").start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            self.authenticator.release(slot)
            send_now(sock, pauth.server_busy())
            self._done(sock)
            self.refusals.refused(peer, f"cannot start a thread for it ({exc}); "
                                        f"waiting {BACKOFF:g} s before the next connection")
            time.sleep(BACKOFF)

    def _serve_one(self, sock: socket.socket, peer: str, slot: Any) -> None:
        try:
            try:
                self.authenticator.authenticate(sock, peer, slot)
            except AuthenticationError:
                return  # logged by the authenticator
            self._serve_rpyc(sock, peer)
        except (EOFError, OSError):
            pass  # the client went away (or its frame was refused, and that was logged)
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback per connection
            self.refusals.note(f"connection from {peer} ended by an error: {type(exc).__name__}: {exc}")
        finally:
            self._done(sock)

    def _serve_rpyc(self, sock: socket.socket, peer: str) -> None:
        def report(why: str) -> None:
            self.refusals.note(f"connection from {peer}: {why}")

        channel = LimitedChannel(SocketStream(sock), report=report)
        config = dict(self.protocol_config, credentials=None, endpoints=(sock.getsockname(), peer),
                      logger=self.logger)
        self.service._connect(channel, config).serve_all()

    def _done(self, sock: socket.socket) -> None:
        _close(sock)
        self.clients.discard(sock)
        with self._count_lock:
            self._serving -= 1


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Agent:
    """One serving agent; `run()` blocks until it stops."""

    def __init__(self, base: Path, *, idle_timeout: float, policy_spec: str, port: int = 0,
                 host: str = lifecycle.HOST, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        self.base = Path(base)
        self.max_connections = int(max_connections)
        self.idle_timeout = float(idle_timeout)
        self.policy_spec = policy_spec
        self.port = int(port)
        self.host = check_host(host)
        self.handshake_timeout = float(handshake_timeout)
        self.activity = Activity()
        self.stop_reason: str | None = None
        self._stopped = threading.Event()
        self._server: AgentServer | None = None
        self._refusals = RefusalLog()

    # -- stopping: from a signal handler or the idle watchdog; the accept loop notices it
    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()
        if self._server is not None:
            self._server.active = False
            # Wake the accept loop now rather than at its next poll (rpyc treats the failed
            # accept() of a shut-down listener as "server closed").
            with contextlib.suppress(OSError):
                self._server.listener.shutdown(socket.SHUT_RDWR)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.request_stop(signal.Signals(signum).name)

    def _idle_watchdog(self) -> None:
        interval = max(0.05, min(1.0, self.idle_timeout / 4))
        while not self._stopped.wait(interval):
            if self.activity.idle_for() >= self.idle_timeout:
                self.request_stop(f"idle for {self.idle_timeout:g} s")

    def run(self) -> int:
        policy = lifecycle.load_policy(self.policy_spec)
        lifecycle.ensure_agent_dir(self.base)
        lock_fd = lifecycle.acquire_agent_lock(self.base)
        if lock_fd is None:
            other = lifecycle.find_running(self.base)
            orphan = None if other else lifecycle.find_orphan(self.base, grace=0)
            where = (f" (pid {other['pid']}, port {other['port']})" if other else
                     f" (pid {orphan['pid']}, but {orphan['problem']}: `seamless-service agent stop` "
                     "stops it)" if orphan else "")
            raise ServeError(f"an agent is already running for {self.base}{where}")
        ctx = None
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
            secret = make_secret()
            secret_file = lifecycle.write_secret(self.base, secret)
            ctx = AgentContext(base=self.base, policy=policy, fixed_environment=True)
            self._server = self._make_server(ctx, secret)
            del secret  # only the authenticator keeps it
            state = {
                "pid": os.getpid(),
                "port": self._server.port,
                "host": self.host,
                "protocol": PROTOCOL_VERSION,
                "version": __version__,
                "started": time.time(),
                "python": sys.executable,
                "idle_timeout": self.idle_timeout,
                "path_policy": self.policy_spec,
            }
            self._server._listen()  # listen before announcing, so a client never finds a dead port
            lifecycle.write_state(self.base, state)
            log.info("agent %s (protocol %s) serving on %s:%s, pid %s, idle timeout %s, path policy %s; "
                     "secret in %s", __version__, PROTOCOL_VERSION, self.host, self._server.port,
                     os.getpid(), f"{self.idle_timeout:g} s" if self.idle_timeout else "never",
                     self.policy_spec, secret_file)
            if self.idle_timeout > 0:
                threading.Thread(target=self._idle_watchdog, name="idle-watchdog", daemon=True).start()
            if not self._stopped.is_set():  # a signal may have come during start-up
                self._server.start()
            self.request_stop(self.stop_reason or "server loop ended")
            log.info("agent stopping: %s", self.stop_reason)
            return 0
        finally:
            self._stopped.set()
            if self._server is not None:
                self._server.close()
            self._refusals.flush()  # the count of refusals not yet logged one by one
            if ctx is not None:
                try:
                    ctx.close()
                except Exception:  # noqa: BLE001 - cleanup of files matters more
                    log.exception("error while closing the agent context")
            lifecycle.remove_files(self.base)  # still under the lock: these files are ours
            lifecycle.release_agent_lock(lock_fd)

    def _make_server(self, ctx: AgentContext, secret: str) -> AgentServer:
        service = AgentService(ctx, self.activity)
        try:
            return AgentServer(
                service,
                hostname=self.host,
                port=self.port,
                authenticator=SecretAuthenticator(secret, timeout=self.handshake_timeout,
                                                  refusals=self._refusals),
                refusals=self._refusals,
                max_connections=self.max_connections,
                protocol_config=server_config(),
                logger=logging.getLogger("seamless_service.agent.rpyc"),
                listener_timeout=LISTENER_POLL,
                auto_register=False,
            )
        except OSError as exc:
            raise ServeError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None


def serve(base: Path, *, idle_timeout: float | None = None, policy_spec: str | None = None,
          port: int = 0, host: str = lifecycle.HOST,
          handshake_timeout: float = HANDSHAKE_TIMEOUT) -> int:
    """Serve in the foreground until stopped; flags override <agent_dir>/config.yaml."""
    check_host(host)
    if not 0 <= port <= 65535:
        raise lifecycle.ConfigError(f"port must be between 0 and 65535, not {port}")
    idle, spec = lifecycle.resolve_options(base, idle_timeout=idle_timeout, policy_spec=policy_spec)
    agent = Agent(base, idle_timeout=idle, policy_spec=spec, port=port, host=host,
                  handshake_timeout=handshake_timeout)
    return agent.run()
