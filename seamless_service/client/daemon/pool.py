"""A registry of long-lived objects (one SSH tunnel + rpyc connection per host, ...).

Inside the client daemon, entries live between CLI calls: that is the point of the daemon.
In an ordinary process the same registry works for the life of that process, so CLI code
can always write `pool.get(name, factory)` without knowing where it runs.

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


@dataclass
class _Entry:
    obj: Any
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)


_lock = threading.Lock()                      # guards the two dicts below
_entries: dict[str, _Entry] = {}
_name_locks: dict[str, threading.Lock] = {}   # one per name: creation is serialised per name only
_in_daemon = False
_cancel = threading.Event()


def get(name: str, factory: Callable[[], T]) -> T:
    """The object registered under `name`, made by `factory()` on first use.

    Concurrent calls for one name create one object (the others wait for it); different
    names are created in parallel (the factory runs outside the registry lock, since
    opening a tunnel takes ~100 ms). A factory that raises leaves nothing behind.
    """
    with _lock:
        entry = _entries.get(name)
        if entry is not None:
            entry.last_used = time.time()
            return entry.obj
        name_lock = _name_locks.setdefault(name, threading.Lock())
    with name_lock:
        with _lock:
            entry = _entries.get(name)
            if entry is not None:
                entry.last_used = time.time()
                return entry.obj
        obj = factory()
        with _lock:
            _entries[name] = _Entry(obj)
        return obj


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
