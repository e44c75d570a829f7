"""The server-side path policy: the decisions of rhl-guard, enforced by the agent itself.

The agent clears (as `rhl-clear` would) and walks persistent directories without going
through `rhl-guard` (ssh_guard/guard.py), so it applies the guard's rules itself.
The policy is configured on the server (`parse_policy`), never chosen by a client.

Modes, as the guard's flags:

=============  ==========================  ============================================
spec           guard flag                  rule after the always-on heuristics
=============  ==========================  ============================================
seamless       --clear-policy seamless     a `seamless.db` or `.HASHSERVER_PREFIX`
                                           regular file directly in the resolved dir
marker:NAME    --clear-policy marker:NAME  a regular file NAME directly in the dir
permissive     --permissive-paths          heuristics only
data-roots:F   --data-roots F              resolved path equals or lies under a root
=============  ==========================  ============================================

Always-on heuristics (every mode, every kind), with the guard's messages:
absolute after `~` expansion (the agent's = the server user's home); not `$HOME` or an
ancestor of it; no dot-prefixed component in the expanded or the resolved path (so no
`..`); not one of the system roots. One deliberate addition: the *unresolved* path must
not be a system root either. rhl-clear/rhl-ps-persistent check that themselves
(`validate_clearable_path`), and the guard relies on it: with a merged /usr, `/bin`
resolves to `/usr/bin`, which the guard lets through and the helper then refuses. The
agent's `clear` runs no helper (it opens the *resolved* path without following symlinks
and deletes through descriptors, see ops/clear.py), so no helper check runs after this
one, and the agent makes it. Everything the helper's `validate_clearable_path` refuses
(relative, `..`, raw or resolved system root) is thus refused here. A path whose `~user`
cannot be expanded, or whose resolution hits a symlink loop, is refused (the guard dies
with a traceback on both: a refusal too).

Kinds:

* ``clear`` — exactly the guard's rule for `rhl-clear` and `rhl-ps-persistent` paths.
* ``workdir`` — the guard's rule for `rhl-launch-service --workdir`: the heuristics, and
  under data-roots inside a root; no marker is asked for (a first launch creates it).
* ``persistent`` — the guard's rule, except in marker mode, where the guard makes
  seamless-config's `ps --cluster` fail outright (README, Deliberate differences #11): the
  bufferdir *root* holds no marker, nor does a project directory that does not exist yet.
  So for ``persistent`` in marker mode:

  - a path that does not exist is accepted: its row says `absent` and carries nothing
    but the path the client sent;
  - an existing *directory* without a marker is accepted **for walking only**: the
    persistent op reports (and sizes) a directory only when it, or a directory above it
    within the walk, holds a policy marker (`PathPolicy.authorises`), or, asked with
    `file` and a marker (a cleared database), when it is empty, which reveals nothing.
    Otherwise a marker-less directory gets no row, just as `rhl-ps-persistent --marker M` gives no row to a
    directory without M. Why "or above it": a directory the guard accepts is walked by
    rhl-ps-persistent without checking its subdirectories, so walking from the root must
    give the same rows for an authorised subtree as asking for that subtree directly. The
    client learns only the rows of self-identifying data directories (and `absent`).
  - an existing non-directory without a marker is refused, as by the guard.

  Heuristics and the data-roots rule apply to ``persistent`` unchanged.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Callable, Literal

from ..protocol import ErrorCode, ProtocolError
from ..rhl import (SEAMLESS_MARKERS, SYSTEM_ROOTS, heuristic_refusal, is_relative_to, marker_refusal,
                   system_root_refusal, unresolvable_refusal)
from .paths import join

Path = pathlib.Path
Kind = Literal["clear", "persistent", "workdir"]

DEFAULT_SPEC = "seamless"


@dataclass(frozen=True)
class PathPolicy:
    """One of the guard's path policies. `roots` are resolved; `marker_names` are plain names."""

    mode: str
    roots: tuple[Path, ...] = field(default=())
    marker_names: tuple[str, ...] = field(default=())

    def describe(self) -> dict:
        """What the hello op reports (the client may show it; it never chooses it)."""
        return {
            "mode": self.mode,
            "markers": list(self.marker_names),
            "roots": [root.as_posix() for root in self.roots],
        }

    def holds_marker(self, directory: str | Path, is_file: Callable[[str], bool] | None = None) -> bool:
        """True if a marker is a regular file (symlinks followed, like the guard) in `directory`.
        `is_file` lets a caller that checks the same files anyway share its stat calls."""
        check = is_file or _is_file
        return any(check(join(str(directory), name)) for name in self.marker_names)

    def authorises(self, directory: str | Path, is_file: Callable[[str], bool] | None = None) -> bool:
        """May the persistent op report `directory` on its own account (see module doc)?"""
        return self.mode != "marker" or self.holds_marker(directory, is_file)


def _is_file(path: str) -> bool:
    try:
        return os.path.isfile(path)
    except (OSError, ValueError):
        return False


def _simple_filename(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _resolve(path: Path) -> Path:
    """Non-strict resolve; an OSError leaves the path as it is (as the guard does)."""
    try:
        return path.resolve(strict=False)
    except OSError:
        return path


def _read_data_roots(path: str) -> tuple[Path, ...]:
    """The guard's `_read_data_roots`, same messages."""
    roots_path = Path(path).expanduser()
    try:
        lines = roots_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"could not read --data-roots file {path!r}: {exc}") from exc
    roots: list[Path] = []
    for lineno, line in enumerate(lines, start=1):
        raw = line.strip()
        if not raw or raw.startswith("#"):
            continue
        root = Path(raw).expanduser()
        if not root.is_absolute():
            raise ValueError(f"--data-roots entry on line {lineno} is not absolute after ~ expansion: {raw!r}")
        roots.append(_resolve(root))
    if not roots:
        raise ValueError("--data-roots file does not contain any usable roots")
    return tuple(roots)


