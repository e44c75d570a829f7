"""`seamless-service ps`: a drop-in for `seamless-service-ps`, plus --watch, --health, --wide.

Same flags, modes, merged rows, columns and --json fields as seamless-config's
`seamless-service-ps`, with ONE agent round trip per host and all hosts asked
in parallel. Deliberate differences (see also client/query/rows.py and client/query/ps.py):

* #4   rows never collapse: ro/rw, subproject and substage variants keep their own rows.
* #5   default-view --persistent rows get project/subproject/stage and merge with process rows.
* #6   --status works in the client view (client rows carry the local server's status).
* #7   --status works with --all-clusters.
* #8   --all-clusters asks every cluster in parallel; a dead or broken cluster is one line
       on stderr, the other clusters' rows are still printed, and the exit code is 1;
       with --json the failure is also a `{"host", "cluster", "error"}` record on stdout.
       Clusters that reach one server (a shared ssh_hostname, or two ssh aliases: the
       agent's `ps` names the launcher state it read) show each row once, under the
       cluster its key names; a data root they share is not listed once per cluster.
* #9   buffer directories have real sizes (JSON: bytes; table: 42 MB; 42 MB* while the
       size is being re-measured after a change).
* #10  stage directories under a subproject are listed, labelled project + subproject.
* #11  cluster roots without a marker work under the agent's seamless marker policy.
* #34  --wide adds CLUSTER and KEY columns; port 0 shows as 0.
* --json rows all have the same fields (rows.JSON_FIELDS), whatever the view and flags;
  seamless-service-ps leaves `path` out of process rows.
* #37  --status drops persistent-only rows (they have no process); --status persistent keeps
       only the rows whose data directory is populated while no process runs.
* #40  client rows of services on this machine show the service's real status.
* --subproject/--substage/--mode/--queue also filter process rows (as for stop/rm --cluster);
  --status accepts only the statuses rows can have (`client`: a connection file whose
  service lives on another machine, liveness unknown here); a failed host or op exits 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ...protocol import schema
from ..errors import UsageError
from ..query.rows import PERSISTENT_STATUS
from ..transport.base import Transport
from .common import TransportOptions, add_selection_args, add_transport_args, open_for, selection_of

if TYPE_CHECKING:  # query/ps.py is imported when ps runs, not when the parser is built
    from ..config.client_config import ClientConfig
    from ..query.ps import PsRequest

HELP = """\
List Seamless services: process state (running, starting, failed, stale, client) and,
with --persistent, the state and size of their data directories. Same modes and rows as
seamless-service-ps:

  (default), --client       this machine's client files (the services this machine uses)
  --cluster C               the services on cluster C's frontend, with its data directories
  --server --cluster C      the services on cluster C's frontend only (inside a project,
                            C defaults to the cluster of its seamless.yaml, as for inspect)
  --client --cluster C      this machine's client files of cluster C
  --all-clusters            every configured cluster, asked in parallel
  --local                   this machine's services, no configuration needed

--status persistent lists the data directories that hold data while no process runs (the
launcher's `persistent` state: cached results a new service would start from).

SIZE is the data directory's total (the database file's size for a database). A size
marked with a trailing * is not fresh: it was measured before the directory last changed
and is being measured again (JSON: "size_state": "stale"). "pending" means not measured
yet.

--json prints one JSON object per line. Every row has the same fields, null where one does
not apply: service, cluster, project, stage, process, port, persistent, size (bytes), key,
path, mode, subproject, substage, host (null: this machine), size_state, health,
health_error, persistent_error, error. A host that could not be asked is a line of its own,
{"host": ..., "cluster": ..., "error": ...} (no "service" field), besides the line on stderr
and exit status 1.

examples:
  seamless-service ps --cluster mycluster
  seamless-service ps --cluster mycluster --persistent --json
  seamless-service ps --all-clusters --status running --health --wide
  seamless-service ps --cluster mycluster --watch
