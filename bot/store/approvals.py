"""Decisions on tool calls waiting for a person's approval, shared by replicas: the click may
reach any replica, the call waits on one.

    decisions = ApprovalDecisions(guard, KeySchema())
    await decisions.decide("T1", approval_id, "approved:U1")   # the decision that stands
    await decisions.decision("T1", approval_id)                # None: nothing decided (yet)

The first decision wins (``SET NX``): a second click, or the waiting replica's own "timeout"
or "cancelled" written when it stops waiting, finds the earlier one and gets it back. Keys
live ``DECISION_TTL_S``, far longer than any sensible wait.

While Redis is unavailable ``decide`` returns None (nothing recorded) and ``decision`` says
nothing is decided: the caller relies on what its own process saw (bot/approvals.py).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from bot.store.guard import Guard
from bot.store.keys import KeySchema

DECISION_TTL_S = 86400


class ApprovalDecisions:
    """First-wins decisions on approvals, by workspace and approval id."""

    def __init__(self, guard: Guard, keys: KeySchema, *, ttl_s: float = DECISION_TTL_S) -> None:
        self._guard = guard
        self._keys = keys
        self._ttl_ms = int(ttl_s * 1000)

    async def decide(self, team: str, approval_id: str, decision: str) -> str | None:
        """Record ``decision`` unless one was recorded first; the decision that stands (this
        one, or the earlier one). None: Redis is unavailable and nothing was recorded."""
        name = self._keys.approval(team, approval_id)

        async def set_first(r: aioredis.Redis) -> object:
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(name, decision, nx=True, px=self._ttl_ms)
                pipe.get(name)
                _, standing = await pipe.execute()
            return standing

        standing = await self._guard.attempt(set_first, "approval", None)
        return _text(standing) if standing is not None else None

    async def decision(self, team: str, approval_id: str) -> str | None:
        """The decision recorded on ``approval_id``; None: none yet, or Redis is unavailable."""
        name = self._keys.approval(team, approval_id)
        found = await self._guard.attempt(lambda r: r.get(name), "approval", None)
        return _text(found) if found is not None else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
