"""Running the installed rhl-* executables (mutations are never re-implemented, except
`clear`'s deletion, which must not follow a symlink swapped in by another user: ops/clear.py).

The helper is looked up next to the agent's own interpreter first (the agent's
environment ships remote-http-launcher), then on PATH. It runs with the agent's
environment, so it sees the same REMOTE_HTTP_LAUNCHER_DIR and HOME as the agent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..protocol import ErrorCode, ProtocolError

HELPER_TIMEOUT = 60.0  # rhl-stop may take ~10 s per escalation round; bound everything


def find_helper(name: str, helper_dir: Path | None = None) -> str:
    candidates = []
    if helper_dir is not None:
        candidates.append(Path(helper_dir) / name)
    candidates.append(Path(sys.executable).parent / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ProtocolError(
            ErrorCode.OP_FAILED,
            f"{name} is not installed on this server (install remote-http-launcher in the agent's environment)",
        )
    return found


def run_helper(name: str, args: list[str], *, helper_dir: Path | None = None, base: Path | None = None,
               timeout: float = HELPER_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `name args...` without a shell; return the completed process (text mode).

    With `base`, the helper is pointed at that launcher base through
    REMOTE_HTTP_LAUNCHER_DIR (the helpers read `$DIR/server` and `$DIR/client`, exactly as
    agent/paths.py), so the agent's pre-checks and the helper see the same files.
    """
    exe = find_helper(name, helper_dir)
    env = None
    if base is not None:
        env = dict(os.environ)
        env["REMOTE_HTTP_LAUNCHER_DIR"] = str(base)
    try:
        return subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, errors="replace", env=env,
        )
    except subprocess.TimeoutExpired:
        raise ProtocolError(ErrorCode.OP_FAILED, f"{name} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ProtocolError(ErrorCode.OP_FAILED, f"could not run {name}: {exc}") from None
