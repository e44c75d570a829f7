"""`seamless-service demo start|stop`: real demo services on this machine, for a first look."""

from __future__ import annotations

import argparse

HELP = """\
Start (or stop and remove) three demo services on this machine, launched through
remote-http-launcher as Seamless launches its own: a hashserver holding a few buffers and a
database with its seamless.db (the real ones when 'seamless-service[services]' is installed,
else a small built-in stand-in), and a "jobserver" in a stage (the built-in one). They
answer HTTP on 127.0.0.1 only.

A second `demo start` starts only what is not running (and says which were).

examples:
  seamless-service demo start
  seamless-service ps --local --persistent --health
  seamless-service logs --local --service hashserver --tail 5
  seamless-service inspect --local --service database
  seamless-service demo stop
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="start/stop demo services on this machine", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("start", "stop"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...demo import launch

    return launch.start() if args.action == "start" else launch.stop()
