"""The client half of `make demo`, written against the public SDK only.

    python scripts/demo.py join-token --url URL --api-key-file F   # prints a runner join token
    python scripts/demo.py run --url URL --api-key-file F --model-dir model_repository/add_sub

``run`` pushes the model (skipped when a READY version exists), waits until a runner serves
it, submits a batch of jobs plus one ``infer`` call, checks every output against numpy and
prints inputs, outputs and timings. Exit status 0 only when every answer is correct.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from gpufleet import Client
from rich.console import Console
from rich.table import Table

console = Console()  # the terminal's width (80 off a terminal): the job table fits 80


def _first(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> str:
    """The first element of each: ``a + b = out`` (every element is checked)."""
    return f"{a.flat[0]:.2f} + {b.flat[0]:.2f} = {out.flat[0]:.2f}"


def _client(args: argparse.Namespace) -> Client:
    key = Path(args.api_key_file).read_text().strip()
    return Client(args.url, api_key=key, timeout=30.0)


def join_token(args: argparse.Namespace) -> int:
    with _client(args) as fleet:
        print(fleet.admin.create_join_token(region="default").join_token)
    return 0


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_runner(fleet: Client, model: str, args: argparse.Namespace) -> str:
    deadline = time.monotonic() + args.runner_timeout
    last = "no runner registered yet"
    while time.monotonic() < deadline:
        if not _alive(args.runner_pid):
            tail = Path(args.runner_log).read_text()[-2000:] if args.runner_log else ""
            raise SystemExit(f"demo: the runner exited before serving {model!r}:\n{tail}")
        for r in fleet.runners.list():
            states = {m.name: m.state for m in r.models}
            if r.status == "ONLINE" and states.get(model) == "READY":
                return r.name
            last = f"runner {r.name}: {r.status}, models {states or '{}'}"
        time.sleep(1.0)
    raise SystemExit(f"demo: no runner served {model!r} within {args.runner_timeout:.0f}s ({last})")


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir)
    name = model_dir.name
    with _client(args) as fleet:
        t0 = time.perf_counter()
        existing = [m for m in fleet.models.list() if m.name == name]
        ready = [v for m in existing for v in m.versions if v.state == "READY"]
        if ready:
            console.print(f"model {name}: version {ready[0].version} already READY")
        else:
            version = fleet.models.push(model_dir)
            console.print(
                f"model {name}: pushed version {version.version} ({len(version.files)} files, "
                f"{(time.perf_counter() - t0) * 1000:.0f} ms)"
            )
        # as a user would: one replica kept loaded (a pushed model is servable without this,
        # cold-started by its first job; the demo wants it warm before timing jobs)
        fleet.models.deploy(name, min_replicas=1, max_replicas=1)
        console.print(f"model {name}: deployed (gpufleet models deploy {name} --min 1 --max 1)")
        console.print(f"waiting for a runner to serve {name} (Triton start + model load) ...")
        t1 = time.perf_counter()
        runner = _wait_for_runner(fleet, name, args)
        console.print(f"runner {runner} serves {name} ({time.perf_counter() - t1:.1f} s)")

        rng = np.random.default_rng(7)
        cases = []
        for _ in range(args.jobs):
            rows = int(rng.integers(1, 4))
            a = np.round(rng.uniform(-10, 10, (rows, 4)), 2).astype(np.float32)
            b = np.round(rng.uniform(-10, 10, (rows, 4)), 2).astype(np.float32)
            cases.append((a, b))
        t2 = time.perf_counter()
        ids = fleet.submit_batch(
            {"model": name, "inputs": {"INPUT0": a, "INPUT1": b}} for a, b in cases
        )
        views = [fleet.wait(job_id, timeout=args.job_timeout) for job_id in ids]
        wall = time.perf_counter() - t2

        table = Table(
            title=f"{len(ids)} {name} jobs through the fleet",
            caption="every element of OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1 "
            "is checked; the first of OUTPUT0 is shown",
        )
        table.add_column("job", overflow="fold")
        table.add_column("status")
        table.add_column("rows", justify="right")
        table.add_column("INPUT0 + INPUT1 = OUTPUT0", overflow="fold")
        table.add_column("queue ms", justify="right")
        table.add_column("run ms", justify="right")
        wrong = 0
        for (a, b), view in zip(cases, views, strict=True):
            if view.status != "SUCCEEDED":
                wrong += 1
                table.add_row(view.id[-8:], view.status, "", str(view.error), "", "")
                continue
            out = fleet.outputs(view)
            ok = np.allclose(out["OUTPUT0"], a + b) and np.allclose(out["OUTPUT1"], a - b)
            wrong += 0 if ok else 1
            table.add_row(
                view.id[-8:],
                view.status if ok else "WRONG",
                str(len(a)),
                _first(a, b, out["OUTPUT0"]),
                str(view.queue_ms),
                str(view.run_ms),
            )
        console.print(table)
        queue = sorted(v.queue_ms or 0 for v in views)
        runs = sorted(v.run_ms or 0 for v in views)
        console.print(
            f"{len(ids)} jobs in {wall:.2f} s ({len(ids) / wall:.1f} jobs/s); "
            f"queue ms p50 {queue[len(queue) // 2]} max {queue[-1]}; "
            f"run ms p50 {runs[len(runs) // 2]} max {runs[-1]}"
        )

        a = np.arange(8, dtype=np.float32).reshape(2, 4)
        t3 = time.perf_counter()
        out = fleet.infer(name, {"INPUT0": a, "INPUT1": a * 10}, timeout=args.job_timeout)
        console.print(
            f"infer({name}, INPUT0={a.tolist()}, INPUT1=10*INPUT0) -> "
            f"OUTPUT0={out['OUTPUT0'].tolist()} in {(time.perf_counter() - t3) * 1000:.0f} ms"
        )
        wrong += 0 if np.allclose(out["OUTPUT0"], a * 11) else 1
    if wrong:
        console.print(f"[red]demo: {wrong} wrong or failed answers[/red]")
        return 1
    console.print("[green]demo: every answer correct[/green]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in ("join-token", "run"):
        p = sub.add_parser(cmd)
        p.add_argument("--url", required=True)
        p.add_argument("--api-key-file", required=True)
        if cmd == "run":
            p.add_argument("--model-dir", required=True)
            p.add_argument("--jobs", type=int, default=20)
            p.add_argument("--runner-timeout", type=float, default=300.0)
            p.add_argument("--job-timeout", type=float, default=120.0)
            p.add_argument("--runner-pid", type=int, help="fail early when this process exits")
            p.add_argument("--runner-log", help="shown when the runner exits early")
    args = parser.parse_args(argv)
    return join_token(args) if args.command == "join-token" else run(args)


if __name__ == "__main__":
    sys.exit(main())
