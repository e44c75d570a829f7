"""`seamless-service ps`: list services with their process and persistent state."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError

HELP = """\
List Seamless services: process state (running, starting, failed, stale) and, with
--persistent, the state and size of their data directories.

examples:
  seamless-service ps --local
  seamless-service ps --local --persistent --json
  seamless-service ps --local --status running --service hashserver
"""

FILTERS = ("service", "cluster", "project", "subproject", "stage", "substage", "mode", "queue")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ps", help="list services", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local", action="store_true",
                   help="this machine's services, read in-process (no SSH, no configuration)")
    for name in FILTERS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=name.upper(),
                       help=f"only rows whose {name} is {name.upper()}")
    p.add_argument("--status", choices=("running", "starting", "failed", "stale", "error"),
                   help="only rows with this process status")
    p.add_argument("--persistent", action="store_true",
                   help="also show data directories (state and size) of hashserver and database")
    p.add_argument("--health", action="store_true",
                   help="check running services: pid alive, port open, HTTP handshake")
    p.add_argument("--wide", action="store_true", help="add CLUSTER and KEY columns")
    p.add_argument("--json", action="store_true", help="print NDJSON rows instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.local:
        raise UsageError("only --local is available in this version (remote clusters come with the SSH client)")
    from ..local import LocalTransport
    from .ps_local import local_rows

    with LocalTransport() as transport:
        rows = local_rows(transport, args)
    print_rows(rows, args)
    return 0


def print_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from ..render import BASE_COLUMNS, ndjson, table

    if args.json:
        if rows:
            sys.stdout.write(ndjson(rows) + "\n")
        return
    columns = list(BASE_COLUMNS)
    if getattr(args, "wide", False):
        columns = ["CLUSTER"] + columns + ["KEY"]
    if getattr(args, "health", False):
        columns.append("HEALTH")
    sys.stdout.write(table(rows, columns) + "\n")
