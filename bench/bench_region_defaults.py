"""Region defaults on the submit/infer hot path: what ``RegionService.resolve`` costs per
request with the tenant defaults from the settings only (the path before the admin API) and
with the stored defaults of tenants and API keys (embedded SQLite store), and how many store
reads the calls made (the records are cached ``REGION_CACHE_S`` per replica: a run of a few
seconds reads once).

    .venv/bin/python bench/bench_region_defaults.py [--calls 50000] [--keys 1000]

Cases, side by side in one process (rounds interleaved, the best round of each kept):
  settings only        RegionService with ``tenant_regions`` only (no admin API)
  stored, no record    the admin API's service, the caller's key and tenant have no record
  stored, key+tenant   the caller's key and tenant both have records (``--keys`` keys and
                       100 tenants stored)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

from gpufleet.wire import JobRequest  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from control_plane.services.region_defaults import RegionDefaultsService  # noqa: E402
from control_plane.services.regions import RegionDefaults, RegionService  # noqa: E402
from control_plane.storage.protocols_limits import RegionDefaultsRecord  # noqa: E402
from control_plane.storage.sqlite.db import Database  # noqa: E402
from control_plane.storage.sqlite.limits import SqliteLimitsStore  # noqa: E402
from control_plane.storage.sqlite.schema import migrate  # noqa: E402

EU = ("eu-west-1", "eu-central-1")
REQ = JobRequest.model_validate(
    {
        "model": "add_sub",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}],
    }
)


class CountingStore(SqliteLimitsStore):
    reads = 0

    def list_region_defaults(self) -> list[RegionDefaultsRecord]:
        CountingStore.reads += 1
        return super().list_region_defaults()


def region_service(callers: Any) -> RegionService:
    svc = RegionService(
        default_spill_s=30.0,
        control_plane_region=None,
        tenant_defaults={"acme": RegionDefaults("eu-west-1", EU)},
        list_runners=list,
        offline_after_s=30.0,
    )
    svc.callers = callers
    return svc


def time_calls(svc: RegionService, tenant: str, key_id: str | None, calls: int) -> float:
    """Microseconds per ``resolve`` call."""
    t0 = time.perf_counter()
    for _ in range(calls):
        svc.resolve(tenant, REQ, key_id=key_id)
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000, help="calls per case and round")
    parser.add_argument("--keys", type=int, default=1000, help="API keys with records")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gf-regions-") as tmp:
        db = Database(Path(tmp) / "store.db")
        migrate(db)
        store = CountingStore(db)
        for i in range(100):
            store.put_region_defaults(RegionDefaultsRecord("tenant", f"t{i}", "eu-west-1", EU))
        for i in range(args.keys):
            store.put_region_defaults(
                RegionDefaultsRecord("key", f"key_{i}", "eu-central-1", ("eu-central-1",))
            )
        seeds = {"acme": RegionDefaults("eu-west-1", EU)}
        cases = {
            "settings only": (region_service(None), "acme", "key_x"),
            "stored, no record": (
                region_service(RegionDefaultsService(store, seeds)),
                "acme",
                "key_x",
            ),
            "stored, key+tenant": (
                region_service(RegionDefaultsService(store, seeds)),
                "t7",
                "key_7",
            ),
        }
        best: dict[str, float] = {}
        reads: dict[str, int] = {}
        wall: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, (svc, tenant, key_id) in cases.items():
                before = CountingStore.reads
                t0 = time.perf_counter()
                us = time_calls(svc, tenant, key_id, args.calls)
                wall[name] = wall.get(name, 0.0) + time.perf_counter() - t0
                reads[name] = reads.get(name, 0) + CountingStore.reads - before
                best[name] = min(best.get(name, us), us)
        db.close()
    base = best["settings only"]
    table = Table(title=f"RegionService.resolve, {args.calls} calls x {args.rounds} rounds")
    for col in ("case", "µs/call (best round)", "vs settings only", "store reads", "seconds"):
        table.add_column(col, justify="right" if col != "case" else "left")
    for name, us in best.items():
        table.add_row(
            name, f"{us:.2f}", f"{us - base:+.2f} µs", str(reads[name]), f"{wall[name]:.1f}"
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
