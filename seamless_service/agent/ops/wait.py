"""`wait`: long-poll until the launcher state changes (for `ps --watch`).

Args (protocol.schema OPS["wait"]): `token` (from a previous `ps` or `wait`; absent means
"I have none yet") and `timeout` in seconds (0 = check once, at most 60).

Returns `{"changed": bool, "token": str}`: `changed` is true at once when the token is
absent or differs from the current one, true as soon as a state file (or a pid's
liveness) changes during the wait, and false when the timeout passes with no change.
The token always describes the state *now*, so a client loops `ps` -> `wait(token)` ->
`ps` ... without missing a change (see agent/watch.py for what the token covers).
"""

from __future__ import annotations

from typing import Any

from ..context import AgentContext
from ..watch import watcher


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    changed, token = watcher(ctx).wait(args.get("token"), float(args.get("timeout") or 0.0))
    return {"changed": changed, "token": token}
