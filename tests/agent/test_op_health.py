"""`health` on real services and on real sockets that misbehave."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from seamless_service.agent.context import AgentContext
from seamless_service.agent.dispatch import handle
from seamless_service.agent.statefiles import server_row
from seamless_service.protocol import decode_reply, encode_request
from tests.support.services import wait_for


def call(op: str, **args):
    reply = decode_reply(handle(AgentContext(), encode_request([(op, args)])), expected=1)
    assert reply[0]["ok"], reply[0]
    return reply[0]["value"]


def by_key(value):
    return {s["key"]: s for s in value["services"]}


@pytest.fixture
def sleeper():
    """A live process whose pid a hand-written state can name (command `sleep 60`)."""
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    yield proc
    proc.kill()
    proc.wait()


def running_state(sleeper, port, **extra):
    return {"command": "sleep 60", "uid": os.getuid(), "pid": sleeper.pid, "status": "running",
            "port": port, "network_interface": "127.0.0.1", **extra}


@pytest.fixture
def listener():
    """Start TCP servers on 127.0.0.1 whose connections get `behaviour(conn)`."""
    socks: list[socket.socket] = []

    def start(behaviour) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        socks.append(sock)

        def serve():
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                threading.Thread(target=behaviour, args=(conn,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        return sock.getsockname()[1]

    yield start
    for sock in socks:
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_running_service_is_healthy_and_listed(sandbox):
    toy = sandbox.launch("toy-a")
    sandbox.write_state("toy-old", {"status": "stale", "pid": 1, "port": toy["port"]})
    value = call("health")
    assert list(by_key(value)) == ["toy-a"]  # only running services without keys
    service = by_key(value)["toy-a"]
    assert service["status"] == "running" and service["pid"] == toy["pid"]
    assert service["pid_alive"] is True and service["port_open"] is True
    assert service["http_ok"] is True and service["http_status"] == 200
    assert service["healthy"] is True and "error" not in service
    assert service["handshake"] == f"http://127.0.0.1:{toy['port']}/healthcheck"


def test_killed_service_is_not_healthy(sandbox):
    toy = sandbox.launch("toy-k")
    os.killpg(toy["pid"], signal.SIGKILL)  # the state still says running
    wait_for(lambda: by_key(call("health", keys=["toy-k"]))["toy-k"]["status"] == "stale")
    service = by_key(call("health", keys=["toy-k"]))["toy-k"]
    assert service["pid_alive"] is False and service["port_open"] is None and service["healthy"] is False
    assert call("health")["services"] == []


def test_unreaped_process_is_not_alive(sandbox):
    # A dead child nobody has reaped yet: kill(pid, 0) still succeeds (rhl-ps calls it alive).
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        path = sandbox.write_state("toy-z", {"command": "sleep 60", "uid": os.getuid(), "pid": proc.pid,
                                             "status": "running", "port": free_port()})
        proc.kill()
        wait_for(lambda: open(f"/proc/{proc.pid}/stat").read().rpartition(")")[2].split()[0] == "Z")
        service = by_key(call("health", keys=["toy-z"]))["toy-z"]
        assert service["status"] == server_row(path)["status"]  # as ps derives it
        assert service["pid_alive"] is False and service["healthy"] is False
    finally:
        proc.wait()


def test_keys_report_missing_and_not_running(sandbox):
    sandbox.write_state("toy-failed", {"status": "failed"})
    sandbox.write_state("toy-bad", None, raw="[]")
    value = call("health", keys=["toy-none", "toy-failed", "toy-bad"])
    assert [s["key"] for s in value["services"]] == ["toy-none", "toy-failed", "toy-bad"]
    none, failed, bad = value["services"]
    assert none["status"] == "missing" and none["healthy"] is False
    assert failed["status"] == "failed" and failed["http_ok"] is None and failed["healthy"] is False
    assert bad["status"] == "error" and "JSON object" in bad["error"]


def test_closed_port(sandbox, sleeper):
    sandbox.write_state("toy-closed", running_state(sleeper, free_port()))
    service = by_key(call("health", keys=["toy-closed"]))["toy-closed"]
    assert service["status"] == "running" and service["pid_alive"] is True
    assert service["port_open"] is False and service["http_ok"] is False and service["healthy"] is False
    assert "connect to 127.0.0.1" in service["error"]


def test_non_http_and_non_2xx_answers(sandbox, sleeper, listener):
    def garbage(conn):
        with conn:
            conn.recv(1024)
            conn.sendall(b"SSH-2.0-not-http\r\n")

    def error_500(conn):
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")

    sandbox.write_state("toy-garbage", running_state(sleeper, listener(garbage)))
    sandbox.write_state("toy-500", running_state(sleeper, listener(error_500)))
    value = by_key(call("health", keys=["toy-garbage", "toy-500"]))
    assert value["toy-garbage"]["port_open"] is True and value["toy-garbage"]["http_ok"] is False
    assert value["toy-garbage"]["http_status"] is None and value["toy-garbage"]["healthy"] is False
    assert value["toy-500"]["http_ok"] is False and value["toy-500"]["http_status"] == 500
    assert "HTTP 500" in value["toy-500"]["error"]


def test_reused_pid_is_not_the_service(sandbox, sleeper):
    toy = sandbox.launch("toy-r")
    try:
        sandbox.write_state("toy-r", {**toy, "pid": sleeper.pid})  # live pid, another program
        service = by_key(call("health", keys=["toy-r"]))["toy-r"]
        assert service["pid_alive"] is False and service["healthy"] is False
        assert "belongs to another process" in service["error"]
        assert service["port_open"] is True  # the port itself still answers
    finally:
        os.killpg(toy["pid"], signal.SIGKILL)  # the state no longer names it: the sandbox cannot


def test_dask_handshake_uses_dashboard_port(sandbox, sleeper):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    dashboard = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=dashboard.serve_forever, daemon=True).start()
    try:
        port = dashboard.server_address[1]
        key = "daskserver-mycluster-rw-proj"
        sandbox.write_state(key, running_state(sleeper, port, dashboard_port=port))
        service = by_key(call("health", keys=[key]))[key]
        assert service["handshake"] == f"http://127.0.0.1:{port}/health"
        assert service["http_ok"] is True and service["healthy"] is True
        # Any other service is asked /healthcheck, which this server answers 404.
        sandbox.write_state("toy-d", running_state(sleeper, port))
        assert by_key(call("health", keys=["toy-d"]))["toy-d"]["http_status"] == 404
    finally:
        dashboard.shutdown()
        dashboard.server_close()


def test_services_are_probed_concurrently(sandbox, sleeper, listener):
    def silent(conn):  # accepts, never answers
        time.sleep(5)
        conn.close()

    keys = [f"toy-slow{i}" for i in range(6)]
    for key in keys:
        sandbox.write_state(key, running_state(sleeper, listener(silent)))
    start = time.monotonic()
    value = call("health", keys=keys, timeout=1.0)
    elapsed = time.monotonic() - start
    assert all(s["port_open"] is True and s["http_ok"] is False for s in value["services"])
    assert elapsed < 4.0, f"6 services x 1 s timeout took {elapsed:.1f} s: not concurrent"
