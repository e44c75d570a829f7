"""`ps --all-clusters` when several clusters reach ONE server (a real sshd): two clusters
whose frontends share an ssh_hostname, and clusters behind two ssh aliases (two `Host`
blocks for the same sshd). Every row appears once, under the cluster its key names, as
seamless-service-ps (run side by side on the same state) shows it; a data directory that
two clusters share is not doubled either.

Remote state (the throwaway user's): a real toy service launched through
remote-http-launcher, hand-written state files, and data directories under ~/buf, ~/db.
"""

from __future__ import annotations

import json
import shutil
from typing import Any, Iterator

import pytest

from tests.support.remote import Remote
from tests.support.sshd import require_sshd
from tests.support.cli import ndjson
from tests.support.world import DB, HS, World, by_key, by_path, link_helpers, pick

ALIAS = "ps-one"            # clusters ra, rb (same ssh_hostname)
ALIAS_B = "ps-one-b"        # clusters rc, rd-rw-x: another name for the same sshd
ROOTS = {"hashserver": {"bufferdir": "~/buf"}, "database": {"database_dir": "~/db"}}
RUNNING = "hashserver-ra-rw-proj"
STATES = {
    "hashserver-rb-rw-proj": {"status": "failed", "port": 7, "workdir": "~/buf/proj"},
    "database-rc-rw-proj": {"status": "stale", "pid": 4_000_000, "port": 8, "workdir": "~/db/proj"},
    # a cluster nobody asked about: shown, under the cluster its key names
    "hashserver-nowhere-rw-other": {"status": "failed", "port": 9},
    # #30: reads as cluster `rd` (project `x-rw-proj`) or `rd-rw-x` (project `proj`)
    "hashserver-rd-rw-x-rw-proj": {"status": "failed", "port": 10},
}
KEYS = {RUNNING: "ra", "hashserver-rb-rw-proj": "rb", "database-rc-rw-proj": "rc",
        "hashserver-nowhere-rw-other": "nowhere", "hashserver-rd-rw-x-rw-proj": "rd-rw-x"}


@pytest.fixture(scope="module")
def one_server(tmp_path_factory) -> Iterator[tuple[World, Remote]]:
    from tests.support.sshd import SshServer

    require_sshd()
    server = SshServer.start(alias=ALIAS)
    remote = Remote(server)
    w = World.build(tmp_path_factory.mktemp("one-server"), dead_cluster=False)
    try:
        ssh_dir = w.box.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        # The sandbox's own ~/.ssh/config, read by seamless-service-ps's plain `ssh` and by ours.
        (ssh_dir / "config").write_text(server.config_block() + "\n" + server.config_block(alias=ALIAS_B))
        # OpenSSH reads the passwd entry's ~/.ssh/config, not $HOME's: point it there.
        wrapper = w.box.bin / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F "$HOME/.ssh/config" "$@"\n')
        wrapper.chmod(0o755)
        frontend = lambda host: {"type": "local", "frontends": [{  # noqa: E731
            "hostname": "one.example.org", "ssh_hostname": host, **ROOTS}]}
        w.more_clusters.update({"ra": frontend(ALIAS), "rb": frontend(ALIAS), "rc": frontend(ALIAS_B),
                                "rd-rw-x": frontend(ALIAS_B)})
        w.write_clusters(dead=False)
        for cluster in ("ra", "rc"):  # deploys the agent through ALIAS, finds it through ALIAS_B
            code, _, err = w.ps("--cluster", cluster, "--server")
            assert code == 0, err
        link_helpers(server)   # rhl-* on the remote PATH prefix, for seamless-service-ps
        remote.install_launcher_tools()
        remote.launch(RUNNING)
        for key, state in STATES.items():
            remote.write(f".remote-http-launcher/server/{key}.json", json.dumps(state))
        remote.write(f"buf/proj/{HS}", "")
        remote.write("buf/proj/ab/ab" + "0" * 62, "x" * 1234)
        remote.write(f"db/proj/{DB}", "x" * 4096)
        remote.write(f"buf/lonely/{HS}", "")
        yield w, remote
    finally:
        remote.kill_service(RUNNING)
        server.close()
        w.box.kill_all()


