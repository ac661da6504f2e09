"""Per-job logs on the runner: the lines logged while a job's context is bound are kept for
that job only, capped to the newest, and Triton's output is added as ``model`` lines."""

from __future__ import annotations

import asyncio
import logging

from gpufleet._logs import bind

from runner.joblogs import JobLogs, cap, model_lines


def test_lines_of_an_open_job_are_kept_for_it_only() -> None:
    handler = JobLogs()
    log = logging.getLogger("gpufleet.test.joblogs")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        handler.start("job_1")

        async def job(job_id: str, text: str) -> None:
            bind(job=job_id)  # as the job loop does for each job's task
            log.info("%s", text)

        async def both() -> None:
            await asyncio.gather(
                asyncio.create_task(job("job_1", "one")),
                asyncio.create_task(job("job_2", "two")),  # not open: not kept
            )

        asyncio.run(both())
        log.info("no job bound here")
        lines = handler.take("job_1")
        assert len(lines) == 1 and lines[0].startswith("runner | ") and lines[0].endswith(" one")
        assert " INFO " in lines[0]
        assert handler.take("job_1") == []  # closed
    finally:
        log.removeHandler(handler)


def test_a_jobs_lines_are_capped_to_the_newest() -> None:
    handler = JobLogs(limit=200)
    handler.start("job_1")
    for i in range(50):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "line %d", (i,), None)
        record.job = "job_1"
        handler.emit(record)
    lines = handler.take("job_1")
    assert lines[0].startswith("runner | … (earlier lines dropped")
    assert lines[-1].endswith("line 49") and sum(len(x) + 1 for x in lines[1:]) <= 200


def test_cap_keeps_the_newest_lines_and_says_so() -> None:
    text = cap([f"l{i}" for i in range(100)], limit=30)
    assert text.endswith("l99\n") and text.startswith("… (earlier lines dropped")
    assert cap(["a", "b"]) == "a\nb\n"
    assert model_lines("12:00:00.001 hello\n\n12:00:00.002 bye\n") == [
        "model  | 12:00:00.001 hello",
        "model  | 12:00:00.002 bye",
    ]
