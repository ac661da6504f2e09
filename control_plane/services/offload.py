"""How the async edges (routes, long polls) run the services' blocking store calls.

The services are synchronous: on DynamoDB and S3 a call takes milliseconds of network time
and must not block the event loop, so it runs on a worker thread. On the embedded SQLite
file a call takes tens of microseconds, less than the hop to a worker thread and back
(two context switches and a future, ~0.1-0.3 ms of CPU here): it runs inline.

    offload = Offload(inline=stores.kind == "sqlite")
    view = await offload(jobs.get, principal, job_id)

Only short store calls go through it; long or batch work (sweeps, webhook deliveries) keeps
its own threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["Offload"]

P = ParamSpec("P")
T = TypeVar("T")


class Offload:
    """Run ``fn(*args, **kwargs)`` inline (``inline=True``) or on the loop's default
    executor, and return its result."""

    def __init__(self, inline: bool = False) -> None:
        self.inline = inline

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self.inline:
            return fn(*args, **kwargs)
        call = functools.partial(fn, *args, **kwargs) if kwargs else functools.partial(fn, *args)
        # In this task's context, as asyncio.to_thread runs it (the request's storage budget
        # is a context variable).
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(None, ctx.run, call)
