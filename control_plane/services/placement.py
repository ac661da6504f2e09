"""Placement: which runner (and GPU) serves which model version. A pure decision function.

``decide`` takes everything it needs as plain values (deployments, runner records with their
GPUs and model states, queue depth and wait per model, the memory each model version was
measured to take per GPU type, the previous decision) and returns the new decision. It reads
no clock and no table, so the same inputs give the same answer on any replica;
``services/deployments.py`` feeds it and stores its answer with a conditional write.

Rules, per deployment (models in name order, so memory is shared out deterministically):

- Target version: the newest READY version. A runner moving to it keeps its old version
  loaded until the target is READY there (when both fit in its GPU's memory), and any
  version pinned by queued jobs stays placed on one runner: no job fails during a rollout.
- Replicas: start at ``min_replicas``. While jobs wait at least ``scale_up_wait_s`` and the
  wait is not shrinking, add one per ``cooldown_s``; after ``scale_down_idle_s`` without a
  queued job, remove one per ``cooldown_s``, down to ``min_replicas`` (0 allowed: the next
  job gets a cold start, one replica). Always within ``[0, max_replicas]``.
- Eligible runners: healthy (recent heartbeat, not revoked, not draining), in one of the
  deployment's ``regions`` (any region when the list is empty) and, when the deployment
  requires a capacity ``pool``, started for that pool (the runner label ``gpufleet.pool``).
- Regions (docs/regions.md): jobs that prefer a region count per region too. When the oldest
  job preferring region R has waited ``scale_up_wait_s`` and no replica is placed in R, a
  runner in R gets one (a new replica while below ``max_replicas``; busiest region first), so
  a busy region gets its own replica instead of its jobs spilling to other regions forever.
- Existing assignments are kept while their runner stays eligible (no churn). New replicas
  go to, in order: runners that already hold the model (any version, READY or LOADING),
  runners in an earlier region of ``regions`` (the preference order), runners with the
  most free memory on one GPU; only GPUs with enough free memory for the version count.
- Memory a version needs on a GPU: measured for that version on that GPU type, else the
  deployment's declared ``gpu_memory_mb``, else measured on another GPU type, else 0.
  A GPU's free memory is ``total - used`` from the heartbeat minus what this decision
  placed on it that is not loaded yet (READY models are already in ``used``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

LOADED = "READY"
HOLDING = frozenset({"READY", "LOADING"})


@dataclass(frozen=True)
class Policy:
    """Scaling knobs (seconds)."""

    scale_up_wait_s: float = 5.0
    scale_down_idle_s: float = 60.0
    cooldown_s: float = 10.0


@dataclass(frozen=True)
class DeploymentInput:
    """A deployment and what the repository and the queue say about its model."""

    name: str
    min_replicas: int
    max_replicas: int
    regions: tuple[str, ...] = ()
    gpu_memory_mb: int | None = None
    ready_versions: tuple[str, ...] = ()  # newest first
    pool: str | None = None  # a capacity pool the runners must belong to
    pinned_versions: frozenset[str] = frozenset()  # versions queued jobs are pinned to


@dataclass(frozen=True)
class GpuInput:
    index: int
    name: str
    total_mb: int
    used_mb: int


@dataclass(frozen=True)
class ModelOnRunner:
    state: str
    memory_mb: int | None = None


@dataclass(frozen=True)
class RunnerInput:
    """A runner as its last heartbeat described it."""

    id: str
    region: str
    healthy: bool
    gpus: tuple[GpuInput, ...] = ()
    models: Mapping[tuple[str, str], ModelOnRunner] = field(default_factory=dict)
    pool: str | None = None  # the capacity pool that started it (label gpufleet.pool)

    def holds(
        self, name: str, version: str | None = None, states: frozenset[str] = HOLDING
    ) -> bool:
        return any(
            n == name and (version is None or v == version) and m.state in states
            for (n, v), m in self.models.items()
        )


@dataclass(frozen=True)
class QueueSnapshot:
    """What the queue holds for a model: depth, the oldest entry, versions jobs pin."""

    depth: int = 0
    oldest_at: float | None = None
    pinned_versions: frozenset[str] = frozenset()
    # preferred region -> creation time of the oldest queued job that prefers it
    oldest_by_region: Mapping[str, float] = field(default_factory=dict)
    # the entry's region policy (``RegionPolicy.encode``; "" = any region) -> (jobs, creation
    # time of the oldest): the capacity autoscaler routes each to a pool in a region it permits
    by_policy: Mapping[str, tuple[int, float]] = field(default_factory=dict)

    def stat(self, now: float) -> QueueStat:
        wait = 0.0 if self.oldest_at is None else max(0.0, now - self.oldest_at)
        regions = {r: max(0.0, now - t) for r, t in self.oldest_by_region.items()}
        return QueueStat(depth=self.depth, wait_s=wait, region_wait_s=regions)


@dataclass(frozen=True)
class QueueStat:
    """Queued jobs of a model and how long the oldest has waited."""

    depth: int = 0
    wait_s: float = 0.0
    region_wait_s: Mapping[str, float] = field(default_factory=dict)  # by preferred region


@dataclass(frozen=True)
class Assignment:
    runner_id: str
    version: str
    gpu: int | None
    memory_mb: int = 0


@dataclass(frozen=True)
class ModelPlan:
    """The decision for one model, with the scaling state the next decision starts from."""

    name: str
    replicas: int
    assignments: tuple[Assignment, ...] = ()
    reason: str | None = None  # why fewer replicas than wanted are placed (None: all placed)
    busy_at: float = 0.0  # the last time jobs were queued
    changed_at: float = 0.0  # the last time ``replicas`` changed
    last_wait_s: float = 0.0

    def runners(self) -> list[str]:
        return sorted({a.runner_id for a in self.assignments})


MemoryTable = Mapping[tuple[str, str, str], int]  # (model, version, gpu name) -> MB


def memory_needed(dep: DeploymentInput, version: str, gpu_name: str, measured: MemoryTable) -> int:
    """The memory ``version`` of ``dep`` is expected to take on a GPU named ``gpu_name``."""
    exact = measured.get((dep.name, version, gpu_name))
    if exact is not None:
        return exact
    if dep.gpu_memory_mb is not None:
        return dep.gpu_memory_mb
    others = [mb for (n, v, _), mb in sorted(measured.items()) if n == dep.name and v == version]
    return max(others, default=0)


def learn_memory(
    runners: Sequence[RunnerInput], previous: Mapping[str, ModelPlan], known: MemoryTable
) -> dict[tuple[str, str, str], int]:
    """``known`` updated with the ``memory_mb`` that READY models report.

    The GPU type is the one the previous decision put the model on, else the runner's GPU
    type when all its GPUs are of one type; otherwise the report cannot be attributed.
    """
    out = dict(known)
    placed = {
        (a.runner_id, plan.name, a.version): a.gpu
        for plan in previous.values()
        for a in plan.assignments
    }
    for r in runners:
        names = {g.index: g.name for g in r.gpus}
        for (name, version), m in sorted(r.models.items()):
            if m.state != LOADED or m.memory_mb is None:
                continue
            gpu = placed.get((r.id, name, version))
            if gpu is not None and gpu in names:
                out[(name, version, names[gpu])] = m.memory_mb
            elif len(set(names.values())) == 1:
                out[(name, version, next(iter(names.values())))] = m.memory_mb
    return out


def scale(
    dep: DeploymentInput, prev: ModelPlan | None, q: QueueStat, now: float, p: Policy
) -> ModelPlan:
    """The replica count for this round (assignments are filled in by ``decide``)."""
    replicas = prev.replicas if prev is not None else dep.min_replicas
    busy_at = now if q.depth > 0 else (prev.busy_at if prev else now)
    changed_at = prev.changed_at if prev else now
    last_wait = prev.last_wait_s if prev else 0.0
    cooled = prev is None or now - changed_at >= p.cooldown_s
    wanted = replicas
    if q.depth > 0 and replicas == 0:
        wanted = 1  # cold start
    elif q.depth > 0 and q.wait_s >= p.scale_up_wait_s and q.wait_s >= last_wait and cooled:
        wanted = replicas + 1
    elif q.depth == 0 and now - busy_at >= p.scale_down_idle_s and cooled:
        wanted = replicas - 1
    wanted = max(dep.min_replicas, min(wanted, dep.max_replicas))
    if wanted != replicas:
        changed_at = now
    return ModelPlan(
        name=dep.name,
        replicas=wanted,
        busy_at=busy_at,
        changed_at=changed_at,
        last_wait_s=q.wait_s,
    )


class _Ledger:
    """Free memory per (runner, GPU index) as this decision places models."""

    def __init__(self, runners: Sequence[RunnerInput]) -> None:
        self.free = {(r.id, g.index): g.total_mb - g.used_mb for r in runners for g in r.gpus}

    def best_gpu(self, r: RunnerInput, need: MemoryFn) -> tuple[GpuInput | None, int]:
        """The GPU with the most free memory that fits, and the most free memory seen."""
        best: GpuInput | None = None
        most = -1
        for g in sorted(r.gpus, key=lambda g: (-self.free[(r.id, g.index)], g.index)):
            free = self.free[(r.id, g.index)]
            most = max(most, free)
            if best is None and free >= need(g.name):
                best = g
        return best, most

    def take(self, runner_id: str, gpu: int | None, mb: int) -> None:
        if gpu is not None and (runner_id, gpu) in self.free:
            self.free[(runner_id, gpu)] -= mb


class MemoryFn:
    def __init__(self, dep: DeploymentInput, version: str, measured: MemoryTable) -> None:
        self._dep, self._version, self._measured = dep, version, measured

    def __call__(self, gpu_name: str) -> int:
        return memory_needed(self._dep, self._version, gpu_name, self._measured)


def _gpu_name(r: RunnerInput, index: int | None) -> str:
    return next((g.name for g in r.gpus if g.index == index), "")


def decide(
    deployments: Sequence[DeploymentInput],
    runners: Sequence[RunnerInput],
    previous: Mapping[str, ModelPlan],
    queue: Mapping[str, QueueStat],
    measured: MemoryTable,
    now: float,
    policy: Policy = Policy(),
) -> dict[str, ModelPlan]:
    """The placement of every deployment (see the module docstring for the rules)."""
    ledger = _Ledger(runners)
    by_id = {r.id: r for r in runners}
    out: dict[str, ModelPlan] = {}
    for dep in sorted(deployments, key=lambda d: d.name):
        q = queue.get(dep.name, QueueStat())
        plan = scale(dep, previous.get(dep.name), q, now, policy)
        if not dep.ready_versions:
            out[dep.name] = replace(plan, reason=f"model {dep.name!r} has no READY version")
            continue
        busy = sorted(
            (r for r, w in q.region_wait_s.items() if w >= policy.scale_up_wait_s),
            key=lambda r: (-q.region_wait_s[r], r),
        )
        out[dep.name] = _place(
            dep, plan, previous.get(dep.name), runners, by_id, ledger, measured, busy, now
        )
    return out


def _region_rank(dep: DeploymentInput, r: RunnerInput) -> int:
    return dep.regions.index(r.region) if r.region in dep.regions else len(dep.regions)


def _place(
    dep: DeploymentInput,
    plan: ModelPlan,
    prev: ModelPlan | None,
    runners: Sequence[RunnerInput],
    by_id: Mapping[str, RunnerInput],
    ledger: _Ledger,
    measured: MemoryTable,
    busy_regions: Sequence[str] = (),
    now: float = 0.0,
) -> ModelPlan:
    target = dep.ready_versions[0]
    need = MemoryFn(dep, target, measured)
    eligible = [
        r
        for r in runners
        if r.healthy
        and (not dep.regions or r.region in dep.regions)
        and (dep.pool is None or r.pool == dep.pool)
    ]
    eligible_ids = {r.id for r in eligible}

    def rank(r: RunnerInput) -> tuple[int, int, str]:
        return (0 if r.holds(target, None, frozenset({LOADED})) else 1, _region_rank(dep, r), r.id)

    # 1. keep the previous runners that are still eligible (best ones first)
    kept_ids = sorted(
        {a.runner_id for a in (prev.assignments if prev else ()) if a.runner_id in eligible_ids},
        key=lambda i: rank(by_id[i]),
    )[: plan.replicas]
    assignments: list[Assignment] = []
    for rid in kept_ids:
        r = by_id[rid]
        old = [a for a in (prev.assignments if prev else ()) if a.runner_id == rid]
        assignments.extend(_move_to_target(dep, r, old, target, need, ledger, measured))

    chosen = set(kept_ids)

    def add(candidates: list[RunnerInput]) -> str | None:
        """Place one replica on the best of ``candidates``; why not (None: placed)."""
        scored = []
        most_free = -1
        for r in candidates:
            gpu, most = ledger.best_gpu(r, need)
            most_free = max(most_free, most)
            if gpu is None and r.gpus:
                continue
            free = ledger.free.get((r.id, gpu.index), 0) if gpu else 0
            holds = 0 if r.holds(dep.name) else 1
            scored.append(((holds, _region_rank(dep, r), -free, r.id), r, gpu))
        if not scored:
            return (
                f"not enough GPU memory for {dep.name!r} version {target}: needs "
                f"{need(_gpu_name(candidates[0], candidates[0].gpus[0].index))} MB, "
                f"the most free on an eligible GPU is {max(most_free, 0)} MB"
            )
        _, r, gpu = min(scored, key=lambda x: x[0])
        chosen.add(r.id)
        mb = need(gpu.name) if gpu else 0
        if not r.holds(dep.name, target, frozenset({LOADED})):
            ledger.take(r.id, gpu.index if gpu else None, mb)
        assignments.append(Assignment(r.id, target, gpu.index if gpu else None, mb))
        return None

    # 2. a replica in each busy region that has none (busiest first)
    for region in busy_regions:
        if any(by_id[rid].region == region for rid in chosen):
            continue
        local = [r for r in eligible if r.id not in chosen and r.region == region]
        if not local:
            continue
        if len(chosen) >= plan.replicas:
            if plan.replicas >= dep.max_replicas:
                break
            plan = replace(plan, replicas=plan.replicas + 1, changed_at=now)
        add(local)

    # 3. add replicas
    reason: str | None = None
    while len(chosen) < plan.replicas:
        candidates = [r for r in eligible if r.id not in chosen]
        if not candidates:
            where = f" in regions {list(dep.regions)}" if dep.regions else ""
            where += f" in pool {dep.pool!r}" if dep.pool else ""
            reason = f"no healthy runner{where} to place replica {len(chosen) + 1} of {dep.name!r}"
            break
        reason = add(candidates)
        if reason is not None:
            break

    # 4. versions pinned by queued jobs stay placed somewhere
    placed_versions = {a.version for a in assignments}
    for version in sorted(dep.pinned_versions - placed_versions):
        if version not in dep.ready_versions:
            continue
        extra = _place_pinned(dep, version, assignments, runners, eligible, ledger, measured)
        if extra is not None:
            assignments.append(extra)
    assignments.sort(key=lambda a: (a.runner_id, -int(a.version)))
    return replace(plan, assignments=tuple(assignments), reason=reason)


def _move_to_target(
    dep: DeploymentInput,
    r: RunnerInput,
    old: list[Assignment],
    target: str,
    need: MemoryFn,
    ledger: _Ledger,
    measured: MemoryTable,
) -> list[Assignment]:
    """A kept runner's assignments for this round: the target, and old versions in rollout."""
    current = next((a for a in old if a.version == target), None)
    if current is not None:
        current = replace(current, memory_mb=need(_gpu_name(r, current.gpu)))  # newer measure
        if not r.holds(dep.name, target, frozenset({LOADED})):
            ledger.take(r.id, current.gpu, current.memory_mb)
        out = [current]
        # an older version stays until the target is READY on this runner
        if not r.holds(dep.name, target, frozenset({LOADED})):
            out += [a for a in old if a.version != target and r.holds(dep.name, a.version)]
        return out
    gpu, _ = ledger.best_gpu(r, need)
    previous_gpu = old[0].gpu if old else None
    if not r.gpus:  # a CPU runner: no GPU memory to share out, both versions side by side
        keep = [a for a in old if r.holds(dep.name, a.version)]
        return [Assignment(r.id, target, None, need("")), *keep]
    if gpu is None:  # does not fit beside the old version: replace it in place
        freed = sum(a.memory_mb for a in old if r.holds(dep.name, a.version, frozenset({LOADED})))
        g = next((g for g in r.gpus if g.index == previous_gpu), None)
        mb = need(g.name) if g else 0
        ledger.take(r.id, previous_gpu, mb - freed)
        return [Assignment(r.id, target, previous_gpu, mb)]
    mb = need(gpu.name)
    ledger.take(r.id, gpu.index, mb)
    keep_old = [a for a in old if r.holds(dep.name, a.version)]
    return [Assignment(r.id, target, gpu.index, mb), *keep_old]


