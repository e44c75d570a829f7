"""The ps row model: agent rows -> the rows `seamless-service-ps` prints, and merging them.

A row has the fields of `seamless-service-ps --json` (service, cluster, project, stage,
process, port, persistent, size, key, path) plus ours: mode, subproject, substage, host
(where the row was read: the ssh host, null = this machine; for client rows the client
file's ssh host), size_state (fresh/stale/pending/error for directory sizes), health /
health_error (with --health), persistent_error (ps --local: its data directory could not
be asked) and error (the state file or directory could not be read). `size` stays in bytes
(JSON); the table shows human units.

Every row printed by `ps --json` has exactly JSON_FIELDS, null where a field does not apply
(seamless-service-ps leaves `path` out of process rows; a script should not have to guess
which fields a row has). --wide, --health, --persistent and the view change values, never
the set. A host that could not be asked is a record of another shape, ERROR_RECORD_FIELDS
(see error_record): it has no `service`.

Deliberate differences from seamless-config (numbered as in the README's table):
* #4: rows never collapse. Process rows are identified by their key; ro/rw, subproject and
  substage variants of one project each keep their row.
* #5/#10: persistent information is attached to *every* process row of the same service,
  cluster, project, subproject and stage; a persistent directory with no process row gets a
  row of its own; a `proj/sub/...` path gives project `proj` and subproject `sub`.
* #9: `size` is the real size in bytes for buffer directories too (from the agent's sizer).
"""

from __future__ import annotations

import functools
from pathlib import PurePosixPath
from typing import Any, Collection, Hashable, Iterable

from ...protocol.keys import (
    PROJECT_TOPLEVEL,
    SEAMLESS_CACHE_ALIAS,
    SEAMLESS_CACHE_CLUSTER,
    key_readings,
    row_meta,
)
from ...rhl import CLIENT, FAILED, STALE

ROW_FIELDS = ("service", "cluster", "project", "stage", "process", "port", "persistent", "size", "key")
# Every `ps --json` row has exactly these (seamless-service-ps's, `path` included, then ours).
JSON_FIELDS = ROW_FIELDS + ("path", "mode", "subproject", "substage", "host", "size_state",
                            "health", "health_error", "persistent_error", "error")
# A host (or a cluster definition) that failed, in --json output beside the rows.
ERROR_RECORD_FIELDS = ("host", "cluster", "error")
# Filters compared with persistent rows (they have no mode, substage or queue).
PERSISTENT_FILTERS = ("service", "cluster", "project", "subproject", "stage")


def display_project(project: Any, cluster: Any) -> Any:
    if project == PROJECT_TOPLEVEL and cluster == SEAMLESS_CACHE_CLUSTER:
        return SEAMLESS_CACHE_ALIAS
    return project


def _meta_for(row: dict[str, Any], clusters: Collection[str]) -> dict[str, Any]:
    """The row's meta; for a key without meta, the reading whose cluster is one we asked
    about (a cluster named `a-rw-b` is not mis-split, #30), else the first reading."""
    meta = row_meta(row)
    if clusters and meta.get("cluster") not in clusters and not row.get("meta"):
        for reading in key_readings(row.get("key")):
            if reading.get("cluster") in clusters:
                return reading
    return meta


def process_row(agent_row: dict[str, Any], *, cluster: str | None = None,
                clusters: Collection[str] = (), host: str | None = None) -> dict[str, Any]:
    """A display row from one `ps` row (server or client side) of the agent.

    `cluster`/`clusters`: the cluster(s) whose host was asked, to read keys right.
    `host`: where the row was read (server rows); client rows carry their own ssh host."""
    known = set(clusters) | ({cluster} if cluster else set())
    meta = _meta_for(agent_row, known)
    status = agent_row.get("status")
    # Client rows carry `process` from the agent (the local server's status when it is known,
    # fixing #6/#40); server rows have a derived status.
    process = agent_row.get("process") or status or (CLIENT if agent_row.get("port") is not None else None)
    client_side = "process" in agent_row
    row = {
        "service": meta.get("service"),
        "cluster": meta.get("cluster"),
        "project": display_project(meta.get("project"), meta.get("cluster")),
        "stage": meta.get("stage"),
        "process": process,
        "port": agent_row.get("port"),
        "persistent": None,
        "size": None,
        "key": agent_row.get("key"),
        "mode": meta.get("mode"),
        "subproject": meta.get("subproject"),
        "substage": meta.get("substage"),
        "host": agent_row.get("ssh_host") if client_side else host,
    }
    if agent_row.get("error"):
        row["error"] = agent_row["error"]
    return row


