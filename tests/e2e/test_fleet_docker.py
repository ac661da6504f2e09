"""The whole fleet on real components: an embedded control plane process on a loopback
socket, ``gpufleet-runner start`` processes (docker backend) each with its own CPU Triton
container on a real Docker engine, and jobs through HTTP with the SDK.

a) 50 add_sub jobs all SUCCEEDED with correct numbers;
b) the Triton container killed while jobs run: restarted, every job still SUCCEEDED;
c) a runner SIGKILLed while holding leases: a second runner completes those jobs after the
   leases expire, each exactly once;
d) a runner restarted (SIGTERM, start again): adopts its container, no second one.

a, b and d share one control plane and one runner (one Triton start); c has its own
control plane (short leases) and runners. Ports, names and state directories are unique, so
the module runs under xdist (the shared group stays on one worker with --dist loadgroup).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from gpufleet import Client

from runner.backends.container_spec import LABEL_ROLE, LABEL_RUNNER, ROLE_TRITON
from tests import rig
from tests.helpers.add_sub_jobs import (
    MODEL,
    check_outputs,
    make_cases,
    submit,
    wait_all,
    wait_for,
)
from tests.helpers.procs import ControlPlaneProc, RunnerProc, start_control_plane

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]
SHARED = pytest.mark.xdist_group("fleet-docker-shared")


# --------------------------------------------------------------------------- helpers


def own_containers(docker_host: str, runner_name: str) -> list[Any]:
    """Every container (any state) the runner ``runner_name`` labelled as its Triton."""
    client = rig.docker_client(docker_host)
    try:
        return list(
            client.containers.list(
                all=True,
                filters={"label": [f"{LABEL_RUNNER}={runner_name}", f"{LABEL_ROLE}={ROLE_TRITON}"]},
            )
        )
    finally:
        client.close()


def remove_containers(docker_host: str, runner_name: str) -> None:
    for container in own_containers(docker_host, runner_name):
        with contextlib.suppress(Exception):
            container.remove(force=True)


def private_repository(model_repository: Path, dest: Path) -> Path:
    """A repository holding only add_sub (a copy): the runner's own, nothing else loads."""
    shutil.copytree(
        model_repository / MODEL, dest / MODEL, ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def control_plane(workdir: Path, env: dict[str, str] | None = None) -> Iterator[ControlPlaneProc]:
    cp = start_control_plane(workdir, env)
    try:
        yield cp
    finally:
        cp.stop()


@contextlib.contextmanager
def sdk(cp: ControlPlaneProc, model_repository: Path) -> Iterator[Client]:
    with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as client:
        client.models.push(model_repository / MODEL)
        yield client


@contextlib.contextmanager
def runner_proc(runner: RunnerProc, docker_host: str) -> Iterator[RunnerProc]:
    """Start ``runner``; on exit stop it by its pid and remove its containers."""
    runner.start()
    try:
        yield runner
    finally:
        if runner.running():
            runner.terminate()
        remove_containers(docker_host, runner.name)


# --------------------------------------------------------------------------- shared fleet


class SharedFleet:
    def __init__(self, cp: ControlPlaneProc, client: Client, runner: RunnerProc) -> None:
        self.cp, self.client, self.runner = cp, client, runner


@pytest.fixture(scope="module")
def shared(
    docker_host: str,
    triton_image: str,
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SharedFleet]:
    """One control plane and one runner (keeps Triton on a clean exit: test d)."""
    work = tmp_path_factory.mktemp("fleet-shared")
    with control_plane(work / "cp") as cp, sdk(cp, model_repository) as client:
        token = client.admin.create_join_token(region="default").join_token
        runner = RunnerProc(
            cp.url,
            token,
            work / "runner",
            docker_host,
            triton_image,
            private_repository(model_repository, work / "models"),
            extra_env={"GPUFLEET_RUNNER_KEEP_TRITON_ON_EXIT": "true"},
        )
        with runner_proc(runner, docker_host):
            runner.wait_ready()
            yield SharedFleet(cp, client, runner)


@pytest.fixture
def fleet(shared: SharedFleet) -> SharedFleet:
    """The shared fleet, ready (a previous test may have restarted its runner or Triton)."""
    if not shared.runner.running():
        shared.runner.start()
    shared.runner.wait_ready()
    return shared


# --------------------------------------------------------------------------- tests


@SHARED
def test_50_jobs_succeed_with_correct_numbers(fleet: SharedFleet) -> None:
    cases = make_cases(50, seed=1)
    ids = submit(fleet.client, cases)
    views = wait_all(fleet.client, ids, timeout=120)
    check_outputs(fleet.client, cases, views)
    status = fleet.runner.status()
    assert all(v.runner_id == status["runner_id"] for v in views)
    assert all(v.attempts == 1 for v in views), [v.attempts for v in views]


@SHARED
def test_killed_triton_is_restarted_and_every_job_succeeds(
    fleet: SharedFleet, docker_host: str
) -> None:
    runner = fleet.runner
    restarts_before = runner.status()["triton"]["restarts"]
    (container,) = own_containers(docker_host, runner.name)
    # Enough jobs that some are still queued or running at the kill: the job path runs
    # hundreds per second, so a few dozen would all be done before it.
    cases = make_cases(330, seed=2)
    first = submit(fleet.client, cases[:300])
    wait_for(
        "a first job to finish",
        lambda: any(fleet.client.get(i).status == "SUCCEEDED" for i in first[:5]),
        60,
    )
    container.kill()  # while jobs run: some in flight, the rest queued
    killed_at = time.time()
    second = submit(fleet.client, cases[300:])  # leased while Triton is down or restarting
    views = wait_all(fleet.client, first + second, timeout=240)
    check_outputs(fleet.client, cases, views)
    assert any(_ts(v.finished_at or "") > killed_at for v in views[:300]), "none left at the kill"

    status = runner.status()
    assert status["triton"]["restarts"] >= restarts_before + 1
    assert status["triton"]["container_id"] != container.id[:12]
    alive = own_containers(docker_host, runner.name)
    assert [c.status for c in alive] == ["running"], "exactly one Triton container"
    log = (runner.state_dir / "triton.log").read_text()
    assert "restart #" in log  # the dead container's logs were kept


def test_killed_runner_jobs_complete_once_on_another_runner_after_lease_expiry(
    docker_host: str,
    triton_image: str,
    model_repository: Path,
    tmp_path: Path,
) -> None:
    lease_s = 4  # short, so expiry is quick; twice an extension round trip under load
    env = {"GPUFLEET_LEASE_DURATION_S": str(lease_s)}
    orphan_ids: list[str] = []
    first: RunnerProc | None = None
    repository = private_repository(model_repository, tmp_path / "models")
    with control_plane(tmp_path / "cp", env) as cp, sdk(cp, model_repository) as client:
        token = client.admin.create_join_token(region="default", max_uses=2).join_token
        first = RunnerProc(
            cp.url,
            token,
            tmp_path / "first",
            docker_host,
            triton_image,
            repository,
            # a slow liveness check: the paused container below is not "repaired" before
            # the kill, so the jobs stay leased and unanswered
            extra_env={"GPUFLEET_RUNNER_WATCH_INTERVAL_S": "120"},
        )
        try:
            first.start()
            first_id = first.wait_ready()["runner_id"]
            (container,) = own_containers(docker_host, first.name)
            orphan_ids.append(container.id)
            # Triton frozen: the first runner leases the jobs and waits on Triton,
            # extending its leases, until it is killed.
            container.pause()
            cases = make_cases(6, seed=3)  # <= max_concurrency (8): one lease takes all
            ids = submit(client, cases)

            def leased_by_first() -> bool:
                views = [client.get(i) for i in ids]
                return all(v.status == "RUNNING" and v.runner_id == first_id for v in views)

            wait_for("the first runner to hold every lease", leased_by_first, 60)
            time.sleep(lease_s)  # past one lease length: held by extensions, not luck
            assert leased_by_first()
            first.kill()  # SIGKILL by pid: no drain, no completion, leases left behind
            killed_at = time.time()

            second = RunnerProc(
                cp.url, token, tmp_path / "second", docker_host, triton_image, repository
            )
            with runner_proc(second, docker_host):
                second_id = second.wait_ready()["runner_id"]
                views = wait_all(client, ids, timeout=120)
                check_outputs(client, cases, views)
                for v in views:
                    assert v.runner_id == second_id, v
                    assert v.attempts == 2, (v.id, v.attempts)  # first lease + one requeue
                    assert v.started_at is not None
                    assert _ts(v.started_at) >= killed_at - 1, (v.id, v.started_at, killed_at)
                counters = second.status()["counters"]
                assert counters["succeeded"] == len(ids), counters
                assert counters["conflicts"] == 0, counters  # no refused (409) completion
                # the results stay committed once: nothing changes them afterwards
                time.sleep(lease_s + 1)
                again = [client.get(i) for i in ids]
                assert [(v.status, v.attempts, v.finished_at) for v in again] == [
                    (v.status, v.attempts, v.finished_at) for v in views
                ]
        finally:
            rig_client = rig.docker_client(docker_host)
            try:
                for cid in orphan_ids:  # the killed runner's orphaned container, by id
                    with contextlib.suppress(Exception):
                        rig_client.containers.get(cid).remove(force=True)
            finally:
                rig_client.close()
            if first is not None and first.running():
                first.kill()
            if first is not None:
                remove_containers(docker_host, first.name)


@SHARED
def test_restarted_runner_adopts_its_container(fleet: SharedFleet, docker_host: str) -> None:
    runner = fleet.runner
    before = runner.status()
    (container,) = own_containers(docker_host, runner.name)
    assert before["triton"]["container_id"] == container.id[:12]

    assert runner.terminate() == 0  # SIGTERM: drain and exit, Triton left running
    container.reload()
    assert container.status == "running"

    runner.start()  # same name, settings and state dir
    after = runner.wait_ready()
    assert after["runner_id"] == before["runner_id"]  # stored credentials reused
    assert after["triton"]["adopted"] is True
    assert after["triton"]["container_id"] == container.id[:12]
    containers = own_containers(docker_host, runner.name)
    assert [c.id for c in containers] == [container.id], "no second container"

    cases = make_cases(10, seed=4)
    views = wait_all(fleet.client, submit(fleet.client, cases), timeout=60)
    check_outputs(fleet.client, cases, views)
    assert {v.runner_id for v in views} == {before["runner_id"]}
