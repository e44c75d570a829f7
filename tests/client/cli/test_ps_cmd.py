"""`seamless-service ps` against `seamless-service-ps` on the same real state: a local
cluster with services launched through remote-http-launcher (keys from
seamless-service-resolve) and data directories with markers and files. Rows must be equal
except for the documented improvements, which are asserted precisely.

`World.build(root)` makes a sandbox HOME with `~/.seamless/clusters.yaml` (local_cluster
`loc`, bufferdir and database_dir in the sandbox, plus a cluster `dead` whose frontend
cannot be reached), a project directory with seamless.yaml, and data directories.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Iterator

import pytest
import yaml

from seamless_service.client.query import ps as ps_query
from seamless_service.client.query.rows import JSON_FIELDS
from tests.support.cli import ndjson
from tests.support.services import VENV_BIN
from tests.support.world import COMPARED, DB, HS, JOB_META, World, as_user, by_key, by_path, file, link_helpers, pick


# ====================================================================== fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    """hashserver rw + ro (stopped) + subproject, a staged database, two jobservers that
    differ only in substage; shared, read-only for the tests of this module."""
    w = World.build(tmp_path_factory.mktemp("ps"))
    try:
        w.launch("rw", "hashserver")
        w.launch("ro", "hashserver", "--mode", "ro")
        w.launch("sub", "hashserver", "--subproject", "sub")
        w.launch("db", "database", "--stage", "s1")
        w.launch("job", "", key="jobserver-loc-rw-myproj--STAGE-s1", meta=JOB_META)
        w.launch("jobgpu", "", key="jobserver-loc-rw-myproj--STAGE-s1SUBSTAGE-gpu",
                 meta=dict(JOB_META, substage="gpu"))
        stop = w.box.run_helper("rhl-stop", w.keys["ro"])
        assert stop.returncode == 0, stop.stderr
        yield w
    finally:
        w.box.kill_all()


# ====================================================================== cluster view


def test_cluster_view_equals_seamless_service_ps_except_the_documented_fixes(world):
    old = world.old_json("--cluster", "loc")
    new = world.ps_json("--cluster", "loc")
    K = world.keys
    old_keys, new_keys = by_key(old), by_key(new)
    # #4: seamless-service-ps keeps one row per (service, cluster, project, stage)
    assert set(old_keys) <= set(new_keys)
    assert set(new_keys) - set(old_keys) == {K["rw"], K["sub"], K["jobgpu"]}
    for key, o in old_keys.items():
        n = new_keys[key]
        assert pick(n) == pick(o), key
        if o["service"] == "hashserver" and o["path"]:
            assert (o["size"], n["size"]) == (None, world.sizes[o["path"]])      # #9
        else:
            assert n["size"] == o["size"], key
    # the rows that no longer collapse carry their own process and the shared data dir
    assert pick(new_keys[K["rw"]], ("process", "path", "size", "mode")) == {
        "process": "running", "path": str(world.buf / "myproj"),
        "size": world.sizes[str(world.buf / "myproj")], "mode": "rw"}
    assert new_keys[K["jobgpu"]]["substage"] == "gpu"

    old_dirs, new_dirs = by_path(old), by_path(new)
    sub, stage_x = str(world.buf / "myproj" / "sub"), str(world.buf / "myproj" / "sub" / "STAGE-x")
    # #10: the subproject dir is project "myproj/sub" there, joined to its service here ...
    assert old_dirs[sub]["project"] == "myproj/sub"
    assert pick(new_keys[K["sub"]], ("project", "subproject", "path", "size")) == {
        "project": "myproj", "subproject": "sub", "path": sub, "size": 300 + 200}
    # ... and its stage directory is listed at all
    assert stage_x not in old_dirs
    assert pick(new_dirs[stage_x], ("project", "subproject", "stage", "persistent", "size")) == {
        "project": "myproj", "subproject": "sub", "stage": "x", "persistent": "populated", "size": 200}
    assert set(new_dirs) == (set(old_dirs) - {sub}) | {stage_x}
    for path in set(old_dirs) - {sub}:
        assert pick(new_dirs[path]) == pick(old_dirs[path]), path
        assert new_dirs[path]["size"] == (old_dirs[path]["size"] if old_dirs[path]["service"] == "database"
                                          else world.sizes[path])
    # #11: roots without a marker, and marker-less dirs, give no row, in both
    for rows in (old, new):
        paths = {r.get("path") for r in rows}
        assert not paths & {str(world.buf), str(world.db), str(world.buf / "nomarker")}


def test_marker_less_root_works_under_the_seamless_marker_policy(world):
    """#11: behind `rhl-guard --clear-policy seamless`, seamless-service-ps's persistent query
    on the bufferdir root is refused; the agent (same policy) walks it and lists marked dirs."""
    command = f"rhl-ps-persistent --json --level 2 --marker {HS} {world.buf}"
    guarded = subprocess.run([str(VENV_BIN / "rhl-guard"), "--clear-policy", "seamless"],
                             env=world.env(SSH_ORIGINAL_COMMAND=command), capture_output=True, text=True,
                             timeout=60)
    assert guarded.returncode == 1 and "marker" in guarded.stderr
    rows = world.ps_json("--cluster", "loc", "--server", "--persistent", "--service", "hashserver")
    assert str(world.buf / "myproj" / "STAGE-s1") in by_path(rows)


def test_table_has_the_same_columns_and_human_sizes(world):
    old = world.old_ps("--cluster", "loc")
    code, out, err = world.ps("--cluster", "loc")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == old.stdout.splitlines()[0].split()
    row = next(line.split() for line in out.splitlines() if line.split()[-2:] == ["4.3", "kB"])
    assert row[:2] == ["hashserver", "myproj"] and row[-3] == "populated"   # 4345 bytes
    assert len(out.splitlines()) == len(world.ps_json("--cluster", "loc")) + 1


def test_wide_adds_cluster_and_key_columns(world):
    """#34: rows of several clusters are told apart."""
    code, out, _ = world.ps("--cluster", "loc", "--wide")
    lines = [line.split() for line in out.splitlines()]
    assert lines[0][0] == "CLUSTER" and lines[0][-1] == "KEY"
    assert {line[0] for line in lines[1:]} == {"loc"}
    assert {line[-1] for line in lines[1:]} - {"-"} == set(world.keys.values())


