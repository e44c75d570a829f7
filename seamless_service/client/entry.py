"""The `seamless-service` console entry point: a thin client of the per-user keeper.

It imports only os/sys and the keeper client (_socket and our own modules, all builtin
or ours: tests/client/keeper/test_thin_client.py checks the list): the command
line itself (argparse, resolution, rendering, rpyc, paramiko, sshtunnel) is imported by
the keeper, which keeps it and its SSH connections warm between calls.

Where a command runs:
  in this process   `agent ...` (manages the agent of this machine, typically on a server
                    where no tunnel keeper is wanted; `agent start` leaves a long-lived
                    process behind, which must not become the keeper's child),
                    `completion` (run from a shell's startup file: no keeper for that),
                    anything with `--local` (reads this machine's state, no SSH to save),
                    SEAMLESS_SERVICE_NO_DAEMON=1, any time the keeper cannot be
                    reached or started (with a one-line notice), and, without a notice,
                    when the keeper is busy with another command (see BUSY_WAIT)
  tunnel status/stop   asks the keeper itself
  --help, -h, no args  here, from a constant (cli/toplevel_help.py): no parser, no keeper
  SUBCOMMAND --help    the keeper if one is running, else here (never starts one)
  everything else   the keeper, started on demand; output is streamed back as it comes

How it ends (launch(), the script's body): after a command that ran in the keeper, with
os._exit once stdout and stderr are flushed; after the full CLI ran here, normally.
"""

import os
import sys

# typing costs ~3 ms to import: this module is on every CLI call's path. The names are
# only needed by type checkers; the annotations that use them are strings. No
# `from __future__ import annotations` either: that statement imports a module too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Sequence

# server-side or this-machine-only, or (completion) run once from a shell's startup file,
# where starting a tunnel keeper would be a cost for nothing
IN_PROCESS_COMMANDS = ("agent", "demo", "completion")

# The keeper runs one command at a time (cwd, environment and sys.stdout are per process).
# A command that finds it still busy after BUSY_WAIT seconds runs here instead: it pays the
# imports and its own SSH handshake (~0.7 s) but never hangs behind a `ps --watch` or
# `logs --follow` in another terminal. The short wait lets it queue behind a short command,
# which is cheaper than a cold start.
#
# Long-running commands themselves (--watch, --follow) still go to the keeper, on purpose:
# they get its warm connections (a watch shows its first frame at once), Ctrl-C reaches
# them through the keeper's cancellation, and the connections they open stay warm for the
# commands after them. The cost, other commands running cold while a watch holds the
# keeper, is bounded by the busy fallback. Running every watch here instead would make
# the common case (one watch, nothing else) pay a cold start and a second SSH connection.
BUSY_WAIT = 0.2

# True once the full CLI has run in this process (run_in_process): launch() then lets the
# interpreter finish normally, for the threads, atexit handlers and SSH connections that
# command may have left. After a command run by the keeper there is nothing of that here.
_ran_here = False


def _command(args: "Sequence[str]") -> str | None:
    """The subcommand word: the first argument that is not an option."""
    for arg in args:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def route(args: "Sequence[str]") -> str:
    """'local', 'tunnel', 'help' (keeper if running, else local) or 'keeper'."""
    command = _command(args)
    if command == "tunnel":   # about the keeper itself: the same with or without NO_DAEMON
        return "tunnel"
    if os.environ.get("SEAMLESS_SERVICE_NO_DAEMON", "") not in ("", "0"):
        return "local"
    if command in IN_PROCESS_COMMANDS or "--local" in args:
        return "local"
    if not args or "-h" in args or "--help" in args:
        return "help"
    return "keeper"


def run_in_process(args: "Sequence[str]") -> int:
    """The full CLI in this process; never a traceback unless --debug."""
    global _ran_here
    _ran_here = True
    try:
        from .cli.main import main as cli_main

        return int(cli_main(list(args)) or 0)
    except (SystemExit, KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:
        if "--debug" in args:
            raise
        text = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        print(f"seamless-service: internal error: {detail}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    # The reader went away (`| head`): drop further output instead of a second
    # BrokenPipeError at interpreter exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _dispatch(args: list[str]) -> int:
    if args in ([], ["-h"], ["--help"]):
        from .cli.toplevel_help import TOP_HELP

        sys.stdout.write(TOP_HELP)
        return 0 if args else 2  # no command at all is a usage error, as argparse says
    from .keeper import client  # _socket: only for the commands that use the keeper

    how = route(args)
    if how == "local":
        return run_in_process(args)
    if how == "tunnel":
        command = _command(args)
        rest = args[args.index(command) + 1:] if command else []
        return client.tunnel_command(rest)
    try:
        return client.run(args, start=(how == "keeper"), busy_wait=BUSY_WAIT)
    except (client.NotRunning, client.KeeperBusy):
        return run_in_process(args)
    except client.KeeperUnavailable as exc:
        print(f"seamless-service: tunnel keeper unavailable ({exc}); running in this process",
              file=sys.stderr)
        return run_in_process(args)
    except (client.KeeperLost, client.KeeperImpostor) as exc:
        print(f"seamless-service: {exc}", file=sys.stderr)
        return 1


def main(argv: "Sequence[str] | None" = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _dispatch(args)
        # The last of our output leaves here, not at interpreter exit: a reader that went
        # away (`| head`) is then handled below like one that left mid-command, quietly.
        if sys.stdout is not None:
            sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        # Ctrl-C is how a user ends `--watch` (or `logs --follow`): that is success.
        return 0 if ("--watch" in args or "--follow" in args) else 130
    except BrokenPipeError:
        _silence_stdout()
        return 0


def launch() -> None:
    """The `seamless-service` command: main(sys.argv[1:]), then end the process; never returns.

    After a command the keeper ran, nothing here needs the interpreter's finalization (no
    threads, no atexit handlers, no files but stdio): the process ends with os._exit once
    stdout and stderr are flushed, which skips freeing every object and module one by one
    (~1-2 ms of a ~20 ms warm command on the 2-core benchmark machine). After the full CLI
    ran in this process (run_in_process), it exits normally."""
    code = main()
    if _ran_here:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except (OSError, ValueError):
            # What a normal exit does when flushing stdio fails: status 120. main() has
            # flushed stdout already (a broken pipe handled there), so this is rare.
            code = 120
    os._exit(code)


if __name__ == "__main__":
    launch()
