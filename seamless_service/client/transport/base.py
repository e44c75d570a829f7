"""What every transport offers, and the type of the callback its notices go to."""

from __future__ import annotations

from typing import Any, Callable, Protocol

Notice = Callable[[str], None]


class Transport(Protocol):
    """What every transport offers."""

    name: str
    host: str

    def batch(self, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...
