"""Rendering ps rows: tables (tabulate's plain format), human sizes, NDJSON."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

BASE_COLUMNS = ("SERVICE", "PROJECT", "STAGE", "PROCESS", "PORT", "PERSISTENT", "SIZE")

_FIELD = {
    "SERVICE": "service", "PROJECT": "project", "STAGE": "stage", "PROCESS": "process",
    "PORT": "port", "PERSISTENT": "persistent", "SIZE": "size", "CLUSTER": "cluster",
    "KEY": "key", "HEALTH": "health", "MODE": "mode", "HOST": "host",
    "SUBPROJECT": "subproject", "SUBSTAGE": "substage",
}


def columns_for(*, wide: bool = False, health: bool = False) -> list[str]:
    """The table's columns: seamless-service-ps's, plus CLUSTER and KEY with --wide (#34)
    and HEALTH with --health."""
    columns = list(BASE_COLUMNS)
    if wide:
        columns = ["CLUSTER"] + columns + ["KEY"]
    if health:
        columns.append("HEALTH")
    return columns


def human_size(n: Any) -> str:
    """Bytes in SI units, as `du --si` would say: 999 B, 1.2 kB, 42 MB, 3.1 GB."""
    if n is None:
        return "-"
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return str(n)
    value = float(n)
    unit = "B"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 999.5 or unit == "PB":
            break
        value /= 1000
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"


STALE_MARK = "*"  # after a size that is not fresh (explained in `ps --help`)


def _size_cell(row: dict[str, Any]) -> str:
    value = row.get("size")
    state = row.get("size_state")
    if value is None and state == "pending":
        return "pending"  # the agent's sizer is still walking this directory
    if value is not None and state == "stale":
        # measured before the directory last changed; a re-walk is on its way
        return human_size(value) + STALE_MARK
    return human_size(value)


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "SIZE":
        return _size_cell(row)
    value = row.get(_FIELD[column])
    if column == "PORT":
        # seamless-config hides port 0 (truthiness, #34); a port of 0 is shown here.
        return "-" if value is None or value == "" else str(value)
    if value is None or value == "":
        return "-"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = BASE_COLUMNS) -> str:
    """A plain table; with no rows, the header line alone (as seamless-service-ps)."""
    body = [list(columns)] + [[_cell(row, c) for c in columns] for row in rows]
    if all(_plain(cell) for line in body for cell in line):
        return _plain_table(body)
    from tabulate import tabulate  # lazy: ~0.1 s import, not needed for --json

    # The header goes in as the first row: as `headers=` tabulate pads every header by two
    # extra spaces. Cells are left-aligned, two spaces apart; no trailing spaces.
    text = tabulate(body, tablefmt="plain", disable_numparse=True, stralign="left")
    return "\n".join(line.rstrip() for line in text.splitlines())


def _plain(cell: str) -> bool:
    """A cell whose width is its length and that tabulate prints as it is: printable ASCII
    (no tabs, newlines or escape codes), no surrounding spaces."""
    return cell.isascii() and cell.isprintable() and cell == cell.strip()


def _plain_table(body: list[list[str]]) -> str:
    """What table()'s tabulate call prints for plain cells (tests/client/query/test_render.py
    compares the two), without its per-cell type and width inference: ~2-5 ms of a warm
    `ps` of 80 rows."""
    widths = [max(len(cell) for cell in column) for column in zip(*body)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in body)


def ndjson(rows: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line, sorted keys, default separators (as seamless-service-ps)."""
    return "\n".join(json.dumps(row, sort_keys=True) for row in rows)
