"""The capacity autoscaler: pools, one fleet-wide decision per round, and the provider calls.

``PUT /v1/pools/{name}`` (admin) stores a pool. Every ``interval_s`` (the control plane's
lifespan runs :meth:`CapacityService.run_forever`) a replica whose stored decision is stale
decides again for every pool (``decide.decide``: pure) and saves the answer on condition that
nobody wrote meanwhile, the single-writer record that placement uses
(``services/deployments.py``). Only the replica whose save won asks the providers to act, so
two replicas never both launch for the same demand. The decision (target, hosts, reason,
the state of the next round, counters) is one document; each action is also appended to the
pool's decision log. ``GET /v1/pools/{name}`` and ``/metrics`` read them, so every replica
shows the same.

Hosts are joined to runners by the runner label ``gpufleet.host`` (in the join token a
launch mints: one token per host, valid ``join_timeout_s``). Scale-in goes through the
runner's ``drain`` config: the decision drains an idle host, and stops it only once a later
heartbeat says it runs nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from gpufleet.wire import JoinTokenCreated, PoolEvent, PoolHost, PoolList, PoolSpec, PoolView
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from control_plane import clock
from control_plane.errors import Conflict, InvalidRequest, NotFound
from control_plane.services.capacity import decide as cd
from control_plane.services.capacity.providers.base import (
    FAILED,
    HOST_LABEL,
    POOL_LABEL,
    TERMINATING,
    Host,
    Launch,
    PoolConfig,
    Provider,
)
from control_plane.services.placement import QueueSnapshot
from control_plane.services.principal import Principal
from control_plane.services.regions import UNKNOWN_RTT_MS, RegionPolicy, estimated_rtt_ms
from control_plane.storage.protocols import JobRecord
from control_plane.storage.protocols_auth import RunnerRecord
from control_plane.storage.protocols_capacity import CapacityRecord, CapacityStore, PoolRecord

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
EVENTS_SHOWN = 50
ACTIONS = ("launch", "drain", "undrain", "terminate", "protect", "unprotect", "error")
# (region, labels, ttl_s[, max_uses]) -> token (``AuthService.issue_join_token``)
MintToken = Callable[..., str]


class CapacityService:
    """Pools and the capacity decision (see the module docstring)."""

    def __init__(
        self,
        store: CapacityStore,
        runners: Callable[[], list[RunnerRecord]],
        set_drain: Callable[[str, bool], object],
        queue: Callable[[list[str]], dict[str, QueueSnapshot]],
        queue_depths: Callable[[], dict[str, int]],
        providers: Mapping[str, Provider],
        mint_join_token: MintToken,
        *,
        offline_after_s: float,
        interval_s: float = 5.0,
        drain_settle_s: float = 15.0,
        events_keep: int = 200,
        deployment_pools: Callable[[], dict[str, str]] = dict,
        model_memory: Callable[[], Mapping[str, Mapping[str, int]]] = dict,
        pool_token_uses: int = 1000,
        pool_token_ttl_s: int = 30 * 86_400,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._pool_token_uses = pool_token_uses
        self._pool_token_ttl_s = pool_token_ttl_s
        self._store = store
        self._runners = runners
        self._set_drain = set_drain
        self._queue = queue
        self._queue_depths = queue_depths
        self._providers = dict(providers)
        self._mint = mint_join_token
        self._offline_after_s = offline_after_s
        self.interval_s = interval_s
        self._settle_s = drain_settle_s
        self._keep = events_keep
        self._deployment_pools = deployment_pools
        self._model_memory = model_memory
        self._now = now

    # ------------------------------------------------------------------ API
    def put(self, p: Principal, name: str, spec: PoolSpec) -> PoolView:
        """Create or replace a pool (admin); the next round decides with it."""
        p.require("admin")
        if not NAME_RE.fullmatch(name):
            raise InvalidRequest(
                "a pool name is 1-63 lowercase letters, digits and '-', starting with a letter "
                "or digit",
                field="name",
            )
        if spec.min_hosts > spec.max_hosts:
            raise InvalidRequest(
                f"min_hosts ({spec.min_hosts}) is above max_hosts ({spec.max_hosts})",
                field="max_hosts",
            )
        if spec.warm_hosts > spec.max_hosts:
            raise InvalidRequest(
                f"warm_hosts ({spec.warm_hosts}) is above max_hosts ({spec.max_hosts})",
                field="warm_hosts",
            )
        provider = self._providers.get(spec.provider.kind)
        if provider is None:
            raise InvalidRequest(
                f"provider {spec.provider.kind!r} is not enabled on this control plane "
                f"(enabled: {sorted(self._providers)})",
                field="provider.kind",
            )
        provider.validate(spec.provider.settings)
        doc = spec.model_dump(exclude={"api_version"})
        rec = self._store.put_pool(name, doc, self._now())
        return self._view(rec, self._store.get_decision())

    def get(self, p: Principal, name: str) -> PoolView:
        """The pool, its last decision and its newest log entries (admin)."""
        p.require("admin")
        rec = self._store.get_pool(name)
        if rec is None:
            raise NotFound(f"no pool {name!r}")
        return self._view(rec, self._store.get_decision(), events=True)

    def pool_join_token(self, p: Principal, name: str) -> JoinTokenCreated:
        """A join token shared by every host of the pool (admin): for providers that bake
        one token into each host's start (aws-asg: the launch template's user data reads it
        from Secrets Manager). Join tokens are single-use by default; this one registers up
        to ``pool_token_uses`` runners until ``pool_token_ttl_s`` passes (settings
        ``capacity_pool_token_uses`` / ``capacity_pool_token_ttl_s``): store a new one in the
        secret before it runs out (``uses`` in the join-token listing)."""
        from control_plane.services.auth import join_token_id, sha256_hex

        p.require("admin")
        rec = self._store.get_pool(name)
        if rec is None:
            raise NotFound(f"no pool {name!r}")
        spec = PoolSpec.model_validate(rec.spec)
        labels = {**spec.labels, POOL_LABEL: name}
        token = self._mint(
            spec.region, labels, self._pool_token_ttl_s, max_uses=self._pool_token_uses
        )
        return JoinTokenCreated(
            join_token=token,
            expires_at=clock.iso(self._now() + self._pool_token_ttl_s) or "",
            id=join_token_id(sha256_hex(token)),
            max_uses=self._pool_token_uses,
        )

    def list_pools(self, p: Principal) -> PoolList:
        """Every pool with its last decision (admin)."""
        p.require("admin")
        decision = self._store.get_decision()
        return PoolList(pools=[self._view(r, decision) for r in self._store.list_pools()])

    def delete(self, p: Principal, name: str) -> None:
        """Remove a pool that has no hosts left (admin); set ``max_hosts`` to 0 first."""
        p.require("admin")
        rec = self._store.get_pool(name)
        if rec is None:
            raise NotFound(f"no pool {name!r}")
        hosts = self._provider_hosts(rec)
        if hosts:
            raise Conflict(
                f"pool {name!r} still has {len(hosts)} host(s): set max_hosts to 0, wait for "
                "them to drain and stop, then delete it"
            )
        named = sorted(m for m, pool in self._deployment_pools().items() if pool == name)
        if named:
            raise Conflict(
                f"pool {name!r} is named by the deployment(s) of {', '.join(named)}: change "
                "their pool first"
            )
        self._store.delete_pool(name)

    def _view(
        self, rec: PoolRecord, decision: CapacityRecord | None, events: bool = False
    ) -> PoolView:
        doc = (decision.doc.get("pools", {}) if decision else {}).get(rec.name, {})
        state = doc.get("state", {})
        backoff = float(state.get("backoff_until", 0.0))
        return PoolView(
            name=rec.name,
            spec=PoolSpec.model_validate(rec.spec),
            created_at=clock.iso(rec.created_at) or "",
            updated_at=clock.iso(rec.updated_at) or "",
            target=int(doc.get("target", 0)),
            hosts=[PoolHost.model_validate(h) for h in doc.get("hosts", [])],
            reason=doc.get("reason"),
            decided_at=clock.iso(doc["decided_at"]) if "decided_at" in doc else None,
            failed_launches=int(state.get("failures", 0)),
            backoff_until=clock.iso(backoff) if backoff > self._now() else None,
            events=[
                PoolEvent(
                    at=clock.iso(e["at"]) or "",
                    action=e["action"],
                    host=e.get("host"),
                    reason=e.get("reason", ""),
                )
                for e in (self._store.list_events(rec.name, EVENTS_SHOWN) if events else [])
            ],
        )

    # ------------------------------------------------------------------ deciding
    def reconcile(self, force: bool = False) -> dict[str, cd.Decision] | None:
        """Decide for every pool when the stored decision is stale (or ``force``) and, when
        this replica's save wins, act on it. None when nothing was decided here."""
        rec = self._store.get_decision()
        t = self._now()
        if rec is not None and not force and t - rec.decided_at < self.interval_s:
            return None
        pools = self._store.list_pools()
        if not pools and rec is None:
            return None
        previous = rec.doc.get("pools", {}) if rec else {}
        by_host = _runners_by_host(self._runners())
        demand = self._demand(pools, t)
        decisions: dict[str, cd.Decision] = {}
        doc_pools: dict[str, Any] = {}
        for pool in pools:
            spec = PoolSpec.model_validate(pool.spec)
            prev_doc = previous.get(pool.name, {})
            try:
                hosts = self._provider_hosts(pool)
            except Exception as exc:  # the engine is down: keep the last state, say why
                log.warning("pool %s: cannot list hosts", pool.name, exc_info=True)
                doc_pools[pool.name] = {
                    **prev_doc,
                    "reason": f"cannot list hosts: {exc}",
                    "decided_at": t,
                }
                continue
            inputs = [self._host_input(h, by_host.get((pool.name, h.id)), t) for h in hosts]
            d = cd.decide(
                _pool_input(pool.name, spec, self._settle_s),
                inputs,
                demand.get(pool.name, cd.Demand()),
                _state_from_doc(prev_doc.get("state", {})),
                t,
            )
            decisions[pool.name] = d
            doc_pools[pool.name] = self._pool_doc(d, inputs, prev_doc, t)
        if not self._store.save_decision({"pools": doc_pools}, t, rec.revision if rec else 0):
            return None  # another replica decided this round: it acts
        for pool in pools:
            if pool.name in decisions:
                self._act(pool, decisions[pool.name], by_host, t)
        return decisions

    def _provider_hosts(self, pool: PoolRecord) -> list[Host]:
        spec = PoolSpec.model_validate(pool.spec)
        provider = self._providers.get(spec.provider.kind)
        if provider is None:
            return []
        return provider.list_hosts(_config(pool.name, spec))

    def _served(self, specs: Mapping[str, PoolSpec]) -> dict[str, frozenset[str] | None]:
        """pool -> the models it serves: those it lists and those whose deployment requires
        it; None for a pool with neither (it serves every model no pool claims)."""
        assigned = self._deployment_pools()
        out: dict[str, frozenset[str] | None] = {}
        for name, spec in specs.items():
            models = set(spec.models) | {m for m, p in assigned.items() if p == name}
            out[name] = frozenset(models) if models else None
        return out

    def _router(self, specs: Mapping[str, PoolSpec]) -> Callable[[str, str], str | None]:
        """(model, encoded region policy) -> the one pool whose demand a queued job counts
        for, or None when no pool serving the model is in a region the job permits.

        The candidates are the pools that serve the model (``_served``) in a region inside
        the job's ``regions_allowed``; the pool in the job's preferred region wins, else the
        nearest allowed one (static latency estimate from the preferred region), then by
        name. So a burst pinned to eu-west-1 starts hosts in the eu-west-1 pool, not in any
        pool that serves the model.

        GPU memory: a model no pool claims goes only to pools whose ``gpu_memory_mb`` fits
        what it needs (``_need_mb``: measured on the pool's GPU type, else declared, else
        the most measured anywhere); within a region the smallest fitting pool wins, pools
        that declare no memory come after those known to fit. A pool that lists the model or
        that its deployment names gets it whatever its memory (the operator chose)."""
        served = self._served(specs)
        claimed: set[str] = set().union(*(m for m in served.values() if m is not None))
        # a deployment naming a pool that is gone: placement uses only that pool's runners,
        # so no other pool's host could take the model's jobs
        claimed |= set(self._deployment_pools())
        memory = self._model_memory()

        def fit_rank(model: str, spec: PoolSpec) -> tuple[int, int] | None:
            """None: the model does not fit; else (0, memory) known to fit, (1, 0) unknown."""
            need = _need_mb(memory.get(model, {}), spec.gpu_type)
            if need is None or spec.gpu_memory_mb is None:
                return (1, 0)
            return (0, spec.gpu_memory_mb) if need <= spec.gpu_memory_mb else None

        @functools.lru_cache(maxsize=1024)
        def route(model: str, policy_text: str) -> str | None:
            policy = RegionPolicy.decode(policy_text)
            ranked = []
            for name, mine in served.items():
                if not policy.permits(specs[name].region):
                    continue
                if mine is not None:
                    fit: tuple[int, int] | None = (0, 0) if model in mine else None
                else:
                    fit = fit_rank(model, specs[name]) if model not in claimed else None
                if fit is not None:
                    ranked.append((_region_rank(policy, specs[name].region), fit, name))
            return min(ranked)[2] if ranked else None

        return route

    def _demand(self, pools: list[PoolRecord], t: float) -> dict[str, cd.Demand]:
        """Queued jobs per pool: each group of a model's queued jobs with one region policy
        counts for the one pool ``_router`` picks."""
        specs = {p.name: PoolSpec.model_validate(p.spec) for p in pools}
        served = self._served(specs)
        route = self._router(specs)
        claimed = set().union(*(m for m in served.values() if m is not None))
        queued = [m for m, n in self._queue_depths().items() if n > 0]
        names = sorted(set(queued) | claimed)
        snaps = self._queue(names) if names else {}
        count: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for model in names:
            snap = snaps.get(model)
            if snap is None or snap.depth <= 0:
                continue
            parts = dict(snap.by_policy) or {
                "": (snap.depth, snap.oldest_at if snap.oldest_at is not None else t)
            }
            sampled = sum(n for n, _ in parts.values())
            scale = snap.depth / sampled if sampled else 1.0  # the head was sampled
            for text, (n, at) in sorted(parts.items()):
                name = route(model, text)
                if name is None:
                    continue
                count[name] = count.get(name, 0) + max(1, round(n * scale))
                oldest[name] = min(oldest.get(name, at), at)
        return {
            name: cd.Demand(
                queued=count.get(name, 0), oldest_wait_s=max(0.0, t - oldest.get(name, t))
            )
            for name in specs
        }

    def _host_input(self, h: Host, r: RunnerRecord | None, t: float) -> cd.HostInput:
        if h.state == FAILED and r is None:  # exited before registering: never will
            return cd.HostInput(h.id, launched_at=float("-inf"))
        leaving = h.state == TERMINATING
        if r is None:
            return cd.HostInput(h.id, launched_at=h.launched_at, terminating=leaving)
        seen = r.last_heartbeat_at if r.last_heartbeat_at is not None else r.registered_at
        online = not r.revoked and h.state != FAILED and t - seen <= self._offline_after_s
        return cd.HostInput(
            id=h.id,
            launched_at=h.launched_at,
            runner_id=r.id,
            online=online,
            running_jobs=len(r.running_jobs),
            loading=any(str(m.get("state", "")).upper().startswith("LOADING") for m in r.models),
            draining=bool(r.config.get("drain")),
            last_heartbeat_at=r.last_heartbeat_at,
            terminating=leaving,
        )

    def _pool_doc(
        self, d: cd.Decision, inputs: list[cd.HostInput], prev: Mapping[str, Any], t: float
    ) -> dict[str, Any]:
        hosts = []
        for h in inputs:
            if h.id in d.terminate:
                continue
            st = d.state.hosts.get(h.id, cd.HostState())
            draining = (h.draining and h.id not in d.undrain) or h.id in d.drain
            state = "starting" if h.runner_id is None else ("draining" if draining else "up")
            if h.terminating:
                state = "stopping"
            hosts.append(
                {
                    "id": h.id,
                    "state": state,
                    "launched_at": clock.iso(h.launched_at) if h.launched_at > 0 else None,
                    "runner_id": h.runner_id,
                    "running_jobs": h.running_jobs,
                    "protected": st.protected,
                    "idle_since": clock.iso(st.idle_since) if st.idle_since else None,
                }
            )
        totals = dict(prev.get("totals", {}))
        for e in d.events:
            totals[e.action] = totals.get(e.action, 0) + 1
        totals["failed_launch"] = totals.get("failed_launch", 0) + d.failed_launches
        starting = [h.launched_at for h in inputs if h.runner_id is None and h.launched_at > 0]
        if d.launch:  # the hosts this round starts are not listed yet: starting from now
            starting.append(t)
        return {
            "target": d.target,
            "starting_since": min(starting) if starting else None,
            "reason": d.reason,
            "decided_at": t,
            "hosts": hosts,
            "state": _state_to_doc(d.state),
            "totals": totals,
        }

    def _act(
        self,
        pool: PoolRecord,
        d: cd.Decision,
        by_host: Mapping[tuple[str, str], RunnerRecord],
        t: float,
    ) -> None:
        spec = PoolSpec.model_validate(pool.spec)
        provider = self._providers[spec.provider.kind]
        cfg = _config(pool.name, spec)
        events: list[dict[str, Any]] = [
            {"at": t, "action": e.action, "host": e.host, "reason": e.reason} for e in d.events
        ]
        if d.changes:
            log.info("pool %s: %s", pool.name, d.reason)

        def attempt(what: str, host: str | None, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:
                log.warning("pool %s: %s failed", pool.name, what, exc_info=True)
                events.append(
                    {"at": t, "action": "error", "host": host, "reason": f"{what}: {exc}"}
                )

        for host in d.terminate:
            attempt(f"stop host {host}", host, functools.partial(provider.stop, cfg, host))
        for host, drain in [*((h, True) for h in d.drain), *((h, False) for h in d.undrain)]:
            r = by_host.get((pool.name, host))
            if r is not None:
                attempt(
                    f"{'drain' if drain else 'undrain'} host {host}",
                    host,
                    functools.partial(self._set_drain, r.id, drain),
                )
        if d.protect:
            attempt("protect", None, lambda: provider.protect(cfg, list(d.protect), True))
        if d.unprotect:
            attempt("unprotect", None, lambda: provider.protect(cfg, list(d.unprotect), False))
        if d.launch:
            launches = []
            ttl = int(max(spec.join_timeout_s + 60, 120))
            for _ in range(d.launch):
                host_id = "h" + secrets.token_hex(5)
                labels = {**spec.labels, POOL_LABEL: pool.name, HOST_LABEL: host_id}
                launches.append(Launch(host_id, self._mint(spec.region, labels, ttl)))
            attempt(f"start {d.launch} host(s)", None, lambda: provider.start(cfg, launches))
        try:
            self._store.append_events(pool.name, events, self._keep)
        except Exception:
            log.warning("pool %s: cannot log %d event(s)", pool.name, len(events), exc_info=True)

    def waiting_reason(self, job: JobRecord) -> str | None:
        """Why a queued job waits, when a pool that serves its model is starting a host or
        backing off (None otherwise: placement's reason then applies)."""
        rec = self._store.get_decision()
        if rec is None:
            return None
        specs = {p.name: PoolSpec.model_validate(p.spec) for p in self._store.list_pools()}
        policy = RegionPolicy.of_job(job.region, job.request, 0.0)
        name = self._router(specs)(job.model, policy.encode())
        t = self._now()
        if name is not None:
            spec = specs[name]
            doc = rec.doc.get("pools", {}).get(name)
            if doc is None:
                return None
            if doc.get("starting_since") is not None:
                since = max(float(doc["starting_since"]), job.created_at)
                return (
                    f"starting a host in pool {name} ({spec.region}), "
                    f"{max(0.0, t - since):.0f} s so far"
                )
            backoff = float(doc.get("state", {}).get("backoff_until", 0.0))
            if backoff > t:
                failures = int(doc.get("state", {}).get("failures", 0))
                return (
                    f"pool {name} ({spec.region}) is backing off after {failures} failed "
                    f"launch(es), {backoff - t:.0f} s more"
                )
        return None

    async def run_forever(self) -> None:
        """Decide every ``interval_s`` (with jitter); errors are logged and backed off."""
        delay = self.interval_s
        while True:
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            try:
                await asyncio.to_thread(self.reconcile)
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = min(delay * 2, max(self.interval_s, 60.0))
                log.warning("capacity round failed; next try in ~%.1fs", delay, exc_info=True)
                continue
            delay = self.interval_s

    # ------------------------------------------------------------------ metrics
    def collect(self) -> Iterator[Metric]:
        """Fleet-wide values from the stored decision (every replica reports the same)."""
        target = GaugeMetricFamily(
            "gpufleet_pool_target_hosts", "Hosts the last capacity decision wants.", labels=["pool"]
        )
        hosts = GaugeMetricFamily(
            "gpufleet_pool_hosts", "Hosts of a pool by state.", labels=["pool", "state"]
        )
        actions = CounterMetricFamily(
            "gpufleet_pool_actions",
            "Capacity actions decided, by pool and action (failed_launch: a host that never "
            "registered).",
            labels=["pool", "action"],
        )
        try:
            rec = self._store.get_decision()
            for name, doc in sorted((rec.doc.get("pools", {}) if rec else {}).items()):
                target.add_metric([name], int(doc.get("target", 0)))
                counts = {"starting": 0, "up": 0, "draining": 0}
                for h in doc.get("hosts", []):
                    counts[h["state"]] = counts.get(h["state"], 0) + 1
                for state, n in sorted(counts.items()):
                    hosts.add_metric([name, state], n)
                for action, n in sorted(doc.get("totals", {}).items()):
                    actions.add_metric([name, action], n)
        except Exception:
            log.warning("capacity decision unavailable for metrics", exc_info=True)
        yield target
        yield hosts
        yield actions

    def describe(self) -> Iterable[Metric]:
        return []


def _need_mb(known: Mapping[str, int], gpu_type: str | None) -> int | None:
    """GPU memory a model needs on ``gpu_type``: measured there, else declared (key ""),
    else the most measured on any GPU type; None when unknown."""
    if gpu_type is not None and gpu_type in known:
        return known[gpu_type]
    if "" in known:
        return known[""]
    return max(known.values(), default=None)


def _region_rank(policy: RegionPolicy, region: str) -> float:
    """0 for the job's preferred region (or a job without one), else the estimated round
    trip from the preferred region (nearest first)."""
    if policy.preferred is None or region == policy.preferred:
        return 0.0
    est = estimated_rtt_ms(policy.preferred, region)
    return UNKNOWN_RTT_MS if est is None else est


def _runners_by_host(records: list[RunnerRecord]) -> dict[tuple[str, str], RunnerRecord]:
    """(pool, host id) -> the newest non-revoked runner that registered with those labels."""
    out: dict[tuple[str, str], RunnerRecord] = {}
    for r in sorted(records, key=lambda r: r.registered_at):
        pool, host = r.labels.get(POOL_LABEL), r.labels.get(HOST_LABEL)
        if pool and host and not r.revoked:
            out[(pool, host)] = r
    return out


def _config(name: str, spec: PoolSpec) -> PoolConfig:
    return PoolConfig(
        name=name,
        region=spec.region,
        labels=dict(spec.labels),
        settings=dict(spec.provider.settings),
        gpu_count=spec.gpu_count,
    )


def _pool_input(name: str, spec: PoolSpec, settle_s: float) -> cd.PoolInput:
    return cd.PoolInput(
        name=name,
        min_hosts=spec.min_hosts,
        max_hosts=spec.max_hosts,
        warm_hosts=spec.warm_hosts,
        idle_timeout_s=spec.idle_timeout_s,
        launch_budget_per_min=spec.launch_budget_per_min,
        join_timeout_s=spec.join_timeout_s,
        jobs_per_host=spec.jobs_per_host,
        scale_up_wait_s=spec.scale_up_wait_s,
        drain_settle_s=settle_s,
        backoff_s=spec.launch_backoff_s,
    )


def _state_to_doc(s: cd.PoolState) -> dict[str, Any]:
    return {
        "launches": list(s.launches),
        "failures": s.failures,
        "backoff_until": s.backoff_until,
        "hosts": {h: asdict(st) for h, st in s.hosts.items()},
    }


def _state_from_doc(doc: Mapping[str, Any]) -> cd.PoolState:
    return cd.PoolState(
        launches=tuple(float(x) for x in doc.get("launches", [])),
        failures=int(doc.get("failures", 0)),
        backoff_until=float(doc.get("backoff_until", 0.0)),
        hosts={h: cd.HostState(**st) for h, st in doc.get("hosts", {}).items()},
    )
