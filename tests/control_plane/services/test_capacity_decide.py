"""The capacity decision function over recorded demand series (no I/O, no clock).

A small simulator plays a series of job arrivals one second per round: hosts launched by a
decision register ``register_s`` later, each registered host that is not draining runs up to
``jobs_per_host`` jobs, a job takes ``job_s`` seconds, and heartbeats come every round.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from control_plane.services.capacity.decide import (
    Decision,
    Demand,
    HostInput,
    PoolInput,
    PoolState,
    decide,
)


@dataclass
class SimHost:
    id: str
    launched_at: float
    registers: bool = True
    draining: bool = False
    jobs: list[float] = field(default_factory=list)  # end times of running jobs


@dataclass
class Sim:
    pool: PoolInput
    register_s: float = 5.0
    job_s: float = 1.0
    fail_first: int = 0  # the first N launched hosts never register
    t: float = 0.0
    queue: list[float] = field(default_factory=list)  # arrival times
    hosts: dict[str, SimHost] = field(default_factory=dict)
    state: PoolState = field(default_factory=PoolState)
    decisions: list[Decision] = field(default_factory=list)
    launched: int = 0
    stopped_busy: int = 0
    done: int = 0
    max_hosts_seen: int = 0

    def registered(self, h: SimHost) -> bool:
        return h.registers and self.t - h.launched_at >= self.register_s

    def step(self, arrivals: int = 0) -> Decision:
        self.queue += [self.t] * arrivals
        for h in self.hosts.values():  # run jobs
            finished = [e for e in h.jobs if e <= self.t]
            self.done += len(finished)
            h.jobs = [e for e in h.jobs if e > self.t]
            if self.registered(h) and not h.draining:
                while self.queue and len(h.jobs) < self.pool.jobs_per_host:
                    self.queue.pop(0)
                    h.jobs.append(self.t + self.job_s)
        inputs = [
            HostInput(
                id=h.id,
                launched_at=h.launched_at,
                runner_id=f"run-{h.id}" if self.registered(h) else None,
                online=self.registered(h),
                running_jobs=len(h.jobs),
                draining=h.draining,
                last_heartbeat_at=self.t if self.registered(h) else None,
            )
            for h in self.hosts.values()
        ]
        wait = self.t - self.queue[0] if self.queue else 0.0
        d = decide(self.pool, inputs, Demand(len(self.queue), wait), self.state, self.t)
        self.decisions.append(d)
        self.state = d.state
        for hid in d.terminate:
            if self.hosts[hid].jobs:
                self.stopped_busy += 1
            del self.hosts[hid]
        for hid in d.drain:
            self.hosts[hid].draining = True
        for hid in d.undrain:
            self.hosts[hid].draining = False
        for _ in range(d.launch):
            self.launched += 1
            hid = f"h{self.launched:03d}"
            self.hosts[hid] = SimHost(hid, self.t, registers=self.launched > self.fail_first)
        self.max_hosts_seen = max(self.max_hosts_seen, len(self.hosts))
        self.t += 1.0
        return d

    def run(self, series: list[int]) -> None:
        for n in series:
            self.step(n)

    def idle(self, seconds: int) -> None:
        self.run([0] * seconds)


POOL = PoolInput(
    name="gpu",
    min_hosts=0,
    max_hosts=4,
    idle_timeout_s=30,
    launch_budget_per_min=10,
    join_timeout_s=20,
    jobs_per_host=2,
    drain_settle_s=2,
)


def test_empty_pool_stays_empty() -> None:
    sim = Sim(POOL)
    sim.idle(100)
    assert sim.launched == 0 and not sim.hosts
    assert "no change" in sim.decisions[-1].reason


def test_burst_scales_to_max_then_back_to_zero() -> None:
    sim = Sim(POOL, job_s=3)
    sim.run([40])
    assert sim.decisions[0].launch == 4  # 40 jobs, 2 per host, max 4: all at once
    assert "launch" in [e.action for e in sim.decisions[0].events]
    sim.idle(60)
    assert sim.done == 40 and not sim.queue
    assert sim.max_hosts_seen == 4 and sim.launched == 4  # never above max, no relaunch
    sim.idle(40)  # idle_timeout 30 s + drain settle
    assert not sim.hosts, [d.reason for d in sim.decisions[-3:]]
    assert sim.stopped_busy == 0
    actions = [e.action for d in sim.decisions for e in d.events]
    assert actions.count("drain") == 4 and actions.count("terminate") == 4


def test_steady_load_holds_capacity() -> None:
    sim = Sim(POOL, job_s=1)
    sim.run([4] * 120)  # 4 jobs a second, 1 s each, 2 per host: 2 hosts keep up
    late = sim.decisions[70:]  # the queue built while the first hosts started is gone
    assert all(not d.changes for d in late), [d.reason for d in late if d.changes]
    assert len(sim.hosts) == 2  # the extra hosts of the start went once idle
    assert sim.stopped_busy == 0


def test_flapping_demand_does_not_flap_capacity() -> None:
    sim = Sim(POOL, job_s=2)
    series = ([6] + [0] * 19) * 10  # a burst every 20 s, idle timeout 30 s
    sim.run(series)
    launches = [d.launch for d in sim.decisions if d.launch]
    assert sum(launches) == sim.launched <= 4  # only the first burst launched
    assert not any(d.drain or d.terminate for d in sim.decisions)
    sim.idle(45)
    assert not sim.hosts  # and it does go back to zero once the bursts stop


def test_launch_budget_per_minute() -> None:
    pool = PoolInput(name="p", max_hosts=10, launch_budget_per_min=3, jobs_per_host=1)
    sim = Sim(pool, register_s=1000)  # nobody registers: demand stays
    sim.step(10)
    assert sim.decisions[0].launch == 3
    assert "launch budget 3/min spent" in sim.step().reason
    sim.run([0] * 59)
    assert sim.launched == 6  # the second minute's budget


def test_never_above_max_hosts_and_says_so() -> None:
    pool = PoolInput(name="p", max_hosts=2, jobs_per_host=1)
    sim = Sim(pool, register_s=1000)
    d = sim.step(10)
    assert d.launch == 2 and d.target == 2
    assert "capped at max_hosts=2" in d.reason


def test_host_that_never_registers_is_replaced_after_backoff() -> None:
    pool = PoolInput(name="p", max_hosts=1, join_timeout_s=10, backoff_s=5, jobs_per_host=1)
    sim = Sim(pool, register_s=2, job_s=100, fail_first=1)
    sim.step(1)
    assert sim.launched == 1
    sim.run([0] * 11)
    term = next(d for d in sim.decisions if d.terminate)
    assert term.failed_launches == 1 and term.terminate == ("h001",)
    assert "join_timeout_s=10" in term.events[0].reason
    assert sim.state.failures == 1
    d = sim.step()
    assert d.launch == 0 and "backing off after 1 failed launch" in d.reason
    sim.run([0] * 6)
    assert sim.launched == 2  # replaced once the backoff ran out
    sim.run([0] * 5)
    assert sim.state.failures == 0  # the replacement registered: the backoff starts over
    assert sim.done == 0 and len(sim.hosts["h002"].jobs) == 1


def test_backoff_doubles_and_is_capped() -> None:
    pool = PoolInput(
        name="p", max_hosts=1, join_timeout_s=1, backoff_s=2, backoff_max_s=5, jobs_per_host=1
    )
    sim = Sim(pool, fail_first=100)
    sim.step(1)
    gaps = []
    last = 0.0
    for _ in range(40):
        d = sim.step()
        if d.launch:
            gaps.append(sim.t - 1 - last)
            last = sim.t - 1
    assert sim.state.failures >= 3
    assert max(gaps) <= 5 + 3  # capped backoff + join timeout + a round


def test_busy_host_is_never_drained_and_is_protected() -> None:
    pool = PoolInput(name="p", max_hosts=2, idle_timeout_s=0, jobs_per_host=1)
    busy = HostInput("a", 0, "ra", online=True, running_jobs=1, last_heartbeat_at=99)
    idle = HostInput("b", 0, "rb", online=True, running_jobs=0, last_heartbeat_at=99)
    d = decide(pool, [busy, idle], Demand(), PoolState(), 100)
    assert d.drain == ("b",) and "a" not in d.terminate
    assert d.protect == ("a",)
    assert d.state.hosts["a"].protected
    # once idle, protection goes; a drained host with a job in flight is not stopped
    d2 = decide(
        pool,
        [HostInput("a", 0, "ra", online=True, last_heartbeat_at=101)],
        Demand(),
        d.state,
        101,
    )
    assert d2.unprotect == ("a",)
    draining_busy = HostInput(
        "b", 0, "rb", online=True, running_jobs=1, draining=True, last_heartbeat_at=500
    )
    d3 = decide(pool, [draining_busy], Demand(), d.state, 500)
    assert d3.terminate == ()


def test_drained_host_stopped_only_after_a_settled_heartbeat() -> None:
    pool = PoolInput(name="p", max_hosts=1, idle_timeout_s=0, drain_settle_s=10)
    st = PoolState(hosts={})
    d = decide(
        pool, [HostInput("a", 0, "ra", online=True, last_heartbeat_at=100)], Demand(), st, 100
    )
    assert d.drain == ("a",)
    early = HostInput("a", 0, "ra", online=True, draining=True, last_heartbeat_at=105)
    assert decide(pool, [early], Demand(), d.state, 105).terminate == ()
    late = HostInput("a", 0, "ra", online=True, draining=True, last_heartbeat_at=111)
    d2 = decide(pool, [late], Demand(), d.state, 111)
    assert d2.terminate == ("a",) and "a" not in d2.state.hosts


def test_draining_host_is_taken_back_before_launching() -> None:
    pool = PoolInput(name="p", max_hosts=2, jobs_per_host=1)
    draining = HostInput("a", 0, "ra", online=True, draining=True, last_heartbeat_at=10)
    d = decide(pool, [draining], Demand(queued=1, oldest_wait_s=1), PoolState(), 10)
    assert d.undrain == ("a",) and d.launch == 0


def test_min_and_warm_hosts() -> None:
    pool = PoolInput(name="p", min_hosts=1, max_hosts=5, warm_hosts=2, jobs_per_host=1)
    sim = Sim(pool, job_s=1)
    sim.step()
    assert sim.launched == 2  # no demand: 0 needed + 2 warm (>= min 1)
    sim.idle(100)
    assert len(sim.hosts) == 2  # warm hosts are kept, idle or not
    pool0 = PoolInput(name="p", min_hosts=1, max_hosts=5, jobs_per_host=1, idle_timeout_s=5)
    sim0 = Sim(pool0)
    sim0.idle(50)
    assert len(sim0.hosts) == 1  # never below min


def test_scale_up_wait_holds_launches_while_a_host_is_coming() -> None:
    pool = PoolInput(name="p", max_hosts=3, jobs_per_host=1, scale_up_wait_s=10)
    up = HostInput("a", 0, "ra", online=True, running_jobs=1, last_heartbeat_at=10)
    d = decide(pool, [up], Demand(queued=2, oldest_wait_s=3), PoolState(), 10)
    assert d.launch == 0
    d = decide(pool, [up], Demand(queued=2, oldest_wait_s=12), PoolState(), 10)
    assert d.launch == 2
    # an empty pool launches at once whatever the wait: nothing could take the job
    d = decide(pool, [], Demand(queued=1, oldest_wait_s=0), PoolState(), 10)
    assert d.launch == 1


def test_offline_runner_is_stopped_and_replaced() -> None:
    pool = PoolInput(name="p", min_hosts=1, max_hosts=1)
    lost = HostInput("a", 0, "ra", online=False, last_heartbeat_at=1)
    d = decide(pool, [lost], Demand(), PoolState(), 100)
    assert d.terminate == ("a",) and "offline" in d.events[0].reason
    assert d.launch == 1


def test_same_inputs_same_decision() -> None:
    hosts = [HostInput("a", 0, "ra", online=True, last_heartbeat_at=5)]
    one = decide(POOL, hosts, Demand(3, 2.0), PoolState(), 50)
    two = decide(POOL, list(hosts), Demand(3, 2.0), PoolState(), 50)
    assert one == two


# A recorded series: jobs per second of a bursty inference workload (a daytime trace
# resampled to 1 s; quiet gaps shorter than the idle timeout, one long lull, spikes).
RECORDED = (
    [3, 0, 5, 1, 0, 0, 4, 2, 0, 1, 6, 0, 0, 2, 3, 0, 1, 0, 7, 2] * 6  # noisy, ~1.9 jobs/s
    + [0] * 25  # a lull shorter than idle_timeout_s (30)
    + [2, 8, 1, 0, 0, 3, 0, 5, 0, 0] * 6  # spikier
)


def test_recorded_noisy_series_holds_capacity_without_churn() -> None:
    sim = Sim(POOL, job_s=2)
    sim.run(RECORDED)
    assert sim.done + len(sim.queue) + sum(len(h.jobs) for h in sim.hosts.values()) == sum(RECORDED)
    actions = [e.action for d in sim.decisions for e in d.events]
    # capacity rises once for the first spikes and is never stopped during the series: the
    # lull is shorter than the idle timeout, and spikes come back before any host idles out
    assert actions.count("terminate") == 0 and actions.count("drain") == 0, [
        d.reason for d in sim.decisions if d.drain or d.terminate
    ]
    assert sim.launched == len(sim.hosts) == POOL.max_hosts  # launched once, all kept
    assert sim.stopped_busy == 0
    sim.idle(60)
    assert not sim.hosts and sim.stopped_busy == 0


def test_engine_termination_is_drained_then_completed() -> None:
    """A host the engine terminates by itself (a lifecycle hook holds it) is drained first,
    stopped only after a settled heartbeat with nothing running, and not counted as up."""
    pool = PoolInput(name="p", max_hosts=3, jobs_per_host=1, drain_settle_s=2)
    busy = HostInput("i-1", 0.0, "r1", online=True, running_jobs=1, last_heartbeat_at=10.0)
    d = decide(pool, [replace(busy, terminating=True)], Demand(), PoolState(), 10.0)
    assert d.drain == ("i-1",) and d.terminate == () and d.protect == ()
    assert "lifecycle hook" in d.events[0].reason
    assert "1 terminating" in d.reason
    # still running its job: not stopped, even after the settle time
    held = replace(busy, terminating=True, draining=True, last_heartbeat_at=20.0)
    d = decide(pool, [held], Demand(), d.state, 20.0)
    assert d.terminate == () and d.drain == ()
    # done: stopped (its lifecycle action completed by the provider)
    done = replace(held, running_jobs=0, last_heartbeat_at=21.0)
    d = decide(pool, [done], Demand(), d.state, 21.0)
    assert d.terminate == ("i-1",)
    assert "termination goes on" in d.events[-1].reason


def test_engine_termination_is_replaced_not_taken_back() -> None:
    pool = PoolInput(name="p", max_hosts=3, jobs_per_host=1, drain_settle_s=2)
    leaving = HostInput(
        "i-1", 0.0, "r1", online=True, draining=True, terminating=True, last_heartbeat_at=5.0
    )
    d = decide(pool, [leaving], Demand(queued=1), PoolState(), 5.0)
    assert d.undrain == () and d.launch == 1  # demand: a new host, the leaving one goes
    # without a live runner there is nothing to drain: completed at once
    d = decide(pool, [HostInput("i-2", 0.0, terminating=True)], Demand(), PoolState(), 5.0)
    assert d.terminate == ("i-2",) and d.failed_launches == 0
