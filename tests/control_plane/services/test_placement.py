"""Placement decisions over three fake runners (their GPUs as a fake NVML would report them)."""

from __future__ import annotations

from dataclasses import replace

from control_plane.services.placement import (
    Assignment,
    DeploymentInput,
    GpuInput,
    ModelOnRunner,
    ModelPlan,
    Policy,
    QueueSnapshot,
    QueueStat,
    RunnerInput,
    decide,
    desired_for,
    learn_memory,
    memory_needed,
)

POLICY = Policy(scale_up_wait_s=5.0, scale_down_idle_s=60.0, cooldown_s=10.0)


def runner(
    rid: str,
    region: str,
    free_mb: list[int],
    *,
    models: dict[tuple[str, str], str] | None = None,
    healthy: bool = True,
    gpu_name: str = "L4",
) -> RunnerInput:
    gpus = tuple(GpuInput(i, gpu_name, 24000, 24000 - f) for i, f in enumerate(free_mb))
    states = {k: ModelOnRunner(v) for k, v in (models or {}).items()}
    return RunnerInput(rid, region, healthy, gpus, states)


def dep(name: str = "m", **kw: object) -> DeploymentInput:
    base = DeploymentInput(name, 1, 3, ready_versions=("1",), gpu_memory_mb=8000)
    return replace(base, **kw)  # type: ignore[arg-type]


def fleet() -> list[RunnerInput]:
    return [
        runner("r-a", "eu", [4000]),  # too little free memory
        runner("r-b", "us", [10000, 20000]),
        runner("r-c", "eu", [9000]),
    ]


def test_memory_aware_choice_picks_a_gpu_that_fits() -> None:
    plans = decide([dep()], fleet(), {}, {}, {}, now=0.0, policy=POLICY)
    (a,) = plans["m"].assignments
    # r-a does not fit; r-c fits and is the only eu one, but no region is preferred here:
    # the most free memory on one GPU wins (r-b's GPU 1)
    assert (a.runner_id, a.gpu, a.memory_mb) == ("r-b", 1, 8000)
    assert plans["m"].reason is None


def test_region_preference_follows_the_order_of_regions() -> None:
    plans = decide([dep(regions=("eu", "us"))], fleet(), {}, {}, {}, now=0.0, policy=POLICY)
    (a,) = plans["m"].assignments
    assert (a.runner_id, a.gpu) == ("r-c", 0)  # r-a is in eu too but has 4000 MB free
    plans = decide([dep(regions=("us",))], fleet(), {}, {}, {}, now=0.0, policy=POLICY)
    assert [a.runner_id for a in plans["m"].assignments] == ["r-b"]


def test_no_runner_in_region_and_not_enough_memory_are_reasons() -> None:
    plans = decide([dep(regions=("ap",))], fleet(), {}, {}, {}, now=0.0, policy=POLICY)
    assert plans["m"].assignments == ()
    assert plans["m"].reason is not None and "regions ['ap']" in plans["m"].reason
    plans = decide([dep(gpu_memory_mb=30000)], fleet(), {}, {}, {}, now=0.0, policy=POLICY)
    assert plans["m"].assignments == ()
    assert plans["m"].reason == (
        "not enough GPU memory for 'm' version 1: needs 30000 MB, "
        "the most free on an eligible GPU is 20000 MB"
    )
    unhealthy = [replace(r, healthy=False) for r in fleet()]
    plans = decide([dep()], unhealthy, {}, {}, {}, now=0.0, policy=POLICY)
    assert plans["m"].reason is not None and "no healthy runner" in plans["m"].reason


def test_two_models_share_memory_out_without_overcommitting() -> None:
    runners = [runner("r-a", "eu", [9000]), runner("r-b", "eu", [9000]), runner("r-c", "eu", [0])]
    plans = decide([dep("a"), dep("b")], runners, {}, {}, {}, now=0.0, policy=POLICY)
    assert [x.runner_id for x in plans["a"].assignments] == ["r-a"]
    assert [x.runner_id for x in plans["b"].assignments] == ["r-b"]  # r-a has 1000 MB left
    plans = decide([dep("a"), dep("b"), dep("c")], runners, {}, {}, {}, now=0.0, policy=POLICY)
    assert plans["c"].assignments == () and "not enough GPU memory" in str(plans["c"].reason)


