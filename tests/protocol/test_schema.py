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


# --- limits at their boundary (issue 14): exactly the maximum accepted, one more refused ---
# The numbers are written out, not imported: the client chunks its stop/rm batches at 512
# keys and persistent at 64 roots, so a limit that moved (or a `>` that became `>=`) would
# break a cluster-wide stop of 512+ services.

START = {"key": "k", "workdir": "/data/x", "argv": ["hashserver"]}

# (op, base args, field, value at the limit, value one past it)
AT_LIMIT = [
    ("stop", {}, "keys", ["k"] * 512, ["k"] * 513),
    ("rm", {}, "keys", ["k"] * 512, ["k"] * 513),
    ("health", {}, "keys", ["k"] * 512, ["k"] * 513),
    ("persistent", {}, "paths", ["/x"] * 64, ["/x"] * 65),
    ("start", START, "argv", ["a"] * 256, ["a"] * 257),
    ("start", START, "argv", ["a" * 4096], ["a" * 4097]),          # one argv word: MAX_PATH
    ("start", START, "parameters", "p" * (64 << 10), "p" * ((64 << 10) + 1)),
    ("start", START, "meta", "m" * (64 << 10), "m" * ((64 << 10) + 1)),
    ("start", START, "conda_env", "c" * 1024, "c" * 1025),
    ("start", START, "wait", 30.0, 30.001),
    ("ps", {}, "service", "s" * 1024, "s" * 1025),
    ("ps", {}, "host", "h" * 1024, "h" * 1025),
    ("clear", {}, "path", "/" + "p" * 4095, "/" + "p" * 4096),
    ("persistent", {}, "paths", ["/" + "p" * 4095], ["/" + "p" * 4096]),
    ("persistent", {"paths": ["/x"]}, "file", "f" * 255, "f" * 256),
    ("persistent", {"paths": ["/x"]}, "level", 8, 9),
    ("logs", {"key": "k"}, "tail", 100_000, 100_001),
    ("logs", {"key": "k"}, "max_bytes", 8 << 20, (8 << 20) + 1),
    ("logs", {"key": "k"}, "offset", 2**62, 2**62 + 1),
    ("wait", {}, "timeout", 60.0, 60.001),
    ("wait", {}, "token", "t" * 256, "t" * 257),
    ("health", {"keys": ["k"]}, "timeout", 10.0, 10.001),
    ("inspect", {}, "key", "k" * 255, "k" * 256),
    ("stop", {}, "keys", ["k" * 255], ["k" * 256]),
]

# the lower bounds the same way: (op, base, field, lowest accepted, one below)
AT_MINIMUM = [
    ("logs", {"key": "k"}, "tail", 0, -1),
    ("logs", {"key": "k"}, "offset", 0, -1),
    ("logs", {"key": "k"}, "max_bytes", 1, 0),
    ("persistent", {"paths": ["/x"]}, "level", 0, -1),
    ("wait", {}, "timeout", 0.0, -0.001),
    ("start", START, "wait", 0.0, -0.001),
    ("health", {"keys": ["k"]}, "timeout", 0.05, 0.049),
    ("stop", {}, "keys", ["k"], []),
    ("persistent", {}, "paths", ["/x"], []),
    ("start", START, "argv", ["a"], []),
]


def _label(case):
    op, _, name, ok, _ = case
    size = len(ok) if isinstance(ok, (str, list)) else ok
    return f"{op}.{name}={size}"


@pytest.mark.parametrize("op,base,name,accepted,refused", AT_LIMIT + AT_MINIMUM,
                         ids=[_label(c) for c in AT_LIMIT + AT_MINIMUM])
def test_each_limit_accepts_its_boundary_and_refuses_one_past_it(op, base, name, accepted, refused):
    assert validate_args(op, {**base, name: accepted})[name] == accepted
    code, message = code_of(op, {**base, name: refused})
    assert code in (ErrorCode.BAD_ARGS, ErrorCode.INVALID_KEY) and message.startswith(f"{op}: ")


