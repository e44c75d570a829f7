"""Client side: transports to agents, the batch API, fan-out, the CLI and its rendering."""
