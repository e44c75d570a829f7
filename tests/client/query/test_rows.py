"""The ps row model against seamless-config's own functions (seamless_config.service.ps):
the same fields and values, except the documented fixes (#4, #5, #9, #10, #30)."""

from __future__ import annotations

import pytest
from seamless_config.service import ps as old

from seamless_service.client.query.rows import (
    ROW_FIELDS,
    attach_health,
    error_record,
    health_summary,
    labels_from_path,
    merge_rows,
    one_per_directory,
    one_per_state,
    persistent_matches,
    persistent_row,
    process_row,
    public_row,
    status_matches,
)


def server_row(key: str, status: str = "running", port: int = 4000, **extra) -> dict:
    """A row as the agent's `ps` (side=server) returns it: rhl-ps --json fields."""
    return {"key": key, "status": status, "port": port, "live": True, "meta": {}, **extra}


def old_fields(row: dict) -> dict:
    return {name: row.get(name) for name in ROW_FIELDS}


@pytest.mark.parametrize("key", [
    "hashserver-c1-rw-proj",
    "database-c1-ro-proj--sub--a--STAGE-s1",
    "jobserver-c1-rw-proj--STAGE-s1",
    "daskserver-c1-rw-proj",
    "pure-daskserver-c1-q",
    "__SEAMLESS_CACHE__-nonsense",
])
def test_process_row_has_seamless_service_ps_fields_and_values(key):
    row = server_row(key)
    assert old_fields(process_row(row)) == old._process_row(row)


def test_cache_project_shows_the_alias_as_seamless_service_ps():
    row = server_row("hashserver-__SEAMLESS_CACHE__-rw-__TOPLEVEL__--STAGE-x")
    ours = process_row(row)
    assert ours["project"] == "SEAMLESS_CACHE" == old._process_row(row)["project"]
    assert ours["stage"] == "x"


def test_substage_is_split_off_the_stage():
    """#30: seamless-config reads stage `s1SUBSTAGE-gpu`; we read stage s1, substage gpu."""
    row = server_row("jobserver-c1-rw-proj--STAGE-s1SUBSTAGE-gpu")
    assert old._process_row(row)["stage"] == "s1SUBSTAGE-gpu"
    ours = process_row(row)
    assert (ours["stage"], ours["substage"]) == ("s1", "gpu")


def test_cluster_with_rw_in_its_name_is_read_with_the_known_cluster():
    """#30: the key of cluster `a-rw-b` is read right when we know which cluster we asked."""
    row = server_row("hashserver-a-rw-b-rw-proj")
    assert old._process_row(row)["cluster"] == "a"
    assert process_row(row)["cluster"] == "a"                      # nothing known: leftmost
    ours = process_row(row, cluster="a-rw-b")
    assert (ours["cluster"], ours["project"]) == ("a-rw-b", "proj")


def test_meta_wins_over_the_key():
    meta = {"service": "hashserver", "cluster": "c9", "mode": "ro", "project": "p", "subproject": "s",
            "stage": None, "substage": None, "queue": None}
    ours = process_row(server_row("whatever-key", meta=meta))
    assert (ours["cluster"], ours["mode"], ours["subproject"]) == ("c9", "ro", "s")


def test_client_rows_take_the_agents_process_and_their_own_ssh_host():
    client = {"key": "hashserver-c1-rw-proj", "port": 5, "host": "h", "ssh_host": "front",
              "meta": {}, "process": "running"}
    ours = process_row(client, host="ignored")
    assert (ours["process"], ours["host"]) == ("running", "front")
    # seamless-config can only say "client" (#6/#40)
    assert old._process_row({k: v for k, v in client.items() if k != "process"})["process"] == "client"
    assert process_row(server_row("hashserver-c1-rw-proj"), host="front")["host"] == "front"


@pytest.mark.parametrize("path,labels", [
    ("/r/proj", ("proj", None, None)),
    ("/r/proj/STAGE-s1", ("proj", None, "s1")),
    ("/r/proj/sub", ("proj", "sub", None)),
    ("/r/proj/sub/STAGE-x", ("proj", "sub", "x")),
    ("/r/proj/sub/a/STAGE-x", ("proj", "sub/a", "x")),
    ("/r", (None, None, None)),
])
def test_labels_from_path(path, labels):
    assert labels_from_path(path, "/r") == labels