def test_measured_memory_per_gpu_type_replaces_the_declared_value() -> None:
    d = dep(gpu_memory_mb=8000)
    assert memory_needed(d, "1", "L4", {("m", "1", "L4"): 3000}) == 3000
    assert memory_needed(d, "1", "A100", {("m", "1", "L4"): 3000}) == 8000
    assert memory_needed(dep(gpu_memory_mb=None), "1", "A100", {("m", "1", "L4"): 3000}) == 3000
    # measured at 3000 MB on L4: now r-a (4000 MB free) fits, and is preferred in eu
    runners = fleet()
    plans = decide(
        [dep(regions=("eu",), max_replicas=1)],
        runners,
        {},
        {},
        {("m", "1", "L4"): 3000},
        now=0.0,
        policy=POLICY,
    )
    assert plans["m"].assignments[0].runner_id == "r-c"  # most free in eu still wins
    tight = [runner("r-a", "eu", [4000]), runner("r-c", "eu", [3500])]
    plans = decide([dep()], tight, {}, {}, {("m", "1", "L4"): 3800}, now=0.0, policy=POLICY)
    assert [(a.runner_id, a.memory_mb) for a in plans["m"].assignments] == [("r-a", 3800)]


def test_learn_memory_attributes_reports_to_the_placed_gpu_type() -> None:
    r = RunnerInput(
        "r-x",
        "eu",
        True,
        (GpuInput(0, "L4", 24000, 0), GpuInput(1, "A100", 40000, 0)),
        {("m", "1"): ModelOnRunner("READY", 5100), ("m", "2"): ModelOnRunner("LOADING", 10)},
    )
    prev = {"m": ModelPlan("m", 1, (Assignment("r-x", "1", 1, 8000),))}
    assert learn_memory([r], prev, {}) == {("m", "1", "A100"): 5100}
    # without a placement, a runner with GPUs of mixed types cannot attribute it
    assert learn_memory([r], {}, {}) == {}
    single = runner("r-y", "eu", [1000], models={("m", "1"): "READY"})
    single = replace(single, models={("m", "1"): ModelOnRunner("READY", 4200)})
    assert learn_memory([single], {}, {("m", "1", "L4"): 1}) == {("m", "1", "L4"): 4200}


def test_prefers_runners_that_already_hold_the_model() -> None:
    runners = fleet()
    runners[2] = runner("r-c", "eu", [9000], models={("m", "1"): "READY"})
    plans = decide([dep()], runners, {}, {}, {}, now=0.0, policy=POLICY)
    assert [a.runner_id for a in plans["m"].assignments] == ["r-c"]  # not the freest r-b
    # READY there: its memory is already counted in used, nothing more taken
    runners[2] = runner("r-c", "eu", [100], models={("m", "1"): "READY"})
    plans = decide([dep()], runners, {}, {}, {}, now=0.0, policy=POLICY)
    assert [a.runner_id for a in plans["m"].assignments] == ["r-b"]  # r-c has no room left
    prev = {"m": ModelPlan("m", 1, (Assignment("r-c", "1", 0, 8000),))}
    plans = decide([dep()], runners, prev, {}, {}, now=0.0, policy=POLICY)
    assert [a.runner_id for a in plans["m"].assignments] == ["r-c"]  # kept: no churn


def test_scale_up_while_queue_wait_grows_then_down_to_min_when_idle() -> None:
    runners = fleet()
    d = dep(min_replicas=0, max_replicas=3, gpu_memory_mb=1000)
    t = 1000.0
    plans = decide([d], runners, {}, {}, {}, now=t, policy=POLICY)
    assert plans["m"].replicas == 0 and plans["m"].assignments == ()
    # a job arrives: cold start, one replica
    t += 1
    plans = decide([d], runners, plans, {"m": QueueStat(1, 0.5)}, {}, now=t, policy=POLICY)
    assert plans["m"].replicas == 1
    # the wait grows past scale_up_wait_s: one more per cooldown
    t += 11
    plans = decide([d], runners, plans, {"m": QueueStat(40, 6.0)}, {}, now=t, policy=POLICY)
    assert plans["m"].replicas == 2
    t += 2  # inside the cooldown: no change
    plans = decide([d], runners, plans, {"m": QueueStat(60, 8.0)}, {}, now=t, policy=POLICY)
    assert plans["m"].replicas == 2
    t += 10
    plans = decide([d], runners, plans, {"m": QueueStat(90, 12.0)}, {}, now=t, policy=POLICY)
    assert plans["m"].replicas == 3 and len(plans["m"].runners()) == 3
    t += 10  # the wait shrinks: the replicas catch up, no more are added
    plans = decide([d], runners, plans, {"m": QueueStat(20, 4.0)}, {}, now=t, policy=POLICY)
    t += 10
    plans = decide([d], runners, plans, {"m": QueueStat(5, 5.5)}, {}, now=t, policy=POLICY)
    assert plans["m"].replicas == 3  # max_replicas
    # idle: nothing queued for scale_down_idle_s, then one fewer per cooldown, down to 0
    seen = []
    for _ in range(12):
        t += 15
        plans = decide([d], runners, plans, {"m": QueueStat()}, {}, now=t, policy=POLICY)
        seen.append(plans["m"].replicas)
    assert seen[:3] == [3, 3, 3] and seen[-1] == 0 and sorted(seen, reverse=True) == seen
    assert plans["m"].assignments == ()
    # min_replicas holds the floor
    d1 = replace(d, min_replicas=1)
    plans = decide([d1], runners, plans, {"m": QueueStat()}, {}, now=t + 100, policy=POLICY)
    assert plans["m"].replicas == 1


