"""`seamless-service resolve` run in this process (its parser, seamless-config's code) against
seamless-config's own `seamless-service-resolve`: the same cases as test_resolve.py's
subprocess comparison, in this process (no interpreter started per case: a mutation run of
client/config/resolve.py kills most of its mutants here, quickly), and resolve_key."""

from __future__ import annotations

import argparse
import json

import pytest

from seamless_service.client.cli import main as cli_main
from seamless_service.client.cli import service_cmds
from seamless_service.client.config.resolve import KeyNotResolvable, resolve_key, resolve_service
from seamless_service.client.config.selection import Selection
from seamless_service.client.errors import UsageError
from tests.support.cli import DASK_CLUSTER, PROJECT_WITH_INLINE_CLUSTER, SAME, Home, make_home, seamless_config_cli


@pytest.fixture
def seamless_home(sandbox, monkeypatch) -> Home:
    home = make_home(sandbox, monkeypatch)
    monkeypatch.chdir(home.proj)
    return home


def resolve_here(capsys, monkeypatch, *argv: str) -> tuple[int, str, str]:
    """`seamless-service resolve ARGV` through the CLI's own main (as tests/support/cli.py's
    SHIM runs it, with the resolve parser added if the build hides it)."""
    build = cli_main.build_parser

    def with_resolve() -> argparse.ArgumentParser:
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "resolve" not in sub.choices:
            service_cmds.add_parsers(sub)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", with_resolve)
    capsys.readouterr()
    try:
        code = cli_main.main(["resolve", *argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv", SAME, ids=lambda a: " ".join(a))
def test_resolve_in_process_matches_seamless_config(seamless_home, capsys, monkeypatch, argv):
    theirs = seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode == 0, theirs.stderr
    code, out, _ = resolve_here(capsys, monkeypatch, *argv)
    assert code == 0 and out == theirs.stdout
    assert json.loads(out)["key"]


def test_resolve_in_process_seamless_cache_matches_seamless_config(seamless_home, capsys, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEAMLESS_CACHE", str(cache))
    env = seamless_home.env(SEAMLESS_CACHE=str(cache))
    for argv in (["--service", "hashserver", "--workdir", "."],
                 ["--service", "database", "--project", "SEAMLESS_CACHE", "--stage", "x"],
                 ["--service", "hashserver", "--project", "SEAMLESS_CACHE", "--mode", "ro"]):
        theirs = seamless_config_cli(seamless_home, "resolve", *argv, env=env)
        assert theirs.returncode == 0, theirs.stderr
        assert resolve_here(capsys, monkeypatch, *argv)[:2] == (0, theirs.stdout), argv


def test_resolve_in_process_cache_root_from_a_state_file(seamless_home, capsys, monkeypatch, tmp_path):
    root = tmp_path / "cacheroot"
    seamless_home.sandbox.write_state("hashserver-__SEAMLESS_CACHE__-rw-__TOPLEVEL__--STAGE-x",
                                      {"workdir": f"{root}/__TOPLEVEL__/STAGE-x", "status": "stale"})
    argv = ["--service", "database", "--project", "SEAMLESS_CACHE", "--stage", "x"]
    theirs = seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode == 0, theirs.stderr
    assert resolve_here(capsys, monkeypatch, *argv)[:2] == (0, theirs.stdout)


@pytest.mark.parametrize("argv,fields", [
    # #1: a remote frontend without ssh_hostname is reached at its hostname
    (["--service", "hashserver", "--cluster", "r2", "--project", "p"], {"ssh_hostname": "login.r2.invalid"}),
    # #2: the stage block of seamless.yaml applies; flags still win
    (["--service", "hashserver", "--workdir", ".", "--stage", "s1"],
     {"key": "hashserver-xtra-rw-other--STAGE-s1", "ssh_hostname": "xtra.invalid",
      "workdir": "/srv/xtra/buf/other/STAGE-s1"}),
    (["--service", "hashserver", "--workdir", ".", "--stage", "s1", "--cluster", "lc", "--project", "mine"],
     {"key": "hashserver-lc-rw-mine--STAGE-s1"}),
    # #32: a jobserver's mode is what its key says
    (["--service", "jobserver", "--workdir", ".", "--mode", "ro"], {"mode": "rw", "key": "jobserver-lc-rw-myproj"}),
])
def test_resolve_in_process_deliberate_differences(seamless_home, capsys, monkeypatch, argv, fields):
    code, out, _ = resolve_here(capsys, monkeypatch, *argv)
    got = json.loads(out)
    assert code == 0 and {name: got[name] for name in fields} == fields


@pytest.mark.parametrize("argv, expected", [
    (["--service", "hashserver", "--cluster", "nope", "--project", "p"], "unknown cluster 'nope' (known: lc, rc, r2, xtra, lh)"),
    (["--service", "hashserver", "--cluster", "lc"], "no project selected"),
    (["--service", "hashserver"],
     "no cluster selected: pass --cluster or set one in seamless.yaml (resolve reads seamless.yaml only with --workdir DIR)"),
    (["--service", "jobserver", "--cluster", "rc", "--project", "p"], "No frontend of cluster 'rc' can support a jobserver"),
    (["--service", "hashserver", "--cluster", "a--b", "--project", "p"], "cluster cannot contain '--'"),
    (["--service", "hashserver", "--project", "SEAMLESS_CACHE"], "requires an existing launcher JSON"),
    (["--service", "hashserver", "--cluster", "lc", "--project", "p", "--stage", "a/b"], "invalid --stage 'a/b'"),
])
def test_resolve_in_process_errors_are_one_line(seamless_home, capsys, monkeypatch, argv, expected):
    code, out, err = resolve_here(capsys, monkeypatch, *argv)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and expected in err, err


def test_resolve_key_gives_back_the_service_of_a_key(seamless_home):
    got = resolve_key("database-lc-ro-myproj--STAGE-s2")
    assert (got.key, got.workdir, got.ssh_host) == ("database-lc-ro-myproj--STAGE-s2", "~/db/myproj/STAGE-s2", None)
    assert resolve_key("hashserver-r2-rw-p", cluster="r2").ssh_host == "login.r2.invalid"
    with pytest.raises(UsageError) as bad:
        resolve_key("not a key")
    assert str(bad.value) == ("not a key is not a Seamless service key (SERVICE-CLUSTER-MODE-PROJECT..., "
                              "as 'seamless-service resolve' prints it)")
    with pytest.raises(UsageError, match=r"key hashserver-lc-rw-p is not of cluster 'r2' \(its cluster is 'lc'\)"):
        resolve_key("hashserver-lc-rw-p", cluster="r2")
    with pytest.raises(KeyNotResolvable) as info:
        resolve_key("hashserver-nope-rw-p")
    assert (info.value.key, info.value.cluster) == ("hashserver-nope-rw-p", "nope")
    assert "unknown cluster 'nope'" in info.value.reason



def test_resolve_in_process_other_commands_read_the_cwd_and_give_no_resolve_hint(seamless_home, monkeypatch):
    monkeypatch.chdir(seamless_home.sandbox.root)   # no seamless.yaml here
    with pytest.raises(UsageError) as info:
        resolve_service(Selection(service="hashserver"))
    assert str(info.value) == "no cluster selected: pass --cluster or set one in seamless.yaml"


def test_resolve_in_process_the_launch_config_carries_the_key_and_meta(seamless_home):
    got = resolve_service(Selection(service="database", stage="s2", mode="ro"))
    assert got.config["key"] == got.key == "database-lc-ro-myproj--STAGE-s2"
    assert got.config["meta"] == got.meta and got.meta["stage"] == "s2"


def test_resolve_key_of_another_frontend_and_of_a_pure_daskserver(seamless_home):
    with (seamless_home.home / ".seamless" / "clusters.yaml").open("a") as clusters:
        clusters.write(DASK_CLUSTER)
    got = resolve_key("hashserver-dk-rw-p", cluster="dk", frontend_name="dk2.invalid")
    assert (got.key, got.ssh_host, got.workdir) == ("hashserver-dk-rw-p", "dk2.invalid", "/srv/dk2/buf/p")
    assert resolve_key("hashserver-dk-rw-p").ssh_host == "dk-ssh"
    # a pure-daskserver key carries no mode: it resolves (as rw) all the same
    got = resolve_key("pure-daskserver-dk-big")
    assert (got.key, got.service, got.meta["queue"], got.ssh_host) == ("pure-daskserver-dk-big", "pure-daskserver",
                                                                       "big", "dk-ssh")


def test_resolve_key_reads_the_clusters_of_the_cwds_seamless_yaml(seamless_home):
    (seamless_home.proj / "seamless.yaml").write_text(PROJECT_WITH_INLINE_CLUSTER)
    got = resolve_key("hashserver-inline-rw-p")
    assert (got.ssh_host, got.workdir) == ("inline.invalid", "/srv/inline/p")


def test_resolve_key_tries_every_reading_of_an_ambiguous_key_30(seamless_home):
    # "hashserver-a-rw-b-rw-p": cluster "a" (unknown here: that reading fails), or cluster "a-rw-b"
    with (seamless_home.home / ".seamless" / "clusters.yaml").open("a") as clusters:
        clusters.write("a-rw-b:\n  type: local\n  frontends:\n    - hashserver: {bufferdir: /srv/arwb}\n")
    got = resolve_key("hashserver-a-rw-b-rw-p")
    assert (got.key, got.cluster, got.meta["project"], got.workdir) == ("hashserver-a-rw-b-rw-p", "a-rw-b", "p",
                                                                       "/srv/arwb/p")


def test_resolve_key_that_resolves_to_another_key_says_so(seamless_home):
    # SEAMLESS_CACHE as a project of a real cluster is the top-level project: another key
    with pytest.raises(UsageError) as info:
        resolve_key("hashserver-lc-rw-SEAMLESS_CACHE")
    assert str(info.value) == ("key hashserver-lc-rw-SEAMLESS_CACHE resolves to hashserver-lc-rw-__TOPLEVEL__ with "
                               "this configuration: pass the selection flags (--service/--cluster/--project/...) "
                               "instead")
    with pytest.raises(KeyNotResolvable) as unresolvable:
        resolve_key("hashserver-nope-rw-p")
    assert str(unresolvable.value) == unresolvable.value.reason  # what a caller that prints it shows


@pytest.mark.parametrize("argv, line", [
    (["--service", "jobserver", "--cluster", "rc", "--project", "p"],
     "jobserver: No frontend of cluster 'rc' can support a jobserver"),
    (["--service", "pure-daskserver", "--cluster", "rc"], "pure-daskserver: No frontend of cluster 'rc' can support a daskserver"),
    (["--service", "hashserver", "--cluster", "lc", "--project", "p", "--frontend-name", "nope"],
     "hashserver: No frontend of cluster 'lc' with name 'nope' can support a hashserver"),
    (["--service", "hashserver", "--cluster", "lc"],
     "no project selected: pass --project or set one in seamless.yaml (resolve reads seamless.yaml only with --workdir DIR)"),
    (["--service", "hashserver", "--cluster", "a--b", "--project", "p"], "invalid selection: cluster cannot contain '--'"),
    (["--service", "hashserver", "--cluster", "lc", "--project", "p", "--stage", "a/b"],
     "invalid --stage 'a/b': stage cannot contain '/'"),
    (["--service", "jobserver", "--cluster", "lc", "--project", "p", "--substage", "x/y"],
     "invalid --substage 'x/y': substage cannot contain '/'"),
])
def test_resolve_in_process_error_lines_in_full(seamless_home, capsys, monkeypatch, argv, line):
    code, out, err = resolve_here(capsys, monkeypatch, *argv)
    assert (code, out, err) == (2, "", f"seamless-service: {line}\n")


@pytest.mark.parametrize("sel, message", [
    (Selection(), "--service is required"),
    (Selection(service="nope"), "unknown service 'nope' (known: hashserver, database, jobserver, daskserver, "
                                "pure-daskserver)"),
    (Selection(service="hashserver", mode="rx"), "--mode must be ro or rw, not 'rx'"),
])
def test_resolve_service_refuses_an_incomplete_selection(seamless_home, sel, message):
    # what a caller of the API (a command that builds its own Selection) is told
    with pytest.raises(UsageError) as info:
        resolve_service(sel)
    assert str(info.value) == message


def test_a_pure_daskserver_of_a_queue_the_cluster_lacks_is_refused(seamless_home, capsys, monkeypatch):
    # seamless-config's select_queue refuses it quietly; the configure call says it
    with (seamless_home.home / ".seamless" / "clusters.yaml").open("a") as clusters:
        clusters.write(DASK_CLUSTER)
    argv = ["--service", "pure-daskserver", "--cluster", "dk", "--queue", "nosuch"]
    theirs = seamless_config_cli(seamless_home, "resolve", *argv)
    assert theirs.returncode == 1 and "Cluster 'dk' has no queue 'nosuch'" in theirs.stderr
    assert resolve_here(capsys, monkeypatch, *argv) == (
        2, "", "seamless-service: pure-daskserver: Cluster 'dk' has no queue 'nosuch'\n")


def test_a_cache_root_the_launcher_refuses_is_one_line(seamless_home, capsys, monkeypatch, tmp_path):
    # remote-http-launcher takes only plausible UNIX directory names (no "é"): seamless-config
    # crashes with a traceback, we say it in one line
    cache = tmp_path / "caché"
    monkeypatch.setenv("SEAMLESS_CACHE", str(cache))
    argv = ["--service", "hashserver", "--project", "SEAMLESS_CACHE"]
    theirs = seamless_config_cli(seamless_home, "resolve", *argv, env=seamless_home.env(SEAMLESS_CACHE=str(cache)))
    assert theirs.returncode == 1 and "Traceback" in theirs.stderr
    assert resolve_here(capsys, monkeypatch, *argv) == (
        2, "", "seamless-service: hashserver: invalid launcher configuration: workdir must be a plausible UNIX "
               "directory name\n")


def test_without_a_local_cluster_a_remote_cluster_is_still_remote(seamless_home, capsys, monkeypatch):
    clusters = seamless_home.home / ".seamless" / "clusters.yaml"
    clusters.write_text(clusters.read_text().replace("local_cluster: lc\n", ""))
    for argv, host in ((["--service", "hashserver", "--cluster", "rc", "--project", "p"], "rc-ssh"),
                       (["--service", "hashserver", "--cluster", "r2", "--project", "p"], "login.r2.invalid")):
        code, out, err = resolve_here(capsys, monkeypatch, *argv)
        assert code == 0, err
        assert json.loads(out)["ssh_hostname"] == host
