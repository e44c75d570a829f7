"""The one contract every transport meets, and all that code above transport/ may use.

    class MyTransport(Transport):
        name = "my"

        def __init__(self, host: str):
            self.host = host

        def batch(self, ops):                     # one round trip
            return [{"ok": True, "value": ...} for op, args in ops]

`batch(ops)` takes `[(op, args), ...]` and returns one raw result per op, in order:
`{"ok": True, "value": ...}` or `{"ok": False, "error": {"code", "message"}}` (the agent's
shape, protocol/codec.py); a failing op never fails its neighbours. When the host cannot
answer at all, batch() raises instead (ConnectionFailed, AuthFailed, ProtocolMismatch).

Everything else has a default that fits a transport with nothing to report: local.py,
agent.py, ssh.py, auto.py, pooled.py (a lease on a transport the tunnel keeper keeps) and
mock.py (answers from a function, for tests) override what they know. Modelled on httpx's
`BaseTransport`; the views, the lifecycle commands, the CLI and the API are typed with
this class and never look at a concrete one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence, TypeVar

Notice = Callable[[str], None]
Op = tuple[str, dict[str, Any]]
Result = dict[str, Any]  # {"ok": True, "value": ...} | {"ok": False, "error": {"code", "message"}}
T = TypeVar("T", bound="Transport")  # `with AgentTransport(...) as t`: t is an AgentTransport

# Seconds a host may take to answer one call, whichever transport carries it (the `timeout`
# of Host and Fleet, `--timeout`). Ops that take time on the host (stop, clear, start...)
# get an allowance on top.
DEFAULT_TIMEOUT = 30.0


class Transport(ABC):
    """How a batch of ops reaches one host (see the module docstring)."""

    name: str                            # "local", "agent", "ssh", "auto", "mock": what it is
    host: str                            # the ssh host alias; "localhost" for this machine
    # Where one-line notices go (a repair, a fallback, a deploy's progress): set per caller
    # (configure()); None: the transport's own default (stderr, or silence for ssh).
    notice: Notice | None = None
    # True once the transport reached its host: a failure after that is a broken
    # connection, not a host where the agent cannot run (auto.py falls back only before).
    connected_once: bool = False
    # Why this host is answered by per-call ssh instead of its agent (auto.py), else None.
    fallback_reason: str | None = None

    @abstractmethod
    def batch(self, ops: Sequence[Op]) -> list[Result]:
        """Run `ops` in one round trip; one raw result per op, in order."""

    def begin(self, ops: Sequence[Op]) -> Callable[[], list[Result]] | None:
        """Send `ops` now and return the function that waits for their results (what
        batch() would return or raise), or None: nothing was sent, call batch(). Fleet
        sends to every host that can before it waits for any, so N hosts answer in about
        the time of one plus the client's work per host, not N thread hand-offs. The
        default sends nothing ahead: only a transport with an open connection can."""
        return None

    def close(self) -> None:
        """Let go of connections; never raises. Nothing to close by default."""

    @property
    def kind(self) -> str:
        """What answers now: `name`, except for auto ("agent" or "ssh")."""
        return self.name

    @property
    def label(self) -> str | None:
        """The host an error message names; None for this machine (its messages name none)."""
        return None if self.host == "localhost" else self.host

    def describe(self) -> dict[str, Any]:
        """State for `tunnel status` and `Host.describe()`; never a secret."""
        return {"transport": self.name, "host": self.host}

    def configure(self, *, notice: Notice | None = None, timeout: float | None = None,
                  accept_new_host_key: bool | None = None) -> None:
        """Serve the next calls with these settings (None: keep the current one). The tunnel
        keeper lends one kept transport to one command after another (pooled.py): each
        command's notices, --timeout and --accept-new-host-key apply to its own calls.
        A transport without a time limit or host keys takes the notice only."""
        if notice is not None:
            self.notice = notice

    def wait_sizes(self, timeout: float) -> bool | None:
        """Wait up to `timeout` s for the directory sizes this transport is measuring in
        this process: True once measured, False if the time ran out. None (the default):
        they are measured elsewhere (on an agent), so a caller asks again to learn them
        (query/ps.py settle_sizes)."""
        return None

    def stale(self) -> bool:
        """True once a file this transport was made from changed (the pool then makes a
        new one: pool.py)."""
        return False

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
