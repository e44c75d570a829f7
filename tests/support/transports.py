"""What the `transport` fixture (tests/client/transport/conftest.py) hands a test: a real
transport and the launcher state it answers about (`Place`, `remote_place` on a `Remote`),
and `differs`, the mark of a deliberate difference of one transport; and `Notices`, the
`notice` callable handed to transports, recording their one-line messages."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:  # remote.py imports Notices from here
    from tests.support.remote import Remote

TRANSPORTS = ("local", "agent", "openssh", "ssh")  # openssh: the agent through the user's own ssh -W


class Notices(list):
    """A `notice` callable that records the one-line messages."""

    def __call__(self, message: str) -> None:
        self.append(message)


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
    written: list[Path] = field(default_factory=list)

    def key(self, stem: str) -> str:
        """A key of this test and transport only, in a cluster of its own: the remote host
        is shared by the session, and other modules list what it holds."""
        return f"hashserver-opsemantics-rw-{stem}-{self.name}"

    def put(self, path: Path, text: str) -> Path:
        """Write a file there, removed again by `clean`."""
        self.write(path, text)
        self.written.append(path)
        return path

    def write_state(self, key: str, data: dict) -> Path:
        return self.put(self.state_dir / f"{key}.json", json.dumps(data))

    def clean(self) -> None:
        """Remove the state files and logs this place's tests wrote."""
        for path in self.written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.written.clear()

    def batch(self, *ops: tuple[str, dict]) -> list[dict]:
        return self.transport.batch(list(ops))


def remote_place(name: str, remote: Remote, transport: Any) -> Place:
    """The place of `transport` to `remote`: its launcher state, files written as its user."""
    def write(path: Path, text: str) -> None:
        remote.write(str(path.relative_to(remote.home)), text)

    return Place(name, transport, remote.state_dir, remote.data, remote.launch, write, remote.kill_service)


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
