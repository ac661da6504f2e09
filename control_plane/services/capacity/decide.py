"""Capacity: how many hosts each pool needs, and which to start, drain or stop. Pure.

``decide`` takes plain values (the pool's spec, its hosts as the provider and the runner
records describe them, the queue's demand for the pool's models, the previous state) and
returns the actions and the state the next round starts from. It reads no clock and no
table, so any replica gets the same answer; ``services/capacity/service.py`` feeds it, stores
its answer with a conditional write (one writer per round) and asks the provider to act.

Rules, per pool:

- **Join.** A host the provider started that has no registered runner after
  ``join_timeout_s`` is stopped and counts as a failed launch. Failed launches back the
  pool off: no launch for ``backoff_s * 2^(failures-1)`` (capped at ``backoff_max_s``); the
  first host that registers resets the count. A registered host whose runner stopped
  heartbeating (offline) is stopped too, and replaced like any missing host.
- **Target.** ``needed = ceil((queued + running) / jobs_per_host)`` over the jobs of the
  pool's models, plus ``warm_hosts`` (started, kept empty), within ``[min_hosts,
  max_hosts]``. While the oldest queued job has waited less than ``scale_up_wait_s`` the
  target does not grow past the hosts up or starting (no launch for a job that a running
  host is about to take); an empty pool launches at once.
- **Scale up** when the target is above the hosts that are up or starting: first hosts that
  are draining are taken back (cheapest), then new hosts are launched, never above
  ``max_hosts`` counting every host the provider has, and never more than
  ``launch_budget_per_min`` launches in any 60 s.
- **Scale in** only hosts idle (no running job, nothing loading) for ``idle_timeout_s``,
  longest idle first, and only down to the target. It takes two rounds: the host is first
  drained (its runner stops leasing), and it is stopped once a heartbeat at least
  ``drain_settle_s`` after the drain reports nothing running. A host that is busy is never
  stopped, and providers that support it protect busy hosts from scale-in (``protect``).
- **Engine terminations.** A host the engine decided to stop by itself and that waits for
  us (``terminating``: an Auto Scaling lifecycle hook) is drained like an idle host and
  stopped (its lifecycle action completed) once a settled heartbeat says it runs nothing;
  one without a live runner is stopped at once. It no longer counts as up: the target is
  met by other hosts (a launch replaces it when needed). It is never taken back.
- **Flapping** demand does not flap capacity: a host is stopped only after being idle for a
  whole ``idle_timeout_s`` and drained, and a draining host is taken back before launching.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

BUDGET_WINDOW_S = 60.0


@dataclass(frozen=True)
class PoolInput:
    """A pool's spec, as the decision needs it."""

    name: str
    min_hosts: int = 0
    max_hosts: int = 1
    warm_hosts: int = 0
    idle_timeout_s: float = 300.0
    launch_budget_per_min: int = 10
    join_timeout_s: float = 600.0
    jobs_per_host: int = 1
    scale_up_wait_s: float = 0.0
    drain_settle_s: float = 15.0
    backoff_s: float = 30.0
    backoff_max_s: float = 600.0


@dataclass(frozen=True)
class HostInput:
    """One host of the pool: what the provider lists, joined with its runner's record."""

    id: str
    launched_at: float
    runner_id: str | None = None  # None: not registered (yet)
    online: bool = False  # registered and heartbeating
    running_jobs: int = 0
    loading: bool = False  # a model is loading
    draining: bool = False  # the runner's config says drain
    last_heartbeat_at: float | None = None
    terminating: bool = False  # the engine is stopping it and waits for us (lifecycle hook)

    @property
    def busy(self) -> bool:
        return self.running_jobs > 0 or self.loading


@dataclass(frozen=True)
class Demand:
    """Queued jobs of the pool's models and how long the oldest has waited."""

    queued: int = 0
    oldest_wait_s: float = 0.0


@dataclass(frozen=True)
class HostState:
    """What a round remembers about one host."""

    idle_since: float | None = None
    drain_at: float | None = None
    protected: bool = False
    registered: bool = False


