"""Transports: how a batch of ops reaches a host and comes back as raw results.

Every transport subclasses `base.Transport` (batch, close, describe, and what callers ask
of a transport: its notices, whether it connected, why it fell back, its sizes); code
above this folder is typed with that class. `mock.MockTransport(handler)` answers from a
function, for tests of the views, the API and the CLI without any host.

`open.open_transport(host, kind)` chooses one: `local` (in-process, local.py), `agent`
(the host's agent over an SSH tunnel: agent.py, tunnel.py, forward.py, agent_conn.py) or
`ssh` (per-call `ssh HOST rhl-* --json`, ssh.py), `auto` falling back from agent to ssh
(auto.py). Inside the tunnel keeper, transports are kept in the pool (pool.py: one
`TransportPool`, `default_pool`, that open_transport leases from) between commands, keyed by
the caller's inputs (inputs.py), and handed out as leases (pooled.py).

Imports nothing from config/, query/, lifecycle/, keeper/ or cli/ (tests/client/test_layering.py).
"""
