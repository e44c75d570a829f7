"""Resolution through seamless-config: `seamless-service resolve` against the real
`seamless-service-resolve` (both run as subprocesses, same HOME and cwd), the deliberate
differences (#1, #2, #27, #32, #35), one-line errors (#28, #29), and the cluster helpers.

The helpers the CLI tests share (`cli`, `seamless_config_cli`, `make_home`) are in tests/support/cli.py.
"""

from __future__ import annotations

import json

import pytest

from seamless_service.client.config.client_config import ClientConfig
from seamless_service.client.errors import UsageError
from seamless_service.client.config.resolve import resolve_service
from seamless_service.client.config.selection import Selection
from tests.support.cli import DASK_CLUSTER, PROJECT_WITH_INLINE_CLUSTER, SAME, Home, assert_one_line_error, cli, make_home, seamless_config_cli


@pytest.fixture
def seamless_home(sandbox, monkeypatch) -> Home:
    return make_home(sandbox, monkeypatch)


# ---------------------------------------------------------------- same output as seamless-config


@pytest.mark.parametrize("argv", SAME, ids=lambda a: " ".join(a))
def test_resolve_equals_seamless_config(seamless_home, argv):
    ours, theirs = cli(seamless_home, "resolve", *argv), seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout  # byte for byte: one JSON line, sorted keys
    assert json.loads(ours.stdout)["key"]


def test_resolve_seamless_cache_equals_seamless_config(seamless_home, tmp_path):
    cache = tmp_path / "cache"
    env = seamless_home.env(SEAMLESS_CACHE=str(cache))
    for argv in (["--service", "hashserver", "--workdir", "."],
                 ["--service", "database", "--project", "SEAMLESS_CACHE", "--stage", "x"],
                 ["--service", "hashserver", "--project", "SEAMLESS_CACHE", "--mode", "ro"]):
        ours, theirs = cli(seamless_home, "resolve", *argv, env=env), seamless_config_cli(seamless_home, "resolve", *argv, env=env)
        assert theirs.returncode == 0, theirs.stderr
        assert ours.stdout == theirs.stdout, argv
        assert json.loads(ours.stdout)["workdir"].startswith(str(cache))


def test_resolve_cache_root_from_state_file(seamless_home, tmp_path):
    # No SEAMLESS_CACHE: the root comes from the local state file of the cache hashserver.
    root = tmp_path / "cacheroot"
    seamless_home.sandbox.write_state("hashserver-__SEAMLESS_CACHE__-rw-__TOPLEVEL__--STAGE-x",
                                      {"workdir": f"{root}/__TOPLEVEL__/STAGE-x", "status": "stale"})
    argv = ["--service", "database", "--project", "SEAMLESS_CACHE", "--stage", "x"]
    ours, theirs = cli(seamless_home, "resolve", *argv), seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.stdout == theirs.stdout
    assert json.loads(ours.stdout)["workdir"] == f"{root}/__TOPLEVEL__/STAGE-x"


def test_cache_root_with_subproject_33(seamless_home, tmp_path, monkeypatch):
    # #33: seamless-config looks for a key without the subproject and misses this state file.
    root = tmp_path / "cacheroot"
    seamless_home.sandbox.write_state("database-__SEAMLESS_CACHE__-rw-__TOPLEVEL__--sub--STAGE-x",
                                      {"workdir": f"{root}/__TOPLEVEL__/sub/STAGE-x", "status": "stale"})
    monkeypatch.chdir(seamless_home.proj)
    got = resolve_service(Selection(service="database", project="SEAMLESS_CACHE", subproject="sub", stage="x"))
    assert got.workdir == f"{root}/__TOPLEVEL__/sub/STAGE-x"
    assert got.ssh_host is None
    theirs = seamless_config_cli(seamless_home, "resolve", "--service", "database", "--project", "SEAMLESS_CACHE",
                    "--subproject", "sub", "--stage", "x")
    assert theirs.returncode != 0  # no SEAMLESS_CACHE and the key it tries does not exist


