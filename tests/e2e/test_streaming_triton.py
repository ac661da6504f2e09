"""Streaming outputs end to end: real control plane, real runner, real CPU Triton.

``python -m control_plane serve --embedded`` and ``gpufleet-runner start --backend docker``
run as processes; the runner starts the CPU Triton image and serves the decoupled
``token_stream`` model of model_repository/ (Python backend: one token per response,
``DELAY_MS`` apart, one model instance). The SDK's blocking client checks:

- ``fleet.stream`` (generate_stream, dispatched over the runner's channel, Triton's
  ``ModelStreamInfer``): the first token arrives while the model is still generating;
- a durable job streams its tokens (``stream_job``): in order, each once, across a
  reconnection with ``Last-Event-ID``, and again for a client that comes after the end; the
  job's result joins every token;
- a model that is not decoupled (``add_sub``) streams too: one event, its answer;
- hanging up a stream, and cancelling a streaming job, stop the model: Triton's log shows the
  request cancelled, and the one model instance is free for the next request at once (a model
  still generating would hold it for tens of seconds).

One control plane, one runner, one Triton container for the module; stopped by pid, the
container removed by id.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import Client, JobFailedError

from runner.backends.container_spec import LABEL_ROLE, LABEL_RUNNER
from tests import rig

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RUNNER_BIN = Path(sys.executable).parent / "gpufleet-runner"
READY = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
MODEL = "token_stream"
CANCELLED = "token_stream: request cancelled after"


def _stop(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Fleet:
    url: str
    client: Client
    runner_log: Path
    docker_host: str
    runner_name: str

    def triton_log(self) -> str:
        import docker

        client = docker.DockerClient(base_url=self.docker_host)
        try:
            filters = {"label": [f"{LABEL_RUNNER}={self.runner_name}", f"{LABEL_ROLE}=triton"]}
            return "".join(
                c.logs().decode(errors="replace") for c in client.containers.list(filters=filters)
            )
        finally:
            client.close()


def _wait_until_served(url: str, token: str, runner_log: Path, timeout: float = 300) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runners = httpx.get(f"{url}/v1/runners", headers=headers, timeout=30).json()
        for r in runners.get("runners", []):
            ready = {m["name"] for m in r["models"] if m["state"] == "READY"}
            if {MODEL, "add_sub"} <= ready:
                return
        time.sleep(1)
    pytest.fail(f"no runner served {MODEL} in time; runner log:\n" + runner_log.read_text())


@pytest.fixture(scope="module")
def fleet(
    docker_host: str,
    triton_image: str,
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    import docker

    tmp = tmp_path_factory.mktemp("streaming-e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    key_file = tmp / "admin.key"
    cp_log = tmp / "control-plane.log"
    port = rig.free_port()
    with cp_log.open("w") as out:
        cp = subprocess.Popen(
            [sys.executable, "-m", "control_plane", "serve", "--embedded", "--data-dir",
             str(tmp / "data"), "--host", "127.0.0.1", "--port", str(port),
             "--admin-key-file", str(key_file)],
            cwd=ROOT, stdout=out,
            env={**env, "GPUFLEET_STREAM_POLL_S": "0.1", "GPUFLEET_METRICS_PUBLIC": "true"},
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    runner: subprocess.Popen[Any] | None = None
    name = f"stream-e2e-{os.getpid()}"
    runner_log = tmp / "runner.log"
    client: Client | None = None
    try:
        url = ""
        deadline = time.monotonic() + 60
        while not url and time.monotonic() < deadline and cp.poll() is None:
            m = READY.search(cp_log.read_text())
            url = m.group(1) if m else ""
            time.sleep(0.1)
        assert url, "the control plane did not start:\n" + cp_log.read_text()
        client = Client(url, api_key=key_file.read_text().strip(), timeout=60.0)
        client.models.push(model_repository / MODEL)
        client.models.push(model_repository / "add_sub")
        join = client.admin.create_join_token().join_token
        runner_env = {
            **env,
            "GPUFLEET_RUNNER_STATE_DIR": str(tmp / "runner"),
            "GPUFLEET_RUNNER_NAME": name,
            "GPUFLEET_RUNNER_DOCKER_HOST": docker_host,
            "GPUFLEET_RUNNER_TRITON_IMAGE": triton_image,
            "GPUFLEET_RUNNER_MODEL_REPOSITORY": str(model_repository),
            "GPUFLEET_RUNNER_TRITON_HTTP_PORT": str(rig.free_port()),
            "GPUFLEET_RUNNER_TRITON_GRPC_PORT": str(rig.free_port()),
            "GPUFLEET_RUNNER_TRITON_METRICS_PORT": str(rig.free_port()),
            "GPUFLEET_RUNNER_STATUS_PORT": str(rig.free_port()),
            "GPUFLEET_RUNNER_SHM_SIZE": "256m",
            "GPUFLEET_RUNNER_ULIMITS": '{"stack": 67108864}',
        }
        with runner_log.open("w") as log:
            runner = subprocess.Popen(
                [str(RUNNER_BIN), "start", "--control-plane-url", url, "--join-token", join,
                 "--backend", "docker"],
                cwd=ROOT, env=runner_env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_until_served(url, client.access_token(), runner_log)
        yield Fleet(url, client, runner_log, docker_host, name)
    finally:
        if client is not None:
            client.close()
        if runner is not None:
            _stop(runner)
        _stop(cp, 30)
        dc = docker.DockerClient(base_url=docker_host)
        try:
            filters = {"label": [f"{LABEL_RUNNER}={name}", f"{LABEL_ROLE}=triton"]}
            for container in dc.containers.list(all=True, filters=filters):
                dc.api.remove_container(container.id, force=True)
        finally:
            dc.close()


def _word(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _instance_is_free(fleet: Fleet) -> float:
    """Seconds a 2-token stream takes: the model's one instance serves it only once the
    previous request stopped."""
    start = time.monotonic()
    chunks = list(fleet.client.stream(MODEL, {"PROMPT": "free now", "DELAY_MS": 0}))
    assert [_word(c.outputs["TOKEN"][0]) for c in chunks] == ["free", "now"]
    return time.monotonic() - start


def test_generate_stream_delivers_tokens_while_the_model_generates(fleet: Fleet) -> None:
    words = [f"w{i}" for i in range(6)]
    arrived: list[float] = []
    tokens: list[str] = []
    start = time.monotonic()
    for chunk in fleet.client.stream(MODEL, {"PROMPT": " ".join(words), "DELAY_MS": 400}):
        arrived.append(time.monotonic() - start)
        tokens.append(_word(chunk.outputs["TOKEN"][0]))
        assert int(chunk.outputs["INDEX"][0]) == chunk.index
        assert (chunk.model, chunk.version) == (MODEL, "1")
    assert tokens == words
    # The model sleeps 0.4 s between tokens, so it produces the last one >= 2 s after the
    # first: a first token that arrived before the last was generated arrives well apart
    # from it (buffered answers would arrive together at the end).
    assert arrived[-1] - arrived[0] >= 1.0, arrived
    metrics = httpx.get(f"{fleet.url}/metrics", timeout=30).text
    dispatched = [m for m in metrics.splitlines() if m.startswith("gpufleet_infer_dispatched")]
    assert any(f'model="{MODEL}"' in m and 'outcome="ok"' in m for m in dispatched), dispatched


def test_a_durable_job_streams_every_token_once_across_a_reconnection(fleet: Fleet) -> None:
    words = ["the", "quick", "brown", "fox", "jumps", "over"]
    job = fleet.client.submit(
        MODEL, {"PROMPT": np.array([" ".join(words)], dtype=np.object_),
                "DELAY_MS": np.array([150], dtype=np.int32)},
    )  # fmt: skip
    seen = []
    for chunk in fleet.client.stream_job(job.id):
        seen.append(chunk)
        if len(seen) == 2:
            break  # hang up; the job goes on
    for chunk in fleet.client.stream_job(job.id, after=seen[-1].event_id):
        seen.append(chunk)
    assert [_word(c.outputs["TOKEN"][0]) for c in seen] == words
    assert [c.event_id for c in seen] == [f"1-{i}" for i in range(6)]
    done = fleet.client.get(job.id)
    assert done.status == "SUCCEEDED"
    joined = fleet.client.outputs(done)
    assert [_word(v) for v in joined["TOKEN"]] == words
    assert joined["INDEX"].tolist() == list(range(6))
    late = list(fleet.client.stream_job(job.id))  # after the end: every chunk again
    assert [_word(c.outputs["TOKEN"][0]) for c in late] == words


def test_hanging_up_a_stream_stops_the_model(fleet: Fleet) -> None:
    before = fleet.triton_log().count(CANCELLED)
    stream = fleet.client.stream(MODEL, {"PROMPT": "tick", "MAX_TOKENS": 300, "DELAY_MS": 100})
    for chunk in stream:
        if chunk.index == 2:
            break
    stream.close()  # hang up now (a generator is closed when collected, too)
    # 297 tokens were left (~30 s): the instance is free at once only if the model stopped.
    assert _instance_is_free(fleet) < 10
    deadline = time.monotonic() + 30
    while fleet.triton_log().count(CANCELLED) <= before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert fleet.triton_log().count(CANCELLED) > before, fleet.triton_log()[-3000:]


def test_cancelling_a_streaming_job_stops_the_model(fleet: Fleet) -> None:
    before = fleet.triton_log().count(CANCELLED)
    job = fleet.client.submit(
        MODEL, {"PROMPT": np.array(["tock"], dtype=np.object_),
                "MAX_TOKENS": np.array([300], dtype=np.int32),
                "DELAY_MS": np.array([100], dtype=np.int32)},
    )  # fmt: skip
    stream = fleet.client.stream_job(job.id)
    for chunk in stream:
        if chunk.index == 2:
            fleet.client.cancel(job.id)
            break
    stream.close()
    with pytest.raises(JobFailedError) as info:
        list(fleet.client.stream_job(job.id))  # the end of the stream: CANCELLED
    assert info.value.status == "CANCELLED"
    assert _instance_is_free(fleet) < 10
    deadline = time.monotonic() + 30
    while fleet.triton_log().count(CANCELLED) <= before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert fleet.triton_log().count(CANCELLED) > before, fleet.triton_log()[-3000:]


def test_a_model_that_is_not_decoupled_streams_its_one_answer(fleet: Fleet) -> None:
    chunks = list(fleet.client.stream("add_sub", {"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1]}))
    assert len(chunks) == 1
    np.testing.assert_array_equal(chunks[0].outputs["OUTPUT0"], [2, 3, 4, 5])
    np.testing.assert_array_equal(chunks[0].outputs["OUTPUT1"], [0, 1, 2, 3])