def _path_parts(path: str, root: str | None) -> list[str]:
    path_obj = PurePosixPath(path)
    if root:
        root_obj = PurePosixPath(root)
        try:
            return list(path_obj.relative_to(root_obj).parts)
        except ValueError:
            # a `~/...` root comes back expanded: find the root's tail inside the path
            root_parts = root_obj.parts[1:] if root_obj.parts[:1] == ("~",) else root_obj.parts
            parts = path_obj.parts
            for i in range(len(parts) - len(root_parts) + 1):
                if parts[i:i + len(root_parts)] == root_parts:
                    return list(parts[i + len(root_parts):])
    name = path.rstrip("/").split("/")[-1]
    return [name] if name else []


# Kept per process: a pure function of two strings, asked twice for each data directory of
# every `ps --persistent` (PurePosixPath's parsing made it ~1 ms of a warm command), and the
# tunnel keeper asks about the same directories command after command.
@functools.lru_cache(maxsize=4096)
def labels_from_path(path: str, root: str | None) -> tuple[str | None, str | None, str | None]:
    """(project, subproject, stage) of a data directory below `root`:
    `<root>/proj[/sub/...][/STAGE-s]`."""
    parts = _path_parts(path, root)
    stage = None
    project_parts = parts
    for i, part in enumerate(parts):
        if part.startswith("STAGE-"):
            stage = part[len("STAGE-"):]
            project_parts = parts[:i]
            break
    if not project_parts:
        return None, None, stage
    return project_parts[0], "/".join(project_parts[1:]) or None, stage


def persistent_row(prow: dict[str, Any], service: str, cluster: str | None, *,
                   root: str | None = None, project: str | None = None,
                   subproject: str | None = None, stage: str | None = None,
                   host: str | None = None) -> dict[str, Any]:
    """A display row from one `persistent` row. Project/subproject/stage come from the path
    below `root`, unless the caller knows them (a resolved workdir)."""
    if project is None and stage is None:
        project, subproject, stage = labels_from_path(prow.get("path") or "", root)
    size = prow.get("bytes") if prow.get("bytes") is not None else prow.get("size")
    row = {
        "service": service,
        "cluster": cluster,
        "project": display_project(project, cluster),
        "stage": stage,
        "process": None,
        "port": None,
        "persistent": prow.get("state"),
        "size": size,
        "key": None,
        "path": prow.get("path"),
        "mode": None,
        "subproject": subproject,
        "substage": None,
        "host": host,
        "size_state": prow.get("bytes_state"),
    }
    if prow.get("error"):
        row["error"] = prow["error"]
    return row


def persistent_matches(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Filters on a persistent row's derived fields (seamless-config: service/cluster/
    project/stage; ours adds subproject). `SEAMLESS_CACHE` and `__TOPLEVEL__` both select
    the cache's top level."""
    for name in PERSISTENT_FILTERS:
        wanted = filters.get(name)
        if wanted is None:
            continue
        actual = row.get(name)
        if name == "project" and wanted in (SEAMLESS_CACHE_ALIAS, PROJECT_TOPLEVEL):
            if actual == SEAMLESS_CACHE_ALIAS and row.get("cluster") == SEAMLESS_CACHE_CLUSTER:
                continue
        if actual != wanted:
            return False
    return True


def _place(row: dict[str, Any]) -> tuple:
    return (row.get("service"), row.get("cluster"), row.get("project"), row.get("subproject"), row.get("stage"))


