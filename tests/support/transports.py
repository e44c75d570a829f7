"""What the `transport` fixture (tests/client/transport/conftest.py) hands a test: a real
transport and the launcher state it answers about (`Place`), and `differs`, the mark of a
deliberate difference of one transport."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest


@dataclass
class Place:
    """A transport and the launcher state it answers about."""

    name: str                                  # local | agent | ssh
    transport: Any
    state_dir: Path                            # the server state files the ops read
    data: Path                                 # a folder the clear policy allows
    launch: Callable[[str], dict]              # a real toy service under a key: its state
    write: Callable[[Path, str], None]         # a file, owned as the host's user would own it
    kill: Callable[[str], None]                # SIGKILL a launched key (cleanup)

    def key(self, stem: str) -> str:
        """A key of this test and transport only (the remote host is shared by the session)."""
        return f"hashserver-clu-rw-{stem}-{self.name}"

    def write_state(self, key: str, data: dict) -> Path:
        path = self.state_dir / f"{key}.json"
        self.write(path, json.dumps(data))
        return path

    def batch(self, *ops: tuple[str, dict]) -> list[dict]:
        return self.transport.batch(list(ops))


def differs(transport: str, reason: str) -> pytest.MarkDecorator:
    """Mark a test whose assertion does not hold on `transport`, deliberately: a strict
    xfail there (it fails if the difference disappears), the reason shown in the report."""
    return pytest.mark.differs(transport=transport, reason=reason)


def mark_differences(items: list[pytest.Item]) -> None:
    """Turn `differs` marks into strict xfails on the param they name (a conftest hook calls it)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("transport") if callspec is not None else None
        for mark in item.iter_markers("differs"):
            if mark.kwargs["transport"] == name:
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"{name}: {mark.kwargs['reason']}"))