def test_persistent_row_matches_seamless_service_ps_except_subproject_and_size():
    prow = {"path": "/data/buf/proj/sub", "state": "populated", "size": None, "modified": "x",
            "bytes": 1234, "bytes_state": "fresh"}
    before = old._persistent_row(prow, "hashserver", "c1", root="/data/buf")
    ours = persistent_row(prow, "hashserver", "c1", root="/data/buf")
    assert before["project"] == "proj/sub"                                   # #10
    assert (ours["project"], ours["subproject"]) == ("proj", "sub")
    assert (before["size"], ours["size"], ours["size_state"]) == (None, 1234, "fresh")   # #9
    same = ("service", "cluster", "stage", "process", "port", "persistent", "key", "path")
    assert {k: ours[k] for k in same} == {k: before[k] for k in same}


def test_persistent_row_below_a_tilde_root():
    prow = {"path": "/home/u/buf/proj/STAGE-s", "state": "empty", "size": None}
    ours = persistent_row(prow, "hashserver", "c1", root="~/buf")
    assert (ours["project"], ours["stage"]) == ("proj", "s")
    assert old._persistent_row(prow, "hashserver", "c1", root="~/buf")["project"] == "proj"


def test_database_size_is_the_file_size_as_before():
    prow = {"path": "/db/proj", "state": "populated", "size": 8192, "bytes": 8192, "bytes_state": "fresh"}
    assert persistent_row(prow, "database", "c1", root="/db")["size"] == 8192
    assert old._persistent_row(prow, "database", "c1", root="/db")["size"] == 8192


def _variants() -> list[dict]:
    keys = ["hashserver-c1-ro-proj", "hashserver-c1-rw-proj", "hashserver-c1-rw-proj--sub",
            "jobserver-c1-rw-proj--STAGE-s1"]
    rows = [server_row(k) for k in keys]
    # the substage variant, as a launch with meta would record it
    rows.append(server_row("jobserver-c1-rw-proj--STAGE-s1SUBSTAGE-gpu", meta={
        "service": "jobserver", "cluster": "c1", "mode": "rw", "project": "proj", "subproject": None,
        "stage": "s1", "substage": "gpu", "queue": None}))
    rows[3]["meta"] = dict(rows[4]["meta"], substage=None)
    return rows


def test_rows_never_collapse():
    """#4: seamless-config keeps one of ro/rw/subproject and one of the substage variants."""
    rows = _variants()
    collapsed: list[dict] = []
    old._merge_rows(collapsed, (old._process_row(r) for r in rows))
    assert [r["key"] for r in collapsed] == ["hashserver-c1-ro-proj", "jobserver-c1-rw-proj--STAGE-s1"]
    ours = merge_rows([process_row(r) for r in rows], [])
    assert [r["key"] for r in ours] == [r["key"] for r in rows]


def test_persistent_data_joins_every_process_row_of_its_place():
    procs = [process_row(r) for r in _variants()]
    dirs = [persistent_row({"path": p, "state": "populated", "bytes": n, "bytes_state": "fresh"},
                           "hashserver", "c1", root="/b")
            for p, n in (("/b/proj", 10), ("/b/proj/sub", 20), ("/b/proj/STAGE-s1", 30), ("/b/proj/sub", 20))]
    rows = merge_rows(procs, dirs)
    by_key = {r["key"]: r for r in rows}
    assert by_key["hashserver-c1-ro-proj"]["path"] == "/b/proj"          # ro and rw share the dir
    assert by_key["hashserver-c1-rw-proj"]["size"] == 10
    assert by_key["hashserver-c1-rw-proj--sub"]["path"] == "/b/proj/sub"
    assert by_key["jobserver-c1-rw-proj--STAGE-s1"]["persistent"] is None   # another service
    extra = [r for r in rows if r["key"] is None]
    assert [r["path"] for r in extra] == ["/b/proj/STAGE-s1"]               # once, after the others
    assert rows[-1] is not None and rows[-1]["path"] == "/b/proj/STAGE-s1"


