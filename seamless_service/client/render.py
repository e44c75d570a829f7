"""Rendering ps rows: tables (tabulate), human sizes, NDJSON."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

BASE_COLUMNS = ("SERVICE", "PROJECT", "STAGE", "PROCESS", "PORT", "PERSISTENT", "SIZE")

_FIELD = {
    "SERVICE": "service", "PROJECT": "project", "STAGE": "stage", "PROCESS": "process",
    "PORT": "port", "PERSISTENT": "persistent", "SIZE": "size", "CLUSTER": "cluster",
    "KEY": "key", "HEALTH": "health", "MODE": "mode", "HOST": "host",
}


def human_size(n: Any) -> str:
    """Bytes in SI units, as `du --si` would say: 999 B, 1.2 kB, 42 MB, 3.1 GB."""
    if n is None:
        return "-"
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return str(n)
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "PB":
            break
        value /= 1000
    else:
        unit = "PB"
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(_FIELD[column])
    if column == "SIZE":
        return human_size(value)
    if column == "PORT":
        # seamless-config hides port 0 (truthiness, #34); a port of 0 is still shown here.
        return "-" if value is None else str(value)
    if column == "HEALTH":
        if value is None:
            return "-"
        return "ok" if value.get("healthy") else (value.get("problem") or "unhealthy")
    if value is None or value == "":
        return "-"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = BASE_COLUMNS) -> str:
    from tabulate import tabulate  # lazy: ~0.1 s import, not needed for --json

    body = [[_cell(row, c) for c in columns] for row in rows]
    if not body:
        return "  ".join(columns)
    return tabulate(body, headers=list(columns), tablefmt="plain", disable_numparse=True)


def ndjson(rows: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line, sorted keys, default separators (as seamless-service-ps)."""
    return "\n".join(json.dumps(row, sort_keys=True) for row in rows)
