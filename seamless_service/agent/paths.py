"""Where remote-http-launcher state lives, read exactly as the rhl-* helpers read it.

The helpers (ssh_guard/_state.py) use `$REMOTE_HTTP_LAUNCHER_DIR` (default
`~/.remote-http-launcher`), with `server/` and `client/` under it. The launcher itself
reads the variable differently (README, Deliberate differences #24); we follow the helpers, since the agent
wraps them and must see what they see.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_ENV = "REMOTE_HTTP_LAUNCHER_DIR"
BASE_DEFAULT = "~/.remote-http-launcher"


def base_dir() -> Path:
    return Path(os.environ.get(BASE_ENV, BASE_DEFAULT)).expanduser()


def server_dir(base: Path | None = None) -> Path:
    return (base or base_dir()) / "server"


def client_dir(base: Path | None = None) -> Path:
    return (base or base_dir()) / "client"


def agent_dir(base: Path | None = None) -> Path:
    """The agent's own folder (0700): its state file, secret, config and log."""
    return (base or base_dir()) / "agent"


def join(directory: str, name: str) -> str:
    """`os.path.join(directory, name)` for a plain entry name, at a fraction of its cost:
    a poll joins hundreds of names (every state file, every walked directory)."""
    return directory + name if directory.endswith("/") else directory + "/" + name
