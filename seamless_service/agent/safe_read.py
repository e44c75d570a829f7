"""Opening files of the launcher state folder so that an odd one cannot stall or swell the agent.

Everything the agent reads from `server/` and `client/` (state files, logs) goes through
`open_regular` or `read_regular`. Only a *regular* file is opened for reading:

* a FIFO named `x.json` or `x.log` would block `open()` until a writer appears (forever),
  holding the op's thread and its connection, which also keeps the agent from its idle
  exit. It is refused before it is opened, and opened with O_NONBLOCK in case it takes
  the name between the check and the open;
* a device (a `x.json` symlink to `/dev/zero`) never ends and reports size 0; opening a
  device can itself act (a tty, a tape), so it is refused before it is opened too;
* a directory gives the same `Is a directory` error Python's `open()` gives (the helpers'
  wording, which the agent's messages match).

Symlinks are followed, as `rhl-ps`, `rhl-inspect` and `rhl-logs` follow them: the folder
belongs to the agent's own user, and a link to a regular file reads nothing that user
could not read; what is read is bounded (`read_regular`'s limit; `logs` reads by range).
The fstat of the open descriptor, not the path, decides what is read.
"""

from __future__ import annotations

import errno
import os
import stat

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """The path names something other than a regular file (str: "not a regular file (a FIFO)")."""


class FileTooLarge(Exception):
    """A regular file that holds more than the reader's limit."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"{size} bytes, more than the {limit} allowed")
        self.size = size
        self.limit = limit


def check_regular(st: os.stat_result, path: str | os.PathLike) -> None:
    """Raise unless `st` describes a regular file: IsADirectoryError for a directory (the
    error Python's open() raises, so messages stay the helpers'), else NotRegularFile."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    kind = next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")
    raise NotRegularFile(f"not a regular file ({kind})")


def open_regular(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """(read-only fd, its fstat) of the regular file at `path`; the caller closes the fd.

    FileNotFoundError if it does not exist; NotRegularFile / IsADirectoryError (see
    check_regular) or another OSError if it cannot be used."""
    check_regular(os.stat(path), path)  # refuse FIFOs and devices without opening them
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        check_regular(st, path)  # swapped between the stat and the open
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The content of the regular file at `path`, at most `limit` bytes: FileTooLarge if it
    holds more (also when it grows while read). Errors as open_regular."""
    fd, st = open_regular(path)
    try:
        if st.st_size > limit:
            raise FileTooLarge(st.st_size, limit)
        data = read_upto(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileTooLarge(len(data), limit)
    return data


def read_upto(fd: int, count: int) -> bytes:
    """Up to `count` bytes from `fd`'s position, fewer only at end of file."""
    chunks = []
    while count > 0:
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)
