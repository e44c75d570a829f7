"""`persistent`: the rows of `rhl-ps-persistent --json PATHS --level N [--file F] [--marker M]`,
computed in-process, plus real sizes in bytes.

Same walk as ssh_guard/helpers/ps_persistent.py: per path, depth first, children are
the subdirectories (symlinks followed) sorted by name, a row when no marker was given or
the directory is absent or holds the marker; states absent/empty/populated; `size` is
the file size with `file`, else null; `modified` is local time, ISO, whole seconds.
Row paths are printed as the helper prints them (the `~`-expanded path the client
sent, children joined to it), while the walk itself runs on the policy-checked,
resolved path (no check-then-use symlink race).

Deliberate differences:

* a path that is not a directory gives an error row (`state: "error"`, `error`), not
  the helper's abort of the whole listing;
* an unreadable directory likewise gives an error row instead of an abort;
* under a marker policy a marker-less existing root is walked, but only directories the
  policy authorises get a row (agent/policy.py explains the rule and why);
* every row also has `bytes` (directory total from the background sizer, or the file
  size with `file`), `bytes_measured` (epoch or None) and `bytes_state`
  (fresh/stale/pending/error, None when not measured: absent rows, `sizes=false`).

Any refused path fails the whole op with POLICY_REFUSED naming that path, before any
walk: a client learns nothing about the other paths of a request it should not send.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any

from ...protocol import ErrorCode, ProtocolError
from ..context import AgentContext
from ..policy import PathPolicy, check_path, default_policy, expand_path
from ..sizer import Sizer

MAX_ROWS = 100_000      # a level-8 walk of a huge tree must not build an unbounded reply
MAX_VISITED = 200_000   # nor walk without end (marker-less directories give no rows)


def _mtime(path: Path) -> str | None:
    try:
        return _dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
    except OSError:
        return None


def _base(shown: Path, state: str, size: int | None = None, modified: str | None = None) -> dict[str, Any]:
    return {"path": shown.as_posix(), "state": state, "size": size, "modified": modified}


def _error_row(shown: Path, message: str) -> dict[str, Any]:
    row = _base(shown, "error")
    row["error"] = message
    return row


def _row(real: Path, shown: Path, filename: str | None, marker: str | None) -> dict[str, Any]:
    """One row as rhl-ps-persistent's `_row`, with its aborts turned into error rows."""
    if not real.exists():
        return _base(shown, "absent")
    if not real.is_dir():
        return _error_row(shown, f"not a directory: {shown}")
    target = real / filename if filename else real
    if filename:
        populated = target.exists()
    else:
        try:
            with os.scandir(real) as entries:
                populated = any(entry.name != marker for entry in entries)
        except OSError as exc:
            return _error_row(shown, f"could not read {shown}: {exc}")
    if not populated:
        return _base(shown, "empty")
    if filename:
        try:
            st = target.stat()
        except OSError as exc:
            return _error_row(shown, f"could not stat {shown / filename}: {exc}")
        return _base(shown, "populated", st.st_size, _mtime(target))
    return _base(shown, "populated", None, _mtime(real))


class _Walk:
    def __init__(self, policy: PathPolicy, level: int, filename: str | None, marker: str | None):
        self.policy = policy
        self.filename = filename
        self.marker = marker
        self.level = level
        # rows carry the real path privately, for sizing; stripped before returning
        self.rows: list[tuple[dict[str, Any], Path]] = []
        self.visited = 0

    def add(self, row: dict[str, Any], real: Path) -> None:
        if len(self.rows) >= MAX_ROWS:
            raise ProtocolError(ErrorCode.OP_FAILED,
                                f"more than {MAX_ROWS} rows; ask for a lower level or fewer paths")
        self.rows.append((row, real))

    def walk(self, real: Path, shown: Path, level: int, authorised: bool) -> None:
        self.visited += 1
        if self.visited > MAX_VISITED:
            raise ProtocolError(ErrorCode.OP_FAILED,
                                f"more than {MAX_VISITED} directories to walk; ask for a lower level")
        exists = real.exists()
        # under a marker policy, a directory is reported only inside an authorised subtree
        authorised = authorised or (exists and self.policy.authorises(real))
        emitted = False
        if self.marker is None or not exists or (real / self.marker).exists():
            if authorised or not exists:
                row = _row(real, shown, self.filename, self.marker)
                self.add(row, real)
                emitted = row["state"] == "error"
        if level == 0 or not exists:
            return
        if not real.is_dir():
            # the helper dies here ("not a directory"); report it once as a row instead
            if not emitted:
                self.add(_error_row(shown, f"not a directory: {shown}"), real)
            return
        try:
            children = sorted(child.name for child in real.iterdir() if child.is_dir())
        except OSError as exc:
            if not emitted:
                self.add(_error_row(shown, f"could not read {shown}: {exc}"), real)
            return
        for name in children:
            self.walk(real / name, shown / name, level - 1, authorised)


def _add_sizes(ctx: AgentContext, rows: list[tuple[dict[str, Any], Path]], filename: str | None,
               sizes: bool, refresh: bool) -> None:
    sizer: Sizer | None = ctx.shared("sizer", Sizer) if sizes else None
    for row, real in rows:
        row["bytes"] = row["bytes_measured"] = row["bytes_state"] = None
        if sizer is None or row["state"] not in ("empty", "populated"):
            continue
        if filename:
            # the file's own size: one stat, always current
            try:
                st = (real / filename).stat()
            except OSError:
                continue
            row["bytes"], row["bytes_measured"], row["bytes_state"] = st.st_size, time.time(), "fresh"
            continue
        measured = sizer.size(str(real), refresh=refresh)
        row["bytes"] = measured["bytes"]
        row["bytes_measured"] = measured["measured"]
        row["bytes_state"] = measured["state"]
        if "error" in measured:
            row["bytes_error"] = measured["error"]


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    policy = ctx.policy or default_policy()
    # check every path first: one refused path fails the op before anything is walked
    checked = [(check_path(policy, raw, "persistent"), expand_path(raw)) for raw in args["paths"]]
    walk = _Walk(policy, args["level"], args["file"], args["marker"])
    for resolved, shown in checked:
        # a root the marker rule accepted only for walking is not authorised by itself
        walk.walk(resolved, shown, args["level"], authorised=False)
    _add_sizes(ctx, walk.rows, args["file"], args["sizes"], args["refresh"])
    return {"rows": [row for row, _ in walk.rows]}
