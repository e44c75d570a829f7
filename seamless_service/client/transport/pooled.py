"""A lease on a transport kept by the tunnel keeper's pool.

Inside the keeper (pool.default_pool.in_keeper), transports live in the pool under
`transport:{kind}:{host}[|ssh config]#{tag}`, so one SSH connection and one authenticated
rpyc connection per host persist between CLI calls. What open_transport returns there is a
lease: close() leaves the pooled transport open, and a fatal error (ConnectionFailed,
ProtocolMismatch, after the transport's own repair) drops it from the pool, so the next
call starts afresh.

The keeper runs each command with its caller's environment, so a pooled transport serves
only callers whose inputs are its own (inputs.py): the tag is a hash of the environment
values it depends on, and the files it read (agent config.yaml and a data-roots file; ssh
config, known_hosts, keys) are checked by its `stale()` on every use: an edited file means
a new transport on the next command (pool.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..errors import ConnectionFailed, ProtocolMismatch
from .base import Notice, Op, Result, Transport
from .pool import TransportPool, default_pool


def lease(family: str, factory: Callable[[], Transport], *, inputs: Callable[[], Any], notice: Notice | None = None,
          timeout: float | None = None, accept_new_host_key: bool | None = None,
          pool: TransportPool = default_pool) -> Transport:
    """factory() outside the keeper; inside, a lease on the pooled transport made for
    callers with this caller's `inputs()` (see the module docstring)."""
    if not pool.in_keeper:
        return factory()
    from .inputs import variant

    name = f"{family}#{variant(inputs())}"
    return PooledTransport(name, pool.lease(name, factory, family=family), notice=notice, timeout=timeout,
                           accept_new_host_key=accept_new_host_key, pool=pool)


class PooledTransport(Transport):
    """A lease on a transport held by the tunnel keeper's pool (see the module docstring).

    What it is and what it knows are the pooled transport's (`inner`); what the caller
    chose (notice, timeout, accepting a new host key) is the lease's own and is handed to
    `inner` on each call. close() leaves `inner` open."""

    def __init__(self, pool_name: str, inner: Transport, *, notice: Notice | None = None,
                 timeout: float | None = None, accept_new_host_key: bool | None = None,
                 pool: TransportPool = default_pool):
        self.pool_name = pool_name
        self.inner = inner
        self.pool = pool
        self.notice = notice
        self._timeout = timeout
        self._accept_new = accept_new_host_key

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def host(self) -> str:  # type: ignore[override]
        return self.inner.host

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def connected_once(self) -> bool:  # type: ignore[override]
        return self.inner.connected_once

    @property
    def fallback_reason(self) -> str | None:  # type: ignore[override]
        return self.inner.fallback_reason

    def configure(self, *, notice: Notice | None = None, timeout: float | None = None,
                  accept_new_host_key: bool | None = None) -> None:
        """This lease's settings, handed to the pooled transport on each of its calls."""
        super().configure(notice=notice)
        if timeout is not None:
            self._timeout = timeout
        if accept_new_host_key is not None:
            self._accept_new = accept_new_host_key

    def batch(self, ops: Sequence[Op]) -> list[Result]:
        # The pooled transport was made by an earlier command; this one's notices go to
        # this caller, its --timeout applies to its own calls (the keeper runs one command
        # at a time), and only a caller who said --accept-new-host-key may have a new host
        # key written to known_hosts when the pooled transport reconnects.
        self.inner.configure(notice=self.notice, timeout=self._timeout, accept_new_host_key=self._accept_new)
        try:
            return self.inner.batch(ops)
        except (ConnectionFailed, ProtocolMismatch):
            self.discard()
            raise
        finally:
            self.pool.release(self.pool_name)   # idle from now on (`tunnel status`); no-op once dropped

    def wait_sizes(self, timeout: float) -> bool | None:
        return self.inner.wait_sizes(timeout)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def stale(self) -> bool:
        return self.inner.stale()

    def close(self) -> None:
        """Leave the pooled transport open: the keeper keeps it for the next call."""

    def discard(self) -> None:
        """Drop the pooled transport from the pool and close it: it failed for good, and the
        next lease makes a new one."""
        self.pool.drop(self.pool_name)
