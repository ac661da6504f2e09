"""Synchronous inference dispatched to runners, end to end on real components.

a) Triton's own clients against the control plane: ``tritonclient.http`` (JSON and binary
   tensors) and ``tritonclient.grpc`` (raw and typed ``contents`` tensors, the control plane's
   gRPC port from ``GPUFLEET_GRPC_PORT``) infer ``add_sub`` on a real CPU Triton reached
   through a runner's channel; answers checked with numpy; no token → 401 / UNAUTHENTICATED.
b) Two runners serve add_sub; 200 concurrent ``AsyncClient.infer`` calls while one runner is
   SIGKILLed: every call returns the right numbers (the SDK retries the 503 of a request lost
   with the runner) or a clear API error, none outlives its timeout, and durable jobs
   submitted around the kill still SUCCEED.
c) Two control-plane replicas on one DynamoDB/S3 store (a moto server), one runner (mock
   backend) connected to replica A: A answers by dispatch, B by the durable job path.

a and b share one control plane (SQLite, short leases) and two ``gpufleet-runner start
--backend docker`` processes, each with its own Triton container on the test's Docker engine
(b kills the second one last). c needs no Docker. Processes are stopped by pid; containers
are removed by their runner's label.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import AsyncClient, Client
from gpufleet.errors import APIError

from runner.backends.container_spec import LABEL_ROLE, LABEL_RUNNER, ROLE_TRITON
from tests import rig
from tests.helpers.procs import (
    READY_PREFIX,
    REPO,
    ControlPlaneProc,
    RunnerProc,
    start_control_plane,
    stop_pid,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "add_sub"
STEP_S = 120.0  # bound of one wait for a process or Triton on a loaded 2-core machine


def wait_for(what: str, check: Callable[[], Any], timeout: float = STEP_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            got = check()
            if got:
                return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def cases(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = int(rng.integers(1, 5))
        shape = (rows, 4)
        out.append(
            (
                rng.uniform(-100, 100, shape).astype(np.float32),
                rng.uniform(-100, 100, shape).astype(np.float32),
            )
        )
    return out


def check_add_sub(a: np.ndarray, b: np.ndarray, out0: Any, out1: Any) -> None:
    assert out0 is not None and out1 is not None
    assert out0.dtype == np.float32 and out0.shape == a.shape, (out0.dtype, out0.shape)
    np.testing.assert_allclose(out0, a + b, rtol=1e-6)
    np.testing.assert_allclose(out1, a - b, rtol=1e-6)


# --------------------------------------------------------------------------- processes


def own_containers(docker_host: str, runner_name: str) -> list[Any]:
    client = rig.docker_client(docker_host)
    try:
        labels = [f"{LABEL_RUNNER}={runner_name}", f"{LABEL_ROLE}={ROLE_TRITON}"]
        return list(client.containers.list(all=True, filters={"label": labels}))
    finally:
        client.close()


def remove_containers(docker_host: str, runner_name: str) -> None:
    for container in own_containers(docker_host, runner_name):
        with contextlib.suppress(Exception):
            container.remove(force=True)


def private_repository(dest: Path) -> Path:
    """A repository holding only add_sub: nothing else loads in the runner's Triton."""
    shutil.copytree(
        rig.MODEL_REPOSITORY / MODEL, dest / MODEL, ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def dispatch_ready(runner: RunnerProc) -> str | None:
    """The runner's id once add_sub is READY in its Triton and its channel is open."""
    st = runner.status()
    ready = any(m["name"] == MODEL and m["state"] == "READY" for m in st["models"])
    return st["runner_id"] if ready and st["dispatch"]["connected"] else None


def in_flight_on(runner: RunnerProc) -> int:
    return int(runner.status()["dispatch"]["in_flight"])


def served(runners: list[RunnerProc]) -> int:
    return sum(int(r.status()["dispatch"]["served"]) for r in runners if r.running())


def passed_through(runners: list[RunnerProc]) -> int:
    """Answers the runners gave by handing the caller's KServe bytes to Triton untouched."""
    return sum(int(r.status()["dispatch"]["passed_through"]) for r in runners if r.running())


@dataclass
class DockerFleet:
    cp: ControlPlaneProc
    grpc_port: int
    token: str
    runners: list[RunnerProc]

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def host_port(self) -> str:
        return self.cp.url.removeprefix("http://")


@pytest.fixture(scope="module")
def docker_fleet(
    docker_host: str, triton_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockerFleet]:
    """A control plane with KServe gRPC on and two docker-backend runners (started at once:
    the two Triton containers come up in parallel)."""
    work = tmp_path_factory.mktemp("dispatch-docker")
    grpc_port = rig.free_port()
    env = {
        "GPUFLEET_GRPC_PORT": str(grpc_port),
        "GPUFLEET_LEASE_DURATION_S": "4",  # a killed runner's lease expires quickly
        "GPUFLEET_DISPATCH_QUEUE_WAIT_S": "20",  # 200 callers queue for 16 slots: no 429
    }
    cp = start_control_plane(work / "cp", env)
    runners: list[RunnerProc] = []
    try:
        wait_for("the gRPC endpoint", lambda: "KServe gRPC listening on" in cp.log_tail(), 10)
        with Client(cp.url, api_key=cp.admin_key, timeout=60) as client:
            client.models.push(rig.MODEL_REPOSITORY / MODEL)
            join = client.admin.create_join_token(max_uses=2).join_token
        for n in (1, 2):
            repository = private_repository(work / f"models{n}")
            runner = RunnerProc(
                cp.url,
                join,
                work / f"runner{n}",
                docker_host,
                triton_image,
                repository,
                # the second one is killed in b) with its Triton paused: a slow liveness
                # check does not "repair" (unpause, drain) that Triton before the kill
                extra_env={"GPUFLEET_RUNNER_WATCH_INTERVAL_S": "120"} if n == 2 else {},
            )
            runners.append(runner)
            runner.start()
        for runner in runners:
            wait_for(
                f"runner {runner.name} to serve add_sub", functools.partial(dispatch_ready, runner)
            )
        token = httpx.post(
            f"{cp.url}/v1/auth/token", json={"api_key": cp.admin_key}, timeout=30
        ).json()["access_token"]
        yield DockerFleet(cp, grpc_port, token, runners)
    finally:
        for runner in runners:
            if runner.running():
                runner.terminate(timeout=30)
            remove_containers(docker_host, runner.name)
        cp.stop()


def routed(fleet: DockerFleet) -> None:
    """Until the control plane has the runners' ``models`` frames (READY add_sub)."""
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
            for n in ("INPUT0", "INPUT1")
        ],
        "timeout_s": 5,
    }

    def dispatched() -> bool:
        r = httpx.post(
            f"{fleet.cp.url}/v1/models/{MODEL}/infer", json=body, headers=fleet.admin, timeout=30
        )
        return r.status_code == 200 and r.json()["path"] == "dispatch"

    wait_for("dispatch to add_sub", dispatched, 20)


