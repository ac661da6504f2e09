"""Streaming outputs through a real control plane process, with a hand-driven runner.

``python -m control_plane serve --embedded`` runs on loopback; the test plays the runner over
its real WebSocket channel (signed like a runner) so it decides exactly when each response
is produced, and the client side is the SDK's ``AsyncClient`` (``stream``/``stream_job``)
or plain HTTP:

- ``generate_stream`` on the dispatch path: each ``chunk`` frame reaches the client before
  the runner produces the next; hanging up sends the runner ``cancel``;
- a durable job's chunks (``chunks`` calls over the channel, fenced by the lease token) are
  followed with ``GET /v1/jobs/{id}/stream``: in order, each once, resumable with
  ``Last-Event-ID``, complete for a client that comes after the end; a cancelled job's next
  chunks are refused (409), which is what stops a real runner;
- ``generate_stream`` with no runner connected falls back to a durable job and follows it.

The real runner with a real Triton is in tests/e2e/test_streaming_triton.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpufleet import AsyncClient, Client, JobFailedError, signing
from gpufleet.errors import InvalidRequestError, NotFoundError
from websockets.asyncio.client import ClientConnection, connect

from tests.helpers.procs import ControlPlaneProc, start_control_plane

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("streaming-channel")]

REPO = Path(__file__).resolve().parents[2]
MODEL = "token_stream"
REF = [{"name": MODEL, "version": "1"}]
STEP_S = 20.0


@dataclass
class Fleet:
    cp: ControlPlaneProc
    token: str
    join_token: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("streaming")
    env = {"GPUFLEET_IMPLICIT_MAX_REPLICAS": "0", "GPUFLEET_STREAM_POLL_S": "0.1"}
    cp = start_control_plane(work / "cp", env)
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=STEP_S) as client:
            client.models.push(REPO / "model_repository" / MODEL)
            join = client.admin.create_join_token(expires_in_s=3600, max_uses=50).join_token
        token = httpx.post(
            f"{cp.url}/v1/auth/token", json={"api_key": cp.admin_key}, timeout=STEP_S
        ).json()["access_token"]
        yield Fleet(cp, token, join)
    finally:
        cp.stop()


def register(fleet: Fleet, name: str) -> tuple[str, str]:
    r = httpx.post(
        f"{fleet.cp.url}/v1/runners/register",
        json={"join_token": fleet.join_token, "name": name},
        timeout=STEP_S,
    )
    assert r.status_code == 201, r.text
    return r.json()["runner_id"], r.json()["secret"]


class HandRunner:
    """A runner's channel driven by the test: frames in, frames out."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._rid = 0
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame.get("type") == "reply":
                self.replies.pop(frame["rid"]).set_result(frame)
            else:
                await self.frames.put(frame)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), STEP_S)

    async def call(self, kind: str, body: Any) -> dict[str, Any]:
        self._rid += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[self._rid] = fut
        await self.ws.send(json.dumps({"type": kind, "rid": self._rid, "body": body}))
        return await asyncio.wait_for(fut, STEP_S)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))


def word(chunk: Any) -> str:
    """A chunk's TOKEN as text (job streams decode BYTES to ``bytes``, as ``infer`` does)."""
    value = chunk.outputs["TOKEN"][0]
    return value.decode() if isinstance(value, bytes) else str(value)


def token_outputs(word: str, index: int) -> list[dict[str, Any]]:
    return [
        {"name": "TOKEN", "datatype": "BYTES", "shape": [1], "data": [word]},
        {"name": "INDEX", "datatype": "INT32", "shape": [1], "data": [index]},
    ]


async def hand_runner(fleet: Fleet, name: str, models: list[dict[str, str]]) -> Any:
    runner_id, secret = await asyncio.to_thread(register, fleet, name)
    path = f"/v1/runners/{runner_id}/channel"
    headers = signing.sign_headers(runner_id, secret, "GET", path, "", b"")
    url = f"ws://{fleet.cp.url.removeprefix('http://')}{path}"
    ws = await connect(url, additional_headers=headers, proxy=None)
    await ws.send(json.dumps({"type": "hello", "models": models, "capacity": 4}))
    runner = HandRunner(ws)
    # Frames are handled in order: once a later call is answered, the hello took effect.
    nothing = [{"name": "nothing", "version": "1"}]
    await runner.call("lease", {"models": nothing, "max_jobs": 1, "wait_s": 0})
    return runner


@pytest.fixture
async def sdk(fleet: Fleet) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(fleet.cp.url, api_key=fleet.cp.admin_key, timeout=STEP_S) as c:
        yield c


