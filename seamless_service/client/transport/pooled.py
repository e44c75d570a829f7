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

from typing import Any, Callable

from ..errors import ConnectionFailed, ProtocolMismatch
from .base import Notice
from .pool import TransportPool, default_pool


def lease(family: str, factory: Callable[[], Any], *, inputs: Callable[[], Any], notice: Notice | None = None,
          timeout: float | None = None, accept_new_host_key: bool | None = None,
          pool: TransportPool = default_pool) -> Any:
    """factory() outside the keeper; inside, a lease on the pooled transport made for
    callers with this caller's `inputs()` (see the module docstring)."""
    if not pool.in_keeper:
        return factory()
    from .inputs import variant

    name = f"{family}#{variant(inputs())}"
    return PooledTransport(name, pool.lease(name, factory, family=family), notice=notice, timeout=timeout,
                           accept_new_host_key=accept_new_host_key, pool=pool)


class PooledTransport:
    """A lease on a transport held by the tunnel keeper's pool (see the module docstring)."""

    def __init__(self, pool_name: str, inner: Any, *, notice: Notice | None = None,
                 timeout: float | None = None, accept_new_host_key: bool | None = None,
                 pool: TransportPool = default_pool):
        self.pool_name = pool_name
        self.inner = inner
        self.pool = pool
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
        if name in ("pool_name", "inner", "pool", "_notice", "_timeout", "_accept_new"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def batch(self, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        if self._notice is not None and hasattr(self.inner, "notice"):
            self.inner.notice = self._notice  # this CLI call's notices go to this caller
        if self._timeout is not None and hasattr(self.inner, "timeout"):
            # The pooled transport was made by an earlier command; this one's --timeout
            # applies to its own calls (the keeper runs one command at a time).
            self.inner.timeout = float(self._timeout)
        if self._accept_new is not None and hasattr(self.inner, "accept_new_host_key"):
            # Likewise: only a caller who said --accept-new-host-key may have a new host key
            # written to known_hosts when the pooled transport reconnects.
            self.inner.accept_new_host_key = self._accept_new
        try:
            return self.inner.batch(ops)
        except (ConnectionFailed, ProtocolMismatch):
            self.discard()
            raise
        finally:
            self.pool.release(self.pool_name)   # idle from now on (`tunnel status`); no-op once dropped

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.inner, "describe", None)
        return describe() if callable(describe) else {"transport": self.name}

    def close(self) -> None:
        """Leave the pooled transport open: the keeper keeps it for the next call."""

    def discard(self) -> None:
        """Drop the pooled transport from the pool and close it: it failed for good, and the
        next lease makes a new one."""
        self.pool.drop(self.pool_name)

    def __enter__(self) -> "PooledTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
