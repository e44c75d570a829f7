"""YAML as the client reads its configuration: PyYAML's C loader where PyYAML was built with
libyaml (pure Python otherwise), and each text parsed once per process.

Every command reads clusters.yaml, seamless.yaml and seamless.profile.yaml again (an edit
takes effect on the very next command, also in the tunnel keeper), but parsing them is
what cost: PyYAML's pure-Python loader took ~1.5 ms per small file, several files per
command. `safe_load` keeps what a text parsed to, keyed by the text itself: the file is
still opened and read every time (a few microseconds), so the answer can never be stale,
not even after a same-size edit within one tick of the file system's clock, which a key
of path, size, mtime, ctime and inode can miss. What is kept is a pickle: every caller
gets objects of its own to change.

`cached_yaml()` lends this loader to seamless-config for the duration of a load
(session.py does, under its lock): config_files.py calls `yaml.safe_load(handle)` on its
module global `yaml`, the one name swapped, and put back afterwards.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import threading
from typing import Any, Iterator

import yaml

# CSafeLoader: libyaml's parser under PyYAML's own SafeConstructor, so the values are
# those of yaml.safe_load. Its error messages are worded differently: see safe_load.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_TEXTS = 64   # distinct texts kept (a user has a handful of configuration files)

_parsed: dict[Any, bytes] = {}   # text (str or bytes) -> pickle of its parse
_lock = threading.Lock()


def loader_name() -> str:
    """'CSafeLoader' or 'SafeLoader': which one runs here (for the benchmarks' report)."""
    return SafeLoader.__name__


def safe_load(stream: Any) -> Any:
    """yaml.safe_load(stream) for a str, bytes or an open file; a text parsed before comes
    from the cache. An error is raised as yaml.safe_load raises it (the pure-Python
    loader's message, marks naming the stream's file) and nothing is kept of it."""
    name = None
    if hasattr(stream, "read"):
        name = getattr(stream, "name", None)
        stream = stream.read()
    with _lock:
        kept = _parsed.get(stream)
    if kept is not None:
        return pickle.loads(kept)
    try:
        value = yaml.load(_source(stream, name), Loader=SafeLoader)
    except yaml.YAMLError:
        if SafeLoader is yaml.SafeLoader:
            raise
        # libyaml words its problems its own way ("did not find expected ',' or ']'");
        # the pure-Python loader's message is the one users (and seamless-config) know,
        # and a broken file is rare enough to parse twice.
        value = yaml.load(_source(stream, name), Loader=yaml.SafeLoader)
    kept = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    with _lock:
        if len(_parsed) >= MAX_TEXTS:
            _parsed.pop(next(iter(_parsed)))   # the oldest: edits leave old texts behind
        _parsed[stream] = kept
    return pickle.loads(kept)


def _source(text: Any, name: Any) -> io.IOBase:
    source = io.StringIO(text) if isinstance(text, str) else io.BytesIO(text)
    if isinstance(name, str):
        source.name = name   # what error marks show, as when PyYAML reads the file itself
    return source


class _CachedYaml:
    """What seamless-config's config_files sees as `yaml` during a load: this module's
    safe_load, everything else PyYAML's."""

    safe_load = staticmethod(safe_load)

    def __getattr__(self, name: str) -> Any:
        return getattr(yaml, name)


@contextlib.contextmanager
def cached_yaml() -> Iterator[None]:
    """seamless-config's configuration loads use safe_load above until the block ends.
    The caller holds session.CONFIG_LOCK (no other thread loads meanwhile)."""
    import seamless_config.config_files as config_files

    original = config_files.yaml
    config_files.yaml = _CachedYaml()
    try:
        yield
    finally:
        config_files.yaml = original