def test_the_cli_process_prints_what_the_in_process_call_prints(world):
    """The real console entry (own process, no keeper) on the same state."""
    result = world.new_ps("--cluster", "loc", "--json")
    assert result.returncode == 0, result.stderr
    strip = lambda rows: [{k: v for k, v in r.items() if k != "size_state"} for r in rows]  # noqa: E731
    assert strip(ndjson(result.stdout)) == strip(world.ps_json("--cluster", "loc"))


# ====================================================================== client view


def test_default_persistent_rows_are_labelled_and_merged(world):
    """#5: seamless-service-ps walks the project workdir, so its rows have no project and never
    join the process rows; here the same directories are joined to their services."""
    old = world.old_json("--persistent")
    new = world.ps_json("--persistent")
    K = world.keys
    assert all(r["persistent"] is None for r in by_key(old).values())
    assert {r["project"] for r in by_path(old).values() if r["service"] == "database"} == {None}
    n = by_key(new)
    assert pick(n[K["rw"]], ("path", "size", "project")) == {
        "path": str(world.buf / "myproj"), "size": world.sizes[str(world.buf / "myproj")], "project": "myproj"}
    assert pick(n[K["db"]], ("path", "size", "stage")) == {
        "path": str(world.db / "myproj" / "STAGE-s1"), "size": 4096, "stage": "s1"}
    # the same directories, no more, no fewer
    assert {r["path"] for r in old if r.get("path")} == {r["path"] for r in new if r.get("path")}
    assert by_path(new)[str(world.db / "myproj")]["project"] == "myproj"


