"""Deployments and the stored placement decision.

``PUT /v1/models/{name}/deployment`` stores a spec per model. The placement of every
deployment is decided by ``placement.decide`` and stored as one document in the models table
(``DeploymentStore.save_plan``), fenced by a revision: a replica whose stored decision is older
than ``interval_s`` decides again and writes on condition that nobody wrote meanwhile; the
loser reads the winner's answer. So every replica answers heartbeats from the same decision.

Decisions are taken lazily, when a heartbeat (or a PUT) finds the stored one stale: no
background loop, and a fleet without heartbeats has nothing to place.

What the runners get (``desired_models`` in the heartbeat answer):
- None when no deployment exists at all (runners serve their local repository), when only
  implicit deployments exist and none is placed on this runner, and for a draining runner
  (it keeps what it has while it finishes).
- Otherwise the versions placed on this runner, each with its files and a presigned GET per
  file, plus ``managed=False`` entries for models it reports that no deployment governs.

Implicit deployments (``services/models.py``: a pushed model gets one, min 0, max
``implicit_max_replicas``) only cold-start a model nobody serves: while a healthy runner
holds the model without being placed there (its own repository, or kept after a
scale-down), the implicit deployment is left out of the decision, and runners not placed
for it keep their copies (``managed=False``). The stored decision lists their names
(``implicit``).

Leases: for a deployed model, a runner is leased jobs of a version only when its last
heartbeat reported that version READY; models without a deployment keep the older rule (the
runner offers what it has READY).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from gpufleet.wire import (
    DeploymentSpec,
    DeploymentView,
    DesiredFile,
    DesiredModel,
    ModelRef,
)

from control_plane import clock
from control_plane.errors import InvalidRequest, NotFound
from control_plane.services import placement as pl
from control_plane.services.models import ModelService
from control_plane.services.principal import Principal
from control_plane.services.region_copies import RegionCopies
from control_plane.services.regions import RegionDefaults, RegionPolicy, check_region
from control_plane.services.runners import is_mock
from control_plane.storage.protocols import (
    BlobStore,
    DeploymentStore,
    JobRecord,
    ModelStore,
    PlanRecord,
)
from control_plane.storage.protocols_auth import RunnerRecord

log = logging.getLogger(__name__)
BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:/_-]{0,254}$")  # a bucket or access point ARN
REGION_CACHE_S = 2.0  # how long a replica trusts a deployment's region defaults

GOVERNED_CACHE_S = 1.0
QueueSnapshots = Callable[[list[str]], dict[str, pl.QueueSnapshot]]


def _plan_to_doc(plan: pl.ModelPlan) -> dict[str, Any]:
    doc = asdict(plan)
    doc["assignments"] = [asdict(a) for a in plan.assignments]
    return doc


def _plan_from_doc(doc: dict[str, Any]) -> pl.ModelPlan:
    return pl.ModelPlan(
        name=doc["name"],
        replicas=int(doc["replicas"]),
        assignments=tuple(pl.Assignment(**a) for a in doc.get("assignments", [])),
        reason=doc.get("reason"),
        busy_at=float(doc.get("busy_at", 0.0)),
        changed_at=float(doc.get("changed_at", 0.0)),
        last_wait_s=float(doc.get("last_wait_s", 0.0)),
    )


def plans_of(rec: PlanRecord | None) -> dict[str, pl.ModelPlan]:
    if rec is None:
        return {}
    return {name: _plan_from_doc(d) for name, d in rec.doc.get("plans", {}).items()}


def memory_of(rec: PlanRecord | None) -> dict[tuple[str, str, str], int]:
    if rec is None:
        return {}
    return {(m["model"], m["version"], m["gpu"]): int(m["mb"]) for m in rec.doc.get("memory", [])}


class DeploymentService:
    """Deployment specs, the stored placement, and what it means for runners and jobs."""

    def __init__(
        self,
        store: DeploymentStore,
        versions: ModelStore,
        models: ModelService,
        blobs: BlobStore,
        runners: Callable[[], list[RunnerRecord]],
        find_runner: Callable[[str], RunnerRecord | None],
        queue: QueueSnapshots,
        *,
        presign_ttl_s: int,
        offline_after_s: float,
        interval_s: float = 2.0,
        policy: pl.Policy = pl.Policy(),
        now: Callable[[], float] = clock.now,
        on_change: Sequence[Callable[[], None]] = (),
        allow_mock_runners: bool = True,
        pool_exists: Callable[[str], bool] | None = None,
    ) -> None:
        self._store = store
        self._versions = versions
        self._models = models
        self._blobs = blobs
        self._runners = runners
        self._find_runner = find_runner
        self._queue = queue
        self._ttl = presign_ttl_s
        self._offline_after_s = offline_after_s
        self._interval_s = interval_s
        self._policy = policy
        self._now = now
        self._files: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._governed: tuple[float, frozenset[str]] = (float("-inf"), frozenset())
        self._implicit: frozenset[str] = frozenset()  # of the last decision read or made
        self._region_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self.copies = RegionCopies(blobs, self.region_buckets, presign_ttl_s, now)
        # Called (no arguments, any thread) when this replica stores a decision that places
        # something differently: the runners connected here are told to heartbeat at once
        # (``Dispatcher.wake_all``) instead of at their next interval.
        self.on_change = tuple(on_change)
        # False: runners on the mock backend are not placed on.
        self.allow_mock_runners = allow_mock_runners
        self._cold_checked: dict[str, float] = {}  # model -> when job_queued last decided
        # Set when pools can be declared (``services/capacity``): does the pool exist?
        self.pool_exists = pool_exists

    # ------------------------------------------------------------------ API
    def put(self, p: Principal, name: str, spec: DeploymentSpec) -> DeploymentView:
        """Store the spec of a visible model (``models:write``) and decide again."""
        p.require("models:write")
        self._models.visible_owner(p, name)
        if spec.min_replicas > spec.max_replicas:
            raise InvalidRequest(
                f"min_replicas ({spec.min_replicas}) is above max_replicas ({spec.max_replicas})",
                field="max_replicas",
            )
        for i, region in enumerate(spec.regions):
            if not region.strip():
                raise InvalidRequest("a region must not be empty", field=f"regions[{i}]")
        if len(set(spec.regions)) != len(spec.regions):
            raise InvalidRequest("regions are listed twice", field="regions")
        for i, region in enumerate(spec.regions_allowed):
            check_region(region, f"regions_allowed[{i}]")
        if spec.default_region is not None:
            check_region(spec.default_region, "default_region")
            if spec.regions_allowed and spec.default_region not in spec.regions_allowed:
                raise InvalidRequest(
                    "default_region must be one of regions_allowed", field="default_region"
                )
        for region, location in spec.region_buckets.items():
            check_region(region, f"region_buckets.{region}")
            if not BUCKET_RE.match(location):
                raise InvalidRequest(
                    f"region_buckets.{region}: {location!r} is not a bucket name or access "
                    "point ARN",
                    field=f"region_buckets.{region}",
                )
        known = self.pool_exists
        if spec.pool is not None and known is not None and not known(spec.pool):
            raise InvalidRequest(
                f"no pool {spec.pool!r}: declare it first (PUT /v1/pools/{spec.pool}, admin) "
                "or leave pool out",
                field="pool",
            )
        doc = spec.model_dump(exclude={"api_version"})
        self._store.put_deployment(name, doc, self._now())
        self._region_cache.pop(name, None)
        if spec.region_buckets:
            for v in self._versions.list_versions(name):
                if v.state == "READY":
                    self.copies.copy_version(name, v.version, v.files)
        self.reconcile(force=True)
        self._governed = (float("-inf"), frozenset())
        return self.get(p, name)

    def _spec_cached(self, name: str) -> dict[str, Any]:
        """The deployment spec of ``name`` ({} without one), read at most once per
        ``REGION_CACHE_S`` per model on this replica (submits and heartbeats ask)."""
        t = time.monotonic()
        hit = self._region_cache.get(name)
        if hit is not None and t - hit[0] < REGION_CACHE_S:
            return hit[1]
        spec = self._store.get_deployment(name) or {}
        if len(self._region_cache) > 10_000:
            self._region_cache.clear()
        self._region_cache[name] = (t, spec)
        return spec

    def region_defaults(self, name: str) -> RegionDefaults | None:
        """The region defaults a deployment of ``name`` sets (None: none)."""
        spec = self._spec_cached(name)
        if spec.get("default_region") or spec.get("regions_allowed"):
            return RegionDefaults(
                spec.get("default_region"), tuple(spec.get("regions_allowed") or ())
            )
        return None

    def region_buckets(self, name: str) -> dict[str, str]:
        """region -> bucket holding a copy of ``name``'s files (the deployment's setting)."""
        return dict(self._spec_cached(name).get("region_buckets") or {})

    def get(self, p: Principal, name: str) -> DeploymentView:
        """The spec, the decided placement and what the runners report (``models:read``)."""
        p.require("models:read")
        self._models.visible_owner(p, name)
        spec = self._store.get_deployment(name)
        if spec is None:
            raise NotFound(f"model {name!r} has no deployment")
        plans = plans_of(self._store.get_plan())
        plan = plans.get(name)
        records = {r.id: r for r in self._runners()}
        observed: list[dict[str, Any]] = []
        placed: set[tuple[str, str]] = set()
        for a in plan.assignments if plan else ():
            r = records.get(a.runner_id)
            state = _state_on(r, name, a.version) if r else None
            placed.add((a.runner_id, a.version))
            observed.append(
                {
                    "runner_id": a.runner_id,
                    "region": r.region if r else None,
                    "version": a.version,
                    "gpu": a.gpu,
                    "memory_mb": a.memory_mb,
                    "desired": True,
                    "state": state or "PENDING",
                }
            )
        for r in records.values():
            for m in r.models:
                if m.get("name") == name and (r.id, str(m.get("version"))) not in placed:
                    observed.append(
                        {
                            "runner_id": r.id,
                            "region": r.region,
                            "version": str(m.get("version")),
                            "gpu": None,
                            "memory_mb": m.get("memory_mb"),
                            "desired": False,
                            "state": m.get("state"),
                        }
                    )
        implicit = bool(spec.get("implicit"))
        return DeploymentView(
            name=name,
            implicit=implicit,
            desired=DeploymentSpec.model_validate(
                {k: v for k, v in spec.items() if k != "implicit"}
            ),
            observed=observed,
            replicas=plan.replicas if plan else 0,
            reason=plan.reason if plan else None,
        )

    # ------------------------------------------------------------------ deciding
    def current(self) -> tuple[PlanRecord | None, dict[str, pl.ModelPlan]]:
        rec = self._store.get_plan()
        return rec, plans_of(rec)

    def reconcile(self, force: bool = False) -> dict[str, pl.ModelPlan]:
        """The stored decision, decided again first when stale (or ``force``)."""
        rec = self._store.get_plan()
        t = self._now()
        if rec is not None and not force and t - rec.planned_at < self._interval_s:
            return self._remember(rec)
        specs = self._store.list_deployments()
        if rec is None and not specs:
            return {}
        records = self._runners()
        runners = [self._runner_input(r, t) for r in records]
        previous = plans_of(rec)
        implicit = sorted(n for n, spec in specs.items() if spec.get("implicit"))
        specs = {
            n: spec
            for n, spec in specs.items()
            if not (spec.get("implicit") and _served_unplaced(n, runners, previous))
        }
        measured = pl.learn_memory(runners, previous, memory_of(rec))
        names = sorted(specs)
        snapshots = self._queue(names) if names else {}
        deployments = [
            self._deployment_input(name, spec, snapshots.get(name))
            for name, spec in sorted(specs.items())
        ]
        queue = {name: snap.stat(t) for name, snap in snapshots.items()}
        plans = pl.decide(deployments, runners, previous, queue, measured, t, self._policy)
        doc = {
            "plans": {name: _plan_to_doc(plan) for name, plan in plans.items()},
            "memory": [
                {"model": m, "version": v, "gpu": g, "mb": mb}
                for (m, v, g), mb in sorted(measured.items())
            ],
            "implicit": implicit,
        }
        if self._store.save_plan(doc, t, rec.revision if rec else 0):
            self._implicit = frozenset(implicit)
            if _placements(plans) != _placements(previous):
                self._changed()
            return plans
        return self._remember(self._store.get_plan())  # another replica decided meanwhile

    def _changed(self) -> None:
        for hook in self.on_change:
            try:
                hook()
            except Exception:
                log.warning("deployment change hook failed", exc_info=True)

    def job_queued(self, model: str) -> None:
        """A job of ``model`` was queued: when the model's deployment has no replica (min 0,
        or an implicit one), decide now instead of at the next stale heartbeat, so the cold
        start begins at once (at most once per ``interval_s`` per model)."""
        t = self._now()
        if t - self._cold_checked.get(model, float("-inf")) < self._interval_s:
            return
        self._cold_checked[model] = t
        rec = self._store.get_plan()
        plan = plans_of(rec).get(model)
        if plan is not None and plan.assignments:
            return  # placed already: runners load it or serve it
        if self._store.get_deployment(model) is None:
            return
        if not any(self.healthy(r, t) for r in self._runners()):
            return  # nobody to place it on: the first heartbeat decides
        self.reconcile(force=True)

    def _remember(self, rec: PlanRecord | None) -> dict[str, pl.ModelPlan]:
        """The plans of ``rec``, keeping its implicit names for ``desired_models``."""
        self._implicit = frozenset(rec.doc.get("implicit", [])) if rec is not None else frozenset()
        return plans_of(rec)

    def _deployment_input(
        self, name: str, spec: dict[str, Any], snap: pl.QueueSnapshot | None
    ) -> pl.DeploymentInput:
        ready = tuple(v.version for v in self._versions.list_versions(name) if v.state == "READY")
        return pl.DeploymentInput(
            name=name,
            min_replicas=int(spec.get("min_replicas", 1)),
            max_replicas=int(spec.get("max_replicas", 1)),
            regions=tuple(spec.get("regions", [])),
            gpu_memory_mb=spec.get("gpu_memory_mb"),
            ready_versions=ready,
            pool=spec.get("pool"),
            pinned_versions=snap.pinned_versions if snap else frozenset(),
        )

    def healthy(self, r: RunnerRecord, t: float) -> bool:
        last = r.last_heartbeat_at
        return (
            not r.revoked
            and last is not None
            and t - last <= self._offline_after_s
            and not r.config.get("drain")
            and (self.allow_mock_runners or not is_mock(r))  # a refused mock runner: no work
        )

    def _runner_input(self, r: RunnerRecord, t: float) -> pl.RunnerInput:
        return pl.RunnerInput(
            id=r.id,
            region=r.region,
            healthy=self.healthy(r, t),
            pool=r.labels.get("gpufleet.pool"),
            gpus=tuple(
                pl.GpuInput(
                    index=int(g["index"]),
                    name=str(g.get("name", "")),
                    total_mb=int(g.get("memory_total_mb", 0)),
                    used_mb=int(g.get("memory_used_mb", 0)),
                )
                for g in r.gpus
            ),
            models={
                (str(m["name"]), str(m["version"])): pl.ModelOnRunner(
                    state=_state_word(m.get("state")), memory_mb=m.get("memory_mb")
                )
                for m in r.models
                if "name" in m and "version" in m
            },
        )

    # ------------------------------------------------------------------ runners
    def desired_models(self, runner: RunnerRecord) -> list[DesiredModel] | None:
        """The heartbeat answer's ``desired_models`` for ``runner`` (see the module doc)."""
        plans = self.reconcile()
        if not plans or runner.config.get("drain"):
            return None
        implicit = self._implicit
        mine = {name for name, _ in pl.desired_for(plans, runner.id)}
        if all(name in implicit for name in plans) and not mine:
            return None  # implicit deployments only, none placed here: the local repository
        out: list[DesiredModel] = []
        for name, a in pl.desired_for(plans, runner.id):
            files = self._files_of(name, a.version)
            if files is None:
                continue  # deleted meanwhile
            out.append(
                DesiredModel(
                    name=name,
                    version=a.version,
                    gpus=None if a.gpu is None else [a.gpu],
                    memory_mb=a.memory_mb or None,
                    files=[
                        DesiredFile(
                            path=f["path"],
                            size=f["size"],
                            sha256=f["sha256"],
                            url=self.copies.url(runner.region, name, a.version, f["path"]),
                        )
                        for f in files
                    ],
                )
            )
        for m in runner.models:
            name, version = str(m.get("name", "")), str(m.get("version", ""))
            if name in plans and (name not in implicit or name in mine):
                continue  # governed here (an implicit plan leaves other runners' copies be)
            try:
                out.append(DesiredModel(name=name, version=version, managed=False))
            except ValueError:
                continue  # a local model whose name or version the API cannot express
        return out

    def _files_of(self, name: str, version: str) -> list[dict[str, Any]] | None:
        key = (name, version)
        if key not in self._files:
            rec = self._versions.get_version(name, version)
            if rec is None or rec.state != "READY":
                return None
            self._files[key] = rec.files  # a READY version's files never change
        return self._files[key]

    def lease_offers(self, runner_id: str, offers: list[ModelRef]) -> list[ModelRef]:
        """The offers a runner may be leased jobs of: for deployed models, READY ones only."""
        governed = self._governed_models()
        if not any(o.name in governed for o in offers):
            return offers
        runner = self._find_runner(runner_id)
        ready = {
            (str(m.get("name")), str(m.get("version")))
            for m in (runner.models if runner else [])
            if _state_word(m.get("state")) == "READY"
        }
        return [o for o in offers if o.name not in governed or (o.name, o.version) in ready]

    def _governed_models(self) -> frozenset[str]:
        """Names with a deployment, re-read at most once a second (each lease asks)."""
        at, names = self._governed
        t = self._now()
        if t - at >= GOVERNED_CACHE_S or t < at:
            names = frozenset(plans_of(self._store.get_plan()))
            self._governed = (t, names)
        return names

    def loaded_on(self, name: str) -> dict[str, list[str]]:
        """version -> ids of online runners (draining ones too) that last reported it READY."""
        t = self._now()
        out: dict[str, list[str]] = {}
        for r in self._runners():
            last = r.last_heartbeat_at
            if r.revoked or last is None or t - last > self._offline_after_s:
                continue
            for m in r.models:
                if m.get("name") == name and _state_word(m.get("state")) == "READY":
                    out.setdefault(str(m.get("version")), []).append(r.id)
        return {v: sorted(ids) for v, ids in out.items()}

    # ------------------------------------------------------------------ jobs
    def waiting_reason(self, job: JobRecord) -> str | None:
        """Why a QUEUED job is not running yet, in words (None: nothing to say)."""
        t = self._now()
        plans = plans_of(self._store.get_plan())
        records = self._runners()
        version = job.model_version if job.pinned else None
        healthy = [r for r in records if self.healthy(r, t)]
        if not healthy:
            return "no healthy runner is connected"
        policy = RegionPolicy.of_job(job.region, job.request, 0.0)
        local = [r for r in healthy if policy.permits(r.region)]
        if not local:
            return f"no healthy runner in regions_allowed {list(policy.allowed)}"
        what = f"model {job.model!r}" + (f" version {version}" if version else "")
        serving = [r for r in local if _state_on(r, job.model, version) == "READY"]
        if serving:
            return f"waiting for a free slot on {len(serving)} runner(s) serving {what}"
        loading = [r.id for r in local if _state_on(r, job.model, version) == "LOADING"]
        if loading:
            return f"loading: {what} is loading on {', '.join(sorted(loading))}"
        plan = plans.get(job.model)
        if plan is None:
            return (
                f"no runner serves {what} and it has no deployment "
                f"(PUT /v1/models/{job.model}/deployment, or `gpufleet models deploy`)"
            )
        if plan.reason:
            return plan.reason
        placed = [
            a.runner_id
            for a in plan.assignments
            if (version is None or a.version == version) and any(r.id == a.runner_id for r in local)
        ]
        if placed:
            return f"loading: {what} is being fetched by {', '.join(sorted(set(placed)))}"
        if plan.replicas == 0:
            return f"cold start: {what} is scaled to zero; a replica starts at the next placement"
        where = f" in region {job.region!r}" if job.region else ""
        return f"no replica of {what} is placed{where}"


