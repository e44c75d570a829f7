"""start, restart and reset: the service lifecycle on top of the ops (CLI and Python API).

* `start_service`: the `start` op (agent/ops/start.py) with the launcher's own arguments
  (launch.py); called again with `launch: false` while the service is starting, each
  call waiting at most STEP seconds on the host, so a slow start shows progress and no call
  runs into the transport's timeout. An already-running service costs one round trip.
* `restart_service`: stop (the stop op's checks), remove the state (server file, and the
  client file on this machine, so no Seamless client reuses the old port), start. The start
  op keeps the previous log as KEY.log.1.
* `reset_plan` / `reset`: the false-pass protocol for a project/stage: stop its services,
  remove their state, clear its hashserver and database directories (the clear op: path
  policy, markers kept, refusals), then check that nothing is left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import OpError, UsageError
from ..transport.base import Transport

STEP = 5.0                 # seconds one start call waits on the host
START_TIMEOUT = 120.0      # seconds to wait for `running` in all
SIZE_SETTLE = 5.0          # seconds to wait for the agent's sizer in a dry run

Progress = Callable[[str], None]


def _call(transport: Transport, op: str, args: dict[str, Any]) -> Any:
    from ..transport.local import unwrap

    return unwrap(transport.batch([(op, args)])[0], host=transport.label)


# --------------------------------------------------------------------------- start


def start_service(transport: Transport, config: dict[str, Any], *, timeout: float = START_TIMEOUT,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Start the service `config` describes (seamless-config's launcher configuration), or
    find it running. The start op's final value (outcome "already running", "started" or
    "failed"; `launched` true if this call launched it). OpError "timeout" if it is still
    starting after `timeout` seconds."""
    from .launch import start_args

    args = start_args(config, wait=min(STEP, timeout))
    began = time.monotonic()
    value = _call(transport, "start", args)
    launched, rotated = value["launched"], value.get("rotated_log")
    while value["status"] == "starting":
        elapsed = time.monotonic() - began
        if progress is not None:
            progress(f"{value['key']}: starting (pid {value.get('pid')}, {elapsed:.0f} s)")
        if elapsed >= timeout:
            raise OpError("timeout", f"{value['key']} is still starting after {timeout:g} s; "
                          "see `seamless-service logs`", None)
        args = {**args, "launch": False, "wait": min(STEP, max(timeout - elapsed, 0.1))}
        value = _call(transport, "start", args)
    value["launched"] = launched or value["launched"]
    value["rotated_log"] = rotated or value.get("rotated_log")
    return value


def remove_client_file(key: str) -> bool:
    """Remove this machine's client file of `key` (the launcher writes it on the client
    side); True if there was one."""
    from ...agent import paths

    path = paths.client_dir() / f"{key}.json"
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class LifecycleError(OpError):
    """A step of restart/reset that did not succeed; what was done before it stays done."""


def restart_service(transport: Transport, config: dict[str, Any], *, local_client_files: bool = True,
                    timeout: float = START_TIMEOUT, progress: Progress | None = None) -> dict[str, Any]:
    """Stop, remove the state, start. The start op's value plus `stopped` (the stop op's
    outcome) and `previous_pid`."""
    key = config["key"]
    stop = _call(transport, "stop", {"keys": [key]})["results"][0]
    if not stop["stopped"] and stop["outcome"] != "missing state":
        raise LifecycleError("conflict", f"{key}: could not be stopped ({stop['outcome']}"
                             f"{'; ' + stop['detail'] if stop.get('detail') else ''}); not restarted", None)
    if stop["outcome"] != "missing state":
        removed = _call(transport, "rm", {"keys": [key]})["results"][0]
        if removed["outcome"] not in ("removed", "not found"):
            raise LifecycleError("op_failed", f"{key}: stopped, but its state could not be removed "
                                 f"({removed['outcome']}); not restarted", None)
    if local_client_files:
        remove_client_file(key)
    value = start_service(transport, config, timeout=timeout, progress=progress)
    value["stopped"] = stop["outcome"]
    value["previous_pid"] = stop.get("pid")
    return value


# --------------------------------------------------------------------------- reset


@dataclass
class DataDir:
    service: str
    key: str
    path: str
    state: str = "absent"          # absent | empty | populated | error | no marker
    bytes: int | None = None


@dataclass
class ResetPlan:
    host: str | None
    services: list[dict[str, Any]] = field(default_factory=list)   # ps rows to stop and remove
    dirs: list[DataDir] = field(default_factory=list)


