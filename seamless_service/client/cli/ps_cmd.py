"""`seamless-service ps`: a drop-in for `seamless-service-ps`, plus --watch, --health, --wide.

Same flags, modes, merged rows, columns and --json fields as seamless-config's
`seamless-service-ps` (anchor §4.6), with ONE agent round trip per host and all hosts asked
in parallel. Deliberate differences (see also client/rows.py and client/ps_query.py):

* #4   rows never collapse: ro/rw, subproject and substage variants keep their own rows.
* #5   default-view --persistent rows get project/subproject/stage and merge with process rows.
* #6   --status works in the client view (client rows carry the local server's status).
* #7   --status works with --all-clusters.
* #8   --all-clusters asks every cluster in parallel; a dead or broken cluster is one line
       on stderr, the other clusters' rows are still printed, and the exit code is 1.
       Clusters that reach one server (a shared ssh_hostname, or two ssh aliases: the
       agent's `ps` names the launcher state it read) show each row once, under the
       cluster its key names; a data root they share is not listed once per cluster.
* #9   buffer directories have real sizes (JSON: bytes; table: 42 MB; 42 MB* while the
       size is being re-measured after a change).
* #10  stage directories under a subproject are listed, labelled project + subproject.
* #11  cluster roots without a marker work under the agent's seamless marker policy.
* #34  --wide adds CLUSTER and KEY columns; port 0 shows as 0.
* #37  --status drops persistent-only rows (they have no process).
* #40  client rows of services on this machine show the service's real status.
* --subproject/--substage/--mode/--queue also filter process rows (as for stop/rm --cluster);
  --status accepts only the statuses rows can have (`client`: a connection file whose
  service lives on another machine, liveness unknown here); a failed host or op exits 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError
from .common import add_selection_args, add_transport_args

HELP = """\
List Seamless services: process state (running, starting, failed, stale, client) and,
with --persistent, the state and size of their data directories. Same modes and rows as
seamless-service-ps:

  (default), --client       this machine's client files (the services this machine uses)
  --cluster C               the services on cluster C's frontend, with its data directories
  --server --cluster C      the services on cluster C's frontend only
  --client --cluster C      this machine's client files of cluster C
  --all-clusters            every configured cluster, asked in parallel
  --local                   this machine's services, no configuration needed

SIZE is the data directory's total (the database file's size for a database). A size
marked with a trailing * is not fresh: it was measured before the directory last changed
and is being measured again (JSON: "size_state": "stale"). "pending" means not measured
yet.

examples:
  seamless-service ps --cluster mycluster
  seamless-service ps --cluster mycluster --persistent --json
  seamless-service ps --all-clusters --status running --health --wide
  seamless-service ps --cluster mycluster --watch
"""

STATUSES = ("running", "starting", "failed", "stale", "error", "client")
MAX_WATCH = 60.0  # the agent's longest `wait`


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ps", help="list services", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_selection_args(p)
    side = p.add_mutually_exclusive_group()
    side.add_argument("--client", action="store_true", help="this machine's client files (the default)")
    side.add_argument("--server", action="store_true", help="the cluster's services (needs --cluster)")
    side.add_argument("--all-clusters", dest="all_clusters", action="store_true",
                      help="every configured cluster, in parallel")
    side.add_argument("--local", action="store_true",
                      help="this machine's services, read in-process (no SSH, no configuration)")
    p.add_argument("--status", choices=STATUSES, help="only rows with this process status")
    p.add_argument("--persistent", action="store_true",
                   help="also show data directories (state and size) of hashserver and database")
    p.add_argument("--health", action="store_true",
                   help="check running services: pid alive, port open, HTTP handshake")
    p.add_argument("--wide", action="store_true", help="add CLUSTER and KEY columns")
    p.add_argument("--json", action="store_true", help="print NDJSON rows instead of a table")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                   help="redraw when services change, at least every SECONDS (default 2); Ctrl-C ends")
    add_transport_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ps_query import assemble, errors_of, plan_queries, print_lines, run_all

    if args.watch is not None and not 0 < args.watch <= MAX_WATCH:
        raise UsageError(f"--watch SECONDS must be more than 0 and at most {MAX_WATCH:g}")
    if args.local:
        from ..ps_query import Plan
        from .ps_local import LocalServerQuery

        plan = Plan()
        plan.queries[None] = LocalServerQuery(args)
    else:
        plan = plan_queries(args)
    print_lines(plan.warnings)
    opener = _Opener(args)
    try:
        if args.watch is not None:
            for query in plan.list():  # opening connects nothing; bad --transport is exit 2 here
                opener(query.host)
            return _watch(plan, opener, args)
        outcomes = run_all(plan.list(), opener, settle=True)
    finally:
        opener.close()
    rows = assemble(outcomes, args)
    if args.local and not rows and not errors_of(outcomes):
        from .ps_local import check_cluster

        check_cluster(args.cluster)
    print_rows(rows, args)
    errors = plan.failures + errors_of(outcomes)
    print_lines(errors)
    return 1 if errors else 0


def _watch(plan: Any, opener: "_Opener", args: argparse.Namespace) -> int:
    from ..ps_query import assemble, errors_of
    from ..watch import Watch

    def frame(outcomes: list) -> tuple[str, list[str]]:
        return render_rows(assemble(outcomes, args), args), plan.failures + errors_of(outcomes)

    argv = [a for a in sys.argv[1:] if a] if sys.argv else []
    title = "seamless-service " + " ".join(argv) if argv else "seamless-service ps"
    watch = Watch(plan.list(), opener, frame, interval=args.watch, title=title,
                  out=sys.stdout, err=sys.stderr, json_mode=args.json)
    return watch.run()


class _Opener:
    """One transport per host for this command, closed at its end (the daemon's pooled
    transports outlive it: closing a lease leaves them open)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._opened: dict[str | None, Any] = {}

    def __call__(self, host: str | None) -> Any:
        transport = self._opened.get(host)
        if transport is None:
            from .common import open_for

            transport = self._opened[host] = open_for(host, self.args)
        return transport

    def close(self) -> None:
        if self.args.watch is not None:
            return  # watch threads may still be in a call; the process (or the pool) owns them
        for transport in self._opened.values():
            try:
                transport.close()  # a daemon pool lease stays open: close() is a no-op there
            except Exception:  # noqa: BLE001 - the rows are in; a failing close changes nothing
                pass


def render_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    from ..render import columns_for, ndjson, table
    from ..rows import public_row

    if args.json:
        return ndjson(public_row(row) for row in rows)
    return table(rows, columns_for(wide=args.wide, health=args.health))


def print_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    text = render_rows(rows, args)
    if text:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
