"""`seamless-service agent serve|start|status|stop`.

The main CLI (client/cli/main.py) wires these in with `add_agent_parser(subparsers)`; the
parser sets `func=run_agent_command`. `main()` here is the stand-alone fallback used by
`python -m seamless_service` on a server where the client side cannot be imported.
Imports stay light: only `serve` imports rpyc.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from .. import __version__
from . import defaults, paths

AGENT_HELP = """\
Manage the seamless-service agent of this user on this machine: a small server that
answers the seamless-service client over an SSH tunnel. It listens on 127.0.0.1 only, on a
free port, and every connection must prove the secret in
$REMOTE_HTTP_LAUNCHER_DIR/agent/secret (default ~/.remote-http-launcher/agent/secret).

examples:
  seamless-service agent start --json     start it in the background (or find the running one)
  seamless-service agent status           is it running? pid, port, version
  seamless-service agent stop             stop it and remove its state file
"""

SERVE_HELP = """\
Run the agent in the foreground until SIGTERM/SIGINT or the idle timeout. Its settings come
from <agent dir>/config.yaml (keys: path_policy, idle_timeout) unless a flag overrides them.
The agent makes a fresh secret each time it starts; it is never printed or logged.

example:
  seamless-service agent serve --idle-timeout 600 --path-policy marker:.seamless-data
"""

START_HELP = """\
Start the agent in the background and wait until it serves, or find the agent that already
runs (an agent of another version is stopped and replaced). Prints pid, port and the path
of the secret file (never the secret itself).

example:
  seamless-service agent start --json
  {"pid": 4242, "port": 40123, "reused": false, "secret_path": "...", ...}
"""

STATUS_HELP = """\
Show the running agent (pid, port, version, uptime). Exit status 1 if none runs, 3 if one
runs but clients cannot use it (its state file is missing or corrupt, or its port does not
answer as the agent): the message says what is wrong; `stop` stops it, `start` replaces it.

example:
  seamless-service agent status --json
"""

STOP_HELP = """\
Stop the running agent (SIGTERM, then SIGKILL if it does not exit) and remove its state
file and secret. Exit status 0 also when no agent was running.

example:
  seamless-service agent stop
"""

POLICY_HELP = ("path policy for destructive ops: 'seamless' (default), 'marker:NAME', 'permissive' "
               "or 'data-roots:FILE' (overrides path_policy in config.yaml)")
IDLE_HELP = "exit after this many seconds without calls or connections; 0 = never (default 3600)"


UNUSABLE = 3  # `status`: an agent runs, but clients cannot use it


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog)


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle-timeout", type=float, metavar="SECONDS", help=IDLE_HELP)
    parser.add_argument("--path-policy", metavar="SPEC", help=POLICY_HELP)


def add_agent_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `agent` with its subcommands to `subparsers`; returns the `agent` parser."""
    agent = subparsers.add_parser(
        "agent", help="start, stop or inspect the per-server agent", description=AGENT_HELP,
        formatter_class=_formatter)
    agent.set_defaults(func=run_agent_command, agent_command=None, _agent_parser=agent)
    sub = agent.add_subparsers(dest="agent_command", metavar="ACTION")

    serve = sub.add_parser("serve", help="run the agent in the foreground", description=SERVE_HELP,
                           formatter_class=_formatter)
    _policy_options(serve)
    serve.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free port)")
    serve.add_argument("--host", default=defaults.HOST,
                       help="address to listen on; only 127.0.0.1 is accepted (use an SSH tunnel)")
    serve.add_argument("--log-level", default="INFO", metavar="LEVEL",
                       help="DEBUG, INFO (default), WARNING or ERROR")
    serve.add_argument("--handshake-timeout", type=float, default=None, metavar="SECONDS",
                       help="seconds a new connection has to authenticate (default 5)")

    start = sub.add_parser("start", help="start the agent in the background (or find it)",
                           description=START_HELP, formatter_class=_formatter)
    _policy_options(start)
    start.add_argument("--timeout", type=float, default=defaults.START_TIMEOUT, metavar="SECONDS",
                       help="how long to wait for the agent to serve (default 10)")
    start.add_argument("--json", action="store_true", help="print the result as one JSON line")

    status = sub.add_parser("status", help="show the running agent", description=STATUS_HELP,
                            formatter_class=_formatter)
    status.add_argument("--json", action="store_true", help="print the state as one JSON line")
    _remote_host_options(status)

    stop = sub.add_parser("stop", help="stop the running agent", description=STOP_HELP,
                          formatter_class=_formatter)
    stop.add_argument("--timeout", type=float, default=defaults.STOP_TIMEOUT, metavar="SECONDS",
                      help="seconds to wait after SIGTERM before SIGKILL (default 10)")
    stop.add_argument("--json", action="store_true", help='print {"stopped": true|false}')
    _remote_host_options(stop)
    try:
        from ..deploy.cli import add_deploy_parser
    except ImportError:  # a server-only install may lack the deploy module's imports
        return agent
    add_deploy_parser(sub, _formatter)
    return agent


