"""The dispatcher (control_plane/services/dispatch.py) over in-memory channels.

Each ``FakeRunner`` is a real channel endpoint: its ``send`` coroutine records the frames the
dispatcher writes, and the test answers an ``infer`` frame through ``Dispatcher.resolve`` the
way the channel route does when the runner's ``result``/``error`` frame arrives. No sockets,
no sleeps beyond the dispatcher's own (short) queue waits; every await has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gpufleet.channel import Outbox, pack_frame, unpack_frame, unpack_frames

from control_plane.errors import RateLimited, Timeout, Unavailable
from control_plane.services.dispatch import Channel, Dispatcher, InferenceFailed, RawRequest

MODEL, VERSION = "add_sub", "1"
KEY = (MODEL, VERSION)
DEADLINE_S = 2.0  # no step of these tests legitimately takes longer


class FakeRunner:
    """One connected runner: records frames; ``answer`` resolves them like the route does."""

    def __init__(self, dispatcher: Dispatcher, runner_id: str, *, fail: Exception | None = None):
        self.dispatcher = dispatcher
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.outstanding: dict[int, dict[str, Any]] = {}  # infer frames not yet answered
        self.most_outstanding = 0
        self.fail = fail
        self.channel = Channel(runner_id=runner_id, send=self.send)

    async def send(self, data: str | bytes) -> None:
        if self.fail is not None:
            raise self.fail
        if isinstance(data, bytes):  # passthrough: the JSON header, the raw body after it
            frame, body = unpack_frame(data)
            frame["body"] = body
        else:
            frame = json.loads(data)
        self.sent.append(frame)
        if frame["type"] == "infer":
            assert self.channel.inflight <= self.channel.capacity, "over capacity"
            self.outstanding[frame["id"]] = frame
            self.most_outstanding = max(self.most_outstanding, len(self.outstanding))
        self.frames.put_nowait(frame)

    async def next_frame(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), DEADLINE_S)

    def answer(self, frame: dict[str, Any], **reply: Any) -> None:
        """Answer ``frame``: a ``result`` echoing its inputs as outputs, or ``reply``."""
        self.outstanding.pop(frame["id"], None)
        msg = reply or {"type": "result", "outputs": frame["inputs"]}
        self.dispatcher.resolve(
            self.channel, {"id": frame["id"], "runner_id": self.channel.runner_id, **msg}
        )

    def infers(self) -> list[dict[str, Any]]:
        return [f for f in self.sent if f["type"] == "infer"]


def connect(
    d: Dispatcher,
    runner_id: str,
    capacity: int = 1,
    models: frozenset[tuple[str, str]] = frozenset({KEY}),
    **kw: Any,
) -> FakeRunner:
    """Attach a runner and send its ``hello`` (models, capacity)."""
    r = FakeRunner(d, runner_id, **kw)
    d.attach(r.channel)
    d.update(r.channel, models, capacity)
    return r


def request(n: int = 0) -> dict[str, Any]:
    """A request whose one input carries ``n`` (to tell requests apart in frames)."""
    tensor = {"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [n]}
    return {"inputs": [tensor], "parameters": {"n": n}}


def call(
    d: Dispatcher, n: int = 0, timeout_s: float = 10.0, model: str = MODEL
) -> asyncio.Task[dict[str, Any]]:
    return asyncio.create_task(d.infer(model, VERSION, request(n), timeout_s))


async def settle() -> None:
    """Let every ready task run until it blocks (no timers involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def finished(task: asyncio.Task[Any]) -> Any:
    return await asyncio.wait_for(task, DEADLINE_S)


async def raises(task: Awaitable[Any], exc: type[Exception]) -> Any:
    with pytest.raises(exc) as info:
        await asyncio.wait_for(task, DEADLINE_S)
    return info.value


def idle(d: Dispatcher) -> None:
    """No slot is leaked: nothing in flight, nothing pending on any channel."""
    for ch in d.channels():
        assert ch.inflight == 0, (ch.runner_id, ch.inflight)
        assert not ch.pending, (ch.runner_id, ch.pending)


# --------------------------------------------------------------------------- routing


async def test_requests_go_to_the_least_loaded_of_three_runners() -> None:
    d = Dispatcher()
    runners = {rid: connect(d, rid, capacity=4) for rid in ("a", "b", "c")}
    first = [call(d, n) for n in range(6)]
    await settle()
    assert {rid: len(r.infers()) for rid, r in runners.items()} == {"a": 2, "b": 2, "c": 2}

    b_frame = runners["b"].infers()[0]
    runners["b"].answer(b_frame)
    done = first[b_frame["parameters"]["n"]]
    result = await finished(done)
    assert result["outputs"] == b_frame["inputs"] and result["runner_id"] == "b"

    seventh = call(d, 6)
    await settle()
    assert runners["b"].infers()[-1]["parameters"] == {"n": 6}  # 1/4 busy, the others 2/4
    assert [len(r.infers()) for r in runners.values()] == [2, 3, 2]

    for r in runners.values():
        for frame in list(r.outstanding.values()):
            r.answer(frame)
    results = [await finished(t) for t in [*first, seventh]]
    assert [res["outputs"][0]["data"] for res in results] == [[n] for n in range(7)]
    idle(d)


async def test_load_is_relative_to_capacity() -> None:
    d = Dispatcher()
    big, small = connect(d, "big", capacity=6), connect(d, "small", capacity=2)
    tasks = [call(d, n) for n in range(4)]
    await settle()
    assert (len(big.infers()), len(small.infers())) == (3, 1)  # 3/6 and 1/2 busy
    for r in (big, small):
        for frame in list(r.outstanding.values()):
            r.answer(frame)
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
    idle(d)


async def test_never_more_in_flight_than_capacity_under_load() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    runners = [connect(d, "a", capacity=2), connect(d, "b", capacity=1)]

    async def serve(r: FakeRunner) -> None:  # answers each request after a short delay
        while True:
            frame = await r.frames.get()
            await asyncio.sleep(0.002)
            r.answer(frame)

    servers = [asyncio.create_task(serve(r)) for r in runners]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(call(d, n) for n in range(40))), 10 * DEADLINE_S
        )
    finally:
        for s in servers:
            s.cancel()
    assert [r["outputs"][0]["data"] for r in results] == [[n] for n in range(40)]
    assert [r.most_outstanding for r in runners] == [2, 1]
    assert sum(len(r.infers()) for r in runners) == 40  # each request sent exactly once
    idle(d)