def _placements(plans: dict[str, pl.ModelPlan]) -> dict[str, list[tuple[str, str, Any]]]:
    """Who serves what in a decision (replica counts and reasons aside)."""
    return {
        name: sorted((a.runner_id, a.version, a.gpu) for a in plan.assignments)
        for name, plan in plans.items()
    }


def _served_unplaced(
    name: str, runners: list[pl.RunnerInput], previous: dict[str, pl.ModelPlan]
) -> bool:
    """A healthy runner holds ``name`` (READY or LOADING) without being placed there: it
    serves it from its own repository (or kept it after a scale-down). An implicit deployment
    then stands aside: it only cold-starts a model nobody serves and never takes one away."""
    plan = previous.get(name)
    placed = {a.runner_id for a in plan.assignments} if plan else set()
    return any(r.healthy and r.id not in placed and r.holds(name) for r in runners)


def _state_word(state: object) -> str:
    """``UNAVAILABLE: reason`` -> ``UNAVAILABLE``."""
    return str(state or "").split(":", 1)[0].strip().upper()


def _state_on(r: RunnerRecord | None, name: str, version: str | None) -> str | None:
    """The best state ``r`` reports for the model (any version when ``version`` is None)."""
    if r is None:
        return None
    states = {
        _state_word(m.get("state"))
        for m in r.models
        if m.get("name") == name and (version is None or str(m.get("version")) == version)
    }
    for best in ("READY", "LOADING", "UNAVAILABLE", "UNLOADING"):
        if best in states:
            return best
    return next(iter(sorted(states)), None)