def test_stage_persistent_lists_the_stage_directories(world):
    """#5: with --stage, seamless-service-ps prints no persistent row at all."""
    old = world.old_json("--stage", "s1", "--persistent")
    new = world.ps_json("--stage", "s1", "--persistent")
    assert [r for r in old if r.get("path")] == []
    assert {r["path"] for r in new if r.get("path")} == {
        str(world.buf / "myproj" / "STAGE-s1"), str(world.db / "myproj" / "STAGE-s1")}
    assert by_key(new)[world.keys["db"]]["path"] == str(world.db / "myproj" / "STAGE-s1")


def test_client_rows_carry_the_local_status_and_status_filters_them(world):
    """#6/#40: client rows of services on this machine show their real status, so --status
    works in the client view (seamless-service-ps: always "client", --status running: nothing)."""
    K = world.keys
    old = world.old_json()
    assert {r["process"] for r in old} == {"client"}
    assert world.old_json("--status", "running") == []
    new = by_key(world.ps_json())
    assert set(new) == set(K.values())
    assert {k: r["process"] for k, r in new.items()} == {k: "stale" if k == K["ro"] else "running"
                                                        for k in K.values()}
    running = world.ps_json("--status", "running")
    assert {r["key"] for r in running} == set(K.values()) - {K["ro"]}
    assert {r["key"] for r in world.ps_json("--status", "stale")} == {K["ro"]}


def test_subproject_filters_and_client_cluster_view(world):
    rows = world.ps_json("--client", "--cluster", "loc", "--subproject", "sub", "--persistent")
    assert [r["key"] for r in rows if r["key"]] == [world.keys["sub"]]
    assert {r["path"] for r in rows} == {str(world.buf / "myproj" / "sub"),
                                        str(world.buf / "myproj" / "sub" / "STAGE-x")}


# ====================================================================== --status, --all-clusters


def test_status_persistent_selects_data_without_a_running_process(world):
    """The launcher's `persistent` state (data in the workdir, no process running): with
    --status, seamless-service-ps drops every data-only row (#37): it prints no row at all."""
    assert world.old_json("--cluster", "loc", "--status", "persistent") == []
    rows = world.ps_json("--cluster", "loc", "--status", "persistent")
    buf, db = world.buf / "myproj", world.db / "myproj"
    assert {(r["key"], r["path"]) for r in rows} == {
        (world.keys["ro"], str(buf)),              # stopped (stale), its data still there
        (None, str(buf / "STAGE-s1")), (None, str(buf / "sub" / "STAGE-x")), (None, str(db))}
    assert {r["persistent"] for r in rows} == {"populated"}
    assert {r["process"] for r in rows} == {"stale", None}
    # --server shows data directories only with --persistent; this status implies it
    assert world.ps_json("--cluster", "loc", "--server", "--status", "persistent") == rows
    # --local: the data directories its state files record
    assert [r["key"] for r in world.ps_json("--local", "--status", "persistent")] == [world.keys["ro"]]
    code, out, _ = world.ps("--cluster", "loc", "--status", "persistent")
    assert code == 0 and len(out.splitlines()) == len(rows) + 1


def test_status_persistent_is_documented_in_help(world):
    result = world.new_ps("--help")
    assert result.returncode == 0
    assert "persistent" in result.stdout.split("--status {", 1)[1].split("}", 1)[0]
    assert "--status persistent lists the data directories" in " ".join(result.stdout.split())


