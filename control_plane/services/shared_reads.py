"""Concurrent reads of single jobs, served together (the long polls of ``JobService.wait``)."""

from __future__ import annotations

import asyncio
import builtins
import itertools
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from control_plane.services.offload import Offload
from control_plane.storage import budget as storage_budget
from control_plane.storage.protocols import (
    JobRecord,
)

log = logging.getLogger("control_plane.services.jobs")  # one logger for the job service

MAX_READ_BATCH = 100  # job ids per shared read of concurrent waits


@dataclass
class _Reads:
    """The job reads waiting in one event loop, and the task serving them."""

    waiting: dict[str, builtins.list[asyncio.Future[JobRecord | None]]] = field(
        default_factory=dict
    )
    task: asyncio.Task[None] | None = None


class SharedReads:
    """Concurrent reads of single jobs, served together: while one ``get_jobs`` call runs,
    the ids asked for meanwhile wait for the next (up to ``MAX_READ_BATCH`` per call), so a
    thousand long polls re-reading their jobs cost a few calls, not a thousand."""

    def __init__(
        self,
        read_many: Callable[[builtins.list[str]], dict[str, JobRecord]],
        offload: Offload | None = None,
    ) -> None:
        self._read_many = read_many
        self._offload = offload or Offload()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Reads] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, job_id: str) -> JobRecord | None:
        loop = asyncio.get_running_loop()
        reads = self._loops.get(loop)
        if reads is None:
            reads = self._loops[loop] = _Reads()
        fut: asyncio.Future[JobRecord | None] = loop.create_future()
        reads.waiting.setdefault(job_id, []).append(fut)
        if reads.task is None:
            reads.task = loop.create_task(self._serve(reads))
        return await fut

    async def _serve(self, reads: _Reads) -> None:
        storage_budget.clear()  # serves many requests: none's budget (this task's own context)
        batch: dict[str, builtins.list[asyncio.Future[JobRecord | None]]] = {}
        try:
            while reads.waiting:
                ids = list(itertools.islice(reads.waiting, MAX_READ_BATCH))
                batch = {i: reads.waiting.pop(i) for i in ids}
                try:
                    found = await self._offload(self._read_many, ids)
                except Exception as exc:
                    for fut in itertools.chain.from_iterable(batch.values()):
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for job_id, futs in batch.items():
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(found.get(job_id))
        finally:
            reads.task = None
            for fut in itertools.chain(*batch.values(), *reads.waiting.values()):
                fut.cancel()  # only when this task was cancelled (the loop is closing)