def test_rollout_keeps_the_old_version_until_the_new_one_is_ready() -> None:
    runners = [runner("r-a", "eu", [20000], models={("m", "1"): "READY"})]
    prev = {"m": ModelPlan("m", 1, (Assignment("r-a", "1", 0, 8000),))}
    d = dep(ready_versions=("2", "1"))
    plans = decide([d], runners, prev, {}, {}, now=0.0, policy=POLICY)
    assert [(a.runner_id, a.version) for a in plans["m"].assignments] == [
        ("r-a", "2"),
        ("r-a", "1"),
    ]
    runners = [runner("r-a", "eu", [12000], models={("m", "1"): "READY", ("m", "2"): "READY"})]
    plans = decide([d], runners, plans, {}, {}, now=1.0, policy=POLICY)
    assert [a.version for a in plans["m"].assignments] == ["2"]  # v1 unloads now
    # a queued job pinned to v1 keeps v1 placed (on a runner that holds it)
    pinned = replace(d, pinned_versions=frozenset({"1"}))
    plans = decide([pinned], runners, plans, {}, {}, now=2.0, policy=POLICY)
    assert sorted(a.version for a in plans["m"].assignments) == ["1", "2"]
    assert desired_for(plans, "r-a") == [("m", a) for a in plans["m"].assignments]


def test_rollout_replaces_in_place_when_both_do_not_fit() -> None:
    runners = [runner("r-a", "eu", [1000], models={("m", "1"): "READY"})]
    prev = {"m": ModelPlan("m", 1, (Assignment("r-a", "1", 0, 8000),))}
    plans = decide([dep(ready_versions=("2", "1"))], runners, prev, {}, {}, 0.0, POLICY)
    assert [(a.version, a.gpu) for a in plans["m"].assignments] == [("2", 0)]


def test_no_ready_version_and_determinism() -> None:
    plans = decide([dep(ready_versions=())], fleet(), {}, {}, {}, 0.0, POLICY)
    assert plans["m"].reason == "model 'm' has no READY version"
    a = decide([dep("x"), dep("y")], fleet(), {}, {}, {}, 0.0, POLICY)
    b = decide([dep("y"), dep("x")], list(reversed(fleet())), {}, {}, {}, 0.0, POLICY)
    assert a == b


def test_queue_snapshot_wait() -> None:
    snap = QueueSnapshot(depth=3, oldest_at=100.0, pinned_versions=frozenset({"1"}))
    assert snap.stat(107.5) == QueueStat(3, 7.5)
    assert QueueSnapshot().stat(5.0) == QueueStat(0, 0.0)


def test_cpu_runners_are_placed_without_memory_and_roll_out_side_by_side() -> None:
    cpu = RunnerInput("r-cpu", "eu", True, (), {("m", "1"): ModelOnRunner("READY")})
    plans = decide([dep(ready_versions=("1",))], [cpu], {}, {}, {}, 0.0, POLICY)
    assert [(a.runner_id, a.gpu) for a in plans["m"].assignments] == [("r-cpu", None)]
    plans = decide([dep(ready_versions=("2", "1"))], [cpu], plans, {}, {}, 1.0, POLICY)
    assert [(a.version, a.gpu) for a in plans["m"].assignments] == [("2", None), ("1", None)]


def test_a_deployment_that_requires_a_pool_goes_only_to_that_pools_runners() -> None:
    runners = [replace(r, pool="gpu-a10g" if r.id == "r-c" else None) for r in fleet()]
    plans = decide([dep(pool="gpu-a10g")], runners, {}, {}, {}, now=0.0, policy=POLICY)
    assert [a.runner_id for a in plans["m"].assignments] == ["r-c"]  # r-b has more memory
    plans = decide([dep(pool="gpu-h100")], runners, {}, {}, {}, now=0.0, policy=POLICY)
    assert plans["m"].assignments == ()
    assert plans["m"].reason is not None and "in pool 'gpu-h100'" in plans["m"].reason
