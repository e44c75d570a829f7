"""Fixtures shared by the agent's op tests."""

from __future__ import annotations

import pytest

from seamless_service.agent.context import AgentContext
from seamless_service.agent.policy import parse_policy


@pytest.fixture
def make_ctx(sandbox):
    made = []

    def make(spec: str = "seamless") -> AgentContext:
        ctx = AgentContext(base=sandbox.base, policy=parse_policy(spec))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()
