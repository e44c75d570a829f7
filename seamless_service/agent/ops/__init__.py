"""Op implementations. Each module exposes `run(ctx, args) -> value` for one op name.

`args` has already been validated against protocol.schema.OPS[name], defaults filled.
An op raises protocol.ProtocolError for expected failures (not found, policy, ...).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

# op name -> module name (inside this package)
_MODULES = {
    "hello": "hello",
    "ps": "ps",
    "persistent": "persistent",
    "inspect": "inspect_op",
    "logs": "logs",
    "stop": "stop",
    "rm": "rm",
    "clear": "clear",
    "start": "start",
    "health": "health",
    "wait": "wait",
}

_cache: dict[str, Callable[..., Any]] = {}


def handler(name: str) -> Callable[..., Any] | None:
    """The `run` function of op `name`, imported on first use (keeps start-up cheap)."""
    fn = _cache.get(name)
    if fn is None:
        module = _MODULES.get(name)
        if module is None:
            return None
        fn = _cache[name] = importlib.import_module(f"{__name__}.{module}").run
    return fn
