"""Conditional replies: an answer the client already holds is not sent again (like ETag).

Wire (only between a client and an agent whose `hello` lists the ops under "conditional"):

* request: `{"v", "ops", "held": [tag | nil, ...]}`, one entry per op. A tag says "I hold
  the value you sent me with this tag for this op and arguments"; nil says "I hold nothing,
  but tag your answer". An agent that did not advertise the feature never gets "held"
  (its decode_request refuses unknown fields), so old agents see old requests.
* result of such an op: `{"ok": true, "value": ..., "tag": t}` (a new value, remembered by
  the agent under tag t), or `{"ok": true, "same": t}` when the value the op computed now
  is exactly the one the agent sent on this connection with tag t, the tag the client
  named. Errors are plain error results and are never remembered.

A "slot" is an op with its arguments; tags and remembered values are per connection and
per slot (a reconnect starts empty on both sides), so an answer can never come from
another agent's or another connection's state. Tags are opaque to the client.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import ErrorCode, ProtocolError

# Read-only ops whose answers can be big and repeat unchanged between polls: the rows of
# ps and persistent (hundreds of KB for 1,000 services), inspect's state and logs' text.
# Not hello, health or wait: small answers (and health's probes, wait's token, change on
# purpose); never a mutating op (stop, rm, clear, start): their answers report an action.
CONDITIONAL_OPS = frozenset({"ps", "persistent", "inspect", "logs"})
MAX_TAG_LEN = 32          # the agent's tags are short counters; anything longer is not ours
HELD_FIELD = "held"       # the request field
HELLO_FIELD = "conditional"  # hello's list of the ops answered conditionally


def check_held(held: Any, n_ops: int) -> list[str | None]:
    """The request's `held` list, checked strictly; ProtocolError(MALFORMED) otherwise."""
    if not isinstance(held, list):
        raise ProtocolError(ErrorCode.MALFORMED, "request field 'held' must be a list")
    if len(held) != n_ops:
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"request field 'held' has {len(held)} entries for {n_ops} ops")
    for index, tag in enumerate(held):
        if tag is None:
            continue
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_LEN:
            raise ProtocolError(ErrorCode.MALFORMED, f"request field 'held'[{index}] must be nil or a "
                                f"tag of 1 to {MAX_TAG_LEN} characters")
    return held


def slot_key(op: str, args: dict[str, Any]) -> bytes | None:
    """The canonical name of (op, arguments): equal for equal arguments whatever their
    order; msgpack keeps True, 1 and 1.0 apart (Python's == would not). None when the
    arguments cannot be packed (such a request fails anyway)."""
    try:
        return msgpack.packb([op, sorted(args.items())], use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None


def advertised(hello: Any) -> frozenset[str]:
    """The ops an agent answers conditionally, from its hello value (empty: no feature)."""
    ops = hello.get(HELLO_FIELD) if isinstance(hello, dict) else None
    if not isinstance(ops, list):
        return frozenset()
    return frozenset(op for op in ops if isinstance(op, str)) & CONDITIONAL_OPS