# --------------------------------------------------------------------------- waiting


async def test_waiters_are_served_in_arrival_order() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    r = connect(d, "a", capacity=1)
    busy = call(d, 0)
    waiting = []
    for n in (1, 2, 3):
        waiting.append(call(d, n))
        await settle()  # queued in this order
    assert len(r.infers()) == 1
    for n in (1, 2, 3):
        r.answer(r.infers()[-1])
        if n == 3:
            # A newcomer arriving while the third waiter is being woken does not overtake it.
            waiting.append(call(d, 4))
        await settle()
        assert r.infers()[-1]["parameters"] == {"n": n}
    r.answer(r.infers()[-1])
    await settle()
    assert r.infers()[-1]["parameters"] == {"n": 4}
    r.answer(r.infers()[-1])
    results = [await finished(t) for t in [busy, *waiting]]
    assert [x["outputs"][0]["data"] for x in results] == [[0], [1], [2], [3], [4]]
    idle(d)


def once(d: Dispatcher, action: Callable[[], Any]) -> None:
    """Run ``action`` in the next request's result hook: right after its slot was freed,
    before any task woken by that runs."""

    def hook(*_: Any) -> None:
        d.on_result.remove(hook)
        action()

    d.on_result.append(hook)


async def test_a_newcomer_does_not_take_the_slot_freed_for_a_waiter() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    r = connect(d, "a", capacity=1)
    busy = call(d, 0)
    waiter = call(d, 1)
    await settle()
    newcomer: list[asyncio.Task[dict[str, Any]]] = []
    once(d, lambda: newcomer.append(call(d, 2)))  # arrives as the slot is freed
    r.answer(r.infers()[0])
    await settle()
    assert [f["parameters"]["n"] for f in r.infers()] == [0, 1]
    r.answer(r.infers()[1])
    await settle()
    r.answer(r.infers()[2])
    results = [await finished(t) for t in (busy, waiter, *newcomer)]
    assert [x["outputs"][0]["data"] for x in results] == [[0], [1], [2]]
    idle(d)