# --------------------------------------------------------------------------- a) tritonclient


@pytest.mark.docker
@pytest.mark.xdist_group("dispatch-docker")
def test_tritonclient_http_json_and_binary_through_dispatch(docker_fleet: DockerFleet) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    routed(docker_fleet)
    before = served(docker_fleet.runners)
    raw_before = passed_through(docker_fleet.runners)
    client = httpclient.InferenceServerClient(url=docker_fleet.host_port, network_timeout=60)
    try:
        for binary in (False, True):
            for a, b in cases(3, seed=int(binary)):
                inputs = [
                    httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
                    httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
                ]
                inputs[0].set_data_from_numpy(a, binary_data=binary)
                inputs[1].set_data_from_numpy(b, binary_data=binary)
                outputs = [
                    httpclient.InferRequestedOutput(n, binary_data=binary)
                    for n in ("OUTPUT0", "OUTPUT1")
                ]
                res = client.infer(MODEL, inputs, outputs=outputs, headers=docker_fleet.admin)
                check_add_sub(a, b, res.as_numpy("OUTPUT0"), res.as_numpy("OUTPUT1"))
                assert "job_id" not in (res.get_response().get("parameters") or {})
        assert served(docker_fleet.runners) == before + 6  # all six ran over a channel
        # ... as passthrough: the control plane parsed no tensor, Triton got the bytes
        assert passed_through(docker_fleet.runners) == raw_before + 6

        # Triton validates a passed-through request: its 400 (naming the input) comes back
        # as a 400, not a 5xx, and nothing is retried or queued.
        a, b = cases(1, seed=8)[0]
        wrong = [
            httpclient.InferInput("INPUT0", [a.shape[0], 3], "FP32"),
            httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
        ]
        wrong[0].set_data_from_numpy(a[:, :3].copy(), binary_data=True)
        wrong[1].set_data_from_numpy(b, binary_data=True)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, wrong, headers=docker_fleet.admin)
        assert refused.value.status() == "400"
        assert "INPUT0" in str(refused.value.message())

        a, b = cases(1, seed=9)[0]
        inputs = [httpclient.InferInput(n, list(a.shape), "FP32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        with pytest.raises(InferenceServerException, match=r"401|[Uu]nauthori"):
            client.infer(MODEL, inputs)  # no bearer token
        assert served(docker_fleet.runners) == before + 6
    finally:
        client.close()


@pytest.mark.docker
@pytest.mark.xdist_group("dispatch-docker")
def test_tritonclient_grpc_raw_and_typed_contents_through_dispatch(
    docker_fleet: DockerFleet,
) -> None:
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    routed(docker_fleet)
    before = served(docker_fleet.runners)
    raw_before = passed_through(docker_fleet.runners)
    target = f"127.0.0.1:{docker_fleet.grpc_port}"
    metadata = {"authorization": docker_fleet.admin["Authorization"]}
    client = grpcclient.InferenceServerClient(url=target)
    try:
        for a, b in cases(3, seed=3):  # tritonclient sends raw_input_contents
            inputs = [
                grpcclient.InferInput("INPUT0", list(a.shape), "FP32"),
                grpcclient.InferInput("INPUT1", list(b.shape), "FP32"),
            ]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            res = client.infer(MODEL, inputs, headers=metadata, client_timeout=60)
            check_add_sub(a, b, res.as_numpy("OUTPUT0"), res.as_numpy("OUTPUT1"))
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, inputs, client_timeout=60)  # no token
        assert "UNAUTHENTICATED" in str(info.value.status())
        assert passed_through(docker_fleet.runners) == raw_before + 3
        # Triton's own refusal of a passed-through request: INVALID_ARGUMENT, its message
        wrong = [grpcclient.InferInput("INPUT0", [a.shape[0], 3], "FP32"), inputs[1]]
        wrong[0].set_data_from_numpy(a[:, :3].copy())
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, wrong, headers=metadata, client_timeout=60)
        assert "INVALID_ARGUMENT" in str(refused.value.status())
        assert "INPUT0" in str(refused.value.message())
    finally:
        client.close()

    # typed contents (fp32_contents), answered as raw_output_contents
    a, b = cases(1, seed=4)[0]
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        tensor = req.inputs.add(name=name, datatype="FP32", shape=list(arr.shape))
        tensor.contents.fp32_contents.extend(arr.ravel().tolist())
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        resp = stub.ModelInfer(req, metadata=list(metadata.items()), timeout=60)
        with pytest.raises(grpc.RpcError) as denied:
            stub.ModelInfer(req, timeout=60)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    outs = {
        o.name: np.frombuffer(raw, np.float32).reshape(list(o.shape))
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }
    check_add_sub(a, b, outs["OUTPUT0"], outs["OUTPUT1"])
    assert served(docker_fleet.runners) == before + 4