def _place_pinned(
    dep: DeploymentInput,
    version: str,
    assignments: list[Assignment],
    runners: Sequence[RunnerInput],
    eligible: list[RunnerInput],
    ledger: _Ledger,
    measured: MemoryTable,
) -> Assignment | None:
    """One runner for a version that queued jobs pin (one that holds it, else one that fits)."""
    need = MemoryFn(dep, version, measured)
    mine = {a.runner_id for a in assignments}
    order = sorted(
        eligible,
        key=lambda r: (
            0 if r.holds(dep.name, version) else 1,
            0 if r.id in mine else 1,
            _region_rank(dep, r),
            r.id,
        ),
    )
    for r in order:
        if r.holds(dep.name, version, frozenset({LOADED})):
            gpu = next((a.gpu for a in assignments if a.runner_id == r.id), None)
            return Assignment(r.id, version, gpu, need(_gpu_name(r, gpu)))
        g, _ = ledger.best_gpu(r, need)
        if g is not None or not r.gpus:
            mb = need(g.name) if g else 0
            ledger.take(r.id, g.index if g else None, mb)
            return Assignment(r.id, version, g.index if g else None, mb)
    return None


def desired_for(plans: Mapping[str, ModelPlan], runner_id: str) -> list[tuple[str, Assignment]]:
    """What one runner should serve: (model name, assignment), in name/version order."""
    return [
        (plan.name, a)
        for plan in sorted(plans.values(), key=lambda p: p.name)
        for a in plan.assignments
        if a.runner_id == runner_id
    ]