SAME_DASK = [
    ["--service", "daskserver", "--cluster", "dk", "--project", "p", "--subproject", "sp", "--stage", "s",
     "--substage", "g"],
    ["--service", "daskserver", "--workdir", ".", "--cluster", "dk", "--queue", "big", "--stage", "s"],
    ["--service", "pure-daskserver", "--cluster", "dk"],
    ["--service", "pure-daskserver", "--cluster", "dk", "--queue", "big", "--frontend-name", "dk2.invalid"],
    # the second frontend: its own host (#1: its hostname) and roots
    ["--service", "daskserver", "--cluster", "dk", "--project", "p", "--frontend-name", "dk2.invalid"],
    ["--service", "hashserver", "--cluster", "dk", "--project", "p", "--frontend-name", "dk2.invalid"],
    ["--service", "jobserver", "--cluster", "dk", "--project", "p", "--stage", "s", "--frontend-name", "dk2.invalid"],
    ["--service", "database", "--cluster", "dk", "--project", "p", "--mode", "ro", "--subproject", "sp",
     "--stage", "s", "--frontend-name", "dk2.invalid"],
]


@pytest.mark.parametrize("argv", SAME_DASK, ids=lambda a: " ".join(a))
def test_resolve_daskservers_and_frontends_equal_seamless_config(seamless_home, argv):
    with (seamless_home.home / ".seamless" / "clusters.yaml").open("a") as clusters:
        clusters.write(DASK_CLUSTER)
    ours, theirs = cli(seamless_home, "resolve", *argv), seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    got, expected = json.loads(ours.stdout), json.loads(theirs.stdout)
    if expected["ssh_hostname"] is None:  # #1: a remote frontend without ssh_hostname is reached at its hostname
        assert got["ssh_hostname"] == "dk2.invalid"
        expected["ssh_hostname"] = "dk2.invalid"
    assert got == expected


CACHE_HS = "hashserver-__SEAMLESS_CACHE__-rw-__TOPLEVEL__"
CACHE_DB = "database-__SEAMLESS_CACHE__-rw-__TOPLEVEL__"


@pytest.mark.parametrize("files, argv", [
    # the service's own state file before the hashserver's
    ({CACHE_DB + "--STAGE-x": "{root}/db/__TOPLEVEL__/STAGE-x", CACHE_HS + "--STAGE-x": "{root}/hs/__TOPLEVEL__/STAGE-x"},
     ["--stage", "x"]),
    # a state file without a usable workdir is skipped for the next one
    ({CACHE_DB + "--STAGE-x": "", CACHE_HS + "--STAGE-x": "{root}/hs/__TOPLEVEL__/STAGE-x"}, ["--stage", "x"]),
    ({CACHE_DB + "--STAGE-x": 5, CACHE_HS + "--STAGE-x": "{root}/hs/__TOPLEVEL__/STAGE-x"}, ["--stage", "x"]),
    ({CACHE_DB: None, CACHE_HS: "{root}/hs/__TOPLEVEL__"}, []),
    # a workdir launched elsewhere than the template says: its STAGE-/__TOPLEVEL__ parts dropped
    ({CACHE_HS + "--STAGE-x": "{root}/elsewhere/STAGE-x"}, ["--stage", "x"]),
    ({CACHE_HS + "--STAGE-x": "{root}/elsewhere"}, ["--stage", "x"]),
    ({CACHE_HS: "/__TOPLEVEL__"}, []),
    ({CACHE_HS: "~/cachehome/__TOPLEVEL__"}, []),
], ids=["own-first", "empty-workdir", "workdir-not-a-string", "no-workdir", "elsewhere-stage", "elsewhere",
        "root-is-slash", "tilde"])
def test_cache_root_from_state_files_equals_seamless_config(seamless_home, tmp_path, files, argv):
    root = tmp_path / "cacheroot"
    for key, workdir in files.items():
        state = {"status": "stale"} if workdir is None else {
            "workdir": workdir.format(root=root) if isinstance(workdir, str) else workdir, "status": "stale"}
        seamless_home.sandbox.write_state(key, state)
    argv = ["--service", "database", "--project", "SEAMLESS_CACHE", *argv]
    ours, theirs = cli(seamless_home, "resolve", *argv), seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


