"""`seamless-service agent deploy HOST` and `agent status|stop HOST`: the agent on a remote
server, driven over SSH from this machine. (Without HOST, `agent status|stop` act on this
machine's agent: see agent/cli.py.)"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DEPLOY_HELP = """\
Install (or upgrade) the agent on HOST and start it, over SSH. HOST is an alias or host
name as in ~/.ssh/config (HostName, Port, User, IdentityFile and ProxyJump are honoured).
The agent goes into a dedicated virtual environment on the host
(~/.local/share/seamless-service/agent-venv); your own Python environments are not touched.
Its port and secret are cached on this machine (0600) for the tunnel. This also happens
automatically on the first use of a host; run it by hand to see progress or to accept a
new host key.

examples:
  seamless-service agent deploy mycluster-ssh
  seamless-service agent deploy newhost --accept-new-host-key
  seamless-service agent deploy gpu1 --python /opt/conda/bin/python --offline
"""


def add_deploy_parser(sub: Any, formatter: Any) -> None:
    deploy = sub.add_parser("deploy", help="install/upgrade and start the agent on a remote host",
                            description=DEPLOY_HELP, formatter_class=formatter)
    deploy.add_argument("remote_host", metavar="HOST", help="ssh host alias or name")
    add_ssh_options(deploy)
    deploy.add_argument("--python", metavar="PATH",
                        help="Python >= 3.10 on the host for the agent's environment (default: search)")
    deploy.add_argument("--offline", action="store_true",
                        help="install dependencies from wheels uploaded from here, not the host's package index")
    deploy.add_argument("--json", action="store_true", help="print the endpoint (without the secret) as JSON")


def add_ssh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ssh-config", metavar="FILE", help="ssh config file (default ~/.ssh/config)")
    parser.add_argument("--accept-new-host-key", action="store_true",
                        help="add HOST's key to known_hosts if it is not there yet (a CHANGED key is always refused)")
    parser.add_argument("--ssh-timeout", type=float, metavar="SECONDS", help="timeout of each SSH step")


def run_remote(args: argparse.Namespace) -> int:
    """`agent deploy|status|stop HOST`: one readable line per error, exit 1."""
    from . import DeployError, bootstrap

    common = {"ssh_config": args.ssh_config, "accept_new_host_key": args.accept_new_host_key,
              "timeout": args.ssh_timeout}
    try:
        if args.agent_command == "deploy":
            progress = None if args.json else _print_progress
            endpoint = bootstrap.deploy(args.remote_host, python=args.python, force_offline=args.offline,
                                        progress=progress, **common)
            if args.json:
                data = endpoint.to_json()
                data.pop("secret", None)
                print(json.dumps(data, sort_keys=True))
            return 0
        if args.agent_command == "status":
            info = bootstrap.status(args.remote_host, **common)
            if args.json:
                print(json.dumps(info, sort_keys=True))
            else:
                print(_describe(info))
            return 0 if info.get("running") else 1
        if args.agent_command == "stop":
            stopped = bootstrap.stop(args.remote_host, **common)
            if args.json:
                print(json.dumps({"stopped": stopped}))
            else:
                print(f"agent on {args.remote_host} stopped" if stopped else f"no agent was running on {args.remote_host}")
            return 0
    except DeployError as exc:
        print(f"seamless-service agent: {exc}", file=sys.stderr)
        return 1
    raise SystemExit(f"seamless-service agent: {args.agent_command} takes no HOST")


def _print_progress(step: str, message: str) -> None:
    print(f"[{step}] {message}", file=sys.stderr, flush=True)


def _describe(info: dict[str, Any]) -> str:
    host = info.get("host")
    if not info.get("installed"):
        return f"{host}: agent not installed"
    if not info.get("running"):
        return f"{host}: agent {info['installed']} installed, not running"
    return f"{host}: agent {info.get('version')} running, pid {info.get('pid')}, port {info.get('port')}"
