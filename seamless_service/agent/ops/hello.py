"""`hello`: who and what this agent is, so a client can detect version skew before asking more."""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from typing import Any

from ... import __version__
from ...protocol import PROTOCOL_VERSION
from ...protocol.conditional import CONDITIONAL_OPS, HELLO_FIELD
from ...protocol.schema import OPS
from ..context import AgentContext
from ..watch import watcher


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): fall back to the uid
        return str(os.getuid())


def describe_policy(ctx: AgentContext) -> dict[str, Any]:
    from ..policy import default_policy  # lazy: only hello and path ops need the policy module

    policy = ctx.policy if ctx.policy is not None else default_policy()
    return policy.describe()


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "ops": sorted(OPS),
        "hostname": socket.gethostname(),
        "user": _user(),
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "uptime": round(time.time() - ctx.started, 3),
        "base": str(ctx.base),
        "path_policy": describe_policy(ctx),
        # how `ps` looks at the state folders: "inotify" or "stat" (agent/watch.py)
        "file_watch": watcher(ctx).mode,
        # the ops this agent answers "same" for when a request says what it holds
        # ("held", protocol/conditional.py); a client sends "held" only to an agent listing them
        HELLO_FIELD: sorted(CONDITIONAL_OPS),
    }
