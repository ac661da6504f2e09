"""The delivery worker against a real store (the embedded one; concurrent claims on both
stores) and a real loopback receiver."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from gpufleet import WebhookVerificationError
from gpufleet.webhooks import verify_webhook
from gpufleet.wire import JobView, WebhookSpec

from control_plane.clock import iso
from control_plane.errors import NotFound
from control_plane.services.principal import ROLE_SCOPES, Principal
from control_plane.services.webhook_delivery import DeliveryPolicy, WebhookWorker
from control_plane.services.webhook_records import FINAL_STATES, Delivery, WebhookStore
from control_plane.services.webhook_sender import HttpxSender
from control_plane.services.webhooks import WebhookService, event_body, shard_of
from control_plane.storage.aws import make_clients
from control_plane.storage.dynamo_webhooks import DynamoWebhookStore
from control_plane.storage.sqlite.webhooks import SqliteWebhookStore
from control_plane.storage.stores import Stores
from tests.conftest import STORE_KINDS, free_port
from tests.helpers.webhook_receiver import Receiver

TENANT = "acme"
USER = Principal("u1", TENANT, "user", ROLE_SCOPES["user"])


class FakeJobs:
    """The access check of ``GET`` job: a job is visible to its own tenant (and admins)."""

    def __init__(self) -> None:
        self.tenants: dict[str, str] = {}

    def get(self, p: Principal, job_id: str) -> object:
        tenant = self.tenants.get(job_id)
        if tenant is None or not p.can_see_tenant(tenant):
            raise NotFound(f"job {job_id} not found")
        return object()


class RecordingTransport(httpx.AsyncBaseTransport):
    """Records requests instead of connecting anywhere."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Fleet:
    """One webhook store; ``worker()`` builds a replica's worker on its own store object."""

    def __init__(self, settings: Any, stores: Stores, **policy: Any) -> None:
        self.settings = settings
        self.stores = stores
        self.policy = DeliveryPolicy(
            **{
                **DeliveryPolicy.from_settings(settings).__dict__,
                "initial_backoff_s": 0.01,
                "max_backoff_s": 0.05,
                "timeout_s": 3.0,
                **policy,
            }
        )
        self.jobs = FakeJobs()
        self.clock = Clock()
        self.store = self._store()
        self.service = WebhookService(
            self.store,
            stores.webhook_secrets,
            self.jobs.get,
            allow_loopback=True,
            grace_s=60,
            shards=self.policy.shards,
            clock=self.clock,
        )
        self.workers: list[WebhookWorker] = []

    def _store(self) -> WebhookStore:
        """A store object of its own (another replica's) on the same data."""
        if self.stores.kind == "sqlite":
            return SqliteWebhookStore(self.stores.extra["database"])
        return DynamoWebhookStore(make_clients(self.settings)[0], self.settings.table("webhooks"))

    def worker(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Callable[[str, int], list[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> WebhookWorker:
        kwargs: dict[str, Any] = {"clock": clock}
        if resolver is not None:
            kwargs["resolver"] = resolver
        w = WebhookWorker(
            self._store(),
            self.service.signing_secrets,
            HttpxSender(transport),
            self.policy,
            **kwargs,
        )
        self.workers.append(w)
        return w

    def job(self, job_id: str, url: str, status: str = "SUCCEEDED", **spec: Any) -> str | None:
        self.jobs.tenants[job_id] = TENANT
        view = JobView(id=job_id, status=status, model="add_sub", created_at=iso(time.time()) or "")  # type: ignore[arg-type]
        return self.service.on_transition(view, TENANT, WebhookSpec(url=url, **spec))

    def delivery(self, job_id: str, event: str = "job.completed") -> Delivery:
        d = self.store.get(job_id, event)
        assert d is not None
        return d

    async def drain(self, *workers: WebhookWorker, job_id: str, timeout_s: float = 15) -> Delivery:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await asyncio.gather(*(w.run_once() for w in workers))
            d = self.delivery(job_id)
            if d.state in FINAL_STATES:
                return d
            await asyncio.sleep(0.01)
        raise AssertionError(f"delivery of {job_id} not final: {self.delivery(job_id)}")

    async def close(self) -> None:
        for w in self.workers:
            await w._sender.aclose()


@pytest.fixture
async def fleet(settings: Any, stores: Stores) -> Any:
    f = Fleet(settings, stores)
    yield f
    await f.close()


def _verify_all(rx: Receiver, secret: str) -> None:
    for r in rx.requests:
        verify_webhook(r.headers, r.body, secret)


async def test_fails_three_times_then_delivered(fleet: Fleet) -> None:
    with Receiver([500, 500, 500, 200]) as rx:
        assert fleet.job("job_a", rx.url + "/hook?x=1") == "job.completed"
        d = await fleet.drain(fleet.worker(), job_id="job_a")
    assert d.state == "delivered" and d.attempts == 4
    assert len(rx.requests) == 4
    assert {r.headers["webhook-id"] for r in rx.requests} == {d.msg_id}
    assert d.msg_id.startswith("msg_")
    assert {r.path for r in rx.requests} == {"/hook?x=1"}
    secret = fleet.service.secret(USER).secret
    _verify_all(rx, secret)
    sdk = pytest.importorskip("gpufleet.webhooks")
    for r in rx.requests:
        event = sdk.verify_webhook(r.headers, r.body, secret)
        assert event["type"] == "job.completed"
        assert event["data"]["id"] == "job_a" and event["data"]["status"] == "SUCCEEDED"
        assert event["data"]["api_version"] == "v1"
    assert len({r.body for r in rx.requests}) == 1  # the same body on every retry
    log = fleet.service.delivery_log(USER, "job_a")
    [view] = log.deliveries
    assert view.id == d.msg_id and view.status == "delivered" and view.type == "job.completed"
    assert [(a.attempt, a.status_code) for a in view.attempts] == [
        (1, 500),
        (2, 500),
        (3, 500),
        (4, 200),
    ]
    assert all(a.duration_ms >= 0 and a.error is None for a in view.attempts)


async def test_gone_disables_without_retries(fleet: Fleet) -> None:
    with Receiver([410]) as rx:
        fleet.job("job_g", rx.url)
        worker = fleet.worker()
        d = await fleet.drain(worker, job_id="job_g")
        for _ in range(3):
            await worker.run_once()
    assert d.state == "disabled" and len(rx.requests) == 1


async def test_redirect_is_not_followed(fleet: Fleet) -> None:
    with (
        Receiver() as elsewhere,
        Receiver([(302, elsewhere.url + "/x"), (307, elsewhere.url)]) as rx,
    ):
        fleet.policy = DeliveryPolicy(**{**fleet.policy.__dict__, "max_attempts": 2})
        fleet.job("job_r", rx.url)
        d = await fleet.drain(fleet.worker(), job_id="job_r")
    assert d.state == "failed" and len(rx.requests) == 2 and elsewhere.requests == []
    codes = [
        a.status_code for a in fleet.service.delivery_log(USER, "job_r").deliveries[0].attempts
    ]
    assert codes == [302, 307]


async def test_connection_errors_are_retried_then_fail(fleet: Fleet) -> None:
    fleet.policy = DeliveryPolicy(**{**fleet.policy.__dict__, "max_attempts": 3})
    fleet.job("job_c", f"http://127.0.0.1:{free_port()}/nobody")
    d = await fleet.drain(fleet.worker(), job_id="job_c")
    assert d.state == "failed" and d.attempts == 3
    attempts = fleet.service.delivery_log(USER, "job_c").deliveries[0].attempts
    assert [a.status_code for a in attempts] == [None, None, None]
    assert all(a.error for a in attempts)


@pytest.mark.parametrize(
    ("url", "dns"),
    [
        ("http://10.1.2.3/hook", {}),
        ("http://192.168.0.10:8080/hook", {}),
        ("http://169.254.169.254/latest/meta-data", {}),
        ("http://[fe80::1]/hook", {}),
        ("https://rebound.test/hook", {"rebound.test": ["172.16.0.9"]}),
    ],
)
async def test_refused_target_makes_no_connection(
    fleet: Fleet, url: str, dns: dict[str, list[str]]
) -> None:
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return dns[host]

    transport = RecordingTransport()
    # Stored directly: the submit-time check passed earlier, the target changed since.
    fleet.store.enqueue(
        Delivery(
            "job_p",
            "job.completed",
            "msg_p",
            TENANT,
            url,
            "{}",
            "pending",
            0,
            time.time(),
            index_shard=shard_of("job_p", fleet.policy.shards),
        ),
        due_at=time.time(),
    )
    fleet.jobs.tenants["job_p"] = TENANT
    d = await fleet.drain(fleet.worker(transport, resolver), job_id="job_p")
    assert transport.requests == []
    assert d.state == "failed" and d.attempts == 1
    [attempt] = fleet.service.delivery_log(USER, "job_p").deliveries[0].attempts
    assert attempt.error is not None and attempt.error.startswith("refused")
    assert asked == list(dns)


async def test_connects_to_the_checked_address_with_the_original_host(fleet: Fleet) -> None:
    transport = RecordingTransport(204)
    resolver_answers = iter([["93.184.216.34"], ["10.0.0.1"]])  # a rebinding answer comes second

    def resolver(host: str, port: int) -> list[str]:
        return next(resolver_answers)

    fleet.job("job_pin", "https://hooks.example.test:8443/in")
    d = await fleet.drain(fleet.worker(transport, resolver), job_id="job_pin")
    assert d.state == "delivered"
    [req] = transport.requests
    assert req.url.host == "93.184.216.34" and req.url.port == 8443 and req.url.path == "/in"
    assert req.headers["host"] == "hooks.example.test:8443"
    assert req.extensions["sni_hostname"] == "hooks.example.test"


async def test_rotation_signs_with_both_during_grace(fleet: Fleet) -> None:
    old = fleet.service.secret(USER).secret
    new = fleet.service.rotate_secret(USER).secret
    assert new != old and fleet.service.secret(USER).secret == new
    with Receiver() as rx:
        fleet.job("job_rot1", rx.url)
        await fleet.drain(fleet.worker(), job_id="job_rot1")
        [r] = rx.requests
        assert len(r.headers["webhook-signature"].split()) == 2
        verify_webhook(r.headers, r.body, old)
        verify_webhook(r.headers, r.body, new)

        fleet.clock.offset = 61  # the grace period (60 s here) is over
        fleet.job("job_rot2", rx.url)
        await fleet.drain(fleet.worker(clock=fleet.clock), job_id="job_rot2")
        r2 = rx.requests[1]
    assert len(r2.headers["webhook-signature"].split()) == 1
    verify_webhook(r2.headers, r2.body, new, now=fleet.clock())
    with pytest.raises(WebhookVerificationError):
        verify_webhook(r2.headers, r2.body, old, now=fleet.clock())


async def test_two_workers_never_send_one_attempt_twice(fleet: Fleet) -> None:
    a, b = fleet.worker(), fleet.worker()
    with Receiver([500, 500], delay_s=0.05) as rx:
        jobs = [f"job_{i}" for i in range(6)]
        for j in jobs:
            fleet.job(j, rx.url)
        for j in jobs:
            await fleet.drain(a, b, job_id=j)
    per_id: dict[str, int] = {}
    for r in rx.requests:
        per_id[r.headers["webhook-id"]] = per_id.get(r.headers["webhook-id"], 0) + 1
    assert len(per_id) == 6
    assert sum(per_id.values()) == 6 + 2  # one delivery each, plus the two scripted failures
    for j in jobs:
        attempts = fleet.service.delivery_log(USER, j).deliveries[0].attempts
        assert [x.attempt for x in attempts] == list(range(1, len(attempts) + 1))
        assert per_id[fleet.delivery(j).msg_id] == len(attempts)


async def test_dead_worker_claim_is_retaken_after_its_lease(fleet: Fleet) -> None:
    with Receiver() as rx:
        fleet.job("job_dead", rx.url)
        dead = fleet.worker()
        [claim] = await asyncio.to_thread(dead.claim_due)  # claimed, then the replica dies
        assert await fleet.worker().run_once() == 0  # leased: nobody else takes it
        later = fleet.worker(clock=lambda: time.time() + fleet.policy.timeout_s + 31)
        assert await later.run_once() == 1
        assert not await asyncio.to_thread(
            fleet.store.finish, claim, _record(claim.delivery), "delivered", None
        )  # the dead worker's late result is fenced off
    d = fleet.delivery("job_dead")
    assert d.state == "delivered" and d.attempts == 2 and len(rx.requests) == 1


def _record(d: Delivery) -> Any:
    from control_plane.services.webhook_records import AttemptRecord

    return AttemptRecord(d.job_id, d.event, d.msg_id, d.attempts, time.time(), 1, 200)


async def test_enqueue_is_idempotent_and_filtered_by_events(fleet: Fleet) -> None:
    url = "http://127.0.0.1:9/h"
    assert fleet.job("job_i", url, status="RUNNING") is None  # default: completed only
    assert fleet.job("job_i", url) == "job.completed"
    assert fleet.job("job_i", url, status="FAILED") is None  # seen before: enqueued once
    both = {"events": ["running", "completed"]}
    assert fleet.job("job_j", url, status="RUNNING", **both) == "job.running"
    assert fleet.job("job_j", url, status="RUNNING", **both) is None
    assert fleet.job("job_j", url, status="CANCELLED", **both) == "job.completed"
    assert len(fleet.store.deliveries("job_i")) == 1
    assert {d.event for d in fleet.store.deliveries("job_j")} == {"job.running", "job.completed"}
    view = JobView(id="job_k", status="SUCCEEDED", model="m", created_at="t")
    assert fleet.service.on_transition(view, TENANT, None) is None


async def test_delivery_log_is_tenant_scoped(fleet: Fleet) -> None:
    fleet.job("job_l", "http://127.0.0.1:9/h")
    other = Principal("u2", "globex", "user", ROLE_SCOPES["user"])
    with pytest.raises(NotFound):
        fleet.service.delivery_log(other, "job_l")
    admin = Principal("root", "ops", "admin", ROLE_SCOPES["admin"])
    assert len(fleet.service.delivery_log(admin, "job_l").deliveries) == 1


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    p = DeliveryPolicy(initial_backoff_s=1.0, max_backoff_s=10.0)
    assert [p.backoff(n, 0.999999) for n in (1, 2, 3, 4, 5, 9)] == pytest.approx(
        [1, 2, 4, 8, 10, 10], rel=1e-3
    )
    assert p.backoff(3, 0.0) == 0.0
    assert p.backoff(200, 0.5) == 5.0


def test_large_outputs_are_left_out_of_the_body() -> None:
    big = [{"name": "O", "datatype": "BYTES", "shape": [1], "data": ["x" * 400_000]}]
    view = JobView.model_validate(
        {"id": "job_b", "status": "SUCCEEDED", "model": "m", "created_at": "t", "outputs": big}
    )
    body = json.loads(event_body("job.completed", view, 0.0))
    assert body["data"]["outputs"] is None and body["type"] == "job.completed"


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_concurrent_claims_of_one_entry_have_one_winner(fleet: Fleet) -> None:
    fleet.job("job_race", "http://127.0.0.1:9/h")
    shard = shard_of("job_race", fleet.policy.shards)
    [ref] = fleet.store.due(shard, time.time(), 10)
    seen = fleet.delivery("job_race")
    stores = [fleet._store() for _ in range(6)]
    results = await asyncio.gather(
        *(
            asyncio.to_thread(s.claim, ref, seen, f"tok{i}", time.time() + 60)
            for i, s in enumerate(stores)
        )
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    d = fleet.delivery("job_race")
    assert d.state == "sending" and d.attempts == 1 and d.claim == winners[0].token
    assert fleet.store.due(shard, time.time(), 10) == []  # only the lease entry, due later


class Records:
    """``record_of`` for the transition hook: job records by id, counting reads."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}
        self.reads = 0

    def __call__(self, job_id: str) -> Any:
        self.reads += 1
        return self.records.get(job_id)


async def test_transition_hook_reads_the_record_only_when_an_event_may_fire(fleet: Fleet) -> None:
    from control_plane.storage.protocols import JobRecord

    records = Records()
    svc = WebhookService(
        fleet.store,
        fleet.stores.webhook_secrets,
        fleet.jobs.get,
        record_of=records,
        allow_loopback=True,
        grace_s=60,
        shards=4,
    )

    def rec(job_id: str, webhook: dict[str, Any] | None) -> JobRecord:
        return JobRecord(
            id=job_id, tenant=TENANT, model="m", model_version=None, pinned=False,
            status="SUCCEEDED", priority=0, created_at=time.time(), timeout_s=60, ttl_s=60,
            max_attempts=1, region=None, request={"webhook": webhook}, finished_at=time.time(),
        )  # fmt: skip

    def view(job_id: str, status: str) -> JobView:
        return JobView(id=job_id, status=status, model="m", created_at="t")  # type: ignore[arg-type]

    records.records["job_h"] = rec(
        "job_h", {"url": "http://127.0.0.1:9/h", "events": ["completed"]}
    )
    records.records["job_none"] = rec("job_none", None)
    svc.job_transition(view("job_h", "QUEUED"), None)
    svc.job_transition(view("job_h", "QUEUED"), "RUNNING")
    assert records.reads == 0
    svc.job_transition(view("job_h", "RUNNING"), "QUEUED")  # not wanted: read, nothing queued
    svc.job_transition(view("job_h", "SUCCEEDED"), "RUNNING")
    svc.job_transition(view("job_h", "SUCCEEDED"), "RUNNING")  # reported twice
    svc.job_transition(view("job_none", "FAILED"), "RUNNING")
    svc.job_transition(view("job_gone", "FAILED"), "RUNNING")
    assert [d.event for d in fleet.store.deliveries("job_h")] == ["job.completed"]
    assert fleet.store.deliveries("job_none") == [] and fleet.store.deliveries("job_gone") == []
    broken = WebhookService(fleet.store, svc._secrets, fleet.jobs.get, allow_loopback=True,
                            grace_s=1, shards=4)  # fmt: skip
    broken.job_transition(view("job_h", "FAILED"), "RUNNING")  # no record_of: logged, no raise


async def test_submit_check_names_the_field(fleet: Fleet) -> None:
    from gpufleet.wire import JobRequest

    from control_plane.errors import InvalidRequest

    tensor = {"name": "I", "datatype": "FP32", "shape": [1], "data": [1]}
    ok = JobRequest.model_validate({"model": "m", "inputs": [tensor]})
    fleet.service.validate_request(ok)
    bad = JobRequest.model_validate(
        {"model": "m", "inputs": [tensor], "webhook": {"url": "http://10.9.8.7/x"}}
    )
    with pytest.raises(InvalidRequest) as info:
        fleet.service.validate_request(bad)
    assert info.value.field == "webhook.url"


async def test_run_forever_delivers_until_cancelled(fleet: Fleet) -> None:
    with Receiver() as rx:
        fleet.job("job_bg", rx.url)
        task = asyncio.create_task(fleet.service.worker(fleet.policy).run_forever())
        deadline = time.monotonic() + 30
        # Wait for the recorded outcome, not the request: the worker records after the send.
        while fleet.delivery("job_bg").state != "delivered" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(rx.requests) == 1 and fleet.delivery("job_bg").state == "delivered"


async def test_unresolvable_host_is_retried_not_refused(fleet: Fleet) -> None:
    fleet.policy = DeliveryPolicy(**{**fleet.policy.__dict__, "max_attempts": 2})
    transport = RecordingTransport()

    def resolver(host: str, port: int) -> list[str]:
        raise OSError("temporary failure in name resolution")

    fleet.store.enqueue(
        Delivery("job_dns", "job.completed", "msg_d", TENANT, "https://later.test/h", "{}",
                 "pending", 0, time.time(), index_shard=shard_of("job_dns", fleet.policy.shards)),
        due_at=time.time(),
    )  # fmt: skip
    fleet.jobs.tenants["job_dns"] = TENANT
    d = await fleet.drain(fleet.worker(transport, resolver), job_id="job_dns")
    assert d.state == "failed" and d.attempts == 2 and transport.requests == []
    attempts = fleet.service.delivery_log(USER, "job_dns").deliveries[0].attempts
    assert [a.error for a in attempts] == ["webhook host 'later.test' cannot be resolved"] * 2
