"""The top-level `seamless-service --help` text, as constants.

`seamless-service --help` (and no arguments) is the first thing a newcomer runs; building
the real parser imports every subcommand module (resolution, rendering: ~60 ms), so the
thin client prints TOP_HELP instead. It is argparse's own output for build_parser() at 80
columns (cli/main.py takes DESCRIPTION from here); tests/client/test_entry.py checks that
the two stay equal.
"""

DESCRIPTION = """\
See and manage Seamless services (hashserver, database, jobserver, daskserver) on
this machine and on remote servers, through a lightweight per-server agent.

examples:
  seamless-service demo start                       three real demo services on this machine
  seamless-service ps --local                       services on this machine, no configuration needed
  seamless-service ps --cluster mycluster           a cluster's services and data directories
  seamless-service ps --all-clusters --watch        every cluster, redrawn on each change
  seamless-service logs --service hashserver --tail 20
  seamless-service stop --cluster mycluster --project myproj
  seamless-service resolve --service database --workdir .
  seamless-service agent deploy mycluster-ssh       install/start the agent on a server
"""

TOP_HELP = 'usage: seamless-service [-h] [-V] [--debug] COMMAND ...\n\n' + DESCRIPTION + """\

positional arguments:
  COMMAND
    ps           list services
    resolve      print a service's key, host and workdir (JSON)
    inspect      print a service's launcher state
    logs         print a service's log
    stop         stop services
    rm           remove launcher state files
    clear        delete a hashserver's or database's data
    start        start a service as Seamless would
    restart      stop, remove the state, start
    reset        cold cache: stop, remove state, clear buffers and database
    demo         start/stop demo services on this machine
    agent        start, stop or inspect the per-server agent
    tunnel       the per-user tunnel keeper (client daemon)
    completion   print a bash or zsh completion script

options:
  -h, --help     show this help message and exit
  -V, --version  show program's version number and exit
  --debug        show a traceback on errors
"""
