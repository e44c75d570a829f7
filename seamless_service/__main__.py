"""`python -m seamless_service ...`: the same entry point as the `seamless-service` command."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from seamless_service.client.cli.main import main as cli_main
    except ImportError:
        # The client side cannot be imported (e.g. a server install without the client
        # extras): the agent commands, which is all a server needs, still work.
        from seamless_service.agent.cli import main as agent_main

        return agent_main()
    return int(cli_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
