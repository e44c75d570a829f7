"""Flags and helpers shared by the subcommands: selection, transport, one-op calls."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ...protocol.keys import SERVICES
from ..errors import ConnectionFailed, OpError
from ..config.selection import Selection
from ..transport.base import DEFAULT_TIMEOUT, Op, Result, Transport

TRANSPORTS = ("auto", "agent", "ssh", "local")

TransportFactory = Callable[[str | None], Transport]   # ssh host (None: this machine) -> transport
# Set only by main(argv, transport_factory=...) for the length of one command, so tests run
# the CLI in-process on MockTransports; no flag or environment variable reaches it.
_factory: TransportFactory | None = None


def add_selection_args(parser: argparse.ArgumentParser, *, service_required: bool = False,
                       services: tuple[str, ...] = SERVICES) -> None:
    """The selection flags of seamless-config's `seamless-service-*` commands (service/_args.py)."""
    group = parser.add_argument_group("selection (defaults come from seamless.yaml in the current directory)")
    group.add_argument("--service", choices=services, required=service_required,
                       help="the service" + (" (required)" if service_required else ""))
    group.add_argument("--cluster", help="cluster name from ~/.seamless/clusters.yaml")
    group.add_argument("--project", help="project; SEAMLESS_CACHE selects the Seamless cache")
    group.add_argument("--subproject", help="subproject (may contain '/')")
    group.add_argument("--stage", help="stage (`stage NAME:` blocks of seamless.yaml apply)")
    group.add_argument("--substage", help="substage (jobserver/daskserver)")
    # default None, not "rw": cluster-wide commands filter on --mode only when it was given
    # (selection_of turns None into "rw" for resolution, as seamless-config's default).
    group.add_argument("--mode", choices=("ro", "rw"), default=None,
                       help="read-only or read-write hashserver/database (default rw)")
    group.add_argument("--queue", help="queue (daskserver, pure-daskserver)")
    group.add_argument("--frontend-name", dest="frontend_name", metavar="HOSTNAME",
                       help="use the frontend whose `hostname` is HOSTNAME")


def selection_of(args: argparse.Namespace, **override: Any) -> Selection:
    """The selection flags as a Selection (an unset --mode resolves as rw); `override`
    replaces some of them (e.g. service=...)."""
    values = {name: getattr(args, name, None) for name in Selection.__dataclass_fields__}
    values.update(override)
    values["mode"] = values.get("mode") or "rw"
    return Selection(**values)


def add_transport_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--transport", choices=TRANSPORTS, default="auto",
                       help="agent: persistent agent over an SSH tunnel; ssh: one `ssh HOST rhl-*` "
                            "per call; local: this machine; auto (default): local for this machine, "
                            "else agent, falling back to ssh")
    group.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"seconds to wait for a host to answer a call (default {DEFAULT_TIMEOUT:g})")
    group.add_argument("--ssh-config", dest="ssh_config", metavar="PATH",
                       help="ssh client configuration file to use instead of ~/.ssh/config")


def positive_seconds(text: str) -> float:
    """argparse type for --timeout: a number of seconds above 0 (0 or less would either
    never wait or, silently, fall back to the default)."""
    try:
        value = float(text)
    except ValueError:
        # argparse shows only the message; float()'s own says the same
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400 seconds, not {text}")
    return value


def _notice(message: str) -> None:
    # The transports' notices already name the program; a bare message gets the prefix.
    prefix = "seamless-service: "
    print(message if message.startswith(prefix) else prefix + message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def transports_from(factory: TransportFactory | None) -> Iterator[None]:
    """While inside, open_for and open_local return `factory(host)` (None: as usual)."""
    global _factory
    previous, _factory = _factory, factory
    try:
        yield
    finally:
        _factory = previous


@dataclass(frozen=True)
class TransportOptions:
    """--transport, --ssh-config and --timeout, typed: how open_for reaches a host."""

    kind: str = "auto"
    ssh_config: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TransportOptions":
        return cls(kind=getattr(args, "transport", None) or "auto", ssh_config=getattr(args, "ssh_config", None),
                   timeout=getattr(args, "timeout", None) or DEFAULT_TIMEOUT)


def open_for(ssh_host: str | None, options: TransportOptions) -> Transport:
    """A transport to `ssh_host` (None: this machine), chosen by --transport."""
    if _factory is not None:
        return _factory(ssh_host)
    try:
        from ..transport.open import open_transport
    except ImportError as exc:
        # transport/open.py is not part of this build yet: this machine still works in-process.
        if ssh_host is None:
            from ..transport.local import LocalTransport

            return LocalTransport()
        raise ConnectionFailed(ssh_host, "remote transports are not available in this installation") from exc
    return open_transport(ssh_host, options.kind, ssh_config=options.ssh_config, timeout=options.timeout,
                          notice=_notice)


def open_local() -> Transport:
    """The in-process transport on this machine's launcher state (client files live here)."""
    if _factory is not None:
        return _factory(None)
    from ..transport.local import LocalTransport

    return LocalTransport()


def call_batch(transport: Transport, ops: list[Op]) -> list[Result]:
    """One round trip; the raw results ({"ok", "value"|"error"}), in order."""
    return transport.batch(ops)


def call_one(transport: Transport, op: str, args: dict[str, Any]) -> Any:
    """The value of one op, or OpError (code, message, host)."""
    from ..transport.local import unwrap

    return unwrap(call_batch(transport, [(op, args)])[0], host=transport.label)


def error_of(result: Result, transport: Transport) -> OpError | None:
    """The OpError of a failed raw result, else None."""
    if result.get("ok"):
        return None
    return OpError.from_result(result.get("error"), transport.label)
