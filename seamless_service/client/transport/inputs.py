"""What a long-lived object's answers depend on, cheap to check again (for the tunnel keeper).

The tunnel keeper (keeper/server.py) runs every command in one process, each with its
caller's environment, cwd and umask. An object it keeps between commands (a transport in
pool.py) may answer a command only if everything it read when it was made is still
what that command would read. Two kinds of input, checked in two ways:

* environment variables, by value: `variant(...)` turns them into a short tag that is part
  of the pool key, so callers that differ (another HOME, another REMOTE_HTTP_LAUNCHER_DIR)
  each get an object of their own, and a caller switching back finds its own still warm;
* files, by stat signature (inode, size, mtime_ns, ctime_ns; or absent): a `FileSnapshot`
  taken when the object read them. `changed()` stats them again, a few microseconds per
  file and no reads, and the pool replaces an object whose `stale()` says so, so an edited
  ~/.ssh/config or agent config.yaml takes effect on the very next command.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, Union

from ...agent.statefiles import Signature, stat_signature

PathLike = Union[str, "os.PathLike[str]"]
FileState = Union[Signature, str, None]  # a signature; None: absent; "error N": cannot stat


def file_state(path: str) -> FileState:
    """The signature of the file at `path` (symlinks followed), None if there is none."""
    try:
        return stat_signature(os.stat(path))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:  # unreadable folder: a state of its own (it may become readable)
        return f"error {exc.errno}"


class FileSnapshot:
    """The states of some files at one moment; `changed()` says whether any differs now.

    A file that did not exist counts too: creating it is a change (a key file that
    appears, a config.yaml written for the first time).
    """

    def __init__(self, paths: Iterable[PathLike] = ()):
        self._states: dict[str, FileState] = {}
        self.add(paths)

    def add(self, paths: Iterable[PathLike]) -> "FileSnapshot":
        for path in paths:
            name = os.path.abspath(os.fspath(path))
            if name not in self._states:
                self._states[name] = file_state(name)
        return self

    @property
    def paths(self) -> list[str]:
        return list(self._states)

    def changed(self) -> bool:
        return any(file_state(path) != state for path, state in self._states.items())


def env_values(names: Iterable[str]) -> tuple[tuple[str, str | None], ...]:
    """(name, value or None) for each variable, from this process's environment (in the
    tunnel keeper: the caller's, for the duration of its command)."""
    return tuple((name, os.environ.get(name)) for name in names)


def variant(values: object) -> str:
    """A short, stable tag for `values` (env values, paths): equal values, equal tags. A
    hash, so `tunnel status` names entries without printing the caller's environment."""
    return hashlib.sha256(repr(values).encode("utf-8", "surrogateescape")).hexdigest()[:10]
