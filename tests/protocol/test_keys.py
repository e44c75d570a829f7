import pytest

from seamless_service.protocol.keys import is_valid_key, key_readings, parse_key, row_matches, row_meta


def test_key_rule():
    assert is_valid_key("hashserver-c-rw-p--STAGE-s")
    assert not is_valid_key("a/b") and not is_valid_key("") and not is_valid_key(5)


@pytest.mark.parametrize("key,expected", [
    ("hashserver-mycluster-rw-myproj",
     {"service": "hashserver", "cluster": "mycluster", "mode": "rw", "project": "myproj"}),
    ("database-mycluster-ro-myproj--sub--a--STAGE-s1",
     {"service": "database", "cluster": "mycluster", "mode": "ro", "project": "myproj",
      "subproject": "sub/a", "stage": "s1"}),
    # #30: SUBSTAGE is split off
    ("jobserver-mycluster-rw-myproj--STAGE-s1SUBSTAGE-gpu",
     {"service": "jobserver", "cluster": "mycluster", "project": "myproj", "stage": "s1", "substage": "gpu"}),
    ("hashserver-__SEAMLESS_CACHE__-rw-__TOPLEVEL__--STAGE-x",
     {"cluster": "__SEAMLESS_CACHE__", "project": "__TOPLEVEL__", "stage": "x"}),
])
def test_parse_key(key, expected):
    meta = parse_key(key)
    for name, value in expected.items():
        assert meta[name] == value, name


def test_unknown_prefix_gives_no_reading():
    assert parse_key("myservice-x") == {} and key_readings("hashserver") == []


def test_cluster_with_rw_inside_has_both_readings():
    # #30: seamless-config splits at the first -rw- and gets cluster "my"; we keep all readings.
    clusters = {r["cluster"] for r in key_readings("hashserver-my-rw-cluster-rw-proj")}
    assert clusters == {"my", "my-rw-cluster"}


def test_filter_matches_the_right_reading():
    row = {"key": "hashserver-my-rw-cluster-rw-proj", "meta": {}}
    assert row_matches(row, {"cluster": "my-rw-cluster", "project": "proj"})
    assert row_matches(row, {"cluster": "my"})
    assert not row_matches(row, {"cluster": "my-rw-cluster", "project": "cluster-rw-proj"})


def test_pure_daskserver_queue_with_dash():
    row = {"key": "pure-daskserver-cl-gpu-large"}
    assert row_matches(row, {"cluster": "cl", "queue": "gpu-large"})
    assert row_matches(row, {"cluster": "cl-gpu", "queue": "large"})


def test_substage_filter_and_stage_filter():
    row = {"key": "jobserver-c-rw-p--STAGE-s1SUBSTAGE-gpu"}
    assert row_matches(row, {"stage": "s1"}) and row_matches(row, {"substage": "gpu"})
    assert not row_matches(row, {"stage": "s1SUBSTAGE-gpu"})


def test_meta_block_wins_over_key():
    row = {"key": "hashserver-a-rw-p", "meta": {"service": "hashserver", "cluster": "b", "project": "q"}}
    assert row_meta(row)["cluster"] == "b"
    assert row_matches(row, {"cluster": "b"}) and not row_matches(row, {"cluster": "a"})


def test_seamless_cache_alias():
    row = {"key": "hashserver-__SEAMLESS_CACHE__-rw-__TOPLEVEL__"}
    assert row_matches(row, {"project": "SEAMLESS_CACHE"})
    assert row_matches(row, {"project": "__TOPLEVEL__"})
    assert not row_matches({"key": "hashserver-c-rw-__TOPLEVEL__"}, {"project": "SEAMLESS_CACHE"})


def test_no_filter_passes_non_seamless_keys():
    assert row_matches({"key": "whatever"}, {"cluster": None})
    assert not row_matches({"key": "whatever"}, {"cluster": "c"})


# --- every reading, exactly (issue 14): what `ps` filters and rows are made of ---

