import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from seamless_service.protocol.codec import (
    MAX_NESTING, MAX_OPS_PER_REQUEST, MAX_REPLY_BYTES, OpCall, encode_packed_reply, pack_result, parse_op_entry,
)


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


# --- limits at their boundary (issue 14): exactly the maximum accepted, one more refused ---

def nested(levels: int) -> object:
    """A value that is `levels` containers deep (lists and maps alternating)."""
    obj: object = 0
    for i in range(levels):
        obj = [obj] if i % 2 else {"k": obj}
    return obj


def request_of_size(size: int) -> bytes:
    """A valid request of exactly `size` bytes (the padding is one op's string argument),
    packed as encode_request packs it."""
    def pack(pad: int) -> bytes:
        return msgpack.packb({"v": PROTOCOL_VERSION, "ops": [{"op": "ps", "args": {"service": "s" * pad}}]},
                             use_bin_type=True)
    pad = size - len(pack(0))
    for extra in range(pad, pad - 10, -1):  # the string header grows with the string
        if len(pack(extra)) == size:
            return pack(extra)
    raise AssertionError(f"cannot build a request of {size} bytes")


def test_ops_per_request_at_the_limit():
    assert MAX_OPS_PER_REQUEST == 256
    ok = decode_request(msgpack.packb({"v": PROTOCOL_VERSION, "ops": [{"op": "hello"}] * 256}))
    assert len(ok.ops) == 256
    with pytest.raises(ProtocolError) as info:
        decode_request(msgpack.packb({"v": PROTOCOL_VERSION, "ops": [{"op": "hello"}] * 257}))
    assert (info.value.code, info.value.message) == (ErrorCode.TOO_LARGE, "request has 257 ops; at most 256 per request")


def test_nesting_at_the_limit():
    # the envelope map is level 1, `ops` level 2: 14 more levels inside make 16 in all
    assert MAX_NESTING == 16
    ok = decode_request(msgpack.packb({"v": PROTOCOL_VERSION, "ops": [nested(14)]}))
    assert ok.ops == [nested(14)]
    with pytest.raises(ProtocolError) as info:
        decode_request(msgpack.packb({"v": PROTOCOL_VERSION, "ops": [nested(15)]}))
    assert (info.value.code, info.value.message) == (ErrorCode.MALFORMED, "message nests deeper than 16 levels")


def test_nesting_counts_every_branch_not_only_the_last():
    deep_first = {"v": PROTOCOL_VERSION, "ops": [nested(15), 1, {"a": 1}]}
    assert code_of(decode_request, msgpack.packb(deep_first)) == ErrorCode.MALFORMED
    deep_in_map = {"v": PROTOCOL_VERSION, "ops": [{"op": "ps", "args": {"a": nested(13), "b": 1}}]}
    assert code_of(decode_request, msgpack.packb(deep_in_map)) == ErrorCode.MALFORMED


def test_request_bytes_at_the_limit():
    assert MAX_REQUEST_BYTES == 1 << 20
    exact = request_of_size(MAX_REQUEST_BYTES)
    assert len(decode_request(exact).ops) == 1
    over = request_of_size(MAX_REQUEST_BYTES + 1)
    with pytest.raises(ProtocolError) as info:
        decode_request(over)
    assert (info.value.code, info.value.message) == (
        ErrorCode.TOO_LARGE, f"message of {MAX_REQUEST_BYTES + 1} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes")


def test_encode_request_at_the_limit():
    exact = request_of_size(MAX_REQUEST_BYTES)
    service = decode_request(exact).ops[0]["args"]["service"]
    assert encode_request([("ps", {"service": service})]) == exact
    with pytest.raises(ProtocolError) as info:
        encode_request([("ps", {"service": service + "s"})])
    assert (info.value.code, info.value.message) == (
        ErrorCode.TOO_LARGE, f"request of {MAX_REQUEST_BYTES + 1} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes")


