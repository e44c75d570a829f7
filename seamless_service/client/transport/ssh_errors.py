"""The one place where SSH errors become client errors: deploy/ssh.py's (which already map
paramiko's authentication and host-key errors and say why in one line), paramiko's own
(channels, a lost connection), sshtunnel's, the socket's, and what the `ssh` client says
when it fails (map_ssh_failure: the ssh transport and the OpenSSH agent path).

    try:
        ...
    except (DeployError, paramiko.SSHException, OSError, EOFError) as exc:
        raise map_ssh_error(host, exc, doing="cannot open a channel") from exc

The caller raises the result `from exc`, so `--debug` shows the lower error as the cause.
Import-light: paramiko and the deploy errors are looked up only when an error is mapped.
"""

from __future__ import annotations

import socket

from ..errors import AgentUnreachable, AuthFailed, ConnectionFailed, ForwardingRefused, TimedOut

# paramiko.ChannelException.code for a forward the server will not open (RFC 4254 5.1)
SSH_OPEN_ADMINISTRATIVELY_PROHIBITED = 1


def map_ssh_error(host: str, exc: BaseException, *, doing: str | None = None,
                  port: int | None = None) -> ConnectionFailed:
    """`exc` as the client error for `host`; its message is `doing: <the lower reason>`.

    `port`: the agent's port a `direct-tcpip` channel was asked for; a refused channel is
    then ForwardingRefused (sshd forbids forwarding) or AgentUnreachable (nothing listens).
    """
    import paramiko  # loaded already: every error mapped here comes from an SSH connection

    from ...deploy import AuthFailed as SshAuthFailed, HostKeyChanged, HostKeyUnknown, RemoteTimeout

    if port is not None and isinstance(exc, paramiko.ChannelException):
        if exc.code == SSH_OPEN_ADMINISTRATIVELY_PROHIBITED:
            return ForwardingRefused(host, f"the SSH server refuses port forwarding ({exc.text}); "
                                     "the agent cannot be reached through SSH")
        # SSH_OPEN_CONNECT_FAILED: sshd's connect() to the port was refused
        return AgentUnreachable(host, f"nothing listens on the agent's port {port} "
                                f"({exc.text or 'connect failed'})")
    message = f"{doing}: {reason(exc)}" if doing else reason(exc)
    if isinstance(exc, (SshAuthFailed, HostKeyChanged, HostKeyUnknown)):
        return AuthFailed(host, message)
    if isinstance(exc, (RemoteTimeout, socket.timeout)):
        return TimedOut(host, message)
    return ConnectionFailed(host, message)


def map_ssh_failure(host: str, stderr: str, code: int) -> ConnectionFailed:
    """What the `ssh` client said when it failed (exit status 255; or a stream it ended):
    its last meaningful stderr line, as AuthFailed for a refused key or host key, else
    ConnectionFailed. The ssh transport's calls and
    the OpenSSH agent path (openssh.py) both come here."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("@@@")]
    line = lines[-1] if lines else f"ssh exited with status {code}"
    if line.startswith("ssh: "):
        line = line[len("ssh: "):]
    if ("Permission denied" in stderr or "Host key verification failed" in stderr
            or "IDENTIFICATION HAS CHANGED" in stderr or "No matching host key" in stderr):
        if "IDENTIFICATION HAS CHANGED" in stderr:
            line = "host key CHANGED (known_hosts holds another key); refusing to connect"
        return AuthFailed(host, f"ssh: {line}")
    return ConnectionFailed(host, f"ssh: {line}")


def reason(exc: BaseException) -> str:
    """The lower layer's one-line reason (sshtunnel keeps it in `.value`)."""
    return str(getattr(exc, "value", None) or exc) or type(exc).__name__
