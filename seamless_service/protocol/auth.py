"""Mutual challenge-response between a client and the agent: pure functions, no I/O.

Wire sequence (fixed-size frames, before rpyc speaks a single byte):

    agent  -> client   SERVER_HELLO   MAGIC (8) + server nonce (32)
    client -> agent    CLIENT_ANSWER  client nonce (32) + client proof (32)
    agent  -> client   SERVER_PROOF   agent proof (32)          (only if the client proved itself)

    client proof = HMAC-SHA256(secret, CLIENT_TAG + server nonce + client nonce)
    agent proof  = HMAC-SHA256(secret, AGENT_TAG  + server nonce + client nonce)

Both nonces are fresh per connection, so a captured answer is useless on a new
connection. The two tags differ, so neither side's proof can be reflected back as the
other's. The agent proves itself too, so a client never trusts a process that squats the
port of an agent that died.

Also here: the hardened rpyc protocol configuration both ends use (a plain dict, so this
module imports nothing heavy).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

MAGIC = b"SSAGENT\x01"            # identifies a seamless-service agent, handshake version 1
# Sent instead of SERVER_HELLO (same length, so a client reads it whole) when the agent
# already serves as many connections as it allows: the client can say so plainly
# instead of "connection closed". It carries no nonce and starts no handshake.
BUSY_MAGIC = b"SSAGBUSY"
SECRET_BYTES = 32
NONCE_BYTES = 32
MAC_BYTES = hashlib.sha256().digest_size  # 32
SERVER_HELLO_BYTES = len(MAGIC) + NONCE_BYTES
CLIENT_ANSWER_BYTES = NONCE_BYTES + MAC_BYTES
SERVER_PROOF_BYTES = MAC_BYTES
HANDSHAKE_TIMEOUT = 5.0            # seconds for the whole handshake: a silent peer cannot pin a thread

CLIENT_TAG = b"seamless-service agent-auth v1: client proof\x00"
AGENT_TAG = b"seamless-service agent-auth v1: agent proof\x00"
ROLES = {"client": CLIENT_TAG, "agent": AGENT_TAG}

# Longest a `wait` long-poll may take (protocol.schema.MAX_WAIT_SECONDS) plus a margin.
SYNC_REQUEST_TIMEOUT = 60.0 + 30.0

# rpyc protocol config for both ends: only exposed names, no pickle, no attribute writes,
# no tracebacks or custom exceptions crossing the wire. Nothing but bytes should cross.
RPYC_CONFIG: dict = {
    "allow_safe_attrs": False,     # not even __getitem__/__iter__/__new__ ... on a netref
    "allow_exposed_attrs": True,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_getattr": True,         # needed to reach the one exposed method
    "allow_setattr": False,
    "allow_delattr": False,
    "allow_pickle": False,
    "include_local_traceback": False,
    "include_local_version": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "propagate_SystemExit_locally": False,
    "propagate_KeyboardInterrupt_locally": False,
    "sync_request_timeout": SYNC_REQUEST_TIMEOUT,
}

_HEX = frozenset(string.hexdigits)


def make_secret() -> str:
    """A fresh agent secret: SECRET_BYTES random bytes as lowercase hex."""
    return secrets.token_hex(SECRET_BYTES)


def make_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a hex secret. ValueError (never echoing the secret) if malformed."""
    if isinstance(secret, (bytes, bytearray)):
        try:
            secret = bytes(secret).decode("ascii")
        except UnicodeDecodeError:
            # no cause: it carries the secret's bytes
            raise ValueError("the agent secret must be hexadecimal text") from None
    if not isinstance(secret, str):
        raise ValueError("the agent secret must be a string")
    secret = secret.strip()
    if len(secret) != 2 * SECRET_BYTES or not _HEX.issuperset(secret):
        raise ValueError(f"the agent secret must be {2 * SECRET_BYTES} hexadecimal characters")
    return bytes.fromhex(secret)


def response(secret: str | bytes, role: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """HMAC-SHA256(secret, tag(role) + server nonce + client nonce); role is "client" or "agent"."""
    tag = ROLES.get(role)
    if tag is None:
        raise ValueError(f"role must be 'client' or 'agent', not {role!r}")
    _check_nonce("server nonce", server_nonce)
    _check_nonce("client nonce", client_nonce)
    return hmac.new(secret_key(secret), tag + server_nonce + client_nonce, hashlib.sha256).digest()


def verify(expected: bytes, given: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, given)


def server_hello(server_nonce: bytes) -> bytes:
    _check_nonce("server nonce", server_nonce)
    return MAGIC + server_nonce


class AgentBusy(ValueError):
    """The agent answered with BUSY_MAGIC: it is at its connection limit."""


def server_busy() -> bytes:
    """The refusal an agent at its connection limit sends in place of its hello."""
    return BUSY_MAGIC + bytes(NONCE_BYTES)


def parse_server_hello(data: bytes) -> bytes:
    """The server nonce; AgentBusy if the agent is at its connection limit, ValueError if
    `data` is not a seamless-service agent's hello."""
    if data == server_busy():
        raise AgentBusy("the agent already serves as many connections as it allows; "
                        "close some of yours or retry in a moment")
    if len(data) != SERVER_HELLO_BYTES or not data.startswith(MAGIC):
        raise ValueError("the peer is not a seamless-service agent (unexpected greeting)")
    return data[len(MAGIC):]


def client_answer(secret: str | bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return client_nonce + response(secret, "client", server_nonce, client_nonce)


def split_client_answer(data: bytes) -> tuple[bytes, bytes]:
    """(client nonce, client proof) of a CLIENT_ANSWER frame."""
    if len(data) != CLIENT_ANSWER_BYTES:
        raise ValueError(f"client answer must be {CLIENT_ANSWER_BYTES} bytes, got {len(data)}")
    return data[:NONCE_BYTES], data[NONCE_BYTES:]


def _check_nonce(name: str, nonce: bytes) -> None:
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"{name} must be {NONCE_BYTES} bytes")
