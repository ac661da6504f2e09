"""Prometheus metrics of one app, on its own ``CollectorRegistry``.

Measured in process: request latency by route template, method and status; lease latency;
jobs submitted and completed. Read at scrape time (so every replica reports the same
fleet-wide values): queue depth per model, GPU utilisation and memory per runner and GPU,
and Triton per-model success/failure counts from the runners' last heartbeats.

Triton counts are read from a heartbeat's ``triton`` object in the form
``{"models": {"<model>": {"success": <int>, "failure": <int>, ...}}}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gpufleet.wire import TERMINAL_STATUSES
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import Scope

from control_plane.storage.protocols_auth import RunnerRecord

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Per-request observations wait this long (in batches) so that the answer leaves first.
DEFER_S = 0.05
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)


class _FleetCollector(Collector):
    """Values read from the tables when Prometheus scrapes."""

    def __init__(
        self,
        queue_depths: Callable[[], dict[str, int]],
        runners: Callable[[], list[RunnerRecord]],
    ) -> None:
        self._queue_depths = queue_depths
        self._runners = runners

    def describe(self) -> Iterable[Metric]:
        return []  # no collection at registration time

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "gpufleet_queue_depth", "Jobs waiting in the queue per model.", labels=["model"]
        )
        try:
            for model, n in sorted(self._queue_depths().items()):
                depth.add_metric([model], n)
        except Exception:
            log.warning("queue depth unavailable for metrics", exc_info=True)
        yield depth
        util = GaugeMetricFamily(
            "gpufleet_runner_gpu_utilization_percent",
            "GPU utilisation from the last heartbeat.",
            labels=["runner", "gpu"],
        )
        mem = GaugeMetricFamily(
            "gpufleet_runner_gpu_memory_used_bytes",
            "GPU memory used, from the last heartbeat.",
            labels=["runner", "gpu"],
        )
        total = GaugeMetricFamily(
            "gpufleet_runner_gpu_memory_total_bytes",
            "GPU memory total, from the last heartbeat.",
            labels=["runner", "gpu"],
        )
        ok = CounterMetricFamily(
            "gpufleet_triton_inference_success",
            "Triton successful inferences per runner and model (runner-reported).",
            labels=["runner", "model"],
        )
        failed = CounterMetricFamily(
            "gpufleet_triton_inference_failure",
            "Triton failed inferences per runner and model (runner-reported).",
            labels=["runner", "model"],
        )
        try:
            records = self._runners()
        except Exception:
            log.warning("runner records unavailable for metrics", exc_info=True)
            records = []
        for rec in records:
            if rec.revoked:
                continue
            for gpu in rec.gpus:
                labels = [rec.id, str(gpu.get("index", ""))]
                if gpu.get("utilization_pct") is not None:
                    util.add_metric(labels, float(gpu["utilization_pct"]))
                mem.add_metric(labels, float(gpu.get("memory_used_mb", 0)) * 2**20)
                total.add_metric(labels, float(gpu.get("memory_total_mb", 0)) * 2**20)
            models: Any = rec.triton.get("models") if isinstance(rec.triton, dict) else None
            if isinstance(models, dict):
                for name, counts in sorted(models.items()):
                    if not isinstance(counts, dict):
                        continue
                    ok.add_metric([rec.id, str(name)], float(counts.get("success", 0) or 0))
                    failed.add_metric([rec.id, str(name)], float(counts.get("failure", 0) or 0))
        yield from (util, mem, total, ok, failed)


class _TenantCollector(Collector):
    """Queued and running jobs per tenant, as the quotas count them (no storage read beyond
    the quota service's cached counters, re-read at most once a second)."""

    def __init__(self, loads: Callable[[], dict[str, Any]]) -> None:
        self._loads = loads

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "gpufleet_tenant_jobs",
            "Jobs queued and running per tenant (the counters tenant quotas are checked against).",
            labels=["tenant", "status"],
        )
        try:
            for tenant, load in sorted(self._loads().items()):
                jobs.add_metric([tenant, "queued"], load.queued)
                jobs.add_metric([tenant, "running"], load.running)
        except Exception:
            log.warning("tenant load unavailable for metrics", exc_info=True)
        yield jobs