def test_persistent_filters_include_subproject_and_the_cache_alias():
    row = persistent_row({"path": "/c/__TOPLEVEL__", "state": "empty"}, "hashserver", "__SEAMLESS_CACHE__",
                         root="/c")
    assert row["project"] == "SEAMLESS_CACHE"
    assert persistent_matches(row, {"project": "SEAMLESS_CACHE"})
    assert persistent_matches(row, {"project": "__TOPLEVEL__"})
    assert not persistent_matches(row, {"project": "other"})
    sub = persistent_row({"path": "/b/p/sub", "state": "empty"}, "hashserver", "c", root="/b")
    assert persistent_matches(sub, {"project": "p", "subproject": "sub", "mode": "ro"})  # no mode here
    assert not persistent_matches(sub, {"subproject": "other"})


@pytest.mark.parametrize("entry,summary", [
    ({"healthy": True}, ("ok", None)),
    ({"status": "stale", "error": "service is stale"}, ("stale", "service is stale")),
    ({"status": "running", "pid_alive": False, "port_open": True, "http_ok": True, "error": "e"}, ("pid dead", "e")),
    ({"status": "running", "pid_alive": True, "port_open": False, "error": "refused"}, ("port closed", "refused")),
    ({"status": "running", "pid_alive": True, "port_open": True, "http_ok": False, "http_status": 503},
     ("http 503", None)),
    ({"status": "running", "pid_alive": True, "port_open": True, "http_ok": False, "error": "timeout"},
     ("http failed", "timeout")),
])
def test_health_summary_names_the_failing_check(entry, summary):
    assert health_summary(entry) == summary


def test_health_attaches_to_running_rows_only():
    rows = [process_row(server_row("hashserver-c-rw-p")), process_row(server_row("database-c-rw-p", "stale"))]
    attach_health(rows, {"hashserver-c-rw-p": {"healthy": False, "status": "running", "pid_alive": True,
                                               "port_open": False, "error": "refused"},
                         "database-c-rw-p": {"healthy": True}})
    assert (rows[0]["health"], rows[0]["health_error"]) == ("port closed", "refused")
    assert "health" not in rows[1]


def test_public_row_drops_private_fields_only():
    row = dict(process_row(server_row("hashserver-c-rw-p")), _workdir="/w")
    public = public_row(row)
    assert "_workdir" not in public and set(ROW_FIELDS) <= set(public)
    assert public["persistent"] is None  # None-valued fields stay: scripts may rely on them


def _rows(host_clusters, keys):
    return [process_row(server_row(k), clusters=host_clusters, host="h") for k in keys]


def test_one_server_under_two_names_gives_each_row_once_under_its_own_cluster():
    """Two hosts that are one launcher state (same `state`): each key once, in its first
    place, labelled with the cluster its key names among the clusters asked of that state
    (#30: the key reads as cluster `a` or `a-rw-x`; `a-rw-x` was asked, through the second
    name); keys of clusters nobody asked about keep their own reading."""
    keys = ["hashserver-b-rw-p", "hashserver-a-rw-x-rw-p", "hashserver-zz-rw-q"]
    one = _rows({"b"}, keys)
    two = _rows({"a-rw-x"}, keys)
    assert one[1]["cluster"] == "a" and two[1]["cluster"] == "a-rw-x"
    rows = one_per_state([("S", {"b"}, one), ("S", {"a-rw-x"}, two)])
    assert [(r["key"], r["cluster"]) for r in rows] == [
        ("hashserver-b-rw-p", "b"), ("hashserver-a-rw-x-rw-p", "a-rw-x"), ("hashserver-zz-rw-q", "zz")]
    assert rows[1]["project"] == "p"
    # other states keep their rows, even with the same keys (another server's services)
    rows = one_per_state([("S", {"a"}, one), ("T", {"a"}, _rows({"a"}, keys[:1]))])
    assert [r["key"] for r in rows] == keys + keys[:1]


