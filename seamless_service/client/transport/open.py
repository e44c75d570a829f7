"""Choosing, falling back and keeping transports: `open_transport(host, kind)`.

    transport = open_transport("cluster-frontend")          # kind="auto"
    results = transport.batch([("ps", {}), ("hello", {})])  # raw results
    transport.close()

Kinds (all return the same raw results, see agent/ops/*):
  local   host None: ops run in-process on this machine (client/local.py), no SSH at all
  agent   the host's agent over an SSH tunnel (client/agent_transport.py), deployed on first use
  ssh     per-call `ssh HOST rhl-* --json` (client/ssh_transport.py), for hosts where the
          agent cannot run
  auto    agent; if the agent cannot run on the host (the key is forced through rhl-guard,
          port forwarding is refused, no usable Python, ...) or cannot be reached right
          now (timeout, dropped connection), ssh, with one line on stderr per command:
          `seamless-service: HOST: using per-call ssh (agent unavailable: REASON)`.
          Only the lasting reasons are remembered (in this process and in the client
          cache, for CHOICE_TTL_GUARDED when rhl-guard was the reason, else CHOICE_TTL), so
          later commands go straight to ssh (saying so); after a transient one the next
          command tries the agent again. `forget_choice(host)` or kind="agent" tries the
          agent again at once.

Inside the client daemon (daemon/pool.py: in_daemon()), transports live in the pool under
`transport:{kind}:{host}[|ssh config]#{tag}`, so one SSH connection and one authenticated
rpyc connection per host persist between CLI calls. What open_transport returns there is a
lease: close() leaves the pooled transport open, and a fatal error (ConnectionFailed,
ProtocolMismatch, after the transport's own repair) drops it from the pool, so the next
call starts afresh.

The daemon runs each command with its caller's environment, so a pooled transport serves
only callers whose inputs are its own (client/inputs.py): the tag is a hash of the
environment values it depends on (local: the absolute launcher folder and HOME; remote:
REMOTE_ENV), and the files it read (agent config.yaml and a data-roots file; ssh config,
known_hosts, keys) are checked by its `stale()` on every use: an edited file means a new
transport on the next command (daemon/pool.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import ConnectionFailed, ProtocolMismatch, UsageError

KINDS = ("auto", "agent", "ssh", "local")
CHOICE_FILE = "transport-choice.json"
CHOICE_TTL_GUARDED = 24 * 3600.0   # rhl-guard on a key does not go away by itself
CHOICE_TTL = 15 * 60.0             # other lasting reasons (no Python, install failed) may be fixed soon
# After a transient fallback (timeout, dropped connection), a long-lived auto transport
# tries the agent again after this many seconds; a new command tries it at once.
AGENT_RETRY_AFTER = 60.0
# What a pooled remote transport depends on in the environment, besides its files: HOME
# (where ~/.ssh/config, known_hosts and default keys are), the user name paramiko logs in
# with when the config names none (getpass.getuser's variables), the ssh-agent it asks for
# keys, and the client cache holding the agent endpoints and remembered choices.
REMOTE_ENV = ("HOME", "USER", "LOGNAME", "LNAME", "USERNAME", "SSH_AUTH_SOCK", "XDG_CACHE_HOME")

Notice = Callable[[str], None]


class Transport(Protocol):
    """What every transport offers."""

    name: str
    host: str

    def batch(self, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def open_transport(host: str | None, kind: str = "auto", *, ssh_config: str | os.PathLike | None = None,
                   timeout: float | None = None, notice: Notice | None = None,
                   accept_new_host_key: bool = False) -> Any:
    """A transport to `host` (None: this machine). See the module docstring for `kind`.

    Nothing connects here: the first batch() does (and may deploy the agent).
    Raises UsageError for an unknown kind or a host given with kind="local".
    """
    if kind not in KINDS:
        raise UsageError(f"unknown transport {kind!r}; choose one of {', '.join(KINDS)}")
    if host is None or kind == "local":
        if host is not None:
            raise UsageError(f"the local transport runs on this machine; it takes no host (got {host!r})")
        return _pooled("transport:local", _make_local, inputs=_local_inputs)
    if not host or host.startswith("-"):
        raise UsageError(f"not a host name: {host!r}")
    if ssh_config is not None:
        # Absolute now: a relative --ssh-config means the caller's cwd, and a pooled
        # transport reconnects later, from another command's cwd.
        ssh_config = os.path.abspath(os.path.expanduser(os.fspath(ssh_config)))
    opts = {"ssh_config": ssh_config, "timeout": timeout, "notice": notice,
            "accept_new_host_key": accept_new_host_key}
    if kind == "agent":
        return _agent(host, **opts)
    if kind == "ssh":
        return _ssh(host, **opts)
    return AutoTransport(host, lambda: _agent(host, **opts), lambda guarded: _ssh(host, guarded=guarded, **opts),
                         notice=notice, remembered=remembered_choice(host))


# --------------------------------------------------------------------------- factories


def _make_local() -> Any:
    from .local import LocalTransport

    return LocalTransport()


def _local_inputs() -> tuple[str, str | None]:
    """What the local transport depends on in the environment: the launcher folder it reads
    (REMOTE_HTTP_LAUNCHER_DIR, else under HOME; absolute) and HOME (`~` in the path policy)."""
    from ...agent import paths

    return os.path.abspath(paths.base_dir()), os.environ.get("HOME")


def _remote_inputs() -> Any:
    from .inputs import env_values

    return env_values(REMOTE_ENV)


def _key(kind: str, host: str, ssh_config: Any) -> str:
    # The same alias under another ssh config is another host.
    return f"transport:{kind}:{host}" + (f"|{os.fspath(ssh_config)}" if ssh_config is not None else "")


def _agent(host: str, *, ssh_config: Any, timeout: float | None, notice: Notice | None,
           accept_new_host_key: bool) -> Any:
    from .agent import DEFAULT_TIMEOUT, AgentTransport

    def factory() -> AgentTransport:
        return AgentTransport(host, ssh_config=ssh_config, timeout=timeout or DEFAULT_TIMEOUT,
                              accept_new_host_key=accept_new_host_key, notice=notice)

    return _pooled(_key("agent", host, ssh_config), factory, inputs=_remote_inputs, notice=notice,
                   timeout=timeout or DEFAULT_TIMEOUT, accept_new_host_key=accept_new_host_key)


def _ssh(host: str, *, ssh_config: Any, timeout: float | None, notice: Notice | None,
         accept_new_host_key: bool, guarded: bool | None = None) -> Any:
    from .ssh import DEFAULT_TIMEOUT, SshTransport

    def factory() -> SshTransport:
        return SshTransport(host, ssh_config=ssh_config, timeout=timeout or DEFAULT_TIMEOUT,
                            guarded=guarded, notice=notice)

    leased = _pooled(_key("ssh", host, ssh_config), factory, inputs=_remote_inputs, notice=notice,
                     timeout=timeout or DEFAULT_TIMEOUT)
    if guarded and getattr(leased, "guarded", None) is None:
        leased.guarded = guarded
    return leased


def _pooled(family: str, factory: Callable[[], Any], *, inputs: Callable[[], Any], notice: Notice | None = None,
            timeout: float | None = None, accept_new_host_key: bool | None = None) -> Any:
    """factory() outside the daemon; inside, a lease on the pooled transport made for
    callers with this caller's `inputs()` (see the module docstring)."""
    from . import pool

    if not pool.in_daemon():
        return factory()
    from .inputs import variant

    name = f"{family}#{variant(inputs())}"
    return PooledTransport(name, pool.get(name, factory, family=family), notice=notice, timeout=timeout,
                           accept_new_host_key=accept_new_host_key)


