"""The storage-time budget of one API request.

Each storage call already has its own deadline (connect + read timeouts and a bounded number
of tries on DynamoDB/S3, the busy timeout on SQLite). On top of that, an HTTP request may
spend at most ``storage_budget_s`` seconds inside storage calls in total: the time of every
call made for it (on any thread it hands work to) is added up, and a call started once the
budget is spent raises ``Unavailable`` (503 with ``Retry-After``) instead of adding to a
request that is already slow. Only time inside storage calls counts, and a long poll
(``GET /v1/jobs/{id}?wait_s``, a runner's lease) renews the budget at each round of reads,
so waiting is never cut short by the budget, only a round that is itself too slow.

The budget lives in a context variable set for each HTTP request by the API's middleware
layer (``api/gate.py``; :class:`StorageBudgetMiddleware` does the same on its own), never for
WebSockets or background tasks, which have none; ``asyncio.to_thread``
and Starlette's ``run_in_threadpool`` copy it into their threads. Adapters charge their calls
through ``translate_errors`` (DynamoDB/S3) and ``translate`` (SQLite).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

from control_plane.errors import Unavailable

RETRY_AFTER_S = 2


class Budget:
    """Seconds of storage time one request may still spend."""

    __slots__ = ("limit", "spent")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.spent = 0.0


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "gpufleet_storage_budget", default=None
)


VAR = _current  # for a middleware that sets the budget itself (``api/gate.py``)
# The budget of this context (None: none). The variable's own method: storage adapters ask
# for it on every call, and a function around it would cost a call of its own.
current: Callable[[], Budget | None] = _current.get


def start(limit_s: float) -> None:
    """A fresh budget of ``limit_s`` for the request this context serves (a task of its own:
    the HTTP listener's short path)."""
    _current.set(Budget(limit_s))


def renew() -> None:
    """A fresh budget for the next round of a long poll (each round is a request's worth of
    storage work; the poll as a whole may run for many of them)."""
    budget = _current.get()
    if budget is not None:
        budget.spent = 0.0


def clear() -> None:
    """No budget in this context (a task that serves many requests, e.g. shared reads)."""
    _current.set(None)


def check(budget: Budget, what: str) -> None:
    """``Unavailable`` (503, Retry-After) when ``budget`` is spent: ``what`` must not start."""
    if budget.spent >= budget.limit:
        raise Unavailable(
            f"storage is too slow: this request spent its {budget.limit:g} s storage budget "
            f"before {what}",
            retry_after=RETRY_AFTER_S,
        )


@contextlib.contextmanager
def charge(what: str) -> Iterator[None]:
    """Count the time of one storage call against this request's budget; refuse to start it
    when the budget is spent."""
    budget = _current.get()
    if budget is None:
        yield
        return
    check(budget, what)
    started = time.monotonic()
    try:
        yield
    finally:
        budget.spent += time.monotonic() - started


class StorageBudgetMiddleware:
    """Give every HTTP request a fresh budget of ``limit_s`` seconds of storage time."""

    def __init__(self, app: Any, limit_s: float) -> None:
        self.app = app
        self.limit_s = limit_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _current.set(Budget(self.limit_s))
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)
