"""Remembered transport choices: which hosts answer only through per-call ssh, and why.

Kept in the client cache (CHOICE_FILE, 0600, written atomically), and in this process
when the file cannot be written. A choice holds CHOICE_TTL_GUARDED when rhl-guard was the
reason, else CHOICE_TTL.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

CHOICE_FILE = "transport-choice.json"
CHOICE_TTL_GUARDED = 24 * 3600.0   # rhl-guard on a key does not go away by itself
CHOICE_TTL = 15 * 60.0             # other lasting reasons (no Python, install failed) may be fixed soon


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
