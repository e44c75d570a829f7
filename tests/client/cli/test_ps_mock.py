"""`seamless-service ps` run in-process with every transport a MockTransport
(`main(argv, transport_factory=...)`): the table it prints, the line a host that cannot
answer gets and the exit status, from a real clusters.yaml (no SSH, no agent)."""

from __future__ import annotations

import contextlib
import io

import yaml

from seamless_service.client.cli.main import main
from seamless_service.client.errors import ConnectionFailed
from seamless_service.client.transport.mock import MockTransport

CLUSTERS = {
    name: {"type": "local", "frontends": [{
        "hostname": f"{host}.example.org", "ssh_hostname": host,
        "hashserver": {"bufferdir": f"/srv/{name}/buf"}, "database": {"database_dir": f"/srv/{name}/db"}}]}
    for name, host in (("alpha", "fronta"), ("beta", "frontb"))
}


def alpha(op: str, args: dict) -> dict:
    assert op == "ps"
    return {"token": "t", "state": None, "rows": [
        {"key": "hashserver-alpha-rw-proj1", "status": "running", "port": 5001},
        {"key": "database-alpha-rw-proj1--STAGE-s1", "status": "failed", "port": None}]}


def beta(op: str, args: dict) -> dict:
    raise ConnectionFailed("frontb", "cannot connect: connection refused")


def test_ps_all_clusters_through_mock_transports(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".seamless").mkdir(parents=True)
    (home / ".seamless" / "clusters.yaml").write_text(yaml.safe_dump(CLUSTERS))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SEAMLESS_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    mocks = {"fronta": MockTransport(alpha, host="fronta"), "frontb": MockTransport(beta, host="frontb")}
    opened: list[str | None] = []

    def factory(host: str | None) -> MockTransport:
        opened.append(host)
        return mocks[str(host)]

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["ps", "--all-clusters", "--wide"], transport_factory=factory)
    assert out.getvalue().splitlines() == [
        "CLUSTER  SERVICE     PROJECT  STAGE  PROCESS  PORT  PERSISTENT  SIZE  KEY",
        "alpha    hashserver  proj1    -      running  5001  -           -     hashserver-alpha-rw-proj1",
        "alpha    database    proj1    s1     failed   -     -           -     database-alpha-rw-proj1--STAGE-s1",
    ]
    assert err.getvalue() == "seamless-service: cluster beta: frontb: cannot connect: connection refused\n"
    assert code == 1
    assert sorted(opened, key=str) == ["fronta", "frontb"]
    assert mocks["fronta"].batches == [[("ps", {"side": "server"})]]
    assert all(mock.closed for mock in mocks.values())  # the command closes what it opened
