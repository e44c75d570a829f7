"""Turn one request (bytes) into one reply (bytes): decode, validate each op, run, encode.

One failing op never fails its neighbours; a bug in an op becomes an `internal` error
result, logged with its traceback on the agent side only.
"""

from __future__ import annotations

import logging
from typing import Any

from ..protocol import ErrorCode, ProtocolError, validate_args
from ..protocol.codec import (
    MAX_REPLY_BYTES,
    decode_request,
    encode_reply,
    error_result,
    ok_result,
    parse_op_entry,
)
from .context import AgentContext
from .ops import handler

log = logging.getLogger("seamless_service.agent")


def run_op(ctx: AgentContext, entry: Any) -> dict:
    try:
        call = parse_op_entry(entry)
        args = validate_args(call.op, call.args)
        fn = handler(call.op)
        if fn is None:  # schema knows it but no implementation: a packaging bug
            raise ProtocolError(ErrorCode.INTERNAL, f"op {call.op!r} is not implemented by this agent")
        return ok_result(fn(ctx, args))
    except ProtocolError as exc:
        return error_result(exc)
    except Exception as exc:  # noqa: BLE001 - one op's bug must not take the batch down
        log.exception("op failed unexpectedly")
        return error_result(ProtocolError(ErrorCode.INTERNAL, f"agent error: {type(exc).__name__}: {exc}"))


def handle(ctx: AgentContext, data: bytes) -> bytes:
    try:
        request = decode_request(data)
    except ProtocolError as exc:
        return encode_reply(error=exc)
    results = [run_op(ctx, entry) for entry in request.ops]
    try:
        reply = encode_reply(results)
    except Exception as exc:  # noqa: BLE001 - e.g. a value msgpack cannot encode
        log.exception("could not encode reply")
        return encode_reply(error=ProtocolError(ErrorCode.INTERNAL, f"could not encode reply: {exc}"))
    if len(reply) > MAX_REPLY_BYTES:
        return encode_reply(error=ProtocolError(
            ErrorCode.TOO_LARGE, f"reply of {len(reply)} bytes exceeds {MAX_REPLY_BYTES}; ask for less per batch"))
    return reply
