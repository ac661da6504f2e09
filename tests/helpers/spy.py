"""A spy for long-poll tests: "the poll has done its read and now waits" as an event, so a
test triggers the wake-up after it instead of sleeping and hoping the poll got there."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any


def returned(obj: Any, name: str) -> asyncio.Event:
    """An event set each time ``obj.name`` (sync, maybe run in a thread, or async) returns.
    Replaces the method on this instance only; call it from the test's event loop."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    real = getattr(obj, name)
    spy: Any
    if inspect.iscoroutinefunction(real):

        async def spy(*args: Any, **kwargs: Any) -> Any:
            try:
                return await real(*args, **kwargs)
            finally:
                event.set()

    else:

        def spy(*args: Any, **kwargs: Any) -> Any:
            try:
                return real(*args, **kwargs)
            finally:
                loop.call_soon_threadsafe(event.set)

    setattr(obj, name, spy)
    return event