def reply_of_size(size: int) -> bytes:
    base = len(encode_reply([ok_result(b"")]))
    for extra in range(size - base, size - base - 10, -1):
        data = encode_reply([ok_result(b"x" * extra)])
        if len(data) == size:
            return data
    raise AssertionError(f"cannot build a reply of {size} bytes")


def test_reply_bytes_at_the_limit():
    assert MAX_REPLY_BYTES == 64 << 20
    assert decode_reply(reply_of_size(MAX_REPLY_BYTES), expected=1)[0]["ok"] is True
    with pytest.raises(ProtocolError) as info:
        decode_reply(reply_of_size(MAX_REPLY_BYTES + 1))
    assert info.value.code == ErrorCode.TOO_LARGE


def test_a_reply_is_not_held_to_the_request_nesting_limit():
    # rows nest; the nesting limit guards the agent against clients, not the reverse
    deep = nested(40)
    assert decode_reply(encode_reply([ok_result(deep)]), expected=1) == [{"ok": True, "value": deep}]


def test_encode_request_accepts_opcalls_and_pairs_alike():
    data = encode_request([OpCall("ps", {"a": 1}), ("logs", None), ("hello", {})], version=7)
    assert msgpack.unpackb(data) == {"v": 7, "ops": [{"op": "ps", "args": {"a": 1}}, {"op": "logs", "args": {}},
                                                     {"op": "hello", "args": {}}]}


def test_packed_reply_is_the_plain_reply():
    results = [ok_result({"rows": [1, 2]}), error_result(ProtocolError(ErrorCode.NOT_FOUND, "gone"))]
    assert encode_packed_reply([pack_result(r) for r in results]) == encode_reply(results)
    assert encode_packed_reply([]) == encode_reply([])


@pytest.mark.parametrize("obj,message", [
    ([1], "request must be a map, not a list"),
    ("x", "request must be a map, not a string"),
    ({"v": PROTOCOL_VERSION, "ops": [], "zz": 1, "aa": 2}, "unknown request field(s): aa, zz"),
    ({"v": "1", "ops": []}, "request field 'v' (protocol version) must be an integer"),
    ({"v": PROTOCOL_VERSION, "ops": {}}, "request field 'ops' must be a list"),
])
def test_envelope_errors_say_what_is_wrong(obj, message):
    with pytest.raises(ProtocolError) as info:
        decode_request(msgpack.packb(obj))
    assert (info.value.code, info.value.message) == (ErrorCode.MALFORMED, message)


@pytest.mark.parametrize("data,message", [
    (msgpack.packb({"v": 1, "ops": []}) + b"\x00", "trailing bytes after the msgpack message"),
    (b"\xc1", "not a valid msgpack message: FormatError"),
    ("text", "request must be bytes"),
])
def test_undecodable_requests_say_why(data, message):
    with pytest.raises(ProtocolError) as info:
        decode_request(data)
    assert (info.value.code, info.value.message) == (ErrorCode.MALFORMED, message)


@pytest.mark.parametrize("entry,code,message", [
    (5, ErrorCode.MALFORMED, "each op must be a map, not an integer"),
    ({"op": "ps", "z": 1, "a": 2}, ErrorCode.MALFORMED, "unknown op field(s): a, z"),
    ({"op": None}, ErrorCode.MALFORMED, "op field 'op' must be a string"),
    ({"op": "p" * 70, "args": 1.5}, ErrorCode.BAD_ARGS, f"op {'p' * 64!r}: 'args' must be a map, not a float"),
    ({"op": "ps", "args": True}, ErrorCode.BAD_ARGS, "op 'ps': 'args' must be a map, not a boolean"),
    ({"op": "ps", "args": b"x"}, ErrorCode.BAD_ARGS, "op 'ps': 'args' must be a map, not bytes"),
])
def test_op_entry_errors_say_what_is_wrong(entry, code, message):
    with pytest.raises(ProtocolError) as info:
        parse_op_entry(entry)
    assert (info.value.code, info.value.message) == (code, message)