READINGS = {
    "pure-daskserver-c-q": [{"service": "pure-daskserver", "cluster": "c", "queue": "q"}],
    "pure-daskserver-a-b-c": [{"service": "pure-daskserver", "cluster": "a", "queue": "b-c"},
                              {"service": "pure-daskserver", "cluster": "a-b", "queue": "c"}],
    "pure-daskserver--q": [],
    "pure-daskserver-c-": [],
    "daskserver-c-rw-p": [{"service": "daskserver", "cluster": "c", "mode": "rw", "project": "p"}],
    "daskserver-c-ro-p": [],      # daskserver and jobserver are rw only
    "jobserver-c-ro-p": [],
    "database-c-ro-p--STAGE-sSUBSTAGE-x": [],   # hashserver/database keys carry no substage
    "hashserver-c-rw-p--STAGE-sSUBSTAGE-x": [],
    "jobserver-c-rw-p--STAGE-sSUBSTAGE-x": [{"service": "jobserver", "cluster": "c", "mode": "rw", "project": "p",
                                             "stage": "s", "substage": "x"}],
    "hashserver-a--b-rw-p": [],
    "hashserver-c-rw-p--s1--s2": [{"service": "hashserver", "cluster": "c", "mode": "rw", "project": "p",
                                   "subproject": "s1/s2"}],
    "hashserver-c-rw-p----x": [],
    "hashserver-c-rw-": [{"service": "hashserver", "cluster": "c", "mode": "rw"}],
    "hashserver-c-rw-p--STAGE-s--x": [],
    "hashserver-c-rw-p--STAGE-": [],
    "hashserver-c-ro-x-rw-p": [{"service": "hashserver", "cluster": "c", "mode": "ro", "project": "x-rw-p"},
                               {"service": "hashserver", "cluster": "c-ro-x", "mode": "rw", "project": "p"}],
    "database-c-rw-p--q--STAGE-s": [{"service": "database", "cluster": "c", "mode": "rw", "project": "p",
                                     "subproject": "q", "stage": "s"}],
    "database-c-ro-p": [{"service": "database", "cluster": "c", "mode": "ro", "project": "p"}],
}


@pytest.mark.parametrize("key", sorted(READINGS))
def test_every_reading_of_a_key(key):
    full = [{field: None for field in ("service", "cluster", "mode", "project", "subproject", "stage",
                                       "substage", "queue")} | r for r in READINGS[key]]
    assert key_readings(key) == full


@pytest.mark.parametrize("key,valid", [
    ("k" * 255, True), ("k" * 256, False), ("a.b", True), ("a-", True), ("a_", True),
    (".a", False), ("-a", False), ("a..b", False), ("a-.b", True), (5, False),
])
def test_key_rule_at_its_edges(key, valid):
    assert is_valid_key(key) is valid


def test_row_meta_uses_a_non_empty_meta_block_else_the_key():
    meta = {"service": "hashserver", "cluster": "m"}
    assert row_meta({"key": "database-c-rw-p", "meta": meta}) == meta
    assert row_meta({"key": "database-c-rw-p", "meta": {}})["service"] == "database"
    assert row_meta({"key": "database-c-rw-p", "meta": None})["cluster"] == "c"
    assert row_meta({"meta": None}) == {}
    assert row_matches({"key": "database-c-rw-p", "meta": {}}, {"service": "database"})
    assert not row_matches({"key": "nope", "meta": {}}, {"service": "database"})


def test_a_later_mode_match_is_read_when_an_earlier_one_cannot_be():
    # "-ro-" cannot be a jobserver's mode: the reading is at the later "-rw-"
    assert [(r["cluster"], r["project"]) for r in key_readings("jobserver-c-ro-x-rw-p")] == [("c-ro-x", "p")]
    # an earlier match whose tail is no valid tail (an empty stage), or carries a substage a
    # hashserver key cannot have, does not end the search either
    assert [(r["cluster"], r["project"]) for r in key_readings("hashserver-c-rw-STAGE-SUBSTAGE-x-rw-q")] == [
        ("c-rw-STAGE-SUBSTAGE-x", "q")]
    assert [(r["cluster"], r["project"]) for r in key_readings("hashserver-c-rw-STAGE-sSUBSTAGE-x-rw-q")] == [
        ("c-rw-STAGE-sSUBSTAGE-x", "q")]


def test_the_seamless_cache_alias_is_for_the_project_filter_only():
    cache = {"key": "hashserver-x", "meta": {"service": "hashserver", "cluster": "__SEAMLESS_CACHE__",
                                            "project": "__TOPLEVEL__", "stage": "__TOPLEVEL__"}}
    assert row_matches(cache, {"project": "SEAMLESS_CACHE"})
    assert not row_matches(cache, {"project": "SEAMLESS_CACHE", "service": "database"})
    assert not row_matches(cache, {"stage": "SEAMLESS_CACHE"})
