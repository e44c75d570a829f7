"""`hello`: who and what this agent is, so a client can detect version skew before asking more.

`hello` is the client's small call (the one a version check and a benchmark make), so
what cannot change while the process lives is worked out once: the version, the op lists,
Python's version (module constants below), the user name of this uid (a passwd lookup,
~13 us a call) and the description of a policy object (frozen). What can change is read
on every call: the uptime, the pid (a fork), the hostname, the base folder and policy the
context holds now, the file-watch mode (inotify can fail over to stat), and the
environment variables getpass reads before it asks passwd (except in the agent process,
whose environment nothing changes: AgentContext.fixed_environment).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

from ... import __version__
from ...protocol import PROTOCOL_VERSION
from ...protocol.conditional import CONDITIONAL_OPS, HELLO_FIELD
from ...protocol.schema import OPS
from ..context import AgentContext
from ..watch import watcher

# Fixed for the life of the process (the code that answers cannot change under it).
_OPS = tuple(sorted(OPS))
_CONDITIONAL = tuple(sorted(CONDITIONAL_OPS))
_PYTHON = sys.version.split()[0]

# getpass.getuser()'s order: these variables first (read live: a caller may set them),
# then the passwd name of the uid. Only the passwd answer is kept, per uid.
_USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")
_passwd_names: dict[int, str] = {}
_USER_KEY = "hello.user"  # in AgentContext.extras

# The last policy described and its description. A PathPolicy is a frozen dataclass, so
# one object always describes the same; a context given another policy is described anew.
# (The held reference keeps the object alive, so an `is` test can never match a new
# object that reuses a dead one's id.)
_described: tuple[Any, dict[str, Any]] | None = None
_describe_lock = threading.Lock()


def _user() -> str:
    """What getpass.getuser() answers, without its passwd lookup on every call."""
    environ = os.environ
    for name in _USER_VARIABLES:
        value = environ.get(name)
        if value:
            return value
    uid = os.getuid()
    user = _passwd_names.get(uid)
    if user is None:
        try:
            import pwd

            user = pwd.getpwuid(uid).pw_name
        except (KeyError, OSError, ImportError):  # no passwd entry (containers): the uid
            # Not kept: an entry may be added later (e.g. a container's nss wrapper).
            return str(uid)
        _passwd_names[uid] = user
    return user


def _context_user(ctx: AgentContext) -> str:
    """_user(), kept for a context whose environment cannot change (the agent process):
    the environment lookups are then ~3.4 us of hello's ~6."""
    if not ctx.fixed_environment:
        return _user()
    user = ctx.extras.get(_USER_KEY)
    if user is None:
        user = _user()
        if user != str(os.getuid()):  # a uid fallback is not kept (see _user)
            ctx.extras[_USER_KEY] = user
    return user


def describe_policy(ctx: AgentContext) -> dict[str, Any]:
    """The description of the context's path policy (a fresh dict the caller may keep)."""
    global _described
    policy = ctx.policy
    cached = _described
    if cached is None or cached[0] is not policy:
        from ..policy import default_policy  # lazy: only hello and path ops need the policy module

        description = (policy if policy is not None else default_policy()).describe()
        with _describe_lock:
            _described = cached = (policy, description)
    return _copy_description(cached[1])


def _copy_description(description: dict[str, Any]) -> dict[str, Any]:
    # One level of lists (markers, roots): a caller in this process (the local transport,
    # run_op) may change what it got without changing the next answer.
    return {key: list(value) if isinstance(value, list) else value for key, value in description.items()}


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "ops": list(_OPS),
        "hostname": socket.gethostname(),
        "user": _context_user(ctx),
        "pid": os.getpid(),
        "python": _PYTHON,
        "uptime": round(time.time() - ctx.started, 3),
        "base": str(ctx.base),
        "path_policy": describe_policy(ctx),
        # how `ps` looks at the state folders: "inotify" or "stat" (agent/watch.py)
        "file_watch": watcher(ctx).mode,
        # the ops this agent answers "same" for when a request says what it holds
        # ("held", protocol/conditional.py); a client sends "held" only to an agent listing them
        HELLO_FIELD: list(_CONDITIONAL),
    }
