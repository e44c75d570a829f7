"""The `seamless-service` command line."""
