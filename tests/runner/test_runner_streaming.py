"""Streamed jobs in the runner's job loop (runner/streaming.py): a decoupled engine's
responses go to the (fake) control plane as chunks while the model runs, in order, all
before the result; a refused chunk stops the job and its model stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from gpufleet.wire import OutputRequest, Tensor

from runner.streaming import join_responses
from tests.runner.runner_fakes import FakeControlPlane, FakeEngine, job
from tests.runner.test_runner_jobloop import Rig


class StreamingEngine(FakeEngine):
    """A decoupled model: ``count`` responses ``gap`` seconds apart, TOKEN/INDEX each."""

    def __init__(self, count: int = 5, gap: float = 0.05) -> None:
        super().__init__()
        self.count = count
        self.gap = gap
        self.produced_at: list[float] = []
        self.closed_early = False

    async def decoupled(self, model: str, version: str) -> bool:
        return True

    async def infer_stream(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> AsyncGenerator[list[Tensor], None]:
        done = False
        try:
            for i in range(self.count):
                if i:
                    await asyncio.sleep(self.gap)
                self.produced_at.append(asyncio.get_running_loop().time())
                yield [
                    Tensor(name="TOKEN", datatype="BYTES", shape=[1], data=[f"t{i}"]),
                    Tensor(name="INDEX", datatype="INT32", shape=[1], data=[i]),
                ]
            done = True
        finally:
            self.closed_early = not done


def streaming_rig(tmp_path: Path, cp: FakeControlPlane, engine: StreamingEngine) -> Rig:
    rig = Rig(tmp_path, cp)
    rig.engine = engine
    rig.loop._engine = engine
    return rig


async def test_chunks_go_out_as_produced_in_order_before_the_result(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_s")])
    engine = StreamingEngine(count=5, gap=0.1)
    rig = streaming_rig(tmp_path, cp, engine)
    await rig.run_until(lambda: "job_s" in cp.completed)
    seqs = [c["seq"] for body in cp.chunks for c in body["chunks"]]
    assert seqs == [0, 1, 2, 3, 4]
    first = cp.chunks[0]
    assert (first["job_id"], first["lease_token"], first["attempt"]) == ("job_s", "tok-job_s", 1)
    assert first["chunks"][0]["outputs"][0]["data"] == ["t0"]
    # 0.1 s apart, each response is its own call: the first went out before the last existed.
    assert len(cp.chunks) == 5
    done = cp.completed["job_s"]
    assert done["status"] == "SUCCEEDED"
    outputs = {o["name"]: o for o in done["outputs"]}
    assert outputs["TOKEN"]["data"] == ["t0", "t1", "t2", "t3", "t4"]
    assert outputs["TOKEN"]["shape"] == [5] and outputs["INDEX"]["data"] == [0, 1, 2, 3, 4]


async def test_a_refused_chunk_stops_the_job_and_its_model_stream(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_c")])
    cp.conflict_on_chunks.add("job_c")  # cancelled at the control plane
    engine = StreamingEngine(count=100, gap=0.05)
    rig = streaming_rig(tmp_path, cp, engine)
    await rig.run_until(lambda: rig.state.counters.cancelled == 1)
    assert "job_c" not in cp.completed
    assert engine.closed_early and len(engine.produced_at) < 20


async def test_a_control_plane_without_streams_still_gets_the_result(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_n")])
    cp.chunks_route = False
    rig = streaming_rig(tmp_path, cp, StreamingEngine(count=3, gap=0.0))
    await rig.run_until(lambda: "job_n" in cp.completed)
    assert cp.completed["job_n"]["status"] == "SUCCEEDED"
    tokens = {o["name"]: o for o in cp.completed["job_n"]["outputs"]}["TOKEN"]
    assert tokens["data"] == ["t0", "t1", "t2"]


def test_join_responses_concatenates_or_keeps_the_last() -> None:
    a = Tensor(name="X", datatype="FP32", shape=[1, 2], data=[1, 2])
    b = Tensor(name="X", datatype="FP32", shape=[2, 2], data=[3, 4, 5, 6])
    (joined,) = join_responses([[a], [b]])
    assert (joined.shape, joined.data) == ([3, 2], [1, 2, 3, 4, 5, 6])
    c = Tensor(name="X", datatype="FP32", shape=[1, 3], data=[7, 8, 9])  # inner dims differ
    assert join_responses([[a], [c]]) == [c]
    assert join_responses([]) == []
