"""Resolution of --service/--cluster/--project/--stage through seamless-config's own code.

Keys, workdirs and meta always come from seamless-config (config_files.load_config_files,
select.*, tools.configure_*, remote_http_launcher.Configuration(...).key and
service._dispatch.add_meta), so they equal what `seamless-service-resolve` prints. Only
the *order* of the calls and the error handling are ours. Deliberate differences from
seamless-config 0.3.2 (anchor §6):

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

import argparse
import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ..errors import ServiceError, UsageError

CONFIG_LOCK = threading.RLock()

SERVICES = ("hashserver", "database", "jobserver", "daskserver", "pure-daskserver")
PERSISTENT_SERVICES = ("hashserver", "database")
META_FIELDS = ("service", "cluster", "mode", "project", "subproject", "stage", "substage", "queue")
CACHE_CLUSTER = "__SEAMLESS_CACHE__"
TOPLEVEL = "__TOPLEVEL__"
CACHE_ALIAS = "SEAMLESS_CACHE"
LOCAL_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
_PROBE_ROOT = "/seamless-service-cache-probe"  # placeholder root while looking for the real one

T = TypeVar("T")


# ---------------------------------------------------------------- data


@dataclass
class Selection:
    """What the user selected on the command line (None = take it from seamless.yaml)."""

    service: str | None = None
    cluster: str | None = None
    project: str | None = None
    subproject: str | None = None
    stage: str | None = None
    substage: str | None = None
    mode: str = "rw"
    queue: str | None = None
    frontend_name: str | None = None
    workdir: str | None = None  # resolve --workdir: read DIR/seamless.yaml; None = cwd

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Selection":
        values = {name: getattr(args, name, None) for name in cls.__dataclass_fields__}
        values["mode"] = values.get("mode") or "rw"
        return cls(**values)

    def namespace(self) -> argparse.Namespace:
        """The argparse-like object seamless-config's service helpers expect."""
        return argparse.Namespace(**{name: getattr(self, name) for name in self.__dataclass_fields__})


@dataclass
class Resolved:
    """One resolved service: where it runs and under which key."""

    key: str
    ssh_host: str | None          # None: this machine
    workdir: str | None           # unexpanded, as seamless-config gives it
    meta: dict[str, Any]
    config: dict[str, Any] = field(repr=False)
    log_path: str = ""

    @property
    def service(self) -> str:
        return self.meta["service"]

    @property
    def cluster(self) -> str | None:
        return self.meta.get("cluster")

    def local_workdir(self) -> str | None:
        """The workdir as a path on its host: `~` expanded only when the host is this machine."""
        if self.workdir and self.ssh_host is None:
            return os.path.expanduser(self.workdir)
        return self.workdir

    def resolve_json(self) -> dict[str, Any]:
        """The object `seamless-service-resolve` prints (ssh_hostname is the host we use: #1)."""
        payload: dict[str, Any] = {
            "key": self.key,
            "ssh_hostname": self.ssh_host,
            "workdir": self.workdir,
            "log_path": self.log_path,
        }
        payload.update(self.meta)
        return payload


# ---------------------------------------------------------------- seamless-config state


def _modules() -> tuple[Any, Any, Any, Any]:
    import seamless_config
    import seamless_config.cluster as cluster
    import seamless_config.config_files as config_files
    import seamless_config.select as select

    return seamless_config, select, cluster, config_files


_select_defaults: dict[str, Any] | None = None


def _pristine_select_state() -> dict[str, Any]:
    """select.py's module-level defaults, read from a fresh, unregistered copy of the module
    (so they are right even if a Seamless runtime in this process changed them already)."""
    global _select_defaults
    if _select_defaults is None:
        import importlib.util

        spec = importlib.util.find_spec("seamless_config.select")
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)  # type: ignore[union-attr]
        _select_defaults = {
            name: value for name, value in vars(fresh).items()
            if name.startswith("_") and not name.startswith("__")
            and isinstance(value, (type(None), bool, int, str))
        }
    return _select_defaults


