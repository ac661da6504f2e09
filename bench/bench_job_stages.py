"""CPU per stage of one durable job on the embedded SQLite store, in process, one job at a time.

What the control plane runs for each job of ``bench_runner.py``'s job rows, minus HTTP and the
WebSocket: the submit body parsed (``parse_body``), a keyed ``submit``, a one-shot ``lease``
of one job and its answer serialised as the channel sends it, the runner's ``complete`` body
validated and committed (``complete_batch`` of one), and the terminal view read and
serialised (``wait``). Each stage is timed with this thread's CPU clock
(``time.thread_time``), so the figures are the stage's own CPU (a busy machine slows them,
but other processes' time is not counted); the table shows the median and mean over ``-n``
jobs, in microseconds.

    .venv/bin/python bench/bench_job_stages.py -n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from gpufleet.wire import (  # noqa: E402
    BatchCompleteRequest,
    JobRequest,
    LeaseRequest,
    LeaseResponse,
    ModelRef,
)

from bench.bench_queue import OUTPUTS, USER, sqlite_services  # noqa: E402
from control_plane.api.http import parse_body  # noqa: E402
from control_plane.composition import Services  # noqa: E402
from tests.contract.fleet import job  # noqa: E402

RUNNER = "run_bench"
RUN_TAG = uuid.uuid4().hex[:8]  # Idempotency-Keys of this process
MODELS = [ModelRef(name="add_sub", version="1")]
STAGES = (
    "parse submit body",
    "submit (keyed)",
    "lease (1 job)",
    "lease answer JSON",
    "parse complete body",
    "complete (1 job)",
    "wait (terminal view)",
    "view JSON",
)


async def one_job(svc: Services, body: bytes, i: int, out: dict[str, list[float]]) -> None:
    jobs = svc.jobs
    clock = time.thread_time
    t = [clock()]
    req = parse_body(body, JobRequest)
    t.append(clock())
    view, _ = jobs.submit(USER, req, f"bench-{RUN_TAG}-{i}")
    t.append(clock())
    leased = (await jobs.lease(RUNNER, None, LeaseRequest(models=MODELS, max_jobs=1))).jobs
    t.append(clock())
    LeaseResponse(jobs=leased).model_dump_json(exclude_none=True)
    t.append(clock())
    [lj] = leased
    outputs = [o.model_dump(exclude_none=True) for o in OUTPUTS]
    item = {"job_id": lj.id, "lease_token": lj.lease_token, "status": "SUCCEEDED"}
    t.append(clock())  # (building the runner's body is not the control plane's)
    complete = BatchCompleteRequest.model_validate({"results": [{**item, "outputs": outputs}]})
    t.append(clock())
    [result] = jobs.complete_batch(RUNNER, complete.results)
    assert result.status == "committed", result
    t.append(clock())
    done = await jobs.wait(USER, view.id, 1.0)
    assert done.status == "SUCCEEDED", done
    t.append(clock())
    done.model_dump_json()
    t.append(clock())
    spans = [b - a for a, b in itertools.pairwise(t)]
    del spans[4]  # the runner's body
    for name, span in zip(STAGES, spans, strict=True):
        out[name].append(span * 1e6)


async def run(svc: Services, n: int) -> dict[str, list[float]]:
    body = json.dumps(job().model_dump(exclude_none=True)).encode()
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    for i in range(n):
        await one_job(svc, body, i, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="jobs (the first 10% are warm-up)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    with sqlite_services(poll_interval_s=0.5) as svc:
        out = asyncio.run(run(svc, args.n))
    skip = args.n // 10
    print(f"\none job at a time, {args.n - skip} jobs (thread CPU, microseconds per job)")
    print(f"{'stage':<22} {'median':>8} {'mean':>8}")
    total = 0.0
    for name in STAGES:
        values = out[name][skip:]
        total += statistics.mean(values)
        print(f"{name:<22} {statistics.median(values):8.0f} {statistics.mean(values):8.0f}")
    print(f"{'total':<22} {'':>8} {total:8.0f}")


if __name__ == "__main__":
    main()
