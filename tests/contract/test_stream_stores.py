"""Contract of ``StreamStore`` (storage/protocols_streams.py) on SQLite and DynamoDB (moto)."""

from __future__ import annotations

from control_plane.storage.protocols import JobRecordStore
from control_plane.storage.protocols_streams import StreamStore
from tests.contract.test_job_stores import claim, record


def _tokens(outputs: list[dict[str, object]]) -> list[object]:
    return [o["data"] for o in outputs]


def tok(text: str) -> list[dict[str, object]]:
    return [{"name": "TOKEN", "datatype": "BYTES", "shape": [1], "data": [text]}]


def test_chunks_need_the_running_lease(jobs: JobRecordStore, streams: StreamStore) -> None:
    jobs.create_job(record())
    assert not streams.append_chunks("job_1", "l1", 1, [(0, tok("a"))], 1.0, 9e9)  # queued
    claim(jobs)
    assert not streams.append_chunks("job_1", "bad", 1, [(0, tok("a"))], 1.0, 9e9)
    assert not streams.append_chunks("job_nope", "l1", 1, [(0, tok("a"))], 1.0, 9e9)
    assert streams.read_chunks("job_1", None, 10) == []
    assert streams.append_chunks("job_1", "l1", 1, [(0, tok("a")), (1, tok("b"))], 5.0, 9e9)
    got = streams.read_chunks("job_1", None, 10)
    assert [(c.attempt, c.seq, c.outputs) for c in got] == [(1, 0, tok("a")), (1, 1, tok("b"))]
    assert got[0].created_at == 5.0 and got[0].job_id == "job_1"
    # Terminal: the token no longer fences anything in; what was stored stays readable.
    assert jobs.finish_running("job_1", "l1", "CANCELLED", now=6.0)
    assert not streams.append_chunks("job_1", "l1", 1, [(2, tok("c"))], 7.0, 9e9)
    assert len(streams.read_chunks("job_1", None, 10)) == 2


def test_read_after_a_position_in_order_across_attempts(
    jobs: JobRecordStore, streams: StreamStore
) -> None:
    jobs.create_job(record())
    claim(jobs)
    # Out of order and retried: stored once per position, read back in (attempt, seq) order.
    assert streams.append_chunks("job_1", "l1", 1, [(i, tok(f"1-{i}")) for i in (2, 0)], 1.0, 9e9)
    assert streams.append_chunks("job_1", "l1", 1, [(1, tok("1-1")), (0, tok("1-0"))], 1.0, 9e9)
    assert streams.append_chunks("job_1", "l1", 2, [(0, tok("2-0"))], 2.0, 9e9)
    assert streams.append_chunks("job_1", "l1", 1, [(10, tok("1-10"))], 3.0, 9e9)
    every = [c.position for c in streams.read_chunks("job_1", None, 100)]
    assert every == [(1, 0), (1, 1), (1, 2), (1, 10), (2, 0)]
    assert [c.position for c in streams.read_chunks("job_1", (1, 1), 100)] == [
        (1, 2),
        (1, 10),
        (2, 0),
    ]
    assert [c.position for c in streams.read_chunks("job_1", (1, 10), 100)] == [(2, 0)]
    assert streams.read_chunks("job_1", (2, 0), 100) == []
    assert [c.position for c in streams.read_chunks("job_1", None, 2)] == [(1, 0), (1, 1)]
    assert _tokens(streams.read_chunks("job_1", (0, 0), 1)[0].outputs) == [["1-0"]]


def test_a_long_stream_reads_in_pages(jobs: JobRecordStore, streams: StreamStore) -> None:
    jobs.create_job(record())
    claim(jobs)
    for start in range(0, 150, 50):
        chunks = [(i, tok(str(i))) for i in range(start, start + 50)]
        assert streams.append_chunks("job_1", "l1", 1, chunks, 1.0, 9e9)
    seen: list[int] = []
    after = None
    while page := streams.read_chunks("job_1", after, 64):
        seen += [c.seq for c in page]
        after = page[-1].position
    assert seen == list(range(150))


def test_ping(streams: StreamStore) -> None:
    streams.ping()