def _snapshot() -> dict[str, Any]:
    sc, select, cluster, config_files = _modules()
    return {
        "select": {name: getattr(select, name) for name in _pristine_select_state()},
        "clusters": dict(cluster._clusters),
        "local_cluster": cluster._local_cluster,
        "config_clusters": config_files._clusters,
        "workdir": (sc._workdir, sc._set_workdir_called),
    }


def _reset() -> None:
    sc, select, cluster, config_files = _modules()
    for name, value in _pristine_select_state().items():
        setattr(select, name, value)
    cluster._clusters.clear()
    cluster._local_cluster = None  # define_clusters never unsets it (stale in a daemon)
    config_files._clusters = {}
    sc._workdir, sc._set_workdir_called = None, False


def _restore(saved: dict[str, Any]) -> None:
    sc, select, cluster, config_files = _modules()
    for name, value in saved["select"].items():
        setattr(select, name, value)
    cluster._clusters.clear()
    cluster._clusters.update(saved["clusters"])
    cluster._local_cluster = saved["local_cluster"]
    config_files._clusters = saved["config_clusters"]
    sc._workdir, sc._set_workdir_called = saved["workdir"]


@contextlib.contextmanager
def _session() -> Iterator[None]:
    """Hold CONFIG_LOCK; seamless-config starts clean; the caller's state comes back after."""
    with CONFIG_LOCK:
        saved = _snapshot()
        _reset()
        try:
            yield
        finally:
            _restore(saved)


@contextlib.contextmanager
def _cache_ignored(ignore: bool) -> Iterator[None]:
    """Load the real clusters even if SEAMLESS_CACHE is set (#27). Patches the one function
    config_files asks, instead of os.environ (which other threads would see)."""
    if not ignore:
        yield
        return
    import seamless_config

    original = seamless_config.get_seamless_cache
    seamless_config.get_seamless_cache = lambda: None
    try:
        yield
    finally:
        seamless_config.get_seamless_cache = original


def _seamless_cache_dir() -> str | None:
    import seamless_config

    return seamless_config.get_seamless_cache()


# ---------------------------------------------------------------- errors


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.rstrip(". ")


def _with_example(exc: BaseException) -> str:
    """The error's first line, and the example seamless-config gives after `Example:` on the
    lines below it (`expected a YAML list of commands. Example:\n- project: myproject`):
    one line for the error, then what a correct file looks like."""
    first, _, rest = str(exc).strip().partition("\n")
    if not first.endswith("Example:") or not rest.strip():
        return _one_line(exc)
    example = "\n".join("    " + line for line in rest.splitlines() if line.strip())
    return f"{first[:-len('Example:')].rstrip(' .')}, for example:\n{example}"


