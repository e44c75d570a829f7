"""`kind="auto"`: the agent, falling back to per-call ssh when the agent cannot answer.

The fallback is said with one line on stderr per command:
`seamless-service: HOST: using per-call ssh (agent unavailable: REASON)`.
Only the lasting reasons are remembered (choice.py: in this process and in the client
cache, for CHOICE_TTL_GUARDED when rhl-guard was the reason, else CHOICE_TTL), so later
commands go straight to ssh (saying so); after a transient one the next command tries the
agent again. `forget_choice(host)` or kind="agent" tries the agent again at once.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .base import Notice, Op, Result, Transport
from .choice import choice_ttl, remember_choice
from .pooled import PooledTransport

if TYPE_CHECKING:
    from .agent import AgentUnavailable

# After a transient fallback (timeout, dropped connection), a long-lived auto transport
# tries the agent again after this many seconds; a new command tries it at once.
AGENT_RETRY_AFTER = 60.0


class AutoTransport(Transport):
    """The agent, or — if the agent cannot run on the host, or cannot be reached right
    now — the ssh fallback.

    Falling back is said once, on the first batch it serves (`notice`, default stderr):
    `seamless-service: HOST: using per-call ssh (agent unavailable: REASON)`, and
    `fallback_reason` holds REASON while ssh answers. A lasting reason (AgentUnavailable
    .permanent: rhl-guard, forwarding refused, no usable Python, the install refused) is
    remembered (remember_choice); a transient one (a timeout, a dropped connection, an
    agent restarting) is not: the next command tries the agent again, and so does this
    transport after AGENT_RETRY_AFTER seconds (an API Host or `ps --watch` lives long).
    `remembered` (from remembered_choice) starts on ssh without trying the agent.
    """

    name = "auto"

    def __init__(self, host: str, make_agent: Callable[[], Transport] | None,
                 make_ssh: Callable[[bool | None], Transport], *,
                 notice: Notice | None = None, remembered: dict[str, Any] | None = None):
        self.host = host
        self._make_agent = make_agent
        self._make_ssh = make_ssh
        self.notice = notice
        self._lock = threading.Lock()
        self._agent: Transport | None = None
        self._ssh: Transport | None = None
        self._use_ssh = False
        self._permanent = False
        self._retry_at = 0.0
        self._unsaid: str | None = None     # the fallback line, until a batch used ssh
        self._said = False                  # once per transport (one per command and host)
        self.fallback_reason: str | None = None
        if remembered is not None:
            reason = str(remembered.get("reason") or "remembered")
            self._switch(reason, guarded=bool(remembered.get("guarded")), permanent=True,
                         remembered=float(remembered.get("since") or time.time()))
        elif make_agent is not None:
            self._agent = make_agent()

    @property
    def active(self) -> Transport | None:
        """The transport answering now (the agent's unless the fallback is in use)."""
        return self._ssh if self._use_ssh else self._agent

    @property
    def kind(self) -> str:
        return "ssh" if self._use_ssh else "agent"

    def batch(self, ops: Sequence[Op]) -> list[Result]:
        from .agent import AgentUnavailable

        if self._use_ssh and not self._retry_due():
            return self._through_ssh(ops)
        agent = self._agent_now()
        try:
            results = agent.batch(ops)
        except AgentUnavailable as exc:
            # Raised while connecting, before anything was sent: answering through ssh
            # instead sends nothing twice. An agent that worked before and now fails is
            # a transient problem, not a reason to switch.
            if agent.connected_once:
                raise
            self._fall_back(exc)
            return self._through_ssh(ops)
        if self._use_ssh:
            self._use_ssh, self.fallback_reason = False, None  # the agent answers again
        return results

    def begin(self, ops: Sequence[Op]) -> Callable[[], list[Result]] | None:
        # Only while the agent answers, over a connection it already has: a first call, a
        # fallback or a retry of the agent go through batch() (it may switch transports).
        agent = self._agent
        if self._use_ssh or agent is None or not agent.connected_once:
            return None
        return agent.begin(ops)

    def _retry_due(self) -> bool:
        return not self._permanent and self._make_agent is not None and time.monotonic() >= self._retry_at

    def _agent_now(self) -> Transport:
        with self._lock:
            if self._use_ssh:
                self._retry_at = time.monotonic() + AGENT_RETRY_AFTER  # one try per interval
            if self._agent is None:
                assert self._make_agent is not None  # no agent maker: _retry_due() is never True
                self._agent = self._make_agent()
            return self._agent

    def _through_ssh(self, ops: Sequence[Op]) -> list[Result]:
        with self._lock:
            line, self._unsaid = self._unsaid, None
            ssh = self._ssh
        if line is not None:
            (self.notice if self.notice is not None else _print)(line)
        assert ssh is not None  # made by _switch() before _use_ssh is set
        return ssh.batch(ops)

    def _fall_back(self, exc: AgentUnavailable) -> None:
        reason = str(exc)
        prefix = f"{self.host}: "
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
        guarded, permanent = exc.guarded, exc.permanent
        if permanent:
            remember_choice(self.host, "ssh", reason=reason, guarded=guarded)
        self._switch(reason, guarded=guarded, permanent=permanent)

    def _switch(self, reason: str, *, guarded: bool, permanent: bool, remembered: float | None = None) -> None:
        with self._lock:
            # The agent transport that failed is let go; a retry makes a new one.
            agent, self._agent = self._agent, None
            if self._ssh is None:
                self._ssh = self._make_ssh(True if guarded else None)
            self._use_ssh, self._permanent = True, permanent
            self._retry_at = time.monotonic() + AGENT_RETRY_AFTER
            self.fallback_reason = reason
            if remembered is not None:
                until = time.strftime("%H:%M", time.localtime(remembered + choice_ttl(guarded)))
                reason = f"{reason}; remembered until {until}, --transport agent tries it now"
            elif not permanent:
                reason = f"{reason}; the agent is tried again on the next command"
            if not self._said:
                self._unsaid = f"seamless-service: {self.host}: using per-call ssh (agent unavailable: {reason})"
                self._said = True
        if agent is not None:
            self._release(agent)

    @staticmethod
    def _release(agent: Transport) -> None:
        # A new agent transport is made if the agent is tried again: a pooled one that
        # failed has been dropped from the pool already (PooledTransport.batch).
        if isinstance(agent, PooledTransport):
            agent.discard()
        else:
            agent.close()

    def describe(self) -> dict[str, Any]:
        active = self.active
        info = active.describe() if active is not None else {}  # None once closed
        return {**info, "chosen_by": "auto", "fallback_reason": self.fallback_reason}

    def close(self) -> None:
        with self._lock:
            agent, ssh = self._agent, self._ssh
            self._agent = None
        for transport in (agent, ssh):
            if transport is not None:
                transport.close()


def _print(message: str) -> None:
    from .agent import print_notice

    print_notice(message)
