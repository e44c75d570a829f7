"""The `start` op's arguments: the very `rhl-launch-service` call remote-http-launcher makes.

Seamless launches a service with `remote_http_launcher.run(conf)`, `conf` coming from
seamless-config's `configure_<service>` (tools.yaml templates). Here the same `conf`
(client/config/resolve.py resolve_service) goes through the launcher's own code: its logging keys
are split off as `run()` does, `Configuration.from_mapping` evaluates key and templates,
and `RemoteState.launch_process` builds the helper's argv against a recorder instead of a
shell. Nothing of the launcher's command-line logic is written twice; the recorded argv
is only split into the op's named, validated fields.

The status-file path in it is the launcher's default server directory
(`~/.remote-http-launcher/server/KEY.json`), exactly what it sends to a remote host; the
agent maps it to the directory it serves (agent/ops/start.py).

seamless-remote passes no `meta` when it launches, so neither does this: the state file
is the one a Seamless client would have written.
"""

from __future__ import annotations

import subprocess
from typing import Any

from ...rhl import LAUNCHER_SERVER_DIR
from ..errors import UsageError

_VALUE_OPTIONS = {"--key": "key", "--workdir": "workdir", "--conda-env": "conda_env",
                  "--network-interface": "network_interface", "--parameters": "parameters",
                  "--meta": "meta"}


class _Recorder:
    """Stands in for the launcher's Executor: records the helper call, runs nothing."""

    _launch_script_uploaded = True
    observer = None

    def __init__(self) -> None:
        self.argv: list[str] | None = None

    def _try_helper(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess:
        self.argv = list(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")


def launcher_argv(config: dict[str, Any]) -> list[str]:
    """`["rhl-launch-service", "--key", K, ..., "--", BINARY, ARGS...]` for `config`."""
    import remote_http_launcher as rhl

    conf = {k: v for k, v in config.items() if k != "meta"}  # seamless-remote passes none
    try:
        data, _ = rhl._extract_logging_config(conf)
        cfg = rhl.Configuration.from_mapping(data)
        recorder = _Recorder()
        rhl.RemoteState(recorder, cfg, LAUNCHER_SERVER_DIR).launch_process(None)  # type: ignore[arg-type]
    except rhl.LauncherError as exc:
        raise UsageError(f"invalid launcher configuration: {exc}") from exc
    assert recorder.argv is not None
    return recorder.argv


def start_args(config: dict[str, Any], *, wait: float = 0.0) -> dict[str, Any]:
    """The `start` op's arguments for a resolved service's launcher `config`."""
    argv = launcher_argv(config)
    args: dict[str, Any] = {"wait": wait}
    words = iter(argv[1:])
    for word in words:
        if word == "--":
            args["argv"] = list(words)
            break
        name = _VALUE_OPTIONS.get(word)
        if name is None:  # a launcher version with options this client does not know
            raise UsageError(f"cannot start through the agent: unknown rhl-launch-service option {word!r}")
        args[name] = next(words)
    return args