class PooledTransport:
    """A lease on a transport held by the client daemon's pool (see the module docstring)."""

    def __init__(self, pool_name: str, inner: Any, *, notice: Notice | None = None,
                 timeout: float | None = None, accept_new_host_key: bool | None = None):
        self.pool_name = pool_name
        self.inner = inner
        self._notice = notice
        self._timeout = timeout
        self._accept_new = accept_new_host_key

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def host(self) -> str:
        return self.inner.host

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("pool_name", "inner", "_notice", "_timeout", "_accept_new"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def batch(self, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        from . import pool

        if self._notice is not None and hasattr(self.inner, "notice"):
            self.inner.notice = self._notice  # this CLI call's notices go to this caller
        if self._timeout is not None and hasattr(self.inner, "timeout"):
            # The pooled transport was made by an earlier command; this one's --timeout
            # applies to its own calls (the daemon runs one command at a time).
            self.inner.timeout = float(self._timeout)
        if self._accept_new is not None and hasattr(self.inner, "accept_new_host_key"):
            # Likewise: only a caller who said --accept-new-host-key may have a new host key
            # written to known_hosts when the pooled transport reconnects.
            self.inner.accept_new_host_key = self._accept_new
        try:
            return self.inner.batch(ops)
        except (ConnectionFailed, ProtocolMismatch):
            pool.drop(self.pool_name)
            raise
        finally:
            pool.touch(self.pool_name)   # idle from now on (`tunnel status`); no-op once dropped

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.inner, "describe", None)
        return describe() if callable(describe) else {"transport": self.name}

    def close(self) -> None:
        """Leave the pooled transport open: the daemon keeps it for the next call."""

    def __enter__(self) -> "PooledTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- auto


class AutoTransport:
    """The agent, or — if the agent cannot run on the host, or cannot be reached right
    now — the ssh fallback.

    Falling back is said once, on the first batch it serves (`notice`, default stderr):
    `seamless-service: HOST: using per-call ssh (agent unavailable: REASON)`, and
    `fallback_reason` holds REASON while ssh answers. A lasting reason (AgentUnavailable
    .permanent: rhl-guard, forwarding refused, no usable Python, the install refused) is
    remembered (remember_choice); a transient one (a timeout, a dropped connection, an
    agent restarting) is not: the next command tries the agent again, and so does this
    transport after AGENT_RETRY_AFTER seconds (an API Host or `ps --watch` lives long).
    `remembered` (from remembered_choice) starts on ssh without trying the agent.
    """

    name = "auto"

    def __init__(self, host: str, make_agent: Callable[[], Any] | None, make_ssh: Callable[[bool | None], Any], *,
                 notice: Notice | None = None, remembered: dict[str, Any] | None = None):
        self.host = host
        self._make_agent = make_agent
        self._make_ssh = make_ssh
        self._notice = notice
        self._lock = threading.Lock()
        self._agent: Any = None
        self._ssh: Any = None
        self._use_ssh = False
        self._permanent = False
        self._retry_at = 0.0
        self._unsaid: str | None = None     # the fallback line, until a batch used ssh
        self._said = False                  # once per transport (one per command and host)
        self.fallback_reason: str | None = None
        if remembered is not None:
            reason = str(remembered.get("reason") or "remembered")
            self._switch(reason, guarded=bool(remembered.get("guarded")), permanent=True,
                         remembered=float(remembered.get("since") or time.time()))
        elif make_agent is not None:
            self._agent = make_agent()

    @property
    def active(self) -> Any:
        """The transport answering now (the agent's unless the fallback is in use)."""
        return self._ssh if self._use_ssh else self._agent

    @property
    def kind(self) -> str:
        return "ssh" if self._use_ssh else "agent"

    def batch(self, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        from .agent import AgentUnavailable

        if self._use_ssh and not self._retry_due():
            return self._through_ssh(ops)
        agent = self._agent_now()
        try:
            results = agent.batch(ops)
        except AgentUnavailable as exc:
            # Raised while connecting, before anything was sent: answering through ssh
            # instead sends nothing twice. An agent that worked before and now fails is
            # a transient problem, not a reason to switch.
            if getattr(agent, "connected_once", False):
                raise
            self._fall_back(exc)
            return self._through_ssh(ops)
        if self._use_ssh:
            self._use_ssh, self.fallback_reason = False, None  # the agent answers again
        return results

    def _retry_due(self) -> bool:
        return not self._permanent and self._make_agent is not None and time.monotonic() >= self._retry_at

    def _agent_now(self) -> Any:
        with self._lock:
            if self._use_ssh:
                self._retry_at = time.monotonic() + AGENT_RETRY_AFTER  # one try per interval
            if self._agent is None:
                self._agent = self._make_agent()
            return self._agent

    def _through_ssh(self, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        with self._lock:
            line, self._unsaid = self._unsaid, None
        if line is not None:
            (self._notice if self._notice is not None else _print)(line)
        return self._ssh.batch(ops)

    def _fall_back(self, exc: Any) -> None:
        reason = str(exc)
        prefix = f"{self.host}: "
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
        guarded = bool(getattr(exc, "guarded", False))
        permanent = bool(getattr(exc, "permanent", False))
        if permanent:
            remember_choice(self.host, "ssh", reason=reason, guarded=guarded)
        self._switch(reason, guarded=guarded, permanent=permanent)

    def _switch(self, reason: str, *, guarded: bool, permanent: bool, remembered: float | None = None) -> None:
        with self._lock:
            # The agent transport that failed is let go; a retry makes a new one.
            agent, self._agent = self._agent, None
            if self._ssh is None:
                self._ssh = self._make_ssh(True if guarded else None)
            self._use_ssh, self._permanent = True, permanent
            self._retry_at = time.monotonic() + AGENT_RETRY_AFTER
            self.fallback_reason = reason
            if remembered is not None:
                until = time.strftime("%H:%M", time.localtime(remembered + choice_ttl(guarded)))
                reason = f"{reason}; remembered until {until}, --transport agent tries it now"
            elif not permanent:
                reason = f"{reason}; the agent is tried again on the next command"
            if not self._said:
                self._unsaid = f"seamless-service: {self.host}: using per-call ssh (agent unavailable: {reason})"
                self._said = True
        if agent is not None:
            self._release(agent)

    @staticmethod
    def _release(agent: Any) -> None:
        # A new agent transport is made if the agent is tried again: a pooled one that
        # failed has been dropped from the pool already (PooledTransport.batch).
        if isinstance(agent, PooledTransport):
            from . import pool

            pool.drop(agent.pool_name)
        else:
            agent.close()

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.active, "describe", None)
        info = describe() if callable(describe) else {}
        return {**info, "chosen_by": "auto", "fallback_reason": self.fallback_reason}

    def close(self) -> None:
        with self._lock:
            agent, ssh = self._agent, self._ssh
            self._agent = None
        for transport in (agent, ssh):
            if transport is not None:
                transport.close()

    def __enter__(self) -> "AutoTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _print(message: str) -> None:
    from .agent import print_notice

    print_notice(message)


# --------------------------------------------------------------------------- remembered choices

# The choice file, parsed, kept while its stat signature holds (a command in the tunnel
# keeper must see another process's remember/forget at once, and a caller with another
# XDG_CACHE_HOME its own file); plus the choices this process could not write, per file.
_parsed: dict[str, tuple[Any, dict[str, dict[str, Any]]]] = {}
_unwritten: dict[tuple[str, str], dict[str, Any]] = {}
_memory_lock = threading.Lock()
_write_lock = threading.Lock()   # read-modify-write of the file: one thread at a time


def _choice_path() -> Any:
    from ...deploy.cache import cache_root

    return cache_root() / CHOICE_FILE


def _load_choices(path: Any = None) -> dict[str, dict[str, Any]]:
    """The choice file's contents (a copy); {} if it is missing or unreadable."""
    from .inputs import file_state

    name = str(path if path is not None else _choice_path())
    state = file_state(name)
    with _memory_lock:
        hit = _parsed.get(name)
    if hit is not None and hit[0] == state:
        return dict(hit[1])
    try:
        data = json.loads(Path(name).read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    with _memory_lock:
        if len(_parsed) > 16:
            _parsed.clear()   # one per XDG_CACHE_HOME seen: a handful at most
        _parsed[name] = (state, data)
    return dict(data)


def choice_ttl(guarded: bool) -> float:
    """How long a remembered fallback holds."""
    return CHOICE_TTL_GUARDED if guarded else CHOICE_TTL


def remembered_choice(host: str) -> dict[str, Any] | None:
    """The remembered fallback for `host` ({"kind": "ssh", "reason", "guarded", "since"}),
    or None if there is none or it expired."""
    path = _choice_path()
    entry = _load_choices(path).get(host)
    if entry is None:
        with _memory_lock:
            entry = _unwritten.get((str(path), host))
    if not isinstance(entry, dict) or entry.get("kind") != "ssh":
        return None
    ttl = choice_ttl(bool(entry.get("guarded")))
    since = entry.get("since")
    if not isinstance(since, (int, float)) or time.time() - since > ttl:
        return None
    return entry


def remember_choice(host: str, kind: str, *, reason: str, guarded: bool) -> None:
    """Remember that `host` is answered by `kind`; best effort on disk (0600, atomic)."""
    from ...deploy.cache import write_private

    entry = {"kind": kind, "reason": reason[:300], "guarded": guarded, "since": time.time()}
    path = _choice_path()
    with _write_lock:
        choices = _load_choices(path)
        choices[host] = entry
        try:
            write_private(path, json.dumps(choices, sort_keys=True).encode())
        except OSError:
            with _memory_lock:  # still spares this process further attempts
                _unwritten[(str(path), host)] = entry


def forget_choice(host: str) -> bool:
    """Forget a remembered fallback, so the next call tries the agent again."""
    from ...deploy.cache import write_private

    path = _choice_path()
    with _memory_lock:
        had = _unwritten.pop((str(path), host), None) is not None
    with _write_lock:
        choices = _load_choices(path)
        if host in choices:
            had = True
            del choices[host]
            try:
                write_private(path, json.dumps(choices, sort_keys=True).encode())
            except OSError:
                pass
    return had