def _yaml_error(exc: BaseException, shown: str | None = None) -> str:
    """`FILE:LINE:COLUMN: invalid YAML: PROBLEM (CONTEXT at line L, column C)`: PyYAML's
    message spreads this over four lines, whose first is only the context."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is None or not problem:
        return f"{shown or 'configuration'}: invalid YAML: {_one_line(exc)}"
    name = shown or (mark.name if mark.name and not mark.name.startswith("<") else "configuration")
    text = f"{name}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if getattr(exc, "problem", None) and context and context_mark is not None:
        text += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return text


def _home_file(path: Path) -> str:
    home = os.environ.get("HOME") or str(Path.home())
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def _check_cluster_files() -> None:
    """#29: an empty or non-mapping clusters file is a readable error, not a TypeError."""
    import yaml

    home = Path(os.environ.get("HOME") or str(Path.home()))
    folder = home / ".seamless"
    candidates = [folder / "clusters.yaml"] + sorted((folder / "clusters").glob("*.yaml"))
    for path in candidates:
        if not path.is_file():
            continue
        shown = _home_file(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {shown}: {_one_line(exc)}") from None
        except yaml.YAMLError as exc:
            raise UsageError(_yaml_error(exc, shown)) from None
        if data is None:
            raise UsageError(f"{shown} is empty: define clusters in it (name: definition) or remove it")
        if not isinstance(data, dict):
            raise UsageError(f"{shown} must map cluster names to cluster definitions")


@contextlib.contextmanager
def _config_errors(what: str) -> Iterator[None]:
    """seamless-config's exceptions during loading -> one readable UsageError line."""
    import yaml

    try:
        yield
    except ServiceError:
        raise
    except yaml.YAMLError as exc:  # seamless.yaml, seamless.profile.yaml: the mark names the file
        raise UsageError(_yaml_error(exc)) from None
    except AssertionError as exc:
        # define_clusters asserts that local_cluster names a defined cluster
        arg = exc.args[0] if exc.args else None
        if isinstance(arg, tuple) and arg and isinstance(arg[0], str):
            raise UsageError(f"local_cluster {arg[0]!r} is not a defined cluster") from None
        raise UsageError(f"{what}: invalid cluster definitions") from None
    except KeyError as exc:
        raise UsageError(f"{what}: invalid cluster definition: missing {_one_line(exc)!r}") from None
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        raise UsageError(f"{what}: {_with_example(exc)}") from None
    except ImportError as exc:  # e.g. configure_jobserver needs seamless_remote
        raise ServiceError(f"{what}: cannot resolve here: {_one_line(exc)}") from None
    except SystemExit as exc:  # seamless-config's "raise SystemExit(message)"
        raise UsageError(_strip_prog(str(exc.code))) from None


def _strip_prog(message: str) -> str:
    for prefix in ("seamless-service: ",):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


# ---------------------------------------------------------------- loading


def _load(*, workdir: str | None, ignore_cache: bool) -> None:
    """Load clusters (+ DIR/seamless*.yaml when workdir is given) through seamless-config."""
    from seamless_config.service import _dispatch
    import seamless_config.config_files as config_files

    if ignore_cache or _seamless_cache_dir() is None:
        _check_cluster_files()
    with _config_errors("configuration"), _cache_ignored(ignore_cache):
        if workdir is not None:
            with _dispatch._temporary_workdir(workdir):
                config_files.load_config_files()
        else:
            _dispatch._load_config(from_cwd=False)


def _config_dir(sel: Selection, from_cwd: bool) -> str | None:
    if sel.workdir is not None:
        return sel.workdir
    return os.getcwd() if from_cwd else None


def _is_cache_request(sel: Selection) -> bool:
    project = TOPLEVEL if sel.project == CACHE_ALIAS else sel.project
    return project == TOPLEVEL and sel.cluster in (None, CACHE_CLUSTER)


def _define_cache_cluster(root: str) -> None:
    """The synthetic local cluster of the Seamless cache, as seamless-config defines it."""
    from seamless_config.cluster import define_clusters
    from seamless_config.config_files import load_tools
    from seamless_config.select import select_cluster, select_project

    load_tools()
    define_clusters({
        "local_cluster": CACHE_CLUSTER,
        CACHE_CLUSTER: {
            "type": "local",
            "frontends": [{"hashserver": {"bufferdir": root}, "database": {"database_dir": root}}],
        },
    })
    select_cluster(CACHE_CLUSTER)
    select_project(TOPLEVEL)


def _server_json(key: str) -> Path:
    from ...agent import paths

    return paths.server_dir() / f"{key}.json"


def _cache_root(sel: Selection) -> str | None:
    """The cache root: from the local state file of this service (or of the hashserver), else
    $SEAMLESS_CACHE (anchor §4.6.6). #33: the state-file key is computed by seamless-config's
    own templates on a probe definition of the cache cluster, so subproject and substage are
    right; the root is the state file's workdir minus the part the template appended."""
    from seamless_config.service import _dispatch

    candidates = [sel.service] + (["hashserver"] if sel.service != "hashserver" else [])
    for service in candidates:
        if service not in ("hashserver", "database", "jobserver", "daskserver"):
            continue
        probe = Selection(**{**sel.__dict__, "service": service, "cluster": CACHE_CLUSTER, "project": TOPLEVEL})
        _define_cache_cluster(_PROBE_ROOT)
        try:
            _dispatch._select_from_args(probe.namespace())
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
            raise ServiceError(f"could not read {path}: {_one_line(exc)}") from None
        if not isinstance(data, dict):
            raise ServiceError(f"state file must contain a JSON object: {path}")
        workdir = data.get("workdir")
        if not isinstance(workdir, str) or not workdir:
            continue
        tail = str(config.get("workdir", ""))[len(_PROBE_ROOT):]
        expanded = os.path.expanduser(workdir).rstrip("/")
        if tail and expanded.endswith(tail) and len(expanded) > len(tail):
            return expanded[: -len(tail)]
        return _dispatch._seamless_cache_root_from_workdir(workdir, sel.namespace())
    return _seamless_cache_dir()


def _prepare_cache(sel: Selection) -> None:
    root = _cache_root(sel)
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


def _select_stage_first(sel: Selection) -> None:
    """#2: stage blocks of seamless.yaml apply only to the stage selected at load time."""
    from seamless_config import select

    for name, fn in (("stage", select.select_stage), ("substage", select.select_substage)):
        value = getattr(sel, name)
        if value is None:
            continue
        try:
            fn(value)
        except ValueError as exc:
            raise UsageError(f"invalid --{name} {value!r}: {_one_line(exc)}") from None


def _apply_selection(sel: Selection) -> None:
    from seamless_config.service import _dispatch

    try:
        _dispatch._select_from_args(sel.namespace())
    except ValueError as exc:  # token rules: no '--', 'STAGE-' or '/'
        raise UsageError(f"invalid selection: {_one_line(exc)}") from None


def known_cluster_names() -> list[str]:
    from seamless_config.cluster import _clusters

    return list(_clusters)


def _unknown_cluster(name: str) -> UsageError:
    known = known_cluster_names()
    if known:
        return UsageError(f"unknown cluster {name!r} (known: {', '.join(known)})")
    return UsageError(f"unknown cluster {name!r} (no clusters defined in ~/.seamless/clusters.yaml)")


def _check_ready(sel: Selection, *, hint: str) -> None:
    """#28: what configure_* would hit as a KeyError/ConfigurationError, said in one line."""
    from seamless_config import select

    cluster = select.get_selected_cluster()
    if cluster is None:
        raise UsageError(f"no cluster selected: pass --cluster or set one in seamless.yaml{hint}")
    if cluster not in known_cluster_names():
        raise _unknown_cluster(cluster)
    if sel.service != "pure-daskserver" and select.get_selected_project() is None:
        raise UsageError(f"no project selected: pass --project or set one in seamless.yaml{hint}")


def _configure(sel: Selection) -> dict[str, Any]:
    """The launcher config from seamless-config's configure_<service> (same calls as
    seamless_config.service._dispatch.resolve)."""
    from seamless_config import tools

    project = TOPLEVEL if sel.project == CACHE_ALIAS else sel.project
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


def _host_of(cluster: str | None, ssh_hostname: str | None, hostname: str | None) -> str | None:
    """#1/#35: where a cluster's frontend is reached. None means this machine."""
    from seamless_config.cluster import get_local_cluster

    if cluster == CACHE_CLUSTER or cluster == get_local_cluster():
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
    with _session():
        _select_stage_first(sel)
        if _is_cache_request(sel):
            with _config_errors("SEAMLESS_CACHE"):
                _prepare_cache(sel)
        else:
            _load(workdir=_config_dir(sel, from_cwd), ignore_cache=sel.cluster not in (None, CACHE_CLUSTER))
        _apply_selection(sel)
        hint = "" if from_cwd or sel.workdir is not None else " (resolve reads seamless.yaml only with --workdir DIR)"
        _check_ready(sel, hint=hint)
        with _config_errors(sel.service):
            config = dict(_configure(sel))
            from remote_http_launcher import Configuration, LauncherError

            try:
                key = Configuration.from_mapping(config).key
            except LauncherError as exc:
                raise UsageError(f"{sel.service}: invalid launcher configuration: {_one_line(exc)}") from None
            config["key"] = key
            meta = _dispatch.add_meta(config, sel.namespace())
        if sel.service not in PERSISTENT_SERVICES:
            meta["mode"] = "rw"  # #32: what the key says
        config["meta"] = meta
        host = _host_of(meta.get("cluster"), config.get("ssh_hostname"), config.get("hostname"))
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


# ---------------------------------------------------------------- clusters


def _with_clusters(fn: Callable[[], T], *, from_cwd: bool) -> T:
    """Run fn with the real clusters loaded (SEAMLESS_CACHE ignored: #27)."""
    with _session():
        _load(workdir=os.getcwd() if from_cwd else None, ignore_cache=True)
        return fn()


def known_clusters(*, from_cwd: bool = True) -> list[str]:
    """Cluster names in definition order (clusters.yaml, clusters/*.yaml, `clusters:` in
    seamless.yaml), plus __SEAMLESS_CACHE__ at the end when SEAMLESS_CACHE is set."""
    names = _with_clusters(known_cluster_names, from_cwd=from_cwd)
    if _seamless_cache_dir() is not None and CACHE_CLUSTER not in names:
        names.append(CACHE_CLUSTER)
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

    with _session():
        _select_stage_first(sel)
        _load(workdir=os.getcwd(), ignore_cache=True)
        return select.get_selected_cluster()


def _frontends(cluster: str, frontend_name: str | None) -> list[Any]:
    from seamless_config.cluster import _clusters

    if cluster not in _clusters:
        raise _unknown_cluster(cluster)
    found = [f for f in _clusters[cluster].frontends if frontend_name is None or f.hostname == frontend_name]
    if not found:
        if frontend_name is not None:
            raise UsageError(f"cluster {cluster!r} has no frontend with hostname {frontend_name!r}")
        raise UsageError(f"cluster {cluster!r} has no frontends")
    return found


def cluster_host(cluster: str, frontend_name: str | None = None, *, from_cwd: bool = True) -> str | None:
    """SSH host of the cluster's first frontend (or the one named --frontend-name); None for
    the local cluster and the SEAMLESS_CACHE cluster (#35: same rule as per-service hosts)."""
    if cluster == CACHE_CLUSTER:
        return None

    def pick() -> str | None:
        frontend = _frontends(cluster, frontend_name)[0]
        return _host_of(cluster, frontend.ssh_hostname, frontend.hostname)

    return _with_clusters(pick, from_cwd=from_cwd)


def cluster_hosts(cluster: str, frontend_name: str | None = None, *, from_cwd: bool = True) -> list[str | None]:
    """The distinct hosts of all the cluster's frontends, in order (cluster-wide stop/rm ask
    each: a service runs on the first frontend that supports it, not always the first one)."""
    if cluster == CACHE_CLUSTER:
        return [None]

    def pick() -> list[str | None]:
        hosts: list[str | None] = []
        for frontend in _frontends(cluster, frontend_name):
            host = _host_of(cluster, frontend.ssh_hostname, frontend.hostname)
            if host not in hosts:
                hosts.append(host)
        return hosts

    return _with_clusters(pick, from_cwd=from_cwd)


def cluster_roots(cluster: str, frontend_name: str | None = None, *, from_cwd: bool = True) -> dict[str, str]:
    """{"hashserver": bufferdir, "database": database_dir} of the frontend cluster_host()
    picks (services it lacks are left out); `~` is expanded only for the local cluster."""
    if cluster == CACHE_CLUSTER:
        with _session(), _config_errors("SEAMLESS_CACHE"):
            root = _cache_root(Selection(service="hashserver", project=TOPLEVEL))
        if root is None:
            raise UsageError("the SEAMLESS_CACHE cluster needs SEAMLESS_CACHE to be set")
        return {"hashserver": root, "database": root}

    def pick() -> dict[str, str]:
        frontend = _frontends(cluster, frontend_name)[0]
        local = _host_of(cluster, frontend.ssh_hostname, frontend.hostname) is None
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
    if cluster == CACHE_CLUSTER:
        return service in PERSISTENT_SERVICES
    attr = "daskserver" if service == "pure-daskserver" else service
    return _with_clusters(
        lambda: any(getattr(f, attr, None) is not None for f in _frontends(cluster, frontend_name)),
        from_cwd=from_cwd,
    )
