import msgpack
import pytest

from seamless_service.protocol import (
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_result,
    ok_result,
)
from seamless_service.protocol.codec import MAX_NESTING, MAX_OPS_PER_REQUEST, OpCall, parse_op_entry


def code_of(fn, *args):
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    return info.value.code


def test_request_round_trip_keeps_ops_in_order():
    data = encode_request([("ps", {"status": "running"}), OpCall("hello"), ("logs", {"key": "k", "tail": 3})])
    request = decode_request(data)
    assert request.version == PROTOCOL_VERSION
    calls = [parse_op_entry(e) for e in request.ops]
    assert [c.op for c in calls] == ["ps", "hello", "logs"]
    assert calls[0].args == {"status": "running"}
    assert calls[2].args == {"key": "k", "tail": 3}


def test_reply_round_trip_with_bytes_and_errors():
    results = [ok_result({"data": b"\x00\xffbinary", "n": 3}), error_result(ProtocolError("not_found", "gone"))]
    decoded = decode_reply(encode_reply(results), expected=2)
    assert decoded[0] == {"ok": True, "value": {"data": b"\x00\xffbinary", "n": 3}}
    assert decoded[1] == {"ok": False, "error": {"code": "not_found", "message": "gone"}}


def test_request_level_error_reply_raises_with_code():
    data = encode_reply(error=ProtocolError(ErrorCode.VERSION_MISMATCH, "client 9, agent 1"))
    with pytest.raises(ProtocolError) as info:
        decode_reply(data)
    assert info.value.code == ErrorCode.VERSION_MISMATCH
    assert "client 9" in info.value.message


def test_reply_with_wrong_number_of_results_is_refused():
    assert code_of(decode_reply, encode_reply([ok_result(1)]), 2) == ErrorCode.MALFORMED


@pytest.mark.parametrize("data", [
    b"",                       # empty
    b"\xc1",                   # never-used msgpack byte
    b"\x92\x01",               # truncated array
    msgpack.packb({"v": 1, "ops": []}) + b"\x00",  # trailing bytes
    b"\xff" * 10,
])
def test_malformed_bytes(data):
    assert code_of(decode_request, data) == ErrorCode.MALFORMED


def test_non_bytes_request():
    assert code_of(decode_request, "a string") == ErrorCode.MALFORMED


@pytest.mark.parametrize("obj", [[1, 2], "ps", 5, None, {"ops": []}, {"v": "1", "ops": []},
                                 {"v": True, "ops": []}, {"v": 1}, {"v": 1, "ops": {}},
                                 {"v": 1, "ops": [], "extra": 1}])
def test_bad_envelopes(obj):
    assert code_of(decode_request, msgpack.packb(obj)) == ErrorCode.MALFORMED


def test_version_mismatch_names_both_versions():
    with pytest.raises(ProtocolError) as info:
        decode_request(msgpack.packb({"v": PROTOCOL_VERSION + 41, "ops": []}))
    assert info.value.code == ErrorCode.VERSION_MISMATCH
    assert str(PROTOCOL_VERSION + 41) in info.value.message and str(PROTOCOL_VERSION) in info.value.message


def test_oversized_request_is_refused_before_decoding():
    data = msgpack.packb({"v": 1, "ops": [{"op": "x" * (MAX_REQUEST_BYTES + 10)}]})
    assert code_of(decode_request, data) == ErrorCode.TOO_LARGE


def test_encode_refuses_oversized_request():
    assert code_of(encode_request, [("ps", {"x": "y" * (MAX_REQUEST_BYTES + 1)})]) == ErrorCode.TOO_LARGE


def test_too_many_ops():
    data = msgpack.packb({"v": 1, "ops": [{"op": "hello"}] * (MAX_OPS_PER_REQUEST + 1)})
    assert code_of(decode_request, data) == ErrorCode.TOO_LARGE


def test_deep_nesting_is_refused():
    obj: object = 1
    for _ in range(MAX_NESTING + 5):
        obj = [obj]
    assert code_of(decode_request, msgpack.packb({"v": 1, "ops": obj})) == ErrorCode.MALFORMED


def test_extremely_deep_nesting_does_not_crash():
    assert code_of(decode_request, b"\x91" * 200_000 + b"\x00") == ErrorCode.MALFORMED


def test_non_string_map_keys_are_refused():
    assert code_of(decode_request, msgpack.packb({1: 2})) == ErrorCode.MALFORMED


@pytest.mark.parametrize("entry,code", [
    ([1], ErrorCode.MALFORMED),
    ({"op": 5}, ErrorCode.MALFORMED),
    ({"args": {}}, ErrorCode.MALFORMED),
    ({"op": "ps", "args": [1]}, ErrorCode.BAD_ARGS),
    ({"op": "ps", "junk": 1}, ErrorCode.MALFORMED),
])
def test_bad_op_entries(entry, code):
    assert code_of(parse_op_entry, entry) == code


def test_op_entry_without_args_means_empty_args():
    assert parse_op_entry({"op": "hello"}).args == {}
    assert parse_op_entry({"op": "hello", "args": None}).args == {}
