"""The real Seamless services (hashserver, seamless-database) for `demo start` and the tests.

`launcher_config` makes the remote-http-launcher configuration that Seamless itself makes
for a service on a local cluster (seamless-config's `configure_hashserver` /
`configure_database`): the entry of the `tools.yaml` whitelist that remote-http-launcher
ships, its `$NAME` placeholders filled in. The launcher evaluates the rest (key, command
line), so the key, command line, handshake and inactivity timeout are exactly Seamless'.

`seed_hashserver` / `seed_database` put a few real buffers through a running hashserver's
HTTP API (PUT /CHECKSUM) and record them in a running seamless-database (PUT of a JSON
request), so that the data folders hold what Seamless would have written.

Only the standard library and PyYAML: this module is imported where the agent runs too.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import yaml

# The launcher's tool name -> the executable its command line starts with.
REAL_SERVICES = {"hashserver": "hashserver", "database": "seamless-database"}
# As in seamless-config's tools.py: `$NAME` placeholders of the *_template entries.
_DOLLAR = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")
HTTP_TIMEOUT = 10.0


def missing_services(path: str) -> list[str]:
    """The executables of the real services that are not on `path` (a PATH string)."""
    return [binary for binary in REAL_SERVICES.values() if shutil.which(binary, path=path) is None]


def launcher_tools() -> dict[str, Any]:
    """The whitelist remote-http-launcher ships (its rhl-launch-service checks it)."""
    text = importlib.resources.files("ssh_guard").joinpath("tools.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def launcher_config(tool: str, *, data_root: Path, cluster: str, project: str, stage: str | None = None,
                    mode: str = "rw", network_interface: str = "127.0.0.1") -> dict[str, Any]:
    """The launcher config Seamless makes for `tool` ("hashserver" or "database") of
    CLUSTER/PROJECT[/STAGE] on this machine, with buffers in DATA_ROOT/buffers and databases
    in DATA_ROOT/db (the cluster's `bufferdir` and `database_dir`)."""
    stagedir = f"/STAGE-{stage}" if stage else ""
    injected = {"CLUSTER": cluster, "MODE": mode, "PROJECTSUBDIR": f"/{project}", "STAGEDIR": stagedir,
                "STAGESUBDIR": stagedir, "BUFFERDIR": str(data_root / "buffers"),
                "DATABASE_DIR": str(data_root / "db")}
    config: dict[str, Any] = {"network_interface": network_interface}
    for name, value in launcher_tools()[tool].items():
        if name in ("ADDED", "INJECTED"):
            continue
        if name.endswith("_template"):
            name = name[: -len("_template")]
            value = _DOLLAR.sub(lambda m: str(injected[m.group()[1:]]), value)
        config[name] = value
    # The launcher's own progress log: its output is captured by the caller instead, so
    # nothing is left behind in ~/.remote-http-launcher/logs when the services are removed.
    config.pop("log_file", None)
    config.pop("debug_log_file", None)
    return config


def checksum(buffer: bytes) -> str:
    """The checksum hashserver 1.x checks a PUT against: its default algorithm, sha-256
    (its command line in the launcher's tools.yaml does not choose another)."""
    return hashlib.sha256(buffer).hexdigest()


def demo_buffers(count: int = 20) -> list[bytes]:
    """Buffers as Seamless writes them for JSON cells: the same every time, so a second
    `demo start` adds nothing."""
    return [(json.dumps(list(range(200 * i))) + "\n").encode() for i in range(1, count + 1)]


def _put(url: str, data: bytes, content_type: str) -> None:
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 - 127.0.0.1
        response.read()   # a 4xx/5xx raises HTTPError with the service's reason


def seed_hashserver(host: str, port: int, buffers: list[bytes]) -> list[str]:
    """PUT each buffer into the hashserver at HOST:PORT; their checksums."""
    checksums = []
    for buffer in buffers:
        cs = checksum(buffer)
        _put(f"http://{host}:{port}/{cs}", buffer, "application/octet-stream")
        checksums.append(cs)
    return checksums


def seed_database(host: str, port: int, buffers: list[bytes]) -> None:
    """Record the buffers' lengths (as Seamless records buffer info) and one transformation
    result (the first buffer computed from the second) in the seamless-database at HOST:PORT."""
    url = f"http://{host}:{port}/"
    for buffer in buffers:
        info = {"length": len(buffer), "is_utf8": True, "is_json": True}
        request = {"type": "buffer_info", "checksum": checksum(buffer), "value": info}
        _put(url, json.dumps(request).encode(), "application/json")
    transformation = checksum(json.dumps({"demo": "range", "input": checksum(buffers[1])}).encode())
    request = {"type": "transformation", "checksum": transformation, "value": checksum(buffers[0])}
    _put(url, json.dumps(request).encode(), "application/json")


def launcher_key(config: dict[str, Any]) -> str:
    """The key remote-http-launcher makes of `config` (it evaluates the key template)."""
    from remote_http_launcher import Configuration

    return Configuration.from_mapping(dict(config)).key
