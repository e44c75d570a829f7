"""`seamless-service`: entry point. Imports stay minimal; each subcommand imports what it needs."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import TYPE_CHECKING, NoReturn, Sequence

from ... import __version__
from ..errors import ServiceError
from .toplevel_help import DESCRIPTION  # one text: the thin client prints it without argparse

# The top-level modules of the [client] extra (pyproject.toml; tests/test_packaging.py keeps
# the two equal). A server-only install (`pip install seamless-service`, what a server's
# agent needs) lacks them: the commands that need them say how to install them.
CLIENT_MODULES = ("paramiko", "sshtunnel", "seamless_config")
CLIENT_INSTALL = "pip install 'seamless-service[client]' (from a checkout: pip install '.[client]')"

if TYPE_CHECKING:
    from .common import TransportFactory


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: argparse prints the whole usage block (a dozen
    lines for `ps`) before the error; a user needs the error and where to look."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="seamless-service", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"seamless-service {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import completion, demo_cmd, lifecycle_cmds, ps_cmd, service_cmds

    ps_cmd.add_parser(sub)
    service_cmds.add_parsers(sub)
    lifecycle_cmds.add_parsers(sub)
    demo_cmd.add_parser(sub)
    from ...agent.cli import add_agent_parser

    add_agent_parser(sub)
    _add_tunnel_parser(sub)
    completion.add_parser(sub, build_parser)
    _accept_debug_everywhere(parser)
    return parser


# The parser tree, built once per process and reused by every command (in the tunnel keeper,
# every warm command): building it costs ~8 ms, most of it argparse's gettext lookups (a
# few stat calls per help string). Kept with the builder that made it, so that replacing
# `build_parser` (tests do) builds anew. Reuse is safe because argparse keeps no per-parse
# state in the parser: parse_args fills a fresh Namespace from the actions' defaults each
# time, mutually exclusive groups track what was seen per call, append actions copy their
# default list, and no command changes the tree (they read `args`, never the parser).
_built: tuple[object, argparse.ArgumentParser] | None = None
_built_lock = threading.Lock()


def shared_parser() -> argparse.ArgumentParser:
    """build_parser()'s tree, built on the first call of this process (see _built)."""
    global _built
    with _built_lock:
        if _built is None or _built[0] is not build_parser:
            _built = (build_parser, build_parser())
        return _built[1]


def _accept_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--debug` after the subcommand too (`seamless-service ps --debug`): SUPPRESS keeps a
    subcommand from resetting the flag when it was given before the subcommand instead."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                if "--debug" not in child._option_string_actions:
                    child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                       help="show a traceback on errors")
                _accept_debug_everywhere(child)


def _add_tunnel_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tunnel", help="the per-user tunnel keeper (client daemon)",
        description="The tunnel keeper is a per-user background process that keeps SSH tunnels and agent\n"
                    "connections open between calls, so a warm command costs little more than starting\n"
                    "Python. It starts on demand and exits after 15 idle minutes.\n\n"
                    "examples:\n  seamless-service tunnel status\n  seamless-service tunnel stop",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("status", "stop"), help="show it, or stop it (closing its tunnels)")
    p.add_argument("--json", action="store_true", help="machine-readable status")
    p.set_defaults(func=_run_tunnel)


def _run_tunnel(args: argparse.Namespace) -> int:
    from ..keeper.client import tunnel_command

    return tunnel_command([args.action] + (["--json"] if args.json else []))


def missing_client_module(exc: BaseException) -> str | None:
    """The [client] module whose absence raised exc, else None (a bug: reported as such)."""
    if not isinstance(exc, ImportError):
        return None
    name = (exc.name or "").partition(".")[0]
    return name if name in CLIENT_MODULES else None


def main(argv: Sequence[str] | None = None, *, transport_factory: "TransportFactory | None" = None) -> int:
    """Run one command; its exit status. `transport_factory(host)` (host None: this machine),
    for tests only: every transport the command opens comes from it, e.g. a MockTransport."""
    parser = shared_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from ..config.client_config import ClientConfig
    from .common import transports_from  # loaded already, by the subcommands' parsers

    # What every command is handed besides its flags: the configuration, read at most once
    # for the command (on first use), and the command line as typed (the watch header).
    args.config = ClientConfig()
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    try:
        with transports_from(transport_factory):
            return int(args.func(args) or 0)
    except ServiceError as exc:
        if args.debug:
            raise
        print(f"seamless-service: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - a bug or an unmapped error: still one line
        if args.debug:
            raise
        missing = missing_client_module(exc)
        if missing:
            print(f"seamless-service: '{args.command}' needs the client side of seamless-service, not installed "
                  f"here (no module {missing!r}): {CLIENT_INSTALL}", file=sys.stderr)
            return 1
        detail = str(exc).splitlines()[0] if str(exc) else ""
        print(f"seamless-service: unexpected error: {type(exc).__name__}"
              + (f": {detail}" if detail else "") + " (run with --debug for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
