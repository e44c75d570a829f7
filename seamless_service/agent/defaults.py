"""Agent constants that the CLI needs at parser-build time, kept apart so that building the
parser (and `seamless-service --help`) does not import the lifecycle machinery."""

HOST = "127.0.0.1"      # the only address the agent ever binds
START_TIMEOUT = 10.0    # seconds to wait for a detached agent to serve
STOP_TIMEOUT = 10.0     # seconds to wait for SIGTERM before SIGKILL