@dataclass(frozen=True)
class PoolState:
    """The state the next round starts from."""

    launches: tuple[float, ...] = ()  # launch times within the last minute
    failures: int = 0  # consecutive failed launches
    backoff_until: float = 0.0
    hosts: Mapping[str, HostState] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One action and why (logged, stored, shown in ``GET /v1/pools/{name}``)."""

    action: str  # launch | drain | undrain | terminate | protect | unprotect
    host: str | None
    reason: str


@dataclass(frozen=True)
class Decision:
    """The answer for one pool."""

    pool: str
    target: int
    hosts: int  # hosts the provider has (any state) before the actions
    launch: int = 0
    drain: tuple[str, ...] = ()
    undrain: tuple[str, ...] = ()
    terminate: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()
    unprotect: tuple[str, ...] = ()
    failed_launches: int = 0  # hosts stopped this round because they never registered
    reason: str = ""
    events: tuple[Event, ...] = ()
    state: PoolState = PoolState()

    @property
    def changes(self) -> bool:
        return bool(self.launch or self.drain or self.undrain or self.terminate)


def _backoff(pool: PoolInput, failures: int) -> float:
    return float(min(pool.backoff_s * 2 ** max(failures - 1, 0), pool.backoff_max_s))


def decide(
    pool: PoolInput,
    hosts: Sequence[HostInput],
    demand: Demand,
    previous: PoolState,
    now: float,
) -> Decision:
    """The decision for one pool (see the module docstring for the rules)."""
    events: list[Event] = []
    states: dict[str, HostState] = {}
    failures, backoff_until = previous.failures, previous.backoff_until
    terminate: list[str] = []
    failed = 0

    # 1. join timeouts, lost runners; idle timers
    live: list[HostInput] = []
    for h in sorted(hosts, key=lambda h: (h.launched_at, h.id)):
        prev = previous.hosts.get(h.id, HostState())
        if h.terminating and (h.runner_id is None or not h.online):
            terminate.append(h.id)
            events.append(
                Event("terminate", h.id, "the engine is terminating it; no live runner to drain")
            )
            continue
        if h.runner_id is None:
            age = now - h.launched_at
            if age > pool.join_timeout_s:
                failures += 1
                failed += 1
                backoff_until = now + _backoff(pool, failures)
                terminate.append(h.id)
                events.append(
                    Event(
                        "terminate",
                        h.id,
                        f"no runner registered within join_timeout_s={pool.join_timeout_s:g} "
                        f"({age:.0f} s): failed launch {failures}, no launch for "
                        f"{backoff_until - now:.0f} s",
                    )
                )
                continue
            states[h.id] = prev
            live.append(h)
            continue
        if not prev.registered:  # a launch that worked: the backoff starts over
            failures, backoff_until = 0, 0.0
            prev = replace(prev, registered=True)
        if not h.online:
            terminate.append(h.id)
            events.append(Event("terminate", h.id, f"runner {h.runner_id} is offline"))
            continue
        idle_since = None if h.busy else (prev.idle_since if prev.idle_since is not None else now)
        states[h.id] = replace(prev, idle_since=idle_since)
        live.append(h)

    leaving = [h for h in live if h.terminating]
    starting = [h for h in live if h.runner_id is None]
    draining = [h for h in live if h.runner_id is not None and h.draining and not h.terminating]
    up = [h for h in live if h.runner_id is not None and not h.draining and not h.terminating]
    running = sum(h.running_jobs for h in live if not h.terminating)  # leaving: finishes there

    # 2. the target
    work = demand.queued + running
    needed = math.ceil(work / max(pool.jobs_per_host, 1)) if work else 0
    coming = len(up) + len(starting)
    if demand.queued and coming and demand.oldest_wait_s < pool.scale_up_wait_s:
        needed = min(needed, coming)
    target = max(pool.min_hosts, min(needed + pool.warm_hosts, pool.max_hosts))
    why = (
        f"{demand.queued} queued (oldest {demand.oldest_wait_s:.0f} s), {running} running, "
        f"{pool.jobs_per_host} per host: {needed} needed + {pool.warm_hosts} warm "
        f"in [{pool.min_hosts}, {pool.max_hosts}] = {target}; "
        f"{len(up)} up, {len(starting)} starting, {len(draining)} draining"
        + (f", {len(leaving)} terminating" if leaving else "")
    )

    # 3. scale up: take draining hosts back, then launch
    undrain: list[str] = []
    launch = 0
    launches = tuple(t for t in previous.launches if now - t < BUDGET_WINDOW_S)
    notes: list[str] = []
    if needed + pool.warm_hosts > pool.max_hosts:
        notes.append(f"capped at max_hosts={pool.max_hosts}")
    if target > coming:
        short = target - coming
        for h in sorted(draining, key=lambda h: h.id)[:short]:
            undrain.append(h.id)
            states[h.id] = replace(states[h.id], drain_at=None)
            events.append(Event("undrain", h.id, f"demand is back ({why})"))
        short -= len(undrain)
        room = pool.max_hosts - len(live)
        budget = pool.launch_budget_per_min - len(launches)
        if short > 0 and now < backoff_until:
            notes.append(
                f"backing off after {failures} failed launch(es) for "
                f"{backoff_until - now:.0f} s more"
            )
        elif short > 0:
            launch = max(0, min(short, room, budget))
            if launch < short and budget < short:
                notes.append(
                    f"launch budget {pool.launch_budget_per_min}/min spent "
                    f"({len(launches)} in the last minute)"
                )
        if launch:
            launches = launches + (now,) * launch
            events.append(
                Event("launch", None, f"start {launch} host(s): " + "; ".join([why, *notes]))
            )

    # 4. scale in: drain idle hosts past the timeout, stop drained ones
    drain: list[str] = []
    excess = len(up) - target
    if excess > 0:
        idle = [
            h
            for h in up
            if not h.busy
            and (since := states[h.id].idle_since) is not None
            and now - since >= pool.idle_timeout_s
        ]
        idle.sort(key=lambda h: (states[h.id].idle_since or now, h.id))
        for h in idle[:excess]:
            drain.append(h.id)
            states[h.id] = replace(states[h.id], drain_at=now)
            idle_s = now - (states[h.id].idle_since or now)
            events.append(
                Event(
                    "drain",
                    h.id,
                    f"idle {idle_s:.0f} s >= idle_timeout_s={pool.idle_timeout_s:g} "
                    f"and {len(up)} up > target {target}",
                )
            )
    for h in leaving:
        if not h.draining:
            drain.append(h.id)
            states[h.id] = replace(states[h.id], drain_at=now)
            events.append(
                Event(
                    "drain",
                    h.id,
                    "the engine is terminating it (lifecycle hook): drain before letting it go",
                )
            )
    for h in [*draining, *(h for h in leaving if h.draining)]:
        if h.id in undrain:
            continue
        st = states[h.id]
        drain_at = st.drain_at if st.drain_at is not None else now
        states[h.id] = replace(st, drain_at=drain_at)
        settled = h.last_heartbeat_at is not None and h.last_heartbeat_at >= (
            drain_at + pool.drain_settle_s
        )
        if settled and not h.busy:
            terminate.append(h.id)
            why = "drained: nothing running, nothing loading"
            if h.terminating:
                why += "; the engine's termination goes on"
            events.append(Event("terminate", h.id, why))

    # 5. scale-in protection follows busyness
    protect: list[str] = []
    unprotect: list[str] = []
    for h in live:
        if h.id in terminate or h.runner_id is None or h.terminating:
            continue
        st = states[h.id]
        if h.busy and not st.protected:
            protect.append(h.id)
            states[h.id] = replace(st, protected=True)
            events.append(Event("protect", h.id, f"busy: {h.running_jobs} running job(s)"))
        elif not h.busy and st.protected:
            unprotect.append(h.id)
            states[h.id] = replace(st, protected=False)
            events.append(Event("unprotect", h.id, "idle"))

    for host in terminate:
        states.pop(host, None)
    if not (launch or drain or undrain or terminate):
        notes.insert(0, "no change")
    reason = "; ".join([why, *notes])
    return Decision(
        pool=pool.name,
        target=target,
        hosts=len(hosts),
        launch=launch,
        drain=tuple(drain),
        undrain=tuple(undrain),
        terminate=tuple(terminate),
        protect=tuple(protect),
        unprotect=tuple(unprotect),
        failed_launches=failed,
        reason=reason,
        events=tuple(events),
        state=PoolState(
            launches=launches, failures=failures, backoff_until=backoff_until, hosts=states
        ),
    )
