"""seamless-service: see and manage Seamless services on remote servers through a per-server agent.

Kept import-light on purpose: the CLI imports this package on every call, so nothing
heavy (rpyc, paramiko, sshtunnel) is imported here.
"""

__version__ = "0.1.0"
