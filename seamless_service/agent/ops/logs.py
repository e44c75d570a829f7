"""`logs`: a service's log (`<server dir>/<key>.log`), like `rhl-logs KEY [--tail N]`,
plus offset-based reading for following a log.

Args (protocol.schema OPS["logs"]): `key`, and at most one of
* `tail=N`: the last N lines, split as `bytes.splitlines(keepends=True)` splits them (so
  `\\n`, `\\r\\n` and a lone `\\r` end a line, and an unterminated last line counts);
  N=0 gives nothing. The file is read backwards in growing blocks until N lines are
  found, never whole;
* `offset=K`: the bytes from K on (for following: pass the previous `next_offset`). If K
  is beyond the end of the file, the log was truncated or replaced (a relaunch truncates
  it): reading restarts at 0 and `reset` is true;
* neither: the whole file.
`max_bytes` caps the bytes returned. When a read would exceed it, the answer is cut and
`truncated` is true: offset reads return the first `max_bytes` from K (follow on from
`next_offset`); whole-file and tail reads return the *last* `max_bytes` (which may start
mid-line: a line longer than the cap would otherwise return nothing at all).

Returns `{"key", "data": bytes, "offset": <file position of data[0]>, "next_offset":
<position after data>, "size": <file size when read>, "truncated": bool, "reset": bool}`.

Like rhl-logs it does not consult the state JSON, so logs stay readable after `rm`.
Missing log: NOT_FOUND `no log file for '<key>'`; unreadable or not a regular file (a
FIFO, a link to a device: rhl-logs blocks on or reads those without end): OP_FAILED.
"""

from __future__ import annotations

import os
from typing import Any

from ...protocol import ErrorCode, ProtocolError
from ..context import AgentContext
from ..safe_read import open_regular

TAIL_BLOCK = 64 << 10  # first backwards read; doubled each round


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    key = args["key"]
    tail = args.get("tail")
    offset = args.get("offset")
    max_bytes = int(args.get("max_bytes") or 1 << 20)
    if tail is not None and offset is not None:
        raise ProtocolError(ErrorCode.BAD_ARGS, "logs: give 'tail' or 'offset', not both")
    path = ctx.server_dir / f"{key}.log"
    try:
        # Only a regular file (safe_read): a FIFO named <key>.log would block the open
        # forever, a link to /dev/zero would read as an empty log.
        fd, st = open_regular(path)
    except FileNotFoundError:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no log file for {key!r}") from None
    except OSError as exc:
        raise ProtocolError(ErrorCode.OP_FAILED, f"could not read log of {key!r}: {exc}") from None
    try:
        size = st.st_size
        reset = False
        if tail is not None:
            start, data, truncated = read_tail(fd, size, tail, max_bytes)
        elif offset is not None:
            if offset > size:
                offset, reset = 0, True
            data = read_range(fd, offset, min(size - offset, max_bytes))
            start = offset
            truncated = offset + len(data) < size
        else:
            start = max(0, size - max_bytes)
            data = read_range(fd, start, size - start)
            truncated = start > 0
    except OSError as exc:  # e.g. EISDIR for a directory named <key>.log
        raise ProtocolError(ErrorCode.OP_FAILED, f"could not read log of {key!r}: {exc}") from None
    finally:
        os.close(fd)
    return {
        "key": key,
        "data": data,
        "offset": start,
        "next_offset": start + len(data),
        "size": size,
        "truncated": truncated,
        "reset": reset,
    }


def read_range(fd: int, start: int, length: int) -> bytes:
    """`length` bytes from `start` (fewer if the file shrank meanwhile)."""
    chunks = []
    while length > 0:
        chunk = os.pread(fd, length, start)
        if not chunk:
            break
        chunks.append(chunk)
        start += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def read_tail(fd: int, size: int, lines: int, max_bytes: int,
              block: int = TAIL_BLOCK) -> tuple[int, bytes, bool]:
    """(start, data, truncated): the last `lines` lines of the first `size` bytes of `fd`.

    Equal to `b"".join(whole.splitlines(keepends=True)[-lines:])` whenever that fits in
    `max_bytes`. Why reading backwards is exact: every line boundary inside a suffix of
    the file is a boundary of the whole file too, except that the suffix's first line may
    be cut (including a `\\r\\n` cut between its two bytes, which the suffix sees as an
    empty line `\\n`); so once the suffix holds more than `lines` lines, its last `lines`
    lines are the file's.
    """
    if lines <= 0 or size <= 0:
        return size, b"", False
    pos = size
    buf = b""
    while True:
        step = min(block, pos, max_bytes - len(buf))
        if step > 0:
            pos -= step
            buf = read_range(fd, pos, step) + buf
            block *= 2  # geometric growth: total splitting work stays linear in the bytes read
        parts = buf.splitlines(keepends=True)
        if len(parts) > lines or pos == 0:
            data = b"".join(parts[-lines:])
            return size - len(data), data, False
        if len(buf) >= max_bytes or step <= 0:
            # The cap was reached before enough lines: give the last max_bytes bytes.
            data = buf[-max_bytes:]
            return size - len(data), data, True
