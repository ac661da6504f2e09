"""The storage-time budget of a request (control_plane/storage/budget.py): storage calls are
charged to the request that made them, on any thread it hands work to; once the budget is
spent the next call raises Unavailable (503 with Retry-After); time outside storage calls
(a long poll's sleeps) is free; WebSockets and background work have no budget."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from control_plane.errors import Unavailable
from control_plane.storage import budget


def _slow_call(seconds: float) -> None:
    with budget.charge("a slow read"):
        time.sleep(seconds)


async def _serve(scope_type: str, handler: Any) -> Any:
    out: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            out["result"] = await handler()
        except Unavailable as exc:
            out["error"] = exc

    await budget.StorageBudgetMiddleware(app, limit_s=0.3)({"type": scope_type}, None, None)
    return out


async def test_calls_past_the_budget_are_refused_and_sleeps_are_free() -> None:
    async def handler() -> int:
        calls = 0
        for _ in range(20):
            await asyncio.sleep(0.05)  # waiting between reads costs nothing
            await asyncio.to_thread(_slow_call, 0.1)
            calls += 1
        return calls

    out = await _serve("http", handler)
    err = out["error"]
    assert "storage budget" in err.message and err.retry_after >= 1
    assert budget.current() is None  # reset after the request


async def test_sleeping_long_polls_keep_their_budget() -> None:
    async def handler() -> str:
        for _ in range(8):
            await asyncio.sleep(0.05)
            await asyncio.to_thread(_slow_call, 0.001)
        return "done"

    assert (await _serve("http", handler))["result"] == "done"


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_no_budget_outside_http_requests(scope_type: str) -> None:
    async def handler() -> str:
        await asyncio.to_thread(_slow_call, 0.4)
        await asyncio.to_thread(_slow_call, 0.01)
        return "done"

    assert (await _serve(scope_type, handler))["result"] == "done"


async def test_a_long_poll_renews_its_budget_each_round() -> None:
    """Each round of a long poll costs 0.1 s of storage; eight rounds are 0.8 s in all,
    past the 0.3 s budget, but every round starts with a fresh budget."""

    async def handler() -> str:
        for _ in range(8):
            budget.renew()
            await asyncio.to_thread(_slow_call, 0.1)
        return "done"

    assert (await _serve("http", handler))["result"] == "done"
