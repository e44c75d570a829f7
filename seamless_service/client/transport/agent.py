"""The `agent` transport: batches go to the host's agent over an SSH tunnel, with repair.

    with AgentTransport("cluster-frontend") as t:
        results = t.batch([("ps", {}), ("hello", {})])     # raw results, like LocalTransport

First use: the endpoint (remote port + secret) comes from the client cache (deploy/cache.py);
without one, or when it names another version, `deploy(host)` installs/starts the agent and
caches its endpoint. Every connection is checked with `hello` (version and protocol).

Repair, at most once per call, with a one-line notice ("seamless-service: reconnected to
HOST (agent restarted)"):
* the SSH connection died (sshd restarted, network) -> a new SSH connection;
* the agent is gone (nothing on its port) or refuses the cached secret (it restarted with
  a new one) -> `deploy(host)` again, which starts it and refreshes the cached secret;
* the agent runs another version or protocol -> `deploy(host)`, which replaces it.
A broken connection noticed BEFORE a request is sent is repaired for any op. A failure
AFTER sending is retried only when every op of the batch is read-only: `stop`, `rm` and
`clear` may have run, so they are never sent twice; the caller gets ConnectionFailed
saying so.

Bounded: a call's time limit (`timeout` plus what its ops ask for, see _call_limit) covers
the call, the repair and the retry together (`Budget`); a call that timed out is not sent
again (the agent may be stuck in that op), and closing a connection never waits for the
agent (agent_conn.AgentConnection.close). Only a deploy's time (installing, starting the
agent) is not counted: it has its own step limits and progress notices.

Errors are client/errors.py's, one line naming the host, with paramiko's real cause (host
key unknown/changed, refused, auth) rather than a generic tunnel message. `AgentUnavailable`
means SSH works but the agent cannot run or be reached there (no usable Python, a key
forced through rhl-guard, forwarding forbidden): auto.py then falls back to `ssh`.

What carries the bytes (`via`): "channel" (default here), rpyc over a paramiko direct-tcpip
channel (tunnel.py); "forward", a local sshtunnel forward on that connection; "openssh",
`ssh -W` processes of the user's own OpenSSH client riding one master connection
(openssh.py), where the endpoint step is `ssh HOST <agent venv python>` (agent start --json
+ the secret file) and only an install or upgrade goes through deploy (paramiko, SFTP).
open.py chooses for callers (openssh where an `ssh` client exists).

Conditional replies (held.py, protocol/conditional.py): on a connection whose agent
listed them in its hello, a request says per op which answer it holds, and an unchanged
answer comes back as a tiny "same" that is resolved from what this connection holds.
`conditional=False` turns that off (every answer sent in full).

Import-light: paramiko and rpyc are imported on first connection.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from ... import __version__
from ...protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError, decode_reply, encode_request
from ...protocol.conditional import advertised
from ..errors import AgentUnavailable, ConnectionFailed, ProtocolMismatch, TimedOut, from_protocol_error
from .agent_conn import AgentError, AgentTimeout
from .base import DEFAULT_TIMEOUT, Notice, Op, Result, Transport

# deploy steps that take seconds to minutes: shown as notices when a first use installs
SLOW_DEPLOY_STEPS = frozenset({"venv", "build", "wheels", "upload", "install"})
READ_ONLY_OPS = frozenset({"hello", "ps", "persistent", "inspect", "logs", "health", "wait"})
# Seconds an op may legitimately take on the agent beyond DEFAULT_TIMEOUT.
_OP_ALLOWANCE = {
    "stop": 20.0,            # rhl-stop: SIGINT, 5 s, SIGTERM, 5 s, SIGKILL
    "clear": 3600.0,         # deleting a million-file buffer directory (agent's own limit)
    "rm": 10.0,
}

# What carries the agent connection: paramiko's direct-tcpip channel (tunnel.py), an
# sshtunnel forward on 127.0.0.1 over that connection (forward.py), or `ssh -W` of the
# user's own OpenSSH client (openssh.py).
VIAS = ("channel", "forward", "openssh")

# A read-only call that failed fast (the connection dropped) is sent again after a repair
# only if at least this much of its time limit is left.
MIN_RETRY = 1.0
# Floor of a connection step's timeout once a call's budget is nearly spent: a step gets a
# chance to finish rather than failing at once with a meaningless 1 ms timeout.
MIN_STEP = 0.2


class Budget:
    """One call's time limit, shared by its attempts and the repairs between them (the
    caller's --timeout / timeout= bounds the whole call). Time spent deploying (installing
    or starting the agent, with its own step timeouts and progress notices) is not counted.
    `Budget(None)` never runs out (connect() without a call)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self._deadline = math.inf if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def spent(self) -> bool:
        return self.remaining() <= 0

    def cap(self, seconds: float) -> float:
        """`seconds`, or less if the budget ends sooner (at least MIN_STEP)."""
        return max(MIN_STEP, min(seconds, self.remaining()))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self._deadline += time.monotonic() - start


