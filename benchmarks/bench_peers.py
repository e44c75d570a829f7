#!/usr/bin/env python3
"""Ours against the libraries a developer would pick to build the same thing, side by side
in one run, on the same loopback sshd (tests/support/sshd.py), the same 200 state files:

  * execnet   a remote interpreter over the `ssh` binary's pipes (`makegateway("ssh=...")`);
              one channel kept open, a request/answer per message
  * mitogen   a remote interpreter over the `ssh` binary (`Router.ssh`), `context.call`
  * ours      `Host(alias, via=...).batch([...])`, the public API: rpyc to the agent,
              via="openssh" (the user's `ssh -W`, the default where `ssh` exists) and
              via="paramiko" (paramiko's direct-tcpip channel), both rows

Two calls each, p50/p99: a small call (ours: `hello`; theirs: a remote function returning
a small dict, benchmarks/_peer_remote.py) and reading the 200 state files (ours: `ps`;
theirs: a remote function that reads and json-parses the 200 files). Each library is used
with its defaults (both ask `ssh` for compression: execnet passes -C, mitogen
`Compression yes`). All are measured round-robin, a slice each in turn, so that the
load of a shared machine falls on all of them alike.

Targets (issue 13): ours small call p50 <= 0.25 ms and ahead of both; ahead of both on ps.

Three floor rows say what the target is read against: 100 bytes echoed by a Python process
through `ssh -W` (our path: SSH and a Python peer, no rpyc, no agent); the same through an
ssh session's pipes (execnet's path: the peer is a child of sshd, no TCP hop between them);
and our small call straight to the agent's port over loopback TCP (rpyc and the agent, no
SSH). The first two differ only by that hop.

execnet and mitogen come from the `bench` extra: `pip install -e '.[client,bench]'`. A
library that is missing or fails to start is printed as unavailable with the reason.
Needs root (sshd + a throwaway user).

    python benchmarks/bench_peers.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ss-bench-cache-")

import _peer_remote  # noqa: E402
from _common import write_state_files  # noqa: E402
from tests.support.sshd import SshServer, sshd_available  # noqa: E402

STATES = 200
STATE_DIR = "~/.remote-http-launcher/server"


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]
    return samples[len(samples) // 2], p99


def round_robin(calls: dict[str, Callable[[], object]], runs: int, slice_: int = 20) -> dict[str, tuple[float, float]]:
    """{label: (p50, p99) ms}: each call `runs` times, in slices of `slice_` taken in turn."""
    samples: dict[str, list[float]] = {label: [] for label in calls}
    for fn in calls.values():  # warm-up
        for _ in range(5):
            fn()
    while any(len(s) < runs for s in samples.values()):
        for label, fn in calls.items():
            for _ in range(min(slice_, runs - len(samples[label]))):
                t0 = time.perf_counter()
                fn()
                samples[label].append((time.perf_counter() - t0) * 1000)
    return {label: percentiles(s) for label, s in samples.items()}


def put_state(server: SshServer) -> None:
    """STATES realistic state files in the server user's launcher folder, owned by that user."""
    scratch = Path(tempfile.mkdtemp(prefix="ss-bench-states-"))
    write_state_files(scratch, STATES, server.home / "data/buffers")
    for path in sorted(scratch.glob("*.json")):
        server.write_file(f".remote-http-launcher/server/{path.name}", path.read_bytes())
    shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------- the three contenders
# Each opener returns (small call, read-the-states call, close) or raises with the reason.

def open_ours(server: SshServer, via: str | None = None) -> tuple[Callable, Callable, Callable]:
    from seamless_service import Host

    host = Host(server.alias, ssh_config=server.ssh_config, notice=lambda message: None, via=via)
    host.batch([("hello", {})])  # first use installs and starts the agent (not timed)
    if host.fallback:
        raise RuntimeError(f"answered through the ssh fallback, not the agent: {host.fallback}")
    rows = host.batch([("ps", {})])[0]
    count = len(rows["rows"] if isinstance(rows, dict) else rows)
    assert count == STATES, f"ps saw {count} rows, expected {STATES}"
    info = host.describe()
    tunnel = info.get("tunnel") or {}
    print(f"ours via {via or 'the default'}: transport {host.hello().get('transport')}, {info.get('via')}, "
          f"{tunnel.get('cipher') or tunnel.get('ssh') or 'cipher not reported'}", flush=True)
    return (lambda: host.batch([("hello", {})]), lambda: host.batch([("ps", {})]), host.close)


