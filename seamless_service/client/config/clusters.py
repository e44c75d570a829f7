"""The clusters of the configuration: their names, the local one, the project's, and each
cluster's hosts and data roots (clusters.yaml, clusters/*.yaml, `clusters:` in seamless.yaml).

Every call loads the real clusters through seamless-config in a session (session.py),
SEAMLESS_CACHE ignored (#27), except for the SEAMLESS_CACHE cluster itself.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from ...protocol.keys import PROJECT_TOPLEVEL, SEAMLESS_CACHE_CLUSTER
from ..errors import UsageError
from .resolve import cache_root, host_of, select_stage_first
from .selection import PERSISTENT_SERVICES, Selection
from .session import config_errors, known_cluster_names, load, seamless_cache_dir, session, unknown_cluster

T = TypeVar("T")


def _with_clusters(fn: Callable[[], T], *, from_cwd: bool) -> T:
    """Run fn with the real clusters loaded (SEAMLESS_CACHE ignored: #27)."""
    with session():
        load(workdir=os.getcwd() if from_cwd else None, ignore_cache=True)
        return fn()


def known_clusters(*, from_cwd: bool = True) -> list[str]:
    """Cluster names in definition order (clusters.yaml, clusters/*.yaml, `clusters:` in
    seamless.yaml), plus __SEAMLESS_CACHE__ at the end when SEAMLESS_CACHE is set."""
    names = _with_clusters(known_cluster_names, from_cwd=from_cwd)
    if seamless_cache_dir() is not None and SEAMLESS_CACHE_CLUSTER not in names:
        names.append(SEAMLESS_CACHE_CLUSTER)
    return names


def local_cluster(*, from_cwd: bool = True) -> str | None:
    """The `local_cluster` of the configuration (the one on this machine), if any."""
    from seamless_config.cluster import get_local_cluster

    return _with_clusters(get_local_cluster, from_cwd=from_cwd)


def project_cluster(sel: Selection) -> str | None:
    """The cluster the current directory's seamless.yaml / seamless.profile.yaml selects
    (its `stage NAME:` block applied when sel.stage is given), the one the per-service
    commands resolve on; None outside a project or when the project names no cluster."""
    from seamless_config import select

    with session():
        select_stage_first(sel)
        load(workdir=os.getcwd(), ignore_cache=True)
        return select.get_selected_cluster()


def _frontends(cluster: str, frontend_name: str | None) -> list[Any]:
    from seamless_config.cluster import _clusters

    if cluster not in _clusters:
        raise unknown_cluster(cluster)
    found = [f for f in _clusters[cluster].frontends if frontend_name is None or f.hostname == frontend_name]
    if not found:
        if frontend_name is not None:
            raise UsageError(f"cluster {cluster!r} has no frontend with hostname {frontend_name!r}")
        raise UsageError(f"cluster {cluster!r} has no frontends")
    return found


def cluster_host(cluster: str, frontend_name: str | None = None, *, from_cwd: bool = True) -> str | None:
    """SSH host of the cluster's first frontend (or the one named --frontend-name); None for
    the local cluster and the SEAMLESS_CACHE cluster (#35: same rule as per-service hosts)."""
    if cluster == SEAMLESS_CACHE_CLUSTER:
        return None

    def pick() -> str | None:
        frontend = _frontends(cluster, frontend_name)[0]
        return host_of(cluster, frontend.ssh_hostname, frontend.hostname)

    return _with_clusters(pick, from_cwd=from_cwd)


def cluster_hosts(cluster: str, frontend_name: str | None = None, *, from_cwd: bool = True) -> list[str | None]:
    """The distinct hosts of all the cluster's frontends, in order (cluster-wide stop/rm ask
    each: a service runs on the first frontend that supports it, not always the first one)."""
    if cluster == SEAMLESS_CACHE_CLUSTER:
        return [None]

    def pick() -> list[str | None]:
        hosts: list[str | None] = []
        for frontend in _frontends(cluster, frontend_name):
            host = host_of(cluster, frontend.ssh_hostname, frontend.hostname)
            if host not in hosts:
                hosts.append(host)
        return hosts

    return _with_clusters(pick, from_cwd=from_cwd)


def cluster_roots(cluster: str, frontend_name: str | None = None, *, from_cwd: bool = True) -> dict[str, str]:
    """{"hashserver": bufferdir, "database": database_dir} of the frontend cluster_host()
    picks (services it lacks are left out); `~` is expanded only for the local cluster."""
    if cluster == SEAMLESS_CACHE_CLUSTER:
        with session(), config_errors("SEAMLESS_CACHE"):
            root = cache_root(Selection(service="hashserver", project=PROJECT_TOPLEVEL))
        if root is None:
            raise UsageError("the SEAMLESS_CACHE cluster needs SEAMLESS_CACHE to be set")
        return {"hashserver": root, "database": root}

    def pick() -> dict[str, str]:
        frontend = _frontends(cluster, frontend_name)[0]
        local = host_of(cluster, frontend.ssh_hostname, frontend.hostname) is None
        roots = {}
        if frontend.hashserver is not None:
            roots["hashserver"] = frontend.hashserver.bufferdir
        if frontend.database is not None:
            roots["database"] = frontend.database.database_dir
        return {k: os.path.expanduser(v) if local else v for k, v in roots.items()}

    return _with_clusters(pick, from_cwd=from_cwd)


def cluster_has_service(cluster: str, service: str, frontend_name: str | None = None,
                        *, from_cwd: bool = True) -> bool:
    """True if some frontend of the cluster (matching frontend_name) supports the service."""
    if cluster == SEAMLESS_CACHE_CLUSTER:
        return service in PERSISTENT_SERVICES
    attr = "daskserver" if service == "pure-daskserver" else service
    return _with_clusters(
        lambda: any(getattr(f, attr, None) is not None for f in _frontends(cluster, frontend_name)),
        from_cwd=from_cwd,
    )
