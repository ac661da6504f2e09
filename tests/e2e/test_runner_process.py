"""The runner's ``process`` backend on a real Triton, no Docker: ``gpufleet-runner start
--backend process`` runs the ``tritonserver`` of a host-side Triton tree (scripts/
triton-tree.sh, from the nvidia-pytriton wheel) against an embedded control plane process on
a loopback socket; jobs go through HTTP with the SDK.

a) add_sub jobs all SUCCEEDED with correct numbers, served by the runner's own tritonserver
   child (binary, backend directory and LD_LIBRARY_PATH derived from the tree's layout);
b) that tritonserver SIGKILLed (its pid only) while jobs run: the runner starts a new one
   and every job still ends SUCCEEDED;
c) the runner SIGKILLed: its tritonserver keeps running; the restarted runner adopts it (same
   pid), serves jobs with it, and on SIGTERM stops it.

All tests share one control plane and one runner (one module); everything is stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpufleet import Client

from runner.backends.process_backend import PID_FILE
from tests import rig
from tests.e2e.test_job_logs_docker import chatty_model
from tests.helpers.add_sub_jobs import (
    MODEL,
    check_outputs,
    make_cases,
    submit,
    wait_all,
    wait_for,
)
from tests.helpers.procs import ControlPlaneProc, RunnerProc, start_control_plane

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.xdist_group("process")]


# --------------------------------------------------------------------------- helpers


def proc_info(pid: int) -> dict[str, Any] | None:
    """ppid, state, argv and environment of a live process from /proc (None when gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    env = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
    return {
        "state": fields[0],
        "ppid": int(fields[1]),
        "pgid": int(fields[2]),
        "argv": [a.decode(errors="replace") for a in argv],
        "env": env,
    }


def children(pid: int) -> list[int]:
    """Child pids of ``pid`` (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def triton_child(runner: RunnerProc, tree: Path) -> int:
    """The tritonserver pid: the one the status endpoint names, checked in /proc to be a
    child of this runner running the tree's binary."""
    pid = int(runner.status()["triton"]["pid"])
    info = proc_info(pid)
    assert info is not None, f"tritonserver pid {pid} is not running"
    assert info["ppid"] == runner.pid and pid in children(runner.pid)
    assert info["argv"][0] == str((tree / "bin" / "tritonserver").resolve())
    return pid


def kill_pid_if_tritonserver(pid: int) -> None:
    """Last-resort cleanup: SIGKILL ``pid`` (only it) when it still is a tritonserver."""
    info = proc_info(pid)
    if info is not None and info["argv"][:1] and info["argv"][0].endswith("/tritonserver"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the fleet


class Fleet:
    def __init__(
        self, cp: ControlPlaneProc, client: Client, runner: RunnerProc, tree: Path
    ) -> None:
        self.cp, self.client, self.runner, self.tree = cp, client, runner, tree
        self.seen_pids: set[int] = set()

    def triton_pid(self) -> int:
        pid = triton_child(self.runner, self.tree)
        self.seen_pids.add(pid)
        return pid


@pytest.fixture(scope="module")
def triton_tree() -> Path:
    try:
        return rig.ensure_tritonserver_tree()
    except rig.RigError as exc:
        reason = str(exc)
    pytest.fail(f"cannot prepare a host-side Triton: {reason}", pytrace=False)


@pytest.fixture(scope="module")
def fleet(triton_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("runner-process")
    models = work / "models"
    models.mkdir()
    shutil.copytree(rig.MODEL_REPOSITORY / MODEL, models / MODEL)  # Triton reads a copy
    cp = start_control_plane(work / "cp")
    fleet: Fleet | None = None
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as client:
            client.models.push(rig.MODEL_REPOSITORY / MODEL)
            token = client.admin.create_join_token(region="default").join_token
            runner = RunnerProc(
                cp.url,
                token,
                work / "runner",
                docker_host="",  # not used by the process backend
                triton_image="",
                model_repository=models,
                backend="process",
                # Only the binary is named: --backend-directory and LD_LIBRARY_PATH come from
                # the tree's layout (bin/../backends, bin/../lib).
                extra_env={
                    "GPUFLEET_RUNNER_TRITONSERVER_PATH": str(triton_tree / "bin" / "tritonserver")
                },
            )
            fleet = Fleet(cp, client, runner, triton_tree)
            runner.start()
            try:
                runner.wait_ready(timeout=180)
                yield fleet
            finally:
                if runner.running():
                    runner.terminate(timeout=60)
                for pid in fleet.seen_pids:
                    kill_pid_if_tritonserver(pid)
    finally:
        cp.stop()


@pytest.fixture
def ready(fleet: Fleet) -> Fleet:
    if not fleet.runner.running():
        fleet.runner.start()
    fleet.runner.wait_ready(timeout=180)
    return fleet


# --------------------------------------------------------------------------- tests


def test_jobs_succeed_on_the_runners_own_tritonserver(ready: Fleet) -> None:
    status = ready.runner.status()
    assert status["triton"]["backend"] == "process"
    pid = ready.triton_pid()
    info = proc_info(pid)
    assert info is not None
    tree = ready.tree.resolve()
    assert f"--backend-directory={tree / 'backends'}" in info["argv"]
    assert info["env"]["LD_LIBRARY_PATH"].split(":")[0] == str(tree / "lib")
    assert "--http-address=127.0.0.1" in info["argv"]
    assert info["pgid"] == pid  # its own process group (stopped as a whole)

    cases = make_cases(40, seed=1)
    views = wait_all(ready.client, submit(ready.client, cases), timeout=120)
    check_outputs(ready.client, cases, views)
    assert all(v.runner_id == status["runner_id"] for v in views)
    assert all(v.attempts == 1 for v in views), [v.attempts for v in views]
    assert ready.triton_pid() == pid


def test_job_logs_carry_what_the_model_printed(ready: Fleet, tmp_path: Path) -> None:
    """Per-job logs with the process backend: Triton's output file has no timestamps, the
    runner stamps its lines as they arrive, so a job's logs hold what the model printed
    while it ran (``model  | …``) besides the runner's own lines."""
    client = ready.client
    client.models.push(chatty_model(tmp_path))
    client.models.deploy("chatty", min_replicas=1, max_replicas=1)
    job = client.submit(
        "chatty",
        {"INPUT0": np.ones((1, 4), np.float32), "INPUT1": np.ones((1, 4), np.float32)},
    )
    view = client.wait(job.id, timeout=180)
    assert view.status == "SUCCEEDED", view
    text = client.logs(job.id).logs
    assert f"job {job.id} started" in text and "runner | " in text, text
    assert "model  | " in text and "chatty: 1 request(s) in this batch" in text, text
    client.models.deploy("chatty", min_replicas=0, max_replicas=0)  # undeploy


def test_killed_tritonserver_is_restarted_and_every_job_succeeds(ready: Fleet) -> None:
    runner, client = ready.runner, ready.client
    restarts_before = runner.status()["triton"]["restarts"]
    pid = ready.triton_pid()
    cases = make_cases(60, seed=2)
    first = submit(client, cases[:30])
    wait_for(
        "some jobs to finish",
        lambda: sum(client.get(i).status == "SUCCEEDED" for i in first[:10]) >= 5,
        60,
    )
    os.kill(pid, signal.SIGKILL)  # that pid only, while jobs run
    second = submit(client, cases[30:])  # leased while Triton is down or restarting
    views = wait_all(client, first + second, timeout=240)
    check_outputs(client, cases, views)

    assert proc_info(pid) is None
    status = runner.status()
    assert status["triton"]["restarts"] >= restarts_before + 1
    new_pid = ready.triton_pid()  # a child of the same runner process
    assert new_pid != pid
    log = (runner.state_dir / "triton.log").read_text()
    assert "restart #1" in log and f"tritonserver pid {pid}" in log


def test_restarted_runner_adopts_its_tritonserver_and_stops_it(ready: Fleet) -> None:
    runner, client = ready.runner, ready.client
    pid = ready.triton_pid()
    runner.kill()  # SIGKILL: no cleanup; Triton (its own session) keeps running
    info = proc_info(pid)
    assert info is not None, "tritonserver died with its runner"
    assert (runner.state_dir / PID_FILE).is_file()

    runner.start()
    status = runner.wait_ready(timeout=120)
    assert status["triton"]["adopted"] is True
    assert status["triton"]["pid"] == pid
    cases = make_cases(10, seed=3)
    views = wait_all(client, submit(client, cases), timeout=120)
    check_outputs(client, cases, views)
    assert proc_info(pid) is not None

    assert runner.terminate(timeout=60) == 0  # SIGTERM: drain, then stop Triton by pid
    wait_for("the adopted tritonserver to exit", lambda: proc_info(pid) is None, 30)
    assert not (runner.state_dir / PID_FILE).exists()
    assert "runner stopped" in (runner.state_dir / "triton.log").read_text()
