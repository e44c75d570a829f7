"""Declared argument schema of every op, checked before anything runs.

A schema is a map of field name -> Field. Validation rejects unknown fields, missing
required fields, wrong types (bool is never an int), out-of-range numbers, over-long
strings and over-long lists, and fills in defaults. Keys are checked against the
helpers' key rule here, so no invalid key ever reaches an op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, ProtocolError
from .keys import KEY_MAX_LEN, is_valid_key

MAX_STR = 1024            # filters, names
MAX_PATH = 4096           # PATH_MAX on Linux
MAX_KEYS = 512            # keys in one stop/rm/health op
MAX_PATHS = 64            # roots in one persistent op
MAX_TAIL_LINES = 100_000
MAX_LOG_BYTES = 8 << 20   # one logs reply carries at most 8 MiB of log
MAX_WAIT_SECONDS = 60.0
MAX_LEVEL = 8
MAX_ARGV = 256            # words of a service command line (start)
MAX_JSON_TEXT = 64 << 10  # --parameters / --meta JSON text (start)
MAX_START_WAIT = 30.0     # one start call waits at most this long; the client calls again
STATUSES = ("running", "starting", "failed", "stale", "error", "client")


@dataclass(frozen=True)
class Field:
    kind: str                     # "str" | "int" | "float" | "bool" | "key" | "path" | "name" | "keys" | "paths" | "strs"
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    max_len: int | None = None    # strings
    max_items: int | None = None  # lists
    choices: tuple | None = None
    nullable: bool = True         # an explicit nil means "not given" for optional fields


def _str(**kw: Any) -> Field:
    return Field("str", max_len=kw.pop("max_len", MAX_STR), **kw)


FILTERS = {
    "status": _str(choices=STATUSES),
    "service": _str(),
    "cluster": _str(),
    "project": _str(),
    "stage": _str(),
    "subproject": _str(),
    "substage": _str(),
    "mode": _str(choices=("rw", "ro")),
    "queue": _str(),
}

OPS: dict[str, dict[str, Field]] = {
    "hello": {},
    # Server rows like `rhl-ps --json` (side="server") or client rows like
    # `rhl-ps --client --json` (side="client"), with filters.
    "ps": {
        "side": _str(default="server", choices=("server", "client")),
        "no_status": Field("bool", default=False),
        "host": _str(),
        **FILTERS,
    },
    # Rows like `rhl-ps-persistent --json`, plus real sizes from the background scanner.
    "persistent": {
        "paths": Field("paths", required=True, max_items=MAX_PATHS),
        "level": Field("int", default=0, min=0, max=MAX_LEVEL),
        "file": Field("name"),
        "marker": Field("name"),
        "sizes": Field("bool", default=True),
        "refresh": Field("bool", default=False),
    },
    "inspect": {
        "key": Field("key", required=True),
        "with_mtime": Field("bool", default=False),
    },
    "logs": {
        "key": Field("key", required=True),
        "tail": Field("int", min=0, max=MAX_TAIL_LINES),
        "offset": Field("int", min=0, max=2**62),
        "max_bytes": Field("int", default=1 << 20, min=1, max=MAX_LOG_BYTES),
    },
    "stop": {
        "keys": Field("keys", required=True, max_items=MAX_KEYS),
    },
    "rm": {
        "keys": Field("keys", required=True, max_items=MAX_KEYS),
        "client": Field("bool", default=False),
        "server": Field("bool", default=False),
        "force": Field("bool", default=False),
    },
    "clear": {
        "path": Field("path", required=True),
        "key": Field("key"),
        "force": Field("bool", default=False),
    },
    # Launch a service as remote-http-launcher would (rhl-launch-service with the same
    # arguments), unless it runs already; wait up to `wait` seconds for it to be running.
    "start": {
        "key": Field("key", required=True),
        "workdir": Field("path", required=True),
        "argv": Field("strs", required=True, max_items=MAX_ARGV),
        "conda_env": _str(),
        "network_interface": _str(),
        "parameters": _str(max_len=MAX_JSON_TEXT),
        "meta": _str(max_len=MAX_JSON_TEXT),
        "wait": Field("float", default=0.0, min=0.0, max=MAX_START_WAIT),
        # false: never launch, only report/wait (a client's follow-up calls: a service
        # that failed between two calls must not be relaunched behind the user's back)
        "launch": Field("bool", default=True),
    },
    "health": {
        "keys": Field("keys", max_items=MAX_KEYS),
        "timeout": Field("float", default=2.0, min=0.05, max=10.0),
    },
    "wait": {
        "token": _str(max_len=256),
        "timeout": Field("float", default=30.0, min=0.0, max=MAX_WAIT_SECONDS),
    },
}


def _fail(op: str, message: str, code: str = ErrorCode.BAD_ARGS) -> ProtocolError:
    return ProtocolError(code, f"{op}: {message}")


def _check_str(op: str, name: str, value: Any, max_len: int) -> str:
    if not isinstance(value, str):
        raise _fail(op, f"argument {name!r} must be a string")
    if len(value) > max_len:
        raise _fail(op, f"argument {name!r} is longer than {max_len} characters")
    if "\x00" in value:
        raise _fail(op, f"argument {name!r} contains a NUL character")
    return value


def _check_key(op: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(op, f"argument {name!r} must be a string key")
    if not is_valid_key(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise _fail(
            op, f"invalid key {shown!r} (only letters, digits, . _ - allowed, at most {KEY_MAX_LEN})",
            ErrorCode.INVALID_KEY,
        )
    return value


def _check_name(op: str, name: str, value: Any) -> str:
    value = _check_str(op, name, value, 255)
    if value in ("", ".", "..") or "/" in value or "\\" in value:
        raise _fail(op, f"argument {name!r} must be a simple file name")
    return value


def _check_list(op: str, name: str, value: Any, spec: Field) -> list:
    if not isinstance(value, list):
        raise _fail(op, f"argument {name!r} must be a list")
    if spec.max_items is not None and len(value) > spec.max_items:
        raise _fail(op, f"argument {name!r} has {len(value)} items; at most {spec.max_items}")
    if not value:
        raise _fail(op, f"argument {name!r} must not be empty")
    return value


def _check_value(op: str, name: str, value: Any, spec: Field) -> Any:
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(op, f"argument {name!r} must be a boolean")
    elif kind in ("int", "float"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise _fail(op, f"argument {name!r} must be {'an integer' if kind == 'int' else 'a number'}")
        if kind == "float":
            value = float(value)
            if value != value:  # NaN compares unequal to everything: refuse it explicitly
                raise _fail(op, f"argument {name!r} must not be NaN")
        if spec.min is not None and value < spec.min:
            raise _fail(op, f"argument {name!r} must be >= {spec.min:g}")
        if spec.max is not None and value > spec.max:
            raise _fail(op, f"argument {name!r} must be <= {spec.max:g}")
    elif kind == "str":
        value = _check_str(op, name, value, spec.max_len or MAX_STR)
    elif kind == "path":
        value = _check_str(op, name, value, MAX_PATH)
        if not value:
            raise _fail(op, f"argument {name!r} must not be empty")
    elif kind == "name":
        value = _check_name(op, name, value)
    elif kind == "key":
        value = _check_key(op, name, value)
    elif kind == "keys":
        value = [_check_key(op, f"{name}[{i}]", v) for i, v in enumerate(_check_list(op, name, value, spec))]
    elif kind == "strs":
        value = [_check_str(op, f"{name}[{i}]", v, MAX_PATH)
                 for i, v in enumerate(_check_list(op, name, value, spec))]
    elif kind == "paths":
        items = _check_list(op, name, value, spec)
        value = []
        for i, v in enumerate(items):
            v = _check_str(op, f"{name}[{i}]", v, MAX_PATH)
            if not v:
                raise _fail(op, f"argument {name}[{i}] must not be empty")
            value.append(v)
    else:  # pragma: no cover - schema typo
        raise ProtocolError(ErrorCode.INTERNAL, f"{op}: unknown field kind {kind!r}")
    if spec.choices is not None and value not in spec.choices:
        raise _fail(op, f"argument {name!r} must be one of {', '.join(map(str, spec.choices))}")
    return value


def validate_args(op: str, args: Any) -> dict[str, Any]:
    """Check `args` against the op's schema; return them with defaults filled in."""
    schema = OPS.get(op)
    if schema is None:
        shown = op if len(op) <= 64 else op[:64] + "..."
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {shown!r}; known ops: {', '.join(sorted(OPS))}")
    if not isinstance(args, dict):
        raise _fail(op, "arguments must be a map")
    unknown = [k for k in args if k not in schema]
    if unknown:
        names = ", ".join(repr(str(k)[:64]) for k in sorted(map(str, unknown))[:5])
        raise _fail(op, f"unknown argument(s) {names}; allowed: {', '.join(sorted(schema)) or 'none'}")
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        value = args.get(name)
        if value is None:
            if spec.required:
                raise _fail(op, f"missing required argument {name!r}")
            out[name] = spec.default
            continue
        out[name] = _check_value(op, name, value, spec)
    return out
