"""The agent's serve loop: lock, secret, rpyc ThreadedServer on 127.0.0.1, idle exit, signals.

`serve()` runs in the main thread (signal handlers need it) until SIGTERM/SIGINT/SIGHUP,
the idle timeout, or a fatal error; on the way out it removes agent.json and the secret
while still holding agent.lock, so no stale state file is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rpyc.utils.server import ThreadedServer

from .. import __version__
from ..protocol.auth import HANDSHAKE_TIMEOUT, make_secret
from ..protocol.version import PROTOCOL_VERSION
from . import lifecycle
from .auth import RefusalLog, SecretAuthenticator
from .context import AgentContext
from .service import Activity, AgentService, server_config

log = logging.getLogger("seamless_service.agent")

LISTENER_POLL = 0.5   # the accept loop notices a stop request within this many seconds


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


class QuietConnectionLines(logging.Filter):
    """Drops rpyc's own INFO lines about a connection before it is authenticated.

    rpyc logs "accepted <peer> with fd N" for every connection and "<peer> failed to
    authenticate... rejecting connection" for every refusal. Our authenticator already logs
    each refusal (rate-limited, with the reason), so these only let a flood of refused
    connections grow agent.log without limit. Lines about authenticated connections
    (authenticated successfully, welcome, goodbye) and everything else are kept. If rpyc
    changes its wording, the lines simply come back.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        if message.startswith("accepted ") and " with fd " in message:
            return False
        return not message.endswith("failed to authenticate... rejecting connection")


class Agent:
    """One serving agent; `run()` blocks until it stops."""

    def __init__(self, base: Path, *, idle_timeout: float, policy_spec: str, port: int = 0,
                 host: str = lifecycle.HOST, handshake_timeout: float = HANDSHAKE_TIMEOUT):
        self.base = Path(base)
        self.idle_timeout = float(idle_timeout)
        self.policy_spec = policy_spec
        self.port = int(port)
        self.host = check_host(host)
        self.handshake_timeout = float(handshake_timeout)
        self.activity = Activity()
        self.stop_reason: str | None = None
        self._stopped = threading.Event()
        self._server: ThreadedServer | None = None
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
            where = f" (pid {other['pid']}, port {other['port']})" if other else ""
            raise ServeError(f"an agent is already running for {self.base}{where}")
        ctx = None
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
            secret = make_secret()
            secret_file = lifecycle.write_secret(self.base, secret)
            ctx = AgentContext(base=self.base, policy=policy)
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

    def _make_server(self, ctx: AgentContext, secret: str) -> ThreadedServer:
        service = AgentService(ctx, self.activity)
        rpyc_log = logging.getLogger("seamless_service.agent.rpyc")
        if not any(isinstance(f, QuietConnectionLines) for f in rpyc_log.filters):
            rpyc_log.addFilter(QuietConnectionLines())
        try:
            return ThreadedServer(
                service,
                hostname=self.host,
                port=self.port,
                authenticator=SecretAuthenticator(secret, timeout=self.handshake_timeout,
                                                  refusals=self._refusals),
                protocol_config=server_config(),
                logger=rpyc_log,
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
