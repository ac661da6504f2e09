"""Long polls wake at once for changes committed by the same replica (storage poll = 30 s)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gpufleet.wire import LeaseRequest, ModelRef

from control_plane.services.wakeups import Wakeups, sleep_or_wake
from tests.contract.fleet import job, principal, push_model, services, succeed
from tests.helpers.spy import returned

USER = principal("acme")
SLOW_POLL = 30.0


async def test_wait_returns_as_soon_as_this_replica_completes_the_job(
    settings: Any, stores: Any
) -> None:
    jobs, models = services(settings.model_copy(update={"poll_interval_s": SLOW_POLL}), stores)
    await asyncio.to_thread(push_model, models, USER)
    view, _ = await asyncio.to_thread(jobs.submit, USER, job())
    req = LeaseRequest(models=[ModelRef(name="add_sub", version="1")], max_jobs=1)
    [leased] = (await jobs.lease("run_1", None, req)).jobs
    read = returned(jobs, "_load_shared")
    waiter = asyncio.create_task(jobs.wait(USER, view.id, 60))
    await asyncio.wait_for(read.wait(), 10)  # the waiter has read RUNNING: it sleeps on its poll
    assert not waiter.done()
    t = time.monotonic()
    await asyncio.to_thread(succeed, jobs, leased)
    done = await asyncio.wait_for(waiter, 10)
    assert done.status == "SUCCEEDED"
    assert time.monotonic() - t < SLOW_POLL / 3  # woken, not polled
    assert jobs.wakeups.watching(f"job:{view.id}") == 0  # the watch is released


async def test_lease_long_poll_wakes_when_a_job_is_queued(settings: Any, stores: Any) -> None:
    jobs, models = services(settings.model_copy(update={"poll_interval_s": SLOW_POLL}), stores)
    await asyncio.to_thread(push_model, models, USER)
    req = LeaseRequest(models=[ModelRef(name="add_sub", version="1")], max_jobs=1, wait_s=20)
    looked = returned(jobs, "_lease_once")
    poll = asyncio.create_task(jobs.lease("run_1", None, req))
    await asyncio.wait_for(looked.wait(), 10)  # the poll found the queue empty: it sleeps
    assert not poll.done()
    t = time.monotonic()
    view, _ = await asyncio.to_thread(jobs.submit, USER, job())
    got = await asyncio.wait_for(poll, 10)
    assert [j.id for j in got.jobs] == [view.id]
    assert time.monotonic() - t < SLOW_POLL / 3
    assert jobs.wakeups.watching("model:add_sub") == 0


async def test_notify_from_another_thread_and_unwatched_keys() -> None:
    w = Wakeups()
    w.notify("job:nobody")  # no waiter: nothing happens
    with w.watch(["job:a", "job:a", "model:m"]) as event:
        assert w.watching("job:a") == 1
        await asyncio.to_thread(w.notify, "model:m")
        await asyncio.wait_for(event.wait(), 2)
        event.clear()
        t = time.monotonic()
        await sleep_or_wake(event, 0.05)  # not notified: times out quietly
        assert time.monotonic() - t >= 0.04
    assert w.watching("job:a") == 0 and w.watching("model:m") == 0


async def test_notify_on_the_waiting_loop_sets_the_event_at_once() -> None:
    """A store call run inline on the event loop wakes its polls without the loop's wake-up
    pipe: the event is set when ``notify`` returns; another loop's poll is still woken."""
    w = Wakeups()
    with w.watch(["job:a"]) as event:
        w.notify("job:a")
        assert event.is_set()  # set here, not at a later turn of the loop
        event.clear()
        await sleep_or_wake(event, 0.01)
        assert not event.is_set()

    other: asyncio.Future[asyncio.Event] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    async def watch_elsewhere() -> bool:
        with w.watch(["job:b"]) as elsewhere:
            loop.call_soon_threadsafe(other.set_result, elsewhere)
            await sleep_or_wake(elsewhere, 5)
            return elsewhere.is_set()

    worker = asyncio.create_task(asyncio.to_thread(asyncio.run, watch_elsewhere()))
    await asyncio.wait_for(other, 5)
    w.notify("job:b")  # from this loop: the other loop's event, through its own loop
    assert await asyncio.wait_for(worker, 5) is True