def _remote_host_options(parser: argparse.ArgumentParser) -> None:
    """An optional HOST: act on that server's agent over SSH instead of this machine's."""
    parser.add_argument("remote_host", nargs="?", metavar="HOST",
                        help="a remote host (ssh alias): act on its agent over SSH")
    try:
        from ..deploy.cli import add_ssh_options
    except ImportError:
        return
    add_ssh_options(parser)


def _error(message: str) -> None:
    print(f"seamless-service agent: {message}", file=sys.stderr)


def run_agent_command(args: argparse.Namespace) -> int:
    """Run the parsed `agent` subcommand; errors become one line on stderr and an exit status."""
    command = getattr(args, "agent_command", None)
    if command is None:
        parser = getattr(args, "_agent_parser", None)
        if parser is not None:
            parser.print_help(sys.stderr)
        return 2
    if getattr(args, "remote_host", None) or command == "deploy":
        from ..deploy.cli import run_remote

        return run_remote(args)
    from . import lifecycle  # here, not at import: building the parser must stay cheap

    base = paths.base_dir()
    try:
        if command == "serve":
            return _serve(args, base)
        if command == "start":
            return _start(args, base)
        if command == "status":
            return _status(args, base)
        if command == "stop":
            return _stop(args, base)
    except lifecycle.LifecycleError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user; the agent log keeps the traceback
        if command == "serve":
            import logging

            logging.getLogger("seamless_service.agent").exception("agent failed")
        _error(f"unexpected error: {type(exc).__name__}: {exc}")
        return 1
    _error(f"unknown agent command {command!r}")
    return 2


def _serve(args: argparse.Namespace, base: Any) -> int:
    from . import lifecycle

    from . import server  # imports rpyc: only `serve` pays for it
    from ..protocol.auth import HANDSHAKE_TIMEOUT

    server.setup_logging(args.log_level)
    handshake = HANDSHAKE_TIMEOUT if args.handshake_timeout is None else args.handshake_timeout
    if not handshake > 0:
        raise lifecycle.ConfigError("--handshake-timeout must be > 0")
    return server.serve(base, idle_timeout=args.idle_timeout, policy_spec=args.path_policy,
                        port=args.port, host=args.host, handshake_timeout=handshake)


def _describe(info: dict[str, Any]) -> str:
    idle = info.get("idle_timeout")
    idle_text = "never" if not idle else f"{idle:g} s"
    return (f"pid {info.get('pid')}, port {info.get('port')}, version {info.get('version')} "
            f"(protocol {info.get('protocol')}), idle timeout {idle_text}, path policy {info.get('path_policy')}")


def _start(args: argparse.Namespace, base: Any) -> int:
    from . import lifecycle

    info = lifecycle.start_detached(base, idle_timeout=args.idle_timeout, policy_spec=args.path_policy,
                                    timeout=args.timeout)
    if args.json:
        print(json.dumps(info, sort_keys=True))
    else:
        how = "already running" if info["reused"] else "started"
        print(f"agent {how}: {_describe(info)}; secret in {info['secret_path']}")
    return 0


def _status(args: argparse.Namespace, base: Any) -> int:
    from . import lifecycle

    info = lifecycle.status(base)
    if info is None:
        if args.json:
            print(json.dumps(None))
        _error("no agent running")
        return 1
    if info.get("problem"):
        if args.json:
            print(json.dumps(info, sort_keys=True))
        _error(f"agent pid {info['pid']} is running but clients cannot use it: {info['problem']}; "
               "`seamless-service agent stop` stops it, `seamless-service agent start` replaces it")
        return UNUSABLE
    if args.json:
        print(json.dumps(info, sort_keys=True))
    else:
        print(f"agent running: {_describe(info)}, up {info.get('uptime', 0):.0f} s; "
              f"state {info['state_path']}, log {info['log_path']}")
    return 0


def _stop(args: argparse.Namespace, base: Any) -> int:
    from . import lifecycle

    stopped = lifecycle.stop(base, timeout=args.timeout)
    if args.json:
        print(json.dumps({"stopped": stopped}))
    else:
        print("agent stopped" if stopped else "no agent running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seamless-service", formatter_class=_formatter,
                                     description="seamless-service (agent commands only)")
    parser.add_argument("--version", action="version", version=f"seamless-service {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_agent_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: `agent ...` only."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return run_agent_command(args)
