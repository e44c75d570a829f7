"""The ps row model: agent rows -> the rows `seamless-service-ps` prints, and merging them.

A row has the fields of `seamless-service-ps --json` (service, cluster, project, stage,
process, port, persistent, size, key[, path]) plus ours: mode, subproject, substage and,
when asked, health. `size` stays in bytes (JSON); the table shows it in human units.

Deliberate differences from seamless-config (anchor §6):
* #4: rows never collapse. Process rows are identified by their key; ro/rw, subproject and
  substage variants of one project each keep their row.
* #5/#10: persistent information is attached to *every* process row of the same service,
  cluster, project, subproject and stage; a persistent directory with no process row gets a
  row of its own; a `proj/sub/...` path gives project `proj` and subproject `sub`.
* #9: `size` is the real size in bytes for buffer directories too (from the agent's sizer).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Iterable

from ..protocol.keys import (
    PROJECT_TOPLEVEL,
    SEAMLESS_CACHE_ALIAS,
    SEAMLESS_CACHE_CLUSTER,
    key_readings,
    row_meta,
)

ROW_FIELDS = ("service", "cluster", "project", "stage", "process", "port", "persistent", "size", "key")


def display_project(project: Any, cluster: Any) -> Any:
    if project == PROJECT_TOPLEVEL and cluster == SEAMLESS_CACHE_CLUSTER:
        return SEAMLESS_CACHE_ALIAS
    return project


def _meta_for(row: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    """The row's meta; with a known cluster, the key reading for that cluster (no mis-split)."""
    meta = row_meta(row)
    if cluster is not None and meta.get("cluster") != cluster and not row.get("meta"):
        for reading in key_readings(row.get("key")):
            if reading.get("cluster") == cluster:
                return reading
    return meta


def process_row(agent_row: dict[str, Any], *, cluster: str | None = None) -> dict[str, Any]:
    """A display row from one `ps` row (server or client side) of the agent."""
    meta = _meta_for(agent_row, cluster)
    status = agent_row.get("status")
    # Client rows carry `process` from the agent (the local server's status when it is known,
    # fixing #6/#40); server rows have a derived status.
    process = agent_row.get("process") or status or ("client" if agent_row.get("port") is not None else None)
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
            root_parts = root_obj.parts[1:] if root_obj.parts[:1] == ("~",) else root_obj.parts
            parts = path_obj.parts
            for i in range(len(parts) - len(root_parts) + 1):
                if parts[i:i + len(root_parts)] == root_parts:
                    return list(parts[i + len(root_parts):])
    name = path.rstrip("/").split("/")[-1]
    return [name] if name else []


def persistent_row(prow: dict[str, Any], service: str, cluster: str | None, *,
                   root: str | None = None, project: str | None = None,
                   subproject: str | None = None, stage: str | None = None) -> dict[str, Any]:
    """A display row from one `persistent` row. Project/stage come from the path below
    `root`, unless the caller knows them (a resolved workdir)."""
    if project is None and stage is None:
        parts = _path_parts(prow.get("path") or "", root)
        project_parts = parts
        for i, part in enumerate(parts):
            if part.startswith("STAGE-"):
                stage = part[len("STAGE-"):]
                project_parts = parts[:i]
                break
        if project_parts:
            project = project_parts[0]
            subproject = "/".join(project_parts[1:]) or None
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
    }
    if prow.get("error"):
        row["error"] = prow["error"]
    return row


def _place(row: dict[str, Any]) -> tuple:
    return (row.get("service"), row.get("cluster"), row.get("project"), row.get("subproject"), row.get("stage"))


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
        elif (_place(prow), prow.get("path")) not in seen_extra:
            seen_extra.add((_place(prow), prow.get("path")))
            extra.append(dict(prow))
    return rows + extra


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row as printed by --json: seamless-service-ps fields first, ours after; no Nones
    dropped (scripts may rely on every field being present)."""
    return dict(row)
