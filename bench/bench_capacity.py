"""Capacity benchmark: the first job on an empty pool (docker provider) and the way back to 0.

An embedded control plane (subprocess, loopback) with one pool (``max_hosts: 1``,
``idle_timeout_s`` from ``--idle-timeout``) whose docker provider starts the runner image on
a real Docker engine. With ``--backend docker`` (default) the runner starts the CPU Triton
image as a sibling container and loads ``add_sub``; with ``--backend mock`` there is no
Triton (the split then shows the provider and the join alone).

From the first job submitted on the empty pool to its result, split into:

  decide + host start   submit → the runner container's ``State.StartedAt``
  runner boot           runner container started → its Triton container started
  triton start          Triton container started → the runner's ``registered_at`` (the
                        runner registers once Triton is ready)
  model load            registered → the first heartbeat that reports ``add_sub`` READY
  job                   model READY → the job's ``finished_at``
  total                 submit → the result in the client

(mock backend: no Triton container; "runner boot" then runs to the registration.)

and the scale-in delay: the last job's ``finished_at`` → the container gone (idle timeout,
drain, settle, ``docker stop``). Heartbeat-based points are sharpened by setting the runner's
``heartbeat_interval_s`` to 0.5 s as soon as it registers (the admin config API).

    .venv/bin/python bench/bench_capacity.py [--backend docker|mock] [--docker-host URL]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from gpufleet import Client  # noqa: E402

from tests import rig  # noqa: E402
from tests.helpers.procs import start_control_plane  # noqa: E402

RUNNER_IMAGE = "gpufleet/runner:e2e-capacity"  # built from this tree (cached: seconds)
POOL = "bench-cap"


def ts(iso: str | None) -> float:
    if not iso:
        return float("nan")
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def docker_ts(raw: str) -> float:
    head, _, frac = raw.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def pool_spec(
    args: argparse.Namespace, work: Path, docker_host: str, triton: str
) -> dict[str, Any]:
    env = {"GPUFLEET_RUNNER_BACKEND": args.backend, "GPUFLEET_RUNNER_LEASE_GRACE_S": "5"}
    volumes: list[str] = []
    groups: list[str] = []
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    os.chmod(models, 0o777)  # the runner's non-root user writes here
    if args.backend == "mock":
        volumes.append(f"{rig.MODEL_REPOSITORY}:/models:ro")
        env["GPUFLEET_RUNNER_MODEL_REPOSITORY"] = "/models"
    else:
        sock = docker_host.removeprefix("unix://")
        volumes += [f"{sock}:/var/run/docker.sock", f"{models}:{models}"]
        groups.append(str(os.stat(sock).st_gid))
        env.update(
            {
                "GPUFLEET_RUNNER_MODEL_REPOSITORY": str(models),
                "GPUFLEET_RUNNER_DOCKER_HOST": "unix:///var/run/docker.sock",
                "GPUFLEET_RUNNER_TRITON_IMAGE": triton,
                "GPUFLEET_RUNNER_TRITON_HTTP_PORT": str(rig.free_port()),
                "GPUFLEET_RUNNER_TRITON_GRPC_PORT": str(rig.free_port()),
                "GPUFLEET_RUNNER_TRITON_METRICS_PORT": str(rig.free_port()),
                "GPUFLEET_RUNNER_SHM_SIZE": "256m",
                "GPUFLEET_RUNNER_ULIMITS": '{"stack": 67108864}',
                "GPUFLEET_RUNNER_TRITON_EXIT_TIMEOUT_S": "2",
            }
        )
    return {
        "max_hosts": 1,
        "idle_timeout_s": args.idle_timeout,
        "join_timeout_s": 300,
        "models": ["add_sub"],
        "provider": {
            "kind": "docker",
            "settings": {
                "image": RUNNER_IMAGE,
                "env": env,
                "volumes": volumes,
                "group_add": groups,
                "stop_timeout_s": 30,
            },
        },
    }


def build_runner_image(docker_host: str) -> None:
    """Dockerfile.runner built offline by scripts/deploy-runner.sh (as the e2e tests do)."""
    import subprocess

    base = "gpufleet/rig-bookworm-base:1"
    if not rig.image_present(docker_host, base):
        base = rig.ensure_triton_image(docker_host)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_RUNNER_")}
    env.update(DOCKER_HOST=docker_host, BASE_IMAGE=base, IMAGE=RUNNER_IMAGE)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy-runner.sh"), "build"], env=env, check=True
    )


def run(args: argparse.Namespace, work: Path, docker_host: str) -> list[tuple[str, float]]:
    triton = rig.ensure_triton_image(docker_host) if args.backend == "docker" else ""
    build_runner_image(docker_host)
    cp = start_control_plane(
        work / "cp",
        {
            "GPUFLEET_CAPACITY_INTERVAL_S": "0.5",
            "GPUFLEET_CAPACITY_DRAIN_SETTLE_S": "1",
            "GPUFLEET_CAPACITY_DOCKER_HOST": docker_host,
            "GPUFLEET_MAX_LEASE_WAIT_S": "1",
        },
    )
    docker = rig.docker_client(docker_host)
    try:
        token = httpx.post(f"{cp.url}/v1/auth/token", json={"api_key": cp.admin_key}).json()
        admin = httpx.Client(
            base_url=cp.url, headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        with Client(cp.url, api_key=cp.admin_key, timeout=60.0) as client:
            client.models.push(rig.MODEL_REPOSITORY / "add_sub")
            if args.backend == "docker":  # the runner loads what is in its repository
                import shutil

                shutil.copytree(rig.MODEL_REPOSITORY / "add_sub", work / "models" / "add_sub")
                for p in (work / "models").rglob("*"):
                    os.chmod(p, 0o777 if p.is_dir() else 0o666)
            r = admin.put(f"/v1/pools/{POOL}", json=pool_spec(args, work, docker_host, triton))
            r.raise_for_status()
            time.sleep(2)
            x = np.ones((1, 4), dtype=np.float32)
            t0 = time.time()
            job = client.submit("add_sub", {"INPUT0": x, "INPUT1": x})
            points: dict[str, float] = {}
            host_name = ""
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                view = client.get(job.id)
                for rv in admin.get("/v1/runners").json()["runners"]:
                    if rv["labels"].get("gpufleet.pool") != POOL:
                        continue
                    if "registered" not in points:
                        points["registered"] = ts(rv["registered_at"])
                        admin.patch(
                            f"/v1/runners/{rv['id']}/config", json={"heartbeat_interval_s": 0.5}
                        )
                    if "host" not in points:
                        points["host"] = 0.0
                        host_name = rv["name"]
                    ready = any(
                        m["name"] == "add_sub" and m["state"] == "READY" for m in rv["models"]
                    )
                    if ready and "model" not in points:
                        points["model"] = ts(rv["last_heartbeat_at"])
                if view.status in ("SUCCEEDED", "FAILED"):
                    break
                time.sleep(0.1)
            t_result = time.time()
            assert view.status == "SUCCEEDED", view
            (container,) = docker.containers.list(filters={"label": f"gpufleet.pool={POOL}"})
            started = docker_ts(container.attrs["State"]["StartedAt"])
            tritons = docker.containers.list(
                filters={"label": [f"gpufleet.runner={host_name}", "gpufleet.role=triton"]}
            )
            triton_at = (
                docker_ts(tritons[0].attrs["State"]["StartedAt"])
                if tritons
                else points["registered"]
            )
            finished = ts(view.finished_at)
            model = max(points.get("model", points["registered"]), points["registered"])
            while docker.containers.list(all=True, filters={"label": f"gpufleet.pool={POOL}"}):
                time.sleep(0.2)
            gone = time.time()
        return [
            ("decide + host start", started - t0),
            ("runner boot", triton_at - started),
            ("triton start", points["registered"] - triton_at),
            ("model load", model - points["registered"]),
            ("job", max(0.0, finished - model)),
            ("total (submit → result)", t_result - t0),
            (f"scale-in after the last job (idle {args.idle_timeout:g} s)", gone - finished),
        ]
    finally:
        for c in docker.containers.list(all=True, filters={"label": f"gpufleet.pool={POOL}"}):
            host = c.labels.get("gpufleet.host", "")
            c.remove(force=True)
            for t in docker.containers.list(all=True, filters={"label": f"gpufleet.runner={host}"}):
                t.remove(force=True)
        docker.close()
        cp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["docker", "mock"], default="docker")
    parser.add_argument("--docker-host", help="engine (default: reachable or a private one)")
    parser.add_argument("--idle-timeout", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gf-bench-cap-") as tmp:
        work = Path(tmp)
        stop = None
        host = args.docker_host
        if host is None:
            host, stop = rig.ensure_docker_engine(work / "engine")
        try:
            rows = run(args, work, host)
        finally:
            if stop is not None:
                stop()
    print(f"\nfirst job on an empty pool, docker provider, runner backend {args.backend}")
    print(f"{'stage':<45} {'seconds':>8}")
    for name, secs in rows:
        print(f"{name:<45} {secs:>8.2f}")


if __name__ == "__main__":
    main()
