"""The wire contract shared by agent and client: envelope, op schemas, error codes, codec.

No I/O happens in this package.
"""

from .version import PROTOCOL_VERSION
from .errors import ErrorCode, ProtocolError
from .codec import (
    MAX_REQUEST_BYTES,
    MAX_REPLY_BYTES,
    Request,
    OpCall,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_result,
    ok_result,
)
from .schema import OPS, validate_args

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorCode",
    "ProtocolError",
    "MAX_REQUEST_BYTES",
    "MAX_REPLY_BYTES",
    "Request",
    "OpCall",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "error_result",
    "ok_result",
    "OPS",
    "validate_args",
]
