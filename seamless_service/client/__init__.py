"""Client side, one subpackage per concern (docs/architecture.md): transport/ (how ops reach a
host), config/ (clusters and services through seamless-config), query/ (ps: plan, rows,
render, watch), lifecycle/ (start, restart, reset), keeper/ (the tunnel keeper), cli/; the
Python API in api.py, the errors in errors.py, the `seamless-service` command in entry.py."""
