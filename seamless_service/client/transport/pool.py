"""A registry of long-lived objects (one SSH tunnel + rpyc connection per host, ...).

Inside the client daemon, entries live between CLI calls: that is the point of the daemon.
In an ordinary process the same registry works for the life of that process, so CLI code
can always write `pool.get(name, factory)` without knowing where it runs.

Every command the daemon runs has its caller's environment, so an entry may serve a
command only if what it depends on is that command's too (inputs.py). Callers put
the environment values it depends on into the name, as a `family` + variant tag: callers
that differ get entries of their own, at most MAX_VARIANTS per family (the least recently
used is closed). An object that read files says whether they changed since through an
optional `stale()` method: a stale entry is closed and made again on the next get().

Also here: the cancellation flag of the command the daemon is running. When the thin
client goes away (Ctrl-C), the daemon sets it; long-running commands (watch loops, fan-out
workers) should poll `cancelled()` and stop. Outside the daemon it is always False,
because Ctrl-C there raises KeyboardInterrupt as usual.
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


_lock = threading.Lock()                      # guards the two dicts below
_entries: dict[str, _Entry] = {}
_name_locks: dict[str, threading.Lock] = {}   # one per name: creation is serialised per name only
_in_daemon = False
_cancel = threading.Event()


def get(name: str, factory: Callable[[], T], *, family: str | None = None) -> T:
    """The object registered under `name`, made by `factory()` on first use.

    Concurrent calls for one name create one object (the others wait for it); different
    names are created in parallel (the factory runs outside the registry lock, since
    opening a tunnel takes ~100 ms). A factory that raises leaves nothing behind.

    An object whose `stale()` returns True is closed and replaced. `family` groups the
    names that are variants of one thing (one host under different environments); a
    family keeps at most MAX_VARIANTS entries, closing the least recently used.
    """
    obj = _fresh(name)
    if obj is not None:
        return obj
    with _lock:
        name_lock = _name_locks.setdefault(name, threading.Lock())
    with name_lock:
        obj = _fresh(name)
        if obj is not None:
            return obj
        obj = factory()
        family = family or name
        with _lock:
            _entries[name] = _Entry(obj, family)
            siblings = [(n, e) for n, e in _entries.items() if e.family == family and n != name]
        # A new variant is the moment to close siblings whose files changed: no caller may
        # use them again, and nothing else would close them before the keeper exits.
        stale = [(n, e) for n, e in siblings if _is_stale(n, e.obj)]
        with _lock:
            evicted = [(n, _entries.pop(n)) for n, e in stale if _entries.get(n) is e]
            evicted += _over_limit(family, keep=name)
        for old_name, old in evicted:
            _close(old_name, old.obj)
        return obj


def _fresh(name: str) -> Any | None:
    """The entry's object if there is one and it is not stale (a stale one is closed)."""
    with _lock:
        entry = _entries.get(name)
    if entry is None:
        return None
    if _is_stale(name, entry.obj):
        with _lock:
            mine = _entries.get(name) is entry
            if mine:
                del _entries[name]
        if mine:  # another thread may have found it stale first: close once
            _close(name, entry.obj)
        return None
    entry.last_used = time.time()
    return entry.obj


def _is_stale(name: str, obj: Any) -> bool:
    stale = getattr(obj, "stale", None)
    if not callable(stale):
        return False
    try:
        return bool(stale())
    except Exception as exc:  # cannot tell: do not trust it
        print(f"seamless-service daemon: checking {name} failed: {exc}", file=sys.__stderr__)
        return True


def _over_limit(family: str, *, keep: str) -> list[tuple[str, _Entry]]:
    """Remove (under _lock) the least recently used entries of `family` beyond MAX_VARIANTS."""
    members = sorted(((e.last_used, n) for n, e in _entries.items() if e.family == family and n != keep))
    extra = len(members) + 1 - MAX_VARIANTS
    evicted = [(n, _entries.pop(n)) for _, n in members[:max(extra, 0)]]
    for n, _ in evicted:
        lock = _name_locks.get(n)
        if lock is not None and not lock.locked():
            del _name_locks[n]   # the variant is gone: its lock need not outlive it
    return evicted


def peek(name: str) -> Any | None:
    """The object under `name` if there is one, without creating it."""
    with _lock:
        entry = _entries.get(name)
        return None if entry is None else entry.obj


def _close(name: str, obj: Any) -> None:
    close = getattr(obj, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception as exc:  # a broken connection must not stop the others from closing
        print(f"seamless-service daemon: closing {name} failed: {exc}", file=sys.__stderr__)


def drop(name: str) -> bool:
    """Forget `name` and close its object; True if there was one."""
    with _lock:
        entry = _entries.pop(name, None)
    if entry is None:
        return False
    _close(name, entry.obj)
    return True


def touch(name: str) -> None:
    """Mark `name` as used now: a lease calls this when its call ends, so `tunnel status`
    shows how long each connection has been idle (get() alone marks only the start of a
    command, and a long watch would look idle)."""
    with _lock:
        entry = _entries.get(name)
    if entry is not None:
        entry.last_used = time.time()


def names() -> list[str]:
    with _lock:
        return sorted(_entries)


def describe() -> list[dict[str, Any]]:
    """One dict per entry: name, created, last_used (epoch seconds) and the object's own
    `describe()` (under "details") when it has one."""
    with _lock:
        items = sorted(_entries.items())
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


def close_all() -> None:
    with _lock:
        items = list(_entries.items())
        _entries.clear()
    for name, entry in items:
        _close(name, entry.obj)


def in_daemon() -> bool:
    """True inside the client daemon, False in an ordinary process."""
    return _in_daemon


def cancelled() -> bool:
    """True once the caller of the command being run by the daemon has gone away."""
    return _cancel.is_set()


def wait_cancelled(timeout: float) -> bool:
    """Sleep up to `timeout` seconds, waking early on cancellation; returns cancelled()."""
    return _cancel.wait(timeout)


# -- for server.py only ------------------------------------------------------------------

def _mark_daemon() -> None:
    global _in_daemon
    _in_daemon = True


def _cancel_event() -> threading.Event:
    return _cancel
