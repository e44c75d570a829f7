"""The real Seamless services, launched through remote-http-launcher as Seamless would, here
and on a real sshd "server" (tests/support/services.py launch_real, launch_real_remote):
what the tests of start/restart/reset stand on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from seamless_service.demo import real
from tests.support.services import launch_real_remote, real_services_bin, skip_without_real_services


def put_and_get(port: int, buffer: bytes) -> bytes:
    """PUT `buffer` into the hashserver on 127.0.0.1:PORT, then GET it back."""
    url = f"http://127.0.0.1:{port}/{real.checksum(buffer)}"
    with urllib.request.urlopen(urllib.request.Request(url, data=buffer, method="PUT"), timeout=10):
        pass
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_real_services_launched_here_as_seamless_would(sandbox):
    skip_without_real_services()
    hashserver = sandbox.launch_real("hashserver", project="projA", stage="s1")
    database = sandbox.launch_real("database", project="projA")
    assert (hashserver["key"], database["key"]) == ("hashserver-local-rw-projA--STAGE-s1", "database-local-rw-projA")
    assert hashserver["workdir"] == str(sandbox.root / "data/buffers/projA/STAGE-s1")
    assert hashserver["command"].startswith("hashserver --status-file ") and hashserver["command"].endswith(" --writable")
    buffer = b"a real buffer\n" * 1000
    assert put_and_get(hashserver["port"], buffer) == buffer

    listing = subprocess.run([sys.executable, "-m", "seamless_service", "ps", "--local", "--persistent", "--json"],
                             env={**sandbox.env(), "SEAMLESS_SERVICE_NO_DAEMON": "1"}, capture_output=True,
                             text=True, timeout=60)
    rows = {row["key"]: row for row in map(json.loads, listing.stdout.splitlines())}
    assert {rows[key]["process"] for key in (hashserver["key"], database["key"])} == {"running"}
    assert rows[hashserver["key"]]["persistent"] == "populated" and rows[hashserver["key"]]["size"] >= len(buffer)
    assert rows[database["key"]]["persistent"] == "populated"
    assert rows[database["key"]]["size"] >= Path(database["workdir"], "seamless.db").stat().st_size > 0


def test_real_hashserver_launched_on_a_test_sshd(sshd):
    skip_without_real_services()
    state = launch_real_remote(sshd, "hashserver", project="projR")
    assert state["key"] == "hashserver-local-rw-projR" and state["workdir"] == str(sshd.home / "data/buffers/projR")
    assert os.stat(f"/proc/{state['pid']}").st_uid == sshd.uid          # runs as the server's user
    buffer = b"remote buffer\n" * 500
    assert put_and_get(state["port"], buffer) == buffer
    stored = sshd.home / "data/buffers/projR" / real.checksum(buffer)[:2] / real.checksum(buffer)
    assert stored.read_bytes() == buffer and stored.stat().st_uid == sshd.uid
    # the launcher's own view on the server, from the helpers that launched it
    listed = sshd.ssh([str(real_services_bin(sshd.python) / "rhl-ps"), "--json"])
    assert [(row["key"], row["status"]) for row in map(json.loads, listed.stdout.splitlines())] == [
        (state["key"], "running")]
