"""`stop`: stop services through the installed `rhl-stop`, after checks it lacks.

rhl-stop (one `KEY: OUTCOME` line per key: stopped, kill required, already gone,
permission denied, missing state) is the only thing that signals a service, so stop semantics
(SIGINT, then SIGTERM, then SIGKILL, marking the state stale) never drift from
remote-http-launcher's. But its defects must not reach users, so every key is checked
first and only keys that pass go to ONE `rhl-stop k1 k2 ...` call:

* #13: one key with a missing/invalid pid (dry-run, early `starting`) makes rhl-stop abort
  the whole batch. Such keys never reach it: they get "invalid pid" (running/starting) or
  "not running" (stale, failed, dry-run: nothing of theirs runs).
* #14/#15: pid <= 0 (signals the process group, or everyone) and huge pids are "invalid pid".
* #17: dead pids, live pids of rows already stale/failed (their number may have been handed
  to another process since), and live pids that fail the identity check of agent.procinfo
  (uid, program, start time) are never signalled: "already gone", "not running" or "pid
  belongs to another process".
* A dead pid (or a zombie) gets rhl-stop's own outcome for it, `already gone`, and its
  state file is marked stale as rhl-stop marks it (the same json.dumps of the same object
  with `"status": "stale"`), but without signalling anything: the file is rewritten here,
  atomically through a unique temp file, keeping its mode (#19). rhl-stop would send SIGINT
  to the dead number first (a zombie: ten seconds of SIGINT, SIGTERM, then `kill
  required`).
* #20: a key without a state file is "missing state" with `stopped: false`, never success.
* #17, second half: rhl-stop signals only the pid. After it reports the service gone, and
  only if the pid was verified as the service and is its process-group leader (the launcher
  starts services with start_new_session), surviving members of that group (orphaned
  workers) get SIGKILL; the result then carries `group_killed: N`.
* Keys beginning with `-` are refused: rhl-stop reads `-h`/`--help` anywhere as a request
  for help and would exit 0 having stopped nothing.

Per key: `{"key", "outcome", "stopped", "signalled", "status", "pid"}` plus `detail` or
`group_killed` when there is something to say. `stopped` is true when the service is known
not to be running afterwards (rhl-stop's stopped / already gone / kill required, or a row
that was already not running); `signalled` is true when a signal was delivered to it.
Besides the `already gone` rewrite, the state file of a key that was not passed to
rhl-stop is left exactly as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...protocol import ProtocolError
from ...rhl import (ALREADY_GONE, GONE, LIVE_STATUSES, MISSING_STATE, NOT_RUNNING, STALE, STOP_HELPER,
                    outcome_lines, stop_flags, stop_without_helper, usable_pid)
from .. import procinfo
from ..context import AgentContext
from ..helpers import run_helper
from ..statefiles import StateFileError, derive_status, read_state, write_state_json


@dataclass
class _Plan:
    key: str
    outcome: str | None = None     # None: pass to rhl-stop
    stopped: bool = False
    status: str | None = None
    pid: int | None = None
    detail: str | None = None
    group_leader: bool = False     # pid verified as the service and leader of its group
    raw_pid: Any = None            # the pid as the file holds it (to see a relaunch)


def _state_mtime(path: os.PathLike) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def plan_key(ctx: AgentContext, key: str) -> _Plan:
    """Decide, without signalling anything, whether `key` may go to rhl-stop."""
    plan = _Plan(key)
    # Keys starting with '-' (read by rhl-stop as options) are refused by the schema.
    path = ctx.server_dir / f"{key}.json"
    try:
        data = read_state(path)
    except StateFileError as exc:
        plan.outcome = f"error: {exc}"
        return plan
    if data is None:
        plan.outcome = MISSING_STATE
        return plan
    mtime = _state_mtime(path)
    plan.status, _ = derive_status(data)
    plan.raw_pid = data.get("pid")
    plan.pid = usable_pid(plan.raw_pid)
    verdict = stop_without_helper(data, json_status=data.get("status"))
    if verdict is not None:
        plan.outcome, plan.stopped, plan.detail = verdict.outcome, verdict.stopped, verdict.detail
        return plan
    pid = plan.pid
    assert pid is not None  # stop_without_helper decided every key without a usable pid
    proc = procinfo.check_service(pid, data, mtime)
    if not proc.alive:
        # rhl-stop's outcome and file for a pid that no longer exists (marked in run())
        plan.outcome, plan.stopped = ALREADY_GONE, True
        return plan
    if data.get("status") not in LIVE_STATUSES:
        # stale/failed with a live pid: the number may name another process by now (#17)
        plan.outcome, plan.stopped = NOT_RUNNING, True
        return plan
    if not proc.is_service:
        plan.outcome = "pid belongs to another process"
        plan.detail = proc.problem
        return plan
    plan.group_leader = proc.info is not None and proc.info.pgrp == pid
    return plan


def _mark_gone(ctx: AgentContext, plan: _Plan) -> str | None:
    """Mark the state of a service whose pid is gone stale, as rhl-stop does; the reason
    if that failed. A file that changed meanwhile (removed, or relaunched under another
    pid) is left alone: it no longer describes the process that is gone."""
    path = ctx.server_dir / f"{plan.key}.json"
    try:
        data = read_state(path)
        if data is None or data.get("pid") != plan.raw_pid or data.get("status") == STALE:
            return None
        data["status"] = STALE
        write_state_json(path, data)
    except (StateFileError, OSError) as exc:
        return f"could not mark {plan.key} stale: {exc}"
    return None


def _result(plan: _Plan, outcome: str, stopped: bool, signalled: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "key": plan.key, "outcome": outcome, "stopped": stopped, "signalled": signalled,
        "status": plan.status, "pid": plan.pid,
    }
    if plan.detail:
        result["detail"] = plan.detail
    return result


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    keys: list[str] = args["keys"]
    plans: dict[str, _Plan] = {}
    for key in keys:  # a key given twice is checked and stopped once, reported twice
        if key not in plans:
            plans[key] = plan_key(ctx, key)
    to_stop = [key for key, plan in plans.items() if plan.outcome is None]
    for plan in plans.values():
        if plan.outcome == ALREADY_GONE:
            problem = _mark_gone(ctx, plan)
            if problem:  # rhl-stop exits 1 then too
                plan.outcome, plan.stopped = f"error: {problem}", False

    exit_status: int | None = None
    stderr = ""
    finished: dict[str, dict[str, Any]] = {}
    if to_stop:
        try:
            proc = run_helper(STOP_HELPER, to_stop, helper_dir=ctx.helper_dir, base=ctx.base)
        except ProtocolError as exc:  # not installed, or timed out: report it per key
            stderr = exc.message
            for key in to_stop:
                finished[key] = _result(plans[key], f"error: {exc.message}", False, False)
        else:
            exit_status, stderr = proc.returncode, proc.stderr
            outcomes = outcome_lines(proc.stdout, to_stop)
            for key in to_stop:
                plan = plans[key]
                outcome = outcomes.get(key)
                if outcome is None:
                    last = stderr.strip().splitlines()[-1:] or [f"exit status {exit_status}"]
                    finished[key] = _result(plan, f"error: {STOP_HELPER} gave no outcome ({last[0]})", False, False)
                    continue
                stopped, signalled = stop_flags(outcome)
                result = finished[key] = _result(plan, outcome, stopped, signalled)
                if outcome in GONE and plan.group_leader and plan.pid is not None:
                    killed = procinfo.kill_group(plan.pid)
                    if killed:
                        result["group_killed"] = killed

    results = []
    for key in keys:
        plan = plans[key]
        if key in finished:
            results.append(dict(finished[key]))
        else:
            results.append(_result(plan, plan.outcome or "error: not run", plan.stopped, False))
    return {"results": results, "exit_status": exit_status, "stderr": stderr}
