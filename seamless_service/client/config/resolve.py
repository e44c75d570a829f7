"""Resolution of --service/--cluster/--project/--stage through seamless-config's own code.

Keys, workdirs and meta always come from seamless-config (config_files.load_config_files,
select.*, tools.configure_*, remote_http_launcher.Configuration(...).key and
service._dispatch.add_meta), so they equal what `seamless-service-resolve` prints. Only
the *order* of the calls and the error handling are ours. Deliberate differences from
seamless-config 0.3.2 (numbered as in the README's table, Deliberate differences):

* #1  the host of a service on a remote cluster is the frontend's `ssh_hostname`, else its
      `hostname` (as the launcher does), never "this machine" because `ssh_hostname` is
      unset. The local cluster (and the SEAMLESS_CACHE cluster) is this machine.
* #35 one rule everywhere: a frontend whose host is `localhost`/`127.0.0.1`/`::1` without an
      explicit `ssh_hostname` (e.g. a `type: local` cluster that is not `local_cluster`) is
      this machine, for per-service and cluster-wide commands alike.
* #2  the stage and substage are selected BEFORE the configuration is loaded, so
      `stage NAME:` blocks of seamless.yaml apply (as they do for the Seamless runtime).
      Command-line flags still win over what a stage block selects.
* #27 with SEAMLESS_CACHE set, `--cluster REAL` resolves on the real cluster (seamless-config
      crashes with a KeyError); without --cluster the cache cluster is used, as before.
* #28/#29 unknown cluster, no cluster, no project, no frontend for the service, an empty or
      malformed clusters.yaml or seamless.yaml: a one-line UsageError, never a traceback.
* #32 `mode` in the meta of jobserver/daskserver/pure-daskserver is "rw", which is what their
      keys say, whatever --mode was passed.
* #33 the SEAMLESS_CACHE root lookup computes the state-file keys with seamless-config's
      own templates (subproject included, SUBSTAGE only where the template has it).

seamless-config keeps its state in module globals: every use holds CONFIG_LOCK, starts
from pristine defaults and puts the caller's state back afterwards (a program that uses
the Seamless runtime and this client in one process keeps its own configuration).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...protocol.keys import META_FIELDS, PROJECT_TOPLEVEL, SEAMLESS_CACHE_ALIAS, SEAMLESS_CACHE_CLUSTER, SERVICES
from ..errors import ServiceError, UsageError
from .selection import LOCAL_HOSTNAMES, PERSISTENT_SERVICES, Resolved, Selection
from .session import config_errors, known_cluster_names, load, one_line, seamless_cache_dir, session, unknown_cluster

_PROBE_ROOT = "/seamless-service-cache-probe"  # placeholder root while looking for the real one


def _config_dir(sel: Selection, from_cwd: bool) -> str | None:
    if sel.workdir is not None:
        return sel.workdir
    return os.getcwd() if from_cwd else None


def _is_cache_request(sel: Selection) -> bool:
    project = PROJECT_TOPLEVEL if sel.project == SEAMLESS_CACHE_ALIAS else sel.project
    return project == PROJECT_TOPLEVEL and sel.cluster in (None, SEAMLESS_CACHE_CLUSTER)


def _define_cache_cluster(root: str) -> None:
    """The synthetic local cluster of the Seamless cache, as seamless-config defines it."""
    from seamless_config.cluster import define_clusters
    from seamless_config.config_files import load_tools
    from seamless_config.select import select_cluster, select_project

    load_tools()
    define_clusters({
        "local_cluster": SEAMLESS_CACHE_CLUSTER,
        SEAMLESS_CACHE_CLUSTER: {
            "type": "local",
            "frontends": [{"hashserver": {"bufferdir": root}, "database": {"database_dir": root}}],
        },
    })
    select_cluster(SEAMLESS_CACHE_CLUSTER)
    select_project(PROJECT_TOPLEVEL)


def _server_json(key: str) -> Path:
    from ...agent import paths

    return paths.server_dir() / f"{key}.json"


def cache_root(sel: Selection) -> str | None:
    """The cache root: from the local state file of this service (or of the hashserver), else
    $SEAMLESS_CACHE, as seamless-config finds it. #33: the state-file key is computed by seamless-config's
    own templates on a probe definition of the cache cluster, so subproject and substage are
    right; the root is the state file's workdir minus the part the template appended."""
    from seamless_config.service import _dispatch

    candidates = [sel.service] + (["hashserver"] if sel.service != "hashserver" else [])
    for service in candidates:
        if service not in ("hashserver", "database", "jobserver", "daskserver"):
            continue
        probe = Selection(**{**sel.__dict__, "service": service, "cluster": SEAMLESS_CACHE_CLUSTER,
                             "project": PROJECT_TOPLEVEL})
        _define_cache_cluster(_PROBE_ROOT)
        try:
            _dispatch._select_from_args(probe)
            config = _configure(probe)
            from remote_http_launcher import Configuration

            key = Configuration.from_mapping(config).key
        except Exception:  # noqa: BLE001 - e.g. no frontend supports a jobserver: next candidate
            continue
        path = _server_json(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ServiceError(f"could not read {path}: {one_line(exc)}") from exc
        if not isinstance(data, dict):
            raise ServiceError(f"state file must contain a JSON object: {path}")
        workdir = data.get("workdir")
        if not isinstance(workdir, str) or not workdir:
            continue
        tail = str(config.get("workdir", ""))[len(_PROBE_ROOT):]
        expanded = os.path.expanduser(workdir).rstrip("/")
        if tail and expanded.endswith(tail) and len(expanded) > len(tail):
            return expanded[: -len(tail)]
        return _dispatch._seamless_cache_root_from_workdir(workdir, sel)
    return seamless_cache_dir()


def _prepare_cache(sel: Selection) -> None:
    root = cache_root(sel)
    if root is None:
        raise UsageError(
            "--project SEAMLESS_CACHE requires an existing launcher JSON with workdir, "
            "or SEAMLESS_CACHE to be set"
        )
    _define_cache_cluster(root)


# ---------------------------------------------------------------- resolution


def _check_selection(sel: Selection) -> None:
    if not sel.service:
        raise UsageError("--service is required")
    if sel.service not in SERVICES:
        raise UsageError(f"unknown service {sel.service!r} (known: {', '.join(SERVICES)})")
    if sel.mode not in ("ro", "rw"):
        raise UsageError(f"--mode must be ro or rw, not {sel.mode!r}")


def select_stage_first(sel: Selection) -> None:
    """#2: stage blocks of seamless.yaml apply only to the stage selected at load time."""
    from seamless_config import select

    for name, fn in (("stage", select.select_stage), ("substage", select.select_substage)):
        value = getattr(sel, name)
        if value is None:
            continue
        try:
            fn(value)
        except ValueError as exc:
            raise UsageError(f"invalid --{name} {value!r}: {one_line(exc)}") from exc


def _apply_selection(sel: Selection) -> None:
    from seamless_config.service import _dispatch

    try:
        _dispatch._select_from_args(sel)
    except ValueError as exc:  # token rules: no '--', 'STAGE-' or '/'
        raise UsageError(f"invalid selection: {one_line(exc)}") from exc


def _check_ready(sel: Selection, *, hint: str) -> None:
    """#28: what configure_* would hit as a KeyError/ConfigurationError, said in one line."""
    from seamless_config import select

    cluster = select.get_selected_cluster()
    if cluster is None:
        raise UsageError(f"no cluster selected: pass --cluster or set one in seamless.yaml{hint}")
    if cluster not in known_cluster_names():
        raise unknown_cluster(cluster)
    if sel.service != "pure-daskserver" and select.get_selected_project() is None:
        raise UsageError(f"no project selected: pass --project or set one in seamless.yaml{hint}")


def _configure(sel: Selection) -> dict[str, Any]:
    """The launcher config from seamless-config's configure_<service> (same calls as
    seamless_config.service._dispatch.resolve)."""
    from seamless_config import tools

    project = PROJECT_TOPLEVEL if sel.project == SEAMLESS_CACHE_ALIAS else sel.project
    common = {"cluster": sel.cluster, "frontend_name": sel.frontend_name}
    if sel.service == "hashserver":
        return tools.configure_hashserver(sel.mode, project=project, subproject=sel.subproject,
                                          stage=sel.stage, **common)
    if sel.service == "database":
        return tools.configure_database(sel.mode, project=project, subproject=sel.subproject,
                                        stage=sel.stage, **common)
    if sel.service == "jobserver":
        return tools.configure_jobserver(project=project, subproject=sel.subproject, stage=sel.stage,
                                         substage=sel.substage, **common)
    if sel.service == "daskserver":
        return tools.configure_daskserver(project=project, subproject=sel.subproject, stage=sel.stage,
                                          substage=sel.substage, **common)
    return tools.configure_pure_daskserver(cluster=sel.cluster, queue=sel.queue,
                                           frontend_name=sel.frontend_name)


def host_of(cluster: str | None, ssh_hostname: str | None, hostname: str | None) -> str | None:
    """#1/#35: where a cluster's frontend is reached. None means this machine."""
    from seamless_config.cluster import get_local_cluster

    if cluster == SEAMLESS_CACHE_CLUSTER or cluster == get_local_cluster():
        return None
    if ssh_hostname:
        return ssh_hostname
    if not hostname or hostname in LOCAL_HOSTNAMES:
        return None
    return hostname


def resolve_service(sel: Selection, *, from_cwd: bool = True) -> Resolved:
    """Key, host, workdir and meta of one service. UsageError (one line) on bad input.

    from_cwd: read the cwd's seamless.yaml (every command but `resolve`, which reads
    seamless.yaml only from --workdir, as seamless-service-resolve does).
    """
    from seamless_config.service import _dispatch

    _check_selection(sel)
    with session():
        select_stage_first(sel)
        if _is_cache_request(sel):
            with config_errors("SEAMLESS_CACHE"):
                _prepare_cache(sel)
        else:
            load(workdir=_config_dir(sel, from_cwd), ignore_cache=sel.cluster not in (None, SEAMLESS_CACHE_CLUSTER))
        _apply_selection(sel)
        hint = "" if from_cwd or sel.workdir is not None else " (resolve reads seamless.yaml only with --workdir DIR)"
        _check_ready(sel, hint=hint)
        with config_errors(sel.service):
            config = dict(_configure(sel))
            from remote_http_launcher import Configuration, LauncherError

            try:
                key = Configuration.from_mapping(config).key
            except LauncherError as exc:
                raise UsageError(f"{sel.service}: invalid launcher configuration: {one_line(exc)}") from exc
            config["key"] = key
            meta = _dispatch.add_meta(config, sel)
        if sel.service not in PERSISTENT_SERVICES:
            meta["mode"] = "rw"  # #32: what the key says
        config["meta"] = meta
        host = host_of(meta.get("cluster"), config.get("ssh_hostname"), config.get("hostname"))
        return Resolved(
            key=key, ssh_host=host, workdir=config.get("workdir"), meta=meta, config=config,
            log_path=_dispatch.remote_log_path(key),
        )


class KeyNotResolvable(UsageError):
    """A service key whose fields the configuration cannot resolve (e.g. its cluster is not
    defined): the message says why; `key` and `cluster` let the caller say what to do."""

    def __init__(self, key: str, cluster: str | None, reason: str):
        super().__init__(reason)
        self.key, self.cluster, self.reason = key, cluster, reason


def resolve_key(key: str, *, cluster: str | None = None, frontend_name: str | None = None) -> Resolved:
    """The service a launcher key names, resolved through seamless-config from the key's own
    fields (service, cluster, mode, project, ..., as protocol.keys reads them), so that its
    launch configuration is the one Seamless would use. `cluster`: the key must be of that
    cluster. Every reading of an ambiguous key is tried (#30); the one whose resolution gives
    back exactly `key` wins. UsageError if the key is not a Seamless key or names another
    cluster, KeyNotResolvable if no reading resolves to it."""
    from ...protocol.keys import key_readings

    readings = key_readings(key)
    if not readings:
        raise UsageError(f"{key} is not a Seamless service key (SERVICE-CLUSTER-MODE-PROJECT..., "
                         "as 'seamless-service resolve' prints it)")
    if cluster is not None:
        of_cluster = [meta for meta in readings if meta["cluster"] == cluster]
        if not of_cluster:
            raise UsageError(f"key {key} is not of cluster {cluster!r} (its cluster is {readings[0]['cluster']!r})")
        readings = of_cluster
    failure: UsageError | None = None
    other: str | None = None
    for meta in readings:
        fields = {name: meta.get(name) for name in META_FIELDS if name != "mode"}
        sel = Selection(mode=meta.get("mode") or "rw", frontend_name=frontend_name, **fields)
        try:
            resolved = resolve_service(sel, from_cwd=True)
        except UsageError as exc:
            failure = failure or exc
            continue
        if resolved.key == key:
            return resolved
        other = other or resolved.key
    if other is not None:
        raise UsageError(f"key {key} resolves to {other} with this configuration: pass the selection "
                         "flags (--service/--cluster/--project/...) instead")
    assert failure is not None
    raise KeyNotResolvable(key, readings[0]["cluster"], str(failure))
