"""`inspect`: one server state file, like `rhl-inspect KEY --with-mtime`.

Args (protocol.schema OPS["inspect"]): `key` (already checked against the key rule) and
`with_mtime`, which is accepted for symmetry with the helper but changes nothing: the
mtime is always returned, since it costs nothing and a client needs it to tell two
versions of a file apart.

Returns `{"key", "data": <the JSON object, in file order>, "mtime": <float seconds>}`.
A value msgpack cannot carry (an integer beyond 64 bits, a lone-surrogate string, nesting
deeper than 32 levels; protocol.wiresafe) is sent as text instead, and the answer then
has `"unsendable": ["<where>: <what was replaced>", ...]`: inspect is how one looks at a
broken file, so it shows the file rather than failing.
A missing file is NOT_FOUND (`no state file for '<key>'`, the helper's wording); a
malformed, non-object or unreadable file is OP_FAILED with the helper's message (without
its `rhl-inspect: ` program prefix).
"""

from __future__ import annotations

import os
from typing import Any

from ...protocol import ErrorCode, ProtocolError
from ...protocol.wiresafe import make_sendable
from .. import statefiles
from ..context import AgentContext

_ATTEMPTS = 5  # re-reads when the file is replaced while we read it


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    key = args["key"]
    path = ctx.server_dir / f"{key}.json"
    for _ in range(_ATTEMPTS):
        # stat before and after the read: data and mtime must describe the same version
        # of the file (the launcher and rhl-stop replace it atomically at any moment).
        before = _stat(path)
        try:
            data = statefiles.read_state(path)
        except statefiles.StateFileError as exc:
            raise ProtocolError(ErrorCode.OP_FAILED, str(exc)) from None
        after = _stat(path)
        if data is None or after is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no state file for {key!r}")
        if before == after:
            break
    # (else: the file keeps changing under us; the last complete read is still a valid answer)
    return _answer(key, data, after[3])


def _answer(key: str, data: dict[str, Any], mtime: float) -> dict[str, Any]:
    sendable, notes = make_sendable(data)
    answer = {"key": key, "data": sendable, "mtime": mtime}
    if notes:
        answer["unsendable"] = notes
    return answer


def _stat(path: os.PathLike) -> tuple[int, int, int, float] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mtime)
