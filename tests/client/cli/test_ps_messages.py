"""`ps` never answers a mistake with a silent empty table, and says each problem once:
--all-clusters without clusters, --local --cluster with a name nothing knows, and the ssh
fallback on a host without the rhl-* helpers (two data roots failed with one line each)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.support.cli import ndjson
from tests.support.world import World


def test_all_clusters_without_any_cluster_is_a_usage_error(small):
    (small.box.home / ".seamless" / "clusters.yaml").unlink()
    for extra in ([], ["--json"], ["--watch", "1"]):
        code, out, err = small.ps("--all-clusters", *extra)
        assert (code, out) == (2, ""), err
        assert err == ("seamless-service: --all-clusters: no clusters defined in ~/.seamless/clusters.yaml "
                       "(describe one there, or use ps --local for this machine's services)\n")


def test_local_cluster_filters_by_the_key_and_an_unknown_name_is_exit_2(small):
    # a service whose key names a cluster no configuration defines (as the demo's `demo`)
    small.box.write_state("hashserver-elsewhere-rw-p", {"status": "failed", "port": 1}, side="server")
    rows = small.ps_json("--local", "--cluster", "elsewhere")
    assert [r["key"] for r in rows] == ["hashserver-elsewhere-rw-p"]
    # a configured cluster with nothing on this machine: an honest empty table
    code, out, err = small.ps("--local", "--cluster", "loc")
    assert (code, err) == (0, "") and out.splitlines()[0].startswith("SERVICE")
    assert len(out.splitlines()) == 1
    # a typo: as `ps --cluster nosuch` says it, exit 2
    code, out, err = small.ps("--local", "--cluster", "nosuch")
    assert (code, out) == (2, "")
    assert err == ("seamless-service: --cluster 'nosuch' matches no service on this machine and is not a "
                   "configured cluster (known: loc)\n")
    assert small.ps("--cluster", "nosuch")[0] == 2


# ---------------------------------------------------------------- the ssh fallback, once


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory) -> Iterator[tuple[World, Any]]:
    """Cluster `bare` on a real sshd whose user has no remote-http-launcher installed."""
    from tests.support.sshd import SshServer, sshd_available

    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    server = SshServer.start(alias="ps-bare")
    w = World.build(tmp_path_factory.mktemp("bare"), dead_cluster=False)
    try:
        w.more_clusters["bare"] = {"type": "local", "frontends": [{
            "hostname": "bare.example.org", "ssh_hostname": server.alias,
            "hashserver": {"bufferdir": "~/buf"}, "database": {"database_dir": "~/db"},
        }]}
        w.write_clusters(dead=False)
        yield w, server
    finally:
        server.close()
        w.box.kill_all()


def test_a_missing_helper_is_said_once(bare_server):
    w, server = bare_server
    code, out, err = w.ps("--cluster", "bare", "--transport", "ssh", "--ssh-config", str(server.ssh_config),
                          "--json")
    assert code == 1
    records = ndjson(out)
    lines = err.splitlines()
    assert len(lines) == len(set(lines)), err   # the two data roots' failures were one line twice
    # no rows, and each failure once on stdout as a record (host, cluster, error) too
    assert all(set(r) == {"host", "cluster", "error"} for r in records), records
    assert sorted(r["error"] for r in records) == sorted(line.split(": ", 2)[2] for line in lines), (records, err)
    missing = [line for line in lines if "rhl-ps-persistent is not installed" in line]
    assert len(missing) == 1 and missing[0].startswith("seamless-service: cluster bare: persistent: "), err