async def test_a_busy_fleet_answers_429_after_the_queue_wait() -> None:
    d = Dispatcher(queue_wait_s=0.05)
    r = connect(d, "a", capacity=1)
    busy = call(d, 0)
    await settle()
    t = time.monotonic()
    err = await raises(call(d, 1), RateLimited)
    waited = time.monotonic() - t
    assert 0.04 <= waited < 1.0, waited
    assert err.retry_after >= 1 and err.code == "rate_limited"
    assert len(r.infers()) == 1  # the refused request was never sent
    r.answer(r.infers()[0])
    await finished(busy)
    idle(d)


async def test_max_waiters_refuses_at_once() -> None:
    d = Dispatcher(queue_wait_s=5.0, max_waiters=1)
    r = connect(d, "a", capacity=1)
    busy, waiter = call(d, 0), call(d, 1)
    await settle()
    t = time.monotonic()
    await raises(call(d, 2), RateLimited)
    assert time.monotonic() - t < 0.5  # not after the 5 s queue wait
    r.answer(r.infers()[0])
    await settle()
    r.answer(r.infers()[1])
    assert [(await finished(x))["outputs"][0]["data"] for x in (busy, waiter)] == [[0], [1]]
    idle(d)


async def test_waiters_that_gave_up_do_not_count_against_max_waiters() -> None:
    d = Dispatcher(queue_wait_s=0.05, max_waiters=1)
    r = connect(d, "a", capacity=1)
    busy = call(d, 0)
    await raises(call(d, 1), RateLimited)  # waited 0.05 s and gave up
    gone = call(d, 2)
    await settle()
    gone.cancel()  # its caller went away while waiting
    await settle()
    d.queue_wait_s = 5.0
    waiter = call(d, 3)  # the only waiter now: it waits instead of a 429
    await settle()
    assert not waiter.done()
    r.answer(r.infers()[0])
    await settle()
    assert r.infers()[-1]["parameters"] == {"n": 3}
    r.answer(r.infers()[-1])
    await finished(busy)
    assert (await finished(waiter))["outputs"][0]["data"] == [3]
    idle(d)


async def test_a_waiter_cancelled_while_waiting_or_once_granted_loses_no_slot() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    r = connect(d, "a", capacity=1)
    busy = call(d, 0)
    gone, granted_then_gone, kept = call(d, 1), call(d, 2), call(d, 3)
    await settle()
    gone.cancel()  # its caller went away while it waited
    await settle()
    # granted_then_gone is handed the slot busy frees, and cancelled before it runs again
    once(d, granted_then_gone.cancel)
    r.answer(r.infers()[0])
    await settle()
    assert gone.cancelled() and granted_then_gone.cancelled()
    assert r.infers()[-1]["parameters"] == {"n": 3}  # the slot went on, not lost
    r.answer(r.infers()[-1])
    assert (await finished(kept))["outputs"][0]["data"] == [3]
    await finished(busy)
    assert len(r.infers()) == 2
    idle(d)


async def test_a_slot_freed_by_one_model_serves_a_waiter_of_another() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    both = frozenset({KEY, ("other", VERSION)})
    r = connect(d, "a", capacity=1, models=both)
    busy = call(d, 0)
    waiter = call(d, 1, model="other")
    await settle()
    r.answer(r.infers()[0])
    await settle()
    assert r.infers()[-1]["model"] == "other"  # woken at once, not at its queue deadline
    r.answer(r.infers()[-1])
    assert (await finished(waiter))["outputs"][0]["data"] == [1]
    await finished(busy)
    idle(d)


