"""Service keys: the helpers' key rule, and parsing Seamless keys into their parts.

Real state files usually have no `meta` block (seamless-remote does not pass one), so
filters and rows fall back to the key. The legacy parser in seamless-config mis-splits
(README, Deliberate differences #30): SUBSTAGE is not split, a cluster containing `-rw-`/`-ro-` and a queue
containing `-` are split at the wrong place. Here a key yields *all* readings consistent
with the key grammar; `key_matches` accepts a filter if any reading satisfies it, and
`parse_key` returns the first (leftmost-cluster) reading for display.
"""

from __future__ import annotations

import re
from typing import Any

KEY_RE = re.compile(r"[a-zA-Z0-9._-]+")
KEY_MAX_LEN = 255

SERVICES = ("hashserver", "database", "jobserver", "daskserver", "pure-daskserver")
META_FIELDS = ("service", "cluster", "mode", "project", "subproject", "stage", "substage", "queue")


def is_valid_key(key: object) -> bool:
    """The helpers' rule (`ssh_guard/_state.py`: letters, digits, `.`, `_`, `-`, full match),
    tightened on purpose: no leading `.` or `-`, and no `..` anywhere. No launcher template
    produces such keys; the helpers accept them, but a leading `-` is then read as an option
    (`rhl-stop -h` prints help and stops nothing; `rhl-rm --server` takes a key for a flag),
    and a leading dot names a hidden file that no launcher writes."""
    return (
        isinstance(key, str)
        and len(key) <= KEY_MAX_LEN
        and KEY_RE.fullmatch(key) is not None
        and key[:1] not in (".", "-")
        and ".." not in key
    )


def _parse_tail(tail: str) -> dict[str, Any] | None:
    """`proj[--sub...][--STAGE-s[SUBSTAGE-ss]]` -> project/subproject/stage/substage."""
    meta: dict[str, Any] = {"project": None, "subproject": None, "stage": None, "substage": None}
    if not tail:
        return meta
    components = tail.split("--")
    stage_index = next((i for i, c in enumerate(components) if c.startswith("STAGE-")), None)
    if stage_index is not None:
        if stage_index != len(components) - 1:
            return None  # nothing may follow the stage component
        stage = components[stage_index][len("STAGE-"):]
        stage, sep, substage = stage.partition("SUBSTAGE-")
        if not stage:
            return None
        meta["stage"] = stage
        meta["substage"] = substage if sep else None
        components = components[:stage_index]
    if components:
        if any(not c for c in components):
            return None
        meta["project"] = components[0]
        if len(components) > 1:
            meta["subproject"] = "/".join(components[1:])
    return meta


def key_readings(key: object) -> list[dict[str, Any]]:
    """Every reading of a Seamless key consistent with the key templates (remote-http-launcher's tools.yaml).

    An empty list means the key is not a Seamless service key.
    """
    if not isinstance(key, str):
        return []
    readings: list[dict[str, Any]] = []
    if key.startswith("pure-daskserver-"):
        rest = key[len("pure-daskserver-"):]
        for i, ch in enumerate(rest):
            if ch == "-" and 0 < i < len(rest) - 1:
                readings.append(_meta("pure-daskserver", cluster=rest[:i], queue=rest[i + 1:]))
        return readings
    for service in ("hashserver", "database", "jobserver", "daskserver"):
        prefix = service + "-"
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        modes = ("rw",) if service in ("jobserver", "daskserver") else ("rw", "ro")
        for match in re.finditer(r"-(rw|ro)-", rest):
            mode = match.group(1)
            cluster = rest[: match.start()]
            if mode not in modes or not cluster or "--" in cluster:
                continue
            tail = _parse_tail(rest[match.end():])
            if tail is None:
                continue
            if service in ("hashserver", "database") and tail["substage"] is not None:
                continue  # hashserver/database keys carry no substage
            readings.append(_meta(service, cluster=cluster, mode=mode, **tail))
    return readings


def _meta(service: str, **fields: Any) -> dict[str, Any]:
    meta = {name: None for name in META_FIELDS}
    meta["service"] = service
    meta.update(fields)
    return meta


def parse_key(key: object) -> dict[str, Any]:
    """The display reading of a key (leftmost cluster split), or `{}` if not a Seamless key."""
    readings = key_readings(key)
    return readings[0] if readings else {}


def row_meta(row: dict[str, Any]) -> dict[str, Any]:
    """A row's meta: its `meta` block if it is a non-empty map, else parsed from the key."""
    meta = row.get("meta")
    if isinstance(meta, dict) and meta:
        return meta
    return parse_key(row.get("key"))


def meta_candidates(row: dict[str, Any]) -> list[dict[str, Any]]:
    meta = row.get("meta")
    if isinstance(meta, dict) and meta:
        return [meta]
    return key_readings(row.get("key"))


PROJECT_TOPLEVEL = "__TOPLEVEL__"
SEAMLESS_CACHE_CLUSTER = "__SEAMLESS_CACHE__"
SEAMLESS_CACHE_ALIAS = "SEAMLESS_CACHE"


def _meta_matches(meta: dict[str, Any], filters: dict[str, Any]) -> bool:
    for name, wanted in filters.items():
        if wanted is None:
            continue
        actual = meta.get(name)
        if name == "project" and wanted in (SEAMLESS_CACHE_ALIAS, PROJECT_TOPLEVEL):
            if actual == PROJECT_TOPLEVEL and meta.get("cluster") == SEAMLESS_CACHE_CLUSTER:
                continue
        if actual != wanted:
            return False
    return True


def row_matches(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    """True if some reading of the row's meta satisfies every non-None filter.

    With no filter set every row passes, including rows whose key is not a Seamless key.
    """
    active = {k: v for k, v in filters.items() if v is not None}
    if not active:
        return True
    return any(_meta_matches(meta, active) for meta in meta_candidates(row))
