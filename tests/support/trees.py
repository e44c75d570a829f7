"""Directory trees for the clear and persistent tests: writing files, listing and sizing a tree."""

from __future__ import annotations

import os
from pathlib import Path

HS = ".HASHSERVER_PREFIX"  # the hashserver's marker file in a buffer directory


def put_file(path: Path, data: bytes = b"x") -> None:
    """Write `data` to `path`, making its parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tree(path: Path) -> set[str]:
    """Every file and directory below `path`, relative to it."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), path))
    return out


def du(path: Path) -> int:
    """The bytes of the files below `path` (symlinks counted as themselves)."""
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs)