def test_a_shared_data_directory_shows_once_unless_several_services_use_it():
    process = _rows({"a", "b"}, ["hashserver-a-rw-p", "hashserver-b-rw-p"])
    dirs = {c: persistent_row({"path": "/d/p", "state": "populated"}, "hashserver", c, root="/d")
            for c in ("a", "b", "c")}
    lonely = {c: persistent_row({"path": "/d/q", "state": "empty"}, "hashserver", c, root="/d")
              for c in ("a", "b", "c")}
    sources = [("S", row) for row in (*dirs.values(), *lonely.values())]
    rows = one_per_directory(sources, process)
    # /d/p: the readings of a and b (each joins its service), not c's; /d/q: the first only
    assert [(r["path"], r["cluster"]) for r in rows] == [("/d/p", "a"), ("/d/p", "b"), ("/d/q", "a")]
    merged = merge_rows(process, rows)
    assert [(r["key"], r["path"]) for r in merged] == [
        ("hashserver-a-rw-p", "/d/p"), ("hashserver-b-rw-p", "/d/p"), (None, "/d/q")]
    # another machine's directory with the same path is its own
    assert len(one_per_directory([("S", dirs["c"]), ("T", dirs["c"])], [])) == 2



# -- issue 14: what the surviving mutants of rows.py would have changed in the rows shown --

def test_the_cache_alias_is_only_for_the_top_level_of_the_cache_cluster():
    assert process_row(server_row("hashserver-c1-rw-__TOPLEVEL__"))["project"] == "__TOPLEVEL__"
    cache = persistent_row({"path": "/c/p", "state": "empty"}, "hashserver", "__SEAMLESS_CACHE__", root="/c")
    assert cache["project"] == "p"


def test_meta_wins_over_a_reading_of_a_cluster_asked_about():
    meta = {"service": "hashserver", "cluster": "zz", "mode": "rw", "project": "p", "subproject": None,
            "stage": None, "substage": None, "queue": None}
    row = process_row(server_row("hashserver-a-rw-b-rw-proj", meta=meta), cluster="a-rw-b")
    assert (row["cluster"], row["project"]) == ("zz", "p")


def test_a_row_without_process_or_status_is_a_client_row_only_with_a_port():
    assert process_row({"key": "hashserver-c1-rw-p", "port": 5})["process"] == "client"
    assert process_row({"key": "hashserver-c1-rw-p"})["process"] is None


def test_a_state_file_or_directory_that_could_not_be_read_keeps_its_error():
    row = process_row(server_row("hashserver-c1-rw-p", status="error", error="not JSON"))
    assert row["error"] == "not JSON" and public_row(row)["error"] == "not JSON"
    assert "error" not in process_row(server_row("hashserver-c1-rw-p"))
    prow = persistent_row({"path": "/b/p", "error": "permission denied"}, "hashserver", "c1", root="/b")
    assert prow["error"] == "permission denied" and public_row(prow)["error"] == "permission denied"
    assert "error" not in persistent_row({"path": "/b/p", "state": "empty"}, "hashserver", "c1", root="/b")


@pytest.mark.parametrize("path,root,labels", [
    ("/data/proj/", None, ("proj", None, None)),           # no root: the last name
    ("/data/BOX/", None, ("BOX", None, None)),
    ("/", None, (None, None, None)),
    ("/x/r/proj/STAGE-s", "/r", (None, None, "s")),       # outside the root: the last name only
    ("/home/u/buf", "~/buf", (None, None, None)),         # the (expanded) root itself
])
def test_persistent_labels_of_paths_without_a_root_or_outside_it(path, root, labels):
    row = persistent_row({"path": path, "state": "empty"}, "hashserver", "c1", root=root)
    assert (row["project"], row["subproject"], row["stage"]) == labels


def test_labels_the_caller_knows_win_over_the_path_and_a_row_without_path_has_none():
    row = persistent_row({"path": "/b/other/STAGE-x", "state": "empty"}, "hashserver", "c1", root="/b",
                         project="given")
    assert (row["project"], row["stage"]) == ("given", None)
    row = persistent_row({"state": "empty"}, "hashserver", "c1", root="/b")
    assert (row["project"], row["subproject"], row["stage"], row["path"]) == (None, None, None, None)


