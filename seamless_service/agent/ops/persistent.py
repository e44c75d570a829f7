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
import stat
import time
from typing import Any

from ...protocol import ErrorCode, ProtocolError
from ..context import AgentContext
from ..listing import DirListings, Listing
from ..paths import join
from ..policy import PathPolicy, check_path, default_policy, expand_path
from ..sizer import Sizer

MAX_ROWS = 100_000      # a level-8 walk of a huge tree must not build an unbounded reply
MAX_VISITED = 200_000   # nor walk without end (marker-less directories give no rows)


def _iso(mtime: float) -> str:
    return _dt.datetime.fromtimestamp(mtime).isoformat(timespec="seconds")


def _base(shown: str, state: str, size: int | None = None, modified: str | None = None) -> dict[str, Any]:
    return {"path": shown, "state": state, "size": size, "modified": modified}


def _error_row(shown: str, message: str) -> dict[str, Any]:
    row = _base(shown, "error")
    row["error"] = message
    return row


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):  # missing, or a symlink loop: `exists()` is false for the helper too
        return None


class _Walk:
    """One walk. Paths are plain strings (paths.join): a poll walks every
    project directory, and pathlib objects would cost more than the stat calls themselves."""

    def __init__(self, policy: PathPolicy, level: int, filename: str | None, marker: str | None,
                 listings: DirListings):
        self.policy = policy
        self.filename = filename
        self.marker = marker
        self.level = level
        self.listings = listings
        # rows carry the real path privately, for sizing; stripped before returning
        self.rows: list[tuple[dict[str, Any], str]] = []
        self.visited = 0

    def add(self, row: dict[str, Any], real: str) -> None:
        if len(self.rows) >= MAX_ROWS:
            raise ProtocolError(ErrorCode.OP_FAILED,
                                f"more than {MAX_ROWS} rows; ask for a lower level or fewer paths")
        self.rows.append((row, real))

    def row(self, real: str, shown: str, st: os.stat_result, listing: Listing | None,
            error: OSError | None, has_marker: bool) -> dict[str, Any]:
        """One row as rhl-ps-persistent's `_row`, with its aborts turned into error rows."""
        if not stat.S_ISDIR(st.st_mode):
            return _error_row(shown, f"not a directory: {shown}")
        if self.filename:
            target = _stat(join(real, self.filename))
            if target is None:
                return _base(shown, "empty")
            return _base(shown, "populated", target.st_size, _iso(target.st_mtime))
        if listing is None:
            return _error_row(shown, f"could not read {shown}: {error}")
        populated = listing.count > (1 if has_marker else 0)
        if not populated:
            return _base(shown, "empty")
        return _base(shown, "populated", None, _iso(st.st_mtime))

    def walk(self, real: str, shown: str, level: int, authorised: bool) -> None:
        self.visited += 1
        if self.visited > MAX_VISITED:
            raise ProtocolError(ErrorCode.OP_FAILED,
                                f"more than {MAX_VISITED} directories to walk; ask for a lower level")
        st = _stat(real)
        if st is None:
            self.add(_base(shown, "absent"), real)
            return
        listing: Listing | None = None
        error: OSError | None = None
        if stat.S_ISDIR(st.st_mode):
            try:
                listing = self.listings.get(real, st)
            except OSError as exc:
                error = exc
        # One stat per marker file per directory, shared by the policy and the marker rule.
        seen: dict[str, os.stat_result | None] = {}

        def marker_stat(path: str) -> os.stat_result | None:
            if path not in seen:
                seen[path] = _stat(path)
            return seen[path]

        def is_file(path: str) -> bool:
            found = marker_stat(path)
            return found is not None and stat.S_ISREG(found.st_mode)

        # under a marker policy, a directory is reported only inside an authorised subtree
        authorised = authorised or self.policy.authorises(real, is_file)
        emitted = False
        has_marker = self.marker is not None and marker_stat(join(real, self.marker)) is not None
        if (self.marker is None or has_marker) and authorised:
            row = self.row(real, shown, st, listing, error, has_marker)
            self.add(row, real)
            emitted = row["state"] == "error"
        if level == 0:
            return
        if listing is None:
            # the helper dies here ("not a directory" / unreadable); report it once as a row
            if not emitted:
                message = f"not a directory: {shown}" if error is None else f"could not read {shown}: {error}"
                self.add(_error_row(shown, message), real)
            return
        for name in listing.subdirs:
            self.walk(join(real, name), join(shown, name), level - 1, authorised)


def _add_sizes(ctx: AgentContext, rows: list[tuple[dict[str, Any], str]], filename: str | None,
               sizes: bool, refresh: bool) -> None:
    sizer: Sizer | None = ctx.shared("sizer", Sizer) if sizes else None
    for row, real in rows:
        row["bytes"] = row["bytes_measured"] = row["bytes_state"] = None
        if sizer is None or row["state"] not in ("empty", "populated"):
            continue
        if filename:
            # the file's own size: one stat, always current
            target = _stat(join(real, filename))
            if target is None:
                continue
            row["bytes"], row["bytes_measured"], row["bytes_state"] = target.st_size, time.time(), "fresh"
            continue
        measured = sizer.size(real, refresh=refresh)
        row["bytes"] = measured["bytes"]
        row["bytes_measured"] = measured["measured"]
        row["bytes_state"] = measured["state"]
        if "error" in measured:
            row["bytes_error"] = measured["error"]


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    policy = ctx.policy or default_policy()
    # check every path first: one refused path fails the op before anything is walked
    checked = [(check_path(policy, raw, "persistent"), expand_path(raw)) for raw in args["paths"]]
    walk = _Walk(policy, args["level"], args["file"], args["marker"], ctx.shared("listings", DirListings))
    for resolved, shown in checked:
        # a root the marker rule accepted only for walking is not authorised by itself
        walk.walk(str(resolved), shown.as_posix(), args["level"], authorised=False)
    _add_sizes(ctx, walk.rows, args["file"], args["sizes"], args["refresh"])
    return {"rows": [row for row, _ in walk.rows]}
