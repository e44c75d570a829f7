"""`ps --json` for scripts (issue 10): every row of one output has the same fields, null
where one does not apply, whatever the view and flags; a host that failed is a record of
its own on stdout, `{"host", "cluster", "error"}`, besides the line on stderr and exit 1.

Real state: services launched through remote-http-launcher in a sandbox (tests/client/
test_ps_cmd.World: a local cluster `loc` with data directories, and a cluster `dead` whose
frontend is an unused loopback port), one malformed state file.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from seamless_service.client.query.rows import ERROR_RECORD_FIELDS, JSON_FIELDS, persistent_row, process_row
from tests.support.cli import ndjson
from tests.support.world import JOB_META, World

# Written out, not imported: this is the schema scripts rely on (README); changing it
# must change this test.
FIELDS = {
    "service", "cluster", "project", "stage", "process", "port", "persistent", "size", "key", "path",
    "mode", "subproject", "substage", "host", "size_state", "health", "health_error", "persistent_error",
    "error",
}
ERROR_FIELDS = {"host", "cluster", "error"}
BROKEN_KEY = "hashserver-loc-rw-broken"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    """A hashserver (data dir: merged rows), a staged database, a jobserver (no data dir:
    no `path`), data directories no process uses (persistent-only rows), a malformed state
    file (an error row), plus the dead cluster and a second cluster on the same dead host."""
    w = World.build(tmp_path_factory.mktemp("psjson"))
    try:
        w.more_clusters["dead2"] = {"type": "local", "frontends": [{
            "hostname": "dead.example.org", "ssh_hostname": "deadhost",
            "hashserver": {"bufferdir": "/srv/buf2"}}]}
        w.write_clusters(dead=True)
        w.launch("hs", "hashserver")
        w.launch("db", "database", "--stage", "s1")
        w.launch("job", "", key="jobserver-loc-rw-myproj--STAGE-s1", meta=JOB_META)
        (w.box.server_dir / f"{BROKEN_KEY}.json").write_text("{not json")
        yield w
    finally:
        w.box.kill_all()


def split(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, error records): a record without `service` is a failed host."""
    return [r for r in records if "service" in r], [r for r in records if "service" not in r]


def test_the_field_sets_are_the_documented_ones():
    assert set(JSON_FIELDS) == FIELDS and len(JSON_FIELDS) == len(FIELDS)
    assert set(ERROR_RECORD_FIELDS) == ERROR_FIELDS
    # every field a row builder sets is one of them (a new one must be added to the schema)
    row = process_row({"key": "hashserver-c-rw-p", "status": "error", "port": 1, "error": "bad"})
    data = persistent_row({"path": "/d/p", "state": "error", "bytes_state": "error", "error": "bad"},
                          "hashserver", "c", root="/d")
    assert set(row) <= FIELDS and set(data) <= FIELDS


@pytest.mark.parametrize("argv", [
    ("--cluster", "loc"),                                  # server rows, merged, persistent-only
    ("--cluster", "loc", "--wide", "--health"),
    ("--cluster", "loc", "--server", "--status", "running"),
    ("--persistent",),                                     # client rows + resolved data dirs
    ("--client", "--cluster", "loc", "--persistent"),
    ("--local", "--persistent", "--health"),
    ("--local",),
])
def test_every_row_of_one_output_has_the_same_fields(world, argv):
    code, out, err = world.ps(*argv, "--json")
    assert code == 0, err
    rows = ndjson(out)
    for row in rows:
        assert set(row) == FIELDS, row
    kinds = {("job" if r["service"] == "jobserver" else "data" if r["key"] is None else
              "error" if r["error"] else "process") for r in rows}
    assert "process" in kinds and "job" in kinds, rows
    job = next(r for r in rows if r["service"] == "jobserver")
    # seamless-service-ps leaves these out of a jobserver row; here they are null
    assert (job["path"], job["size_state"], job["persistent_error"]) == (None, None, None)
    if "--health" not in argv:
        assert {r["health"] for r in rows} == {None}


