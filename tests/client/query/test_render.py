"""Tables, sizes and NDJSON of `ps`, next to seamless-config's own `_table`/`_emit_json`."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seamless_config.service import ps as old

from seamless_service.client.query import render
from seamless_service.client.query.render import BASE_COLUMNS, columns_for, human_size, ndjson, table


def _row(**fields) -> dict:
    base = {"service": "hashserver", "cluster": "c1", "project": "proj", "stage": None, "process": "running",
            "port": 4000, "persistent": None, "size": None, "key": "hashserver-c1-rw-proj"}
    base.update(fields)
    return base


@pytest.mark.parametrize("value,text", [
    (None, "-"), (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (4345, "4.3 kB"), (9_949, "9.9 kB"),
    (9_950, "10 kB"), (42_000_000, "42 MB"), (999_499, "999 kB"), (999_600, "1.0 MB"),
    (3_100_000_000, "3.1 GB"), (5 * 10**18, "5000 PB"),
])
def test_human_size(value, text):
    assert human_size(value) == text


def test_header_is_seamless_service_ps_header(capsys):
    old._table([])
    old_header = capsys.readouterr().out.split()
    assert table([]).split() == old_header == list(BASE_COLUMNS)
    assert "\n" not in table([])  # header alone when there are no rows


def test_cells_match_seamless_service_ps_except_size_and_port_zero(capsys):
    rows = [_row(), _row(process=None, port=None, persistent="populated", size=4345, key=None, stage="s1"),
            _row(process="failed", port=0)]
    old._table(rows)
    old_lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    ours = [line.split() for line in table(rows).splitlines()]
    assert ours[1] == old_lines[1]
    assert old_lines[2][-1] == "4345" and ours[2][-2:] == ["4.3", "kB"]   # human units
    assert ours[2][:-2] == old_lines[2][:-1]
    assert old_lines[3][4] == "-" and ours[3][4] == "0"                  # #34: port 0 shown


def test_columns_are_aligned_and_lines_do_not_end_in_spaces():
    text = table([_row(project="a-long-project-name"), _row()])
    lines = text.splitlines()
    assert all(line == line.rstrip() for line in lines)
    starts = {[m.start() for m in re.finditer(r"\S+", line)][2] for line in lines}
    assert len(starts) == 1  # the STAGE column starts at one offset on every line


def test_wide_and_health_columns():
    """#34: --wide shows which cluster and which key a row is."""
    assert columns_for() == list(BASE_COLUMNS)
    assert columns_for(wide=True) == ["CLUSTER", *BASE_COLUMNS, "KEY"]
    assert columns_for(wide=True, health=True)[-1] == "HEALTH"
    lines = table([_row(health="port closed")], columns_for(wide=True, health=True)).splitlines()
    assert lines[1].startswith("c1 ")
    assert lines[1].endswith("hashserver-c1-rw-proj  port closed")


def test_pending_size_is_said():
    text = table([_row(persistent="populated", size=None, size_state="pending")])
    assert text.splitlines()[1].split()[-1] == "pending"


def test_a_size_that_is_not_fresh_is_marked():
    """Issue 8 item 8: a stale size (measured before the directory last changed) looked
    exactly like a fresh one in the table."""
    rows = [_row(persistent="populated", size=235_000, size_state="stale"),
            _row(persistent="populated", size=235_000, size_state="fresh"),
            _row(persistent="empty", size=0, size_state="fresh"),
            _row(persistent="populated", size=4096, size_state="unavailable")]  # ssh transport: a file size
    assert [line.rsplit("  ", 1)[-1] for line in table(rows).splitlines()[1:]] == [
        "235 kB*", "235 kB", "0 B", "4.1 kB"]


def test_ndjson_is_byte_for_byte_seamless_service_ps_ndjson(capsys):
    rows = [_row(), _row(key=None, path="/x", size=5)]
    old._emit_json(rows)
    assert ndjson(rows) + "\n" == capsys.readouterr().out
    assert [json.loads(line) for line in ndjson(rows).splitlines()] == rows


_CELL = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({field: st.one_of(st.none(), _CELL) for field in
                                       ("service", "project", "stage", "process", "persistent")}),
                max_size=6))
def test_table_prints_what_tabulate_prints(rows):
    """Issue 13: plain cells skip tabulate's per-cell inference; the text is tabulate's
    (cells with spaces around them, tabs, newlines, escapes or non-ASCII still go to it)."""
    from tabulate import tabulate

    rows = [dict(row, port=None, size=None) for row in rows]
    body = [list(BASE_COLUMNS)] + [[render._cell(row, c) for c in BASE_COLUMNS] for row in rows]
    text = tabulate(body, tablefmt="plain", disable_numparse=True, stralign="left")
    assert table(rows) == "\n".join(line.rstrip() for line in text.splitlines())


def test_plain_tables_do_not_call_tabulate(monkeypatch):
    import tabulate

    monkeypatch.setattr(tabulate, "tabulate", lambda *a, **kw: pytest.fail("tabulate was called"))
    assert table([_row(project="p1"), _row(project="a-longer-project")]).splitlines()[2].startswith(
        "hashserver  a-longer-project  ")
