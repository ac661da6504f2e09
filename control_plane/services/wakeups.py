"""In-process wake-ups for long polls.

A ``GET /v1/jobs/{id}?wait_s=`` waiter and a runner's lease long poll re-read storage every
``poll_interval_s``. When the change they wait for is committed by this same replica (the
common case with one control plane, and often with several), ``notify`` wakes them at once
instead, so they answer without the poll delay and the storage is not polled in a tight
loop. Storage stays the only truth: a wake-up only triggers a re-read, and changes made by
other replicas are still seen at the next poll.

Keys: ``job:<id>`` (any transition of that job) and ``model:<name>`` (a job of that model was
queued or requeued) and ``runner:<id>`` (the runner reported a model newly READY: its lease
poll ends so that it offers the model). ``notify`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator

__all__ = ["Wakeups", "job_key", "model_key", "runner_key"]

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def model_key(model: str) -> str:
    return f"model:{model}"


def runner_key(runner_id: str) -> str:
    return f"runner:{runner_id}"


class Wakeups:
    """Events of the long polls waiting in this process, by key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_Waiter]] = defaultdict(set)

    @contextlib.contextmanager
    def watch(self, keys: Iterable[str]) -> Iterator[asyncio.Event]:
        """An event set whenever one of ``keys`` is notified (clear it before each re-read)."""
        waiter: _Waiter = (asyncio.get_running_loop(), asyncio.Event())
        watched = list(dict.fromkeys(keys))
        with self._lock:
            for key in watched:
                self._waiters[key].add(waiter)
        try:
            yield waiter[1]
        finally:
            with self._lock:
                for key in watched:
                    found = self._waiters.get(key)
                    if found is not None:
                        found.discard(waiter)
                        if not found:
                            del self._waiters[key]

    def notify(self, key: str) -> None:
        """Wake every poll watching ``key`` (thread-safe, never raises).

        A poll of the loop running this call (the store call ran inline on the event loop,
        as on SQLite) has its event set here and now; a poll of another loop (a worker
        thread's call) through ``call_soon_threadsafe``, which writes to that loop's wake-up
        pipe: a system call per wake-up the first case does without."""
        if not self._waiters.get(key):  # (most keys have no poll: no lock taken for them;
            return  # a poll registering now is as late as one registering after the lock)
        with self._lock:
            found = self._waiters.get(key)
            if not found:
                return
            waiters = list(found)
        running = asyncio._get_running_loop()  # C speed; None on a worker thread
        for loop, event in waiters:
            if loop is running:
                event.set()
                continue
            with contextlib.suppress(RuntimeError):  # its loop has closed meanwhile
                loop.call_soon_threadsafe(event.set)

    def watching(self, key: str) -> int:
        """How many polls watch ``key`` now (tests, metrics)."""
        with self._lock:
            return len(self._waiters.get(key, ()))


async def sleep_or_wake(event: asyncio.Event, timeout_s: float) -> None:
    """Return when ``event`` is set or after ``timeout_s``, whichever comes first
    (``asyncio.timeout``: no Task per sleep, as ``wait_for`` starts on Python 3.11)."""
    if event.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