# --- the error a client shows: exact code and message for each kind of refusal ---
EXACT_ERRORS = [
    ("ps", [], ErrorCode.BAD_ARGS, "ps: arguments must be a map"),
    ("ps", {"statuz": 1, "b": 2}, ErrorCode.BAD_ARGS,
     "ps: unknown argument(s) 'b', 'statuz'; allowed: cluster, host, mode, no_status, project, queue, "
     "service, side, stage, status, subproject, substage"),
    ("hello", {"x": 1}, ErrorCode.BAD_ARGS, "hello: unknown argument(s) 'x'; allowed: none"),
    ("hello", {f"a{i}": 1 for i in range(7)}, ErrorCode.BAD_ARGS,
     "hello: unknown argument(s) 'a0', 'a1', 'a2', 'a3', 'a4'; allowed: none"),
    ("hello", {"z" * 70: 1}, ErrorCode.BAD_ARGS, f"hello: unknown argument(s) '{'z' * 64}'; allowed: none"),
    ("inspect", {}, ErrorCode.BAD_ARGS, "inspect: missing required argument 'key'"),
    ("ps", {"service": 5}, ErrorCode.BAD_ARGS, "ps: argument 'service' must be a string"),
    ("ps", {"service": "s" * 1025}, ErrorCode.BAD_ARGS, "ps: argument 'service' is longer than 1024 characters"),
    ("ps", {"service": "a\x00b"}, ErrorCode.BAD_ARGS, "ps: argument 'service' contains a NUL character"),
    ("ps", {"status": "sleeping"}, ErrorCode.BAD_ARGS,
     "ps: argument 'status' must be one of running, starting, failed, stale, error, client"),
    ("ps", {"no_status": 1}, ErrorCode.BAD_ARGS, "ps: argument 'no_status' must be a boolean"),
    ("logs", {"key": "k", "tail": 2.0}, ErrorCode.BAD_ARGS, "logs: argument 'tail' must be an integer"),
    ("logs", {"key": "k", "tail": True}, ErrorCode.BAD_ARGS, "logs: argument 'tail' must be an integer"),
    ("logs", {"key": "k", "tail": -1}, ErrorCode.BAD_ARGS, "logs: argument 'tail' must be >= 0"),
    ("logs", {"key": "k", "tail": 100_001}, ErrorCode.BAD_ARGS, "logs: argument 'tail' must be <= 100000"),
    ("wait", {"timeout": "soon"}, ErrorCode.BAD_ARGS, "wait: argument 'timeout' must be a number"),
    ("wait", {"timeout": True}, ErrorCode.BAD_ARGS, "wait: argument 'timeout' must be a number"),
    ("wait", {"timeout": float("nan")}, ErrorCode.BAD_ARGS, "wait: argument 'timeout' must not be NaN"),
    ("inspect", {"key": 5}, ErrorCode.BAD_ARGS, "inspect: argument 'key' must be a string key"),
    ("inspect", {"key": "a/b"}, ErrorCode.INVALID_KEY,
     "inspect: invalid key 'a/b' (only letters, digits, . _ - allowed, at most 255)"),
    ("inspect", {"key": "/" * 81}, ErrorCode.INVALID_KEY,
     f"inspect: invalid key '{'/' * 80}...' (only letters, digits, . _ - allowed, at most 255)"),
    ("inspect", {"key": "/" * 80}, ErrorCode.INVALID_KEY,
     f"inspect: invalid key '{'/' * 80}' (only letters, digits, . _ - allowed, at most 255)"),
    ("stop", {"keys": ["ok", 3]}, ErrorCode.BAD_ARGS, "stop: argument 'keys[1]' must be a string key"),
    ("stop", {"keys": "k"}, ErrorCode.BAD_ARGS, "stop: argument 'keys' must be a list"),
    ("stop", {"keys": []}, ErrorCode.BAD_ARGS, "stop: argument 'keys' must not be empty"),
    ("stop", {"keys": ["k"] * 513}, ErrorCode.BAD_ARGS, "stop: argument 'keys' has 513 items; at most 512"),
    ("start", {**START, "argv": "hashserver"}, ErrorCode.BAD_ARGS, "start: argument 'argv' must be a list"),
    ("persistent", {"paths": []}, ErrorCode.BAD_ARGS, "persistent: argument 'paths' must not be empty"),
    ("clear", {"path": ""}, ErrorCode.BAD_ARGS, "clear: argument 'path' must not be empty"),
    ("clear", {"path": 7}, ErrorCode.BAD_ARGS, "clear: argument 'path' must be a string"),
    ("persistent", {"paths": ["/x", ""]}, ErrorCode.BAD_ARGS, "persistent: argument paths[1] must not be empty"),
    ("persistent", {"paths": ["/x", 5]}, ErrorCode.BAD_ARGS, "persistent: argument 'paths[1]' must be a string"),
    ("persistent", {"paths": ["/x"], "file": "a\\b"}, ErrorCode.BAD_ARGS,
     "persistent: argument 'file' must be a simple file name"),
    ("persistent", {"paths": ["/x"], "file": 5}, ErrorCode.BAD_ARGS, "persistent: argument 'file' must be a string"),
    ("start", {**START, "argv": ["ok", 3]}, ErrorCode.BAD_ARGS, "start: argument 'argv[1]' must be a string"),
    ("start", {**START, "conda_env": 3}, ErrorCode.BAD_ARGS, "start: argument 'conda_env' must be a string"),
    ("frobnicate", {}, ErrorCode.UNKNOWN_OP,
     "unknown op 'frobnicate'; known ops: clear, health, hello, inspect, logs, persistent, ps, rm, start, stop, wait"),
    ("f" * 65, {}, ErrorCode.UNKNOWN_OP,
     f"unknown op '{'f' * 64}...'; known ops: clear, health, hello, inspect, logs, persistent, ps, rm, start, stop, wait"),
    ("f" * 64, {}, ErrorCode.UNKNOWN_OP,
     f"unknown op '{'f' * 64}'; known ops: clear, health, hello, inspect, logs, persistent, ps, rm, start, stop, wait"),
]


@pytest.mark.parametrize("op,args,code,message", EXACT_ERRORS, ids=[m[:60] for *_, m in EXACT_ERRORS])
def test_each_refusal_has_its_code_and_exact_message(op, args, code, message):
    assert code_of(op, args) == (code, message)


@pytest.mark.parametrize("name", [".", "..", ""])
def test_dot_names_are_not_file_names(name):
    assert code_of("persistent", {"paths": ["/x"], "marker": name}) == (
        ErrorCode.BAD_ARGS, "persistent: argument 'marker' must be a simple file name")


def test_accepted_values_come_back_as_given():
    out = validate_args("persistent", {"paths": ["/a", "/b"], "file": "f.txt", "marker": ".M", "level": 3})
    assert out == {"paths": ["/a", "/b"], "level": 3, "file": "f.txt", "marker": ".M", "sizes": True, "refresh": False}
    assert validate_args("ps", {"status": "running", "mode": "ro"})["mode"] == "ro"
    assert validate_args("start", {**START, "argv": ["a", "b c"]})["argv"] == ["a", "b c"]
    assert validate_args("logs", {"key": "k", "tail": 5})["tail"] == 5
    timeout = validate_args("health", {"keys": ["k"], "timeout": 1})["timeout"]
    assert timeout == 1.0 and isinstance(timeout, float)
