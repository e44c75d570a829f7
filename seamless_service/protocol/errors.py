"""Stable error codes. Clients match on the code; the message is for humans."""

from __future__ import annotations

from .wiresafe import display_text


class ErrorCode:
    # request-level (the whole batch is refused)
    MALFORMED = "malformed"              # not msgpack, or not a map, or bad envelope
    # request over MAX_REQUEST_BYTES, one op's result too big for the reply, or an op not
    # run because the reply was already full
    TOO_LARGE = "too_large"
    VERSION_MISMATCH = "version_mismatch"
    # op-level (one result in the batch)
    UNKNOWN_OP = "unknown_op"
    BAD_ARGS = "bad_args"                # schema violation: type, unknown/missing field, size
    INVALID_KEY = "invalid_key"          # key does not follow the helpers' key rule
    POLICY_REFUSED = "policy_refused"    # path refused by the path policy
    NOT_FOUND = "not_found"              # no state file / log / directory
    CONFLICT = "conflict"                # e.g. clear while the service runs
    HELPER_FAILED = "helper_failed"      # an rhl-* helper exited non-zero
    OP_FAILED = "op_failed"              # the op could not complete (I/O error, ...)
    INTERNAL = "internal"                # a bug in the agent; the message says what

    ALL = frozenset({
        MALFORMED, TOO_LARGE, VERSION_MISMATCH, UNKNOWN_OP, BAD_ARGS, INVALID_KEY,
        POLICY_REFUSED, NOT_FOUND, CONFLICT, HELPER_FAILED, OP_FAILED, INTERNAL,
    })


class ProtocolError(Exception):
    """An error with a stable code. Raised by validation and by ops; becomes an error result."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_dict(self) -> dict:
        # messages quote paths and file contents, which need not be UTF-8: always sendable
        return {"code": self.code, "message": display_text(str(self.message))}

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r})"
