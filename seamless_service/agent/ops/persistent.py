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

The reply is `{"rows": [...], "watch": "inotify" | "stat"}`. Where Linux offers inotify
(agent/fswatch.py) the walk's rows (all but the sizes, which are added on every call)
are kept per question (root paths, policy, level, file, marker: WalkCache) and reused
while no watched folder had an event and nothing the watch cannot see has moved
(_Tracker: the roots' inodes, symlinked subfolders, linked markers and files, the mount
table), so a poll of an unchanged tree costs a few system calls instead of a stat per
folder: `watch: "inotify"`. A walk that could not be watched (no inotify, limits, an
absent root, a network filesystem, a large folder being relisted) is done in full on
every call, as before: `watch: "stat"`.

Any refused path fails the whole op with POLICY_REFUSED naming that path, before any
walk: a client learns nothing about the other paths of a request it should not send.
"""

from __future__ import annotations

import datetime as _dt
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ...protocol import ErrorCode, ProtocolError
from ...protocol.wiresafe import display_text
from .. import fswatch
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
                 listings: DirListings, tracker: "_Tracker | None" = None):
        self.policy = policy
        self.tracker = tracker  # watches what the walk looks at, to cache its rows
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
            target = self.stat_file(join(real, self.filename))
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

    def stat_file(self, path: str) -> os.stat_result | None:
        """stat of a file in a walked folder (a marker, `file`), noted by the tracker."""
        if self.tracker is not None:
            return self.tracker.file(path)
        return _stat(path)

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
        if self.tracker is not None:
            st = self.tracker.folder(real, st)
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
            if self.tracker is not None and listing is not None and listing.stale:
                self.tracker.refuse("a large folder is being relisted")
        # One stat per marker file per directory, shared by the policy and the marker rule.
        seen: dict[str, os.stat_result | None] = {}

        def marker_stat(path: str) -> os.stat_result | None:
            if path not in seen:
                seen[path] = self.stat_file(path)
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
                if self.tracker is not None:
                    self.tracker.link(child, child_resolved)
            else:
                child_resolved = join(resolved, name)
            self.walk(child, join(shown, name), level - 1, authorised, child_resolved, auth, listing.stale)


_Ident = tuple[int, int]
_FileSig = tuple[int, int, int, int, int, int] | None


def _file_sig(st: os.stat_result | None) -> _FileSig:
    if st is None:
        return None
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Tracker:
    """Watches every folder a walk looks at (fswatch.TreeWatch, added before the folder is
    read), so that the walk's rows can answer the next calls until anything changes, and
    notes what such a watch cannot see, to be checked on each reuse (`fresh`):

    * a root's own inode: renaming or replacing a *parent* of the root sends no event;
    * the mount table: a mount over a walked folder changes it without an event;
    * symlinked subfolders: their real path and inode (a link elsewhere on the way to
      the target may change);
    * markers and `file`s that are symlinks or have other hard links: their stat (they
      change through another name, with no event in the walked folder).

    A walk is not kept (`refused` says why) when a folder could not be watched (no inotify,
    limits reached), is absent (its creation would be an event in an unwatched parent), is
    on a filesystem where other machines' changes send no event (NFS, Lustre, GPFS, FUSE:
    fswatch.LOCAL_FS), when a large folder was answered from a listing being relisted,
    or when more than MAX_FOLDERS folders were walked."""

    MAX_FOLDERS = 8192

    def __init__(self) -> None:
        self.tree = fswatch.TreeWatch()
        self.table = fswatch.mount_table()   # before the first watch
        self.types = fswatch.fs_types(self.table) if self.table is not None else {}
        self.refused: str | None = self.tree.failed or (None if self.table is not None else "no mount table")
        self.idents: dict[str, _Ident] = {}        # every watched folder
        self.checked: list[str] = []               # roots and symlinked folders: inode re-checked
        self.links: list[tuple[str, str]] = []     # (walked path, its real path)
        self.files: dict[str, _FileSig] = {}       # linked markers / files: stat re-checked
        self._root: str | None = None

    def refuse(self, why: str) -> None:
        if self.refused is None:
            self.refused = why

    def root(self, path: str) -> None:
        self._root = path

    def folder(self, path: str, st: os.stat_result | None) -> os.stat_result | None:
        """Watch folder `path` (stat-ed as `st` just now); the stat to use from now on."""
        is_root, self._root = path == self._root, None
        if self.refused is not None:
            return st
        if st is None or not stat.S_ISDIR(st.st_mode):
            self.refuse(f"{display_text(path)} is absent or no folder")
            return st
        fstype = self.types.get(st.st_dev)
        if fstype not in fswatch.LOCAL_FS:
            self.refuse(f"{display_text(path)} is on a {fstype or 'unknown'} filesystem")
            return st
        if len(self.idents) >= self.MAX_FOLDERS or not self.tree.add(path):
            self.refuse(self.tree.failed or f"more than {self.MAX_FOLDERS} folders")
            return st
        # stat again after the watch: a change between the two is an event or a new inode
        after = _stat(path)
        ident = (st.st_dev, st.st_ino)
        if after is None or (after.st_dev, after.st_ino) != ident:
            self.refuse(f"{display_text(path)} was replaced while walked")
            return after
        self.idents[path] = ident
        if is_root:
            self.checked.append(path)
        return after

    def link(self, path: str, real: str) -> None:
        """Subfolder `path` is a symlink to `real` (or may have been swapped: stale listing)."""
        self.links.append((path, real))
        self.checked.append(path)

    def file(self, path: str) -> os.stat_result | None:
        """`_stat(path)` of a marker or `file` in a watched folder."""
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return None   # absent: its creation is an event in the watched folder
        if stat.S_ISLNK(st.st_mode):
            st = _stat(path)
            self.files[path] = _file_sig(st)
        elif st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self.files[path] = _file_sig(st)
        return st

    def fresh(self) -> bool:
        """Nothing the walk's rows depend on has changed since it was watched."""
        if self.tree.changed() or fswatch.mount_table() != self.table:
            return False
        for path in self.checked:
            st = _stat(path)
            if st is None or (st.st_dev, st.st_ino) != self.idents.get(path):
                return False
        if any(_realpath(path) != real for path, real in self.links):
            return False
        return all(_file_sig(_stat(path)) == sig for path, sig in self.files.items())

    def close(self) -> None:
        self.tree.close()


