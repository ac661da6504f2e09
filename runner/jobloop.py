"""The job loop: lease → Triton → complete, concurrently, with lease extension.

One long poll at a time asks for up to ``free slots`` jobs of the models READY in Triton;
each job runs in its own tracked task, so Triton's dynamic batcher sees them together.
A job ends in exactly one of: completed SUCCEEDED/FAILED; dropped on 409 (someone else
owns it); cancelled (the heartbeat said so: not completed); abandoned (shutdown grace
spent: its lease expires and the control plane requeues it). No job is ever lost.

Results go through one completion queue (:class:`CompletionQueue`): a single task sends
whatever finished while its previous call ran, up to 100 results per batch complete, so a
busy runner makes a few calls for many jobs and a lone job is sent at once. Each result
still gets its own answer and its job task its own retry policy, exactly as with single
completes; the job keeps its slot (and stays in ``running_jobs``) until its result is
answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from gpufleet._logs import bind
from gpufleet.wire import (
    MAX_COMPLETE_BATCH,
    BatchCompleteRequest,
    BatchCompleteResponse,
    CompleteItem,
    CompleteRequest,
    ErrorInfo,
    LeasedJob,
    LeaseRequest,
    Tensor,
)

from runner import payloads
from runner.backends.base import InferenceEngine, InferError
from runner.backoff import Backoff
from runner.cp_client import (
    Conflict,
    ControlPlaneClient,
    ControlPlaneError,
    NotFound,
    Unauthorized,
)
from runner.identity import Identity
from runner.joblogs import JobLogs, cap, model_lines
from runner.model_manager import ModelManager
from runner.state import InflightJob, RunnerState, wait_event
from runner.streaming import ChunkSender, join_responses
from runner.tensors import TensorError

log = logging.getLogger(__name__)
MAX_LEASE_JOBS = 100
COMPLETE_RETRIES = 5
MIN_EMPTY_POLL_S = 0.25
NO_MODEL_WAIT_S = 0.1
REFUSED_RETRY_S = 30.0  # after a 403 to a lease (this runner is given no jobs)
BATCH_ROUTE_RETRY_S = 300.0  # after a 404 (an older control plane): single completes this long
MAX_BATCH_BYTES = 4 * 1024 * 1024  # of results' JSON per batch (the control plane's body limit
# is 8 MiB by default; inline outputs are up to ~256 KiB each, so 100 of them would not fit)


@dataclass
class _Pending:
    job_id: str
    req: CompleteRequest
    fut: asyncio.Future[None]
    _size: int | None = None

    @property
    def size(self) -> int:
        """Bytes of the result's JSON (measured when a batch of several needs it)."""
        if self._size is None:
            self._size = len(self.req.model_dump_json(exclude_none=True)) + len(self.job_id) + 16
        return self._size


def _expires_in(iso: str) -> float:
    """Seconds until an RFC 3339 time (by this host's clock)."""
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return 30.0
    return when.timestamp() - time.time()


def _item(job_id: str, req: CompleteRequest) -> CompleteItem:
    """``req`` as one result of a batch complete. Built by validation, which costs less than
    pydantic's ``model_construct`` (a Python loop over the fields, defaults deep-copied):
    the tensors, models already, are taken as they are (never re-validated)."""
    return CompleteItem(
        job_id=job_id,
        lease_token=req.lease_token,
        status=req.status,
        outputs=req.outputs,
        outputs_ref=req.outputs_ref,
        error=req.error,
        timings=req.timings,
        logs=req.logs,
    )


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if not fut.done():  # a job task cancelled meanwhile (drain) no longer waits
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