def remote_rows(rows: list[dict[str, Any]], remote: Remote) -> list[dict[str, Any]]:
    """The rows of the remote server (the local cluster's data directories left out)."""
    home = str(remote.home)
    return [r for r in rows if r["key"] or (r.get("path") or "").startswith(home)]


def test_each_row_once_under_its_own_cluster(one_server):
    w, remote = one_server
    code, out, err = w.ps("--all-clusters", "--json")
    assert (code, err) == (0, "")
    rows = [r for r in ndjson(out) if r["key"]]
    assert sorted(r["key"] for r in rows) == sorted(KEYS)        # once each, not once per alias
    assert {r["key"]: r["cluster"] for r in rows} == KEYS
    assert by_key(rows)[RUNNING]["process"] == "running"
    assert pick(by_key(rows)["hashserver-rd-rw-x-rw-proj"], ("cluster", "project")) == {
        "cluster": "rd-rw-x", "project": "proj"}

    # seamless-service-ps on the same state: each row once too (its merge collapses the
    # copies); only the #30 key reads differently there (leftmost split).
    old = w.old_json("--all-clusters")
    assert sorted(r["key"] for r in old if r["key"]) == sorted(KEYS)
    old_by_key = by_key(old)
    for key, row in by_key(rows).items():
        if key == "hashserver-rd-rw-x-rw-proj":
            assert pick(old_by_key[key], ("cluster", "project")) == {"cluster": "rd", "project": "x-rw-proj"}
            continue
        assert pick(row) == pick(old_by_key[key]), key

    # the table: one line per row
    code, out, err = w.ps("--all-clusters", "--wide")
    assert (code, err) == (0, "")
    lines = out.splitlines()[1:]
    for key, cluster in KEYS.items():
        [line] = [line.split() for line in lines if line.split()[-1] == key]
        assert line[0] == cluster


def test_a_shared_data_directory_is_not_doubled(one_server):
    w, remote = one_server
    code, out, err = w.ps("--all-clusters", "--persistent", "--json")
    assert (code, err) == (0, "")
    rows = remote_rows(ndjson(out), remote)
    buf, db = str(remote.home / "buf" / "proj"), str(remote.home / "db" / "proj")
    lonely = str(remote.home / "buf" / "lonely")
    assert sorted(r["key"] for r in rows if r["key"]) == sorted(KEYS)
    # Every cluster has ~/buf and ~/db as its roots. Each directory joins the services that
    # use it (the hashservers of ra, rb and rd-rw-x, rc's database) ...
    assert {r["key"]: r.get("path") for r in rows if r.get("path") and r["key"]} == {
        RUNNING: buf, "hashserver-rb-rw-proj": buf, "hashserver-rd-rw-x-rw-proj": buf,
        "database-rc-rw-proj": db}
    assert by_key(rows)[RUNNING]["size"] == 1234 and by_key(rows)["database-rc-rw-proj"]["size"] == 4096
    # ... and no copy is labelled with another cluster; a directory no service uses is one
    # row, under the first cluster that has it (clusters.yaml order).
    assert {path: row["cluster"] for path, row in by_path(rows).items()} == {lonely: "ra"}

    # seamless-service-ps: a copy of each directory for every other cluster with that root.
    old = remote_rows(w.old_json("--all-clusters", "--persistent"), remote)
    assert sorted((r["cluster"], r["service"]) for r in old if r["key"] is None and r["path"] != lonely) == [
        ("ra", "database"), ("rb", "database"), ("rc", "hashserver"),
        ("rd-rw-x", "database"), ("rd-rw-x", "hashserver")]
    assert sorted(r["cluster"] for r in old if r.get("path") == lonely) == ["ra", "rb", "rc", "rd-rw-x"]



def test_each_row_once_through_the_ssh_fallback(one_server):
    """The ssh fallback cannot ask an agent which state it reads; the two aliases resolve
    (`ssh -G`) to one user, host and port, so their rows are still shown once."""
    w, _remote = one_server
    code, out, err = w.ps("--all-clusters", "--json", "--transport", "ssh")
    assert code == 0, err
    rows = [r for r in ndjson(out) if r["key"]]
    assert sorted(r["key"] for r in rows) == sorted(KEYS)
    assert {r["key"]: r["cluster"] for r in rows} == KEYS
