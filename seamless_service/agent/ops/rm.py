"""`rm`: remove state files through the installed `rhl-rm`, refusing to orphan services.

`rhl-rm [--client] [--server] keys` does the removal (it prints `removed PATH` per file,
`KEY: not found` when neither file exists); neither flag means both sides, as with the
helper. What both transports share of this is in seamless_service/rhl.py. Before it runs:

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
from pathlib import Path
from typing import Any

from ...protocol import ProtocolError
from ...rhl import LIVE_STATUSES, RM_HELPER, plan_rm, read_rm_output, rm_results, rm_sides, usable_pid
from .. import procinfo
from ..context import AgentContext
from ..helpers import run_helper
from ..statefiles import StateFileError, read_state


def live_service_pid(path: Path) -> int | None:
    """The pid of the live service `path` describes, or None if nothing of it runs.

    An unreadable or malformed file describes nothing we could stop, so it never blocks
    a removal.
    """
    try:
        data = read_state(path)
    except StateFileError:
        return None
    if data is None or data.get("dry_run") or data.get("status") not in LIVE_STATUSES:
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


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    keys: list[str] = args["keys"]
    do_server, flags = rm_sides(args["client"], args["server"])
    outcomes, to_remove = plan_rm(
        keys, force=args["force"],
        live_pid=lambda key: live_service_pid(ctx.server_dir / f"{key}.json") if do_server else None)

    exit_status: int | None = None
    stderr = ""
    removed: dict[str, list[str]] = {key: [] for key in to_remove}
    if to_remove:
        try:
            proc = run_helper(RM_HELPER, [*flags, *to_remove], helper_dir=ctx.helper_dir, base=ctx.base)
        except ProtocolError as exc:
            stderr = exc.message
            for key in to_remove:
                outcomes.setdefault(key, {})["outcome"] = f"error: {exc.message}"
        else:
            exit_status, stderr = proc.returncode, proc.stderr
            removed = read_rm_output(to_remove, proc.stdout, stderr, exit_status, outcomes)

    return {"results": rm_results(keys, outcomes, removed), "exit_status": exit_status, "stderr": stderr}