def test_persistent_only_merged_and_error_rows_have_the_same_fields(world):
    code, out, err = world.ps("--cluster", "loc", "--json")
    assert code == 0, err
    rows = ndjson(out)
    data_only = [r for r in rows if r["key"] is None]
    merged = [r for r in rows if r["key"] and r["path"]]
    broken = [r for r in rows if r["key"] == BROKEN_KEY]
    assert data_only and merged and broken[0]["error"]
    assert {frozenset(r) for r in rows} == {frozenset(FIELDS)}


def test_a_dead_cluster_is_a_record_on_stdout_too(world):
    code, out, err = world.ps("--cluster", "dead", "--json")
    assert code == 1
    [record] = ndjson(out)
    assert set(record) == ERROR_FIELDS
    assert (record["host"], record["cluster"]) == ("deadhost", "dead") and record["error"]
    assert err == f"seamless-service: cluster dead: {record['error']}\n"   # the stderr line stays


def test_all_clusters_rows_then_one_record_per_failed_cluster(world):
    """Two clusters on one dead host: one line on stderr, a record for each cluster."""
    code, out, err = world.ps("--all-clusters", "--persistent", "--json")
    assert code == 1
    records = ndjson(out)
    rows, errors = split(records)
    assert records[len(rows):] == errors          # the failures come after the rows
    assert {r["cluster"] for r in rows} == {"loc"}
    assert all(set(r) == FIELDS for r in rows)
    assert all(set(e) == ERROR_FIELDS for e in errors)
    assert sorted((e["host"], e["cluster"]) for e in errors) == [("deadhost", "dead"), ("deadhost", "dead2")]
    assert len({e["error"] for e in errors}) == 1
    assert err.splitlines() == [f"seamless-service: cluster dead, cluster dead2: {errors[0]['error']}"]


def test_a_broken_cluster_definition_is_a_record_with_no_host(world):
    """--frontend-name that only the dead clusters have: `loc` cannot be planned at all."""
    code, out, err = world.ps("--all-clusters", "--frontend-name", "dead.example.org", "--json")
    assert code == 1
    rows, errors = split(ndjson(out))
    assert rows == []
    by_cluster = {e["cluster"]: e for e in errors}
    assert set(by_cluster) == {"loc", "dead", "dead2"}
    assert by_cluster["loc"]["host"] is None and by_cluster["dead"]["host"] == "deadhost"
    assert len(err.splitlines()) == 2


def test_a_table_keeps_failures_on_stderr_only(world):
    code, out, err = world.ps("--all-clusters")
    assert code == 1 and "deadhost" not in out and out.splitlines()[0].split()[0] == "SERVICE"
    assert len(err.splitlines()) == 1


def test_watch_json_frames_carry_the_error_records(world):
    import subprocess
    import sys

    from tests.support.cli import Output, interrupt

    proc = subprocess.Popen([sys.executable, "-m", "seamless_service.client.entry", "ps", "--cluster", "dead",
                             "--json", "--watch", "1"], cwd=world.proj, env=world.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = Output(proc.stdout.fileno())
    try:
        text = out.wait_for(lambda t: "\n" in t)
    finally:
        code, err = interrupt(proc)
    assert code == 0, err
    record = json.loads(text.splitlines()[0])
    assert set(record) == ERROR_FIELDS and record["cluster"] == "dead"
    assert f"cluster dead: {record['error']}" in err


def test_a_failed_op_is_a_record_for_the_cluster_it_was_about(tmp_path):
    """Two clusters on this machine, one with a data root the path policy refuses: the
    record names that cluster only, and the other cluster's rows are all there."""
    w = World.build(tmp_path, dead_cluster=False)
    try:
        w.more_clusters["sys"] = {"type": "local", "frontends": [{"hashserver": {"bufferdir": "/etc"}}]}
        w.write_clusters(dead=False)
        key = w.launch("hs", "hashserver")
        code, out, err = w.ps("--all-clusters", "--persistent", "--json")
        assert code == 1
        rows, errors = split(ndjson(out))
        assert key in {r["key"] for r in rows}
        [record] = errors
        assert (record["host"], record["cluster"]) == (None, "sys")
        assert record["error"].startswith("persistent: ") and "/etc" in record["error"]
        assert err == f"seamless-service: cluster loc, cluster sys: {record['error']}\n"   # the host's line
    finally:
        w.box.kill_all()
