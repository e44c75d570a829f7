"""`ps --local`: this machine's server-side launcher state, with no configuration at all.

With no configuration there are no cluster roots to walk, so persistent information comes
from the workdirs recorded in the hashserver and database state files themselves: a second
(in-process) batch, since the workdirs are known only once the state files were read.
Each workdir is asked with the options the cluster view uses (PERSISTENT_OPTS, marker
included) at level 0, so both views say the same about one directory.
"""

from __future__ import annotations

from typing import Any

from ..config.client_config import ClientConfig
from ..errors import UsageError
from ..query.ps import PERSISTENT_OPTS, HostQuery, Outcome, Part, PsRequest, persistent_part, ps_args, settle_sizes
from ..query.rows import persistent_row
from ..transport.base import Transport


class LocalServerQuery(HostQuery):
    """Server rows of this machine (+ their data dirs with --persistent, health with --health)."""

    def __init__(self, request: PsRequest):
        parts = [Part("process", ps_args(request, side="server"))]
        if request.health:
            parts.append(Part("health", {}))
        super().__init__(None, "this machine", parts)
        self.persistent = request.persistent

    def run(self, transport: Transport, *, wait: tuple[str | None, float] | None = None,
            settle: bool = False) -> Outcome:
        out = super().run(transport, wait=wait, settle=False)
        if self.persistent and not out.failed:
            self._workdir_rows(transport, out, settle=settle)
        return out

    def _workdir_rows(self, transport: Transport, out: Outcome, *, settle: bool) -> None:
        asked: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for row in out.process:
            service = row.get("service") or ""
            workdir = row.get("_workdir")
            if service not in PERSISTENT_OPTS or not isinstance(workdir, str) or not workdir:
                continue
            # the options the cluster view sends (marker included: a hashserver dir holding
            # only its marker is `empty` in both views), for this one directory (level 0)
            args = dict(persistent_part(service, None, workdir, None, follow=False).args, level=0)
            asked.append((row, args))
        if not asked:
            return
        self._attach(transport, out, asked)
        if settle and any(row.get("size_state") == "pending" for row, _ in asked):
            settle_sizes(transport, lambda: self._attach(transport, out, asked))

    def _attach(self, transport: Transport, out: Outcome, asked: list) -> list[dict[str, Any]]:
        """Ask for the workdirs and put their data on their rows; returns those rows."""
        # One batch: every directory is one op, so a path the policy refuses fails alone.
        for (owner, _), result in zip(asked, transport.batch([("persistent", a) for _, a in asked])):
            if not result.get("ok"):
                error = result.get("error") or {}
                owner["persistent_error"] = error.get("message")
                continue
            for prow in result["value"]["rows"]:
                prow = persistent_row(prow, owner["service"], owner["cluster"], project=owner.get("project"),
                                      subproject=owner.get("subproject"), stage=owner.get("stage"))
                for name in ("persistent", "size", "path", "size_state"):
                    owner[name] = prow.get(name)
        return [owner for owner, _ in asked]

    def read_process(self, part: Part, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = super().read_process(part, rows)
        for display, raw in zip(out, rows):
            display["_workdir"] = raw.get("workdir")  # private: dropped from --json output
        return out



def check_cluster(cluster: str | None, config: ClientConfig) -> None:
    """`ps --local --cluster C` that found nothing: a typo must not look like an idle machine.

    --cluster filters this machine's rows by the cluster their keys name, which needs no
    configuration (the demo's keys name `demo`). Only when nothing matched is C looked up in
    the configuration: a configured cluster with nothing here is an honest empty table, any
    other name a usage error, as `ps --cluster C` says it."""
    if not cluster:
        return
    known = config.cluster_names()
    if cluster not in known:
        where = f"known: {', '.join(known)}" if known else "no clusters defined in ~/.seamless/clusters.yaml"
        raise UsageError(f"--cluster {cluster!r} matches no service on this machine and is not a configured "
                         f"cluster ({where})")
