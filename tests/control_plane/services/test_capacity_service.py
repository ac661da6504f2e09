"""CapacityService on the embedded SQLite store with a recording provider (a real class that
follows the Provider protocol): which pool's demand a job counts for, one writer per round,
what the provider is asked, errors logged, and a job's waiting reason."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from gpufleet.wire import PoolSpec

from control_plane.errors import Conflict, Unavailable
from control_plane.services.capacity.providers.base import (
    HOST_LABEL,
    POOL_LABEL,
    STARTING,
    Host,
    Launch,
    PoolConfig,
)
from control_plane.services.capacity.service import CapacityService
from control_plane.services.placement import QueueSnapshot
from control_plane.services.principal import ROLE_SCOPES, Principal
from control_plane.storage.protocols import JobRecord
from control_plane.storage.sqlite import schema
from control_plane.storage.sqlite.capacity import SqliteCapacityStore
from control_plane.storage.sqlite.db import Database

ADMIN = Principal(sub="admin", tenant="t", role="admin", scopes=ROLE_SCOPES["admin"])


class RecordingProvider:
    """Hosts in memory; every call recorded."""

    kind = "docker"

    def __init__(self) -> None:
        self.hosts: dict[str, list[Host]] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.fail_start = False
        self.t = 0.0

    def validate(self, settings: Mapping[str, Any]) -> None:
        return None

    def list_hosts(self, pool: PoolConfig) -> list[Host]:
        return list(self.hosts.get(pool.name, []))

    def start(self, pool: PoolConfig, launches: list[Launch]) -> list[str]:
        self.calls.append(("start", pool.name, [(x.host_id, x.join_token) for x in launches]))
        if self.fail_start:
            raise Unavailable("docker engine error during start: no such image")
        for x in launches:
            self.hosts.setdefault(pool.name, []).append(Host(x.host_id, self.t, STARTING))
        return [x.host_id for x in launches]

    def stop(self, pool: PoolConfig, host_id: str) -> None:
        self.calls.append(("stop", pool.name, host_id))

    def protect(self, pool: PoolConfig, host_ids: list[str], protected: bool) -> None:
        self.calls.append(("protect", pool.name, (tuple(host_ids), protected)))


class World:
    def __init__(self, db: Database) -> None:
        self.t = 1000.0
        self.queue: dict[str, tuple[Any, ...]] = {}  # QueueSnapshot fields per model
        self.provider = RecordingProvider()
        self.tokens: list[tuple[str, dict[str, str], int]] = []
        self.deployment_pools: dict[str, str] = {}
        self.memory: dict[str, dict[str, int]] = {}  # model -> {gpu type or "": MB}
        self.store = SqliteCapacityStore(db)

    def service(self) -> CapacityService:
        def mint(region: str, labels: dict[str, str], ttl: int) -> str:
            self.tokens.append((region, labels, ttl))
            return f"gfj_{len(self.tokens)}"

        return CapacityService(
            self.store,
            lambda: [],
            lambda rid, drain: None,
            lambda models: {m: QueueSnapshot(*self.queue[m]) for m in models if m in self.queue},
            lambda: {m: q[0] for m, q in self.queue.items()},
            {"docker": self.provider},
            mint,
            offline_after_s=60,
            interval_s=5,
            deployment_pools=lambda: dict(self.deployment_pools),
            model_memory=lambda: self.memory,
            now=lambda: self.t,
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    db = Database(tmp_path / "gpufleet.db")
    schema.migrate(db)
    yield World(db)
    db.close()


def pool(svc: CapacityService, name: str, **over: Any) -> None:
    spec = {"max_hosts": 3, "region": "eu-west-1", "provider": {"kind": "docker", "settings": {}}}
    spec.update(over)
    svc.put(ADMIN, name, PoolSpec.model_validate(spec))


def job(model: str, created_at: float) -> JobRecord:
    return JobRecord(
        id="job_1",
        tenant="t",
        model=model,
        model_version=None,
        pinned=False,
        status="QUEUED",
        priority=0,
        created_at=created_at,
        timeout_s=60,
        ttl_s=600,
        max_attempts=3,
        region=None,
        request={},
    )


def test_demand_goes_to_the_pool_that_serves_the_model(world: World) -> None:
    svc = world.service()
    pool(svc, "a10g", models=["llm"])
    pool(svc, "h100")  # serves what no pool claims
    pool(svc, "l4")  # a deployment requires it
    world.deployment_pools = {"vision": "l4"}
    world.queue = {"llm": (2, world.t - 3), "vision": (1, world.t - 1), "misc": (1, world.t)}
    out = svc.reconcile(force=True)
    assert out is not None
    assert {name: d.launch for name, d in out.items()} == {"a10g": 2, "h100": 1, "l4": 1}
    (start_a10g,) = [c for c in world.provider.calls if c[1] == "a10g"]
    host_ids = [h for h, _ in start_a10g[2]]
    assert [t for _, t in start_a10g[2]] == ["gfj_1", "gfj_2"]  # one token per host
    region, labels, ttl = world.tokens[0]
    assert region == "eu-west-1" and ttl >= 600
    assert labels == {POOL_LABEL: "a10g", HOST_LABEL: host_ids[0]}


def test_one_writer_per_round(world: World) -> None:
    one, two = world.service(), world.service()
    pool(one, "p")
    world.queue = {"m": (1, world.t)}
    assert one.reconcile() is not None
    assert two.reconcile() is None  # the stored decision is fresh: nothing to do
    assert len([c for c in world.provider.calls if c[0] == "start"]) == 1
    world.t += 6
    assert two.reconcile() is not None  # stale now: the other replica decides
    assert one.reconcile() is None


def test_provider_errors_are_logged_in_the_pool(world: World) -> None:
    svc = world.service()
    pool(svc, "p")
    world.queue = {"m": (1, world.t)}
    world.provider.fail_start = True
    svc.reconcile(force=True)
    events = svc.get(ADMIN, "p").events
    assert [e.action for e in events] == ["error", "launch"]
    assert "no such image" in events[0].reason


def test_waiting_reason_names_the_pool_starting_a_host(world: World) -> None:
    svc = world.service()
    pool(svc, "a10g", models=["llm"])
    world.queue = {"llm": (1, world.t)}
    assert svc.waiting_reason(job("llm", world.t)) is None  # nothing decided yet
    world.provider.t = world.t
    svc.reconcile(force=True)
    # the round that launches says so at once, before the provider lists the new host
    world.t += 1
    assert svc.waiting_reason(job("llm", world.t - 1)) == (
        "starting a host in pool a10g (eu-west-1), 1 s so far"
    )
    world.t -= 1
    world.t += 6
    svc.reconcile(force=True)
    world.t += 34
    assert svc.waiting_reason(job("llm", world.t - 40)) == (
        "starting a host in pool a10g (eu-west-1), 40 s so far"
    )
    assert svc.waiting_reason(job("other", world.t)) is None


def test_demand_counts_for_the_pool_in_the_jobs_region(world: World) -> None:
    """Each queued job counts for one pool: the one in its preferred region, else the nearest
    allowed one; never a pool outside regions_allowed; no preference: the first by name."""
    svc = world.service()
    pool(svc, "eu", region="eu-west-1")
    pool(svc, "us", region="us-east-1")
    t = world.t
    world.queue = {
        "m": (
            6,
            t - 9,
            frozenset(),
            {},
            {
                "eu-west-1": (2, t - 9),  # pinned (legacy form)
                "us-east-1|us-east-1,eu-west-1|30": (1, t - 1),  # prefers us, may spill to eu
                "ap-south-1|ap-south-1|0": (1, t - 5),  # no pool may serve it
                "eu-central-1|eu-central-1,eu-west-1,us-east-1|10": (1, t - 2),  # eu is nearest
                "": (1, t - 4),  # anywhere
            },
        )
    }
    out = svc.reconcile(force=True)
    assert out is not None
    assert {n: d.launch for n, d in out.items()} == {"eu": 3, "us": 1}
    assert "4 queued (oldest 9 s)" in out["eu"].reason
    assert "1 queued (oldest 1 s)" in out["us"].reason
    assert [c[1] for c in world.provider.calls if c[0] == "start"] == ["eu", "us"]


def test_a_sampled_queue_head_scales_to_the_depth(world: World) -> None:
    svc = world.service()
    pool(svc, "eu", region="eu-west-1", max_hosts=100)
    pool(svc, "us", region="us-east-1", max_hosts=100)
    t = world.t
    # 40 queued, the head read 4: 3 pinned to us, 1 pinned to eu
    world.queue = {"m": (40, t, frozenset(), {}, {"us-east-1": (3, t), "eu-west-1": (1, t)})}
    out = svc.reconcile(force=True)
    assert out is not None
    assert {n: d.target for n, d in out.items()} == {"eu": 10, "us": 30}


def test_waiting_reason_names_the_pool_in_the_jobs_region(world: World) -> None:
    svc = world.service()
    pool(svc, "eu", region="eu-west-1")
    pool(svc, "us", region="us-east-1")
    world.queue = {"m": (1, world.t, frozenset(), {}, {"us-east-1": (1, world.t)})}
    world.provider.t = world.t
    svc.reconcile(force=True)
    world.t += 6
    svc.reconcile(force=True)  # the host it started is listed: starting
    world.t += 6
    pinned = job("m", world.t - 12)
    pinned = JobRecord(**{**pinned.__dict__, "region": "us-east-1"})
    assert svc.waiting_reason(pinned) == "starting a host in pool us (us-east-1), 12 s so far"
    # a job that may run only where no pool is: capacity has nothing to say
    elsewhere = JobRecord(
        **{
            **pinned.__dict__,
            "region": "ap-south-1",
            "request": {"placement": {"regions_allowed": ["ap-south-1"]}},
        }
    )
    assert svc.waiting_reason(elsewhere) is None


def test_a_model_goes_to_the_smallest_pool_its_gpu_memory_fits(world: World) -> None:
    """Models no pool claims are routed by GPU memory: measured on the pool's GPU type, else
    declared, else the most measured anywhere; pools without a declared memory come last."""
    svc = world.service()
    pool(svc, "l4", gpu_type="L4", gpu_memory_mb=24_000)
    pool(svc, "h100", gpu_type="H100", gpu_memory_mb=80_000)
    pool(svc, "any")  # declares no memory
    pool(svc, "big-listed", gpu_memory_mb=16_000, models=["listed"])
    world.memory = {
        "llm": {"": 60_000},  # declared: only h100 fits
        "tiny": {"": 2_000},  # both fit: l4 is smaller
        "measured": {"L4": 30_000, "H100": 20_000},  # measured on L4: too big there
        "listed": {"": 70_000},  # its pool lists it: the operator chose
        "huge": {"": 200_000},  # fits no declared pool: the one without a declared memory
    }
    t = world.t
    world.queue = {m: (1, t) for m in ("llm", "tiny", "measured", "listed", "huge", "unknown")}
    out = svc.reconcile(force=True)
    assert out is not None
    assert {n: d.launch for n, d in out.items()} == {"l4": 1, "h100": 2, "any": 2, "big-listed": 1}
    route = svc._router({p.name: PoolSpec.model_validate(p.spec) for p in world.store.list_pools()})
    assert route("llm", "") == "h100"
    assert route("tiny", "") == "l4"
    assert route("measured", "") == "h100"
    assert route("listed", "") == "big-listed"
    assert route("huge", "") == "any"
    assert route("unknown", "") == "any"  # nothing known: every pool may fit, by name


def test_a_pool_a_deployment_names_is_not_deleted(world: World) -> None:
    svc = world.service()
    pool(svc, "l4")
    world.deployment_pools = {"vision": "l4"}
    with pytest.raises(Conflict, match="vision"):
        svc.delete(ADMIN, "l4")
    world.deployment_pools = {}
    svc.delete(ADMIN, "l4")
    assert world.store.get_pool("l4") is None
    # a deployment stored naming a pool that no longer exists: no catch-all pool launches for
    # it (placement would not use that pool's hosts for the model)
    pool(svc, "any")
    world.deployment_pools = {"vision": "l4"}
    world.queue = {"vision": (1, world.t)}
    out = svc.reconcile(force=True)
    assert out is not None and out["any"].launch == 0
