"""A local TCP forward to a host's agent, built on sshtunnel with its unsafe defaults overridden.

    forward = LocalForward(tunnel, remote_port)        # 127.0.0.1:<free port> -> host's 127.0.0.1:remote_port
    AgentConnection.connect("127.0.0.1", forward.local_port, secret)
    forward.close()

This is `Tunnel.connect_agent(..., via="forward")`, for callers that need a TCP port. The
default path (`via="channel"`) runs rpyc over the SSH channel itself and needs no local
listener at all; benchmarks/bench_tunnel.py measures both.

sshtunnel's `SSHTunnelForwarder` is used for what it does well (the listener, one
`direct-tcpip` channel per accepted connection, threads, shutdown); what it does unsafely
or slowly is replaced:

* It would build and authenticate its own paramiko Transport with no host-key check
  (`ssh_host_key=None`), reading `~/.ssh/id_*` and the ssh-agent on its own. Here it never
  connects: `_connect_to_gateway` hands it the Transport of the `Tunnel`, which
  deploy/ssh.py verified against known_hosts (ProxyJump, IdentitiesOnly and all), and its
  key lookup is switched off. It never closes that Transport either: the Tunnel owns it.
* It binds 0.0.0.0 unless told otherwise: the bind address is always 127.0.0.1, and
  checked after binding.
* Its handler copies 16 KB per select() and sets no TCP_NODELAY: every accepted socket
  gets TCP_NODELAY (the transport socket has it already, and the Tunnel keeps a session
  channel open so that sshd sets it on its side), and data moves 64 KB at a time.
* It logs through a console handler it adds itself: here through a logger of ours that
  has a NullHandler, so nothing reaches the user's terminal.

Whoever connects to the local port still has to pass the agent's challenge-response.
"""

from __future__ import annotations

import functools
import logging
import select
import socket
import threading
from typing import Any, Protocol

from ..errors import ConnectionFailed
from ...sockopts import set_nodelay
from .ssh_errors import map_ssh_error


class SshLink(Protocol):
    """What a forward needs of its Tunnel (tunnel.py): the host, for messages, and the
    verified paramiko Transport (None once closed). A Protocol, so that this module need
    not import tunnel.py, which imports this one."""

    host: str
    transport: Any