def dir_rows(transport: Transport, dirs: list[tuple[str, str]], *, settle: float) -> dict[str, dict[str, Any]]:
    """{path: persistent row} for `dirs` ([(service, path)]): reset's plan and check, and
    `clear --dry-run`. Asked as `ps --persistent` asks (query/ps.py PERSISTENT_OPTS, level 0),
    in one round trip; waits a little for the sizer to measure. A directory the walk gives
    no row (no marker) is left out."""
    from ..transport.local import unwrap
    from ..query.ps import PERSISTENT_OPTS

    deadline = time.monotonic() + settle
    refresh = True
    while True:
        ops = [("persistent", {"paths": [path], **{**PERSISTENT_OPTS[service], "level": 0}, "refresh": refresh})
               for service, path in dirs]
        rows: dict[str, dict[str, Any]] = {}
        for (_, args), result in zip(ops, transport.batch(ops)):
            for row in unwrap(result)["rows"]:
                rows.setdefault(args["paths"][0], row)
        refresh = False
        if all(r.get("bytes_state") not in ("pending", "stale") for r in rows.values()) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def reset_plan(transport: Transport, host: str | None, filters: dict[str, Any],
               dirs: list[tuple[str, str, str]], *, settle: float = SIZE_SETTLE) -> ResetPlan:
    """What `reset` would do: the server rows matching `filters` (cluster/project/stage),
    and the data directories `dirs` ([(service, key, path)]) with their state and size."""
    plan = ResetPlan(host)
    rows = _call(transport, "ps", {"side": "server", **filters})["rows"]
    plan.services = [r for r in rows if r.get("status") != "error" and r.get("valid_key", True)]
    if dirs:
        by_path = dir_rows(transport, [(service, path) for service, _, path in dirs], settle=settle)
        for service, key, path in dirs:
            row = by_path.get(path)
            state = row.get("state", "error") if row is not None else "no marker"
            plan.dirs.append(DataDir(service, key, path, state, row.get("bytes") if row else None))
    return plan


def reset(transport: Transport, plan: ResetPlan, say: Callable[[str], None]) -> int:
    """Carry `plan` out, saying each step; the exit status (0: nothing left)."""
    rc = 0
    keys = [r["key"] for r in plan.services]
    if keys:
        for result in _call(transport, "stop", {"keys": keys})["results"]:
            say(f"stopped {result['key']}: {result['outcome']}")
            if not result["stopped"] and result["outcome"] != "missing state":
                rc = 1
        for result in _call(transport, "rm", {"keys": keys})["results"]:
            for path in result.get("removed") or []:
                say(f"removed {path}")
            if result["outcome"] not in ("removed", "not found"):
                say(f"{result['key']}: state not removed: {result['outcome']}")
                rc = 1
            if remove_client_file(result["key"]):
                say(f"removed the client file of {result['key']}")
    for directory in plan.dirs:
        if directory.state in ("absent", "empty"):
            say(f"{directory.path}: {directory.state}, nothing to clear")
            continue
        try:
            value = _call(transport, "clear", {"path": directory.path, "key": directory.key})
        except OpError as exc:
            say(f"{directory.path}: not cleared: {exc.message}")
            rc = 1
            continue
        say(f"cleared {directory.path}: removed {value.get('removed')} item(s)"
            + (f", kept {', '.join(value['preserved'])}" if value.get("preserved") else ""))
        if not value.get("ok"):
            rc = 1
    return rc


def leftovers(transport: Transport, plan: ResetPlan, filters: dict[str, Any]) -> list[str]:
    """What `ps --persistent` still shows for the selection: running services, state files,
    data. Empty when the reset left nothing."""
    left = []
    rows = _call(transport, "ps", {"side": "server", **filters})["rows"]
    left += [f"state of {r.get('key')} ({r.get('status')})" for r in rows]
    if plan.dirs:
        found = dir_rows(transport, [(d.service, d.path) for d in plan.dirs], settle=1.0)
        left += [f"{path} is {row.get('state')}" for path, row in found.items()
                 if row.get("state") not in ("absent", "empty")]
    return left


def check_reset_selection(filters: dict[str, Any]) -> None:
    if not filters.get("cluster") or not filters.get("project"):
        raise UsageError("reset needs a cluster and a project (--cluster/--project, or seamless.yaml)")
