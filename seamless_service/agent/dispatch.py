"""Turn one request (bytes) into one reply (bytes): decode, validate each op, run, encode.

One failing op never fails its neighbours; a bug in an op becomes an `internal` error
result, logged with its traceback on the agent side only.

The reply size (MAX_REPLY_BYTES, which clients also enforce) is budgeted per op: each
result is packed as soon as its op returns and the Python object dropped, so memory holds
one op's result plus the reply so far, never a whole batch of big results. A result that
does not fit becomes that op's own `too_large` error; the results before it are kept.
Once a result did not fit, the budget is spent: the ops after it are not run at all (each
answered `too_large`, "not run"), so a batch cannot make the agent read gigabytes only to
drop them - at most one op's work is wasted.

Conditional replies (protocol/conditional.py): a request with "held" is answered, for
the ops in CONDITIONAL_OPS, through the connection's SentValues (agent/sent.py): a value
equal to the one last sent under the tag the client holds becomes a tiny "same" result.
What the memory keeps changes only once a piece is in the reply (a too_large replacement
or a failed op forgets the slot), so it always names what the client received.
"""

from __future__ import annotations

import logging
from typing import Any

from ..protocol import ErrorCode, ProtocolError, validate_args
from ..protocol.codec import (
    MAX_REPLY_BYTES,
    decode_request,
    encode_packed_reply,
    encode_reply,
    error_result,
    ok_result,
    pack_result,
    packed_reply_overhead,
    parse_op_entry,
)
from ..protocol.conditional import CONDITIONAL_OPS, slot_key
from ..protocol.wiresafe import make_sendable
from .context import AgentContext
from .ops import handler
from .sent import Pending, SentValues

log = logging.getLogger("seamless_service.agent")

# Room kept free for each op not yet answered. Any result up to this size (every error,
# hello, and the report of a stop/rm/clear that has already acted) therefore always fits,
# however much the ops before it took; a too_large replacement is far smaller still. For
# the largest batch (256 ops) this holds back 4 MiB of the 64 MiB reply.
RESERVED_PER_OP = 16 << 10
# A result is cut below this depth when it must be made sendable (msgpack packs 511).
MAX_RESULT_NESTING = 256


def run_op(ctx: AgentContext, entry: Any) -> dict:
    return _run(ctx, entry)[0]


def _run(ctx: AgentContext, entry: Any) -> tuple[dict, bytes | None]:
    """(result, the op's slot key when it is a conditional op whose arguments validated)."""
    slot = None
    try:
        call = parse_op_entry(entry)
        args = validate_args(call.op, call.args)
        if call.op in CONDITIONAL_OPS:
            slot = slot_key(call.op, args)
        fn = handler(call.op)
        if fn is None:  # schema knows it but no implementation: a packaging bug
            raise ProtocolError(ErrorCode.INTERNAL, f"op {call.op!r} is not implemented by this agent")
        return ok_result(fn(ctx, args)), slot
    except ProtocolError as exc:
        return error_result(exc), slot
    except Exception as exc:  # noqa: BLE001 - one op's bug must not take the batch down
        log.exception("op failed unexpectedly")
        return error_result(ProtocolError(ErrorCode.INTERNAL, f"agent error: {type(exc).__name__}: {exc}")), slot


def run_packed(ctx: AgentContext, entry: Any) -> bytes:
    """Run one op and return its result already packed; the result object dies here."""
    return pack_any(run_op(ctx, entry))


def run_conditional(ctx: AgentContext, entry: Any, held: str | None,
                    sent: SentValues) -> tuple[bytes, Pending | None]:
    """Run one op of a request that asked for conditional replies: (its packed result,
    what the connection's memory learns once that result is in the reply)."""
    result, slot = _run(ctx, entry)
    if slot is None:  # not a conditional op (or its arguments were refused)
        return pack_any(result), None
    op = entry["op"]  # _run validated the entry: a map with a string op
    answered = sent.answer(op, slot, held, result["value"]) if result["ok"] else None
    if answered is None:  # an error (never remembered), or a value only make_sendable can send
        return pack_any(result), Pending(slot, None)
    return answered


