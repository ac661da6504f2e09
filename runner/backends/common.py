"""Helpers shared by the docker and process backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from runner.backends.base import BackendError, InferenceEngine


async def wait_ready(
    engine: InferenceEngine,
    alive: Callable[[], Awaitable[bool]],
    timeout_s: float,
    logs: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Poll Triton's /v2/health/ready until it answers; BackendError on timeout or death."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await engine.server_ready():
            return
        if not await alive():
            tail = await logs() if logs else ""
            raise BackendError(f"Triton exited before it was ready\n{tail}")
        if time.monotonic() > deadline:
            tail = await logs() if logs else ""
            raise BackendError(f"Triton not ready after {timeout_s:.0f}s\n{tail}")
        await asyncio.sleep(0.25)


def append_log(path: Path, header: str, text: str) -> None:
    """Keep Triton's output: append ``text`` under a header to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8", errors="replace") as fh:
        fh.write(f"\n===== {header} ({time.strftime('%Y-%m-%dT%H:%M:%S%z')}) =====\n")
        fh.write(text)
        if not text.endswith("\n"):
            fh.write("\n")
