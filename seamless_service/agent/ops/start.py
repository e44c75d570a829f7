"""`start`: launch a service exactly as remote-http-launcher does, unless it runs already.

The client computes the `rhl-launch-service` call that remote-http-launcher itself would
make for the service's configuration (client/lifecycle/launch.py runs the launcher's own
`RemoteState.launch_process` against a recorder): key, workdir, conda env, network
interface, parameters, meta and the service's command line, evaluated from seamless-config's
tools.yaml. The status file in that command line is the launcher's default server path
(`~/.remote-http-launcher/server/KEY.json`, what it passes to every remote host). Here
that path is replaced by the state file of the directory this agent serves, so the helper,
which must find the status file under *its* server directory, never refuses the launch
when the client's REMOTE_HTTP_LAUNCHER_DIR differs from the server's (README, Deliberate differences #24, #43).

Order, under one lock (agent and in-process local transports of one user alike):

1. the key rule (schema) and the path policy on the workdir (kind "workdir": the guard's
   rule for `rhl-launch-service --workdir`);
2. the state: a service running with a live pid that is the service (agent.procinfo) and
   answering its handshake is "already running": nothing changes (same pid, same port).
   Running but not answering is a CONFLICT (restart it; the launcher would kill it, a
   `start` never does). `starting` with a live service pid: not launched again, waited for.
   Anything else (absent, stale, failed, dead pid, dry-run) is launched;
3. before a launch, the previous run's log `KEY.log` is kept as `KEY.log.1`
   (rhl-launch-service truncates the log it opens);
4. `rhl-launch-service` runs (the installed helper: whitelist, workdir checks and the state
   file stay remote-http-launcher's), with REMOTE_HTTP_LAUNCHER_DIR set to this agent's
   launcher folder.

Then up to `wait` seconds for the status to leave `starting`: `running` counts once the
service's port and its launcher handshake answer (ops/health.check, as the launcher's
`verify_port` + `handshake`); `failed`, or a pid that died while starting, gives the tail
of the log. A call that runs out of `wait` returns status `starting`; the client calls
again (it finds the live `starting` pid and does not launch a second process).

With `launch` false nothing is launched: the state is reported (and waited for), so a
client's follow-up call never relaunches a service that failed in between.

Value: {key, outcome ("already running" | "started" | "starting" | "failed"), launched,
status, pid, host, port, log, rotated_log, log_tail, detail}.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from ...protocol import ErrorCode, ProtocolError
from ...protocol.wiresafe import display_text
from ...rhl import LAUNCH_HELPER, START_OUTCOMES, STATUS_FILE_FLAG, launch_args, status_file_arg, usable_pid
from .. import procinfo
from ..context import AgentContext
from ..helpers import run_helper
from ..policy import check_path, default_policy
from ..statefiles import StateFileError, read_state, server_row
from . import health
from .logs import read_tail

POLL = 0.05
HEALTH_TIMEOUT = 2.0
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 16 << 10
LOCK_NAME = "start.lock"


def service_argv(ctx: AgentContext, key: str, argv: list[str]) -> list[str]:
    """The service command line with the launcher's status-file path mapped to ours."""
    theirs = status_file_arg(key)
    ours = str(ctx.server_dir / f"{key}.json")
    out, found = [], False
    for word in argv:
        if word == theirs:
            word, found = ours, True
        elif word == f"{STATUS_FILE_FLAG}={theirs}":
            word, found = f"{STATUS_FILE_FLAG}={ours}", True
        out.append(word)
    if not found:
        raise ProtocolError(ErrorCode.BAD_ARGS, (
            f"start: the command must pass the status file {theirs} (as remote-http-launcher "
            "evaluates it); the service could not report running otherwise"))
    if out[0].startswith("-") or "/" in out[0]:
        raise ProtocolError(ErrorCode.BAD_ARGS, f"start: not a service binary name: {out[0]!r}")
    return out


def _json_object(name: str, text: str | None) -> None:
    if text is None:
        return
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_ARGS, f"start: argument {name!r} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_ARGS, f"start: argument {name!r} must be a JSON object")


@contextlib.contextmanager
def _start_lock(ctx: AgentContext) -> Iterator[None]:
    """One decide-and-launch at a time for this launcher folder (two `start`s of one key
    must not both launch). Held for the launch only, not while waiting."""
    directory = ctx.agent_dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _state(ctx: AgentContext, key: str) -> tuple[dict[str, Any] | None, float | None]:
    path = ctx.server_dir / f"{key}.json"
    try:
        data = read_state(path)
        mtime = os.stat(path).st_mtime if data is not None else None
    except StateFileError:
        return None, None  # unusable: nothing of it can run; the launch replaces it
    except OSError:
        return None, None
    return data, mtime


def _is_our_process(data: dict[str, Any], mtime: float | None) -> int | None:
    """The pid, if the state names a live process that is the service."""
    pid = usable_pid(data.get("pid"))
    if pid is None or data.get("dry_run"):
        return None
    proc = procinfo.check_service(pid, data, mtime)
    return pid if proc.alive and proc.is_service else None


