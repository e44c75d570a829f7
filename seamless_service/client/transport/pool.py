"""A registry of long-lived objects (one SSH tunnel + rpyc connection per host, ...):
`TransportPool`, and `default_pool`, the one open_transport uses (as execnet's
`default_group`).

In an ordinary process the pool only lends what it is given for the life of that process:
`in_keeper` is False and open_transport hands out fresh transports. The tunnel keeper
calls `default_pool.keep_between_commands(cancel)` once at start-up; from then on
open_transport leases pooled transports (pooled.py) that outlive the command, which is the
point of the keeper.

Every command the keeper runs has its caller's environment, so an entry may serve a
command only if what it depends on is that command's too (inputs.py). Callers put
the environment values it depends on into the name, as a `family` + variant tag: callers
that differ get entries of their own, at most MAX_VARIANTS per family (the least recently
used is closed). An object that read files says whether they changed since through an
optional `stale()` method: a stale entry is closed and made again on the next lease().

The cancellation flag of the command the keeper is running is the keeper's: it hands its
event to keep_between_commands() and sets it when the thin client goes away (Ctrl-C).
Long-running commands (watch loops, fan-out workers) poll `cancelled()` and stop. Outside
the keeper it is always False, because Ctrl-C there raises KeyboardInterrupt as usual.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

T = TypeVar("T")

MAX_VARIANTS = 4   # entries per family (one host, many callers' environments): bounded, LRU


@dataclass
class _Entry:
    obj: Any
    family: str = ""
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)


class TransportPool:
    """Objects kept under a name (see the module docstring)."""

    def __init__(self, *, max_variants: int = MAX_VARIANTS) -> None:
        self.max_variants = max_variants
        self._lock = threading.Lock()                      # guards the two dicts below
        self._entries: dict[str, _Entry] = {}
        self._name_locks: dict[str, threading.Lock] = {}   # one per name: creation is serialised per name only
        # The keeper's event once it keeps transports; never set outside the keeper.
        self._cancel: threading.Event | None = None

    # -- keeper mode -----------------------------------------------------------------------

    def keep_between_commands(self, cancel: threading.Event) -> None:
        """Lease pooled transports from now on (the tunnel keeper's process). `cancel` is
        the keeper's flag for "the caller of the running command went away": the keeper
        sets and clears it, commands read it through cancelled()/wait_cancelled()."""
        self._cancel = cancel

    @property
    def in_keeper(self) -> bool:
        """True inside the tunnel keeper, False in an ordinary process."""
        return self._cancel is not None

    def cancelled(self) -> bool:
        """True once the caller of the command being run by the keeper has gone away."""
        return self._cancel is not None and self._cancel.is_set()

    def wait_cancelled(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on cancellation; returns cancelled()."""
        if self._cancel is None:
            time.sleep(timeout)
            return False
        return self._cancel.wait(timeout)

    # -- entries ---------------------------------------------------------------------------

    def lease(self, name: str, factory: Callable[[], T], *, family: str | None = None) -> T:
        """The object kept under `name`, made by `factory()` on first use.

        Concurrent calls for one name create one object (the others wait for it); different
        names are created in parallel (the factory runs outside the registry lock, since
        opening a tunnel takes ~100 ms). A factory that raises leaves nothing behind.

        An object whose `stale()` returns True is closed and replaced. `family` groups the
        names that are variants of one thing (one host under different environments); a
        family keeps at most max_variants entries, closing the least recently used.
        """
        obj = self._fresh(name)
        if obj is not None:
            return obj
        with self._lock:
            name_lock = self._name_locks.setdefault(name, threading.Lock())
        with name_lock:
            obj = self._fresh(name)
            if obj is not None:
                return obj
            obj = factory()
            family = family or name
            with self._lock:
                self._entries[name] = _Entry(obj, family)
                siblings = [(n, e) for n, e in self._entries.items() if e.family == family and n != name]
            # A new variant is the moment to close siblings whose files changed: no caller may
            # use them again, and nothing else would close them before the keeper exits.
            stale = [(n, e) for n, e in siblings if _is_stale(n, e.obj)]
            with self._lock:
                evicted = [(n, self._entries.pop(n)) for n, e in stale if self._entries.get(n) is e]
                evicted += self._over_limit(family, keep=name)
            for old_name, old in evicted:
                _close(old_name, old.obj)
            return obj

    def release(self, name: str) -> None:
        """A lease's call ended: mark `name` as used now, so `tunnel status` shows how long
        each connection has been idle (lease() alone marks only the start of a command, and
        a long watch would look idle). The object stays in the pool."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None:
            entry.last_used = time.time()

    def drop(self, name: str) -> bool:
        """Forget `name` and close its object (it failed for good); True if there was one."""
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is None:
            return False
        _close(name, entry.obj)
        return True

    def peek(self, name: str) -> Any | None:
        """The object under `name` if there is one, without creating it."""
        with self._lock:
            entry = self._entries.get(name)
            return None if entry is None else entry.obj

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def describe(self) -> list[dict[str, Any]]:
        """One dict per entry: name, created, last_used (epoch seconds) and the object's own
        `describe()` (under "details") when it has one."""
        with self._lock:
            items = sorted(self._entries.items())
        out = []
        for name, entry in items:
            row: dict[str, Any] = {"name": name, "created": entry.created, "last_used": entry.last_used}
            if entry.family != name:
                row["family"] = entry.family
            describe_obj = getattr(entry.obj, "describe", None)
            if callable(describe_obj):
                try:
                    row["details"] = describe_obj()
                except Exception as exc:
                    row["details"] = {"error": str(exc)}
            out.append(row)
        return out

    def close_all(self) -> None:
        with self._lock:
            items = list(self._entries.items())
            self._entries.clear()
        for name, entry in items:
            _close(name, entry.obj)

    # -- internals -------------------------------------------------------------------------

    def _fresh(self, name: str) -> Any | None:
        """The entry's object if there is one and it is not stale (a stale one is closed)."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            return None
        if _is_stale(name, entry.obj):
            with self._lock:
                mine = self._entries.get(name) is entry
                if mine:
                    del self._entries[name]
            if mine:  # another thread may have found it stale first: close once
                _close(name, entry.obj)
            return None
        entry.last_used = time.time()
        return entry.obj

    def _over_limit(self, family: str, *, keep: str) -> list[tuple[str, _Entry]]:
        """Remove (under _lock) the least recently used entries of `family` beyond max_variants."""
        members = sorted(((e.last_used, n) for n, e in self._entries.items() if e.family == family and n != keep))
        extra = len(members) + 1 - self.max_variants
        evicted = [(n, self._entries.pop(n)) for _, n in members[:max(extra, 0)]]
        for n, _ in evicted:
            lock = self._name_locks.get(n)
            if lock is not None and not lock.locked():
                del self._name_locks[n]   # the variant is gone: its lock need not outlive it
        return evicted


def _is_stale(name: str, obj: Any) -> bool:
    stale = getattr(obj, "stale", None)
    if not callable(stale):
        return False
    try:
        return bool(stale())
    except Exception as exc:  # cannot tell: do not trust it
        print(f"seamless-service tunnel keeper: checking {name} failed: {exc}", file=sys.__stderr__)
        return True


def _close(name: str, obj: Any) -> None:
    close = getattr(obj, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception as exc:  # a broken connection must not stop the others from closing
        print(f"seamless-service tunnel keeper: closing {name} failed: {exc}", file=sys.__stderr__)


default_pool = TransportPool()
"""The process's pool: open_transport leases from it, the keeper puts it in keeper mode."""