@pytest.mark.parametrize("reply,message", [
    ({"v": 1, "error": "boom"}, "reply carries a malformed error"),
    ({"v": 1, "results": [{"value": 1}]}, "reply field 'results' must be a list of results"),
    ({"v": 1, "results": {}}, "reply field 'results' must be a list of results"),
    ([1], "reply must be a map, not a list"),
])
def test_malformed_replies_say_why(reply, message):
    with pytest.raises(ProtocolError) as info:
        decode_reply(msgpack.packb(reply))
    assert (info.value.code, info.value.message) == (ErrorCode.MALFORMED, message)


def test_reply_error_without_fields_is_an_internal_error():
    with pytest.raises(ProtocolError) as info:
        decode_reply(msgpack.packb({"v": 1, "error": {}}))
    assert (info.value.code, info.value.message) == (ErrorCode.INTERNAL, "")


def test_reply_result_count_is_named():
    with pytest.raises(ProtocolError) as info:
        decode_reply(encode_reply([ok_result(1)]), 2)
    assert info.value.message == "reply has 1 results for 2 ops"


def test_non_string_keys_inside_args_are_refused_as_undecodable():
    # a client cannot smuggle an integer field name past the schema (which checks str names)
    data = msgpack.packb({"v": PROTOCOL_VERSION, "ops": [{"op": "ps", "args": {1: "x"}}]})
    with pytest.raises(ProtocolError) as info:
        decode_request(data)
    assert (info.value.code, info.value.message) == (ErrorCode.MALFORMED, "not a valid msgpack message: ValueError")


@pytest.mark.parametrize("obj,message", [
    (None, "request must be a map, not nil"),
    (msgpack.ExtType(1, b"x"), "request must be a map, not ExtType"),
    (2.5, "request must be a map, not a float"),
])
def test_the_wrong_kind_of_request_is_named(obj, message):
    with pytest.raises(ProtocolError) as info:
        decode_request(msgpack.packb(obj))
    assert info.value.message == message


@pytest.mark.parametrize("wrap", [lambda x: [x], lambda x: {"k": x}], ids=["lists", "maps"])
def test_nesting_limit_holds_for_lists_and_maps_alike(wrap):
    def chain(levels):  # `levels` containers of one kind, below the envelope's 2 levels
        obj: object = 0
        for _ in range(levels):
            obj = wrap(obj)
        return obj
    assert decode_request(msgpack.packb({"v": PROTOCOL_VERSION, "ops": [chain(14)]})).ops == [chain(14)]
    assert code_of(decode_request, msgpack.packb({"v": PROTOCOL_VERSION, "ops": [chain(15)]})) == ErrorCode.MALFORMED


def test_an_error_reply_is_the_versioned_envelope():
    data = encode_reply(error=ProtocolError(ErrorCode.TOO_LARGE, "big"))
    assert msgpack.unpackb(data) == {"v": PROTOCOL_VERSION, "error": {"code": "too_large", "message": "big"}}
    assert msgpack.unpackb(encode_reply([ok_result(b"\x00")])) == {"v": PROTOCOL_VERSION,
                                                                 "results": [{"ok": True, "value": b"\x00"}]}


