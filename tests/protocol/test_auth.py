"""Pure challenge-response functions of protocol/auth.py."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from seamless_service.protocol import auth


def test_secret_is_fresh_hex_of_the_right_length():
    a, b = auth.make_secret(), auth.make_secret()
    assert a != b
    assert len(a) == 2 * auth.SECRET_BYTES == 64
    assert auth.secret_key(a) == bytes.fromhex(a)
    assert len(auth.secret_key(a)) == auth.SECRET_BYTES


def test_nonces_are_fresh_and_sized():
    nonces = {auth.make_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == auth.NONCE_BYTES for n in nonces)


@pytest.mark.parametrize("bad", ["", "ab", "zz" * 32, "a" * 63, "a" * 65, b"\xff" * 64, None, 12])
def test_malformed_secret_is_refused_without_echo(bad):
    with pytest.raises(ValueError) as info:
        auth.secret_key(bad)
    if isinstance(bad, str) and len(bad) > 4:
        assert bad not in str(info.value)


def test_secret_key_accepts_bytes_and_surrounding_whitespace():
    secret = auth.make_secret()
    assert auth.secret_key(secret.encode() + b"\n") == auth.secret_key(" " + secret)


def test_response_is_hmac_sha256_over_tag_and_both_nonces():
    secret = auth.make_secret()
    s, c = auth.make_nonce(), auth.make_nonce()
    expected = hmac.new(bytes.fromhex(secret), auth.CLIENT_TAG + s + c, hashlib.sha256).digest()
    assert auth.response(secret, "client", s, c) == expected
    assert len(expected) == auth.MAC_BYTES == 32


def test_response_differs_per_nonce_role_and_secret():
    secret = auth.make_secret()
    s, c = auth.make_nonce(), auth.make_nonce()
    base = auth.response(secret, "client", s, c)
    assert auth.response(secret, "client", auth.make_nonce(), c) != base   # fresh server nonce
    assert auth.response(secret, "client", s, auth.make_nonce()) != base   # fresh client nonce
    assert auth.response(secret, "client", c, s) != base                   # order matters
    assert auth.response(secret, "agent", s, c) != base                    # no reflection
    assert auth.response(auth.make_secret(), "client", s, c) != base       # another secret
    assert auth.response(secret, "client", s, c) == base                   # deterministic


def test_verify_uses_exact_comparison():
    secret = auth.make_secret()
    s, c = auth.make_nonce(), auth.make_nonce()
    proof = auth.response(secret, "client", s, c)
    assert auth.verify(proof, bytes(proof))
    assert not auth.verify(proof, proof[:-1] + bytes([proof[-1] ^ 1]))
    assert not auth.verify(proof, proof[:-1])


def test_bad_role_and_nonce_sizes_are_refused():
    secret = auth.make_secret()
    n = auth.make_nonce()
    with pytest.raises(ValueError):
        auth.response(secret, "server", n, n)
    with pytest.raises(ValueError):
        auth.response(secret, "client", n[:-1], n)
    with pytest.raises(ValueError):
        auth.response(secret, "client", n, n + b"x")


def test_frames_have_fixed_sizes_and_round_trip():
    secret = auth.make_secret()
    s, c = auth.make_nonce(), auth.make_nonce()
    hello = auth.server_hello(s)
    assert len(hello) == auth.SERVER_HELLO_BYTES
    assert auth.parse_server_hello(hello) == s
    answer = auth.client_answer(secret, s, c)
    assert len(answer) == auth.CLIENT_ANSWER_BYTES
    nonce, proof = auth.split_client_answer(answer)
    assert nonce == c and auth.verify(auth.response(secret, "client", s, c), proof)


@pytest.mark.parametrize("data", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 14,
                                  b"SSAGENT\x02" + b"n" * 32, auth.MAGIC + b"short"])
def test_foreign_greeting_is_refused(data):
    with pytest.raises(ValueError):
        auth.parse_server_hello(data)


def test_client_answer_of_wrong_size_is_refused():
    with pytest.raises(ValueError):
        auth.split_client_answer(b"x" * (auth.CLIENT_ANSWER_BYTES - 1))


def test_rpyc_config_is_hardened():
    cfg = auth.RPYC_CONFIG
    for key in ("allow_public_attrs", "allow_pickle", "allow_all_attrs", "allow_setattr",
                "allow_delattr", "include_local_traceback", "import_custom_exceptions",
                "instantiate_custom_exceptions", "allow_safe_attrs"):
        assert cfg[key] is False, key
    assert cfg["sync_request_timeout"] > 60  # a `wait` long-poll may take 60 s


# --- what a user reads when a handshake cannot go on (issue 14): exact messages ---
GOOD = "ab" * 32
NONCE = b"n" * 32


@pytest.mark.parametrize("call,error,message", [
    (lambda: auth.secret_key(b"\xff" * 64), ValueError, "the agent secret must be hexadecimal text"),
    (lambda: auth.secret_key(5), ValueError, "the agent secret must be a string"),
    (lambda: auth.secret_key("ab" * 31), ValueError, "the agent secret must be 64 hexadecimal characters"),
    (lambda: auth.secret_key("zz" * 32), ValueError, "the agent secret must be 64 hexadecimal characters"),
    (lambda: auth.response(GOOD, "server", NONCE, NONCE), ValueError, "role must be 'client' or 'agent', not 'server'"),
    (lambda: auth.response(GOOD, "client", b"short", NONCE), ValueError, "server nonce must be 32 bytes"),
    (lambda: auth.response(GOOD, "client", NONCE, b"short"), ValueError, "client nonce must be 32 bytes"),
    (lambda: auth.response(GOOD, "client", NONCE, "n" * 32), ValueError, "client nonce must be 32 bytes"),
    (lambda: auth.server_hello(b"short"), ValueError, "server nonce must be 32 bytes"),
    (lambda: auth.parse_server_hello(auth.server_busy()), auth.AgentBusy,
     "the agent already serves as many connections as it allows; close some of yours or retry in a moment"),
    (lambda: auth.parse_server_hello(b"SSH-2.0-OpenSSH_9.6\r\n" + b"x" * 19), ValueError,
     "the peer is not a seamless-service agent (unexpected greeting)"),
    (lambda: auth.split_client_answer(b"x" * 63), ValueError, "client answer must be 64 bytes, got 63"),
])
def test_each_handshake_refusal_says_what_is_wrong(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error and str(info.value) == message


def test_secrets_and_nonces_are_fresh_and_of_their_size():
    secrets_made = {auth.make_secret() for _ in range(4)}
    assert len(secrets_made) == 4 and all(len(s) == 64 and s == s.lower() for s in secrets_made)
    assert all(auth.secret_key(s) == bytes.fromhex(s) for s in secrets_made)
    nonces = {auth.make_nonce() for _ in range(4)}
    assert len(nonces) == 4 and all(len(n) == 32 for n in nonces)
    assert auth.secret_key(GOOD.encode()) == auth.secret_key(f"  {GOOD}\n") == bytes.fromhex(GOOD)