CHUNK = 65536
POLL = 1.0  # a pump notices close() within this many seconds
LOOPBACK = "127.0.0.1"
# sshtunnel insists on a password or a key before it will start; it never uses this one,
# because it never authenticates (see Forwarder._connect_to_gateway in _forwarder_class).
_UNUSED_PASSWORD = "unused: the transport is authenticated already"

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class LocalForward:
    """127.0.0.1:local_port on this machine -> 127.0.0.1:remote_port on the tunnel's host.

    `local_port=0` takes a free port. Raises ConnectionFailed if the port cannot be bound.
    """

    def __init__(self, tunnel: SshLink, remote_port: int, *, local_port: int = 0):
        import sshtunnel

        transport = tunnel.transport
        if transport is None or not transport.is_active():
            raise ConnectionFailed(tunnel.host, "the SSH connection is closed")
        self.tunnel = tunnel
        self.remote_port = int(remote_port)
        self.closed = False
        self._accepted: set[socket.socket] = set()
        self._lock = threading.Lock()
        try:
            self._forwarder = _forwarder_class()(self, transport, local_port)
            self._forwarder.start()
        except (sshtunnel.BaseSSHTunnelForwarderError, OSError, ValueError) as exc:
            raise map_ssh_error(tunnel.host, exc, doing=f"cannot listen on {LOOPBACK}:{local_port}") from exc
        host, self.local_port = self._forwarder.local_bind_address[:2]
        if host != LOOPBACK:  # cannot happen with the bind address above; never serve it if it did
            self.close()
            raise ConnectionFailed(tunnel.host, f"forward bound {host}, not {LOOPBACK}; refusing")

    @property
    def local_address(self) -> tuple[str, int]:
        return (LOOPBACK, self.local_port)

    def sockets(self) -> list[socket.socket]:
        """The listening socket and the accepted ones still open (for checks and tests)."""
        listeners = [srv.socket for srv in self._forwarder._server_list]
        with self._lock:
            return [*listeners, *self._accepted]

    def describe(self) -> dict[str, Any]:
        with self._lock:
            connections = len(self._accepted)
        return {"local": f"{LOOPBACK}:{self.local_port}", "remote_port": self.remote_port,
                "connections": connections, "via": "sshtunnel"}

    def close(self) -> None:
        """Stop listening and end every forwarded connection; never raises. The SSH
        connection itself stays (it belongs to the Tunnel)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._forwarder.stop()
        except Exception:  # noqa: BLE001 - a broken forwarder must still count as closed
            log.debug("stopping the sshtunnel forwarder failed", exc_info=True)
        with self._lock:
            accepted = list(self._accepted)
        for sock in accepted:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump, which closes both ends
            except OSError:
                pass

    # -- called by the handler -----------------------------------------------------

    def _track(self, sock: socket.socket, present: bool) -> None:
        with self._lock:
            (self._accepted.add if present else self._accepted.discard)(sock)

    def _pump(self, sock: socket.socket, chan: Any) -> None:
        """Copy both ways until either side ends or the forward closes."""
        try:
            while not self.closed and chan.active:
                readable, _, _ = select.select([sock, chan], [], [], POLL)
                if sock in readable:
                    data = sock.recv(CHUNK)
                    if not data:
                        break
                    chan.sendall(data)
                if chan in readable:
                    data = chan.recv(CHUNK)
                    if not data:
                        break
                    sock.sendall(data)
        except (OSError, EOFError):
            pass  # a reset on either side ends the connection; the caller sees EOF


@functools.lru_cache(maxsize=None)
def _forwarder_class() -> type:
    """sshtunnel.SSHTunnelForwarder with the overrides described in the module doc
    (built on first use: importing sshtunnel costs ~55 ms that the default path never pays)."""
    import sshtunnel

    class Forwarder(sshtunnel.SSHTunnelForwarder):
        daemon_forward_servers = True
        skip_tunnel_checkup = True  # its check opens a connection the agent would log as failed auth

        def __init__(self, owner: LocalForward, transport: Any, local_port: int):
            self._owner = owner
            self._verified = transport
            try:
                peer = transport.getpeername()[:2]
            except (OSError, TypeError, ValueError, AttributeError):
                peer = (LOOPBACK, 22)  # a ProxyJump channel has no peer address; only logged
            super().__init__(
                ssh_address_or_host=(str(peer[0]), int(peer[1])),
                ssh_config_file=None,          # the Tunnel read the ssh config already
                ssh_password=_UNUSED_PASSWORD,
                allow_agent=False,             # no key lookups of its own
                host_pkey_directories=[],
                local_bind_address=(LOOPBACK, local_port),
                remote_bind_address=(LOOPBACK, owner.remote_port),
                logger=log,
                mute_exceptions=False,
            )

        def _connect_to_gateway(self) -> None:
            self._transport = self._verified

        def _stop_transport(self, force: bool = False) -> None:
            # Shut the listener down but leave the SSH connection to the Tunnel: with no
            # `_transport`, sshtunnel's is_active is False and it closes nothing else.
            self.__dict__.pop("_transport", None)
            super()._stop_transport(force=force)

        def _make_ssh_forward_handler_class(self, remote_address_: Any) -> type:
            base = super()._make_ssh_forward_handler_class(remote_address_)
            owner = self._owner

            class Handler(base):  # type: ignore[misc, valid-type]
                def handle(self) -> None:
                    set_nodelay(self.request)
                    owner._track(self.request, True)
                    try:
                        super().handle()
                    finally:
                        owner._track(self.request, False)

                def _redirect(self, chan: Any) -> None:
                    owner._pump(self.request, chan)

            return Handler

    return Forwarder