# --------------------------------------------------------------------------- b) runner killed


def dispatched_by(fleet: DockerFleet, runner_id: str) -> dict[str, float]:
    """The control plane's ``gpufleet_infer_dispatched`` counts for one runner, by outcome."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{fleet.cp.url}/metrics", timeout=30).text
    return {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "gpufleet_infer_dispatched"
        for s in family.samples
        if s.name.endswith("_total") and s.labels.get("runner") == runner_id
    }


def _pause(container: Any, attempts: int = 5) -> None:
    """``docker pause``, tried again when the freezer gives up on a busy container: runc
    answers "unable to freeze" when a task of the cgroup is not frozen in time, which a
    Triton busy with 200 calls on a 2-core host sometimes is; a second try freezes it."""
    import docker.errors

    for attempt in range(attempts):
        try:
            container.pause()
            return
        except docker.errors.APIError as exc:
            if "unable to freeze" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


@pytest.mark.docker
@pytest.mark.xdist_group("dispatch-docker")
async def test_200_concurrent_infers_survive_a_runner_killed_mid_way(
    docker_fleet: DockerFleet, docker_host: str
) -> None:
    await asyncio.to_thread(routed, docker_fleet)
    keep, victim = docker_fleet.runners
    victim_id = (await asyncio.to_thread(victim.status))["runner_id"]
    (container,) = await asyncio.to_thread(own_containers, docker_host, victim.name)
    assert victim.proc is not None
    ok_before = (await asyncio.to_thread(dispatched_by, docker_fleet, victim_id)).get("ok", 0)
    work = cases(200, seed=5)
    job_cases = cases(6, seed=6)
    per_call_s = 60.0
    done = 0

    async with AsyncClient(docker_fleet.cp.url, token=docker_fleet.token, max_retries=5) as sdk:

        async def one(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray] | Exception:
            nonlocal done
            try:
                return await asyncio.wait_for(
                    sdk.infer(MODEL, {"INPUT0": a, "INPUT1": b}, timeout=30), per_call_s
                )
            except (TimeoutError, APIError) as exc:  # judged below
                return exc
            finally:
                done += 1

        start = time.monotonic()
        calls = [asyncio.create_task(one(a, b)) for a, b in work]
        while done < 20:  # mid-way: most calls still to come
            await asyncio.sleep(0.002)
        # Freeze the victim's Triton so that requests are certainly in flight on it when
        # the runner dies (add_sub answers in a millisecond otherwise).
        await asyncio.to_thread(_pause, container)
        paused_at_done = done
        in_flight = await asyncio.to_thread(
            wait_for, "requests in flight on the victim", functools.partial(in_flight_on, victim)
        )
        victim.proc.kill()  # SIGKILL by pid: its channel drops with those requests
        killed_at_done = done
        jobs = await asyncio.gather(  # durable jobs submitted as the runner dies
            *(sdk.submit(MODEL, {"INPUT0": a, "INPUT1": b}) for a, b in job_cases)
        )
        await asyncio.to_thread(victim.proc.wait, 10)
        results = await asyncio.wait_for(asyncio.gather(*calls), per_call_s + 30)
        elapsed = time.monotonic() - start

        views = [await sdk.wait(j.id, timeout=60) for j in jobs]
        for (a, b), view in zip(job_cases, views, strict=True):
            assert view.status == "SUCCEEDED", (view.id, view.status, view.error, view.attempts)
            out = await sdk.outputs(view)
            check_add_sub(a, b, out["OUTPUT0"], out["OUTPUT1"])

    await asyncio.to_thread(remove_containers, docker_host, victim.name)
    on_victim = await asyncio.to_thread(dispatched_by, docker_fleet, victim_id)
    errors = [r for r in results if isinstance(r, Exception)]
    print(f"200 calls in {elapsed:.1f}s, {len(errors)} errors, paused after {paused_at_done}, "
          f"killed after {killed_at_done} with {in_flight} in flight; {on_victim}")  # fmt: skip
    assert not [e for e in errors if isinstance(e, asyncio.TimeoutError)], "a call hung"
    for e in errors:  # a clear error: the API's, with a retryable status
        assert isinstance(e, APIError) and e.status_code in (429, 503, 504), repr(e)
    assert len(errors) < in_flight, errors  # the calls lost with the runner were retried
    for (a, b), r in zip(work, results, strict=True):
        if not isinstance(r, Exception):
            check_add_sub(a, b, r["OUTPUT0"], r["OUTPUT1"])
    assert killed_at_done <= len(work) - 20, "the kill came too late to matter"
    assert on_victim.get("ok", 0) > ok_before, on_victim  # it served some before the kill
    assert on_victim.get("error", 0) >= in_flight, on_victim  # lost in flight: 503, retried
    assert dispatch_ready(keep)  # the survivor still serves


# --------------------------------------------------------------------------- c) two replicas


def spawn_replica(workdir: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """``python -m control_plane serve`` on the tables named in ``env`` (no --embedded); its
    output goes to a file (a full pipe would block it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "control-plane.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "control_plane", "serve", "--host", "127.0.0.1",
             "--port", "0", *args],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def replica_ready(
    proc: subprocess.Popen[bytes], workdir: Path, admin_key_file: Path | None = None
) -> ControlPlaneProc:
    """Wait for the ready line of a process from :func:`spawn_replica`."""
    log_file = workdir / "control-plane.log"
    deadline = time.monotonic() + STEP_S
    while time.monotonic() < deadline:
        for line in log_file.read_text(errors="replace").splitlines():
            if line.startswith(READY_PREFIX):
                key = admin_key_file.read_text().strip() if admin_key_file is not None else ""
                return ControlPlaneProc(proc, line[len(READY_PREFIX) :].strip(), key, log_file)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_pid(proc, 5)
    raise RuntimeError("control plane did not start:\n" + log_file.read_text(errors="replace"))


