"""What every transport offers, and the type of the callback its notices go to."""

from __future__ import annotations

from typing import Any, Callable, Protocol

Notice = Callable[[str], None]

# Seconds a host may take to answer one call, whichever transport carries it (the `timeout`
# of Host and Fleet, `--timeout`). Ops that take time on the host (stop, clear, start...)
# get an allowance on top.
DEFAULT_TIMEOUT = 30.0


class Transport(Protocol):
    """What every transport offers."""

    name: str
    host: str

    def batch(self, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...
