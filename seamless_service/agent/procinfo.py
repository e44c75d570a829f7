"""Is the process behind a state file's pid still *that* service? (/proc-based checks)

A state file's pid may outlive its service: after the service dies the kernel can hand
the number to any new process (README, Deliberate differences #17: the pid-reuse hazard). Before anything is
signalled (or a running service's state is refused for removal) we check that the live
process plausibly is the service the file describes:

* it is a process, not a thread of some other process (/proc/<tid> exists and
  kill(tid, 0) succeeds for threads too);
* it runs as the `uid` the launcher recorded;
* its program is the first word of the recorded `command` (argv[0], or the script an
  interpreter runs, or the kernel's 15-character `comm`; or, while a conda launch is still
  in its `bash -lc "... && exec <command>"` wrapper, a shell whose script holds the command);
* it did not start after the state file was last written (the launcher writes the file
  after spawning the service, and the service rewrites it later, so the real service is
  always older than the file's mtime).

Each check is skipped when the state does not carry the field, so a hand-written or
older state file is judged on what it has. Linux only: where /proc is missing,
`supported()` is false and callers fall back to kill(pid, 0).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from .statefiles import kill0

PROC = Path("/proc")
# The start time is derived from /proc/uptime and clock ticks; allow for rounding and a
# small wall-clock adjustment before calling a process "younger than its state file".
START_SLACK = 2.0
COMM_LEN = 15  # the kernel truncates comm to 15 characters
# argv[0] of an interpreter running a script (`python /path/hashserver ...`, shebangs).
_INTERPRETER = re.compile(r"(python|pypy|perl|ruby|node|bash|sh|dash|zsh|env)[0-9.]*")
_SHELLS = {"bash", "sh", "dash", "zsh"}


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    tgid: int
    state: str                 # one-letter /proc state: R, S, D, Z, T, ...
    pgrp: int
    session: int
    start_time: float | None   # epoch seconds
    uids: tuple[int, ...]      # real, effective, saved, filesystem
    argv: tuple[str, ...]      # empty for kernel threads, zombies, or when hidden
    comm: str

    @property
    def zombie(self) -> bool:
        """Dead but not yet reaped: kill(pid, 0) still succeeds, but nothing runs."""
        return self.state in ("Z", "X", "x")


def supported() -> bool:
    return (PROC / "self" / "stat").exists()


def _boot_time() -> float | None:
    try:
        uptime = float((PROC / "uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime


def read_proc(pid: int) -> ProcInfo | None:
    """What /proc says about `pid`; None if there is no such process (or no /proc)."""
    base = PROC / str(pid)
    try:
        stat = (base / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    except OSError:
        return None
    # `comm` sits in parentheses and may itself hold spaces or ')': split at the last one.
    head, _, rest = stat.rpartition(")")
    comm = head.partition("(")[2]
    fields = rest.split()
    try:
        state = fields[0]
        pgrp = int(fields[2])
        session = int(fields[3])
        start_ticks = int(fields[19])
    except (IndexError, ValueError):
        return None
    boot = _boot_time()
    start_time = boot + start_ticks / os.sysconf("SC_CLK_TCK") if boot is not None else None
    tgid, uids = pid, ()
    try:
        for line in (base / "status").read_text().splitlines():
            if line.startswith("Tgid:"):
                tgid = int(line.split()[1])
            elif line.startswith("Uid:"):
                uids = tuple(int(v) for v in line.split()[1:])
    except (OSError, ValueError):
        pass
    try:
        raw = (base / "cmdline").read_bytes()
        argv = tuple(a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")) if raw else ()
    except OSError:
        argv = ()
    return ProcInfo(pid=pid, tgid=tgid, state=state, pgrp=pgrp, session=session,
                    start_time=start_time, uids=uids, argv=argv, comm=comm)


def _program_name(command: Any) -> str | None:
    if not isinstance(command, str):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    return os.path.basename(words[0]) if words else None


def runs_command(info: ProcInfo, command: str) -> bool | None:
    """Does `info` run the state's `command`? None if the command gives no program name."""
    name = _program_name(command)
    if not name:
        return None
    argv = info.argv
    if argv:
        first = os.path.basename(argv[0])
        if first == name:
            return True
        if _INTERPRETER.fullmatch(first):
            # the script is the first non-option argument (`python -s /path/hashserver`)
            script = next((a for a in argv[1:] if not a.startswith("-")), None)
            if script is not None and os.path.basename(script) == name:
                return True
            # conda launch still inside `bash -lc "... && exec <command>"`
            if first in _SHELLS and any(command in a for a in argv[1:]):
                return True
    return bool(info.comm) and info.comm == name[:COMM_LEN]


def identity_problem(info: ProcInfo, state: dict[str, Any], state_mtime: float | None) -> str | None:
    """Why process `info` is not the service of `state`, or None if it plausibly is."""
    pid = info.pid
    if info.tgid != pid:
        return f"pid {pid} is a thread of process {info.tgid}"
    uid = state.get("uid")
    if isinstance(uid, int) and not isinstance(uid, bool) and info.uids:
        if uid not in info.uids[:2]:
            return f"process {pid} runs as uid {info.uids[0]}, the service was launched as uid {uid}"
    command = state.get("command")
    if runs_command(info, command) is False:
        shown = " ".join(info.argv)[:120] or f"[{info.comm}]"
        return f"process {pid} runs {shown!r}, not {_program_name(command)!r}"
    if state_mtime is not None and info.start_time is not None and info.start_time > state_mtime + START_SLACK:
        return f"process {pid} started after the state file was written"
    return None


@dataclass(frozen=True)
class ServiceProcess:
    """The verdict on a state's pid: `alive` and `is_service`, with the reason if not."""

    pid: int
    alive: bool
    is_service: bool
    problem: str | None = None
    info: ProcInfo | None = None


def check_service(pid: int, state: dict[str, Any], state_mtime: float | None) -> ServiceProcess:
    """Is `pid` alive, and is it plausibly the service described by `state`?

    `pid` must already be usable (rhl.usable_pid). Zombies count as dead.
    Without /proc only liveness is checked, and a live pid is taken for the service.
    """
    if not supported():
        alive = kill0(pid)
        return ServiceProcess(pid, alive, alive)
    info = read_proc(pid)
    if info is None or info.zombie:
        return ServiceProcess(pid, False, False, info=info)
    problem = identity_problem(info, state, state_mtime)
    return ServiceProcess(pid, True, problem is None, problem, info)



def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    try:
        entries = os.listdir(PROC)
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        info = read_proc(int(name))
        if info is not None and info.pgrp == pgid and not info.zombie:
            members.append(info.pid)
    return members


def kill_group(pgid: int) -> int:
    """SIGKILL the surviving members of process group `pgid` (a stopped service's group).

    Returns how many members other than the leader were still alive. Safe against pid
    reuse only because Linux never hands out a number that is still in use as a process
    group id: while any member lives, `pgid` names this group and no other.
    """
    if pgid <= 1:
        return 0
    members = [m for m in group_members(pgid) if m != pgid]
    if not members:
        return 0
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return 0
    return len(members)