def test_two_replicas_one_runner_dispatch_on_its_replica_job_on_the_other(
    moto_endpoint: str, tmp_path: Path
) -> None:
    from control_plane.settings import Settings
    from control_plane.storage.aws import make_clients
    from control_plane.storage.definitions import create_all

    tag = uuid.uuid4().hex[:10]
    store = Settings(
        dynamodb_endpoint_url=moto_endpoint,
        s3_endpoint_url=moto_endpoint,
        table_prefix=f"t{tag}",
        bucket=f"b{tag}",
    )
    create_all(*make_clients(store), store.table_prefix, store.bucket, store.aws_region)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    env.update(
        {
            "GPUFLEET_DYNAMODB_ENDPOINT_URL": moto_endpoint,
            "GPUFLEET_S3_ENDPOINT_URL": moto_endpoint,
            "GPUFLEET_TABLE_PREFIX": store.table_prefix,
            "GPUFLEET_BUCKET": store.bucket,
            "GPUFLEET_JWT_SECRET": f"replicas-{uuid.uuid4().hex}{uuid.uuid4().hex}",
            "GPUFLEET_ALLOW_MOCK_RUNNERS": "true",  # mock runners take part
            "GPUFLEET_POLL_INTERVAL_S": "0.05",
            "GPUFLEET_SWEEP_INTERVAL_S": "0.5",
        }
    )
    key_file = tmp_path / "admin.key"
    procs = [  # both start at once; A bootstraps the admin key
        spawn_replica(tmp_path / "a", env, "--admin-key-file", str(key_file)),
        spawn_replica(tmp_path / "b", env),
    ]
    runner: RunnerProc | None = None
    try:
        a = replica_ready(procs[0], tmp_path / "a", key_file)
        b = replica_ready(procs[1], tmp_path / "b")
        try:
            with Client(a.url, api_key=a.admin_key, timeout=60) as client:
                client.models.push(rig.MODEL_REPOSITORY / MODEL)
                join = client.admin.create_join_token(max_uses=2).join_token
            runner = RunnerProc(
                a.url,
                join,
                tmp_path / "runner",
                "unused",
                "unused",
                private_repository(tmp_path / "models"),
                backend="mock",
            )
            runner.start()
            runner_id = wait_for(
                "the runner's channel to replica A", lambda: dispatch_ready(runner)
            )

            body = {
                "inputs": [
                    {"name": n, "datatype": "FP32", "shape": [1, 4], "data": [1.5, -2, 3, 40]}
                    for n in ("INPUT0", "INPUT1")
                ],
                "timeout_s": 30,
            }
            token = httpx.post(
                f"{b.url}/v1/auth/token", json={"api_key": a.admin_key}, timeout=30
            ).json()["access_token"]  # issued by B, valid on A: one signing key
            headers = {"Authorization": f"Bearer {token}"}

            def infer_on(replica: ControlPlaneProc) -> dict[str, Any]:
                r = httpx.post(
                    f"{replica.url}/v1/models/{MODEL}/infer", json=body, headers=headers, timeout=60
                )
                assert r.status_code == 200, r.text
                outs = {o["name"]: o for o in r.json()["outputs"]}
                for o in outs.values():  # the mock engine: zeros of the config's shape
                    assert (o["shape"], o["data"]) == ([1, 4], [0.0] * 4), o
                assert set(outs) == {"OUTPUT0", "OUTPUT1"}
                return dict(r.json())

            on_a = wait_for(
                "replica A to route to the channel",
                lambda: (got := infer_on(a))["path"] == "dispatch" and got,
                20,
            )
            assert (on_a["runner_id"], on_a["job_id"]) == (runner_id, None)
            on_b = infer_on(b)  # no channel on B: a durable job, leased by the runner via A
            assert on_b["path"] == "job" and on_b["runner_id"] == runner_id
            job = httpx.get(f"{a.url}/v1/jobs/{on_b['job_id']}", headers=headers, timeout=30)
            assert job.json()["status"] == "SUCCEEDED", job.text
        finally:
            if runner is not None and runner.running():
                runner.terminate(timeout=20)
            assert b.stop() == 0
    finally:
        for proc in procs:
            stop_pid(proc, 20)
        assert procs[0].returncode == 0
