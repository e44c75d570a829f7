"""The remote side of bench_peers.py for execnet and mitogen: stdlib only, since both ship
this module's source to the server's own Python (execnet through `remote_exec(module)`,
mitogen through its import forwarding when `context.call` names a function of it).

The two calls mirror the agent's: a small call that returns a small value (the agent's
`hello`), and reading + JSON-parsing every state file of a folder (what `ps` reads; the
agent's `ps` does more per row: pid liveness, size caps, ownership checks).
"""

from __future__ import annotations

import json
import os


def hello() -> dict:
    return {"ok": True, "pid": os.getpid()}


def read_states(folder: str) -> list:
    """Every *.json in folder (expanded against the remote HOME), parsed."""
    folder = os.path.expanduser(folder)
    rows = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), "rb") as handle:
                rows.append(json.loads(handle.read()))
    return rows


if __name__ == "__channelexec__":
    # execnet: one request per message, answered on the same channel, until the channel closes
    for request in channel:  # type: ignore[name-defined]  # noqa: F821 (execnet provides it)
        if request == "hello":
            channel.send(hello())  # type: ignore[name-defined]  # noqa: F821
        else:
            channel.send(read_states(request))  # type: ignore[name-defined]  # noqa: F821