def _health(ctx: AgentContext, key: str, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
    path = ctx.server_dir / f"{key}.json"
    return health.check(server_row(path), path, timeout)


def rotate_log(ctx: AgentContext, key: str) -> str | None:
    """Keep the previous run's log as KEY.log.1 (replacing an older one); its path, or None."""
    log = ctx.server_dir / f"{key}.log"
    kept = ctx.server_dir / f"{key}.log.1"
    try:
        if not log.is_file() or log.stat().st_size == 0:
            return None
        os.replace(log, kept)
    except OSError as exc:
        raise ProtocolError(ErrorCode.OP_FAILED, f"could not keep the previous log {log} as {kept}: {exc}") from None
    return str(kept)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        _, data, _ = read_tail(fd, size, lines, LOG_TAIL_BYTES)
    finally:
        os.close(fd)
    return display_text(data.decode("utf-8", errors="replace"))


def _launch(ctx: AgentContext, args: dict[str, Any], argv: list[str]) -> str | None:
    rotated = rotate_log(ctx, args["key"])
    ctx.server_dir.mkdir(parents=True, exist_ok=True)
    proc = run_helper(LAUNCH_HELPER, launch_args(args, argv), helper_dir=ctx.helper_dir, base=ctx.base)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        line = lines[-1] if lines else f"exit status {proc.returncode}"
        code = ErrorCode.POLICY_REFUSED if "must live under" in line or "must not" in line else ErrorCode.HELPER_FAILED
        raise ProtocolError(code, f"{LAUNCH_HELPER}: {line.removeprefix(LAUNCH_HELPER + ': ')}")
    return rotated


def _value(ctx: AgentContext, key: str, outcome: str, launched: bool, **extra: Any) -> dict[str, Any]:
    value = {"key": key, "outcome": outcome, "launched": launched, "status": None, "pid": None,
             "host": None, "port": None, "log": str(ctx.server_dir / f"{key}.log"),
             "rotated_log": None, "log_tail": None, "detail": None}
    value.update(extra)
    return value


def _wait(ctx: AgentContext, key: str, deadline: float) -> dict[str, Any]:
    """Poll the state until running-and-healthy, failed, or the deadline: the fields to report."""
    last_problem = None
    while True:
        data, mtime = _state(ctx, key)
        status = data.get("status") if data else None
        if data is None:
            return {"status": "failed", "detail": "there is no state file (the service was removed)"}
        if status not in ("starting", "running", "failed"):
            return {"status": "failed", "pid": usable_pid(data.get("pid")), "detail": f"the service is {status}"}
        if status == "failed":
            return {"status": "failed", "pid": usable_pid(data.get("pid")), "detail": "the service reported failed"}
        if status == "running":
            entry = _health(ctx, key, timeout=max(min(HEALTH_TIMEOUT, deadline - time.monotonic()), 0.1))
            if entry["healthy"]:
                return {"status": "running", "pid": entry["pid"], "host": entry["host"], "port": entry["port"]}
            last_problem = entry.get("error")
            if not entry["pid_alive"]:
                return {"status": "failed", "detail": last_problem or "the service process is gone"}
        elif status == "starting" and _is_our_process(data, mtime) is None and usable_pid(data.get("pid")) is not None:
            return {"status": "failed", "pid": usable_pid(data.get("pid")),
                    "detail": "the service process exited while starting"}
        if time.monotonic() >= deadline:
            return {"status": "starting", "pid": usable_pid(data.get("pid")), "detail": last_problem}
        time.sleep(POLL)


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    key = args["key"]
    check_path(ctx.policy or default_policy(), args["workdir"], "workdir")
    argv = service_argv(ctx, key, args["argv"])
    _json_object("parameters", args["parameters"])
    _json_object("meta", args["meta"])
    deadline = time.monotonic() + args["wait"]

    launched, rotated = False, None
    with _start_lock(ctx):
        data, mtime = _state(ctx, key)
        pid = _is_our_process(data, mtime) if data is not None else None
        status = data.get("status") if data is not None else None
        if pid is not None and status == "running":
            entry = _health(ctx, key)
            if not entry["healthy"]:
                raise ProtocolError(ErrorCode.CONFLICT, (
                    f"{key} runs (pid {pid}) but does not answer: {entry.get('error') or 'unhealthy'}; "
                    "restart it"))
            return _value(ctx, key, "already running", False, status="running", pid=pid,
                          host=entry["host"], port=entry["port"])
        if (pid is None or status != "starting") and args["launch"]:
            rotated = _launch(ctx, args, argv)
            launched = True
    found = _wait(ctx, key, deadline)
    outcome = START_OUTCOMES[found["status"]]
    if found["status"] == "failed":
        found["log_tail"] = log_tail(ctx.server_dir / f"{key}.log")
    return _value(ctx, key, outcome, launched, rotated_log=rotated, **found)
