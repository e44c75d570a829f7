"""seamless-config's global state, held and put back around each use, and its loading errors.

seamless-config keeps its state in module globals: every use holds CONFIG_LOCK, starts
from pristine defaults (session()) and puts the caller's state back afterwards (a program
that uses the Seamless runtime and this client in one process keeps its own
configuration). What goes wrong while loading clusters.yaml, seamless.yaml or the profile
becomes one readable UsageError line (config_errors()), never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Iterator

from ..errors import ServiceError, UsageError

CONFIG_LOCK = threading.RLock()


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
    cluster._local_cluster = None  # define_clusters never unsets it (stale in a keeper)
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
def session() -> Iterator[None]:
    """Hold CONFIG_LOCK; seamless-config starts clean (and parses YAML through yaml_cache);
    the caller's state comes back after."""
    from .yaml_cache import cached_yaml

    with CONFIG_LOCK:
        saved = _snapshot()
        _reset()
        try:
            with cached_yaml():   # its YAML parses: the C loader, each text once (yaml_cache.py)
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


def seamless_cache_dir() -> str | None:
    import seamless_config

    return seamless_config.get_seamless_cache()


# ---------------------------------------------------------------- errors


def one_line(exc: BaseException) -> str:
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
        return one_line(exc)
    example = "\n".join("    " + line for line in rest.splitlines() if line.strip())
    return f"{first[:-len('Example:')].rstrip(' .')}, for example:\n{example}"


def _yaml_error(exc: BaseException, shown: str | None = None) -> str:
    """`FILE:LINE:COLUMN: invalid YAML: PROBLEM (CONTEXT at line L, column C)`: PyYAML's
    message spreads this over four lines, whose first is only the context."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is None or not problem:
        return f"{shown or 'configuration'}: invalid YAML: {one_line(exc)}"
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

    from .yaml_cache import safe_load

    home = Path(os.environ.get("HOME") or str(Path.home()))
    folder = home / ".seamless"
    candidates = [folder / "clusters.yaml"] + sorted((folder / "clusters").glob("*.yaml"))
    for path in candidates:
        if not path.is_file():
            continue
        shown = _home_file(path)
        try:
            data = safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {shown}: {one_line(exc)}") from exc
        except yaml.YAMLError as exc:
            raise UsageError(_yaml_error(exc, shown)) from exc
        if data is None:
            raise UsageError(f"{shown} is empty: define clusters in it (name: definition) or remove it")
        if not isinstance(data, dict):
            raise UsageError(f"{shown} must map cluster names to cluster definitions")


@contextlib.contextmanager
def config_errors(what: str) -> Iterator[None]:
    """seamless-config's exceptions during loading -> one readable UsageError line."""
    import yaml

    try:
        yield
    except ServiceError:
        raise
    except yaml.YAMLError as exc:  # seamless.yaml, seamless.profile.yaml: the mark names the file
        raise UsageError(_yaml_error(exc)) from exc
    except AssertionError as exc:
        # define_clusters asserts that local_cluster names a defined cluster
        arg = exc.args[0] if exc.args else None
        if isinstance(arg, tuple) and arg and isinstance(arg[0], str):
            raise UsageError(f"local_cluster {arg[0]!r} is not a defined cluster") from exc
        raise UsageError(f"{what}: invalid cluster definitions") from exc
    except KeyError as exc:
        raise UsageError(f"{what}: invalid cluster definition: missing {one_line(exc)!r}") from exc
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        raise UsageError(f"{what}: {_with_example(exc)}") from exc
    except ImportError as exc:  # e.g. configure_jobserver needs seamless_remote
        raise ServiceError(f"{what}: cannot resolve here: {one_line(exc)}") from exc
    except SystemExit as exc:  # seamless-config's "raise SystemExit(message)"
        raise UsageError(_strip_prog(str(exc.code))) from exc


def _strip_prog(message: str) -> str:
    for prefix in ("seamless-service: ",):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


# ---------------------------------------------------------------- loading


def load(*, workdir: str | None, ignore_cache: bool) -> None:
    """Load clusters (+ DIR/seamless*.yaml when workdir is given) through seamless-config."""
    from seamless_config.service import _dispatch
    import seamless_config.config_files as config_files

    if ignore_cache or seamless_cache_dir() is None:
        _check_cluster_files()
    with config_errors("configuration"), _cache_ignored(ignore_cache):
        if workdir is not None:
            with _dispatch._temporary_workdir(workdir):
                config_files.load_config_files()
        else:
            _dispatch._load_config(from_cwd=False)


def known_cluster_names() -> list[str]:
    from seamless_config.cluster import _clusters

    return list(_clusters)


def unknown_cluster(name: str, known: list[str] | None = None) -> UsageError:
    """The error for a cluster name the configuration lacks; `known`: the names it has
    (default: those seamless-config holds now)."""
    known = known_cluster_names() if known is None else known
    if known:
        return UsageError(f"unknown cluster {name!r} (known: {', '.join(known)})")
    return UsageError(f"unknown cluster {name!r} (no clusters defined in ~/.seamless/clusters.yaml)")
