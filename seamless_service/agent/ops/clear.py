"""`clear`: empty a data directory through the installed `rhl-clear`, with four fixes.

The path is checked by the agent's path policy (kind "clear", exactly rhl-guard's
rule), must exist (NOT_FOUND) and be a directory (BAD_ARGS). The *resolved* path is
what `rhl-clear` receives, so a symlink swapped after the check cannot redirect it.

Fixes of anchor §6, while the deletion itself stays rhl-clear's:

* #23 — a running service is not cleared from under its feet: CONFLICT if the service
  `key` (when given) is running or starting with a live pid, or if any running/starting
  live service's workdir is this directory or lies inside it (a project-level clear
  wipes all its stages). `force=true` skips the check.
* #21 — rhl-clear deletes top-level dot files, markers included, after which the
  directory no longer passes the marker policy. Before the helper runs, the sentinel
  markers (`.HASHSERVER_PREFIX` and the policy's marker names) are renamed into a fresh
  dot directory inside the same directory (rhl-clear skips dot directories, so it
  neither removes nor counts them; a rename keeps content, inode and mtime) and renamed
  back afterwards, whatever the helper did.
  `seamless.db` is **not** preserved: for a database directory the marker *is* the data
  being cleared. Consequence: a cleared database directory has no marker until the
  database starts again and recreates `seamless.db`, so until then a second `clear` of it
  is refused. `persistent` still lists it (`empty`, 0 B: an empty directory asked about
  with `file` and a marker keeps its row, see ops/persistent.py).
  If the agent dies between the two renames, the markers wait in
  `.seamless-service-keep-*`; the next `clear` of that directory puts them back first —
  if the policy still lets it in: under a marker policy a directory whose only marker is
  stranded there is refused, and the marker must be moved back by hand.
* Nested directories (found here, not in anchor §6): rhl-clear rmdir()s a removed
  subdirectory twice, so any top-level child that holds a subdirectory (a STAGE-x dir
  with its prefix dirs) aborts with ENOENT after its *first* subdirectory, leaving the
  rest. The op therefore first runs rhl-clear on each nested directory that holds
  directories, deepest first (`nested_targets`), then on the directory itself: every
  call then meets only children without removable subdirectories. (One helper run per
  such directory: a project with 5 stages costs 6 runs; more than MAX_NESTED_CLEARS is
  refused up front.)
* The count (found here too): rhl-clear counts the top-level entries it removed
  entirely, so after the bottom-up runs (or whenever a top-level directory keeps a dot
  directory) it said `removed 0 item(s)` while it had deleted files further down. The op
  counts what rhl-clear may remove (files, symlinks and directories at every depth,
  dot directories and what is in them excepted, as rhl-clear skips them) before and
  after, and reports the difference: `removed`, and the same number in the
  `removed N item(s) from PATH` line of `stdout` (rhl-clear's own count of its final
  run is `helper_removed`).
* #22 — rhl-clear exits 1 with "Directory not empty" when a dot directory sits two or
  more levels deep, although all it may remove is gone. Failures whose every stderr
  line is such an error, for a directory that now holds nothing but (nested) dot
  directories, count as success (`exit_status` 0; the final run's own code is
  `helper_exit_status`; stderr is passed on unchanged). Thanks to the bottom-up runs,
  files beside such a directory are removed too.

Afterwards the agent's cached listings and sizes of the cleared directory (and below)
are dropped and the directory re-measured, so the next `persistent` says `empty`, 0 B,
`fresh`; directories above it are re-walked at their next check.

The value: {path, removed, helper_removed, exit_status, helper_exit_status, ok, stdout,
stderr, preserved}. A helper failure is a value (ok false, exit_status != 0) rather than an op
error, so a client can print what rhl-clear printed (stdout of the final run; stderr of
all runs).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from ...protocol import ErrorCode, ProtocolError
from ...protocol.wiresafe import display_text
from .. import statefiles
from ..context import AgentContext
from ..helpers import run_helper
from ..listing import DirListings
from ..policy import PathPolicy, check_path, default_policy
from ..sizer import Sizer

HASHSERVER_MARKER = ".HASHSERVER_PREFIX"
DATA_MARKERS = frozenset({"seamless.db"})  # markers that are the data itself: cleared
KEEP_PREFIX = ".seamless-service-keep-"
LIVE_STATUSES = ("running", "starting")
CLEAR_TIMEOUT = 3600.0  # a million-file buffer directory takes a while to delete
MAX_NESTED_CLEARS = 2000  # one helper run (~50 ms) per nested directory that holds directories

_REMOVED_RE = re.compile(r"^removed (\d+) item\(s\) from ", re.MULTILINE)
# rhl-clear prints "rhl-clear: could not remove <child>: [Errno 39] Directory not empty: '<p>'"
_NOT_EMPTY_RE = re.compile(rf"^rhl-clear: could not remove (.+): \[Errno {errno.ENOTEMPTY}\] ")


def preserved_markers(policy: PathPolicy) -> list[str]:
    """Sentinel names kept across a clear: the hashserver's plus the policy's, minus data files."""
    names = [HASHSERVER_MARKER, *policy.marker_names]
    return [n for n in dict.fromkeys(names) if n not in DATA_MARKERS]


# -- #23: running services ---------------------------------------------------------------

def _is_live(row: dict[str, Any]) -> bool:
    return row.get("status") in LIVE_STATUSES and row.get("live") is True


def _workdir_inside(workdir: object, directory: Path) -> bool:
    if not isinstance(workdir, str) or not workdir:
        return False
    try:
        resolved = Path(workdir).expanduser().resolve(strict=False)
    except (OSError, RuntimeError, ValueError):
        return False
    return resolved == directory or directory in resolved.parents


def _check_not_running(ctx: AgentContext, directory: Path, key: str | None) -> None:
    if key is not None:
        row = statefiles.server_row(ctx.server_dir / f"{key}.json")
        if _is_live(row):
            raise ProtocolError(ErrorCode.CONFLICT, f"service {key} is running; stop it first")
    for path in statefiles.list_state_files(ctx.server_dir):
        row = statefiles.server_row(path)
        if _is_live(row) and _workdir_inside(row.get("workdir"), directory):
            raise ProtocolError(
                ErrorCode.CONFLICT,
                f"service {row['key']} is running in {row.get('workdir')}; stop it first",
            )


# -- #21: markers --------------------------------------------------------------------------

def _recover_leftovers(directory: Path) -> None:
    """Put back markers stranded by an agent that died mid-clear."""
    try:
        leftovers = [e.path for e in os.scandir(directory)
                     if e.name.startswith(KEEP_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for keep in leftovers:
        try:
            _restore(Path(keep), directory, os.listdir(keep))
        except OSError:
            continue  # not one of ours after all (holds a directory?): leave it alone


def _is_non_dir(path: Path) -> bool:
    """A marker to keep: a file or a symlink (moved as the link itself), never a directory."""
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _set_aside(directory: Path, names: list[str]) -> tuple[Path | None, list[str]]:
    """Rename the markers into a fresh dot directory (rhl-clear then neither sees nor counts them)."""
    present = [n for n in names if _is_non_dir(directory / n)]
    if not present:
        return None, []
    try:
        keep = Path(tempfile.mkdtemp(prefix=KEEP_PREFIX, dir=directory))
    except OSError as exc:
        raise ProtocolError(ErrorCode.OP_FAILED, f"could not create a folder to keep markers in {directory}: {exc}") from None
    kept = []
    try:
        for name in present:
            os.rename(directory / name, keep / name)
            kept.append(name)
    except OSError as exc:
        _restore(keep, directory, kept)
        raise ProtocolError(ErrorCode.OP_FAILED, f"could not set marker {name} aside: {exc}") from None
    return keep, kept


def _restore(keep: Path, directory: Path, names: list[str]) -> None:
    """Put kept markers back (a file of that name created meanwhile wins); remove `keep`."""
    for name in names:
        if os.path.lexists(directory / name):
            os.unlink(keep / name)
        else:
            os.rename(keep / name, directory / name)
    os.rmdir(keep)


# -- #22 and the nested-directory abort: clear bottom-up, read ENOTEMPTY right ------------

def nested_targets(directory: Path, limit: int = MAX_NESTED_CLEARS) -> list[Path]:
    """Directories below `directory` that rhl-clear must empty first, deepest first.

    rhl-clear aborts a child whose subdirectory it has just removed (it rmdir()s it twice:
    ENOENT), so a call works only where no child holds a removable subdirectory. Emptying
    every (non-dot, real) directory that holds a (non-dot, real) subdirectory, deepest
    first, satisfies that for each call. Dot directories and symlinks are never entered,
    exactly as rhl-clear never enters them."""
    found: list[tuple[int, Path]] = []
    stack = [(directory, 0)]
    while stack:
        current, depth = stack.pop()
        try:
            with os.scandir(current) as entries:
                subdirs = [Path(e.path) for e in entries
                           if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # rhl-clear will report it
        if depth >= 1 and subdirs:
            found.append((depth, current))
            if len(found) > limit:
                raise ProtocolError(
                    ErrorCode.OP_FAILED,
                    f"more than {limit} nested directories below {directory}; clear it in parts",
                )
        stack.extend((sub, depth + 1) for sub in subdirs)
    found.sort(key=lambda item: -item[0])
    return [path for _, path in found]


def _only_dot_dirs_below(path: Path) -> bool:
    """True if all that remains under `path` are directories ending in dot directories."""
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            return False
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                return False
            if not entry.name.startswith("."):
                stack.append(Path(entry.path))
    return True


def _spurious_failure(stderr: str, directory: Path) -> bool:
    """True if every error line is ENOTEMPTY for a dir below `directory` left with dot dirs only."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        return False
    for line in lines:
        match = _NOT_EMPTY_RE.match(line)
        if match is None:
            return False
        child = Path(match.group(1))
        if directory not in child.parents or not _only_dot_dirs_below(child):
            return False
    return True


