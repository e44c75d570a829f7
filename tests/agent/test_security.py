"""Another local user on the same server cannot use our agent: it can neither read the
secret nor get past the handshake, and the agent keeps serving its owner."""

from __future__ import annotations

import rpyc.utils.factory  # noqa: F401 - imported here: the child (another uid) cannot import

from seamless_service.agent import lifecycle
from seamless_service.client.transport.agent_conn import AgentConnection
from seamless_service.protocol.auth import make_secret
from tests.support.agent import end_agent, spawn_agent
from tests.support.other_user import as_other_user


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
