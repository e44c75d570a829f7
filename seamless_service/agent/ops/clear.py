"""`clear`: empty a data directory exactly as `rhl-clear` would, without ever leaving it.

The path is checked by the agent's path policy (kind "clear", exactly rhl-guard's
rule), must exist (NOT_FOUND) and be a directory (BAD_ARGS).

The decision and the deletion concern one directory object (issue 9 item 2)
-------------------------------------------------------------------------------
The policy decides on a path. Another local user who can write the data directory or a
folder above it (a group-shared buffer directory) can swap the checked directory, or
any directory below it, for a symlink to the owner's private folder between the
decision and the deletion. `rhl-clear` follows a symlinked argument, and it walks the
tree by path: each child is looked up by name again after its is-a-directory check. A
path that cannot be re-resolved (`/proc/self/fd/N`, which rhl-clear would keep as it
is) would pin only the top: a writer of the directory could still swap a child between
rhl-clear's check of it and its descent into it. So the agent deletes, itself, through
descriptors only:

* The checked, resolved path is opened one component at a time from `/`, each with
  O_NOFOLLOW | O_DIRECTORY (the parents with O_PATH: search permission suffices, as for
  any lookup). A component that has become a symlink or a non-directory since the check
  is refused (POLICY_REFUSED, "... changed after it was checked ...; nothing was
  cleared"); a vanished one is NOT_FOUND. So the directory opened is the one that sat
  at the checked path, reached without a symlink, at the moment it was opened.
* The policy is decided again on what was opened: under a marker policy a marker must
  be a regular file in the *open* directory (fstatat; a marker symlink is followed, as
  by the guard). The always-on heuristics and the data-roots rule are about the path,
  which the walk has just proved. No owner check: a real directory another user puts at
  an allowed path is one they could have made there anyway, and all the clear may remove
  is what lies inside the directory it opened.
* Everything below is reached relative to an open descriptor only: entries listed with
  scandir(fd), subdirectories opened with openat(O_NOFOLLOW | O_DIRECTORY), entries
  removed with unlinkat / unlinkat(AT_REMOVEDIR); none of these follows a symlink. An
  entry swapped for a symlink after it was listed is removed as the link it now is;
  when the name of a directory just emptied holds something else by then, that is
  reported ("could not remove ...: Not a directory"), not removed.
* The markers' set-aside and restore and the recovery of stranded markers (below) are
  mkdirat / renameat / unlinkat between the open directory and its keep folder, which
  is opened the same way.
* If the directory is moved away after it was opened, the one cleared is still the one
  that was checked, wherever it now is.

What is removed, kept and counted
---------------------------------
Exactly what rhl-clear (ssh_guard/helpers/clear.py) removes and skips: every file,
symlink (the link itself) and other non-directory at every depth, top-level dot files
included; every directory, except dot directories (never entered, never removed, not
counted) and the directories that still hold one afterwards (kept silently, as
rhl-clear means to: its `_only_dot_dirs_remain`). Tests compare the result with the
helper's on trees where the helper has none of its defects. The agent's earlier fixes of
the helper's defects (README, Deliberate differences) hold by construction:

* #23 — a running service is not cleared from under its feet: CONFLICT if the service
  `key` (when given) is running or starting with a live pid, or if any running/starting
  live service's workdir is this directory or lies inside it (a project-level clear
  wipes all its stages). `force=true` skips the check.
* #21 — rhl-clear deletes top-level dot files, markers included, after which the
  directory no longer passes the marker policy. Before the deletion, the sentinel
  markers (`.HASHSERVER_PREFIX` and the policy's marker names) are renamed into a fresh
  dot directory inside the same directory (skipped like any dot directory; a rename
  keeps content, inode and mtime) and renamed back afterwards, whatever happened.
  `seamless.db` is **not** preserved: for a database directory the marker *is* the data
  being cleared. Consequence: a cleared database directory has no marker until the
  database starts again and recreates `seamless.db`, so until then a second `clear` of it
  is refused. `persistent` still lists it (`empty`, 0 B: an empty directory asked about
  with `file` and a marker keeps its row, see ops/persistent.py).
  If the agent dies between the two renames, the markers wait in
  `.seamless-service-keep-*`; the next `clear` of that directory puts them back first —
  if the policy still lets it in: under a marker policy a directory whose only marker is
  stranded there is refused, and the marker must be moved back by hand.
* Nested directories: rhl-clear rmdir()s a removed subdirectory twice, so it abandons a
  child holding subdirectories (a STAGE-x dir with its prefix dirs) after the first one.
  Here each directory is removed once, after it was emptied.
* #22 — rhl-clear exits 1 with "Directory not empty" when a dot directory sits two or
  more levels deep. Here the directories above it simply stay; that is no failure.
* The count: `removed` is every entry removed, at any depth, and the same number is in
  the `removed N item(s) from PATH` line of `stdout` (rhl-clear's line, where rhl-clear
  counted only top-level entries removed entirely: that figure is `helper_removed`).

A removal that fails (permission, busy, read-only, a name that changed under the clear)
is one line `seamless-service: could not remove PATH: [Errno N] reason` on stderr; the
rest is still cleared and `exit_status` is 1. A directory more than MAX_DEPTH levels
down is not entered (one such line).

Afterwards the agent's cached listings and sizes of the cleared directory (and below)
are dropped and the directory re-measured, so the next `persistent` says `empty`, 0 B,
`fresh`; directories above it are re-walked at their next check.

The value: {path, removed, helper_removed, exit_status, helper_exit_status, ok, stdout,
stderr, preserved}. A failure to remove something is a value (ok false, exit_status 1)
rather than an op error, so a client prints stdout and stderr as it did rhl-clear's.
`helper_exit_status` equals `exit_status` (no helper runs; kept for the reply's shape).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...protocol import ErrorCode, ProtocolError
from ...protocol.wiresafe import display_text
from ...rhl import clear_conflict
from .. import statefiles
from ..context import AgentContext
from ..listing import DirListings
from ..paths import join
from ..policy import PathPolicy, check_path, default_policy
from ..sizer import Sizer

HASHSERVER_MARKER = ".HASHSERVER_PREFIX"
DATA_MARKERS = frozenset({"seamless.db"})  # markers that are the data itself: cleared
KEEP_PREFIX = ".seamless-service-keep-"
MAX_DEPTH = 256  # two frames a level: well inside Python's recursion limit
# The target and every directory below it: readable (to list), never through a symlink.
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The parents of the target are only searched: O_PATH needs no read permission (a 0711
# home). Without O_PATH (not Linux) they must be readable.
SEARCH_DIR = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def preserved_markers(policy: PathPolicy) -> list[str]:
    """Sentinel names kept across a clear: the hashserver's plus the policy's, minus data files."""
    names = [HASHSERVER_MARKER, *policy.marker_names]
    return [n for n in dict.fromkeys(names) if n not in DATA_MARKERS]


# -- #23: running services ---------------------------------------------------------------

def _workdir_inside(workdir: object, directory: Path) -> bool:
    if not isinstance(workdir, str) or not workdir:
        return False
    try:
        resolved = Path(workdir).expanduser().resolve(strict=False)
    except (OSError, RuntimeError, ValueError):
        return False
    return resolved == directory or directory in resolved.parents


def _check_not_running(ctx: AgentContext, directory: Path, key: str | None) -> None:
    key_row = statefiles.server_row(ctx.server_dir / f"{key}.json") if key is not None else None
    rows = (statefiles.server_row(path) for path in statefiles.list_state_files(ctx.server_dir))
    conflict = clear_conflict(key, key_row, rows, lambda workdir: _workdir_inside(workdir, directory))
    if conflict is not None:
        raise ProtocolError(ErrorCode.CONFLICT, conflict)


# -- opening the checked directory, and deciding on what was opened ----------------------

def _changed(path: Path, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.POLICY_REFUSED,
                         f"{path} changed after it was checked: {what}; nothing was cleared")


def _walk_error(parent_fd: int, name: str, where: str, path: Path, exc: OSError) -> ProtocolError:
    """The refusal for a component `name` (at `where`) that could not be opened."""
    if exc.errno == errno.ENOENT:
        return ProtocolError(ErrorCode.NOT_FOUND, f"path does not exist: {path}")
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        try:
            is_link = stat.S_ISLNK(os.lstat(name, dir_fd=parent_fd).st_mode)
        except OSError:
            is_link = False
        return _changed(path, f"{where} is now {'a symlink' if is_link else 'not a directory'}")
    return ProtocolError(ErrorCode.OP_FAILED, f"could not open {where}: {exc.strerror}")


def open_directory(path: Path) -> int:
    """A descriptor of the directory at `path` (absolute, symlinks resolved: the policy's
    answer), reached from / one component at a time, none of them through a symlink.

    POLICY_REFUSED if a component is a symlink or not a directory (any more), NOT_FOUND if
    one is gone. The caller closes the descriptor."""
    parts = path.parts[1:]
    if not path.is_absolute() or not parts:
        raise ProtocolError(ErrorCode.POLICY_REFUSED, f"refusing to clear {path}")
    fd = os.open("/", SEARCH_DIR)
    try:
        for index, name in enumerate(parts):
            last = index == len(parts) - 1
            try:
                child = os.open(name, OPEN_DIR if last else SEARCH_DIR, dir_fd=fd)
            except OSError as exc:
                raise _walk_error(fd, name, "/" + "/".join(parts[:index + 1]), path, exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_regular_at(fd: int, name: str) -> bool:
    """A regular file `name` in the open directory `fd` (a symlink followed, as by the guard)."""
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=fd).st_mode)
    except (OSError, ValueError):
        return False


def check_opened(policy: PathPolicy, fd: int, path: Path) -> None:
    """The policy's marker rule, decided again on the open directory itself (its path
    rules hold: `open_directory` reached it at the checked path without a symlink)."""
    if policy.mode == "marker" and not any(_is_regular_at(fd, name) for name in policy.marker_names):
        markers = ", ".join(policy.marker_names)
        raise _changed(path, f"it holds no marker file ({markers}) any more")


# -- #21: markers, set aside inside the open directory ------------------------------------

@dataclass
class _Keep:
    """A keep folder inside the cleared directory, open, and the markers moved into it."""

    fd: int
    name: str
    names: list[str] = field(default_factory=list)


def _lexists_at(fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=fd)
        return True
    except FileNotFoundError:
        return False


def _is_non_dir_at(fd: int, name: str) -> bool:
    """A marker to keep: a file or a symlink (moved as the link itself), never a directory."""
    try:
        return not stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode)
    except OSError:
        return False


def _restore(fd: int, keep: _Keep) -> None:
    """Put kept markers back (a file of that name created meanwhile wins); remove the keep folder."""
    for name in keep.names:
        if _lexists_at(fd, name):
            os.unlink(name, dir_fd=keep.fd)
        else:
            os.rename(name, name, src_dir_fd=keep.fd, dst_dir_fd=fd)
    os.rmdir(keep.name, dir_fd=fd)


def _recover_leftovers(fd: int) -> None:
    """Put back markers stranded by an agent that died mid-clear."""
    try:
        with os.scandir(fd) as entries:
            leftovers = [e.name for e in entries
                         if e.name.startswith(KEEP_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for name in leftovers:
        try:
            keep = _Keep(os.open(name, OPEN_DIR, dir_fd=fd), name)
        except OSError:
            continue
        try:
            keep.names = os.listdir(keep.fd)
            _restore(fd, keep)
        except OSError:
            continue  # not one of ours after all (holds a directory?): leave it alone
        finally:
            os.close(keep.fd)


def _make_keep(fd: int, directory: Path) -> _Keep:
    """A fresh private dot folder in the open directory (mkdtemp's way, relative to fd)."""
    for _ in range(100):
        name = KEEP_PREFIX + secrets.token_hex(4)
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
            return _Keep(os.open(name, OPEN_DIR, dir_fd=fd), name)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ProtocolError(ErrorCode.OP_FAILED,
                                f"could not create a folder to keep markers in {directory}: {exc.strerror}") from None
    raise ProtocolError(ErrorCode.OP_FAILED, f"could not create a folder to keep markers in {directory}")


def _set_aside(fd: int, directory: Path, names: list[str]) -> _Keep | None:
    """Rename the markers into a fresh dot folder (skipped by the deletion, not counted)."""
    present = [n for n in names if _is_non_dir_at(fd, n)]
    if not present:
        return None
    keep = _make_keep(fd, directory)
    try:
        for name in present:
            os.rename(name, name, src_dir_fd=fd, dst_dir_fd=keep.fd)
            keep.names.append(name)
    except OSError as exc:
        try:
            _restore(fd, keep)
        finally:
            os.close(keep.fd)
        raise ProtocolError(ErrorCode.OP_FAILED, f"could not set marker {name} aside: {exc.strerror}") from None
    return keep


def _put_back(fd: int, directory: Path, keep: _Keep) -> None:
    try:
        _restore(fd, keep)
    except OSError as exc:
        raise ProtocolError(
            ErrorCode.OP_FAILED,
            f"cleared, but could not restore markers {keep.names} from {join(str(directory), keep.name)}: "
            f"{exc.strerror}",
        ) from None
    finally:
        os.close(keep.fd)


# -- the deletion: rhl-clear's, through descriptors ----------------------------------------

@dataclass
class _Tally:
    removed: int = 0       # entries removed, at any depth
    top_removed: int = 0   # top-level entries removed entirely (rhl-clear's own count)
    errors: list[str] = field(default_factory=list)

    def failed(self, path: str, exc: OSError) -> None:
        self.errors.append(f"seamless-service: could not remove {path}: [Errno {exc.errno}] {exc.strerror}")


def _is_real_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _empty(fd: int, shown: str, tally: _Tally, depth: int) -> bool:
    """Remove what rhl-clear removes inside the open directory `fd` (shown as `shown`);
    True if nothing is left in it. `depth` 0 is the cleared directory itself."""
    try:
        with os.scandir(fd) as entries:
            listed = [(entry.name, _is_real_dir(entry)) for entry in entries]
    except OSError as exc:
        tally.failed(shown, exc)
        return False
    empty = True
    for name, is_dir in listed:
        if is_dir and name.startswith("."):
            empty = False  # rhl-clear neither enters nor removes dot directories
            continue
        path = join(shown, name)
        gone = _remove_dir(fd, name, path, tally, depth) if is_dir else _unlink(fd, name, path, tally, depth)
        if gone:
            tally.removed += 1
            if depth == 0:
                tally.top_removed += 1
        elif gone is not None:
            empty = False
    return empty


def _unlink(fd: int, name: str, path: str, tally: _Tally, depth: int) -> bool | None:
    """Remove a non-directory (a symlink itself, never its target). True: removed; None:
    gone already; False: still there (said on stderr, or a dot directory now)."""
    try:
        os.unlink(name, dir_fd=fd)
        return True
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.EPERM) and _is_real_dir_at(fd, name):
            # a directory took its place since the listing: treated as one
            return False if name.startswith(".") else _remove_dir(fd, name, path, tally, depth)
        tally.failed(path, exc)
        return False