def print_notice(message: str) -> None:
    """Default notice: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text


def _strip_host(host: str, message: str) -> str:
    prefix = f"{host}: "
    return message[len(prefix):] if message.startswith(prefix) else message


class AgentTransport(Transport):
    """Raw batches to one host's agent through an SSH tunnel. Thread-safe."""

    name = "agent"

    def __init__(self, host: str, *, ssh_config: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT, accept_new_host_key: bool = False,
                 notice: Notice | None = None, connect_timeout: float | None = None,
                 via: str = "channel", keep_session: bool = True, conditional: bool = True):
        if not host or host.startswith("-"):
            raise ValueError(f"not a host name: {host!r}")
        if via not in VIAS:
            raise ValueError(f"via must be one of {', '.join(VIAS)}, not {via!r}")
        self.host = host
        self.ssh_config = ssh_config
        self.timeout = float(timeout)
        self.accept_new_host_key = accept_new_host_key
        self.notice: Notice = notice if notice is not None else print_notice
        self.connect_timeout = connect_timeout
        self.via = via
        self.keep_session = keep_session
        self.conditional = conditional    # read at each connection's hello (held_values)
        self._tunnel: Any = None          # tunnel.Tunnel
        self._conn: Any = None            # agent_conn.AgentConnection
        self._endpoint: Any = None        # deploy.cache.AgentEndpoint (holds the secret)
        self._agent_info: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._closed = False
        self.calls = 0
        self.repairs = 0
        self.deploys = 0
        self.connected_once = False
        self.last_error: str | None = None
        self._budget = Budget(None)       # the current call's, while _connection() repairs

    # ------------------------------------------------------------------ public

    def batch(self, ops: Sequence[Op]) -> list[Result]:
        """Run `ops` in one round trip; one raw result ({"ok", "value"|"error"}) per op.

        Raises ConnectionFailed / AuthFailed / AgentUnavailable (host or agent out of
        reach, even after one repair), ProtocolMismatch, or OpError for a request the
        agent refused as a whole (too large, malformed).
        """
        ops, request = self._prepare(ops)
        limit = self._call_limit(ops)
        return self._run(ops, request, limit, Budget(limit))

    def begin(self, ops: Sequence[Op]) -> Callable[[], list[Result]] | None:
        """Send `ops` now on the open connection; the returned function waits for their
        results, as batch() would return them (a broken connection is repaired and a
        read-only batch sent again, within the same time limit, counted from now). None
        when no connection is open: nothing was sent, call batch()."""
        conn = self._conn
        if self._closed or conn is None or not self._usable():
            return None
        ops, request = self._prepare(ops)
        limit = self._call_limit(ops)
        budget = Budget(limit)
        asked, sent_request = self._ask(conn, ops, request)
        try:
            first: Any = conn.send(sent_request)
        except AgentError as exc:  # the stream is gone: the call below repairs (or says so)
            first = exc
        return lambda: self._run(ops, request, limit, budget, first=(conn, asked, first))

    def _prepare(self, ops: Sequence[Op]) -> tuple[list[tuple[str, dict[str, Any]]], bytes]:
        if self._closed:
            raise ConnectionFailed(self.host, "the transport is closed")
        ops = [(str(name), dict(args or {})) for name, args in ops]
        try:
            request = encode_request(ops)
        except ProtocolError as exc:
            raise from_protocol_error(exc, self.host) from exc
        self.calls += 1
        return ops, request

    def _run(self, ops: list[tuple[str, dict[str, Any]]], request: bytes, limit: float, budget: "Budget", *,
             first: tuple[Any, Any, Any] | None = None) -> list[Result]:
        """The call's attempts: the first one already sent by begin() when `first` is
        (connection, what it asked as held, rpyc's pending result or the AgentError of
        sending), then at most one repair and resend."""
        names = [name for name, _ in ops]
        repaired = False
        while True:
            if first is not None:
                (conn, asked, pending), first = first, None
            else:
                conn, why = self._connection(allow_repair=not repaired, budget=budget)
                if why is not None:
                    repaired = True
                if budget.spent():  # the connection stays, for the next call
                    raise TimedOut(self.host, f"no answer within {limit:g} s: the time went on "
                                   "reconnecting to the agent")
                asked, sent_request = self._ask(conn, ops, request)
                pending = None
            try:
                if pending is None:
                    reply = conn.call(sent_request, timeout=budget.remaining())
                elif isinstance(pending, AgentError):
                    raise pending
                else:
                    reply = conn.wait(pending, timeout=budget.remaining())
            except AgentError as exc:  # lost, timed out, refused the call
                self._drop(conn)  # at once: AgentConnection.close() never waits for the agent
                error = self._after_failed_call(exc, names, limit, budget, repaired=repaired)
                if error is not None:
                    raise error from exc
                continue  # the next _connection() repairs, once, within what is left of the budget
            try:
                results = decode_reply(reply, expected=len(ops))
                return results if asked is None else conn.held.resolve(asked, results)
            except ProtocolError as exc:
                if exc.code == ErrorCode.VERSION_MISMATCH and not repaired:
                    # Refused as a whole before anything ran: safe to resend after a redeploy.
                    with self._lock:
                        self._drop(conn)
                        self._endpoint = None  # forces deploy, which replaces the agent
                    repaired = True
                    self._connection(allow_repair=True, reason="agent upgraded", budget=budget)
                    continue
                raise from_protocol_error(exc, self.host) from exc

    @staticmethod
    def _ask(conn: Any, ops: list[tuple[str, dict[str, Any]]], request: bytes) -> tuple[Any, bytes]:
        """(what the request says it holds or None, the request to send): `request` as it is
        unless the connection holds answers (its agent advertised conditional replies) and
        an op of the batch may be answered "same"."""
        held = getattr(conn, "held", None)
        if held is None:
            return None, request
        asked = held.ask(ops)
        if not asked.conditional:
            return None, request
        try:
            return asked, encode_request(ops, held=asked.held)
        except ProtocolError:  # "held" pushed a request at the limit over it: send it plain
            return None, request

    def _after_failed_call(self, exc: AgentError, names: list[str], limit: float, budget: "Budget", *,
                           repaired: bool) -> ConnectionFailed | None:
        """The error to raise for a call that failed once sent, or None: repair and send again."""
        timed_out = isinstance(exc, AgentTimeout)
        # a timeout names the call's whole limit, not the part that was left for this attempt
        cause = f"the agent did not answer within {limit:g} s" if timed_out else _reason(exc)
        self.last_error = cause
        if timed_out:
            # A silent network looks exactly like this while paramiko still calls the
            # transport active: the next call must start from a new SSH connection.
            self._reset_tunnel()
        if any(name not in READ_ONLY_OPS for name in names):
            what = ", ".join(sorted(set(names) - READ_ONLY_OPS))
            return (TimedOut if timed_out else ConnectionFailed)(
                self.host, f"the connection to the agent broke during {what}: {cause}; the request "
                "may have reached the agent, so it was not sent again (check with ps)")
        if timed_out:
            # The whole time limit is spent: sending it again would hold the caller for as
            # long once more (and tie up one more agent thread).
            return TimedOut(self.host, f"{cause} (the call's time limit; the agent may be stuck "
                            "in an operation)")
        if repaired:
            return ConnectionFailed(self.host, f"the agent connection failed again after a repair: {cause}")
        if budget.remaining() < MIN_RETRY:
            return ConnectionFailed(self.host, f"the agent connection failed with no time left to "
                                    f"retry within {limit:g} s: {cause}")
        return None

    def configure(self, *, notice: Notice | None = None, timeout: float | None = None,
                  accept_new_host_key: bool | None = None) -> None:
        super().configure(notice=notice)
        if timeout is not None:
            self.timeout = float(timeout)
        if accept_new_host_key is not None:
            self.accept_new_host_key = accept_new_host_key

    def connect(self) -> "AgentTransport":
        """Connect now (deploying if needed) instead of on the first call."""
        self._connection(allow_repair=True)
        return self

    def close(self) -> None:
        """Close the agent connection and the SSH tunnel. Never raises."""
        with self._lock:
            self._closed = True
            self._close_conn()
            if self._tunnel is not None:
                self._tunnel.close()
                self._tunnel = None

    def describe(self) -> dict[str, Any]:
        """State for `tunnel status` / debugging. Never the secret."""
        endpoint = self._endpoint
        conn = self._conn
        info: dict[str, Any] = {
            "transport": self.name, "host": self.host, "via": self.via,
            "connected": conn is not None and not conn.closed,
            "calls": self.calls, "repairs": self.repairs, "deploys": self.deploys,
            "last_error": self.last_error,
        }
        if endpoint is not None:
            info.update(remote_port=endpoint.remote_port, agent_pid=endpoint.pid, version=endpoint.version)
        if self._agent_info:
            info["agent_version"] = self._agent_info.get("version")
            info["protocol"] = self._agent_info.get("protocol")
        if self._tunnel is not None:
            info["tunnel"] = self._tunnel.describe()
        return info

    @property
    def tunnel(self) -> Any:
        """The current tunnel.Tunnel (None before the first connection)."""
        return self._tunnel

    def stale(self) -> bool:
        """True once the ssh config, known_hosts or keys the tunnel was opened with changed
        (the tunnel keeper's pool then replaces this transport: pool.py)."""
        tunnel = self._tunnel
        return tunnel is not None and tunnel.stale()

    def __repr__(self) -> str:
        return f"AgentTransport({self.host!r})"

    # ------------------------------------------------------------------ connection

    def _call_limit(self, ops: list[tuple[str, dict[str, Any]]]) -> float:
        extra = 0.0
        for name, args in ops:
            if name in ("wait", "health"):
                value = args.get("timeout")
                extra += float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (
                    30.0 if name == "wait" else 2.0)
            else:
                extra += _OP_ALLOWANCE.get(name, 0.0)
        return self.timeout + extra

    def _usable(self) -> bool:
        conn, tunnel = self._conn, self._tunnel
        if conn is None or tunnel is None or conn.closed or not tunnel.alive:
            return False
        chan = conn.sock
        # The agent's side closed (killed, restarted): sshd has sent EOF/close already.
        return not (getattr(chan, "closed", False) or getattr(chan, "eof_received", False))

    def _connection(self, *, allow_repair: bool, reason: str | None = None,
                    budget: Budget | None = None) -> tuple[Any, str | None]:
        """(a usable AgentConnection, why it was repaired or None). Connecting steps fit
        in `budget` (none: their own timeouts only)."""
        with self._lock:
            if self._closed:
                raise ConnectionFailed(self.host, "the transport is closed")
            if reason is None and self._usable():
                return self._conn, None
            first = not self.connected_once
            if not first and not allow_repair:
                raise ConnectionFailed(self.host, f"the connection to the agent is broken: {self.last_error}")
            self._budget = budget or Budget(None)  # read by the steps of _open(), under the lock
            try:
                why = self._open(reason)
            finally:
                self._budget = Budget(None)
            if not first:
                self.repairs += 1
                self.notice(f"seamless-service: reconnected to {self.host} ({why})")
            self.connected_once = True
            return self._conn, (None if first else why)

    def _open(self, reason: str | None) -> str:
        """Make self._conn usable: tunnel, endpoint, agent connection, hello. Returns why
        (for the notice). At most one deploy per agent problem, plus the first-use deploy."""
        self._close_conn()
        why = reason
        tunnel = self._tunnel
        if tunnel is None or not tunnel.alive:
            had_tunnel = tunnel is not None
            self._open_tunnel()
            if had_tunnel and why is None:
                why = "SSH connection re-established"
        from ...deploy import cache

        endpoint = self._endpoint or cache.load(self.host)
        deployed = False
        if endpoint is None or endpoint.version != __version__:
            endpoint = self._deploy("first use" if endpoint is None else f"upgrading from {endpoint.version}")
            deployed = True
        try:
            conn = self._connect_agent(endpoint)
        except ConnectionFailed:
            raise
        except _AgentGone as gone:
            if deployed:
                raise AgentUnavailable(self.host, f"the agent was started but cannot be reached: {gone}") from gone
            if self._budget.spent():
                # It did not answer in time (stuck, overloaded): starting it again would not
                # help within the caller's time limit. Transient: nothing is remembered.
                raise AgentUnavailable(self.host, f"the agent did not answer in time: {gone}") from gone
            endpoint, conn = self._redeploy_and_connect("agent restarted",
                                                        "the agent was restarted but cannot be reached")
            deployed = True
            why = why or "agent restarted"
        info = self._hello(conn)
        if not self._compatible(info):
            conn.close()
            if deployed:
                return self._accept_version(info, endpoint, why)
            endpoint, conn = self._redeploy_and_connect(f"agent version {info.get('version')} replaced",
                                                        "the upgraded agent cannot be reached")
            deployed = True
            why = why or "agent upgraded"
            info = self._hello(conn)
            if not self._compatible(info):
                conn.close()
                return self._accept_version(info, endpoint, why)
        self._adopt(conn, endpoint, info)
        return why or "connection re-established"

    def _adopt(self, conn: Any, endpoint: Any, info: dict[str, Any]) -> None:
        """`conn` (whose agent said `info` in its hello) becomes the connection in use."""
        conn.held = held_values(info) if self.conditional else None
        self._conn, self._endpoint, self._agent_info = conn, endpoint, info

    def _redeploy_and_connect(self, reason: str, unreachable: str) -> tuple[Any, Any]:
        """Deploy (restart/upgrade) the agent, then connect; AgentUnavailable if it still
        cannot be reached — the one repair a call is allowed has been spent."""
        endpoint = self._deploy(reason)
        try:
            return endpoint, self._connect_agent(endpoint)
        except _AgentGone as again:
            raise AgentUnavailable(self.host, f"{unreachable}: {again}") from again

    def _accept_version(self, info: dict[str, Any], endpoint: Any, why: str | None) -> str:
        """A freshly deployed agent that still differs: usable if only the version differs."""
        if info.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"{self.host}: the agent speaks protocol {info.get('protocol')} (version {info.get('version')}), "
                f"this client protocol {PROTOCOL_VERSION} (version {__version__}); upgrade seamless-service "
                "on this machine or stop the other agent with `seamless-service agent stop HOST`")
        conn = self._connect_agent(endpoint)
        self._adopt(conn, endpoint, info)
        return why or "connection re-established"

    @staticmethod
    def _compatible(info: dict[str, Any]) -> bool:
        return info.get("protocol") == PROTOCOL_VERSION and info.get("version") == __version__

    def _open_tunnel(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self.via == "openssh":
            from .openssh import OpenSshTunnel

            # finds the ssh client; each agent connection is then one `ssh -W` process
            self._tunnel = OpenSshTunnel(self.host, ssh_config=self.ssh_config,
                                         accept_new_host_key=self.accept_new_host_key,
                                         connect_timeout=self.connect_timeout).open()
            return
        from .tunnel import Tunnel

        tunnel = Tunnel(self.host, ssh_config=self.ssh_config, accept_new_host_key=self.accept_new_host_key,
                        connect_timeout=self.connect_timeout, keep_session=self.keep_session,
                        notice=self._say)
        tunnel.open()  # AuthFailed / ConnectionFailed with paramiko's real cause
        self._tunnel = tunnel

    def _connect_agent(self, endpoint: Any) -> Any:
        from ..errors import AgentUnreachable, ForwardingRefused
        from .tunnel import CHANNEL_TIMEOUT

        step = self.connect_timeout if self.connect_timeout is not None else CHANNEL_TIMEOUT
        try:
            return self._tunnel.connect_agent(
                endpoint.remote_port, endpoint.secret, timeout=self._budget.cap(step),
                call_timeout=self.timeout, via=self.via)
        except ForwardingRefused as exc:
            # sshd's configuration (AllowTcpForwarding no, no-port-forwarding): lasting.
            raise AgentUnavailable(self.host, _strip_host(self.host, str(exc)), permanent=True) from exc
        except AgentUnreachable as exc:
            raise _AgentGone(_strip_host(self.host, str(exc))) from exc
        except AgentError as exc:  # incl. AgentAuthError: restarted with a new secret
            if not self._tunnel.alive:
                raise ConnectionFailed(self.host, f"the SSH connection was lost: {exc}") from exc
            raise _AgentGone(str(exc)) from exc

    def _hello(self, conn: Any) -> dict[str, Any]:
        try:
            results = conn.batch([("hello", {})], timeout=self._budget.cap(self.timeout))
        except ProtocolError as exc:
            if exc.code == ErrorCode.VERSION_MISMATCH:
                return {"protocol": None, "version": None, "error": exc.message}
            conn.close()
            raise ProtocolMismatch(f"{self.host}: the agent refused hello: {exc.message}") from exc
        except Exception as exc:  # AgentError: lost, or timed out
            conn.close()
            kind = TimedOut if isinstance(exc, AgentTimeout) else ConnectionFailed
            raise kind(self.host, f"the agent did not answer hello: {_reason(exc)}") from exc
        result = results[0]
        if not result.get("ok") or not isinstance(result.get("value"), dict):
            return {"protocol": None, "version": None}
        return result["value"]

    def _deploy(self, why: str) -> Any:
        """deploy(host): install/start the agent, refresh the cached endpoint."""
        from ...deploy import DeployError, SshError
        from ...deploy import bootstrap

        announced = []

        def progress(step: str, message: str) -> None:
            # Said once the host is known to take an agent (past SSH and SFTP), so a host
            # that cannot (rhl-guard) gets only the fallback's notice.
            if why == "first use" and step != "connect" and not announced:
                announced.append(step)
                self.notice(f"seamless-service: starting the agent on {self.host} (first use)")
            if step in SLOW_DEPLOY_STEPS:
                # seconds to minutes (a venv, wheels, an upload, pip): say what is going on
                self.notice(f"seamless-service: {self.host}: {message}")

        if self.via == "openssh":
            endpoint = self._start_over_openssh(why)
            if endpoint is not None:
                return endpoint
            # Not installed, or another version: deploy installs it (paramiko and SFTP; its
            # progress notices say so). A host that forces rhl-guard lands here too.
        try:
            with self._budget.paused():  # installs take minutes; their steps have their own limits
                endpoint = bootstrap.deploy(self.host, ssh_config=self.ssh_config,
                                            accept_new_host_key=self.accept_new_host_key,
                                            timeout=self.connect_timeout, progress=progress, notice=self._say)
        except SshError as exc:
            guard = self._guard_message()
            if guard is not None:
                raise AgentUnavailable(self.host, "the SSH key allows only rhl-* helpers (rhl-guard)",
                                       guarded=True) from exc
            from .ssh_errors import map_ssh_error

            if self._tunnel is not None and self._tunnel.alive:
                # We are logged in, so the host is reachable: what failed is the agent's setup,
                # over an SSH session that broke or timed out: the next command may succeed.
                raise AgentUnavailable(self.host, f"cannot start the agent: {_reason(exc)}") from exc
            raise map_ssh_error(self.host, exc) from exc
        except DeployError as exc:
            # The host refused the install or the start (no usable Python, pip failed, the
            # agent would not start): lasting until someone changes the host.
            guard = self._guard_message()
            raise AgentUnavailable(self.host, f"cannot start the agent: {_reason(exc)}",
                                   guarded=guard is not None, permanent=True) from exc
        self.deploys += 1
        self._endpoint = endpoint
        return endpoint

    def _start_over_openssh(self, why: str) -> Any:
        """Start (or find) the installed agent with `ssh HOST` and cache its endpoint; None
        when it must be installed or upgraded first. ssh's own failures come as the client
        errors openssh.py maps (AuthFailed, ConnectionFailed...)."""
        from ...deploy import cache
        from .openssh import StartFailed

        try:
            with self._budget.paused():  # as deploy: starting has its own limit (START_TIMEOUT)
                endpoint = self._tunnel.start_agent()
        except StartFailed as exc:
            if exc.guarded:
                raise AgentUnavailable(self.host, "the SSH key allows only rhl-* helpers (rhl-guard)",
                                       guarded=True) from exc
            raise AgentUnavailable(self.host, f"cannot start the agent: {exc}", permanent=True) from exc
        if endpoint is None:
            return None
        if why == "first use":  # said once started: a host that takes no agent gets the fallback's notice only
            self.notice(f"seamless-service: started the agent on {self.host} (first use)")
        try:
            cache.store(endpoint)
        except OSError as exc:
            raise AgentUnavailable(self.host, f"cannot write the client cache {cache.host_file(self.host)}: "
                                   f"{exc.strerror or exc}") from exc
        self.deploys += 1
        self._endpoint = endpoint
        return endpoint

    def _say(self, message: str) -> None:
        # looked up at call time: in the tunnel keeper, `notice` is this call's caller's
        self.notice(message)

    def _guard_message(self) -> str | None:
        """The rhl-guard refusal our kept session got instead of running `cat`, if any."""
        tunnel = self._tunnel
        if tunnel is None:
            return None
        deadline = time.monotonic() + 0.3
        output = tunnel.forced_command_output()
        while output is None and time.monotonic() < deadline and tunnel.keep_session:
            time.sleep(0.02)  # the refusal may still be on its way (one round trip)
            output = tunnel.forced_command_output()
        if output and "rhl-guard" in output:
            return output.splitlines()[0][:200]
        return None

    def _reset_tunnel(self) -> None:
        with self._lock:
            if self._tunnel is not None:
                self._tunnel.close()

    def _drop(self, conn: Any) -> None:
        with self._lock:
            if self._conn is conn:
                self._close_conn()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def held_values(hello: dict[str, Any]) -> Any:
    """A connection's HeldValues when its agent's hello advertised conditional replies,
    else None: an agent that did not list them never receives "held" (it would refuse it)."""
    ops = advertised(hello)
    if not ops:
        return None
    from .held import HeldValues

    return HeldValues(ops)


class _AgentGone(Exception):
    """Internal: the agent's port is closed or its handshake failed (redeploy may help)."""