class CompletionQueue:
    """Results of finished jobs, sent by one task in batch completes of up to 100.

    A flush starts as soon as the previous one has returned, with what finished meanwhile (no
    fixed delay). ``complete`` returns when its result is committed, or raises what a single
    complete would have: ``Conflict`` (stale lease token), ``NotFound``, ``Unauthorized``,
    ``ControlPlaneError`` (network, 5xx, an ``invalid`` result: the 422 of the single route).
    A control plane without the batch route (404) gets single completes, concurrently, and
    the batch route is tried again after ``BATCH_ROUTE_RETRY_S``. A batch also stays under
    ``MAX_BATCH_BYTES`` of results (one refused as too large anyway, 413, goes one by one).
    """

    def __init__(self, client: ControlPlaneClient, *, max_bytes: int = MAX_BATCH_BYTES) -> None:
        self._client = client
        self._max_bytes = max_bytes
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._singles_until = 0.0
        self.calls = 0  # batch completes sent (tests, logs)

    async def complete(self, job_id: str, req: CompleteRequest) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(job_id, req, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="complete-flush")
        self._wake.set()
        await fut

    async def aclose(self) -> None:
        """Stop the flushing task (results still queued are abandoned: lease expiry)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pending in self._queue:
            pending.fut.cancel()
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._take()
                if batch:
                    await self._flush(batch)

    def _take(self) -> list[_Pending]:
        """The next batch: up to 100 results and ``max_bytes`` of them (at least one result),
        leaving out those whose job no longer waits (cancelled by a drain)."""
        if len(self._queue) == 1:  # a lone result: no size to weigh
            pending = self._queue.pop()
            return [] if pending.fut.done() else [pending]
        batch: list[_Pending] = []
        size = taken = 0
        for pending in self._queue:
            if batch and (
                len(batch) == MAX_COMPLETE_BATCH or size + pending.size > self._max_bytes
            ):
                break
            taken += 1
            if not pending.fut.done():
                batch.append(pending)
                size += pending.size
        del self._queue[:taken]
        return batch

    async def _flush(self, batch: list[_Pending]) -> None:
        if time.monotonic() >= self._singles_until:
            try:
                self.calls += 1
                out = await self._client.complete_batch(
                    BatchCompleteRequest(results=[_item(p.job_id, p.req) for p in batch])
                )
            except NotFound:
                log.info("the control plane has no batch complete route: completing one by one")
                self._singles_until = time.monotonic() + BATCH_ROUTE_RETRY_S
            except ControlPlaneError as exc:
                if exc.status != 413 or len(batch) == 1:
                    for pending in batch:
                        _settle(pending.fut, exc)
                    return
                log.info("a batch complete of %d results was too large: one by one", len(batch))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                for pending in batch:
                    _settle(pending.fut, exc)
                return
            else:
                self._settle_batch(batch, out)
                return
        await asyncio.gather(*(self._single(p) for p in batch))

    def _settle_batch(self, batch: list[_Pending], out: BatchCompleteResponse) -> None:
        answers = {r.job_id: r for r in out.results}
        for pending in batch:
            job_id, fut = pending.job_id, pending.fut
            answer = answers.get(job_id)
            if answer is None:
                _settle(fut, ControlPlaneError(f"batch complete: no answer for {job_id}"))
                continue
            message = f"batch complete of {job_id}: {answer.status}"
            if answer.error is not None:
                message += f" {answer.error.code}: {answer.error.message}"
            error: ControlPlaneError | None = {
                "committed": None,
                "conflict": Conflict(message, 409, "conflict"),
                "not_found": NotFound(message, 404, "not_found"),
            }.get(answer.status, ControlPlaneError(message, 422, "invalid_request"))
            _settle(fut, error)

    async def _single(self, pending: _Pending) -> None:
        try:
            await self._client.complete(pending.job_id, pending.req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _settle(pending.fut, exc)
        else:
            _settle(pending.fut, None)


class JobLoop:
    """Leases and runs jobs; see the module docstring."""

    def __init__(
        self,
        state: RunnerState,
        client: ControlPlaneClient,
        identity: Identity,
        engine: InferenceEngine,
        models: ModelManager,
        *,
        rng: Callable[[], float] = random.random,
        verify: ssl.SSLContext | bool = True,
        job_logs: JobLogs | None = None,
        model_output: Callable[[float, float], Awaitable[str]] | None = None,
    ) -> None:
        # per-job logs (runner/joblogs.py): the runner's lines, Triton's output in the run
        self._job_logs = job_logs
        self._model_output = model_output
        self._verify = verify  # TLS of presigned bucket URLs
        self._state = state
        self._client = client
        self._identity = identity
        self._engine = engine
        self._models = models
        self._rng = rng
        self.completions = CompletionQueue(client)

    # ------------------------------------------------------------------ leasing
    async def run(self, stop: asyncio.Event) -> None:
        """Lease until ``stop`` is set (the in-flight jobs keep running)."""
        backoff = Backoff(0.5, 5.0)
        while not stop.is_set():
            creds = None
            try:
                creds = await self._identity.ensure(stop)
                if creds is None:
                    return
                if not await self._cycle(stop):
                    continue
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Unauthorized:
                await self._identity.invalidate(creds)
            except Exception as exc:
                if isinstance(exc, ControlPlaneError) and exc.status == 403:
                    # refused work (a mock runner in a fleet that does not allow them): say
                    # why once, and ask again now and then (an admin may allow it)
                    if self._state.last_error != f"lease: {exc}":
                        log.warning("the control plane gives this runner no jobs: %s", exc)
                    self._state.last_error = f"lease: {exc}"
                    await wait_event(stop, REFUSED_RETRY_S)
                    continue
                self._state.last_error = f"lease: {exc}"
                log.warning("lease cycle failed; retry in ~%.1fs", backoff.delay_s, exc_info=True)
                await wait_event(stop, backoff.next_wait())

    async def _cycle(self, stop: asyncio.Event) -> bool:
        """One lease attempt; False when there was nothing to ask for (after a short wait)."""
        cfg = self._state.config
        if cfg.drain:
            await wait_event(stop, 1.0)
            return False
        free = cfg.max_concurrency - len(self._state.inflight) - self._state.dispatch_inflight
        if free <= 0:
            self._state.slot_freed.clear()
            await wait_event(self._state.slot_freed, 1.0)
            return False
        if not self._state.triton_ready.is_set():
            await wait_event(self._state.triton_ready, 1.0)
            return False
        refs = self._models.ready_refs()
        if not refs:  # looked at again soon: a cold start leases as soon as a model is READY
            await wait_event(stop, NO_MODEL_WAIT_S)
            return False
        if cfg.acceptance_rate < 1.0 and self._rng() >= cfg.acceptance_rate:
            await wait_event(stop, min(1.0, max(cfg.lease_wait_s, 0.1)))
            return False
        req = LeaseRequest(models=refs, max_jobs=min(free, MAX_LEASE_JOBS), wait_s=cfg.lease_wait_s)
        asked = time.monotonic()
        lease = asyncio.ensure_future(self._client.lease(req))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({lease, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not lease.done():
            # Shutdown during a long poll: anything claimed right now is requeued on expiry.
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await lease
            return False
        jobs = lease.result().jobs
        for job in jobs:
            self.start_job(job)
        if jobs:
            # Let the jobs reach Triton before the next long poll is sent: at one job at a
            # time, that send (and the control plane's work on it) is not on the job's path.
            await asyncio.sleep(0)
        if not jobs and time.monotonic() - asked < MIN_EMPTY_POLL_S:
            # An empty answer that came back at once (wait_s 0): do not spin.
            await wait_event(stop, MIN_EMPTY_POLL_S)
        return True

    # ------------------------------------------------------------------ running
    def start_job(self, job: LeasedJob) -> None:
        """Run ``job`` in a tracked task."""
        self._state.counters.leased += 1
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._state.inflight[job.id] = InflightJob(
            job=job, task=task, lease_token=job.lease_token, lease_expires_at=job.lease_expires_at
        )
        task.add_done_callback(functools.partial(self._done, job.id))

    def _done(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._state.inflight.pop(job_id, None)
        self._state.slot_freed.set()

    async def _run_job(self, job: LeasedJob) -> None:
        # this task's log lines name the job and the submit's request id (gpufleet._logs)
        bind(job=job.id, model=job.model, request_id=job.request_id)
        if self._job_logs is not None:  # from here on, this job's lines are kept for it
            self._job_logs.start(job.id)
        log.info("job %s started: model %s version %s", job.id, job.model, job.model_version)
        entry = self._state.inflight.get(job.id)
        # The lease is first extended at about half its remaining time: a timer until then,
        # the extending task only for a job still running by then (most jobs end far sooner:
        # no task, no cancellation per job).
        extender: list[asyncio.Task[None]] = []
        timer = asyncio.get_running_loop().call_later(
            max(0.5, _expires_in(job.lease_expires_at) / 2),
            lambda: extender.append(asyncio.create_task(self._extend_loop(job, wait_first=False))),
        )
        started = time.perf_counter()
        wall_start = time.time()
        try:
            req = await self._execute(job, started)
            req = await self._with_logs(job.id, req, wall_start)
        except asyncio.CancelledError:
            if entry is not None and entry.lease_lost:
                self._state.counters.leases_lost += 1
                log.warning("job %s: lease lost (re-leased elsewhere): stopped waiting", job.id)
                return
            if entry is not None and entry.cancelled:
                self._state.counters.cancelled += 1
                log.info("job %s cancelled at the control plane: stopped waiting", job.id)
                return
            self._state.counters.abandoned += 1
            log.warning("job %s abandoned (shutdown): its lease will expire and requeue", job.id)
            raise
        finally:
            if self._job_logs is not None:
                self._job_logs.take(job.id)  # (already taken when sent with the result)
            timer.cancel()
            for task in extender:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._complete(job, req)

    async def _execute(self, job: LeasedJob, started: float) -> CompleteRequest:
        token = self._lease_token(job)
        try:
            job = await payloads.fetch_inputs(job, self._verify)  # data_ref inputs, from the bucket
            fetched = time.perf_counter()
            async with asyncio.timeout(job.timeout_s):  # no extra task, unlike wait_for
                outputs = await self._run_model(job)
            inferred = time.perf_counter()
            # large outputs go to the bucket
            inline, outputs_ref = await payloads.store_outputs(job, outputs, self._verify)
        except TimeoutError:
            return self._failed(job, "timeout", f"job exceeded its timeout of {job.timeout_s}s")
        except TensorError as exc:
            return self._failed(job, "invalid_input", str(exc))
        except InferError as exc:
            return self._failed(job, "triton_error", str(exc))
        except payloads.PayloadError as exc:
            return self._failed(job, "payload_error", str(exc))
        total_ms = (time.perf_counter() - started) * 1000
        log.info(
            "job %s succeeded: Triton %.1f ms, %.1f ms in all",
            job.id,
            (inferred - fetched) * 1000,
            total_ms,
        )
        timings = {  # receive: inputs ready (payload fetch), triton, send: outputs stored
            "receive_ms": round((fetched - started) * 1000, 3),
            "triton_ms": round((inferred - fetched) * 1000, 3),
            "send_ms": round((time.perf_counter() - inferred) * 1000, 3),
            "total_ms": round(total_ms, 3),
        }
        load = self._models.loads.get((job.model, job.model_version))
        if load is not None:  # the control plane marks a job that waited for this load
            timings["load_ms"], timings["loaded_at"] = round(load[0], 3), round(load[1], 3)
        return CompleteRequest(
            lease_token=token,
            status="SUCCEEDED",
            outputs=inline,
            outputs_ref=outputs_ref,
            timings=timings,
        )

    async def _with_logs(self, job_id: str, req: CompleteRequest, since: float) -> CompleteRequest:
        """``req`` with the job's logs: the runner's lines, then Triton's output while it ran."""
        if self._job_logs is None:
            return req
        lines = self._job_logs.take(job_id)
        if self._model_output is not None:
            lines += model_lines(await self._model_output(since, time.time()))
        return req.model_copy(update={"logs": cap(lines)}) if lines else req

    def _lease_token(self, job: LeasedJob) -> str:
        entry = self._state.inflight.get(job.id)
        return entry.lease_token if entry is not None else job.lease_token

    def _failed(self, job: LeasedJob, code: str, message: str) -> CompleteRequest:
        log.warning("job %s failed (%s): %s", job.id, code, message)
        return CompleteRequest(
            lease_token=self._lease_token(job),
            status="FAILED",
            error=ErrorInfo(code=code, message=message[:4000]),
        )

    async def _run_model(self, job: LeasedJob) -> list[Tensor]:
        """Infer, streaming the responses of a decoupled model (``runner/streaming.py``)."""
        decoupled = getattr(self._engine, "decoupled", None)
        if decoupled is not None and await decoupled(job.model, job.model_version):
            return await self._stream(job)
        return await self._infer(job)

    async def _stream(self, job: LeasedJob) -> list[Tensor]:
        """Each response stored as a chunk as it comes; the joined outputs at the end. While
        Triton is down before the first response, wait for it and retry (as ``_infer``)."""
        entry = self._state.inflight.get(job.id)

        def refused() -> None:  # cancelled or lease lost: stop (cancels the Triton request)
            if entry is not None and not entry.cancelled:
                entry.cancelled = True
                entry.task.cancel()

        sender = ChunkSender(self._client, job.id, self._lease_token(job), job.attempt, refused)
        responses: list[list[Tensor]] = []
        delay = 0.2
        try:
            while True:
                stream = self._engine.infer_stream(  # type: ignore[attr-defined]
                    job.model,
                    job.model_version,
                    job.inputs,
                    job.outputs,
                    job.parameters,
                    float(job.timeout_s),
                )
                try:
                    async with contextlib.aclosing(stream) as it:
                        async for outputs in it:
                            responses.append(outputs)
                            sender.add(outputs)
                    break
                except InferError as exc:
                    if not exc.transient or responses:
                        raise
                    log.info("job %s: Triton unavailable (%s); retrying when back", job.id, exc)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)
                    await self._state.triton_ready.wait()
            await sender.drain(float(job.timeout_s))  # every chunk stored before the result
        finally:
            await sender.aclose()
        log.info("job %s streamed %d responses in %d calls", job.id, len(responses), sender.calls)
        return join_responses(responses)

    async def _infer(self, job: LeasedJob) -> list[Tensor]:
        """Infer; while Triton is down (transient errors), wait for it and retry."""
        delay = 0.2
        while True:
            try:
                return await self._engine.infer(
                    job.model,
                    job.model_version,
                    job.inputs,
                    job.outputs,
                    job.parameters,
                    float(job.timeout_s),
                )
            except InferError as exc:
                if not exc.transient:
                    raise
                log.info("job %s: Triton unavailable (%s); retrying when it is back", job.id, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                await self._state.triton_ready.wait()

    async def _extend_loop(self, job: LeasedJob, *, wait_first: bool = True) -> None:
        """Extend the lease at about half its remaining time, until cancelled (at once
        without ``wait_first``: the job's timer waited the first half)."""
        while True:
            entry = self._state.inflight.get(job.id)
            if entry is None:
                return
            if wait_first:
                await asyncio.sleep(max(0.5, _expires_in(entry.lease_expires_at) / 2))
            wait_first = True
            try:
                out = await self._client.extend(job.id, entry.lease_token)
            except asyncio.CancelledError:
                raise
            except (Conflict, NotFound) as exc:
                log.info("job %s: extend refused (%s)", job.id, exc)
                entry.lease_lost = True
                entry.cancelled = True  # nothing is completed for it
                entry.task.cancel()
                return
            except Exception:
                log.warning("job %s: extending the lease failed", job.id, exc_info=True)
                await asyncio.sleep(1.0 + random.random())
                continue
            entry.lease_expires_at = out.lease_expires_at

    async def _complete(self, job: LeasedJob, req: CompleteRequest) -> None:
        delay = 0.5
        for attempt in range(1, COMPLETE_RETRIES + 1):
            try:
                await self.completions.complete(job.id, req)
            except asyncio.CancelledError:
                raise
            except Conflict as exc:
                self._state.counters.conflicts += 1
                log.warning("job %s: complete refused (%s): result dropped", job.id, exc)
                return
            except (Unauthorized, NotFound) as exc:
                self._state.counters.conflicts += 1
                log.warning("job %s: complete refused (%s): left to lease expiry", job.id, exc)
                return
            except ControlPlaneError as exc:
                log.warning("job %s: complete attempt %d failed: %s", job.id, attempt, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay *= 2
                continue
            if req.status == "SUCCEEDED":
                self._state.counters.succeeded += 1
            else:
                self._state.counters.failed += 1
            return
        self._state.counters.abandoned += 1
        log.error("job %s: could not complete; left to lease expiry", job.id)

    # ------------------------------------------------------------------ control
    def cancel(self, job_ids: list[str]) -> None:
        """Stop waiting on jobs the control plane cancelled (no complete is sent)."""
        for job_id in job_ids:
            entry = self._state.inflight.get(job_id)
            if entry is not None and not entry.cancelled:
                entry.cancelled = True
                entry.task.cancel()

    def running_ids(self) -> list[str]:
        return list(self._state.inflight)

    async def drain(self, grace_s: float) -> None:
        """Let in-flight jobs finish for ``grace_s``; abandon the rest (lease expiry)."""
        tasks = [e.task for e in self._state.inflight.values()]
        if tasks:
            log.info("draining %d in-flight job(s) for up to %.0fs", len(tasks), grace_s)
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.completions.aclose()