def test_server_takes_the_cluster_from_the_project_like_the_per_service_commands(small, tmp_path):
    """The seed's example `ps --server --project P --status stale`, inside a project: the
    cluster comes from seamless.yaml (or seamless.profile.yaml), as for inspect/logs/stop."""
    running = small.launch("run", "hashserver")
    stale = small.launch("old", "database")
    assert small.box.run_helper("rhl-stop", stale).returncode == 0
    assert small.old_ps("--server", "--project", "myproj", "--status", "stale").returncode == 2
    code, out, err = small.ps("--server", "--project", "myproj", "--status", "stale", "--json")
    assert (code, err) == (0, "")
    assert [(r["key"], r["cluster"], r["process"]) for r in ndjson(out)] == [(stale, "loc", "stale")]
    assert {r["key"] for r in small.ps_json("--server")} == {running, stale}
    # a profile-only project selects the cluster too
    profiled = tmp_path / "profiled"
    profiled.mkdir()
    (profiled / "seamless.profile.yaml").write_text(yaml.safe_dump([{"cluster": "loc"}]))
    code, out, err = small.ps("--server", "--status", "running", "--json", cwd=profiled)
    assert (code, err) == (0, "") and [r["key"] for r in ndjson(out)] == [running]
    # outside a project, and in a project that names no cluster: today's error
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "seamless.yaml").write_text(yaml.safe_dump([{"project": "myproj"}]))
    for where in (small.box.root, bare):
        code, out, err = small.ps("--server", "--project", "myproj", cwd=where)
        assert (code, out) == (2, "") and err == "seamless-service: --server requires --cluster\n"


def test_status_drops_persistent_only_rows(world):
    """#37: with --status, seamless-service-ps still prints data dirs that have no process."""
    old = world.old_json("--cluster", "loc", "--status", "running", "--persistent")
    new = world.ps_json("--cluster", "loc", "--status", "running", "--persistent")
    assert by_path(old) and not by_path(new)
    assert {r["process"] for r in new} == {"running"}
    assert by_key(new)[world.keys["rw"]]["path"] == str(world.buf / "myproj")


def test_all_clusters_applies_status(world):
    """#7: seamless-service-ps --all-clusters ignores --status."""
    with world.without_dead_cluster():
        old = world.old_json("--all-clusters", "--status", "running")
        code, out, err = world.ps("--all-clusters", "--status", "running", "--json")
    assert world.keys["ro"] in by_key(old)                     # the stale one
    assert (code, err) == (0, "")
    assert {r["key"] for r in ndjson(out)} == set(world.keys.values()) - {world.keys["ro"]}


def test_a_dead_cluster_is_one_line_and_the_others_still_show(world):
    """#8: seamless-service-ps aborts the whole listing (exit 255, no rows)."""
    old = world.old_ps("--all-clusters", "--json")
    assert old.returncode == 255 and old.stdout == ""
    code, out, err = world.ps("--all-clusters", "--json")
    assert code == 1
    *rows, failed = ndjson(out)    # the dead cluster is also a record, after the rows (issue 10)
    assert set(by_key(rows)) == set(world.keys.values())
    assert (failed["host"], failed["cluster"]) == ("deadhost", "dead")
    lines = err.splitlines()
    assert lines == [f"seamless-service: cluster dead: {failed['error']}"]
    # a table is printed too, then the same one line
    code, out, err = world.ps("--all-clusters")
    assert code == 1 and out.splitlines()[0].split()[0] == "SERVICE" and len(err.splitlines()) == 1


def test_hosts_are_asked_in_parallel():
    """#8: every host's batch is in flight at once (a serial loop would break the barrier)."""
    barrier = threading.Barrier(3, timeout=30)

    class Transport:
        def __init__(self, host):
            self.host = host

        def batch(self, ops):
            barrier.wait()  # returns only when all three hosts are being asked together
            return [{"ok": True, "value": {"rows": [{"key": f"hashserver-{self.host}-rw-p", "status": "running",
                                                     "port": 1, "meta": {}}], "token": "t"}}]

    queries = [ps_query.HostQuery(h, f"cluster {h}", [ps_query.Part("process", {"side": "server"}, cluster=h)])
               for h in ("a", "b", "c")]
    outcomes = ps_query.run_all(queries, Transport)
    assert [o.process[0]["cluster"] for o in outcomes] == ["a", "b", "c"]
    assert [o.process[0]["host"] for o in outcomes] == ["a", "b", "c"]