def pack_any(result: dict) -> bytes:
    """`result` packed; a value msgpack refuses is sent as text (make_sendable)."""
    try:
        return pack_result(result)
    except Exception:  # noqa: BLE001 - a value msgpack cannot encode
        # Ops keep what they read from disk sendable themselves (an error row for a state
        # file holding such a value); a value that still slips through is sent as text
        # rather than failing the whole op. Logged: it points at an op to fix.
        log.exception("an op's result held a value msgpack cannot encode; sent as text")
    try:
        return pack_result(make_sendable(result, max_depth=MAX_RESULT_NESTING)[0])
    except Exception as exc:  # noqa: BLE001 - this op alone fails
        log.exception("could not encode an op's result")
        return pack_result(error_result(
            ProtocolError(ErrorCode.INTERNAL, f"agent error: could not encode the result: {exc}")))


def too_large(index: int, entry: Any, n_ops: int, size: int, room: int, limit: int) -> bytes:
    return pack_result(error_result(ProtocolError(ErrorCode.TOO_LARGE, (
        f"op {index + 1} of {n_ops} ({_label(entry)}): its result of {size} bytes does not fit in the reply "
        f"({max(room, 0)} of the reply's {limit} bytes were left for it); the op ran but its result was "
        f"dropped. Ask for less (e.g. a smaller max_bytes or tail, fewer keys or paths) or split "
        f"the batch"))))


def not_run(index: int, entry: Any, n_ops: int, spent_by: int) -> bytes:
    return pack_result(error_result(ProtocolError(ErrorCode.TOO_LARGE, (
        f"op {index + 1} of {n_ops} ({_label(entry)}) was not run: the reply was already full "
        f"(op {spent_by + 1}'s result did not fit). Send it again in another batch"))))


def _label(entry: Any) -> str:
    name = entry.get("op") if isinstance(entry, dict) else None
    return repr(name[:64]) if isinstance(name, str) else "?"


def handle(ctx: AgentContext, data: bytes, *, max_reply_bytes: int = MAX_REPLY_BYTES,
           sent: SentValues | None = None) -> bytes:
    """The reply to one request. `sent`: the connection's memory for conditional replies
    (None: never answer "same", as for a request without "held")."""
    try:
        request = decode_request(data)
    except ProtocolError as exc:
        return encode_reply(error=exc)
    n_ops = len(request.ops)
    pieces: list[bytes] = []
    used = packed_reply_overhead(n_ops)  # the envelope itself: map and array headers
    # Invariant: used + RESERVED_PER_OP * (ops still to answer) <= max_reply_bytes. So a
    # result may take whatever is left beyond the room reserved for the later ops, and a
    # replacement (< RESERVED_PER_OP) always fits: the reply never exceeds the limit, and
    # every op gets its result or its own error. Ops run in order until one's result does
    # not fit; the rest are not run (a mutating op among them does not act, and says so).
    spent_by: int | None = None
    held = request.held if sent is not None else None
    for index, entry in enumerate(request.ops):
        if spent_by is not None:
            piece = not_run(index, entry, n_ops, spent_by)
        else:
            pending = None
            if held is None:
                piece = run_packed(ctx, entry)
            else:
                piece, pending = run_conditional(ctx, entry, held[index], sent)
            room = max_reply_bytes - used - RESERVED_PER_OP * (n_ops - index - 1)
            if len(piece) > room:
                piece = too_large(index, entry, n_ops, len(piece), room, max_reply_bytes)
                spent_by = index
                if pending is not None:
                    pending = Pending(pending.slot, None)  # dropped: the client holds nothing of it
            if pending is not None:
                sent.commit(pending)
        used += len(piece)
        pieces.append(piece)  # (a replaced big result was freed when `piece` was rebound)
    return encode_packed_reply(pieces)