# --------------------------------------------------------------------------- dispatch path
async def test_generate_stream_delivers_each_response_as_produced_and_cancels_on_hangup(
    fleet: Fleet, sdk: AsyncClient
) -> None:
    runner = await hand_runner(fleet, "streamer", REF)
    try:
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def consume(limit: int | None) -> None:
            stream = sdk.stream(MODEL, {"PROMPT": "alpha beta gamma", "DELAY_MS": 5})
            async for chunk in stream:
                await got.put(chunk)
                if limit is not None and chunk.index + 1 >= limit:
                    break  # hang up mid-stream
            await got.put(None)

        consumer = asyncio.create_task(consume(None))
        frame = await runner.next()
        assert (frame["type"], frame["model"], frame["version"]) == ("stream", MODEL, "1")
        inputs = {t["name"]: t for t in frame["inputs"]}
        assert inputs["PROMPT"] == {
            "name": "PROMPT", "datatype": "BYTES", "shape": [1], "data": ["alpha beta gamma"]
        }  # fmt: skip
        assert inputs["DELAY_MS"]["datatype"] == "INT32" and inputs["DELAY_MS"]["data"] == [5]
        for i, word in enumerate(("alpha", "beta", "gamma")):
            await runner.send(
                {"type": "chunk", "id": frame["id"], "outputs": token_outputs(word, i)}
            )
            # the client has this response before the runner produces the next one
            chunk = await asyncio.wait_for(got.get(), STEP_S)
            assert chunk.index == i and list(chunk.outputs["TOKEN"]) == [word]
            assert int(chunk.outputs["INDEX"][0]) == i and chunk.model == MODEL
        await runner.send({"type": "result", "id": frame["id"], "outputs": []})
        assert await asyncio.wait_for(got.get(), STEP_S) is None
        await asyncio.wait_for(consumer, STEP_S)

        # The client hangs up after the first response: the runner is told to cancel.
        consumer = asyncio.create_task(consume(1))
        frame = await runner.next()
        await runner.send({"type": "chunk", "id": frame["id"], "outputs": token_outputs("a", 0)})
        await asyncio.wait_for(consumer, STEP_S)
        cancel = await runner.next()
        assert cancel == {"type": "cancel", "id": frame["id"]}

        # The runner's error ends the stream with the error, raised by the SDK.
        consumer = asyncio.create_task(consume(None))
        frame = await runner.next()
        await runner.send(
            {"type": "error", "id": frame["id"], "code": "invalid_input", "message": "no"}
        )
        with pytest.raises(InvalidRequestError, match="no"):
            await asyncio.wait_for(consumer, STEP_S)
    finally:
        await runner.ws.close()


async def test_generate_stream_refuses_bad_bodies_before_streaming(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.cp.url, headers=fleet.admin) as http:
        url = f"/v2/models/{MODEL}/generate_stream"
        r = await http.post(url, json={"NOPE": 1})
        assert r.status_code == 422 and "NOPE" in r.json()["error"], r.text
        r = await http.post(url, json=["PROMPT"])
        assert r.status_code == 422, r.text
        r = await http.post("/v2/models/missing/generate_stream", json={"PROMPT": "x"})
        assert r.status_code == 404, r.text
        r = await http.post(url, json={"PROMPT": "x"}, headers={"Authorization": "Bearer no"})
        assert r.status_code == 401, r.text


# --------------------------------------------------------------------------- durable jobs
async def _lease(runner: HandRunner, job_id: str) -> dict[str, Any]:
    leased = await runner.call("lease", {"models": REF, "max_jobs": 1, "wait_s": 5})
    assert leased["status"] == 200, leased
    (job,) = leased["body"]["jobs"]
    assert job["id"] == job_id
    return dict(job)


async def _chunks(
    runner: HandRunner, job: dict[str, Any], words: list[str], start: int
) -> dict[str, Any]:
    body = {
        "job_id": job["id"],
        "lease_token": job["lease_token"],
        "attempt": job["attempt"],
        "chunks": [
            {"seq": start + i, "outputs": token_outputs(w, start + i)} for i, w in enumerate(words)
        ],
    }
    return await runner.call("chunks", body)