def _is_real_dir_at(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode)
    except OSError:
        return False


def _remove_dir(fd: int, name: str, path: str, tally: _Tally, depth: int) -> bool | None:
    """Empty the subdirectory `name` of `fd` through its own descriptor, then remove it."""
    if depth + 1 > MAX_DEPTH:  # its level: 1 for an entry of the cleared directory
        tally.errors.append(f"seamless-service: could not remove {path}: more than {MAX_DEPTH} levels down")
        return False
    try:
        sub = os.open(name, OPEN_DIR, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            tally.failed(path, exc)
            return False
        try:  # no directory any more (a symlink took its place): removed as what it is
            os.unlink(name, dir_fd=fd)
            return True
        except OSError as again:
            tally.failed(path, again)
            return False
    try:
        empty = _empty(sub, path, tally, depth + 1)
    finally:
        os.close(sub)
    if not empty:
        return False  # holds a dot directory (rhl-clear keeps it too), or an error was said
    try:
        os.rmdir(name, dir_fd=fd)  # by name: if another directory took it, that one is empty too
        return True
    except FileNotFoundError:
        return None
    except OSError as exc:
        tally.failed(path, exc)  # e.g. ENOTDIR: a symlink took the name; it stays
        return False


def _clear(fd: int, directory: Path, markers: list[str]) -> tuple[_Tally, list[str]]:
    """Empty the open directory, markers kept; the tally and the markers kept."""
    _recover_leftovers(fd)
    keep = _set_aside(fd, directory, markers)
    tally = _Tally()
    try:
        _empty(fd, str(directory), tally, 0)
    finally:
        if keep is not None:
            _put_back(fd, directory, keep)
    return tally, keep.names if keep is not None else []


def _forget_cached(ctx: AgentContext, directory: Path, *, quiet: bool) -> None:
    """Drop the agent's cached listings and sizes of what was cleared, so that the next
    `persistent` says `empty`, 0 B, fresh rather than the old size for a while.
    `quiet`: no service ran there (checked), so nothing writes while it is re-measured."""
    ctx.shared("listings", DirListings).forget_below(str(directory))
    ctx.shared("sizer", Sizer).forget_below(str(directory), quiet=quiet)


# -- the op ------------------------------------------------------------------------------

def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    policy = ctx.policy or default_policy()
    directory = check_path(policy, args["path"], "clear")
    if not directory.exists():
        raise ProtocolError(ErrorCode.NOT_FOUND, f"path does not exist: {directory}")
    if not directory.is_dir():
        raise ProtocolError(ErrorCode.BAD_ARGS, f"not a directory: {directory}")
    fd = open_directory(directory)
    try:
        check_opened(policy, fd, directory)
        if not args["force"]:
            _check_not_running(ctx, directory, args["key"])
        tally, kept = _clear(fd, directory, preserved_markers(policy))
    finally:
        os.close(fd)

    _forget_cached(ctx, directory, quiet=not args["force"])
    exit_status = 1 if tally.errors else 0
    return {
        "path": display_text(str(directory)),  # resolved through symlinks: any bytes
        "removed": tally.removed,
        "helper_removed": tally.top_removed,
        "exit_status": exit_status,
        "helper_exit_status": exit_status,
        "ok": exit_status == 0,
        "stdout": display_text(f"removed {tally.removed} item(s) from {directory}\n"),
        "stderr": display_text("".join(line + "\n" for line in tally.errors)),
        "preserved": kept,
    }