"""

# The agent's `ps` statuses, and ours for data directories without a process (rows.py).
STATUS_CHOICES = (*schema.STATUSES, PERSISTENT_STATUS)
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
    p.add_argument("--status", choices=STATUS_CHOICES,
                   help="only rows with this process status; `persistent`: data directories that hold "
                        "data while no process runs (no service, or a stale or failed one), as "
                        "remote-http-launcher names that state (implies --persistent)")
    p.add_argument("--persistent", action="store_true",
                   help="also show data directories (state and size) of hashserver and database")
    p.add_argument("--health", action="store_true",
                   help="check running services: pid alive, port open, HTTP handshake")
    p.add_argument("--wide", action="store_true", help="add CLUSTER and KEY columns")
    p.add_argument("--json", action="store_true",
                   help="print NDJSON rows (and failed hosts as records) instead of a table")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                   help="redraw when services change, at least every SECONDS (default 2); Ctrl-C ends")
    add_transport_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..query.ps import assemble, plan_queries, print_lines, problems_of, run_all

    if args.watch is not None and not 0 < args.watch <= MAX_WATCH:
        raise UsageError(f"--watch SECONDS must be more than 0 and at most {MAX_WATCH:g}")
    config = args.config
    request = request_of(args, config)
    if request.view == "local":
        from ..query.ps import Plan
        from .ps_local import LocalServerQuery

        plan = Plan()
        plan.queries[None] = LocalServerQuery(request)
    else:
        plan = plan_queries(request, config)
    print_lines(plan.warnings)
    opener = _Opener(TransportOptions.from_args(args), keep_open=args.watch is not None)
    try:
        if args.watch is not None:
            for query in plan.list():  # opening connects nothing; bad --transport is exit 2 here
                opener(query.host)
            return _watch(plan, opener, request, Output.from_args(args), interval=args.watch,
                          command=args.command_line)
        outcomes = run_all(plan.list(), opener, settle=True)
    finally:
        opener.close()
    problems = problems_of(plan, outcomes)
    rows = assemble(outcomes, request)
    if request.view == "local" and not rows and not problems:
        from .ps_local import check_cluster

        check_cluster(request.cluster, config)
    print_rows(rows, Output.from_args(args), problems)
    print_lines(problem.line for problem in problems)
    return 1 if problems else 0


def request_of(args: argparse.Namespace, config: "ClientConfig") -> "PsRequest":
    """The typed request below the CLI: the view the flags select, the filters, what to read.
    `ps --server` inside a project without --cluster takes the project's cluster."""
    from ..query.ps import PS_FILTERS, PsRequest, view_of

    filters = {name: getattr(args, name, None) for name in PS_FILTERS}
    if args.server and not filters["cluster"]:
        # Inside a project, the cluster its seamless.yaml / seamless.profile.yaml selects, as
        # the per-service commands take it (the seed's `ps --server --project P --status stale`);
        # None: PsRequest says --server requires --cluster.
        filters["cluster"] = config.project_cluster(selection_of(args))
    view = view_of(local=args.local, all_clusters=args.all_clusters, server=args.server, client=args.client,
                   cluster=filters["cluster"])
    return PsRequest(view, filters, frontend_name=args.frontend_name, status=args.status,
                     # --status persistent is about data directories: they must be read
                     persistent=args.persistent or args.status == PERSISTENT_STATUS, health=args.health)


@dataclass(frozen=True)
class Output:
    """How rows are printed: --json, --wide, --health (the HEALTH column)."""

    json: bool = False
    wide: bool = False
    health: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Output":
        return cls(json=bool(args.json), wide=bool(getattr(args, "wide", False)),
                   health=bool(getattr(args, "health", False)))


def _watch(plan: Any, opener: "_Opener", request: "PsRequest", output: Output, *, interval: float,
           command: Sequence[str]) -> int:
    from ..query.ps import assemble, problems_of
    from ..query.watch import Watch

    def frame(outcomes: list) -> tuple[str, list[str]]:
        problems = problems_of(plan, outcomes)
        return render_rows(assemble(outcomes, request), output, problems), [p.line for p in problems]

    words = [a for a in command if a]
    title = "seamless-service " + " ".join(words) if words else "seamless-service ps"
    watch = Watch(plan.list(), opener, frame, interval=interval, title=title,
                  out=sys.stdout, err=sys.stderr, json_mode=output.json)
    return watch.run()


class _Opener:
    """One transport per host for this command, closed at its end (the keeper's pooled
    transports outlive it: closing a lease leaves them open)."""

    def __init__(self, options: TransportOptions, *, keep_open: bool = False):
        self.options = options
        self.keep_open = keep_open
        self._opened: dict[str | None, Transport] = {}

    def __call__(self, host: str | None) -> Transport:
        transport = self._opened.get(host)
        if transport is None:
            transport = self._opened[host] = open_for(host, self.options)
        return transport

    def close(self) -> None:
        if self.keep_open:
            return  # watch threads may still be in a call; the process (or the pool) owns them
        for transport in self._opened.values():
            try:
                transport.close()  # a keeper pool lease stays open: close() is a no-op there
            except Exception:  # noqa: BLE001 - the rows are in; a failing close changes nothing
                pass


def render_rows(rows: list[dict[str, Any]], output: Output, problems: Sequence[Any] = ()) -> str:
    """The table, or NDJSON: every row with the same fields (rows.JSON_FIELDS), then one
    `{"host", "cluster", "error"}` record per failed host and cluster (the table has the
    failures on stderr only)."""
    from ..query.render import columns_for, ndjson, table
    from ..query.rows import public_row

    if output.json:
        records = [public_row(row) for row in rows]
        records += [record for problem in problems for record in problem.records()]
        return ndjson(records)
    return table(rows, columns_for(wide=output.wide, health=output.health))


def print_rows(rows: list[dict[str, Any]], output: Output, problems: Sequence[Any] = ()) -> None:
    text = render_rows(rows, output, problems)
    if text:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