class RegionCollector(Collector):
    """Per region, read when Prometheus scrapes: live runners and their measured round trip
    to the control plane (services/regions.py)."""

    def __init__(
        self,
        live_regions: Callable[[], dict[str, int]],
        measured_rtt_ms: Callable[[str], float | None],
    ) -> None:
        self._live = live_regions
        self._rtt = measured_rtt_ms

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        runners = GaugeMetricFamily(
            "gpufleet_region_runners",
            "Runners with a recent heartbeat, per region.",
            labels=["region"],
        )
        rtt = GaugeMetricFamily(
            "gpufleet_region_rtt_milliseconds",
            "Round trip from a region's runners to the control plane (heartbeat average).",
            labels=["region"],
        )
        try:
            live = self._live()
        except Exception:
            log.warning("live regions unavailable for metrics", exc_info=True)
            live = {}
        for region, n in sorted(live.items()):
            runners.add_metric([region], n)
            measured = self._rtt(region)
            if measured is not None:
                rtt.add_metric([region], measured)
        yield from (runners, rtt)


CHILDREN_MAX = 4096  # labelled children whose lookup Metrics.child keeps


class Metrics:
    """The metrics of one app."""

    def __init__(
        self,
        queue_depths: Callable[[], dict[str, int]],
        runners: Callable[[], list[RunnerRecord]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.request_latency = Histogram(
            "gpufleet_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.lease_latency = Histogram(
            "gpufleet_lease_duration_seconds",
            "Latency of runner lease calls (long polls included), by whether jobs came back.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "gpufleet_jobs_submitted",
            "Jobs accepted by this replica, per model.",
            ["model"],
            registry=self.registry,
        )
        self.jobs_leased_by_region = Counter(
            "gpufleet_jobs_leased_by_region_total",
            "Jobs leased, by the runner's region and how it relates to the job's preferred "
            "region: preferred (ran there), spilled (another allowed region), any (no "
            "preference).",
            ["region", "placement"],
            registry=self.registry,
        )
        self.jobs_completed = Counter(
            "gpufleet_jobs_completed",
            "Jobs that reached a terminal status through this replica, per model and status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.dispatched = Counter(
            "gpufleet_infer_dispatched",
            "Synchronous inferences dispatched in memory to a connected runner, by outcome.",
            ["model", "runner", "outcome"],
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "gpufleet_infer_dispatch_duration_seconds",
            "Time from dispatch to the runner's answer (slot wait included), per model.",
            ["model"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
            registry=self.registry,
        )
        self.runner_stage = Histogram(
            "gpufleet_infer_runner_stage_seconds",
            "Where a dispatched inference spends its time on the runner: receive (frame to "
            "Triton call), triton (the Triton call), total (frame in to answer out).",
            ["model", "stage"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1, 10),
            registry=self.registry,
        )
        self.job_latency = Histogram(
            "gpufleet_job_duration_seconds",
            "Durable jobs that reached a terminal status: queue (submitted to started), run "
            "(started to finished) and total (submitted to finished), per model.",
            ["model", "phase"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200),
            registry=self.registry,
        )
        self._children: dict[tuple[object, ...], Any] = {}
        self._stage_children: dict[tuple[str, str], Any] = {}
        self._dispatch_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._later: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._later_armed = False
        self.registry.register(_FleetCollector(queue_depths, runners))

    def add_tenant_loads(self, loads: Callable[[], dict[str, Any]]) -> None:
        """Export ``gpufleet_tenant_jobs`` from ``loads()`` (tenant -> .queued/.running)."""
        self.registry.register(_TenantCollector(loads))

    def later(self, fn: Callable[..., None], *args: Any) -> None:
        """``fn(*args)`` within ``DEFER_S``, in a batch on the event loop (at once without
        one): what each request observes is recorded after its answer has left, off its
        path. A scrape (``render``) records what is pending first."""
        self._later.append((fn, args))
        if self._later_armed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_later()
            return
        self._later_armed = True
        loop.call_later(DEFER_S, self._flush_armed)

    def _flush_armed(self) -> None:
        self._later_armed = False
        self.flush_later()

    def flush_later(self) -> None:
        """Record every pending observation (safe from any thread)."""
        pending = self._later
        while pending:
            try:
                fn, args = pending.popleft()
            except IndexError:
                return
            try:
                fn(*args)
            except Exception:
                log.warning("a deferred metric observation failed", exc_info=True)

    def observe_request(self, template: str, method: str, status: str, seconds: float) -> None:
        """One HTTP request answered (``gate.ApiGate``, the KServe short path)."""
        found = self._children.get((self.request_latency, template, method, status))
        if found is None:
            found = self.child(self.request_latency, template, method, status)
        found.observe(seconds)

    def observe_dispatch(self, model: str, runner: str, outcome: str, seconds: float) -> None:
        """A dispatcher hook: one synchronous inference answered (or failed); recorded
        :meth:`later`."""
        self.later(self._observe_dispatch, model, runner, outcome, seconds)

    def _observe_dispatch(self, model: str, runner: str, outcome: str, seconds: float) -> None:
        key = (model, runner, outcome)
        children = self._dispatch_children.get(key)
        if children is None:  # labels() costs more than the observation: look it up once
            children = (
                self.dispatched.labels(model, runner, outcome),
                self.dispatch_latency.labels(model),
            )
            self._dispatch_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: ``labels()`` (a lock, the label values
        checked and joined) costs more than the ``inc``/``observe`` it precedes, several times
        per job. At most ``CHILDREN_MAX`` kept (then forgotten at once: the registry keeps the
        children themselves)."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= CHILDREN_MAX:
                self._children.clear()
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_region_lease(self, region: str | None, placement: str) -> None:
        """A region-lease hook (JobService.on_region_lease)."""
        self.child(self.jobs_leased_by_region, region or "", placement).inc()

    def observe_record(self, job: Any, _view: Any, previous: str | None) -> None:
        """A transition-bus subscriber (``TransitionBus.on_record``): :meth:`observe_transition`."""
        if job.status in TERMINAL_STATUSES:
            self.observe_transition(job, previous)

    def observe_transition(self, job: Any, previous: str | None) -> None:
        """A job-transition hook: counts jobs that reached a terminal status."""
        if job.status in TERMINAL_STATUSES:
            self.child(self.jobs_completed, job.model, job.status).inc()
            self._observe_latency(job)

    def _observe_latency(self, job: Any) -> None:
        """From ``queue_ms`` (submitted to started) and ``run_ms``: a view's fields, or
        computed from a job record's timestamps as the view computes them."""
        queue_ms = getattr(job, "queue_ms", None)
        if queue_ms is None and getattr(job, "started_at", None) is not None:
            started, created = job.started_at, getattr(job, "created_at", None)
            if isinstance(started, (int, float)) and isinstance(created, (int, float)):
                queue_ms = int((started - created) * 1000)
        run_ms = getattr(job, "run_ms", None)
        phases: dict[str, float] = {}
        if isinstance(queue_ms, (int, float)):
            phases["queue"] = queue_ms / 1000
        if isinstance(run_ms, (int, float)):
            phases["run"] = run_ms / 1000
        if phases:
            phases["total"] = sum(phases.values())
        metric, children = self.job_latency, self._children
        for phase, seconds in phases.items():
            found = children.get((metric, job.model, phase))  # (``child``, inline)
            if found is None:
                found = self.child(metric, job.model, phase)
            found.observe(max(0.0, seconds))

    def observe_runner_stages(self, model: str, timings: dict[str, Any]) -> None:
        """A dispatcher hook: the runner's stage timings (milliseconds) of one answer;
        recorded :meth:`later`."""
        self.later(self._observe_runner_stages, model, timings)

    def _observe_runner_stages(self, model: str, timings: dict[str, Any]) -> None:
        for stage in ("receive", "triton", "total"):
            value = timings.get(f"{stage}_ms")
            if not isinstance(value, (int, float)):
                continue
            child = self._stage_children.get((model, stage))
            if child is None:
                child = self._stage_children[(model, stage)] = self.runner_stage.labels(
                    model, stage
                )
            child.observe(value / 1000)

    def render(self) -> bytes:
        """The Prometheus text exposition (reads fleet values now)."""
        self.flush_later()
        return generate_latest(self.registry)


def template_of(routes: list[Any], scope: Scope) -> str:
    """The route template a request matches (``unmatched``: none), for the request-latency
    metric of a request the router did not route (a 404, an answer of the middleware)."""
    for r in routes:
        match, _ = r.matches(scope)
        if match == Match.FULL:
            return str(getattr(r, "path", "unmatched"))
    return "unmatched"
