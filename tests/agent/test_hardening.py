"""Attacks on a real agent process that once stopped it or grew it without bound:

* another local user's connect + RST flood (rpyc logged a traceback per connection and
  started a thread per connection until accept() failed with EMFILE and the agent exited);
* the owner's own connections beyond the agent's cap;
* a request frame far above the 1 MiB limit, and a small compressed frame that inflates
  far beyond it (rpyc read or inflated the whole frame before any limit applied).
"""

from __future__ import annotations

import os
import resource
import socket
import time
import zlib

import pytest
from rpyc.core.channel import Channel

from seamless_service.agent.auth import REFUSAL_LOG_LIMIT
from seamless_service.agent.server import MAX_CONNECTIONS
from seamless_service.client.transport.agent_conn import AgentConnection, AgentConnectionError, client_handshake
from tests.support.agent import owner_is_served, proc_status, settled_log
from tests.support.other_user import OTHER_UID, reset_flood, start_as_other_user

MiB = 1 << 20
FLOOD_SECONDS = 4.0
FLOODERS = 2
THREAD_SLACK = 8  # main, idle watchdog, refusal-log timer, threads just ending


def test_reset_flood_of_another_user_neither_stops_the_agent_nor_fills_its_log(agent):
    pid = agent["proc"].pid
    before = settled_log(agent)
    flooders = [start_as_other_user(reset_flood(agent["port"], FLOOD_SECONDS)) for _ in range(FLOODERS)]
    peak_threads = 0
    served_during: float | None = None
    deadline = time.monotonic() + FLOOD_SECONDS
    while time.monotonic() < deadline and agent["proc"].poll() is None:
        peak_threads = max(peak_threads, proc_status(pid, "Threads"))
        if served_during is None and time.monotonic() > deadline - FLOOD_SECONDS / 2:
            served_during = owner_is_served(agent)
        time.sleep(0.05)
    reports = [flooder.result() for flooder in flooders]
    assert all(report.get("uid") == OTHER_UID for report in reports), reports
    assert sum(report["made"] for report in reports) > 1000, reports  # it was a real flood
    assert agent["proc"].poll() is None, "the agent died under the flood"
    assert served_during is not None and served_during < 3.0
    assert owner_is_served(agent) < 3.0
    assert peak_threads <= MAX_CONNECTIONS + THREAD_SLACK
    added = settled_log(agent)[len(before):]
    assert len(added) <= REFUSAL_LOG_LIMIT + 2, "\n".join(added[:40])
    assert not [line for line in added if "Traceback" in line or "ENOTCONN" in line], "\n".join(added[:40])


def test_the_owner_beyond_the_connection_cap_is_told_so_and_the_agent_survives(agent):
    pid = agent["proc"].pid
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"], timeout=10))
        start = time.monotonic()
        with pytest.raises(AgentConnectionError, match="as many connections as it allows"):
            AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"], timeout=10)
        assert time.monotonic() - start < 2.0  # told at once, not after a timeout
        assert proc_status(pid, "Threads") <= MAX_CONNECTIONS + THREAD_SLACK
        assert held[0].batch([("hello", {})])[0]["ok"]  # the open ones are still served
        assert held[-1].batch([("hello", {})])[0]["ok"]
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 10
    while True:  # their threads end as the agent sees them close
        try:
            assert owner_is_served(agent) < 3.0
            break
        except AgentConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert agent["proc"].poll() is None
    assert "connections are being served already (the agent's limit)" in "\n".join(settled_log(agent))


def test_out_of_file_descriptors_is_back_pressure_not_the_end(agent):
    # rpyc turned accept()'s EMFILE into the end of the server loop: the agent exited.
    pid = agent["proc"].pid
    spare = 6
    limit = len(os.listdir(f"/proc/{pid}/fd")) + spare
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    held = []
    try:
        with pytest.raises(AgentConnectionError):  # at the limit: it waits in the backlog
            for _ in range(spare + 2):
                held.append(AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"], timeout=1.5))
        assert len(held) >= spare - 2  # (rpyc may hold an fd or two of its own)
        time.sleep(0.5)
        assert agent["proc"].poll() is None, "the agent exited when it ran out of file descriptors"
        # open connections are still answered (an op needing a file may fail, in its result)
        [result] = held[0].batch([("hello", {})])
        assert result["ok"] or "Too many open files" in result["error"]["message"], result
    finally:
        for conn in held:
            conn.close()
    assert owner_is_served(agent) < 3.0  # accepting again once descriptors are free
    assert "cannot accept connections for now (Too many open files)" in "\n".join(settled_log(agent))


def authenticated_socket(agent: dict) -> socket.socket:
    """A raw socket past the handshake: what follows are rpyc frames."""
    sock = socket.create_connection(("127.0.0.1", agent["port"]), timeout=10)
    client_handshake(sock, agent["secret"])
    return sock


def peak_growth_mib(agent: dict, attack) -> tuple[float, object]:
    """(growth of the agent's peak RSS in MiB, attack()'s result)."""
    pid = agent["proc"].pid
    before = proc_status(pid, "VmHWM")
    result = attack()
    time.sleep(0.5)  # whatever the agent still reads or inflates
    return (proc_status(pid, "VmHWM") - before) / 1024, result


def test_a_frame_far_above_the_request_limit_is_refused_before_it_is_read(agent):
    sock = authenticated_socket(agent)
    sent_mib = 128

    def attack() -> bool:
        """Announce a 300 MiB call() frame, send 128 MiB of it; True if the agent hung up first."""
        chunk = bytes(MiB)
        try:
            sock.sendall(Channel.FRAME_HEADER.pack(300 * MiB, 0))
            for _ in range(sent_mib):
                sock.sendall(chunk)
        except OSError:  # reset or broken pipe: the agent closed the connection
            return True
        return False

    try:
        growth, hung_up = peak_growth_mib(agent, attack)
    finally:
        sock.close()
    assert hung_up, "the agent read the whole oversized frame"
    assert growth < 16, f"the agent's peak RSS grew by {growth:.0f} MiB"
    assert agent["proc"].poll() is None
    assert owner_is_served(agent) < 3.0
    assert "a frame of 314572800 bytes exceeds the limit" in "\n".join(settled_log(agent))


def test_a_compressed_frame_inflating_far_beyond_the_limit_is_refused(agent):
    inflated_mib = 128
    packer = zlib.compressobj(1)
    zeros = bytes(MiB)
    body = b"".join(packer.compress(zeros) for _ in range(inflated_mib)) + packer.flush()
    assert len(body) < MiB  # a small frame, well within the limit as sent
    sock = authenticated_socket(agent)

    def attack() -> bytes:
        sock.sendall(Channel.FRAME_HEADER.pack(len(body), 1) + body + Channel.FLUSHER)
        sock.settimeout(10)
        try:
            return sock.recv(1)  # b"": the agent closed the connection
        except OSError:
            return b""

    try:
        growth, answer = peak_growth_mib(agent, attack)
    finally:
        sock.close()
    assert answer == b""
    assert growth < 16, f"the agent's peak RSS grew by {growth:.0f} MiB"
    assert agent["proc"].poll() is None
    assert owner_is_served(agent) < 3.0
    assert "inflates beyond the limit" in "\n".join(settled_log(agent))