async def test_a_job_stream_is_ordered_resumable_and_complete_for_late_clients(
    fleet: Fleet, sdk: AsyncClient
) -> None:
    runner = await hand_runner(fleet, "job-streamer", [])
    try:
        job = await sdk.submit(MODEL, {"PROMPT": ["one two three four five"]})
        leased = await _lease(runner, job.id)
        assert leased["attempt"] == 1
        got: list[Any] = []

        async def follow(after: str | None, stop_after: int | None) -> None:
            async for chunk in sdk.stream_job(job.id, after=after):
                got.append(chunk)
                if stop_after is not None and len(got) >= stop_after:
                    return

        # A client following from the start sees the first two chunks, then hangs up.
        first = asyncio.create_task(follow(None, 2))
        reply = await _chunks(runner, leased, ["one", "two"], 0)
        assert reply["status"] == 200 and reply["body"]["stored"] == 2, reply
        await asyncio.wait_for(first, STEP_S)
        assert [c.event_id for c in got] == ["1-0", "1-1"]
        # More are produced while nobody listens; the client comes back after "1-1".
        assert (await _chunks(runner, leased, ["three"], 2))["status"] == 200
        resumed = asyncio.create_task(follow(got[-1].event_id, None))
        await asyncio.sleep(0.3)
        assert (await _chunks(runner, leased, ["four", "five"], 3))["status"] == 200
        done = {"job_id": job.id, "lease_token": leased["lease_token"], "status": "SUCCEEDED",
                "outputs": [{"name": "TOKEN", "datatype": "BYTES", "shape": [5],
                             "data": ["one", "two", "three", "four", "five"]}]}  # fmt: skip
        reply = await runner.call("complete", {"results": [done]})
        assert reply["body"]["results"][0]["status"] == "committed", reply
        await asyncio.wait_for(resumed, STEP_S)
        words = [word(c) for c in got]
        assert words == ["one", "two", "three", "four", "five"]  # each once, in order
        assert [int(c.outputs["INDEX"][0]) for c in got] == [0, 1, 2, 3, 4]

        # After the end the stream still has every chunk, then the job.
        late = [c async for c in sdk.stream_job(job.id)]
        assert [c.event_id for c in late] == ["1-0", "1-1", "1-2", "1-3", "1-4"]
        async with httpx.AsyncClient(base_url=fleet.cp.url, headers=fleet.admin) as http:
            r = await http.get(f"/v1/jobs/{job.id}/stream", headers={"Last-Event-ID": "1-3"})
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [e for e in r.text.split("\n\n") if e.strip()]
            assert events[0].startswith("event: chunk\nid: 1-4\ndata: "), events
            assert events[1].startswith("event: end\ndata: "), events
            assert json.loads(events[1].split("data: ", 1)[1])["status"] == "SUCCEEDED"
            r = await http.get(f"/v1/jobs/{job.id}/stream?after=4")
            assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "after"
            r = await http.get(f"/v1/jobs/{job.id}/stream", headers={"Last-Event-ID": "x-1"})
            assert r.status_code == 422, r.text
            r = await http.get("/v1/jobs/job_nope/stream")
            assert r.status_code == 404, r.text
        # Chunks of a finished job are refused (the lease fence).
        stale = await _chunks(runner, leased, ["six"], 5)
        assert stale["status"] == 409, stale
    finally:
        await runner.ws.close()


async def test_cancelling_a_streaming_job_refuses_its_next_chunks(
    fleet: Fleet, sdk: AsyncClient
) -> None:
    runner = await hand_runner(fleet, "cancelled-streamer", [])
    try:
        job = await sdk.submit(MODEL, {"PROMPT": ["a b c"]})
        leased = await _lease(runner, job.id)
        assert (await _chunks(runner, leased, ["a"], 0))["status"] == 200
        following = asyncio.create_task(_collect(sdk, job.id))
        await asyncio.sleep(0.3)
        await sdk.cancel(job.id)
        refused = await _chunks(runner, leased, ["b"], 1)
        assert refused["status"] == 409 and refused["error"]["code"] == "conflict", refused
        with pytest.raises(JobFailedError) as info:
            await asyncio.wait_for(following, STEP_S)
        assert info.value.status == "CANCELLED"
    finally:
        await runner.ws.close()


async def _collect(sdk: AsyncClient, job_id: str) -> list[Any]:
    return [c async for c in sdk.stream_job(job_id)]


async def test_a_user_of_another_tenant_cannot_follow_the_job(
    fleet: Fleet, sdk: AsyncClient
) -> None:
    job = await sdk.submit(MODEL, {"PROMPT": ["secret"]})
    created = await sdk.admin.create_api_key("other", "user")
    async with AsyncClient(fleet.cp.url, api_key=created.api_key, timeout=STEP_S) as other:
        with pytest.raises(NotFoundError):
            await _collect(other, job.id)
    await sdk.cancel(job.id)


