"""Which service a per-service command acts on: `--local`, `--key`, or resolution.

Three ways to name one service, shared by inspect, logs, stop, rm and clear, and by
start/restart (which give the flags their own meaning where they need the configuration,
see cli/lifecycle_cmds.py; the flags, their validation and refusals are the same):

* resolution (the default): --service/--cluster/--project/--stage/... through
  seamless-config, as seamless-config's `seamless-service-*` commands do;
* `--local`: a service of this machine's launcher state, selected by the same flags the
  way `ps --local` selects its rows (the launcher state itself, not the configuration: no
  clusters.yaml or seamless.yaml is needed, in any directory);
* `--key KEY`: the launcher's raw key (as `resolve` prints it, `ps --wide` shows it), on
  the host `--cluster C` or `--local` names. It excludes the other selection flags.

A selection that matches several services is not acted on: they are listed and the
command exits 2 (`pick_target`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

# Flags that select a service; --key replaces all of them (--cluster only picks the host).
SELECTION_FLAGS = ("service", "project", "subproject", "stage", "substage", "mode", "queue")
AMBIGUOUS_EXIT = 2


@dataclass
class Target:
    """One service to act on."""

    key: str
    host: str | None                # None: this machine
    service: str | None = None      # None: the key is not a Seamless key
    workdir: str | None = None      # as a path on its host; None: not known yet


class Ambiguous(UsageError):
    """The selection matched several services. Its text is the one-line reason, then the
    services, one `KEY  STATUS` line each (what to pick from, as the reason says)."""

    exit_code = AMBIGUOUS_EXIT

    def __init__(self, message: str, rows: list[dict[str, Any]]):
        width = max((len(str(row.get("key"))) for row in rows), default=0)
        lines = [f"  {str(row.get('key')):<{width}}  {row.get('status') or '-'}" for row in rows]
        super().__init__("\n".join([message, *lines]))
        self.rows = rows


def service_key(text: str) -> str:
    """argparse type for --key: the key rule the agent applies (protocol.keys), checked
    before anything is sent."""
    from ...protocol.keys import KEY_MAX_LEN, is_valid_key

    if not is_valid_key(text):
        raise argparse.ArgumentTypeError(
            f"invalid key {text!r}: letters, digits, '.', '_' and '-' only, at most {KEY_MAX_LEN}, "
            "not starting with '.' or '-', no '..' (copy it from 'seamless-service resolve' "
            "or 'ps --wide')")
    return text


LOCAL_HELP = ("a service of this machine's launcher state, selected by --service/--project/"
              "--stage/... as `ps --local` selects rows (no configuration needed)")
KEY_HELP = ("the launcher's key (as `resolve` prints it, `ps --wide` shows it), on the "
            "host chosen by --cluster or --local; excludes --service/--project/...")


def add_target_args(parser: argparse.ArgumentParser, *, title: str | None = None,
                    local_help: str = LOCAL_HELP, key_help: str = KEY_HELP) -> None:
    """--local and --key (call after add_selection_args). start/restart pass their own help:
    they resolve the service through the configuration in any case (cli/lifecycle_cmds.py)."""
    group = parser.add_argument_group(title or "which service (instead of resolving it from the configuration)")
    group.add_argument("--local", action="store_true", help=local_help)
    group.add_argument("--key", type=service_key, metavar="KEY", help=key_help)
    parser.set_defaults(target_parser=parser)
    for action in parser._actions:   # --service is no longer the only way to name the service
        if action.dest == "service" and action.required:
            action.required = False
            action.help = "the service (required unless --local or --key)"


def check_target_args(args: argparse.Namespace) -> None:
    """The combinations argparse cannot express, refused as argparse refuses (exit 2)."""
    if getattr(args, "key", None) is None:
        return
    given = [f"--{name}" for name in SELECTION_FLAGS if getattr(args, name, None) is not None]
    if given:
        _parser_error(args, f"argument --key: not allowed with {', '.join(given)}")
    if args.local and args.cluster:
        _parser_error(args, "argument --key: give --cluster C or --local, not both (they choose the host)")
    if not args.local and not args.cluster:
        _parser_error(args, "argument --key: needs --cluster C or --local (the host the key lives on)")


def _parser_error(args: argparse.Namespace, message: str) -> None:
    parser = getattr(args, "target_parser", None)
    if parser is not None:
        parser.error(message)       # exits 2 with the parser's one-line error
    raise UsageError(message)


def uses_target(args: argparse.Namespace) -> bool:
    """True when the command names ONE service (not a cluster-wide stop/rm)."""
    return bool(getattr(args, "key", None) or getattr(args, "local", False) or getattr(args, "service", None))


def pick_target(args: argparse.Namespace) -> Target:
    """The one service the arguments name. UsageError on bad flags, OpError `not_found` if
    --local matches nothing, Ambiguous if it matches several."""
    check_target_args(args)
    if args.key is not None:
        return _by_key(args)
    if args.local:
        return _local(args)
    if not args.service:
        raise UsageError("--service is required (or --local for this machine's services, "
                         "or --key KEY with --cluster C or --local)")
    from .common import selection_of

    resolved = args.config.resolve(selection_of(args), from_cwd=True)
    return Target(resolved.key, resolved.ssh_host, resolved.service, resolved.local_workdir())


def _by_key(args: argparse.Namespace) -> Target:
    from ...protocol.keys import parse_key

    host = None
    if not args.local:
        host = args.config.cluster_host(args.cluster, args.frontend_name)
    return Target(args.key, host, parse_key(args.key).get("service"))


def local_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """This machine's server rows that the selection flags match (the `ps --local` rows;
    stems that are not keys cannot be acted on by key and are left out)."""
    from ..query.ps import PS_FILTERS
    from .common import call_one, open_local

    filters = {name: getattr(args, name) for name in PS_FILTERS if getattr(args, name, None) is not None}
    transport = open_local()
    try:
        rows = call_one(transport, "ps", {"side": "server", **filters})["rows"]
    finally:
        transport.close()
    return [row for row in rows if row.get("valid_key", True)]


def _local(args: argparse.Namespace) -> Target:
    from ...protocol.keys import row_meta
    from ..errors import OpError

    rows = local_rows(args)
    wanted = describe_selection(args)
    matching = f" matches {wanted}" if wanted else ""
    if not rows:
        raise OpError("not_found", f"no service on this machine{matching} (see 'seamless-service ps --local')")
    if len(rows) > 1:
        plural = f" match {wanted}" if wanted else ""
        raise Ambiguous(f"{len(rows)} services on this machine{plural}; narrow the selection with "
                        "--service/--project/--stage/--mode/... or name one with --key KEY:", rows)
    row = rows[0]
    workdir = row.get("workdir")
    return Target(row["key"], None, row_meta(row).get("service"), workdir if isinstance(workdir, str) else None)


def describe_selection(args: argparse.Namespace) -> str:
    """`--service x --stage y`: the selection flags given ("" if none)."""
    flags = [f"--{name} {getattr(args, name)}" for name in ("service", "cluster", *SELECTION_FLAGS[1:])
             if getattr(args, name, None) is not None]
    return " ".join(flags)
