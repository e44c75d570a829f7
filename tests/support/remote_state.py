"""The remote state the client tests' session shares on its `remote` host
(tests/client/conftest.py): real toy services, hand-written odd state files, a big log,
marked data directories, the rhl-* helpers on the ssh transport's PATH prefix and two keys
forced through rhl-guard (`make_remote_state`); and the G11 layout of a cluster's data
roots (`make_g11`). Tests compare against the keys and folders named here; tests that
change state use keys of their own."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.remote import Remote

RUNNING_KEYS = ("hashserver-clu-rw-projA", "database-clu-rw-projA--STAGE-s1")
ODD_STATES = {
    # #15: pid 0 — rhl-ps says alive (kill(0, 0) succeeds); the agent says stale.
    "hashserver-clu-rw-zeropid": {"status": "running", "pid": 0, "port": 1, "workdir": "/tmp"},
    "database-clu-ro-failed": {"status": "failed", "pid": 999999, "workdir": "/tmp"},
    "jobserver-clu-rw-projB--STAGE-s2SUBSTAGE-gpu": {"status": "stale", "pid": 4_000_000, "port": 5,
                                                     "workdir": "/tmp", "meta": {}},
}
BIG_LOG_BYTES = 200 * 1024
BUFFER_DIRS = ("data/buffers/projA", "data/buffers/projB/STAGE-s1", "data/with space/projC",
               "data/we;ird $(touch PWNED) 'q'/projD")


def make_remote_state(remote: Remote) -> None:
    remote.install_launcher_tools()
    remote.link_helpers()
    for key in RUNNING_KEYS:
        remote.launch(key)
    for key, state in ODD_STATES.items():
        remote.write(f".remote-http-launcher/server/{key}.json", json.dumps(state))
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-" * 1 + b"\n"
    big = (line * (BIG_LOG_BYTES // len(line) + 1))[:BIG_LOG_BYTES]
    remote.write(".remote-http-launcher/server/big.log", big)
    for folder in BUFFER_DIRS:
        remote.write(f"{folder}/.HASHSERVER_PREFIX", "")
        remote.write(f"{folder}/ab/cdef0123", "buffer")
    remote.write("data/db/projA/seamless.db", b"x" * 4096)
    roots = remote.write("guard/data-roots", f"{remote.data}\n")
    remote.add_guarded_key(remote.guard_alias, f"--data-roots {roots}")
    remote.add_guarded_key(remote.seamless_guard_alias, "--clear-policy seamless")


# A cluster's data roots laid out as seamless does (workdir = ROOT/PROJECT[/STAGE-x]), with
# real services launched there: roots without a marker, a project directory without one
# (only its stage has), a marked stage below a marked project with no service of its own, a
# marker-less directory, and an orphan (marked, but no state file names it). For #11 behind
# `rhl-guard --clear-policy seamless`.
G11 = "data/g11"
G11_SERVICES = {"hashserver-g11-rw-projG": "buffers/projG", "hashserver-g11-rw-projH--STAGE-s1": "buffers/projH/STAGE-s1",
                "database-g11-rw-projG": "db/projG"}
G11_MARKED = {"buffers/projG": ".HASHSERVER_PREFIX", "buffers/projG/STAGE-s3": ".HASHSERVER_PREFIX",
              "buffers/projH/STAGE-s1": ".HASHSERVER_PREFIX", "buffers/orphan": ".HASHSERVER_PREFIX",
              "db/projG": "seamless.db"}


def make_g11(remote: Remote) -> Path:
    """The G11 layout on the remote host; its root. The services are launched, then
    stopped with the real rhl-stop: their state (and workdir) stays, and other tests that
    count running services are not disturbed."""
    root = remote.home / G11
    for folder, marker in G11_MARKED.items():
        remote.write(f"{G11}/{folder}/{marker}", b"x" * 4096 if marker == "seamless.db" else "")
        if marker != "seamless.db":
            remote.write(f"{G11}/{folder}/ab/cdef0123", "buffer")
    remote.mkdir(f"{G11}/buffers/nomarker/sub")
    for key, folder in G11_SERVICES.items():
        remote.launch(key, workdir=root / folder)
    stopped = remote.ssh([str(remote.venv / "bin/rhl-stop"), *G11_SERVICES])
    assert stopped.returncode == 0, stopped.stderr
    return root