def parse_policy(spec: str) -> PathPolicy:
    """A policy from the agent's config string; ValueError with guard-like text if invalid.

    "seamless" | "marker:NAME" | "permissive" | "data-roots:/path/to/file".
    """
    if not isinstance(spec, str):
        raise ValueError("path policy must be a string")
    spec = spec.strip()
    if spec == "seamless":
        return PathPolicy("marker", marker_names=SEAMLESS_MARKERS)
    if spec == "permissive":
        return PathPolicy("permissive")
    if spec.startswith("marker:"):
        marker = spec.split(":", 1)[1]
        if not _simple_filename(marker):
            raise ValueError("--clear-policy marker:NAME requires a simple marker filename")
        return PathPolicy("marker", marker_names=(marker,))
    if spec.startswith("data-roots:"):
        file = spec.split(":", 1)[1]
        if not file:
            raise ValueError("--data-roots requires a path")
        return PathPolicy("data_roots", roots=_read_data_roots(file))
    raise ValueError(
        f"path policy must be 'seamless', 'marker:NAME', 'permissive' or 'data-roots:PATH', not {spec!r}"
    )


def default_policy() -> PathPolicy:
    return parse_policy(DEFAULT_SPEC)


def expand_path(path: str) -> Path:
    """`Path(path).expanduser()` as the guard and helpers do; POLICY_REFUSED if `~user` is unknown."""
    try:
        return Path(path).expanduser()
    except (RuntimeError, KeyError, ValueError) as exc:
        raise _refused(f"could not expand ~ in path: {path}") from exc


def _refused(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.POLICY_REFUSED, message)


def _heuristics(path: Path) -> Path:
    """The guard's always-on checks, in its order, with its messages; the resolved path."""
    if not path.is_absolute():
        raise _refused(f"path must be absolute after ~ expansion: {path}")
    try:
        resolved = _resolve(path)
    except RuntimeError:  # symlink loop: the guard dies on it, i.e. refuses
        raise _refused(unresolvable_refusal(path)) from None
    except ValueError:  # e.g. an embedded NUL byte
        raise _refused(f"could not resolve path: {path!r}") from None
    why = heuristic_refusal(path, resolved, _resolve(Path.home()))
    if why is not None:
        raise _refused(why)
    return resolved


def _helper_checks(path: Path) -> None:
    """What `validate_clearable_path` adds to the guard: the raw path is no system root either.

    Checked after the guard's rules so that, wherever the guard refuses, the message is
    the guard's."""
    if path.as_posix() in SYSTEM_ROOTS:
        raise _refused(system_root_refusal(path))


def check_path(policy: PathPolicy | None, path: str, kind: Kind) -> Path:
    """The resolved path if `policy` lets the agent use `path` for `kind`, else POLICY_REFUSED."""
    if kind not in ("clear", "persistent", "workdir"):
        raise ValueError(f"unknown path kind {kind!r}")
    policy = policy or default_policy()
    expanded = expand_path(path)
    resolved = _heuristics(expanded)
    if policy.mode == "data_roots":
        if not any(resolved == root or is_relative_to(resolved, root) for root in policy.roots):
            raise _refused(f"path is outside configured --data-roots: {expanded}")
    elif policy.mode == "marker":
        if kind == "workdir":
            pass  # the guard checks a launch's --workdir with the heuristics only
        elif not (kind == "persistent" and _walk_only(resolved)) and not policy.holds_marker(resolved):
            raise _refused(marker_refusal(policy.marker_names, expanded))
    elif policy.mode != "permissive":
        raise ValueError(f"unknown policy mode {policy.mode!r}")
    _helper_checks(expanded)
    return resolved


def _walk_only(resolved: Path) -> bool:
    """A persistent path the marker rule lets through without a marker: absent, or a directory."""
    try:
        return not resolved.exists() or resolved.is_dir()
    except OSError:
        return False


def size_refusal(policy: PathPolicy | None, resolved: str, authorised_in: tuple[str, ...] = ()) -> str | None:
    """Why the persistent op may not report the size of the directory whose real path is
    `resolved` (symlinks resolved), or None if it may.

    The walk follows symlinked subdirectories as rhl-ps-persistent does, so a row may stand
    for a tree the client could not ask about directly (a link to /usr/share or $HOME);
    its rows are the helper's, but sizing it means a background walk of that tree and
    telling its size. The rules are those of `check_path(policy, resolved, "persistent")`
    (the always-on heuristics; under data-roots, inside a root) and, under a marker
    policy, the directory must lie inside one of `authorised_in`: the real paths of the
    marker-holding directories the walk passed on its way to it. The message names no
    path: the row shows the walked path, and the link's target is none of the client's
    business."""
    policy = policy or default_policy()
    try:
        check_path(policy, resolved, "persistent")
    except ProtocolError as exc:
        suffix = ": " + resolved
        return exc.message[:-len(suffix)] if exc.message.endswith(suffix) else exc.message
    if policy.mode == "marker":
        real = Path(resolved)
        if not any(is_relative_to(real, Path(auth)) for auth in authorised_in):
            return f"not inside a directory holding a marker file ({', '.join(policy.marker_names)})"
    return None
