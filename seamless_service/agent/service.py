"""The rpyc service: exactly one remote method, `call(request: bytes) -> bytes`.

Everything else a client could ask rpyc for (other attributes of the service, attributes
of the bound method, classic-mode calls, pickling, comparisons, introspection) is refused
(rpyc_guard.HardenedConnection). Arguments that are not a real `bytes` object (rpyc passes
lists and other objects as netrefs, live proxies into the client) are refused while rpyc
unboxes them, so the agent never calls back into a client.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import rpyc

from ..protocol.auth import RPYC_CONFIG
from . import dispatch
from .context import AgentContext
from .rpyc_guard import HardenedConnection
from .sent import SentValues

EXPOSED = frozenset({"call", "exposed_call"})


def server_config() -> dict:
    """A fresh copy of the hardened rpyc protocol config (rpyc's server mutates it)."""
    return dict(RPYC_CONFIG)


class Activity:
    """Open connections and the time of the last call, for the idle exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections = 0
        self._last = time.monotonic()

    def touch(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def connected(self) -> None:
        with self._lock:
            self._connections += 1
            self._last = time.monotonic()

    def disconnected(self) -> None:
        with self._lock:
            self._connections = max(0, self._connections - 1)
            self._last = time.monotonic()

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def idle_for(self) -> float:
        """Seconds without any call or open connection; 0 while a connection is open."""
        with self._lock:
            if self._connections:
                return 0.0
            return time.monotonic() - self._last


class AgentService(rpyc.Service):
    """The agent's service. The server holds one instance; each connection is served by
    its own copy (`_connect`), which shares the context and the activity and holds that
    connection's memory of sent values (conditional replies, agent/sent.py): a new
    connection starts with nothing remembered."""

    def __init__(self, ctx: AgentContext, activity: Activity | None = None):
        self._ctx = ctx
        self._activity = activity or Activity()
        self.sent = SentValues()

    def for_connection(self) -> "AgentService":
        """A copy serving one connection: same context and activity, its own memory."""
        return AgentService(self._ctx, self._activity)

    def on_connect(self, conn: Any) -> None:
        self._activity.connected()

    def on_disconnect(self, conn: Any) -> None:
        self._activity.disconnected()

    _protocol = HardenedConnection

    def _connect(self, channel: Any, config: dict = {}) -> Any:  # noqa: B006 - rpyc's signature
        # rpyc zlib-compresses every frame over 3,000 bytes (~5 ms per 180 KB reply on a fast
        # link); our replies are compact msgpack, so send them as they are. The peer reads
        # the per-frame flag, so this needs no agreement. (The agent's own LimitedChannel
        # starts uncompressed; this covers any other channel.)
        channel.compress = False
        # rpyc makes the service the connection's root: a per-connection copy, so that what
        # one connection was sent is never taken for what another holds.
        return super(AgentService, self.for_connection())._connect(channel, config)

    def _rpyc_getattr(self, name: str) -> Any:
        # Replaces rpyc's attribute check for the root object: one name, nothing else
        # (not even rpyc's own exposed_get_service_name).
        if name in EXPOSED:
            return self.exposed_call
        raise AttributeError("access denied")

    def exposed_call(self, request: Any) -> bytes:
        # `type(...) is bytes`, not isinstance: a netref can pretend to be any class.
        if type(request) is not bytes:
            raise TypeError("call() takes one msgpack request as bytes")
        self._activity.touch()
        try:
            return dispatch.handle(self._ctx, request, sent=self.sent)
        finally:
            self._activity.touch()