# --------------------------------------------------------------------------- job fallback
async def test_generate_stream_without_a_connected_runner_follows_a_durable_job(
    fleet: Fleet, sdk: AsyncClient
) -> None:
    """No channel serves the model: the call becomes a job; a runner leasing it streams."""
    runner = await hand_runner(fleet, "lease-only", [])  # serves nothing over dispatch
    try:
        got: list[Any] = []

        async def consume() -> None:
            async for chunk in sdk.stream(MODEL, {"PROMPT": "x y"}):
                got.append(chunk)

        consumer = asyncio.create_task(consume())
        leased: dict[str, Any] | None = None
        deadline = time.monotonic() + STEP_S
        while leased is None and time.monotonic() < deadline:
            reply = await runner.call("lease", {"models": REF, "max_jobs": 1, "wait_s": 2})
            jobs = reply["body"]["jobs"]
            leased = jobs[0] if jobs else None
        assert leased is not None, "the fallback job was not queued"
        assert leased["timeout_s"] > 0
        assert (await _chunks(runner, leased, ["x"], 0))["status"] == 200
        deadline = time.monotonic() + STEP_S
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [word(c) for c in got] == ["x"]  # before the job ends
        assert (await _chunks(runner, leased, ["y"], 1))["status"] == 200
        done = {"job_id": leased["id"], "lease_token": leased["lease_token"],
                "status": "SUCCEEDED", "outputs": []}  # fmt: skip
        await runner.call("complete", {"results": [done]})
        await asyncio.wait_for(consumer, STEP_S)
        assert [word(c) for c in got] == ["x", "y"]
    finally:
        await runner.ws.close()


# --------------------------------------------------------------------------- retried jobs
@pytest.fixture
def short_leases(tmp_path: Path) -> Iterator[Fleet]:
    """A control plane of its own whose leases expire after 1 s (swept every 0.2 s)."""
    env = {
        "GPUFLEET_IMPLICIT_MAX_REPLICAS": "0",
        "GPUFLEET_STREAM_POLL_S": "0.1",
        "GPUFLEET_LEASE_DURATION_S": "1",
        "GPUFLEET_SWEEP_INTERVAL_S": "0.2",
    }
    cp = start_control_plane(tmp_path / "cp", env)
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=STEP_S) as client:
            client.models.push(REPO / "model_repository" / MODEL)
            join = client.admin.create_join_token(max_uses=50).join_token
        token = httpx.post(
            f"{cp.url}/v1/auth/token", json={"api_key": cp.admin_key}, timeout=STEP_S
        ).json()["access_token"]
        yield Fleet(cp, token, join)
    finally:
        cp.stop()


async def test_a_retried_job_streams_again_under_its_next_attempt(short_leases: Fleet) -> None:
    fleet = short_leases
    runner = await hand_runner(fleet, "lost-lease", [])
    try:
        async with AsyncClient(fleet.cp.url, api_key=fleet.cp.admin_key, timeout=STEP_S) as sdk:
            job = await sdk.submit(MODEL, {"PROMPT": ["p q"]})
            first = await _lease(runner, job.id)
            assert (await _chunks(runner, first, ["p", "q"], 0))["status"] == 200
            # No extension: the lease expires, the sweep requeues the job, it is leased again.
            second: dict[str, Any] | None = None
            deadline = time.monotonic() + STEP_S
            while second is None and time.monotonic() < deadline:
                reply = await runner.call("lease", {"models": REF, "max_jobs": 1, "wait_s": 1})
                second = (reply["body"]["jobs"] or [None])[0]
            assert second is not None and second["attempt"] == 2
            # The first attempt's token no longer stores anything.
            assert (await _chunks(runner, first, ["late"], 2))["status"] == 409
            assert (await _chunks(runner, second, ["p2"], 0))["status"] == 200
            done = {"job_id": job.id, "lease_token": second["lease_token"],
                    "status": "SUCCEEDED", "outputs": []}  # fmt: skip
            await runner.call("complete", {"results": [done]})
            chunks = [c async for c in sdk.stream_job(job.id)]
            assert [(c.attempt, c.event_id, word(c)) for c in chunks] == [
                (1, "1-0", "p"), (1, "1-1", "q"), (2, "2-0", "p2")
            ]  # fmt: skip
        async with httpx.AsyncClient(base_url=fleet.cp.url, headers=fleet.admin) as http:
            r = await http.get(f"/v1/jobs/{job.id}/stream", headers={"Last-Event-ID": "1-0"})
            kinds = [e.split("\n")[0] for e in r.text.split("\n\n") if e.strip()]
            assert kinds == ["event: chunk", "event: attempt", "event: chunk", "event: end"]
            assert 'data: {"attempt": 2}' in r.text
    finally:
        await runner.ws.close()