def open_execnet(server: SshServer) -> tuple[Callable, Callable, Callable]:
    import execnet

    # execnet runs `ssh -C <our words> <python -c ...>`: -F hands it the sshd's config
    spec = f"ssh=-F {server.ssh_config} {server.alias}//python={server.python}"
    gateway = execnet.makegateway(spec)
    channel = gateway.remote_exec(_peer_remote)

    def call(request: str) -> object:
        channel.send(request)
        return channel.receive()

    rows = call(STATE_DIR)
    assert len(rows) == STATES, f"execnet read {len(rows)} files, expected {STATES}"

    def close() -> None:
        channel.close()
        gateway.exit()

    return (lambda: call("hello"), lambda: call(STATE_DIR), close)


def open_mitogen(server: SshServer) -> tuple[Callable, Callable, Callable]:
    import mitogen.master

    broker = mitogen.master.Broker()
    try:
        router = mitogen.master.Router(broker)
        context = router.ssh(hostname=server.alias, ssh_args=["-F", str(server.ssh_config)],
                             python_path=server.python, connect_timeout=60)
        rows = context.call(_peer_remote.read_states, STATE_DIR)
        assert len(rows) == STATES, f"mitogen read {len(rows)} files, expected {STATES}"
    except BaseException:
        broker.shutdown()
        broker.join()
        raise

    def close() -> None:
        broker.shutdown()
        broker.join()

    return (lambda: context.call(_peer_remote.hello),
            lambda: context.call(_peer_remote.read_states, STATE_DIR), close)


# ---------------------------------------------------------------- the floors
# What any Python-to-Python call over SSH on this machine costs before rpyc or the agent do
# anything, and what rpyc and the agent cost without SSH: the small call's target is read
# against these (printed as "floor" rows, not contenders).

ECHO_SERVER = """
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    data = conn.recv(65536)
    if not data:
        break
    conn.sendall(data)
"""


