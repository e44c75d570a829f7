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
  (fresh/stale/pending/error, None when not measured: absent rows, `sizes=false`);
* a directory is sized only if the policy would let a client ask for it directly
  (`policy.size_refusal`, on its real path). The walk follows symlinked subdirectories
  as the helper does, so a row may stand for /usr/share or $HOME: such a row keeps its
  helper fields but gets `bytes_state: "refused"` and a `bytes_error` saying why, and
  that tree is never walked by the sizer;
* with `file` and a marker (the database: `--file seamless.db --marker seamless.db`), a
  directory that lacks the marker but holds nothing at all still gets a row: `empty`,
  `bytes` 0, fresh. The helper gives it none, so a cleared database (its marker is its
  data) vanished from `ps --persistent` instead of saying `empty`. It is reported under
  any policy: an empty directory below a path the policy lets the client walk has
  nothing in it to reveal;
* a directory name that is not UTF-8 is shown escaped (`\\xNN`) in its row's `path`
  (and in messages), so that one odd name cannot make the answer unsendable;
* a large directory that changed since its last listing is answered from that listing
  while it is relisted in the background (agent/listing.py): its subdirectory rows may
  lag one relisting behind (a subdirectory gone since is left out, not `absent`).

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
from ...protocol.wiresafe import display_text
from ..context import AgentContext
from ..listing import DirListings, Listing
from ..paths import join
from ..policy import PathPolicy, check_path, default_policy, expand_path, size_refusal
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


