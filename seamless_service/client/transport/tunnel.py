"""An SSH tunnel to a host's agent: one verified SSH connection, rpyc over a forwarded channel.

    tunnel = Tunnel("cluster-frontend").open()
    conn = tunnel.connect_agent(endpoint.remote_port, endpoint.secret)   # an AgentConnection
    conn.batch([("ps", {})])
    tunnel.close()

The SSH connection is deploy/ssh.py's: same ssh config (HostName, User, IdentityFile,
ProxyJump, ...), same known_hosts verification (OpenSSH's StrictHostKeyChecking rules; a
changed key is always refused), same one-line errors. On top of it:

* **rpyc runs directly over a paramiko `direct-tcpip` channel** to the agent's port on the
  host's 127.0.0.1 (`via="channel"`, the default). No local listener exists at all, so no
  other local process can even try the agent's port, and each byte crosses one hop fewer
  than through a local forward.
* `forward()` offers a classic local forward too (`via="forward"`), for callers that need
  a TCP port: sshtunnel's forwarder on this same verified connection, bound to 127.0.0.1
  only, with TCP_NODELAY and 64 KB copies (forward.py lists what it overrides).

Why the channel and not an sshtunnel forward by default: a local
forward is a listener that every local process can reach (the agent's secret still guards
it), and it adds a hop (client socket -> handler thread -> channel) with a thread hand-off
per message. Measured on loopback in two runs of benchmarks/bench_tunnel.py, p50 of a
small call: 0.38-0.40 ms over the channel, 0.44-0.48 ms through the sshtunnel forward
(the target is <= 0.5 ms); 200 KB replies take 1.3-1.7 ms either way. sshtunnel is imported only
when a forward is asked for (~55 ms of import). The cipher is deploy/ssh.py's choice:
AES-GCM first (paramiko's own preference, aes128-ctr + hmac-sha2-256, is slower).

Latency traps handled: TCP_NODELAY on the transport
socket and on every local socket; and a **session channel kept open** on the connection
(`cat`, which exits when its stdin closes, so nothing is left running on the host), because
sshd sets TCP_NODELAY on its side of the connection only once a session starts: without
it a reply over 64 KB stalls ~45 ms (benchmarks/bench_tunnel.py shows both figures).
SSH keepalives come from the ssh config (ServerAliveInterval, default 30 s).

That session has a second use: a key whose authorized_keys line forces a command (e.g.
`rhl-guard`) runs it instead of `cat`; `forced_command_output()` returns what it said, so
a failing deploy can be explained ("only rhl-* helpers are allowed") without another login.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .agent_conn import DEFAULT_CALL_TIMEOUT, AgentConnection
from ...sockopts import has_nodelay, set_nodelay
from ..errors import AgentUnreachable, ConnectionFailed, ForwardingRefused  # noqa: F401 - what open_channel raises
from .ssh_errors import map_ssh_error

if TYPE_CHECKING:
    from .forward import LocalForward

CHANNEL_TIMEOUT = 10.0      # opening one forwarded channel
SESSION_COMMAND = "cat"     # exits as soon as its stdin (our end of the session) closes


class Tunnel:
    """One SSH connection to `host` (an ssh alias, `[user@]alias`) with channels to its agent.

    Thread-safe: channels may be opened from several threads; `open()` and `close()` are
    serialised.
    """

    def __init__(self, host: str, *, ssh_config: str | os.PathLike | None = None,
                 accept_new_host_key: bool = False, connect_timeout: float | None = None,
                 keep_session: bool = True, notice: Callable[[str], None] | None = None):
        self.host = host
        self.ssh_config = ssh_config
        self.accept_new_host_key = accept_new_host_key
        self.notice = notice  # hears of a host key accepted unchecked (deploy/ssh.py); None: stderr
        self.connect_timeout = connect_timeout
        self.keep_session = keep_session
        self.opened_at: float | None = None
        self._conn: Any = None          # deploy.ssh.ParamikoClient
        self._session: Any = None       # paramiko.Channel running SESSION_COMMAND
        self._forwards: list[LocalForward] = []  # forward.py
        self._read: Any = None          # inputs.FileSnapshot of the files the connection read
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> "Tunnel":
        """Connect (host key verified, authenticated); a no-op while the connection is alive.

        Raises AuthFailed (unknown/changed host key, key refused) or ConnectionFailed.
        """
        with self._lock:
            if self.alive:
                return self
            self._close_locked()
            from ...deploy import DeployError
            from ...deploy import ssh as dssh
            from .inputs import FileSnapshot

            read = FileSnapshot()
            try:
                conn = dssh.connect(self.host, ssh_config=self.ssh_config,
                                    accept_new_host_key=self.accept_new_host_key,
                                    timeout=self.connect_timeout, on_read=read.add, notice=self.notice)
            except DeployError as exc:
                raise map_ssh_error(self.host, exc) from exc
            transport = conn.get_transport()
            set_nodelay(transport.sock)  # deploy/ssh.py does it too; it is what matters here
            self._conn = conn
            self._read = read
            self.opened_at = time.time()
            if self.keep_session:
                self._open_session()
            return self

    def _open_session(self) -> None:
        """Start SESSION_COMMAND so that sshd turns TCP_NODELAY on (see the module doc)."""
        import paramiko

        try:
            chan = self._conn.get_transport().open_session(timeout=self._timeout())
            chan.exec_command(SESSION_COMMAND)
        except (paramiko.SSHException, OSError, EOFError):
            # Not fatal: forwarding still works, only large replies may stall. A server
            # that refuses sessions outright (MaxSessions 0) is rare.
            self._session = None
            return
        self._session = chan

    def _timeout(self) -> float:
        return self.connect_timeout if self.connect_timeout is not None else CHANNEL_TIMEOUT

    @property
    def transport(self) -> Any:
        """The paramiko Transport, or None when not connected."""
        conn = self._conn
        return conn.get_transport() if conn is not None else None

    @property
    def alive(self) -> bool:
        """True while the SSH connection is up (paramiko notices a closed TCP connection
        at once; a silent network needs the keepalive or a call timeout)."""
        transport = self.transport
        return transport is not None and transport.is_active()

    def stale(self) -> bool:
        """True once a file the open connection was made from (ssh config, known_hosts,
        keys) has changed: it may no longer be the connection that config asks for."""
        read = self._read
        return read is not None and read.changed()

    def forced_command_output(self) -> str | None:
        """If the kept session ended on its own (a forced command ran instead of `cat`),
        its stderr and stdout; else None."""
        chan = self._session
        if chan is None or not chan.exit_status_ready():
            return None
        out = []
        try:
            while chan.recv_stderr_ready():
                out.append(chan.recv_stderr(65536))
            while chan.recv_ready():
                out.append(chan.recv(65536))
        except (OSError, EOFError):
            pass
        return b"".join(out).decode(errors="replace").strip()

    def close(self) -> None:
        """Close forwards, channels and the SSH connection. Never raises, never hangs."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        for forward in self._forwards:
            forward.close()
        self._forwards = []
        if self._session is not None:
            try:
                self._session.close()
            except Exception:  # noqa: BLE001 - closing a broken channel must not raise
                pass
            self._session = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None

    def __enter__(self) -> "Tunnel":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ channels

    def open_channel(self, remote_port: int, *, timeout: float | None = None) -> Any:
        """A `direct-tcpip` channel to 127.0.0.1:`remote_port` on the host.

        AgentUnreachable if nothing listens there, ForwardingRefused if the server forbids
        forwarding, ConnectionFailed if the SSH connection is gone.
        """
        import paramiko

        transport = self.transport
        if transport is None or not transport.is_active():
            raise ConnectionFailed(self.host, "the SSH connection is closed")
        limit = timeout if timeout is not None else self._timeout()
        try:
            return transport.open_channel("direct-tcpip", ("127.0.0.1", int(remote_port)),
                                          ("127.0.0.1", 0), timeout=limit)
        except (paramiko.SSHException, OSError, EOFError) as exc:  # incl. ChannelException
            doing = ("the SSH connection was lost" if not transport.is_active()
                     else "cannot open a channel to the agent's port")
            raise map_ssh_error(self.host, exc, doing=doing, port=int(remote_port)) from exc

    def connect_agent(self, remote_port: int, secret: str, *, timeout: float | None = None,
                      call_timeout: float = DEFAULT_CALL_TIMEOUT, via: str = "channel") -> AgentConnection:
        """An authenticated AgentConnection to the agent on the host's 127.0.0.1:`remote_port`.

        `via="channel"`: rpyc over the SSH channel itself; `via="forward"`: through a local
        sshtunnel forward on 127.0.0.1 (one more hop; for callers that need a port).
        Raises AgentUnreachable / ForwardingRefused / ConnectionFailed for the channel, and
        agent_conn.AgentAuthError / AgentConnectionError for the agent's handshake.
        """
        limit = timeout if timeout is not None else self._timeout()
        where = f"the agent on {self.host} (port {remote_port})"
        if via == "forward":
            forward = self.forward(remote_port)
            conn = AgentConnection.connect("127.0.0.1", forward.local_port, secret,
                                           timeout=limit, call_timeout=call_timeout)
            conn.where = where
            return conn
        if via != "channel":
            raise ValueError(f"via must be 'channel' or 'forward', not {via!r}")
        chan = self.open_channel(remote_port, timeout=limit)
        return AgentConnection.over(chan, secret, where=where, timeout=limit, call_timeout=call_timeout)

    def forward(self, remote_port: int, *, local_port: int = 0) -> "LocalForward":
        """A local forward 127.0.0.1:`local_port` (0: a free port) -> host's 127.0.0.1:`remote_port`.

        Reused if one to that remote port exists; closed with the tunnel.
        """
        with self._lock:
            for forward in self._forwards:
                if forward.remote_port == remote_port and not forward.closed and (
                        local_port in (0, forward.local_port)):
                    return forward
            from .forward import LocalForward

            forward = LocalForward(self, remote_port, local_port=local_port)
            self._forwards.append(forward)
            return forward

    # ------------------------------------------------------------------ introspection

    def describe(self) -> dict[str, Any]:
        """What the tunnel is, for `seamless-service tunnel status` (never a secret)."""
        transport = self.transport
        info: dict[str, Any] = {"host": self.host, "alive": self.alive, "opened_at": self.opened_at,
                                "session_channel": self._session is not None and not self._session.closed}
        if transport is not None:
            sock = transport.sock
            info["nodelay"] = has_nodelay(sock) if isinstance(sock, socket.socket) else None
            try:
                info["peer"] = "%s:%s" % transport.getpeername()[:2]
            except (OSError, TypeError, ValueError):
                pass
            info["cipher"] = getattr(transport, "remote_cipher", None)
        info["forwards"] = [f.describe() for f in self._forwards if not f.closed]
        return info

    def __repr__(self) -> str:
        return f"Tunnel({self.host!r}, alive={self.alive})"
