"""The client's exception hierarchy. Every message is one readable line, never a secret.

    ServiceError
    ├── ConnectionFailed   host unreachable, tunnel down, agent not answering
    │   └── AuthFailed     SSH or agent authentication refused, host key unknown/changed
    ├── ProtocolMismatch   the agent speaks another protocol version, or sent garbage
    ├── OpError            one op failed on the agent (carries the stable error `code`)
    └── UsageError         bad input on the client side (unknown cluster, bad flags)
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of all seamless-service errors."""

    exit_code = 1


class ConnectionFailed(ServiceError):
    def __init__(self, host: str, message: str):
        super().__init__(f"{host}: {message}")
        self.host = host


class AuthFailed(ConnectionFailed):
    pass


class ProtocolMismatch(ServiceError):
    pass


class OpError(ServiceError):
    def __init__(self, code: str, message: str, host: str | None = None):
        super().__init__(f"{host}: {message}" if host else message)
        self.code = code
        self.message = message
        self.host = host


class UsageError(ServiceError):
    exit_code = 2
