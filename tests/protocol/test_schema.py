import pytest

from seamless_service.protocol import OPS, ErrorCode, ProtocolError, validate_args
from seamless_service.protocol.schema import MAX_KEYS, MAX_PATH, MAX_STR, MAX_TAIL_LINES, MAX_WAIT_SECONDS


def code_of(op, args):
    with pytest.raises(ProtocolError) as info:
        validate_args(op, args)
    return info.value.code, info.value.message


def test_every_op_accepts_its_minimal_arguments():
    minimal = {
        "persistent": {"paths": ["/data/x"]},
        "inspect": {"key": "k"},
        "logs": {"key": "k"},
        "stop": {"keys": ["k"]},
        "rm": {"keys": ["k"]},
        "clear": {"path": "/data/x"},
        "start": {"key": "k", "workdir": "/data/x", "argv": ["hashserver"]},
    }
    for op in OPS:
        out = validate_args(op, minimal.get(op, {}))
        assert set(out) == set(OPS[op])  # every field present, defaults filled


def test_defaults_are_filled():
    out = validate_args("ps", {})
    assert out["side"] == "server" and out["no_status"] is False and out["status"] is None
    assert validate_args("wait", {})["timeout"] == 30.0


def test_unknown_op():
    code, message = code_of("frobnicate", {})
    assert code == ErrorCode.UNKNOWN_OP and "frobnicate" in message and "ps" in message


def test_unknown_argument():
    code, message = code_of("ps", {"statuz": "running"})
    assert code == ErrorCode.BAD_ARGS and "statuz" in message


def test_missing_required():
    code, message = code_of("inspect", {})
    assert code == ErrorCode.BAD_ARGS and "key" in message


@pytest.mark.parametrize("op,args", [
    ("ps", {"status": 5}),
    ("ps", {"status": "sleeping"}),              # not a status
    ("ps", {"no_status": 1}),                    # int is not bool
    ("ps", {"side": "both"}),
    ("logs", {"key": "k", "tail": True}),        # bool is not int
    ("logs", {"key": "k", "tail": "3"}),
    ("logs", {"key": "k", "tail": -1}),
    ("logs", {"key": "k", "tail": MAX_TAIL_LINES + 1}),
    ("logs", {"key": "k", "offset": 2**70}),
    ("wait", {"timeout": MAX_WAIT_SECONDS + 1}),
    ("wait", {"timeout": float("nan")}),
    ("wait", {"timeout": "soon"}),
    ("persistent", {"paths": "/x"}),
    ("persistent", {"paths": []}),
    ("persistent", {"paths": [5]}),
    ("persistent", {"paths": [""]}),
    ("persistent", {"paths": ["/x" * (MAX_PATH)]}),
    ("persistent", {"paths": ["/x"], "file": "a/b"}),
    ("persistent", {"paths": ["/x"], "marker": ".."}),
    ("persistent", {"paths": ["/x"], "level": 99}),
    ("persistent", {"paths": ["/x\x00y"]}),
    ("stop", {"keys": ["k"] * (MAX_KEYS + 1)}),
    ("stop", {"keys": []}),
    ("ps", {"service": "s" * (MAX_STR + 1)}),
    ("ps", {"service": {"nested": 1}}),
])
def test_type_and_range_errors(op, args):
    code, _ = code_of(op, args)
    assert code == ErrorCode.BAD_ARGS


@pytest.mark.parametrize("key", ["a/b", "..", "../etc/passwd", "sp ace", "", "k" * 256, "é", "a;b", "$(x)"])
def test_invalid_keys(key):
    code, message = code_of("inspect", {"key": key})
    assert code == ErrorCode.INVALID_KEY and "key" in message


def test_invalid_key_inside_list_names_position():
    code, message = code_of("stop", {"keys": ["good", "bad/key"]})
    assert code == ErrorCode.INVALID_KEY and "bad/key" in message


def test_keys_allowed_by_helper_rule():
    assert validate_args("stop", {"keys": ["a.b_c-d", "x-"]})["keys"] == ["a.b_c-d", "x-"]


@pytest.mark.parametrize("key", ["-x", "--server", "-h", ".hidden", "a..b"])
def test_keys_tightened_beyond_helper_rule(key):
    # The helpers' key rule accepts these but reads a leading '-' as an option: refused.
    code, _ = code_of("stop", {"keys": [key]})
    assert code == ErrorCode.INVALID_KEY


def test_int_accepted_where_float_expected():
    assert validate_args("wait", {"timeout": 2})["timeout"] == 2.0


def test_explicit_nil_means_not_given():
    assert validate_args("ps", {"status": None})["status"] is None
    code, _ = code_of("inspect", {"key": None})
    assert code == ErrorCode.BAD_ARGS


def test_start_argv_must_be_a_list_of_strings():
    base = {"key": "k", "workdir": "/data/x"}
    for bad in ([], "hashserver", ["hashserver", 3], ["x\x00"], ["a"] * 257):
        code, _ = code_of("start", {**base, "argv": bad})
        assert code == ErrorCode.BAD_ARGS, bad
    code, _ = code_of("start", {**base, "key": "../x", "argv": ["hashserver"]})
    assert code == ErrorCode.INVALID_KEY