# --------------------------------------------------------------------------- failures


async def test_detach_fails_requests_in_flight_and_waiters_with_unavailable() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    r = connect(d, "a", capacity=3)
    in_flight = [call(d, n) for n in range(3)]
    waiters = [call(d, n) for n in (3, 4)]
    await settle()
    d.detach(r.channel)
    for t in [*in_flight, *waiters]:
        err = await raises(t, Unavailable)
        assert err.code == "unavailable"
    assert not d.routable(MODEL, VERSION) and d.channels() == []
    assert r.channel.inflight == 0 and not r.channel.pending
    r.answer(r.infers()[0])  # a late answer after the disconnect is dropped
    await raises(d.infer(MODEL, VERSION, request(), 1.0), Unavailable)  # nobody serves it


async def test_detach_of_one_runner_leaves_waiters_to_the_other() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    a, b = connect(d, "a"), connect(d, "b")
    on_a, on_b = call(d, 0), call(d, 1)
    await settle()
    waiter = call(d, 2)
    await settle()
    lost, kept = (on_a, on_b) if a.infers()[0]["parameters"]["n"] == 0 else (on_b, on_a)
    d.detach(a.channel)
    await raises(lost, Unavailable)
    assert not waiter.done()
    b.answer(b.infers()[0])
    await settle()
    b.answer(b.infers()[-1])
    await finished(kept)
    assert (await finished(waiter))["runner_id"] == "b"
    idle(d)


async def test_timeout_raises_and_sends_a_cancel_frame() -> None:
    d = Dispatcher()
    r = connect(d, "a", capacity=1)
    t = time.monotonic()
    err = await raises(d.infer(MODEL, VERSION, request(), 0.05), Timeout)
    assert time.monotonic() - t < 1.0 and err.code == "timeout"
    infer, cancel = r.sent
    assert infer["type"] == "infer" and infer["timeout_s"] == 0.05
    assert cancel == {"type": "cancel", "id": infer["id"]}
    r.answer(infer)  # the runner's late answer changes nothing
    idle(d)
    assert d.routable(MODEL, VERSION)


@pytest.mark.parametrize(
    ("code", "client_fault"),
    [("invalid_input", True), ("triton_error", False), ("runner_error", False)],
)
async def test_error_frames_raise_inference_failed(code: str, client_fault: bool) -> None:
    d = Dispatcher()
    r = connect(d, "a")
    task = call(d)
    frame = await r.next_frame()
    r.answer(frame, type="error", code=code, message="shape [1] does not fit [-1, 4]")
    err = await raises(task, InferenceFailed)
    assert (err.code, err.client_fault) == (code, client_fault)
    assert err.message == "shape [1] does not fit [-1, 4]"
    idle(d)


async def test_an_unavailable_error_frame_is_retryable() -> None:
    d = Dispatcher()
    r = connect(d, "a")
    task = call(d)
    r.answer(await r.next_frame(), type="error", code="unavailable", message="Triton is down")
    err = await raises(task, Unavailable)
    assert "Triton is down" in err.message
    idle(d)


async def test_a_send_that_raises_is_unavailable() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    r = connect(d, "a", fail=ConnectionResetError("socket closed"))
    err = await raises(d.infer(MODEL, VERSION, request(), 5.0), Unavailable)
    assert "socket closed" in err.message
    idle(d)
    r.fail = None  # the slot was given back: the next request is sent
    task = call(d, 7)
    r.answer(await r.next_frame())
    assert (await finished(task))["outputs"][0]["data"] == [7]