def test_a_size_without_bytes_is_shown_as_the_size():
    assert persistent_row({"path": "/db/p", "size": 8192}, "database", "c1", root="/db")["size"] == 8192


def test_the_cache_alias_filter_matches_the_cache_top_level_only():
    cache = persistent_row({"path": "/c/__TOPLEVEL__", "state": "empty"}, "hashserver", "__SEAMLESS_CACHE__",
                           root="/c")
    other = persistent_row({"path": "/c/p", "state": "empty"}, "hashserver", "__SEAMLESS_CACHE__", root="/c")
    assert not persistent_matches(other, {"project": "SEAMLESS_CACHE"})
    assert not persistent_matches(cache, {"project": "SEAMLESS_CACHE", "stage": "x"})   # later filters apply


def test_rows_without_key_pass_one_per_state():
    keyless = {"key": None, "service": None, "error": "x"}
    rows = one_per_state([("S", {"a"}, [keyless])])
    assert rows == [keyless]


def test_directories_without_path_or_of_other_services_are_kept_apart():
    a = persistent_row({"state": "empty", "error": "e1"}, "hashserver", "c", root="/d")
    b = persistent_row({"state": "empty", "error": "e2"}, "hashserver", "c", root="/d")
    assert one_per_directory([("S", a), ("S", b)], []) == [a, b]
    buf = persistent_row({"path": "/d/p", "state": "empty"}, "hashserver", "c", root="/d")
    db = persistent_row({"path": "/d/p", "state": "empty"}, "database", "c", root="/d")
    assert one_per_directory([("S", buf), ("S", db)], []) == [buf, db]


def test_the_first_directory_of_a_place_joins_its_process_row_with_its_size_state():
    proc = process_row(server_row("hashserver-c1-rw-proj"))
    first = persistent_row({"path": "/a/proj", "state": "populated", "bytes": 1, "bytes_state": "stale"},
                           "hashserver", "c1", root="/a")
    second = persistent_row({"path": "/b/proj", "state": "empty", "bytes": 2, "bytes_state": "fresh"},
                            "hashserver", "c1", root="/b")
    (row,) = merge_rows([proc], [first, second])
    assert (row["path"], row["size"], row["size_state"], row["persistent"]) == ("/a/proj", 1, "stale", "populated")


def test_unmatched_directories_show_once_per_path():
    dirs = [persistent_row({"path": p, "state": "empty"}, "hashserver", "c1", root=r)
            for p, r in (("/a/proj", "/a"), ("/a/proj", "/a"), ("/b/proj", "/b"))]
    assert [r["path"] for r in merge_rows([], dirs)] == ["/a/proj", "/b/proj"]


def test_public_row_keeps_the_values():
    row = process_row(server_row("hashserver-c-rw-p"), host="h")
    public = public_row(row)
    assert (public["key"], public["service"], public["host"], public["process"]) == (
        "hashserver-c-rw-p", "hashserver", "h", "running")


def test_error_record_has_exactly_host_cluster_error():
    assert error_record("h", "c", "unreachable") == {"host": "h", "cluster": "c", "error": "unreachable"}


def test_health_attaches_to_every_running_row_after_one_that_is_not():
    rows = [process_row(server_row("database-c-rw-p", "stale")), process_row(server_row("hashserver-c-rw-p"))]
    attach_health(rows, {"database-c-rw-p": {"healthy": True}, "hashserver-c-rw-p": {"healthy": True}})
    assert "health" not in rows[0] and rows[1]["health"] == "ok"


def test_status_filter_keeps_process_rows_and_leaves_bare_directories_out():
    proc = process_row(server_row("hashserver-c-rw-p"))
    bare = persistent_row({"path": "/d/p", "state": "populated"}, "hashserver", "c", root="/d")
    assert status_matches(proc, "running") and not status_matches(bare, "running")
    assert status_matches(bare, "persistent") and not status_matches(proc, "persistent")
