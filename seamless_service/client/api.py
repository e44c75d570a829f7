"""The public Python API: `Host` (one server) and `Fleet` (many, asked in parallel).

    from seamless_service import Host, Fleet, ServiceError

    with Host("cluster-frontend") as host:
        for row in host.ps(status="running"):
            print(row["key"], row["port"])
        ps, persistent, hello = host.batch([          # ONE round trip
            ("ps", {}),
            ("persistent", {"paths": ["/data/buffers"], "level": 2, "marker": ".HASHSERVER_PREFIX"}),
            ("hello", {}),
        ])

    with Fleet(["frontend-a", "frontend-b", "frontend-c"]) as fleet:
        result = fleet.ps(service="hashserver")
        result.rows      # every row, tagged with "host"
        result.errors    # {"frontend-c": ConnectionFailed(...)} for hosts that failed

`Host.local()` is this machine (no SSH). `Host(name, transport=MockTransport(handler))`
answers from a function instead (client/transport/mock.py), for testing code built on this
API without any host. Remote hosts are reached through the `auto`
transport by default: the host's agent over an SSH tunnel (deployed on first use), or plain
`ssh` + `rhl-*` helpers where the agent cannot run (see client/transport/open.py). Every value
has the same shape whichever transport answered.

Errors (client/errors.py, re-exported by `seamless_service`): ServiceError >
ConnectionFailed > AuthFailed; ProtocolMismatch; OpError (carries the agent's `code`);
UsageError. Messages are one line and name the host.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .errors import ConnectionFailed, OpError, ServiceError, UsageError
from .transport.base import DEFAULT_TIMEOUT, Notice, Op, Result, Transport


class Rows(list):
    """A list of rows; `token` (from `ps`) can be passed to `Host.wait` to wait for a change."""

    token: str | None = None


def _args(**kwargs: Any) -> dict[str, Any]:
    # None means "not given", as in the op schemas: left out, defaults apply on the agent.
    return {k: v for k, v in kwargs.items() if v is not None}


def _keys(keys: str | Iterable[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys)


def _plain(ops: Sequence[Op]) -> list[Op]:
    """`ops` as every transport takes them: (name, a dict of its own) pairs."""
    return [(name, dict(args or {})) for name, args in ops]


def _ps_op(*, side: str = "server", status: str | None = None, no_status: bool = False, host: str | None = None,
           **filters: str | None) -> Op:
    return "ps", _args(side=side, status=status, no_status=no_status or None, host=host, **filters)


def _ps_rows(value: dict[str, Any]) -> "Rows":
    rows = Rows(value.get("rows") or [])
    rows.token = value.get("token")
    return rows


def _one_value(values: list[Any]) -> Any:
    (value,) = values
    if isinstance(value, OpError):
        raise value
    return value


def _then(finish: Callable[[], Any] | None, after: Callable[[Any], Any]) -> Callable[[], Any] | None:
    return None if finish is None else (lambda: after(finish()))


def _raising(exc: BaseException) -> Callable[[], Any]:
    def again() -> Any:
        raise exc
    return again


def _result_value(result: Result, host: str) -> Any:
    if result.get("ok"):
        return result.get("value")
    return OpError.from_result(result.get("error"), host)


class Host:
    """One server (its agent, or its `rhl-*` helpers over ssh), or this machine.

    Nothing connects until the first call. Thread-safe: calls from several threads share
    one connection. Use as a context manager, or call `close()`, to close the tunnel.
    """

    def __init__(self, name: str | None, *, transport: str | Transport = "auto",
                 ssh_config: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT,
                 notice: Notice | None = None, accept_new_host_key: bool = False, via: str | None = None):
        """`name`: an ssh host alias (`[user@]alias`, resolved through the ssh config), or
        None for this machine. `transport`: "auto" (default), "agent", "ssh" or "local";
        or a Transport instance to use as it is (e.g. a MockTransport), closed with the Host.
        `ssh_config`: another ssh config file (like `ssh -F`). `timeout`: seconds per call,
        reconnecting and retrying included (ops that wait, such as `wait` or `stop`, get
        their own time on top). `notice`: called with one-line messages about repairs and
        fallbacks (default: stderr); see also `fallback`.
        `accept_new_host_key`: add an unknown host key to known_hosts (first contact only;
        a changed key is always refused).
        `via`: the SSH client that carries the agent's connection: "openssh" (the user's own
        `ssh`, as `ssh HOST` would connect: ControlMaster, ProxyJump, GSSAPI...) or
        "paramiko"; None: $SEAMLESS_SERVICE_SSH, else paramiko (transport/open.py says why)."""
        given = transport if isinstance(transport, Transport) else None
        kind = transport.name if isinstance(transport, Transport) else transport
        if name is None and given is None and kind not in ("auto", "local"):
            raise UsageError(f"this machine is reached with the local transport, not {kind!r}")
        self.name = name if name is not None else "localhost"
        self._host = name
        self._kind = "local" if name is None and given is None else kind
        self._ssh_config = ssh_config
        self._timeout = timeout
        self._notice = notice
        self._accept_new = accept_new_host_key
        self._via = via
        self._transport: Transport | None = given
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def local(cls, **kwargs: Any) -> "Host":
        """This machine: ops run in-process on its launcher state, no SSH."""
        return cls(None, transport="local", **kwargs)

    # ------------------------------------------------------------------ plumbing

    @property
    def transport(self) -> Transport:
        """The underlying transport (opened on first use)."""
        transport = self._transport
        if transport is not None and not self._closed:
            # every call comes here: once open, no lock (close() clears it under the lock;
            # a call racing close() gets the transport's own "closed" error, as it would
            # had it started a moment earlier)
            return transport
        with self._lock:
            if self._closed:
                raise UsageError(f"{self.name}: this Host is closed")
            if self._transport is None:
                from .transport.open import open_transport

                self._transport = open_transport(self._host, self._kind, ssh_config=self._ssh_config,
                                                 timeout=self._timeout, notice=self._notice,
                                                 accept_new_host_key=self._accept_new, via=self._via)
            return self._transport

    @property
    def fallback(self) -> str | None:
        """Why this host is answered through per-call ssh and the rhl-* helpers instead of
        its agent (the auto transport's fallback, also said once through `notice`), or
        None while the agent answers (or before the first call)."""
        transport = self._transport
        return transport.fallback_reason if transport is not None else None

    def raw_batch(self, ops: Sequence[Op]) -> list[Result]:
        """The transport's raw results ({"ok", "value" | "error"}), one per op."""
        return self.transport.batch(_plain(ops))

    def batch(self, ops: Sequence[Op]) -> list[Any]:
        """Run `ops` ([(op, args), ...]) in ONE round trip (over ssh: as few sessions as the
        host allows). Returns one item per op, in order: its value, or an OpError instance
        for an op that failed (one failing op never fails its neighbours).

        Raises ConnectionFailed/AuthFailed/ProtocolMismatch when the host cannot answer.
        """
        return [_result_value(result, self.name) for result in self.raw_batch(ops)]

    def _begin(self, ops: Sequence[Op]) -> Callable[[], list[Any]] | None:
        """batch(ops) split in two for Fleet: the request is sent now and the function
        returned waits for it; None (nothing sent) unless the transport is open."""
        transport = self._transport
        if transport is None or self._closed:
            return None
        finish = transport.begin(_plain(ops))
        if finish is None:
            return None
        return lambda: [_result_value(result, self.name) for result in finish()]

    def _one(self, op: str, args: dict[str, Any]) -> Any:
        return _one_value(self.batch([(op, args)]))

    # ------------------------------------------------------------------ ops

    def ps(self, *, side: str = "server", status: str | None = None, no_status: bool = False,
           host: str | None = None, **filters: str | None) -> Rows:
        """Service rows, like `rhl-ps --json` (side="server") or `rhl-ps --client --json`
        (side="client"), with the agent's status corrections. Filters: status, and
        service/cluster/project/stage/subproject/substage/mode/queue matched against each
        row's meta (or its key); `host` keeps client rows whose ssh_host is that."""
        return _ps_rows(self._one(*_ps_op(side=side, status=status, no_status=no_status, host=host, **filters)))

    def persistent(self, paths: str | Iterable[str], *, level: int = 0, file: str | None = None,
                   marker: str | None = None, sizes: bool = True, refresh: bool = False) -> list[dict[str, Any]]:
        """Data directories under `paths`, like `rhl-ps-persistent --json`: path, state
        (absent/empty/populated), size, modified, plus `bytes` measured by the agent (None
        over ssh, where `bytes_state` is "unavailable")."""
        value = self._one("persistent", _args(paths=_keys(paths), level=level, file=file, marker=marker,
                                              sizes=sizes, refresh=refresh or None))
        return value.get("rows") or []

    def inspect(self, key: str) -> dict[str, Any]:
        """One server state file: {"key", "data": the JSON object, "mtime"}."""
        return self._one("inspect", {"key": key})

    def logs(self, key: str, tail: int | None = None, offset: int | None = None,
             max_bytes: int | None = None) -> dict[str, Any]:
        """A service's log: {"key", "data": bytes, "offset", "next_offset", "size",
        "truncated", "reset"}. `tail=N`: the last N lines; `offset=K`: from byte K on (pass
        the previous `next_offset` to follow a log)."""
        return self._one("logs", _args(key=key, tail=tail, offset=offset, max_bytes=max_bytes))

    def stop(self, keys: str | Iterable[str]) -> dict[str, Any]:
        """Stop services (through the host's rhl-stop, after safety checks):
        {"results": [{"key", "outcome", "stopped", "signalled", "status", "pid"}, ...], ...}.
        Never sent twice: if the connection breaks mid-call, ConnectionFailed says so."""
        return self._one("stop", {"keys": _keys(keys)})

    def rm(self, keys: str | Iterable[str], *, client: bool = False, server: bool = False,
           force: bool = False) -> dict[str, Any]:
        """Remove state files (neither side given: both), refusing to orphan a running
        service unless `force`: {"results": [{"key", "removed", "outcome"}, ...], ...}."""
        return self._one("rm", _args(keys=_keys(keys), client=client or None, server=server or None,
                                     force=force or None))

    def clear(self, path: str, key: str | None = None, *, force: bool = False) -> dict[str, Any]:
        """Empty a data directory (as rhl-clear does), refused while a service runs there unless
        `force`: {"path", "removed", "ok", "exit_status", "stdout", "stderr", ...}."""
        return self._one("clear", _args(path=path, key=key, force=force or None))

    def start(self, config: dict[str, Any], *, timeout: float = 120.0,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Start the service a seamless-config launcher configuration describes (e.g.
        `seamless_config.tools.configure_hashserver(...)`, or `Resolved.config`), exactly
        as remote-http-launcher would, unless it runs already (then nothing changes).
        Waits up to `timeout` seconds for `running`: {"key", "outcome" ("already running" |
        "started" | "failed"), "launched", "pid", "host", "port", "log", "log_tail", ...}."""
        from .lifecycle.control import start_service

        return start_service(self.transport, config, timeout=timeout, progress=progress)

    def restart(self, config: dict[str, Any], *, timeout: float = 120.0,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Stop, remove the state (server file, and this machine's client file), start; the
        previous log is kept as KEY.log.1. As `start`, plus "stopped" and "previous_pid"."""
        from .lifecycle.control import restart_service

        return restart_service(self.transport, config, timeout=timeout, progress=progress)

    def health(self, keys: str | Iterable[str] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        """Pid alive, port open, HTTP handshake of running services (agent only)."""
        return self._one("health", _args(keys=None if keys is None else _keys(keys), timeout=timeout))

    def wait(self, token: str | None = None, timeout: float = 30) -> dict[str, Any]:
        """Long-poll until the launcher state changes or `timeout` passes (agent only):
        {"changed": bool, "token"}. Pass the token of the previous `ps` or `wait`."""
        return self._one("wait", _args(token=token, timeout=timeout))

    def hello(self) -> dict[str, Any]:
        """Who answers: version, protocol, ops, ... plus "transport" (agent, ssh or local)."""
        value = dict(self._one("hello", {}))
        value.setdefault("transport", self._transport_kind())
        return value

    def _transport_kind(self) -> str:
        return self.transport.kind

    # ------------------------------------------------------------------ lifecycle

    def describe(self) -> dict[str, Any]:
        """The transport's state (connected, repairs, ...); never a secret."""
        transport = self._transport
        return {"host": self.name, "transport": self._kind, **(transport.describe() if transport is not None else {})}

    def close(self) -> None:
        """Close the tunnel (inside the tunnel keeper, the pooled connection stays open)."""
        with self._lock:
            self._closed = True
            transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Host({self.name!r}, transport={self._kind!r})"


@dataclass
class FleetResult:
    """What a fleet-wide call gathered.

    `rows`: for ps, every host's rows in host order, each tagged with `"host"` (the fleet
    host name; for client-side rows this replaces the helper's `host`, which equals their
    `hostname`). `results`: for batch, host -> one item per op (value or OpError).
    `errors`: host -> the ServiceError of each host that could not answer.
    `timings`: host -> (start, end) of its request (time.monotonic()).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, list[Any]] = field(default_factory=dict)
    errors: dict[str, ServiceError] = field(default_factory=dict)
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every host answered."""
        return not self.errors


class Fleet:
    """Many hosts, asked in parallel, results merged. `ps` and `batch` send their request
    to every host with an open agent connection before reading any answer (one thread, no
    hand-offs); a host still to connect, or answered by per-call ssh, is asked in a worker
    thread (kept between calls) meanwhile."""

    def __init__(self, hosts: Iterable[str | Host], *, transport: str = "auto",
                 ssh_config: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT,
                 notice: Notice | None = None, accept_new_host_key: bool = False, via: str | None = None):
        """`hosts`: ssh aliases or Host objects (a Host passed in stays the caller's to close).
        The other arguments apply to the hosts given by name; `transport` is a kind here
        (a transport instance serves one host: `Fleet([Host(name, transport=...), ...])`)."""
        if not isinstance(transport, str):
            raise UsageError("Fleet(transport=...) takes a kind (auto, agent, ssh, local); give each host its own "
                             "transport instead: Fleet([Host(name, transport=...), ...])")
        self.hosts: list[Host] = []
        self._owned: list[Host] = []
        for item in hosts:
            if isinstance(item, Host):
                self.hosts.append(item)
            else:
                host = Host(item, transport=transport, ssh_config=ssh_config, timeout=timeout, notice=notice,
                            accept_new_host_key=accept_new_host_key, via=via)
                self.hosts.append(host)
                self._owned.append(host)
        names = [host.name for host in self.hosts]
        if len(set(names)) != len(names):
            raise UsageError(f"a host appears twice in the fleet: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        # Threads are kept between calls (a poll every second must not start N threads each time).
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.hosts) - 1),
                                                thread_name_prefix="fleet")
            return self._pool

    def _each(self, work: Callable[[Host], Any], ahead: Callable[[Host], Callable[[], Any] | None] | None = None,
              ) -> tuple[dict[str, Any], FleetResult]:
        """(host name -> what `work(host)` returned, the FleetResult with the errors and
        timings). `ahead(host)`: the same work split in two (Host._begin): the request sent
        now, the function returned waiting for its answer; None when the host cannot send
        ahead (not connected yet, per-call ssh, this machine)."""
        result = FleetResult()
        values: dict[str, Any] = {}
        if not self.hosts:
            return values, result
        lock = threading.Lock()

        def record(host: Host, start: float, run: Callable[[], Any]) -> None:
            try:
                value = run()
            except ServiceError as exc:
                with lock:
                    result.errors[host.name] = exc
            except Exception as exc:  # noqa: BLE001 - one host's bug must not hide the others' rows
                with lock:
                    result.errors[host.name] = ConnectionFailed(host.name, f"{type(exc).__name__}: {exc}")
            else:
                with lock:
                    values[host.name] = value
            finally:
                with lock:
                    result.timings[host.name] = (start, time.monotonic())

        def one(host: Host) -> None:
            record(host, time.monotonic(), lambda: work(host))

        # Hosts with an open agent connection get their request first, all of them before
        # any answer is read: their agents work in parallel while this thread sends the
        # next, and the answers are then read in turn here. Threads would cost a hand-off
        # and a GIL switch per host (measured: 16 hosts answering in 5 ms took 1.8x one).
        sent: list[tuple[Host, float, Callable[[], Any]]] = []
        if ahead is not None and len(self.hosts) > 1:
            for host in self.hosts:
                start = time.monotonic()
                try:
                    finish = ahead(host)
                except Exception as exc:  # noqa: BLE001 - what batch() would raise: that host's error
                    finish = _raising(exc)
                if finish is not None:
                    sent.append((host, start, finish))
        asked = {id(host) for host, _, _ in sent}
        rest = [host for host in self.hosts if id(host) not in asked]
        if sent:
            futures = [self._executor().submit(one, host) for host in rest]
            for host, start, finish in sent:
                record(host, start, finish)
        else:
            # Every host but the first goes to a worker thread; the caller's thread asks the
            # first meanwhile (so one host costs no thread hop at all).
            futures = [self._executor().submit(one, host) for host in rest[1:]]
            one(rest[0])
        for future in futures:
            future.result()
        return values, result

    def ps(self, **filters: Any) -> FleetResult:
        """`Host.ps(**filters)` on every host at once; rows tagged with "host"."""
        op = _ps_op(**filters)
        values, result = self._each(lambda host: host.ps(**filters),
                                    lambda host: _then(host._begin([op]), lambda values: _ps_rows(_one_value(values))))
        for host in self.hosts:
            for row in values.get(host.name, []):
                tagged = dict(row)
                tagged["host"] = host.name
                result.rows.append(tagged)
        return result

    def batch(self, ops: Sequence[Op]) -> FleetResult:
        """`Host.batch(ops)` on every host at once: `result.results[host]` per host."""
        values, result = self._each(lambda host: host.batch(ops), lambda host: host._begin(ops))
        result.results = {host.name: values[host.name] for host in self.hosts if host.name in values}
        return result

    def close(self) -> None:
        """Close the hosts this fleet opened by name, and its threads."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        for host in self._owned:
            host.close()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Fleet({[host.name for host in self.hosts]!r})"
