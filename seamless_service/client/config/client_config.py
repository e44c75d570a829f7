"""`ClientConfig`: what the configuration says, for one command.

A command makes one ClientConfig and passes it down (query/, lifecycle/, cli/ ask it, never
seamless-config): the clusters are read on the first question about them and kept for the
rest of the command, so `ps --all-clusters` reads clusters.yaml once however many clusters
it asks. Resolving one service (resolve_service) still loads the configuration for that
service: the stage must be selected before seamless.yaml is loaded (#2), and seamless-config
computes keys from its loaded state.
"""

from __future__ import annotations

import os

from .clusters import Clusters, load_clusters, project_cluster
from .resolve import resolve_key, resolve_service
from .selection import Resolved, Selection


class ClientConfig:
    """The configuration one command sees (see the module docstring)."""

    def __init__(self, workdir: str | None = None) -> None:
        # Where seamless.yaml is read from; None: the cwd at the first question (the keeper
        # enters each command's cwd before running it; a command that never asks the
        # configuration never needs a cwd).
        self.workdir = workdir
        self._clusters: Clusters | None = None

    @property
    def clusters(self) -> Clusters:
        """The clusters, loaded on first use (a UsageError then, for a broken file, is raised
        again on the next use: nothing is kept of a failed load)."""
        if self._clusters is None:
            self._clusters = load_clusters(os.getcwd() if self.workdir is None else self.workdir)
        return self._clusters

    def cluster_names(self) -> list[str]:
        return self.clusters.names()

    def cluster_host(self, cluster: str, frontend_name: str | None = None) -> str | None:
        return self.clusters.host(cluster, frontend_name)

    def cluster_hosts(self, cluster: str, frontend_name: str | None = None) -> list[str | None]:
        return self.clusters.hosts(cluster, frontend_name)

    def cluster_roots(self, cluster: str, frontend_name: str | None = None) -> dict[str, str]:
        return self.clusters.roots(cluster, frontend_name)

    def project_cluster(self, sel: Selection) -> str | None:
        """The cluster the project selects (its stage block applied), if any."""
        return project_cluster(sel, os.getcwd() if self.workdir is None else self.workdir)

    def resolve(self, sel: Selection, *, from_cwd: bool = True) -> Resolved:
        """One service's key, host and workdir (from_cwd=False: read seamless.yaml only from
        sel.workdir, as `resolve` does)."""
        return resolve_service(sel, from_cwd=from_cwd)

    def resolve_key(self, key: str, *, cluster: str | None = None, frontend_name: str | None = None) -> Resolved:
        return resolve_key(key, cluster=cluster, frontend_name=frontend_name)