def open_ssh_echo(server: SshServer) -> tuple[Callable, Callable, Callable]:
    """100 bytes echoed by a Python process on the host, through `ssh -W` to its port (the
    path of our agent connection, minus rpyc and the agent), on a socketpair as
    transport/openssh.py does it."""
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    port = int(echo.stdout.readline())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ssh = subprocess.Popen(["ssh", "-F", str(server.ssh_config), "-W", f"127.0.0.1:{port}", server.alias],
                           stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()
    return _echo_calls(ours, [ssh, echo])


PIPE_ECHO = """
import os
while True:
    data = os.read(0, 65536)
    if not data:
        break
    os.write(1, data)
"""


def open_pipe_echo(server: SshServer) -> tuple[Callable, Callable, Callable]:
    """100 bytes echoed by a Python process that sshd started for an ssh session, on the
    session's pipes: execnet's path (its remote interpreter is such a child), without
    execnet. Against the `ssh -W` row it prices the TCP hop from sshd to our agent."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    command = f"exec {shlex.quote(server.python)} -S -c {shlex.quote(PIPE_ECHO)}"
    ssh = subprocess.Popen(["ssh", "-F", str(server.ssh_config), server.alias, command],
                           stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()
    return _echo_calls(ours, [ssh])


def _echo_calls(ours: socket.socket, procs: list) -> tuple[Callable, Callable, Callable]:
    """The floor's call (100 bytes out, the same 100 back) on `ours`, checked once."""
    message = b"x" * 100

    def call() -> None:
        ours.sendall(message)
        got = 0
        while got < len(message):
            chunk = ours.recv(65536)
            if not chunk:
                raise EOFError("the echo ended")
            got += len(chunk)

    call()

    def close() -> None:
        ours.close()
        for proc in procs:
            proc.kill()
            proc.wait()

    return call, None, close  # no state to read: a small-call floor only


def open_rpyc_direct(server: SshServer) -> tuple[Callable, Callable, Callable]:
    """Our small call straight to the agent's port over loopback TCP (no SSH): rpyc on both
    ends plus the agent's work. Internals: the endpoint a connected Host holds."""
    from seamless_service import Host
    from seamless_service.client.transport.agent_conn import AgentConnection

    with Host(server.alias, ssh_config=server.ssh_config, notice=lambda message: None) as host:
        host.batch([("hello", {})])
        endpoint = host.transport.active._endpoint
    conn = AgentConnection.connect("127.0.0.1", endpoint.remote_port, endpoint.secret)
    return (lambda: conn.batch([("hello", {})]), lambda: conn.batch([("ps", {})]), conn.close)


def version_of(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    runs = 200 if args.quick else 1000
    reason = sshd_available()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    print(f"local Python {sys.version.split()[0]}; execnet {version_of('execnet')}, "
          f"mitogen {version_of('mitogen')}", flush=True)
    openers = {"ours via openssh (Host.batch, ssh -W)": lambda server: open_ours(server, "openssh"),
               "ours via paramiko (Host.batch, channel)": lambda server: open_ours(server, "paramiko"),
               "execnet (ssh binary, channel)": open_execnet,
               "mitogen (ssh binary, context.call)": open_mitogen,
               "floor: 100 bytes echoed through ssh -W": open_ssh_echo,
               "floor: 100 bytes echoed on an ssh session's pipes": open_pipe_echo,
               "floor: ours without SSH (rpyc on loopback TCP)": open_rpyc_direct}
    opened: dict[str, tuple[Callable, Callable, Callable]] = {}
    unavailable: dict[str, str] = {}
    with SshServer.start(alias="benchpeers") as server:
        print(f"server side: {server.python} ({STATES} state files)", flush=True)
        put_state(server)
        try:
            for label, opener in openers.items():
                try:
                    opened[label] = opener(server)
                except Exception as exc:  # noqa: BLE001 - a peer that fails is a row, not a crash
                    text = str(exc).strip().splitlines()
                    unavailable[label] = f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
            small = round_robin({label: calls[0] for label, calls in opened.items()}, runs)
            states = round_robin({label: calls[1] for label, calls in opened.items() if calls[1] is not None},
                                 max(50, runs // 5))
        finally:
            for calls in opened.values():
                calls[2]()
    report(openers, small, states, unavailable)
    return 0


def report(openers: dict, small: dict, states: dict, unavailable: dict[str, str]) -> None:
    ours = [label for label in openers if label.startswith("ours")]
    first = next((label for label in ours if label in small), None)
    print(f"\n{'':50} {'small call':>21}   {'read 200 state files':>21}")
    print(f"{'':50} {'p50':>9} {'p99':>11}   {'p50':>9} {'p99':>11}")
    for label in openers:
        if label in unavailable:
            print(f"{label:50} unavailable: {unavailable[label]}")
            continue
        (s50, s99) = small[label]
        if label not in states:
            line = f"{label:50} {s50:6.3f} ms {s99:7.3f} ms   {'-':>9} {'-':>11}"
            if label != first and first is not None:
                line += f"   ratio {s50 / small[first][0]:.1f}x"
            print(line)
            continue
        (r50, r99) = states[label]
        line = f"{label:50} {s50:6.3f} ms {s99:7.3f} ms   {r50:6.2f} ms {r99:7.2f} ms"
        if label != first and first is not None:
            line += f"   ratio {s50 / small[first][0]:.1f}x / {r50 / states[first][0]:.1f}x"
        print(line)
    peers = [label for label in openers if not label.startswith(("ours", "floor")) and label in small]
    verdict = {True: "ok", False: "MISSED"}
    for label in ours:
        if label not in small:
            continue
        s50, r50 = small[label][0], states[label][0]
        beaten_small = sum(s50 < small[p][0] for p in peers)
        beaten_states = sum(r50 < states[p][0] for p in peers)
        print(f"\n  {label}, small call: p50 {s50:.3f} ms [<= 0.25 ms] {verdict[s50 <= 0.25]}; "
              f"ahead of {beaten_small} of {len(peers)} peers [ahead of both] {verdict[beaten_small == 2]}")
        print(f"  {label}, ps of {STATES}: p50 {r50:.2f} ms; "
              f"ahead of {beaten_states} of {len(peers)} peers [ahead of both] {verdict[beaten_states == 2]}")
    print(f"  (ratio = the row's p50 / {first}'s: above 1 means {first} is faster)")


if __name__ == "__main__":
    sys.exit(main())