class Recording:
    """A real transport that also records every batch sent through it."""

    def __init__(self, inner):
        self.inner, self.host, self.batches = inner, inner.host, []

    def batch(self, ops):
        self.batches.append([(op, dict(args)) for op, args in ops])
        return self.inner.batch(ops)


def _plan(*argv: str) -> ps_query.Plan:
    """What `ps ARGV` plans, through the CLI's own request and a config for this command."""
    from seamless_service.client.cli.main import build_parser
    from seamless_service.client.cli.ps_cmd import request_of
    from seamless_service.client.config.client_config import ClientConfig

    config = ClientConfig()
    return ps_query.plan_queries(request_of(build_parser().parse_args(["ps", *argv]), config), config)


def test_one_batch_per_host(world):
    """`ps --cluster C --persistent` is ONE batch: ps + one persistent op per data root; the
    only follow-up walks the subproject directories the first walk found (#10)."""
    from seamless_service.client.transport.local import LocalTransport

    with world.inside():
        [query] = _plan("--cluster", "loc", "--persistent").list()
    transport = Recording(LocalTransport())
    try:
        ps_query.run_all([query], lambda host: transport)
    finally:
        transport.inner.close()
    first = transport.batches[0]
    assert [op for op, _ in first] == ["ps", "persistent", "persistent"]
    assert first[0][1] == {"side": "server", "cluster": "loc"}
    assert first[1][1] == {"paths": [str(world.buf)], "level": 2, "marker": HS}
    assert first[2][1] == {"paths": [str(world.db)], "level": 2, "file": DB, "marker": DB}
    assert transport.batches[1:] == [[("persistent", {"paths": [str(world.buf / "myproj" / "sub")],
                                                      "level": 1, "marker": HS})]]


def test_clusters_sharing_a_host_share_one_batch(small):
    """--all-clusters: one batch per host, so rows of a shared host appear once (a
    `type: local` cluster on localhost is this machine too, #35)."""
    small.more_clusters["twin"] = {"type": "local", "frontends": [{
        "hostname": "localhost", "hashserver": {"bufferdir": str(small.buf)}}]}
    small.write_clusters(dead=True)
    with small.inside():
        plan = _plan("--all-clusters", "--persistent", "--status", "running")
    queries = plan.list()
    assert [q.host for q in queries] == [None, "deadhost"]
    local = queries[0]
    assert [(p.op, p.cluster) for p in local.parts] == [
        ("ps", None), ("persistent", "loc"), ("persistent", "loc"), ("persistent", "twin")]
    assert local.parts[0].args == {"side": "server", "status": "running"}   # #7
    assert local.parts[0].clusters == ("loc", "twin")
    assert local.label == "cluster loc, cluster twin"


# ====================================================================== single-state tests


def test_port_zero_is_shown(small):
    """#34: seamless-service-ps shows port 0 as '-'."""
    small.box.write_state("hashserver-loc-rw-zero", {"status": "failed", "port": 0, "pid": 1})
    old = small.old_ps("--cluster", "loc", "--server")
    assert old.stdout.splitlines()[1].split()[4] == "-"
    code, out, _ = small.ps("--cluster", "loc", "--server", "--wide")
    assert code == 0
    assert out.splitlines()[1].split()[:6] == ["loc", "hashserver", "zero", "-", "failed", "0"]


