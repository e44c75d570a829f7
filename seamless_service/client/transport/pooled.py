"""A lease on a transport kept by the tunnel keeper's pool.

Inside the keeper (pool.in_daemon()), transports live in the pool under
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


def lease(family: str, factory: Callable[[], Any], *, inputs: Callable[[], Any], notice: Notice | None = None,
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