async def test_result_hooks_see_each_outcome() -> None:
    d = Dispatcher()
    seen: list[tuple[str, str, str]] = []
    d.on_result.append(lambda m, rid, outcome, _s: seen.append((m, rid, outcome)))

    def broken_hook(*_: Any) -> None:
        raise RuntimeError("a broken hook does not break inference")

    d.on_result.append(broken_hook)
    r = connect(d, "a")
    ok = call(d)
    r.answer(await r.next_frame())
    await finished(ok)
    bad = call(d)
    r.answer(await r.next_frame(), type="error", code="triton_error", message="boom")
    await raises(bad, InferenceFailed)
    assert seen == [(MODEL, "a", "ok"), (MODEL, "a", "error")]


# --------------------------------------------------------------------------- channel state


async def test_routable_follows_hello_models_and_draining() -> None:
    d = Dispatcher()
    r = FakeRunner(d, "a")
    d.attach(r.channel)
    assert not d.routable(MODEL, VERSION)  # connected, no hello yet
    await raises(d.infer(MODEL, VERSION, request(), 1.0), Unavailable)

    d.update(r.channel, frozenset({KEY}), capacity=0)
    assert d.routable(MODEL, VERSION)
    assert not d.routable(MODEL, "2") and not d.routable("other", VERSION)
    assert r.channel.capacity == 1  # at least one

    task = call(d)
    frame = await r.next_frame()
    d.update(r.channel, frozenset({KEY}), capacity=1, draining=True)
    assert not d.routable(MODEL, VERSION)
    await raises(d.infer(MODEL, VERSION, request(), 1.0), Unavailable)
    r.answer(frame)  # requests in flight on a draining runner still complete
    assert (await finished(task))["runner_id"] == "a"

    d.update(r.channel, frozenset({(MODEL, "2")}), capacity=1)
    assert not d.routable(MODEL, VERSION) and d.routable(MODEL, "2")
    idle(d)


async def test_more_capacity_serves_waiters_at_once() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    r = connect(d, "a", capacity=1)
    tasks = [call(d, n) for n in range(4)]
    await settle()
    assert len(r.infers()) == 1
    d.update(r.channel, frozenset({KEY}), capacity=3)
    await settle()
    assert [f["parameters"]["n"] for f in r.infers()] == [0, 1, 2]  # in arrival order
    for frame in list(r.outstanding.values()):
        r.answer(frame)
    await settle()
    r.answer(r.infers()[-1])
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
    idle(d)


@pytest.mark.parametrize("change", ["model_removed", "draining"])
async def test_waiters_fail_at_once_when_nobody_serves_the_model_any_more(change: str) -> None:
    d = Dispatcher(queue_wait_s=5.0)
    r = connect(d, "a", capacity=1)
    busy = call(d, 0)
    waiter = call(d, 1)
    await settle()
    t = time.monotonic()
    if change == "draining":
        d.update(r.channel, frozenset({KEY}), capacity=1, draining=True)
    else:
        d.update(r.channel, frozenset({(MODEL, "2")}), capacity=1)
    await raises(waiter, Unavailable)
    assert time.monotonic() - t < 1.0  # not after the 5 s queue wait
    r.answer(r.infers()[0])
    await finished(busy)
    idle(d)


# --------------------------------------------------------------------------- passthrough


def raw_call(d: Dispatcher, body: bytes, protocol: str = "http") -> asyncio.Task[dict[str, Any]]:
    req = RawRequest(protocol, body, {"header_length": 2})
    return asyncio.create_task(d.infer(MODEL, VERSION, req, 10.0))