def removable_count(directory: Path) -> int:
    """How many entries below `directory` rhl-clear may remove: files, symlinks and
    directories at every depth, except dot directories and their content (rhl-clear
    neither enters nor removes them; the markers set aside sit in one). Symlinks are
    counted, never followed. Unreadable directories count as themselves only."""
    count = 0
    stack = [str(directory)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    if is_dir and entry.name.startswith("."):
                        continue
                    count += 1
                    if is_dir:
                        stack.append(entry.path)
        except OSError:
            continue
    return count


def _clear_nested(ctx: AgentContext, directory: Path) -> tuple[list[str], bool]:
    """Empty the nested directories bottom-up; (their stderr lines, all failures spurious)."""
    errors: list[str] = []
    spurious = True
    for target in nested_targets(directory):
        # walked without following symlinks; refuse one swapped in since (it could lead out)
        if os.path.realpath(target) != str(target):
            errors.append(f"seamless-service: skipped {target}: it is no longer a plain directory")
            spurious = False
            continue
        if not os.path.isdir(target):
            continue  # gone already
        result = run_helper("rhl-clear", [str(target)], helper_dir=ctx.helper_dir, timeout=CLEAR_TIMEOUT)
        if result.returncode != 0:
            errors.extend(line for line in result.stderr.splitlines() if line.strip())
            spurious = spurious and result.returncode == 1 and _spurious_failure(result.stderr, target)
    return errors, spurious


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
    if not args["force"]:
        _check_not_running(ctx, directory, args["key"])

    _recover_leftovers(directory)
    keep, kept = _set_aside(directory, preserved_markers(policy))
    try:
        before = removable_count(directory)
        nested_errors, nested_spurious = _clear_nested(ctx, directory)
        result = run_helper("rhl-clear", [str(directory)], helper_dir=ctx.helper_dir, timeout=CLEAR_TIMEOUT)
        removed = max(before - removable_count(directory), 0)
    finally:
        if keep is not None:
            try:
                _restore(keep, directory, kept)
            except OSError as exc:
                raise ProtocolError(
                    ErrorCode.OP_FAILED,
                    f"cleared, but could not restore markers {kept} from {keep}: {exc}",
                ) from None

    _forget_cached(ctx, directory, quiet=not args["force"])
    match = _REMOVED_RE.search(result.stdout)
    stderr = "".join(line + "\n" for line in nested_errors) + result.stderr
    top_ok = result.returncode == 0 or (
        result.returncode == 1 and match is not None and _spurious_failure(result.stderr, directory))
    exit_status = 0 if top_ok and (not nested_errors or nested_spurious) else (result.returncode or 1)
    stdout = result.stdout
    if match is not None:  # the true count in the helper's own line (what the CLI prints)
        stdout = stdout[:match.start()] + f"removed {removed} item(s) from " + stdout[match.end():]
    return {
        "path": display_text(str(directory)),  # resolved through symlinks: any bytes
        "removed": removed,
        "helper_removed": int(match.group(1)) if match else None,
        "exit_status": exit_status,
        "helper_exit_status": result.returncode,
        "ok": exit_status == 0,
        "stdout": display_text(stdout),
        "stderr": display_text(stderr),
        "preserved": kept,
    }
