"""The clusters of the configuration: their names, the local one, the project's, and each
cluster's hosts and data roots (clusters.yaml, clusters/*.yaml, `clusters:` in seamless.yaml).

`load_clusters()` is the one place that reads them: through seamless-config in a session
(session.py), SEAMLESS_CACHE ignored (#27), into a `Clusters` value that answers every
question about them without reading anything again. The SEAMLESS_CACHE cluster itself is
synthetic: its root comes from the cache's state files or $SEAMLESS_CACHE when asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...protocol.keys import PROJECT_TOPLEVEL, SEAMLESS_CACHE_CLUSTER
from ..errors import UsageError
from .resolve import cache_root, host_of, select_stage_first
from .selection import PERSISTENT_SERVICES, Selection
from .session import config_errors, load, seamless_cache_dir, session, unknown_cluster

# The frontend attribute seamless-config gives each service's settings (None: not supported).
_SERVICE_ATTRS = {"hashserver": "hashserver", "database": "database", "jobserver": "jobserver",
                  "daskserver": "daskserver", "pure-daskserver": "daskserver"}


@dataclass(frozen=True)
class Frontend:
    """One frontend of a cluster, as the configuration describes it."""

    hostname: str | None
    host: str | None                 # where it is reached (#1/#35); None: this machine
    roots: dict[str, str]            # {"hashserver": bufferdir, "database": database_dir} it has
    services: frozenset[str]         # the frontend attributes it sets (hashserver, jobserver, ...)


@dataclass(frozen=True)
class Clusters:
    """The clusters as one load found them (definition order), the local one, and whether
    SEAMLESS_CACHE was set."""

    frontends: dict[str, tuple[Frontend, ...]]
    local: str | None = None
    cache_dir: str | None = None

    def names(self) -> list[str]:
        """Cluster names in definition order, plus __SEAMLESS_CACHE__ at the end when
        SEAMLESS_CACHE is set."""
        names = list(self.frontends)
        if self.cache_dir is not None and SEAMLESS_CACHE_CLUSTER not in names:
            names.append(SEAMLESS_CACHE_CLUSTER)
        return names

    def _frontends(self, cluster: str, frontend_name: str | None) -> tuple[Frontend, ...]:
        if cluster not in self.frontends:
            raise unknown_cluster(cluster, list(self.frontends))
        found = tuple(f for f in self.frontends[cluster] if frontend_name is None or f.hostname == frontend_name)
        if not found:
            if frontend_name is not None:
                raise UsageError(f"cluster {cluster!r} has no frontend with hostname {frontend_name!r}")
            raise UsageError(f"cluster {cluster!r} has no frontends")
        return found

    def host(self, cluster: str, frontend_name: str | None = None) -> str | None:
        """SSH host of the cluster's first frontend (or the one named --frontend-name); None
        for the local cluster and the SEAMLESS_CACHE cluster (#35: same rule as per-service
        hosts)."""
        if cluster == SEAMLESS_CACHE_CLUSTER:
            return None
        return self._frontends(cluster, frontend_name)[0].host

    def hosts(self, cluster: str, frontend_name: str | None = None) -> list[str | None]:
        """The distinct hosts of all the cluster's frontends, in order (cluster-wide stop/rm
        ask each: a service runs on the first frontend that supports it, not always the first
        one)."""
        if cluster == SEAMLESS_CACHE_CLUSTER:
            return [None]
        hosts: list[str | None] = []
        for frontend in self._frontends(cluster, frontend_name):
            if frontend.host not in hosts:
                hosts.append(frontend.host)
        return hosts

    def roots(self, cluster: str, frontend_name: str | None = None) -> dict[str, str]:
        """{"hashserver": bufferdir, "database": database_dir} of the frontend host() picks
        (services it lacks are left out); `~` is expanded only for this machine."""
        if cluster == SEAMLESS_CACHE_CLUSTER:
            return _cache_roots()
        return dict(self._frontends(cluster, frontend_name)[0].roots)

    def has_service(self, cluster: str, service: str, frontend_name: str | None = None) -> bool:
        """True if some frontend of the cluster (matching frontend_name) supports the service."""
        if cluster == SEAMLESS_CACHE_CLUSTER:
            return service in PERSISTENT_SERVICES
        attr = _SERVICE_ATTRS.get(service, service)
        return any(attr in f.services for f in self._frontends(cluster, frontend_name))


def load_clusters(workdir: str | None) -> Clusters:
    """Read the clusters once: clusters.yaml, clusters/*.yaml and, with `workdir`, the
    `clusters:` of workdir's seamless.yaml (None: no project files). UsageError (one line)
    for a broken file; a broken definition of one cluster shows when that cluster is asked.

    The one function that reads cluster definitions: what it returns depends only on those
    files and the environment (HOME, SEAMLESS_CACHE)."""
    from seamless_config.cluster import _clusters, get_local_cluster

    with session():
        load(workdir=workdir, ignore_cache=True)
        frontends = {name: tuple(_frontend(name, f) for f in cluster.frontends) for name, cluster in _clusters.items()}
        return Clusters(frontends, get_local_cluster(), seamless_cache_dir())


def _frontend(cluster: str, frontend: Any) -> Frontend:
    """A frontend's facts, read while seamless-config holds the loaded state (host_of asks
    it for the local cluster)."""
    host = host_of(cluster, frontend.ssh_hostname, frontend.hostname)
    roots: dict[str, str] = {}
    if frontend.hashserver is not None:
        roots["hashserver"] = frontend.hashserver.bufferdir
    if frontend.database is not None:
        roots["database"] = frontend.database.database_dir
    if host is None:
        roots = {k: os.path.expanduser(v) for k, v in roots.items()}
    services = frozenset(attr for attr in set(_SERVICE_ATTRS.values()) if getattr(frontend, attr, None) is not None)
    return Frontend(frontend.hostname, host, roots, services)


def _cache_roots() -> dict[str, str]:
    with session(), config_errors("SEAMLESS_CACHE"):
        root = cache_root(Selection(service="hashserver", project=PROJECT_TOPLEVEL))
    if root is None:
        raise UsageError("the SEAMLESS_CACHE cluster needs SEAMLESS_CACHE to be set")
    return {"hashserver": root, "database": root}


def project_cluster(sel: Selection, workdir: str) -> str | None:
    """The cluster workdir's seamless.yaml / seamless.profile.yaml selects (its `stage
    NAME:` block applied when sel.stage is given), the one the per-service commands resolve
    on; None outside a project or when the project names no cluster. Its own load: the stage
    is selected before the files are read (#2)."""
    from seamless_config import select

    with session():
        select_stage_first(sel)
        load(workdir=workdir, ignore_cache=True)
        return select.get_selected_cluster()