def one_per_state(sources: Iterable[tuple[Hashable, Collection[str], list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Process rows of several hosts, each `(state, clusters asked there, rows)`: a key read
    from one launcher state under several names (two clusters whose frontends are one
    server, two ssh aliases of it) is ONE row, in the place of its first reading, labelled
    with the cluster its key names among all clusters asked of that state (#30: a key that
    reads several ways takes the reading of a cluster asked about). A key naming no cluster
    asked about keeps its own reading, as seamless-service-ps shows it."""
    sources = list(sources)
    asked: dict[Hashable, set[str]] = {}
    readings: dict[tuple[Hashable, str], list[dict[str, Any]]] = {}
    for state, clusters, rows in sources:
        asked.setdefault(state, set()).update(clusters)
        for row in rows:
            if row.get("key") is not None:
                readings.setdefault((state, row["key"]), []).append(row)
    out: list[dict[str, Any]] = []
    done: set[tuple[Hashable, str]] = set()
    for state, _, rows in sources:
        for row in rows:
            ident = (state, row.get("key"))
            if row.get("key") is None:
                out.append(row)
            elif ident not in done:
                done.add(ident)
                same = readings[ident]
                out.append(next((r for r in same if r.get("cluster") in asked[state]), same[0]))
    return out


def one_per_directory(sources: Iterable[tuple[Hashable, dict[str, Any]]],
                      process_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Persistent rows, each `(state, row)`: a data directory read several times from one
    machine (two clusters with the same data root) keeps the readings whose labels place
    it with a process row (each service using it shows it), else only its first one."""
    places = {_place(row) for row in process_rows}
    readings: dict[tuple, list[dict[str, Any]]] = {}
    for state, row in sources:
        ident = (state, row.get("service"), row.get("path")) if row.get("path") else (id(row),)
        readings.setdefault(ident, []).append(row)
    out: list[dict[str, Any]] = []
    for same in readings.values():
        out.extend([row for row in same if _place(row) in places] or same[:1])
    return out


def merge_rows(process_rows: Iterable[dict[str, Any]], persistent_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Process rows in order, each joined with its persistent data; then unmatched persistent rows."""
    rows = [dict(r) for r in process_rows]
    by_place: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        by_place.setdefault(_place(row), []).append(row)
    extra: list[dict[str, Any]] = []
    seen_extra: set[tuple] = set()
    for prow in persistent_rows:
        targets = by_place.get(_place(prow))
        if targets:
            for target in targets:
                if target.get("persistent") is None:
                    target["persistent"] = prow.get("persistent")
                    target["size"] = prow.get("size")
                    target["path"] = prow.get("path")
                    target["size_state"] = prow.get("size_state")
        elif (_place(prow), prow.get("path")) not in seen_extra:
            seen_extra.add((_place(prow), prow.get("path")))
            extra.append(dict(prow))
    return rows + extra


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row as printed by --json: exactly JSON_FIELDS, None where the row has no value
    (private `_` fields are not among them)."""
    return {name: row.get(name) for name in JSON_FIELDS}


def error_record(host: str | None, cluster: str | None, error: str) -> dict[str, Any]:
    """A failed host in --json output: `{"host", "cluster", "error"}` (host null: this
    machine, or not known because the cluster's definition is broken). Rows always have
    `service`; these records never do."""
    return {"host": host, "cluster": cluster, "error": error}


def health_summary(entry: dict[str, Any]) -> tuple[str, str | None]:
    """("ok", None) or (the first failing check, the agent's message) for one `health`
    entry: "pid dead", "port closed", "http failed" / "http 503", or the status."""
    if entry.get("healthy"):
        return "ok", None
    error = entry.get("error")
    status = entry.get("status")
    if status not in (None, "running"):
        return str(status), error
    if not entry.get("pid_alive"):
        return "pid dead", error
    if entry.get("port_open") is False:
        return "port closed", error
    if entry.get("http_status"):
        return f"http {entry['http_status']}", error
    return "http failed", error


def attach_health(rows: Iterable[dict[str, Any]], services: dict[str, dict[str, Any]]) -> None:
    """Give each running row of one host its health ("ok" or the failing check)."""
    for row in rows:
        entry = services.get(row.get("key"))
        if entry is None or row.get("process") != "running":
            continue
        row["health"], error = health_summary(entry)
        if error:
            row["health_error"] = error


# `--status persistent`: remote-http-launcher's name for "the workdir holds data even when no
# process runs". A status of the row's data directory, not of a process: never sent to an
# agent (whose `ps` filters processes), applied here to the merged rows.
PERSISTENT_STATUS = "persistent"
NO_PROCESS = (None, STALE, FAILED)   # a state file may remain, but nothing runs


def status_matches(row: dict[str, Any], status: str) -> bool:
    """True if the row belongs to `ps --status STATUS` (the agent already filtered process
    rows for the other statuses; a data directory without a process has no status, #37)."""
    if status == PERSISTENT_STATUS:
        return row.get("persistent") == "populated" and row.get("process") in NO_PROCESS
    return row.get("process") is not None
