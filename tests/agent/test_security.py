"""Another local user on the same server cannot use our agent: it can neither read the
secret nor get past the handshake, and the agent keeps serving its owner."""

from __future__ import annotations

import json
import os

import pytest

from seamless_service.agent import lifecycle
from seamless_service.client.agent_conn import AgentConnection
from seamless_service.protocol.auth import make_secret
from tests.support.agent import end_agent, spawn_agent

OTHER_UID = 54_321  # no such user needed: the kernel checks uids, not names


def as_other_user(fn) -> dict:
    """Run fn() in a forked child that dropped to another uid; return its JSON-able result."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch to another uid")
    # The child cannot read root's Python installation: import everything it uses now.
    import encodings.idna  # noqa: F401 - socket name resolution
    import rpyc  # noqa: F401
    import rpyc.utils.factory  # noqa: F401
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"crashed": repr(exc)}
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def test_second_user_is_refused(tmp_path):
    tmp_path.chmod(0o755)  # let the other user reach the folder; the agent's own stays 0700
    base = tmp_path / "rhl"
    (base / "server").mkdir(parents=True)
    proc, info = spawn_agent(base)
    port = info["port"]
    secret_file = base / "agent" / "secret"
    try:
        def attempt() -> dict:
            out: dict = {}
            try:
                secret_file.read_text()
                out["read_secret"] = "read"
            except PermissionError:
                out["read_secret"] = "denied"
            try:
                AgentConnection.connect("127.0.0.1", port, make_secret(), timeout=5)
                out["guessed"] = "connected"
            except Exception as exc:  # noqa: BLE001
                out["guessed"] = type(exc).__name__
            try:
                import rpyc

                conn = rpyc.connect("127.0.0.1", port, config={"sync_request_timeout": 5})
                conn.root.call(b"\x80")
                out["plain_rpyc"] = "answered"
            except Exception as exc:  # noqa: BLE001
                out["plain_rpyc"] = type(exc).__name__
            return out

        result = as_other_user(attempt)
        assert "crashed" not in result, result
        assert result["read_secret"] == "denied"
        assert result["guessed"] == "AgentAuthError"
        assert result["plain_rpyc"] != "answered"
        # The owner is still served.
        with AgentConnection.connect("127.0.0.1", port, lifecycle.read_secret(base)) as conn:
            assert conn.batch([("hello", {})])[0]["value"]["protocol"] >= 1
        assert proc.poll() is None
        mode = (base / "agent").stat().st_mode & 0o777
        assert mode == 0o700 and secret_file.stat().st_mode & 0o777 == 0o600
    finally:
        end_agent(proc)