def test_cache_root_from_a_utf8_state_file_under_an_ascii_locale(seamless_home, tmp_path):
    # state files are UTF-8 JSON whatever the user's locale (seamless-config reads them so
    # too); the launcher writes the service's command line in them, which may be non-ASCII
    root = tmp_path / "cacheroot"
    state = {"workdir": f"{root}/__TOPLEVEL__", "status": "stale", "command": "hashserver --note café"}
    seamless_home.sandbox.write_state(CACHE_HS, None, raw=json.dumps(state, ensure_ascii=False))
    env = seamless_home.env(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    argv = ["--service", "hashserver", "--project", "SEAMLESS_CACHE"]
    ours = cli(seamless_home, "resolve", *argv, env=env)
    theirs = seamless_config_cli(seamless_home, "resolve", *argv, env=env)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    assert json.loads(ours.stdout)["workdir"] == f"{root}/__TOPLEVEL__"


@pytest.mark.parametrize("service", ["jobserver", "pure-daskserver"])
def test_cache_project_of_a_service_the_cache_cluster_cannot_run(seamless_home, tmp_path, service):
    # the root is found (the hashserver's state file) and then, as seamless-config says, no
    # frontend of the cache cluster can run the service: not "no launcher JSON"
    seamless_home.sandbox.write_state(CACHE_HS, {"workdir": f"{tmp_path}/c/__TOPLEVEL__", "status": "stale"})
    argv = ["--service", service, "--project", "SEAMLESS_CACHE"]
    tool = service.replace("pure-", "")
    expected = f"No frontend of cluster '__SEAMLESS_CACHE__' can support a {tool}"
    assert expected in assert_one_line_error(cli(seamless_home, "resolve", *argv), 2)
    theirs = seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode != 0 and expected in theirs.stderr


@pytest.mark.parametrize("raw, message", [
    ("{not json", "could not read {path}: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ('["a list"]', "state file must contain a JSON object: {path}"),
])
def test_cache_root_from_a_broken_state_file_is_one_line(seamless_home, raw, message):
    path = seamless_home.sandbox.write_state(CACHE_HS, None, raw=raw)
    argv = ["--service", "hashserver", "--project", "SEAMLESS_CACHE"]
    line = assert_one_line_error(cli(seamless_home, "resolve", *argv), 1)
    assert line.endswith(message.format(path=path)), line
    theirs = seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode != 0 and str(path) in theirs.stderr


def test_cache_project_without_a_root_says_what_to_do(seamless_home):
    argv = ["--service", "hashserver", "--project", "SEAMLESS_CACHE"]
    theirs = seamless_config_cli(seamless_home, "resolve", *argv)
    expected = ("seamless-service: --project SEAMLESS_CACHE requires an existing launcher JSON with workdir, "
                "or SEAMLESS_CACHE to be set")
    assert theirs.stderr.strip().splitlines()[-1] == expected
    assert assert_one_line_error(cli(seamless_home, "resolve", *argv), 2) == expected


@pytest.mark.parametrize("workdir", ["{root}/__TOPLEVEL__/sub/STAGE-boX/", "{root}/__TOPLEVEL__/sub/STAGE-boX//"])
def test_cache_root_with_subproject_and_a_trailing_slash_33(seamless_home, tmp_path, monkeypatch, workdir):
    # #33 (seamless-config misses this state file): the template's tail is cut off the workdir
    # as written, a trailing "/" or not
    root = tmp_path / "cacheroot"
    seamless_home.sandbox.write_state("database-__SEAMLESS_CACHE__-rw-__TOPLEVEL__--sub--STAGE-boX",
                                      {"workdir": workdir.format(root=root), "status": "stale"})
    monkeypatch.chdir(seamless_home.proj)
    got = resolve_service(Selection(service="database", project="SEAMLESS_CACHE", subproject="sub", stage="boX"))
    assert got.workdir == f"{root}/__TOPLEVEL__/sub/STAGE-boX"


def test_the_local_cluster_is_this_machine_whatever_its_frontend_says(seamless_home, monkeypatch):
    # local_cluster names a cluster whose frontend has an ssh_hostname: seamless-config runs
    # its services here all the same (ssh_hostname null), and so do we
    clusters = seamless_home.home / ".seamless" / "clusters.yaml"
    clusters.write_text(clusters.read_text().replace("local_cluster: lc", "local_cluster: rc"))
    argv = ["--service", "database", "--cluster", "rc", "--project", "p"]
    ours, theirs = cli(seamless_home, "resolve", *argv), seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.stdout == theirs.stdout
    assert json.loads(ours.stdout)["ssh_hostname"] is None
    # the cluster-wide commands (ps --cluster rc, ...) go to the same place: this machine
    monkeypatch.chdir(seamless_home.proj)
    assert ClientConfig().cluster_host("rc") is None
    assert ClientConfig().cluster_host("xtra") == "xtra.invalid"


# ---------------------------------------------------------------- deliberate differences


def test_remote_cluster_host_without_ssh_hostname_1(seamless_home):
    argv = ["--service", "hashserver", "--cluster", "r2", "--project", "p"]
    ours, theirs = cli(seamless_home, "resolve", *argv), seamless_config_cli(seamless_home, "resolve", *argv)
    assert json.loads(theirs.stdout)["ssh_hostname"] is None  # #1: would run locally
    got = json.loads(ours.stdout)
    assert got["ssh_hostname"] == "login.r2.invalid"
    assert {k: v for k, v in got.items() if k != "ssh_hostname"} == \
        {k: v for k, v in json.loads(theirs.stdout).items() if k != "ssh_hostname"}


def test_stage_block_applies_2(seamless_home):
    argv = ["--service", "hashserver", "--workdir", ".", "--stage", "s1"]
    ours, theirs = cli(seamless_home, "resolve", *argv), seamless_config_cli(seamless_home, "resolve", *argv)
    # seamless-config loads seamless.yaml before selecting the stage: the block is ignored.
    assert json.loads(theirs.stdout)["key"] == "hashserver-lc-rw-myproj--STAGE-s1"
    got = json.loads(ours.stdout)
    assert got["key"] == "hashserver-xtra-rw-other--STAGE-s1"
    assert (got["cluster"], got["project"], got["ssh_hostname"]) == ("xtra", "other", "xtra.invalid")
    assert got["workdir"] == "/srv/xtra/buf/other/STAGE-s1"
    # command-line flags still win over the stage block
    flags = cli(seamless_home, "resolve", *argv, "--cluster", "lc", "--project", "mine")
    assert json.loads(flags.stdout)["key"] == "hashserver-lc-rw-mine--STAGE-s1"


def test_jobserver_mode_is_what_the_key_says_32(seamless_home):
    argv = ["--service", "jobserver", "--workdir", ".", "--mode", "ro"]
    ours, theirs = cli(seamless_home, "resolve", *argv), seamless_config_cli(seamless_home, "resolve", *argv)
    assert json.loads(theirs.stdout)["mode"] == "ro"
    got = json.loads(ours.stdout)
    assert got["mode"] == "rw" and got["key"] == json.loads(theirs.stdout)["key"] == "jobserver-lc-rw-myproj"


def test_seamless_cache_with_real_cluster_27(seamless_home, tmp_path):
    env = seamless_home.env(SEAMLESS_CACHE=str(tmp_path / "cache"))
    argv = ["--service", "hashserver", "--cluster", "rc", "--project", "p"]
    theirs = seamless_config_cli(seamless_home, "resolve", *argv, env=env)
    assert theirs.returncode == 1 and "KeyError" in theirs.stderr
    ours = cli(seamless_home, "resolve", *argv, env=env)
    assert ours.returncode == 0, ours.stderr
    assert json.loads(ours.stdout)["key"] == "hashserver-rc-rw-p"
    bad = cli(seamless_home, "resolve", "--service", "hashserver", "--cluster", "nope", "--project", "p", env=env)
    assert "unknown cluster 'nope' (known: lc, rc, r2, xtra, lh)" in assert_one_line_error(bad, 2)


def test_cwd_not_read_without_workdir_3(seamless_home):
    # Kept for compatibility: same inputs, same outcome (but one line, exit 2, no traceback).
    theirs = seamless_config_cli(seamless_home, "resolve", "--service", "hashserver")
    assert theirs.returncode == 1 and "Traceback" in theirs.stderr
    line = assert_one_line_error(cli(seamless_home, "resolve", "--service", "hashserver"), 2)
    assert "no cluster selected" in line and "--workdir" in line


# ---------------------------------------------------------------- errors (#28, #29)


@pytest.mark.parametrize("argv, expected", [
    (["--service", "hashserver", "--cluster", "nope", "--project", "p"], "unknown cluster 'nope' (known: lc, rc, r2, xtra, lh)"),
    (["--service", "hashserver", "--cluster", "lc"], "no project selected"),
    (["--service", "jobserver", "--cluster", "rc", "--project", "p"], "No frontend of cluster 'rc' can support a jobserver"),
    (["--service", "hashserver", "--cluster", "a--b", "--project", "p"], "cluster cannot contain '--'"),
    (["--service", "hashserver", "--project", "SEAMLESS_CACHE"], "requires an existing launcher JSON"),
])
def test_resolve_errors_are_one_line(seamless_home, argv, expected):
    assert expected in assert_one_line_error(cli(seamless_home, "resolve", *argv), 2)
    theirs = seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode != 0


def test_no_configuration_at_all(sandbox, tmp_path):
    home = Home(sandbox, sandbox.home, tmp_path)  # no ~/.seamless, no seamless.yaml
    line = assert_one_line_error(cli(home, "resolve", "--service", "hashserver", "--cluster", "x", "--project", "p"), 2)
    assert "unknown cluster 'x' (no clusters defined" in line
    assert "no cluster selected" in assert_one_line_error(cli(home, "inspect", "--service", "hashserver"), 2)


def test_empty_clusters_yaml_29(seamless_home):
    (seamless_home.home / ".seamless" / "clusters.yaml").write_text("")
    theirs = seamless_config_cli(seamless_home, "resolve", "--service", "hashserver", "--workdir", ".")
    assert "TypeError" in theirs.stderr
    line = assert_one_line_error(cli(seamless_home, "resolve", "--service", "hashserver", "--workdir", "."), 2)
    assert "~/.seamless/clusters.yaml is empty" in line


def test_malformed_configuration(seamless_home):
    (seamless_home.proj / "seamless.yaml").write_text("project: notalist\n")
    result = cli(seamless_home, "stop", "--service", "hashserver")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # one line for the error, then seamless-config's example of a correct file (it was cut off)
    assert result.stderr.splitlines() == [
        f"seamless-service: configuration: {seamless_home.proj / 'seamless.yaml'}: expected a YAML list of "
        "commands, for example:",
        "    - project: myproject"]
    (seamless_home.home / ".seamless" / "clusters.yaml").write_text("local_cluster: ghost\n")
    line = assert_one_line_error(cli(seamless_home, "resolve", "--service", "hashserver", "--cluster", "x",
                                     "--project", "p"), 2)
    assert "local_cluster 'ghost' is not a defined cluster" in line


@pytest.mark.parametrize("text, where", [
    ("- project: [p\n- stage: s\n", "2:8: invalid YAML: expected ',' or ']', but got ':' "
                                     "(while parsing a flow sequence at line 1, column 12)"),
    ("- project: p\n\t- stage: s\n", "2:1: invalid YAML: found character '\\t' that cannot start any token"),
])
def test_invalid_seamless_yaml_says_file_line_and_column(seamless_home, text, where):
    (seamless_home.proj / "seamless.yaml").write_text(text)
    line = assert_one_line_error(cli(seamless_home, "logs", "--service", "hashserver"), 2)
    assert line == f"seamless-service: {seamless_home.proj / 'seamless.yaml'}:{where}"


def test_invalid_clusters_yaml_says_file_line_and_column(seamless_home):
    (seamless_home.home / ".seamless" / "clusters.yaml").write_text("rc:\n  type: local\n   frontends: x\n")
    line = assert_one_line_error(cli(seamless_home, "ps", "--cluster", "rc"), 2)
    assert line == "seamless-service: ~/.seamless/clusters.yaml:3:13: invalid YAML: mapping values are not allowed here"


# ---------------------------------------------------------------- in-process API


def test_cluster_helpers(seamless_home, monkeypatch):
    monkeypatch.chdir(seamless_home.proj)
    clusters = ClientConfig()
    assert clusters.cluster_names() == ["lc", "rc", "r2", "xtra", "lh"]
    assert clusters.clusters.local == "lc"
    assert clusters.cluster_host("lc") is None
    assert clusters.cluster_host("rc") == "rc-ssh"
    assert clusters.cluster_host("r2") == "login.r2.invalid"
    assert clusters.cluster_hosts("rc") == ["rc-ssh"]
    home = str(seamless_home.home)
    assert clusters.cluster_roots("lc") == {"hashserver": f"{home}/buf", "database": f"{home}/db"}
    assert clusters.cluster_roots("rc") == {"hashserver": "/srv/rc/buf", "database": "/srv/rc/db"}
    assert clusters.cluster_roots("xtra") == {"hashserver": "/srv/xtra/buf"}
    assert clusters.clusters.has_service("lc", "jobserver") and not clusters.clusters.has_service("rc", "jobserver")
    with pytest.raises(UsageError, match=r"unknown cluster 'zz' \(known: lc, rc, r2, xtra, lh\)"):
        clusters.cluster_host("zz")
    with pytest.raises(UsageError, match="no frontend with hostname 'other.invalid'"):
        clusters.cluster_host("rc", "other.invalid")
    assert clusters.cluster_host("rc", "rc.invalid") == "rc-ssh"


def test_localhost_frontend_is_this_machine_35(seamless_home, monkeypatch):
    # A `type: local` cluster that is not local_cluster gets hostname "localhost": one rule
    # for per-service and cluster-wide commands (this machine), and ~ expanded accordingly.
    monkeypatch.chdir(seamless_home.proj)
    clusters = ClientConfig()
    assert clusters.cluster_host("lh") is None
    assert resolve_service(Selection(service="hashserver", cluster="lh", project="p")).ssh_host is None
    assert clusters.cluster_roots("lh") == {"hashserver": f"{seamless_home.home}/lhbuf"}


def test_clusters_from_seamless_yaml(seamless_home, monkeypatch):
    (seamless_home.proj / "seamless.yaml").write_text(PROJECT_WITH_INLINE_CLUSTER)
    monkeypatch.chdir(seamless_home.proj)
    clusters = ClientConfig()
    assert clusters.cluster_names()[-1] == "inline"
    assert clusters.cluster_host("inline") == "inline.invalid"
    monkeypatch.chdir(seamless_home.sandbox.root)
    assert "inline" not in ClientConfig().cluster_names()   # a new command, another cwd


def test_callers_seamless_config_state_is_kept(seamless_home, monkeypatch):
    """A Seamless runtime in the same process keeps its selection and clusters."""
    import seamless_config.cluster as cluster
    from seamless_config import select

    monkeypatch.chdir(seamless_home.proj)
    before = (select.get_selected_cluster(), select.get_selected_project(), select.get_stage(),
              dict(cluster._clusters), cluster.get_local_cluster())
    select.select_stage("runtime-stage")
    try:
        got = resolve_service(Selection(service="hashserver"))
        assert got.key == "hashserver-lc-rw-myproj"  # the caller's stage did not leak in
        assert select.get_stage() == "runtime-stage"
        assert select.get_selected_project() == before[1]
        assert dict(cluster._clusters) == before[3]
    finally:
        select.select_stage(before[2])


def test_state_does_not_leak_between_calls(seamless_home, monkeypatch):
    monkeypatch.chdir(seamless_home.proj)
    assert resolve_service(Selection(service="hashserver", project="first", subproject="sub")).key == \
        "hashserver-lc-rw-first--sub"
    # a second call without --subproject must not inherit it (as a long-lived keeper would)
    assert resolve_service(Selection(service="hashserver")).key == "hashserver-lc-rw-myproj"
    monkeypatch.chdir(seamless_home.sandbox.root)
    with pytest.raises(UsageError, match="no cluster selected"):
        resolve_service(Selection(service="hashserver"))


def test_resolved_fields(seamless_home, monkeypatch):
    monkeypatch.chdir(seamless_home.proj)
    got = resolve_service(Selection(service="database", stage="s2", mode="ro"))
    assert got.key == "database-lc-ro-myproj--STAGE-s2"
    assert got.workdir == "~/db/myproj/STAGE-s2"
    assert got.local_workdir() == f"{seamless_home.home}/db/myproj/STAGE-s2"
    assert got.log_path == "~/.remote-http-launcher/server/database-lc-ro-myproj--STAGE-s2.log"
    assert got.meta == {"service": "database", "cluster": "lc", "mode": "ro", "project": "myproj",
                        "subproject": None, "stage": "s2", "substage": None, "queue": None}
    import argparse

    from seamless_service.client.cli.common import selection_of

    sel = selection_of(argparse.Namespace(service="hashserver", cluster=None, mode=None, extra=1))
    assert sel.mode == "rw" and sel.service == "hashserver" and sel.project is None
