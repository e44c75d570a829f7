"""`ps` queries: what to ask each host (one batch per host), asking all hosts in parallel,
and turning the answers into the rows `seamless-service-ps` prints.

A `HostQuery` is the batch for one host: its parts are `ps` (process rows), `persistent`
(one op per data root) and `health`. `run()` sends them in ONE round trip; with `wait`
(watch mode) a `wait` op goes first in the same batch, so the agent answers when the state
changed (or the timeout passed) with the new rows already in the reply.

Two follow-ups, each only when needed:
* #10: the level-2 walk of a cluster root stops at `<root>/proj/sub`; stage directories of
  a subproject (`<root>/proj/sub/STAGE-x`) need one more level. Walking the whole root one
  level deeper would list every buffer prefix directory (a full walk of a big buffer dir),
  so only the subproject directories the first walk found are walked, in a second batch.
* Directory sizes come from the agent's background sizer; a directory it never measured
  (the first call after the agent started; always, for a short-lived in-process local
  transport) is "pending". Then only, the persistent ops are asked again once the sizes are
  in (bounded: settle_sizes).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable

from ..config.client_config import ClientConfig
from ..config.selection import Selection
from ..errors import ServiceError, UsageError
from ..transport.base import Op, Result, Transport
from .rows import (
    PERSISTENT_STATUS,
    attach_health,
    error_record,
    labels_from_path,
    merge_rows,
    one_per_directory,
    one_per_state,
    persistent_matches,
    persistent_row,
    process_row,
    status_matches,
)

PERSISTENT_OPTS: dict[str, dict[str, Any]] = {
    # service -> how seamless-service-ps asks rhl-ps-persistent about its data dirs
    "hashserver": {"level": 2, "marker": ".HASHSERVER_PREFIX"},
    "database": {"level": 2, "file": "seamless.db", "marker": "seamless.db"},
}
# Filters the agent's ps applies to process rows when given (seamless-service-ps applies
# only the first four; the others select the same rows as stop/rm --cluster do here).
PS_FILTERS = ("service", "cluster", "project", "subproject", "stage", "substage", "mode", "queue")
SETTLE_SECONDS = 10.0   # local transport: longest wait for this process's own sizer
SETTLE_REMOTE = 5.0     # remote agent: longest time spent re-asking for pending sizes
MAX_PARALLEL = 32


VIEWS = ("local", "all", "server", "cluster", "client")


@dataclass(frozen=True)
class PsRequest:
    """What `ps` was asked for, typed: which rows (view), the filters, what else to read.
    The CLI builds it from its flags (cli/ps_cmd.py); planning and assembling read only it."""

    view: str                                             # one of VIEWS: which rows, as seamless-service-ps decides
    filters: dict[str, str | None] = field(default_factory=dict)   # PS_FILTERS given (None: not)
    frontend_name: str | None = None
    status: str | None = None
    persistent: bool = False                              # also the data directories
    health: bool = False

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"unknown ps view {self.view!r}")
        if self.view == "server" and not self.cluster:
            raise UsageError("--server requires --cluster")

    @property
    def cluster(self) -> str | None:
        return self.filters.get("cluster")

    @property
    def service(self) -> str | None:
        return self.filters.get("service")

    def selection(self) -> Selection:
        """The filters as a selection to resolve (an unset --mode resolves as rw)."""
        given = {name: self.filters.get(name) for name in PS_FILTERS}
        return Selection(**{**given, "mode": given["mode"] or "rw"}, frontend_name=self.frontend_name)


@dataclass
class Part:
    """One op of a host's batch and how to read its result."""

    kind: str                              # "process" | "persistent" | "health"
    args: dict[str, Any]
    service: str | None = None             # persistent: which service's data
    cluster: str | None = None             # the cluster this op is about (None: any)
    clusters: tuple[str, ...] = ()         # process: clusters known to live on the host
    root: str | None = None                # persistent: labels are read below this root
    follow: bool = False                   # persistent: then walk the subproject dirs found (#10)

    @property
    def op(self) -> str:
        return "ps" if self.kind == "process" else self.kind


@dataclass
class HostError:
    """A host that failed (or an op of its batch, or a cluster whose definition is broken):
    one line on stderr, and with --json a record on stdout per cluster asked there."""

    label: str                                  # "cluster a, cluster b" / "this machine" / ssh host
    message: str                                # without the label
    host: str | None = None                     # None: this machine, or unknown
    clusters: tuple[str | None, ...] = (None,)  # the clusters asked there (None: none named)

    @property
    def line(self) -> str:
        return f"{self.label}: {self.message}"

    def records(self) -> list[dict[str, Any]]:
        return [error_record(self.host, cluster, self.message) for cluster in self.clusters]


