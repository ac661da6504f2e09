"""The console's charts: per-minute rollups kept in storage, so every replica shows the same
history (``RollupStore``; a week, then the store drops them).

What is recorded, per minute:
- ``jobs#<tenant>`` and ``jobs#*`` (counters): jobs submitted and jobs that reached each
  terminal status, from the job service's transition hook. Counted in memory and added to
  the store every ``flush_interval_s`` (one write per series and minute, not per job; a
  replica that dies loses at most that interval's counts).
- ``queue`` (gauges ``depth:<model>``; counters ``wait_ms:<model>``, ``started:<model>``):
  queue depth sampled once a minute, and the time in queue of jobs that started running.
- ``gpu`` (gauges ``util:<runner>/<gpu>`` in %, ``mem:<runner>/<gpu>`` in MB used): the
  runners' last heartbeats, sampled once a minute.

``chart(p, kind, window)`` reads one window (``hour`` or ``day``) as uPlot-ready columns.
Jobs are the caller's tenant (admins: every tenant); queue and GPU charts are for admins.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from gpufleet.wire import JobView

from control_plane import clock
from control_plane.errors import InvalidRequest
from control_plane.services.principal import Principal
from control_plane.storage.protocols import JobRecord
from control_plane.storage.protocols_auth import RunnerRecord
from control_plane.storage.protocols_rollups import RollupStore

log = logging.getLogger(__name__)

TTL_S = 7 * 86_400
WINDOWS = {"hour": 60, "day": 1440}
KINDS = ("jobs", "queue", "gpu")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
ALL_TENANTS = "*"


class RollupService:
    """See the module docstring."""

    def __init__(
        self,
        store: RollupStore,
        *,
        flush_interval_s: float = 10.0,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._store = store
        self._interval = flush_interval_s
        self._now = now
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], dict[str, float]] = {}
        self._sampled_minute = -1

    def _minute(self) -> int:
        return int(self._now() // 60)

    def _count(self, series: str, minute: int, name: str, amount: float = 1) -> None:
        with self._lock:
            counts = self._pending.setdefault((series, minute), {})
            counts[name] = counts.get(name, 0.0) + amount

    # ------------------------------------------------------------------ recording
    def job_transition(
        self, job: JobRecord, view: Callable[[], JobView], previous: str | None
    ) -> None:
        """The job service's record hook (cheap: counts in memory; the view is not built)."""
        status = job.status
        if previous is None and status == "QUEUED":
            name = "SUBMITTED"
        elif status in TERMINAL:
            name = status
        elif status == "RUNNING" and previous != "RUNNING" and job.started_at is not None:
            queue_ms = int((job.started_at - job.created_at) * 1000)  # as the job's view says
            minute = int(self._now() // 60)  # (_minute)
            with self._lock:  # (``_count`` twice, under one hold of the lock)
                counts = self._pending.setdefault(("queue", minute), {})
                wait, started = f"wait_ms:{job.model}", f"started:{job.model}"
                counts[wait] = counts.get(wait, 0.0) + queue_ms
                counts[started] = counts.get(started, 0.0) + 1
            return
        else:
            return
        minute = int(self._now() // 60)  # (_minute)
        with self._lock:  # (``_count`` for the tenant and for all, under one hold of the lock)
            for series in (f"jobs#{job.tenant}", f"jobs#{ALL_TENANTS}"):
                counts = self._pending.setdefault((series, minute), {})
                counts[name] = counts.get(name, 0.0) + 1

    def flush(self) -> int:
        """Add what was counted since the last flush to the store; the writes made."""
        with self._lock:
            pending, self._pending = self._pending, {}
        expires = self._now() + TTL_S
        for (series, minute), counts in pending.items():
            self._store.add(series, minute, counts, expires)
        return len(pending)

    def sample(self, runners: list[RunnerRecord], depths: dict[str, int]) -> None:
        """Record this minute's queue depths and GPU readings (gauges)."""
        minute, expires = self._minute(), self._now() + TTL_S
        self._store.put("queue", minute, {f"depth:{m}": n for m, n in depths.items()}, expires)
        gpu: dict[str, float] = {}
        fresh_after = self._now() - 120
        for r in runners:
            if r.revoked or (r.last_heartbeat_at or 0) < fresh_after:
                continue
            for g in r.gpus:
                where = f"{r.name}/{g.get('index', 0)}"
                if g.get("utilization_pct") is not None:
                    gpu[f"util:{where}"] = float(g["utilization_pct"])
                gpu[f"mem:{where}"] = float(g.get("memory_used_mb") or 0)
        self._store.put("gpu", minute, gpu, expires)

    async def run_forever(
        self,
        runners: Callable[[], list[RunnerRecord]],
        depths: Callable[[], dict[str, int]],
    ) -> None:
        """Flush every interval, sample once a minute; errors are logged and retried."""
        while True:
            await asyncio.sleep(self._interval * (0.8 + 0.4 * random.random()))
            try:
                await asyncio.to_thread(self.flush)
                if self._minute() != self._sampled_minute:
                    self._sampled_minute = self._minute()
                    await asyncio.to_thread(lambda: self.sample(runners(), depths()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("rollups: flush or sample failed", exc_info=True)

    # ------------------------------------------------------------------ reading
    def chart(self, p: Principal, kind: str, window: str) -> dict[str, Any]:
        """``{"x": [epoch s per minute], "series": [{"label", "values"}]}`` of one chart."""
        if kind not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}", field="kind")
        if window not in WINDOWS:
            raise InvalidRequest(f"window must be one of {', '.join(WINDOWS)}", field="window")
        if kind == "jobs":
            p.require("jobs:read")
            series = f"jobs#{ALL_TENANTS if p.is_admin else p.tenant}"
        else:
            p.require("admin")
            series = kind
        last = self._minute()
        first = last - WINDOWS[window] + 1
        rows = dict(self._store.read(series, first, last))
        minutes = list(range(first, last + 1))
        out: list[dict[str, Any]] = []
        if kind == "jobs":
            names = sorted({n for v in rows.values() for n in v})
            for n in names:
                out.append({"label": n, "values": [rows.get(m, {}).get(n, 0) for m in minutes]})
        elif kind == "queue":
            models = sorted({n.split(":", 1)[1] for v in rows.values() for n in v})
            for model in models:
                depth = [rows.get(m, {}).get(f"depth:{model}") for m in minutes]
                wait = [_ratio(rows.get(m, {}), model) for m in minutes]
                out.append({"label": f"{model} queued", "values": depth})
                out.append({"label": f"{model} wait ms", "values": wait, "scale": "ms"})
        else:
            names = sorted({n for v in rows.values() for n in v})
            for n in names:
                unit, _, where = n.partition(":")
                out.append(
                    {
                        "label": f"{where} {'util %' if unit == 'util' else 'MB used'}",
                        "values": [rows.get(m, {}).get(n) for m in minutes],
                        "scale": "%" if unit == "util" else "MB",
                    }
                )
        return {"kind": kind, "window": window, "x": [m * 60 for m in minutes], "series": out}


def _ratio(values: dict[str, float], model: str) -> float | None:
    started = values.get(f"started:{model}")
    if not started:
        return None
    return round(values.get(f"wait_ms:{model}", 0.0) / started, 1)
