"""`ps` over several hosts, each answered by a MockTransport: the rows, the statuses, an op
that fails on one host and a host that cannot answer at all, as the table shows them and
the lines stderr gets (pure logic: no host, no agent, no configuration)."""

from __future__ import annotations

from typing import Any, Callable

from seamless_service.client.errors import ConnectionFailed
from seamless_service.client.query import ps as ps_query
from seamless_service.client.query.render import columns_for, table
from seamless_service.client.transport.mock import MockTransport
from seamless_service.protocol import ErrorCode, ProtocolError

HS = {"level": 2, "marker": ".HASHSERVER_PREFIX"}


def meta(service: str, cluster: str, project: str, stage: str | None = None) -> dict[str, Any]:
    return {"service": service, "cluster": cluster, "mode": "rw", "project": project, "stage": stage}


def agent(rows: list[dict[str, Any]], dirs: Callable[[dict], list[dict[str, Any]]]) -> Callable:
    """A host's agent: `ps` answers `rows`, `persistent` answers `dirs(args)`."""

    def handler(op: str, args: dict) -> dict:
        if op == "ps":
            return {"rows": rows, "token": "t", "state": None}
        if op == "persistent":
            return {"rows": dirs(args)}
        raise AssertionError(op)

    return handler


def refused(args: dict) -> list[dict[str, Any]]:
    raise ProtocolError(ErrorCode.POLICY_REFUSED, f"{args['paths'][0]}: outside the data roots")


def unreachable(op: str, args: dict) -> dict:
    raise ConnectionFailed("frontc", "cannot connect: connection refused")


def hosts() -> dict[str, MockTransport]:
    """Three frontends: one answers, one refuses an op, one cannot be reached."""
    a_rows = [
        {"key": "hashserver-a-rw-proj1", "status": "running", "port": 5001, "meta": meta("hashserver", "a", "proj1")},
        {"key": "database-a-rw-proj1", "status": "failed", "port": None, "meta": meta("database", "a", "proj1")},
        {"key": "hashserver-a-rw-proj2--STAGE-s1", "status": "stale", "port": 5002,
         "meta": meta("hashserver", "a", "proj2", "s1")},
    ]
    a_dirs = [{"path": "/srv/a/buf/proj1", "state": "populated", "bytes": 1_234_000, "bytes_state": "fresh"},
              {"path": "/srv/a/buf/old", "state": "populated", "bytes": 42_000, "bytes_state": "stale"}]
    b_rows = [{"key": "hashserver-b-rw-proj1", "status": "starting", "port": 6001,
               "meta": meta("hashserver", "b", "proj1")}]
    return {
        "fronta": MockTransport(agent(a_rows, lambda args: a_dirs), host="fronta"),
        "frontb": MockTransport(agent(b_rows, refused), host="frontb"),
        "frontc": MockTransport(unreachable, host="frontc"),
    }


def plan() -> ps_query.Plan:
    """What `ps --all-clusters --persistent --service hashserver` plans for clusters a, b, c."""
    out = ps_query.Plan()
    for cluster, host in (("a", "fronta"), ("b", "frontb"), ("c", "frontc")):
        query = out.query(host, f"cluster {cluster}")
        query.add(ps_query.Part("process", {"side": "server"}, clusters=(cluster,)))
        root = f"/srv/{cluster}/buf"
        query.add(ps_query.persistent_part("hashserver", cluster, root, root, follow=True))
    return out


def request(status: str | None = None) -> ps_query.PsRequest:
    """`ps --all-clusters --persistent --service hashserver`, as the CLI asks it."""
    return ps_query.PsRequest(view="all", filters={"service": "hashserver"}, status=status, persistent=True)


def run(mocks: dict[str, MockTransport], **given: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows and the stderr lines (without the program's prefix), as ps_cmd.run has them."""
    planned = plan()
    outcomes = ps_query.run_all(planned.list(), mocks.__getitem__, settle=True)
    problems = ps_query.problems_of(planned, outcomes)
    return ps_query.assemble(outcomes, request(**given)), [p.line for p in problems]


def test_every_host_in_one_batch_then_the_table_and_one_line_per_failure():
    mocks = hosts()
    rows, lines = run(mocks)
    assert table(rows, columns_for(wide=True)).splitlines() == [
        "CLUSTER  SERVICE     PROJECT  STAGE  PROCESS   PORT  PERSISTENT  SIZE    KEY",
        "a        hashserver  proj1    -      running   5001  populated   1.2 MB  hashserver-a-rw-proj1",
        "a        database    proj1    -      failed    -     -           -       database-a-rw-proj1",
        "a        hashserver  proj2    s1     stale     5002  -           -       hashserver-a-rw-proj2--STAGE-s1",
        "b        hashserver  proj1    -      starting  6001  -           -       hashserver-b-rw-proj1",
        "a        hashserver  old      -      -         -     populated   42 kB*  -",
    ]
    assert lines == ["cluster b: persistent: /srv/b/buf: outside the data roots",
                     "cluster c: frontc: cannot connect: connection refused"]
    # one round trip per host: ps and the root walk together (nothing to follow, nothing pending)
    assert mocks["fronta"].batches == [[("ps", {"side": "server"}),
                                        ("persistent", {"paths": ["/srv/a/buf"], **HS})]]
    assert len(mocks["frontb"].batches) == 1


def test_status_persistent_keeps_the_data_no_process_uses():
    """--status persistent is applied here, to the merged rows (#37): populated data
    directories whose service does not run (the agent filters only process statuses)."""
    rows, lines = run(hosts(), status="persistent")
    assert [(row["project"], row["persistent"], row["process"], row["host"]) for row in rows] == [
        ("old", "populated", None, "fronta")]
    assert len(lines) == 2  # the failures are said whatever the filter


def test_sizes_still_pending_are_asked_again_until_they_are_in():
    answers = iter([("pending", None), ("pending", None), ("fresh", 5_000)])

    def dirs(args: dict) -> list[dict[str, Any]]:
        state, size = next(answers)
        return [{"path": "/srv/a/buf/proj1", "state": "populated", "bytes": size, "bytes_state": state}]

    mock = MockTransport(agent([], dirs), host="fronta")
    query = ps_query.HostQuery("fronta", "cluster a")
    query.add(ps_query.persistent_part("hashserver", "a", "/srv/a/buf", "/srv/a/buf", follow=False))
    outcome = ps_query.run_one(query, lambda host: mock, settle=True)
    assert [(row["size"], row["size_state"]) for row in outcome.persistent] == [(5_000, "fresh")]
    assert len(mock.batches) == 3  # a mock measures nothing itself: ps asks it again
