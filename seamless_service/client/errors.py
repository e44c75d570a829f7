"""The client's exception hierarchy. Every message is one readable line, never a secret.

    ServiceError
    ├── ConnectionFailed       host unreachable, tunnel down, agent not answering
    │   ├── AuthFailed         SSH or agent authentication refused, host key unknown/changed
    │   ├── TimedOut           a connection step or a call did not finish within its limit
    │   ├── AgentUnavailable   SSH works, but the agent cannot run or be reached there
    │   ├── AgentUnreachable   SSH works, but nothing listens on the agent's port
    │   └── ForwardingRefused  the SSH server refuses port forwarding
    ├── ProtocolMismatch       the agent speaks another protocol version, or sent garbage
    ├── OpError                one op failed on the agent (carries the stable error `code`,
    │                          one of protocol.ErrorCode)
    └── UsageError             bad input on the client side (unknown cluster, bad flags)

A few subclasses live beside the code that raises them: `AgentError` (transport/agent_conn.py,
one agent connection; the agent transport maps it), `LifecycleError` (an OpError,
lifecycle/control.py), `KeyNotResolvable` and `Ambiguous` (UsageErrors, config/resolve.py and
cli/targets.py), and the tunnel keeper's `KeeperUnavailable`, `KeeperLost`, ... (keeper/client.py).
`except ServiceError` catches every one of them.

Each lower layer is translated in one place, keeping the lower error as `__cause__` (shown
by `--debug`): paramiko, sshtunnel, socket and deploy/ssh.py errors in
transport/ssh_errors.py `map_ssh_error`; rpyc and the agent's handshake in
transport/agent_conn.py (as AgentError), then AgentError in transport/agent.py; the tunnel
keeper's replies in keeper/client.py.

No imports: the thin CLI path imports this module on every call.
"""


class ServiceError(Exception):
    """Base of all seamless-service errors."""

    exit_code = 1


class ConnectionFailed(ServiceError):
    def __init__(self, host: str, message: str):
        super().__init__(f"{host}: {message}")
        self.host = host


class AuthFailed(ConnectionFailed):
    pass


class TimedOut(ConnectionFailed):
    """A connection step or a call did not finish within its time limit (the host, the
    network or the agent may be stuck; nothing says the request was not received)."""


class AgentUnavailable(ConnectionFailed):
    """SSH works, but the agent cannot run on this host or cannot be reached there.

    `guarded` is True when the key is forced through rhl-guard (only rhl-* helpers run).
    `permanent` is True when the host itself keeps the agent out (rhl-guard, forwarding
    refused by sshd, no usable Python, the install or start refused): worth remembering.
    False for what the next command may not meet (a timeout, a dropped connection, an
    agent restarting): the auto transport then uses ssh for this command only.
    """

    def __init__(self, host: str, message: str, *, guarded: bool = False, permanent: bool = False):
        super().__init__(host, message)
        self.guarded = guarded
        self.permanent = permanent or guarded


class AgentUnreachable(ConnectionFailed):
    """The SSH connection works, but nothing accepts connections on the agent's port."""


class ForwardingRefused(ConnectionFailed):
    """The SSH server refuses port forwarding for this account or key."""


class ProtocolMismatch(ServiceError):
    pass


class OpError(ServiceError):
    def __init__(self, code: str, message: str, host: str | None = None):
        super().__init__(f"{host}: {message}" if host else message)
        self.code = code
        self.message = message
        self.host = host

    @classmethod
    def from_result(cls, error: object, host: str | None = None) -> "OpError":
        """The error of a failed op result (`{"ok": False, "error": {"code", "message"}}`)."""
        from ..protocol.errors import ErrorCode

        fields = error if isinstance(error, dict) else {}
        return cls(str(fields.get("code", ErrorCode.INTERNAL)), str(fields.get("message", "unknown error")), host)


class UsageError(ServiceError):
    exit_code = 2


def from_protocol_error(exc: object, host: str) -> ServiceError:
    """A request refused as a whole (protocol.ProtocolError, by the agent or by our own
    encoder): ProtocolMismatch when the agent speaks another protocol version, else OpError
    with the error's code."""
    from ..protocol.errors import ErrorCode

    code, message = getattr(exc, "code", ErrorCode.INTERNAL), getattr(exc, "message", str(exc))
    if code == ErrorCode.VERSION_MISMATCH:
        return ProtocolMismatch(f"{host}: {message}")
    return OpError(code, message, host)
