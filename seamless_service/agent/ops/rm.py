"""`rm`: remove state files through the installed `rhl-rm`, refusing to orphan services.

`rhl-rm [--client] [--server] keys` (anchor §2.6) does the removal; neither flag means
both sides, as with the helper. Before it runs:

* #38: removing the server state of a RUNNING service orphans the process (nothing can
  find, stop or log it any more). A key whose server file would be removed and whose state
  says running/starting with a live pid that plausibly is the service (agent.procinfo) is
  refused unless `force` is true. Removing only the client file orphans nothing, so
  `client=True, server=False` is never refused.
* Keys beginning with `-` are refused: rhl-rm takes every `--x` argument for a flag (a key
  `--server` would silently narrow the removal of the other keys) and `-h` for help.

Per key: `{"key", "removed": [paths], "outcome"}` with outcome "removed", "not found",
"refused: ..." or "error: ...", plus `warning` when `force` removed the state of a live
service. rhl-rm stops at the first file it cannot remove; keys after it are reported as
errors, removals before it stay done.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ...protocol import ProtocolError
from .. import procinfo
from ..context import AgentContext
from ..helpers import run_helper
from ..statefiles import StateFileError, read_state, usable_pid

HELPER = "rhl-rm"
REFUSED_RUNNING = "refused: service is running (stop it first, or force)"
_COULD_NOT = re.compile(r"^rhl-rm: could not remove (.+?\.json): (.*)$")


def live_service_pid(path: Path) -> int | None:
    """The pid of the live service `path` describes, or None if nothing of it runs.

    An unreadable or malformed file describes nothing we could stop, so it never blocks
    a removal.
    """
    try:
        data = read_state(path)
    except StateFileError:
        return None
    if data is None or data.get("dry_run") or data.get("status") not in ("running", "starting"):
        return None
    pid = usable_pid(data.get("pid"))
    if pid is None:
        return None
    try:
        mtime: float | None = os.stat(path).st_mtime
    except OSError:
        mtime = None
    proc = procinfo.check_service(pid, data, mtime)
    return pid if proc.alive and proc.is_service else None


def _key_of(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len(".json")] if name.endswith(".json") else name


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    keys: list[str] = args["keys"]
    client, server, force = args["client"], args["server"], args["force"]
    do_server = server or not client  # neither flag -> both sides, as rhl-rm does
    flags = ["--client"] if client and not server else ["--server"] if server and not client else []

    outcomes: dict[str, dict[str, Any]] = {}
    to_remove: list[str] = []
    for key in keys:
        if key in outcomes or key in to_remove:
            continue
        pid = live_service_pid(ctx.server_dir / f"{key}.json") if do_server else None
        if pid is not None and not force:
            outcomes[key] = {"outcome": REFUSED_RUNNING, "pid": pid}
            continue
        if pid is not None:
            outcomes[key] = {"warning": f"service process {pid} is still running; its state is gone"}
        to_remove.append(key)

    exit_status: int | None = None
    stderr = ""
    removed: dict[str, list[str]] = {key: [] for key in to_remove}
    if to_remove:
        try:
            proc = run_helper(HELPER, [*flags, *to_remove], helper_dir=ctx.helper_dir, base=ctx.base)
        except ProtocolError as exc:
            stderr = exc.message
            for key in to_remove:
                outcomes.setdefault(key, {})["outcome"] = f"error: {exc.message}"
        else:
            exit_status, stderr = proc.returncode, proc.stderr
            removed = read_rm_output(to_remove, proc.stdout, stderr, exit_status, outcomes)

    return {"results": rm_results(keys, outcomes, removed), "exit_status": exit_status, "stderr": stderr}


def read_rm_output(to_remove: list[str], stdout: str, stderr: str, exit_status: int | None,
                   outcomes: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Parse what `rhl-rm` printed (`removed <path>`, `<key>: not found`, `could not remove`)
    into per-key outcomes; return the removed paths per key. Shared with the ssh transport,
    which runs the same helper remotely."""
    removed: dict[str, list[str]] = {key: [] for key in to_remove}
    wanted = set(to_remove)
    for line in stdout.splitlines():
        if line.startswith("removed "):
            path = line[len("removed "):]
            if _key_of(path) in wanted:
                removed[_key_of(path)].append(path)
        elif line.endswith(": not found") and line[: -len(": not found")] in wanted:
            outcomes.setdefault(line[: -len(": not found")], {})["outcome"] = "not found"
    for line in stderr.splitlines():
        match = _COULD_NOT.match(line.strip())
        if match and _key_of(match.group(1)) in wanted:
            outcomes.setdefault(_key_of(match.group(1)), {})["outcome"] = (
                f"error: could not remove {match.group(1)}: {match.group(2)}")
    for key in to_remove:
        entry = outcomes.setdefault(key, {})
        if "outcome" in entry:
            continue
        if removed[key]:
            entry["outcome"] = "removed"
        else:
            why = "an earlier error stopped it" if exit_status else "no output for this key"
            entry["outcome"] = f"error: {HELPER} did not process this key ({why})"
    return removed


def rm_results(keys: list[str], outcomes: dict[str, dict[str, Any]],
               removed: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The op's per-key results, in argument order."""
    results = []
    for key in keys:
        entry = outcomes[key]
        result: dict[str, Any] = {"key": key, "removed": list(removed.get(key, [])), "outcome": entry["outcome"]}
        if "pid" in entry:
            result["pid"] = entry["pid"]
        if "warning" in entry and entry["outcome"] == "removed":  # only if the state is really gone
            result["warning"] = entry["warning"]
        results.append(result)
    return results