def test_client_row_of_a_dead_local_service_says_stale(small):
    """#40: seamless-service-ps lists it as `client` until someone runs stop."""
    key = small.launch("rw", "hashserver")
    pid = json.loads((small.box.server_dir / f"{key}.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    from tests.support.services import wait_for

    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
             open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", timeout=30)
    assert [r["process"] for r in small.old_json()] == ["client"]
    assert [r["process"] for r in small.ps_json()] == ["stale"]
    # A connection file of a service on another machine: its liveness is unknown here,
    # and `--status client` selects exactly such rows.
    remote = "hashserver-loc-rw-elsewhere"
    small.box.write_state(remote, {"hostname": "far.invalid", "port": 60123}, side="client")
    assert {r["key"]: r["process"] for r in small.ps_json()} == {key: "stale", remote: "client"}
    assert [r["key"] for r in small.ps_json("--status", "client")] == [remote]
    assert [r["key"] for r in small.ps_json("--status", "stale")] == [key]


def test_health_column_names_the_failing_check(small):
    key = small.launch("rw", "hashserver")
    code, out, _ = small.ps("--cluster", "loc", "--server", "--health")
    assert code == 0 and out.splitlines()[0].split()[-1] == "HEALTH"
    assert out.splitlines()[1].split()[-1] == "ok"
    pid = json.loads((small.box.server_dir / f"{key}.json").read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, port accepting, but no HTTP answer
    try:
        [row] = small.ps_json("--cluster", "loc", "--server", "--health")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert row["health"] == "http failed" and "healthcheck" in row["health_error"]


def test_seamless_cache_alias(small):
    """SEAMLESS_CACHE: the alias in --project and in the rows, as seamless-service-ps; the
    cache's data directory is joined to its hashserver here (#5)."""
    cache = small.box.root / "cache"
    key = "hashserver-__SEAMLESS_CACHE__-rw-__TOPLEVEL__"
    file(cache / "__TOPLEVEL__" / HS, 0)
    file(cache / "__TOPLEVEL__" / "ab" / ("ab" + "5" * 62), 1500)
    small.launch("cache", "", key=key, workdir=str(cache / "__TOPLEVEL__"))
    env = {"SEAMLESS_CACHE": str(cache)}
    old = small.old_json("--project", "SEAMLESS_CACHE", "--persistent", **env)
    new = small.ps_json("--project", "SEAMLESS_CACHE", "--persistent", **env)
    assert [r["project"] for r in old] == ["SEAMLESS_CACHE"]
    assert old[0]["persistent"] is None  # #5: its data row has no project, so the filter drops it
    [row] = new
    assert pick(row, ("key", "project", "cluster", "path", "size")) == {
        "key": key, "project": "SEAMLESS_CACHE", "cluster": "__SEAMLESS_CACHE__",
        "path": str(cache / "__TOPLEVEL__"), "size": 1500}


# ====================================================================== usage


@pytest.mark.parametrize("argv,message", [
    (["--server"], "--server requires --cluster"),
    (["--watch", "0"], "--watch SECONDS"),
    (["--watch", "61"], "--watch SECONDS"),
    (["--cluster", "nope"], "unknown cluster 'nope'"),
])
def test_usage_errors_are_one_line_and_exit_2(small, argv, message):
    code, out, err = small.ps(*argv, cwd=small.box.root)   # outside the project
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and message in err


def test_conflicting_sides_are_refused_by_the_parser(small):
    result = small.new_ps("--client", "--server")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


# ====================================================================== a remote cluster


@pytest.fixture(scope="module")
def rem_cluster(tmp_path_factory) -> Iterator[tuple[World, Any]]:
    """Cluster `rem` on a real sshd (a throwaway user with its own launcher state and data
    dirs), next to the local cluster and the dead one. The agent is deployed on first use."""
    from tests.support.sshd import SshServer, sshd_available

    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    server = SshServer.start(alias="ps-remote")
    w = World.build(tmp_path_factory.mktemp("remote"))
    try:
        w.more_clusters["rem"] = {"type": "local", "frontends": [{
            "hostname": "rem.example.org", "ssh_hostname": server.alias,
            "hashserver": {"bufferdir": "~/buf"}, "database": {"database_dir": "~/db"},
        }]}
        w.write_clusters(dead=True)
        as_user(server, ".remote-http-launcher/server/hashserver-rem-rw-proj.json",
                 json.dumps({"status": "failed", "port": 7, "workdir": "~/buf/proj"}))
        as_user(server, f"buf/proj/{HS}", "")
        as_user(server, "buf/proj/ab/ab" + "0" * 62, "x" * 1234)
        yield w, server
    finally:
        server.close()
        w.box.kill_all()


def test_remote_cluster_through_the_agent(rem_cluster):
    w, server = rem_cluster
    cfg = str(server.ssh_config)
    code, out, err = w.ps("--cluster", "rem", "--ssh-config", cfg, "--json")
    assert code == 0, err
    rows = ndjson(out)
    # (a root that does not exist, ~/db, is an `absent` row, as in seamless-service-ps)
    assert [pick(r, ("path", "persistent")) for r in by_path(rows).values()] == [
        {"path": str(server.home / "db"), "persistent": "absent"}]
    assert [pick(r, ("key", "process", "port", "project", "persistent", "path", "size", "host"))
            for r in by_key(rows).values()] == [{
        "key": "hashserver-rem-rw-proj", "process": "failed", "port": 7, "project": "proj",
        "persistent": "populated", "path": str(server.home / "buf" / "proj"), "size": 1234,
        "host": server.alias}]
    # every cluster at once: the remote one, the local one, and one line for the dead one
    code, out, err = w.ps("--all-clusters", "--persistent", "--ssh-config", cfg, "--json")
    assert code == 1
    *rows, failed = ndjson(out)
    assert {r["cluster"] for r in rows} == {"rem", "loc"}
    assert {frozenset(r) for r in rows} == {frozenset(JSON_FIELDS)}   # remote rows too (issue 10)
    assert (failed["host"], failed["cluster"]) == ("deadhost", "dead")
    assert by_key(rows)["hashserver-rem-rw-proj"]["path"] == str(server.home / "buf" / "proj")
    assert [line.split(": ")[1] for line in err.splitlines()] == ["cluster dead"]


def _remote_watch(w: World, server: Any, *extra: str) -> tuple[subprocess.Popen, Any]:
    """`ps --cluster rem --server --wide ... --watch` in a subprocess; (process, its Output)."""
    from tests.support.cli import Output

    proc = subprocess.Popen([sys.executable, "-m", "seamless_service.client.entry", "ps", "--cluster", "rem",
                             "--server", "--wide", "--ssh-config", str(server.ssh_config), *extra],
                            cwd=w.proj, env=w.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, Output(proc.stdout.fileno())


def test_remote_watch_shows_a_new_service(rem_cluster):
    w, server = rem_cluster
    from tests.support.cli import interrupt

    proc, out = _remote_watch(w, server, "--watch", "60")
    try:
        out.wait_for(lambda t: "hashserver-rem-rw-proj" in t, timeout=120)
        as_user(server, ".remote-http-launcher/server/database-rem-rw-proj.json",
                 json.dumps({"status": "failed", "port": 8}))
        # well within the 60 s between timed redraws: the agent's `wait` reported the change
        text = out.wait_for(lambda t: "database-rem-rw-proj" in t, timeout=30)
    finally:
        code, err = interrupt(proc)
    assert code == 0 and "Traceback" not in err, err
    assert "database-rem-rw-proj" in text.split("\n\n")[-1]


def test_remote_cluster_through_plain_ssh(rem_cluster):
    """--transport ssh (the rhl-* helpers over ssh, for hosts where the agent cannot run):
    the same rows, without directory sizes; --watch falls back to asking every SECONDS."""
    w, server = rem_cluster
    cfg = str(server.ssh_config)
    code, _, err = w.ps("--cluster", "rem", "--server", "--ssh-config", cfg)  # deploys if not yet
    assert code == 0, err
    link_helpers(server)
    agent = by_key(w.ps_json("--cluster", "rem", "--ssh-config", cfg))
    plain = by_key(w.ps_json("--cluster", "rem", "--ssh-config", cfg, "--transport", "ssh"))
    assert set(plain) == set(agent) and "hashserver-rem-rw-proj" in plain
    for key, row in plain.items():
        assert pick(row, COMPARED + ("host",)) == pick(agent[key], COMPARED + ("host",))
        assert set(row) == set(agent[key]) == set(JSON_FIELDS)   # the same fields (issue 10)
    key = "hashserver-rem-rw-proj"
    assert (plain[key]["size"], agent[key]["size"]) == (None, 1234)   # rhl-ps-persistent: no du
    from tests.support.cli import interrupt

    proc, out = _remote_watch(w, server, "--transport", "ssh", "--watch", "1")
    try:
        out.wait_for(lambda t: "hashserver-rem-rw-proj" in t, timeout=60)
        as_user(server, ".remote-http-launcher/server/jobserver-rem-rw-proj.json",
                 json.dumps({"status": "failed", "port": 9}))
        out.wait_for(lambda t: "jobserver-rem-rw-proj" in t, timeout=60)
    finally:
        code, err = interrupt(proc)
    assert code == 0 and err == "", err   # no `wait` there, and no error line for it


def test_local_and_cluster_views_agree_about_one_directory(small):
    """Issue 8 item 8: `ps --local --persistent` did not pass the marker, so a hashserver
    dir holding only `.HASHSERVER_PREFIX` was `populated` there and `empty` in the cluster
    view; a database dir without seamless.db had no row in the cluster view at all."""
    hs = small.launch("hs", "hashserver", "--stage", "s1")
    db = small.launch("db", "database", "--stage", "s1")
    import shutil

    shutil.rmtree(small.buf / "myproj" / "STAGE-s1" / "ef")       # only the marker is left
    (small.db / "myproj" / "STAGE-s1" / DB).unlink()              # a cleared database
    local = by_key(small.ps_json("--local", "--persistent"))
    cluster = by_key(small.ps_json("--cluster", "loc", "--persistent"))
    for key in (hs, db):
        assert (local[key]["persistent"], local[key]["size"]) == ("empty", 0), local[key]
        assert pick(cluster[key], ("persistent", "size", "path")) == pick(local[key], ("persistent", "size", "path"))


def test_remote_clear_then_ps_says_empty_fresh(rem_cluster):
    """Issue 8 item 8, end to end: a real clear through the real agent over sshd, then at
    once `ps --persistent`: `empty`, 0 B, fresh (it said the old size for a while), and the
    cleared database keeps its row (it disappeared: seamless.db is its marker)."""
    import shutil
    import time

    from seamless_service.client.cli.main import main

    w, server = rem_cluster
    cfg = str(server.ssh_config)

    def cli(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with w.inside(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*argv, "--ssh-config", cfg])
        return code, out.getvalue(), err.getvalue()

    def clr_rows() -> dict[str, dict]:
        code, out, err = cli("ps", "--cluster", "rem", "--persistent", "--json")
        assert code == 0, err
        return {r["service"]: r for r in ndjson(out) if r.get("project") == "clr"}

    as_user(server, f"buf/clr/{HS}", "")
    as_user(server, "buf/clr/ab/ab" + "7" * 62, "x" * 5000)
    as_user(server, f"db/clr/{DB}", "d" * 8192)
    try:
        deadline = time.monotonic() + 60
        while (rows := clr_rows())["hashserver"]["size"] != 5000:   # the sizer has walked it
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
        assert (rows["database"]["persistent"], rows["database"]["size"]) == ("populated", 8192)
        for service in ("hashserver", "database"):
            code, out, err = cli("clear", "--service", service, "--cluster", "rem", "--project", "clr", "--yes")
            assert code == 0, err
        rows = clr_rows()
        for service in ("hashserver", "database"):
            assert pick(rows[service], ("persistent", "size", "size_state")) == {
                "persistent": "empty", "size": 0, "size_state": "fresh"}, rows[service]
        code, out, _ = cli("ps", "--cluster", "rem", "--persistent")
        assert [line.split()[-2:] for line in out.splitlines() if " clr " in line] == [["0", "B"], ["0", "B"]]
    finally:
        shutil.rmtree(server.home / "buf" / "clr", ignore_errors=True)
        shutil.rmtree(server.home / "db", ignore_errors=True)