@dataclass(frozen=True)
class _Cached:
    rows: tuple[_Row, ...]   # never handed out: callers get copies of the row dicts
    bare: frozenset[str]
    tracker: _Tracker


class WalkCache:
    """The rows of recent walks (per root paths, policy, level, file and marker), each
    reused while its _Tracker says nothing changed; shared by all connections of an agent.
    Sizes are never cached here: they are added to a copy of the rows on every call."""

    MAX = 16   # walks kept (one inotify descriptor each)

    def __init__(self, ctx: object = None) -> None:
        self.enabled = fswatch.available()
        self.hits = 0          # calls answered from a kept walk (tests, diagnostics)
        self.refused: str | None = None   # why the last walk was not kept
        self._entries: OrderedDict[tuple, _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> _Cached | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.tracker.fresh():
            with self._lock:
                self.hits += 1
                if key in self._entries:
                    self._entries.move_to_end(key)
            return entry
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
        entry.tracker.close()
        return None

    def put(self, key: tuple, tracker: _Tracker, rows: list[_Row], bare: set[str]) -> bool:
        """Keep a walk's rows (which the caller must not change from now on); False if its
        tracker could not watch it (then it is closed)."""
        self.refused = tracker.refused
        if tracker.refused is not None:
            tracker.close()
            return False
        dropped: list[_Cached] = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                dropped.append(old)
            self._entries[key] = _Cached(tuple(rows), frozenset(bare), tracker)
            while len(self._entries) > self.MAX:
                dropped.append(self._entries.popitem(last=False)[1])
        for entry in dropped:
            entry.tracker.close()
        return True

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), OrderedDict()
        for entry in entries:
            entry.tracker.close()


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
            row["bytes_error"] = display_text(f"not sized: {reason}")
            continue
        # the real path just checked (the sizer would resolve `real` again, racing a swap)
        measured = sizer.size(resolved, refresh=refresh)
        row["bytes"] = measured["bytes"]
        row["bytes_measured"] = measured["measured"]
        row["bytes_state"] = measured["state"]
        if "error" in measured:
            row["bytes_error"] = display_text(measured["error"])


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    policy = ctx.policy or default_policy()
    # check every path first: one refused path fails the op before anything is walked
    checked = [(check_path(policy, raw, "persistent"), expand_path(raw)) for raw in args["paths"]]
    roots = tuple((str(resolved), shown.as_posix()) for resolved, shown in checked)
    key = (policy, roots, args["level"], args["file"], args["marker"])   # all the walk's rows depend on
    walks: WalkCache = ctx.shared("persistent_walks", WalkCache)
    cached = walks.get(key)
    if cached is not None:
        rows, bare, mode = [(dict(r[0]), *r[1:]) for r in cached.rows], cached.bare, "inotify"
    else:
        rows, bare, mode = _walk(ctx, policy, roots, args, walks, key)
    _add_sizes(ctx, policy, rows, args["file"], args["sizes"], args["refresh"], bare)
    return {"rows": [row[0] for row in rows], "watch": mode}


def _walk(ctx: AgentContext, policy: PathPolicy, roots: tuple[tuple[str, str], ...], args: dict[str, Any],
          walks: "WalkCache", key: tuple) -> tuple[list[_Row], set[str], str]:
    """A fresh walk; its rows are kept (WalkCache) when every folder of it could be watched."""
    tracker = _Tracker() if walks.enabled else None
    walk = _Walk(policy, args["level"], args["file"], args["marker"], ctx.shared("listings", DirListings), tracker)
    try:
        for resolved, shown in roots:
            # a root the marker rule accepted only for walking is not authorised by itself
            walk.root = resolved
            if tracker is not None:
                tracker.root(resolved)
            walk.walk(walk.root, shown, args["level"], authorised=False)
    except BaseException:
        if tracker is not None:
            tracker.close()
        raise
    for row in walk.rows:
        _sendable(row[0])
    if tracker is None:
        return walk.rows, walk.bare, "stat"
    stored = walks.put(key, tracker, walk.rows, walk.bare)
    rows = [(dict(r[0]), *r[1:]) for r in walk.rows] if stored else walk.rows
    return rows, walk.bare, "inotify" if stored else "stat"


def _sendable(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its texts (path, error) UTF-8-encodable: names come from the disk."""
    for name, value in row.items():
        if isinstance(value, str):
            row[name] = display_text(value)
    return row