def _realpath(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return path


def _inside(path: str, directory: str) -> bool:
    """`path` is `directory` or below it (both real, normalised paths)."""
    return path == directory or path.startswith(directory if directory.endswith("/") else directory + "/")


_Row = tuple[dict[str, Any], str, str, tuple[str, ...], str]


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
        # rows carry privately, for sizing (stripped before returning): the walked path, its
        # real path, the real paths of the marker directories that authorised it, the root
        self.rows: list[_Row] = []
        self.visited = 0
        self.root = ""  # the checked (resolved) root being walked
        self.bare: set[str] = set()  # walked paths of marker-less empty `file` rows

    def add(self, row: dict[str, Any], real: str, resolved: str = "", auth: tuple[str, ...] = ()) -> None:
        if len(self.rows) >= MAX_ROWS:
            raise ProtocolError(ErrorCode.OP_FAILED,
                                f"more than {MAX_ROWS} rows; ask for a lower level or fewer paths")
        self.rows.append((row, real, resolved or real, auth, self.root))

    def row(self, real: str, shown: str, st: os.stat_result, listing: Listing | None,
            error: OSError | None) -> dict[str, Any]:
        """One row as rhl-ps-persistent's `_row`, with its aborts turned into error rows."""
        if not stat.S_ISDIR(st.st_mode):
            return _error_row(shown, f"not a directory: {shown}")
        if self.filename:
            target = _stat(join(real, self.filename))
            if target is None:
                return _base(shown, "empty")
            return _base(shown, "populated", target.st_size, _iso(target.st_mtime))
        if error is not None:
            return _error_row(shown, f"could not read {shown}: {error}")
        # the helper's test: any entry not named like the marker. A current full listing
        # answers it; otherwise (deepest level, or a stale large listing) a scan that stops
        # after at most 2 entries does.
        populated = listing.populated(self.marker) if listing is not None and not listing.stale else None
        if populated is None:
            try:
                populated = self.listings.populated(real, st, self.marker)
            except OSError as exc:
                return _error_row(shown, f"could not read {shown}: {exc}")
        if not populated:
            return _base(shown, "empty")
        return _base(shown, "populated", None, _iso(st.st_mtime))

    def _bare(self, real: str, st: os.stat_result) -> bool:
        """An empty directory that `file` rows report although it lacks the marker."""
        if self.filename is None or self.marker is None or not stat.S_ISDIR(st.st_mode):
            return False
        try:
            return not self.listings.populated(real, st, None)
        except OSError:
            return False

    def walk(self, real: str, shown: str, level: int, authorised: bool, resolved: str = "",
             auth: tuple[str, ...] = (), stale_parent: bool = False) -> None:
        """`real`: the path walked (the checked root plus names); `resolved`: its real path;
        `auth`: real paths of the authorising (marker) directories on the way;
        `stale_parent`: the parent's listing may be outdated."""
        self.visited += 1
        if self.visited > MAX_VISITED:
            raise ProtocolError(ErrorCode.OP_FAILED,
                                f"more than {MAX_VISITED} directories to walk; ask for a lower level")
        resolved = resolved or real
        st = _stat(real)
        if stale_parent and (st is None or not stat.S_ISDIR(st.st_mode)):
            return  # gone (or no directory any more) since the parent's listing: no child now
        if st is None:
            self.add(_base(shown, "absent"), real)
            return
        listing: Listing | None = None
        error: OSError | None = None
        if stat.S_ISDIR(st.st_mode) and level > 0:
            # below the deepest level only: the subdirectories to walk into
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

        # under a marker policy, a directory is reported only inside an authorised subtree.
        # Past a symlink out of that subtree it is checked even so: its own marker makes its
        # real path an authorised subtree, which sizing needs (`_add_sizes`).
        if not authorised or (self.policy.mode == "marker" and resolved != real
                              and not any(_inside(resolved, a) for a in auth)):
            if self.policy.authorises(real, is_file):
                authorised = True
                auth = auth + (resolved,)
        emitted = False
        has_marker = self.marker is not None and marker_stat(join(real, self.marker)) is not None
        bare = not has_marker and self._bare(real, st)
        if (self.marker is None or has_marker) and authorised:
            row = self.row(real, shown, st, listing, error)
            self.add(row, real, resolved, auth)
            emitted = row["state"] == "error"
        elif bare:
            # a data directory whose marker is its data (a cleared database): `empty`, 0 B
            row = _base(shown, "empty")
            self.add(row, real, resolved, auth)
            self.bare.add(real)
        if level == 0:
            return
        if listing is None:
            # the helper dies here ("not a directory" / unreadable); report it once as a row
            if not emitted:
                message = f"not a directory: {shown}" if error is None else f"could not read {shown}: {error}"
                self.add(_error_row(shown, message), real)
            return
        assert listing.subdirs is not None
        for name in listing.subdirs:
            child = join(real, name)
            # the real path follows from the parent's unless the entry is a symlink (known
            # from the listing for free); a stale listing may predate a swap: resolve
            if listing.stale or name in listing.links:
                child_resolved = _realpath(child)
            else:
                child_resolved = join(resolved, name)
            self.walk(child, join(shown, name), level - 1, authorised, child_resolved, auth, listing.stale)


def _refusal(policy: PathPolicy, root: str, real: str, resolved: str, auth: tuple[str, ...]) -> str | None:
    """Why directory `real` (walked from the checked `root`) may not be sized, or None.

    Fast path, with no system call: a directory reached from the checked root through
    plain subdirectories only (its real path is the walked path) and without dot-named
    ones inherits the root's acceptance (a descendant of an accepted root is neither
    $HOME, an ancestor of it, a system root nor outside the root's data root), and under a
    marker policy it lies inside the marker directory that authorised its row. Anything
    else (a symlink on the way, a dot segment) gets the policy's full check."""
    if resolved == real and real.startswith(root) and "/." not in real[len(root):]:
        return None
    return size_refusal(policy, resolved, auth)


def _add_sizes(ctx: AgentContext, policy: PathPolicy, rows: list[_Row], filename: str | None,
               sizes: bool, refresh: bool, bare: set[str] = frozenset()) -> None:
    sizer: Sizer | None = ctx.shared("sizer", Sizer) if sizes else None
    for row, real, resolved, auth, root in rows:
        row["bytes"] = row["bytes_measured"] = row["bytes_state"] = None
        if sizer is None or row["state"] not in ("empty", "populated"):
            continue
        if real in bare:  # found empty just now: nothing to walk, nothing to refuse
            row["bytes"], row["bytes_measured"], row["bytes_state"] = 0, time.time(), "fresh"
            continue
        if filename:
            # the file's own size: one stat, always current
            target = _stat(join(real, filename))
            if target is None:
                continue
            row["bytes"], row["bytes_measured"], row["bytes_state"] = target.st_size, time.time(), "fresh"
            continue
        reason = _refusal(policy, root, real, resolved, auth)
        if reason is not None:
            row["bytes_state"] = "refused"
            row["bytes_error"] = f"not sized: {reason}"
            continue
        # the real path just checked (the sizer would resolve `real` again, racing a swap)
        measured = sizer.size(resolved, refresh=refresh)
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
        walk.root = str(resolved)
        walk.walk(walk.root, shown.as_posix(), args["level"], authorised=False)
    _add_sizes(ctx, policy, walk.rows, args["file"], args["sizes"], args["refresh"], walk.bare)
    return {"rows": [_sendable(row[0]) for row in walk.rows]}


def _sendable(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its texts (path, error) UTF-8-encodable: names come from the disk."""
    for name, value in row.items():
        if isinstance(value, str):
            row[name] = display_text(value)
    return row