def reference_depth(obj) -> int:
    """The nesting check decode_request made before it was rewritten for speed (an
    explicit stack of (item, level) pairs): the new one must refuse exactly what this
    refuses (depth > MAX_NESTING) and accept exactly the rest."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_NESTING:
                return level
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def decode_outcome(data: bytes):
    try:
        return ("ok", decode_request(data).ops)
    except ProtocolError as exc:
        return (exc.code, exc.message)


def trees(max_leaves: int = 60):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.text(max_size=3),
                        st.binary(max_size=3), st.floats(allow_nan=False))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=2), inner, max_size=4)),
        max_leaves=max_leaves)


def deep_chain(levels: int, kinds: str):
    """`levels` containers, the kinds taken from `kinds` in turn ('l' list, 'm' map), each
    with siblings so the deep branch is not always the last one walked."""
    obj: object = "leaf"
    for i in range(levels):
        if kinds[i % len(kinds)] == "l":
            obj = [1, obj, [], {}] if i % 3 else [obj]
        else:
            obj = {"a": {}, "deep": obj, "z": [2]} if i % 2 else {"deep": obj}
    return obj


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(trees(), max_size=4), extra_levels=st.integers(0, 20), kinds=st.sampled_from(["l", "m", "lm", "mll"]),
       where=st.integers(0, 4))
def test_nesting_check_refuses_exactly_what_the_reference_refuses(ops, extra_levels, kinds, where):
    # random trees, plus a chain of a chosen depth around the limit put among them
    ops = list(ops)
    ops.insert(min(where, len(ops)), deep_chain(extra_levels, kinds))
    envelope = {"v": PROTOCOL_VERSION, "ops": ops}
    data = msgpack.packb(envelope, use_bin_type=True)
    too_deep = reference_depth(msgpack.unpackb(data, raw=False)) > MAX_NESTING
    outcome = decode_outcome(data)
    if too_deep:
        assert outcome == (ErrorCode.MALFORMED, f"message nests deeper than {MAX_NESTING} levels")
    else:
        assert outcome[0] == "ok"


@pytest.mark.parametrize("kinds", ["l", "m", "lm", "ml", "mll"])
def test_nesting_boundary_is_the_same_for_every_shape(kinds):
    # envelope (1) + ops (2) + the chain: 14 levels are the most, 15 one too many
    for levels in range(0, 20):
        data = msgpack.packb({"v": PROTOCOL_VERSION, "ops": [1, deep_chain(levels, kinds), {"op": "hello"}]})
        expected_ok = reference_depth(msgpack.unpackb(data, raw=False)) <= MAX_NESTING
        assert expected_ok == (levels <= 14)
        assert (decode_outcome(data)[0] == "ok") == expected_ok, levels


def test_nesting_in_held_and_in_unknown_fields_is_checked_first():
    # the depth is checked on the whole message, before any field is looked at
    deep = deep_chain(16, "l")
    for envelope in ({"v": PROTOCOL_VERSION, "ops": [], "held": [deep]},
                     {"v": PROTOCOL_VERSION, "ops": [], "unknown": deep},
                     {"v": deep, "ops": []}):
        assert decode_outcome(msgpack.packb(envelope)) == (
            ErrorCode.MALFORMED, f"message nests deeper than {MAX_NESTING} levels")


def test_a_message_deeper_than_pythons_stack_is_one_malformed_error():
    # msgpack's own limit refuses the deepest; just below it the check walks 17 levels only
    for levels in (MAX_NESTING + 1, 500, 1000, 5000, 100_000):
        data = b"\x91" * levels + b"\xc0"
        code, message = decode_outcome(data)
        assert code == ErrorCode.MALFORMED, (levels, message)


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 255, MAX_OPS_PER_REQUEST, MAX_OPS_PER_REQUEST + 1,
                               65535, 65536, 70000])
def test_packed_reply_heads_are_msgpacks_own_for_every_count(n):
    from seamless_service.protocol.codec import packed_reply_overhead

    results = [ok_result(i) if i % 2 else error_result(ProtocolError("x", str(i))) for i in range(n)]
    for _ in range(2):  # the first call fills the table of heads, the second reads it
        pieces = [pack_result(r) for r in results]
        assert encode_packed_reply(pieces) == encode_reply(results) == msgpack.packb(
            {"v": PROTOCOL_VERSION, "results": results}, use_bin_type=True)
        assert packed_reply_overhead(n) == len(encode_reply(results)) - sum(map(len, pieces))