@dataclass
class Outcome:
    """What one host answered."""

    query: "HostQuery"
    process: list[dict[str, Any]] = field(default_factory=list)
    persistent: list[dict[str, Any]] = field(default_factory=list)
    token: str | None = None
    state: str | None = None        # the launcher state the host's `ps` read (agent only)
    changed: bool = True
    errors: list[HostError] = field(default_factory=list)
    failed: bool = False                              # the host could not be asked at all
    wait_failed: bool = False                         # the host cannot long-poll (`wait`)


class HostQuery:
    """The batch for one host (None = this machine)."""

    def __init__(self, host: str | None, label: str, parts: list[Part] | None = None):
        self.host = host
        self.label = label
        self.parts: list[Part] = parts or []

    def add(self, part: Part) -> None:
        self.parts.append(part)

    def ops(self) -> list[Op]:
        return [(p.op, p.args) for p in self.parts]

    def error(self, message: str, part: Part | None = None) -> HostError:
        """This host's failure, for the clusters its parts are about (a failed op: the
        clusters that op is about)."""
        about = [part] if part is not None and (part.cluster or part.clusters) else self.parts
        names: dict[str | None, None] = {}
        for each in about:
            names.update(dict.fromkeys(each.clusters))
            if each.cluster:
                names[each.cluster] = None
        return HostError(self.label, message, self.host, tuple(names) or (None,))

    def run(self, transport: Transport, *, wait: tuple[str | None, float] | None = None,
            settle: bool = False) -> Outcome:
        """Ask the host (one round trip, plus the follow-ups described above)."""
        out = Outcome(self)
        ops = self.ops()
        if wait is not None:
            token, timeout = wait
            ops = [("wait", {"token": token, "timeout": timeout if token else 0.0})] + ops
        results = transport.batch(ops)
        if wait is not None:
            first, results = results[0], results[1:]
            if first.get("ok"):
                out.token = first["value"].get("token")
                out.changed = bool(first["value"].get("changed"))
            else:
                # e.g. the ssh transport (no agent, no long-poll): the watch falls back to
                # asking every SECONDS, which needs no error line in every frame
                out.wait_failed = True
        health: dict[str, dict[str, Any]] = {}
        asked: list[tuple[Part, dict[str, Any]]] = []   # persistent ops, to settle sizes
        for part, result in zip(self.parts, results):
            if not result.get("ok"):
                out.errors.append(self._message(part, result))
                continue
            value = result.get("value") or {}
            if part.kind == "process":
                out.process.extend(self.read_process(part, value.get("rows") or []))
                if out.token is None:
                    out.token = value.get("token")
                out.state = out.state or value.get("state")
            elif part.kind == "persistent":
                asked.append((part, part.args))
                out.persistent.extend(self.read_persistent(part, value.get("rows") or []))
            elif part.kind == "health":
                health.update({s.get("key"): s for s in value.get("services") or []})
        asked += self._follow_subprojects(transport, out)
        if settle and asked and _pending(out.persistent):
            self._settle(transport, out, asked)
        attach_health(out.process, health)
        return out

    # -- reading results ---------------------------------------------------------------

    def clusters(self) -> set[str]:
        """The clusters this host's process rows were asked for."""
        found: set[str] = set()
        for part in self.parts:
            if part.kind == "process":
                found.update(part.clusters)
                if part.cluster:
                    found.add(part.cluster)
        return found

    def read_process(self, part: Part, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [process_row(r, cluster=part.cluster, clusters=part.clusters, host=self.host) for r in rows]

    def read_persistent(self, part: Part, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [persistent_row(r, part.service or "", part.cluster, root=part.root, host=self.host)
                for r in rows]

    def _message(self, part: Part, result: Result) -> HostError:
        error = result.get("error") or {}
        message = str(error.get("message") or error.get("code") or "unknown error")
        if not message.startswith(f"{part.op}:"):
            message = f"{part.op}: {message}"
        return self.error(message, part)

    # -- follow-ups --------------------------------------------------------------------

    def _follow_subprojects(self, transport: Transport, out: Outcome) -> list[tuple[Part, dict[str, Any]]]:
        """#10: walk the subproject directories the root walk found, one level deeper."""
        follow: list[tuple[Part, dict[str, Any]]] = []
        for part in self.parts:
            if part.kind != "persistent" or not part.follow or not part.root:
                continue
            subdirs = [r["path"] for r in out.persistent
                       if r.get("service") == part.service and r.get("cluster") == part.cluster
                       and r.get("persistent") in ("empty", "populated") and r.get("path")
                       and _is_subproject_dir(r["path"], part.root)]
            for start in range(0, len(subdirs), 64):  # the op takes at most 64 paths
                args = dict(part.args, paths=subdirs[start:start + 64], level=1)
                follow.append((part, args))
        if not follow:
            return []
        results = transport.batch([("persistent", args) for _, args in follow])
        known = {_reading(r) for r in out.persistent}
        for (part, _), result in zip(follow, results):
            if not result.get("ok"):
                out.errors.append(self._message(part, result))
                continue
            for row in self.read_persistent(part, (result.get("value") or {}).get("rows") or []):
                if _reading(row) not in known:
                    out.persistent.append(row)
        return follow

    def _settle(self, transport: Transport, out: Outcome, asked: list[tuple[Part, dict[str, Any]]]) -> None:
        """Sizes never measured yet: ask the persistent ops again once they are (bounded)."""

        def ask() -> list[dict[str, Any]] | None:
            results = transport.batch([("persistent", args) for _, args in asked])
            rows: list[dict[str, Any]] = []
            seen: set[tuple] = set()
            for (part, _), result in zip(asked, results):
                if not result.get("ok"):
                    return None  # keep what we had; the error was reported the first time
                for row in self.read_persistent(part, (result.get("value") or {}).get("rows") or []):
                    if _reading(row) not in seen:
                        seen.add(_reading(row))
                        rows.append(row)
            return rows

        rows = settle_sizes(transport, ask)
        if rows is not None:
            out.persistent = rows


def _reading(row: dict[str, Any]) -> tuple:
    """One directory as read for one cluster: two clusters sharing a data root each keep
    their reading here (which one shows is decided with the process rows, in assemble)."""
    return row.get("cluster"), row.get("service"), row.get("path")


def _pending(rows: Iterable[dict[str, Any]]) -> bool:
    return any(row.get("size_state") == "pending" for row in rows)


def settle_sizes(transport: Transport, ask: Callable[[], list[dict[str, Any]] | None]) -> list[dict[str, Any]] | None:
    """New rows from `ask()` once the agent's sizer measured what it had never measured, or
    None (nothing better). A poll never waits for a walk on the agent, so a directory seen
    for the first time (the first call after the agent started) says "pending":
    * in-process (local transport): wait for its sizer to finish, then ask once;
    * remote agent: ask again a few times, at most SETTLE_REMOTE seconds in all; a walk
      that takes longer stays "pending" (the next call, or the next --watch round, has it).
    """
    measured = transport.wait_sizes(SETTLE_SECONDS)
    if measured is not None:
        return ask() if measured else None
    from ..transport.pool import default_pool

    deadline = time.monotonic() + SETTLE_REMOTE
    pause, rows = 0.1, None
    while time.monotonic() + pause < deadline:
        if default_pool.wait_cancelled(pause):
            break
        rows = ask()
        if rows is None or not _pending(rows):
            break
        pause = min(pause * 2, 1.0)
    return rows


def _is_subproject_dir(path: str, root: str) -> bool:
    """`<root>/proj/sub`: two levels below the root, not a stage directory."""
    project, subproject, stage = labels_from_path(path, root)
    return project is not None and subproject is not None and stage is None and "/" not in subproject


# -- running queries --------------------------------------------------------------------


Opener = Callable[[str | None], Transport]  # host (None: this machine) -> its transport


def run_one(query: HostQuery, opener: Opener, *, settle: bool = False,
            wait: tuple[str | None, float] | None = None) -> Outcome:
    """Open (or reuse) the host's transport and ask; a failure becomes an Outcome, never
    an exception, so one dead host never hides the others (#8)."""
    try:
        transport = opener(query.host)
        return query.run(transport, settle=settle, wait=wait)
    except UsageError:
        raise  # e.g. --transport local for a remote host: the command line is wrong (exit 2)
    except (ServiceError, OSError, EOFError, TimeoutError) as exc:
        return Outcome(query, errors=[query.error(_one_line(exc))], failed=True)


def run_all(queries: list[HostQuery], opener: Opener, *, settle: bool = False) -> list[Outcome]:
    """Every host at once (threads: the work is waiting on sockets); outcomes in query order."""
    if len(queries) <= 1:
        return [run_one(q, opener, settle=settle) for q in queries]
    with ThreadPoolExecutor(max_workers=min(len(queries), MAX_PARALLEL), thread_name_prefix="ps") as pool:
        return list(pool.map(lambda q: run_one(q, opener, settle=settle), queries))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- assembling rows ----------------------------------------------------------------------


def assemble(outcomes: Iterable[Outcome], request: PsRequest) -> list[dict[str, Any]]:
    """Process rows (host order, file order), joined with persistent rows (#5), then the
    persistent rows no process row claimed (dropped with --status: they have no process,
    #37). Hosts that are one server (same agent state: two ssh aliases, or clusters sharing
    a frontend) give each row once, under the cluster its key names."""
    outcomes = list(outcomes)
    filters = request.filters
    states = [o.state or ("query", i) for i, o in enumerate(outcomes)]
    process = one_per_state((state, o.query.clusters(), o.process) for state, o in zip(states, outcomes))
    persistent = one_per_directory(((state, row) for state, o in zip(states, outcomes) for row in o.persistent
                                    if persistent_matches(row, filters)), process)
    rows = merge_rows(process, persistent)
    if request.status:
        rows = [row for row in rows if status_matches(row, request.status)]
    return rows


def errors_of(outcomes: Iterable[Outcome]) -> list[str]:
    """The stderr lines (without the program prefix) of the hosts that failed."""
    return [error.line for o in outcomes for error in o.errors]


def problems_of(plan: "Plan", outcomes: Iterable[Outcome]) -> list[HostError]:
    """Everything that failed: cluster definitions while planning, then hosts and ops;
    each once, as parts of one host fail alike (both data roots of a host without
    rhl-ps-persistent said the same line twice)."""
    problems = plan.failures + [error for o in outcomes for error in o.errors]
    unique: dict[tuple, HostError] = {}
    for problem in problems:
        unique.setdefault((problem.line, problem.host, problem.clusters), problem)
    return list(unique.values())


# -- building queries -------------------------------------------------------------------


def view_of(*, local: bool = False, all_clusters: bool = False, server: bool = False,
            client: bool = False, cluster: str | None = None) -> str:
    """Which rows ps shows, as seamless-service-ps decides, from its mutually exclusive flags."""
    if local:
        return "local"
    if all_clusters:
        return "all"
    if server:
        return "server"
    if cluster and not client:
        return "cluster"
    return "client"


def ps_args(request: PsRequest, *, side: str, cluster: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"side": side}
    for name, value in request.filters.items():
        if value is not None:
            out[name] = value
    if cluster is not None:
        out["cluster"] = cluster
    if request.status and request.status != PERSISTENT_STATUS:  # not a process status: see rows.py
        out["status"] = request.status
    return out


def persistent_part(service: str, cluster: str | None, path: str, root: str | None, *,
                    follow: bool) -> Part:
    opts = PERSISTENT_OPTS[service]
    args: dict[str, Any] = {"paths": [path], "level": opts["level"], "marker": opts["marker"]}
    if "file" in opts:
        args["file"] = opts["file"]
    return Part("persistent", args, service=service, cluster=cluster, root=root, follow=follow)


def wanted_services(request: PsRequest) -> list[str]:
    return [s for s in PERSISTENT_OPTS if request.service in (None, s)]


class Plan:
    """Queries by host, in first-use order, plus warnings found while planning."""

    def __init__(self) -> None:
        self.queries: dict[str | None, HostQuery] = {}
        self.warnings: list[str] = []     # printed, exit code unchanged
        self.failures: list[HostError] = []   # printed, exit code 1 (a cluster we could not ask)

    def query(self, host: str | None, label: str) -> HostQuery:
        query = self.queries.get(host)
        if query is None:
            query = self.queries[host] = HostQuery(host, label)
        elif label not in query.label.split(", "):
            query.label = f"{query.label}, {label}"
        return query

    def list(self) -> list[HostQuery]:
        return [q for q in self.queries.values() if q.parts]


def _cluster_label(cluster: str) -> str:
    return f"cluster {cluster}"


def plan_queries(request: PsRequest, config: ClientConfig) -> Plan:
    """The per-host batches for this request (hosts and roots from the command's config)."""
    view, cluster = request.view, request.cluster
    plan = Plan()
    persistent = request.persistent or (view == "cluster" and request.status in (None, PERSISTENT_STATUS))
    if view in ("cluster", "server"):
        assert cluster is not None   # PsRequest says so
        host = config.cluster_host(cluster, request.frontend_name)
        query = plan.query(host, _cluster_label(cluster))
        query.add(Part("process", ps_args(request, side="server", cluster=cluster),
                       cluster=cluster, clusters=(cluster,)))
        if persistent:
            _add_cluster_persistent(plan, request, config, cluster, host)
        if request.health:
            query.add(Part("health", {}))
    elif view == "all":
        _plan_all_clusters(plan, request, config, persistent=persistent)
    else:  # client views: this machine's client files
        local = plan.query(None, "this machine")
        local.add(Part("process", ps_args(request, side="client", cluster=cluster), cluster=cluster,
                       clusters=(cluster,) if cluster else ()))
        if request.health:
            local.add(Part("health", {}))
        if request.persistent:
            if cluster:
                _add_cluster_persistent(plan, request, config, cluster,
                                        config.cluster_host(cluster, request.frontend_name))
            else:
                _add_resolved_persistent(plan, request, config)
    return plan


def _add_cluster_persistent(plan: Plan, request: PsRequest, config: ClientConfig, cluster: str,
                            host: str | None) -> None:
    """The data roots of the cluster's frontend, walked two levels deep, as seamless-service-ps does."""
    roots = config.cluster_roots(cluster, request.frontend_name)
    query = plan.query(host, _cluster_label(cluster))
    for service in wanted_services(request):
        root = roots.get(service)
        if root:
            query.add(persistent_part(service, cluster, root, root, follow=True))


def _plan_all_clusters(plan: Plan, request: PsRequest, config: ClientConfig, *, persistent: bool) -> None:
    """One batch per host: clusters sharing a host share one `ps` (their rows appear once)."""
    hosts: dict[str | None, list[str]] = {}
    clusters = config.cluster_names()
    if not clusters:  # an empty table with exit 0 would read as "nothing runs anywhere"
        raise UsageError("--all-clusters: no clusters defined in ~/.seamless/clusters.yaml "
                         "(describe one there, or use ps --local for this machine's services)")
    for cluster in clusters:
        try:
            host = config.cluster_host(cluster, request.frontend_name)
            roots = config.cluster_roots(cluster, request.frontend_name) if persistent else {}
        except ServiceError as exc:  # a broken cluster definition: say so, show the others
            plan.failures.append(HostError(_cluster_label(cluster), str(exc), None, (cluster,)))
            continue
        hosts.setdefault(host, []).append(cluster)
        query = plan.query(host, _cluster_label(cluster))
        for service in wanted_services(request) if persistent else ():
            root = roots.get(service)
            if root:
                query.add(persistent_part(service, cluster, root, root, follow=True))
    for host, clusters in hosts.items():
        query = plan.queries[host]
        query.parts.insert(0, Part("process", ps_args(request, side="server"), clusters=tuple(clusters)))
        if request.health:
            query.add(Part("health", {}))


def _add_resolved_persistent(plan: Plan, request: PsRequest, config: ClientConfig) -> None:
    """Default view --persistent: the workdirs of this project's hashserver and database,
    resolved from the cwd, labelled by their place below the data root (#5)."""
    base = request.selection()
    for service in wanted_services(request):
        sel = Selection(**{**base.__dict__, "service": service})
        try:
            resolved = config.resolve(sel)
        except ServiceError as exc:  # as seamless-service-ps: say so and go on
            plan.warnings.append(f"persistent {service}: {exc}")
            continue
        if not resolved.workdir:
            continue
        path = resolved.local_workdir() or resolved.workdir
        label = resolved.ssh_host or "this machine"
        query = plan.query(resolved.ssh_host, label)
        query.add(persistent_part(service, resolved.cluster, path, data_root(path, resolved.meta),
                                  follow=False))


def data_root(workdir: str, meta: dict[str, Any]) -> str:
    """The data root a resolved workdir lies under: the workdir minus
    `/<project>[/<subproject>][/STAGE-<stage>]`; the workdir itself if it does not end so."""
    project = meta.get("project")
    tail: list[str] = [project] if project else []
    if meta.get("subproject"):
        tail += str(meta["subproject"]).split("/")
    if meta.get("stage"):
        tail.append(f"STAGE-{meta['stage']}")
    parts = PurePosixPath(workdir).parts
    if tail and len(parts) > len(tail) and list(parts[-len(tail):]) == tail:
        return str(PurePosixPath(*parts[: -len(tail)]))
    return workdir


def print_lines(lines: Iterable[str], stream: Any = None) -> None:
    stream = stream or sys.stderr
    for line in lines:
        print(f"seamless-service: {line}", file=stream)