async def test_passthrough_goes_only_to_runners_that_speak_the_protocol() -> None:
    d = Dispatcher()
    plain = connect(d, "plain", capacity=4)
    raw = connect(d, "raw", capacity=4)
    d.update(raw.channel, frozenset({KEY}), 4, raw=frozenset({"http", "bogus"}))
    assert raw.channel.raw == {"http"}  # unknown protocols are ignored
    assert d.routable(MODEL, VERSION, "http") and not d.routable(MODEL, VERSION, "grpc")
    assert d.routable(MODEL, VERSION)

    body = b"{}" + bytes(range(256))  # JSON header + binary tensor bytes, untouched
    tasks = [raw_call(d, body) for _ in range(3)]
    await settle()
    assert not plain.infers()
    frames = raw.infers()
    assert len(frames) == 3
    assert all(f["body"] == body and f["protocol"] == "http" for f in frames)
    assert all(f["header_length"] == 2 and "inputs" not in f for f in frames)
    for f in frames:
        raw.answer(f, type="result", body=b"answer", content_type="application/json")
    assert [(await finished(t))["body"] for t in tasks] == [b"answer"] * 3

    with pytest.raises(Unavailable):  # nobody here passes gRPC through: never sent
        await d.infer(MODEL, VERSION, RawRequest("grpc", b"x"), 1.0)
    idle(d)


async def test_a_passthrough_waiter_lets_waiters_any_runner_can_take_go_first() -> None:
    d = Dispatcher(queue_wait_s=5.0)
    plain = connect(d, "plain", capacity=1)
    raw = connect(d, "raw", capacity=1)
    d.update(raw.channel, frozenset({KEY}), 1, raw=frozenset({"http"}))
    r1 = raw_call(d, b"r1")
    s1 = call(d, 1)
    await settle()
    assert len(raw.infers()) == 1 and len(plain.infers()) == 1  # both full
    r2 = raw_call(d, b"r2")  # waits for "raw" only
    s2 = call(d, 2)  # queued behind r2, any runner will do
    await settle()
    plain.answer(plain.infers()[0])  # frees "plain": r2 cannot use it, s2 can
    await finished(s1)
    await settle()
    assert [f["parameters"]["n"] for f in plain.infers()] == [1, 2]
    assert not r2.done()
    raw.answer(raw.infers()[0], type="result", body=b"a1")
    assert (await finished(r1))["body"] == b"a1"
    await settle()
    assert raw.infers()[-1]["body"] == b"r2"
    raw.answer(raw.infers()[-1], type="result", body=b"a2")
    plain.answer(plain.infers()[-1])
    assert (await finished(r2))["body"] == b"a2"
    await finished(s2)
    idle(d)


def test_binary_frames_round_trip_and_malformed_ones_are_refused() -> None:
    header = {"type": "infer", "id": 7, "protocol": "grpc"}
    body = bytes(range(256)) * 3
    assert unpack_frame(pack_frame(header, body)) == (header, body)
    assert unpack_frame(pack_frame(header)) == (header, b"")
    # frames are self-delimiting: several in one message come apart again
    both = pack_frame(header, body) + pack_frame({"id": 8}, b"x")
    assert unpack_frames(both) == [(header, body), ({"id": 8}, b"x")]
    with pytest.raises(ValueError):
        unpack_frame(both)  # one expected
    not_object = struct.pack(">II", 2, 0) + b"[]"
    truncated = pack_frame(header, body)[:-1]
    for bad in (b"", b"\x00\x00", truncated, not_object, pack_frame(header) + b"\x00"):
        with pytest.raises(ValueError):
            unpack_frames(bad)


async def test_the_outbox_coalesces_binary_frames_of_one_turn_and_keeps_order() -> None:
    written: list[str | bytes] = []

    async def write(data: str | bytes) -> None:
        written.append(data)

    outbox = Outbox(write, write)
    frames = [pack_frame({"id": i}, b"b%d" % i) for i in range(3)]
    await asyncio.gather(
        outbox.send(frames[0]), outbox.send(frames[1]), outbox.send("text"), outbox.send(frames[2])
    )
    # one message for the first two, the text on its own, then the last: order kept
    assert written == [frames[0] + frames[1], "text", frames[2]]
    assert [h["id"] for h, _ in unpack_frames(written[0])] == [0, 1]

    async def broken(data: str | bytes) -> None:
        raise ConnectionError("gone")

    failing = Outbox(broken, broken)
    results = await asyncio.gather(
        failing.send(frames[0]), failing.send(frames[1]), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)  # each sender learns it
