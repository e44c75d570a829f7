"""Is a process still there? (/proc, this machine.)"""

from __future__ import annotations

import os
import subprocess


def _state(pid: int) -> tuple[str, int] | None:
    """(state letter, number of threads), None if there is no such process. Reaps it first if
    it is our own finished child (a zombie of ours would otherwise look alive)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    return state, threads


def alive(pid: int) -> bool:
    """Running: there, and neither a zombie nor dead (a finished process may linger unreaped
    under some inits)."""
    found = _state(pid)
    return found is not None and found[0] not in ("Z", "X")


def gone(pid: int) -> bool:
    """Finished entirely. Stricter than `not alive(pid)`: a killed multi-threaded process shows
    its main thread as a zombie while other threads are still tearing down (and its socket
    still open); it is gone only once they are too."""
    found = _state(pid)
    return found is None or (found[0] in ("Z", "X") and found[1] <= 1)


def dead_pid() -> int:
    """A pid that named a process a moment ago and names none now (its process was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
