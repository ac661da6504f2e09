"""Cold start benchmark: deploy -> first answer against the model's own load time.

A real fleet on this machine: an embedded control plane (a process), one runner (a process,
docker backend, the CPU Triton image) with an EMPTY model repository, and the SDK as the
user. Two cold starts are timed, each on a model the runner has never loaded:

  deploy    ``add_sub`` pushed (its implicit deployment places nothing), then
            ``PUT …/deployment`` (min_replicas 1) and at once a job; timed from the PUT to
            the job's answer.
  implicit  ``upper_case`` pushed, then a job WITHOUT any deploy (the implicit deployment
            cold-starts it); timed from the submit to the answer.

``load`` is Triton's load of the model version on the runner (the job's ``load_ms``: the
runner timed ``load_model``); ``overhead`` = first answer - load: everything else (placement,
telling the runner, download of the files, the lease, the inference, the answer). The
target (issue 15) is overhead <= 1 s.

    DOCKER_HOST=... .venv/bin/python bench/bench_cold_start.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

from gpufleet import Client  # noqa: E402

from tests import rig  # noqa: E402
from tests.e2e.test_fleet_docker import remove_containers  # noqa: E402
from tests.helpers.procs import RunnerProc, start_control_plane  # noqa: E402

REPO = ROOT / "model_repository"
INPUTS = {
    "add_sub": {"INPUT0": [[1.0, 2.0, 3.0, 4.0]], "INPUT1": [[1.0, 1.0, 1.0, 1.0]]},
    "upper_case": {"TEXT": ["hello"]},
}


def wait_online(fleet: Client, timeout: float = 240) -> None:
    """Until the runner heartbeats with Triton up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runners = fleet.runners.list()
        if any(r.status == "ONLINE" and (r.triton or {}).get("ready") for r in runners):
            return
        time.sleep(0.25)
    raise RuntimeError("the runner did not come online")


def first_answer(fleet: Client, model: str, deploy: bool) -> dict[str, float | str | None]:
    """Seconds from the deploy (or the submit) to the job's answer, and the job's fields."""
    start = time.perf_counter()
    if deploy:
        fleet.models.deploy(model, min_replicas=1, max_replicas=1)
    job = fleet.submit(model, INPUTS[model], timeout_s=120)
    done = fleet.wait(job.id, timeout=240)
    elapsed = time.perf_counter() - start
    if done.status != "SUCCEEDED":
        raise RuntimeError(f"{model}: job {done.id} {done.status}: {done.error}")
    return {
        "answer_s": elapsed,
        "load_s": (done.load_ms or 0) / 1000 if done.load_ms is not None else None,
        "cold_start": str(done.cold_start),
        "queue_ms": done.queue_ms,
        "run_ms": done.run_ms,
        "runner_ms": done.runner_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args()
    docker_host = os.environ.get("DOCKER_HOST") or ""
    if not docker_host:
        shared = Path("/tmp/shared-docker-host")
        docker_host = shared.read_text().strip() if shared.exists() else ""
    if not docker_host or not rig.engine_reachable(docker_host):
        sys.exit("bench_cold_start: no Docker engine (set DOCKER_HOST)")
    image = rig.ensure_triton_image(docker_host)
    rows: list[tuple[str, dict[str, float | str | None]]] = []
    with tempfile.TemporaryDirectory(prefix="gf-bench-cold-") as tmp:
        root = Path(tmp)
        cp = start_control_plane(root / "cp")
        empty = root / "models"
        empty.mkdir()
        runner: RunnerProc | None = None
        try:
            with Client(cp.url, api_key=cp.admin_key, timeout=60) as fleet:
                token = fleet.admin.create_join_token().join_token
                runner = RunnerProc(cp.url, token, root / "runner", docker_host, image, empty)
                runner.start()
                wait_online(fleet)
                for model, deploy in (("add_sub", True), ("upper_case", False)):
                    fleet.models.push(REPO / model)
                    rows.append(
                        ("deploy" if deploy else "implicit", first_answer(fleet, model, deploy))
                    )
        finally:
            if runner is not None and runner.running():
                runner.terminate()
            cp.stop()
            if runner is not None:
                with contextlib.suppress(Exception):
                    remove_containers(docker_host, runner.name)

    print("\ncold start: deploy (or first job) -> first answer, CPU Triton on Docker\n")
    head = f"{'path':<10}{'answer s':>10}{'load s':>9}{'overhead s':>12}{'cold':>6}"
    print(head + f"{'queue ms':>10}{'run ms':>8}{'runner ms':>11}")
    print("-" * 76)
    for name, r in rows:
        answer = float(r["answer_s"] or 0)
        load = r["load_s"]
        over = f"{answer - float(load):>12.2f}" if load is not None else f"{'?':>12}"
        load_text = f"{float(load):>9.2f}" if load is not None else f"{'?':>9}"
        print(
            f"{name:<10}{answer:>10.2f}{load_text}{over}{r['cold_start']!s:>6}"
            f"{r['queue_ms']!s:>10}{r['run_ms']!s:>8}{r['runner_ms']!s:>11}"
        )
    print("\ntarget: overhead (answer - load) <= 1.00 s")


if __name__ == "__main__":
    main()
