"""The embedded control plane (SQLite + local blobs) as real processes: crash safety and the
data directory's guarantees.

Acceptance test (``test_kill_9_twice_mid_run_loses_nothing``): an embedded control plane on
a fixed loopback port and data directory, one ``gpufleet-runner start --backend mock`` and a
client submitting 500 jobs through the SDK, each with its own Idempotency-Key. The control
plane is ``kill -9``ed twice while the submits and the runner's leases and completes are in
flight, and started again on the same directory and port each time. Afterwards:

- no job lost, none duplicated: 500 distinct ids for 500 keys (a submit whose answer was
  lost is retried with its key and gets the same job), 500 rows in the database, every one
  SUCCEEDED with the mock's answer (zeros shaped like the input) within a deadline;
- committed once: a job may be leased again after a crash (its lease expired while the
  server was down) but the runner saw at most one accepted commit per job, and the terminal
  states do not change afterwards (a lease expiry later never reopens one);
- the admin API key, the pushed model (READY, its files in the blob store), the deployment,
  the tenant's webhook secret, the runner's config and the runner's credentials (same runner
  id, registered once, no new join token) all survive.

The other tests share one control plane: the data directory is 0700 with every file 0600
while it serves, it listens on its API port only, a second ``serve`` on its directory exits
at once with the reason while the first keeps working, ``backup`` copies the live database.
Then ``--ephemeral`` leaves nothing behind, and a database written by a newer release is
refused (exit 2) and left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import Client
from gpufleet import errors as gf_errors
from gpufleet.wire import JobView

from control_plane.storage.embedded_store import DB_FILE
from tests import rig
from tests.helpers.add_sub_jobs import MODEL, make_cases, wait_for
from tests.helpers.procs import (
    READY_PREFIX,
    REPO,
    ControlPlaneProc,
    RunnerProc,
    start_control_plane,
    stop_pid,
)

pytestmark = [pytest.mark.slow]
SERVING = pytest.mark.xdist_group("embedded-serving")  # one shared server per run

N_JOBS = 500
# SIGKILL n comes once KILLS_AT[n] jobs are submitted, while the runner holds leases
KILLS_AT = (150, 330)
LEASE_S = 5  # short leases: the ones a crash orphans come back soon after the restart
BACKLOG = 100  # unfinished jobs the client keeps at most (submits span the whole run)
CP_ENV = {
    "GPUFLEET_LEASE_DURATION_S": str(LEASE_S),
    "GPUFLEET_MAX_LEASE_WAIT_S": "1",  # long polls end soon after a restart
    "GPUFLEET_SWEEP_INTERVAL_S": "0.5",
}
RUNNER_ENV = {
    "GPUFLEET_RUNNER_REQUEST_TIMEOUT_S": "5",
    "GPUFLEET_RUNNER_LEASE_GRACE_S": "2",
}
# Retry when the server was unreachable or answered that it cannot serve now.
RETRIABLE = (gf_errors.ConnectionError, gf_errors.UnavailableError, gf_errors.ServerError)


# --------------------------------------------------------------------------- helpers


def api_headers(url: str, api_key: str) -> dict[str, str]:
    """Bearer headers for raw calls the SDK has no method for."""
    resp = httpx.post(f"{url}/v1/auth/token", json={"api_key": api_key}, timeout=10)
    resp.raise_for_status()
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def db_query(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """One read of the live database from this process (WAL: readers never block the server)."""
    conn = sqlite3.connect(data_dir / DB_FILE, timeout=10)
    try:
        return list(conn.execute(sql, args).fetchall())
    finally:
        conn.close()


def statuses(data_dir: Path) -> dict[str, int]:
    return dict(db_query(data_dir, "SELECT status, COUNT(*) FROM jobs GROUP BY status"))


def terminal(counts: dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"))


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of ``root`` and everything under it."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _address(hex_addr: str) -> str:
    """``0100007F:1F90`` (/proc/net/tcp) -> ``127.0.0.1:8080``; IPv6 alike."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word in host (little-endian) order
    ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.ipv4_mapped or ip
    return f"{ip}:{int(port, 16)}"


def listening_sockets(pid: int) -> list[str]:
    """Every socket process ``pid`` listens on: TCP in LISTEN, bound UDP, listening unix."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            link = os.readlink(fd_dir / fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        table = Path(f"/proc/{pid}/net/{proto}")
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if inode not in inodes:
                continue
            if proto.startswith("tcp") and state != "0A":  # 0A: LISTEN
                continue
            if proto.startswith("udp") and local.endswith(":0000"):  # never bound
                continue
            found.append(f"{proto} {_address(local)}")
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[6] in inodes and int(cols[3], 16) & 0x10000:  # __SO_ACCEPTCON
            found.append(f"unix {cols[7] if len(cols) > 7 else '(abstract)'}")
    return sorted(found)


def serve_proc(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m control_plane serve ARGS`` with its output in ``log``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    full_env["GPUFLEET_ALLOW_MOCK_RUNNERS"] = "true"  # its runners are mock ones
    full_env.update(env or {})
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "control_plane", "serve", "--host", "127.0.0.1", *args],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready_line(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    """The URL a ``serve`` process printed once it listened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_pid(proc, 5)
    raise AssertionError("serve did not start:\n" + log.read_text(errors="replace"))


def newer_database(root: Path) -> Path:
    """A data directory whose database a newer gpufleet wrote (schema version + 1)."""
    from control_plane.settings import Settings
    from control_plane.storage.embedded_store import open_embedded_store
    from control_plane.storage.sqlite.schema import SCHEMA_VERSION

    stores = open_embedded_store(Settings(embedded=True, data_dir=root))
    stores.close()
    conn = sqlite3.connect(root / DB_FILE)
    with conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.close()
    return root / DB_FILE


# --------------------------------------------------------------------------- crash test


class Progress:
    """Jobs finished so far, as the test's poller last read them from the database."""

    def __init__(self) -> None:
        self.finished = 0
        self.changed = threading.Condition()

    def update(self, finished: int) -> None:
        with self.changed:
            self.finished = finished
            self.changed.notify_all()

    def wait_backlog(self, submitted: int, timeout: float) -> None:
        """Block while more than ``BACKLOG`` submitted jobs are unfinished."""
        with self.changed:
            self.changed.wait_for(lambda: submitted - self.finished < BACKLOG, timeout)


@dataclass
class Submitter:
    """Submits every case once, from its own thread, retrying each with its own key; keeps
    at most ``BACKLOG`` jobs unfinished, so the submits last as long as the run."""

    url: str
    api_key: str
    cases: list[tuple[np.ndarray, np.ndarray]]
    progress: Progress
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    ids: list[str] = field(default_factory=list)
    retries: dict[str, int] = field(default_factory=dict)  # error type -> count
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="submitter", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with Client(self.url, api_key=self.api_key, timeout=10, max_retries=0) as client:
                for i, (a, b) in enumerate(self.cases):
                    self.progress.wait_backlog(i, timeout=60)
                    self.ids.append(self._submit(client, i, a, b))
        except BaseException as exc:
            self.error = exc

    def _submit(self, client: Client, i: int, a: np.ndarray, b: np.ndarray) -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                view = client.submit(
                    MODEL,
                    {"INPUT0": a, "INPUT1": b},
                    idempotency_key=f"{self.tag}-{i:04d}",
                    # a job orphaned by each crash runs up to 3 times (the default max);
                    # headroom for a lease that also expires on a loaded machine
                    max_attempts=5,
                )
                return view.id
            except RETRIABLE as exc:
                cause = type(exc.__cause__ or exc).__name__
                self.retries[cause] = self.retries.get(cause, 0) + 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"submits stuck at {len(self.ids)}"
        if self.error is not None:
            raise self.error


def wait_registered(client: Client, timeout: float = 60) -> str:
    runners = wait_for("the runner to register", client.runners.list, timeout, 0.2)
    assert len(runners) == 1, runners
    return str(runners[0].id)


def job_snapshot(client: Client) -> dict[str, JobView]:
    return {v.id: v for v in client.list(model=MODEL, page_size=100)}


def test_kill_9_twice_mid_run_loses_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    port = rig.free_port()
    cp_dir = tmp_path / "cp"
    data_dir = cp_dir / "data"
    cp = start_control_plane(cp_dir, CP_ENV, port=port)
    url, admin_key = cp.url, cp.admin_key
    phases = {"control plane up": time.monotonic() - started}
    runner: RunnerProc | None = None
    client = Client(url, api_key=admin_key, timeout=30)
    try:
        # ---- state that must survive: model, deployment, keys, secret, runner
        pushed = client.models.push(REPO / "model_repository" / MODEL)
        assert pushed.state == "READY"
        deployment = client.models.deploy(MODEL, min_replicas=1, max_replicas=1)
        user_key = client.admin.create_api_key("default", "user", "crash-test").api_key
        secret = client.webhooks.secret()
        token = client.admin.create_join_token(region="default").join_token
        (tmp_path / "models").mkdir()  # empty: the model comes by model sync from the blobs
        runner = RunnerProc(
            url,
            token,
            tmp_path / "runner",
            docker_host="unused://",
            triton_image="unused",
            model_repository=tmp_path / "models",
            backend="mock",
            extra_env=RUNNER_ENV,
        )
        phases["state stored"] = time.monotonic() - started
        runner.start()
        runner_id = wait_registered(client)
        phases["runner registered"] = time.monotonic() - started
        config = {"heartbeat_interval_s": 1.0, "max_concurrency": 32, "lease_wait_s": 1.0}
        resp = httpx.patch(
            f"{url}/v1/runners/{runner_id}/config",
            json=config,
            headers=api_headers(url, admin_key),
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        assert runner.wait_ready(timeout=60)["runner_id"] == runner_id
        setup_s = phases["runner ready"] = time.monotonic() - started

        # ---- 500 submits; two SIGKILLs while submits, leases and completes are in flight
        cases = make_cases(N_JOBS, seed=11)
        progress = Progress()
        submitter = Submitter(url, admin_key, cases, progress)
        submitter.start()
        kills: list[str] = []
        baseline = 0  # jobs finished when the control plane last came up
        last_restart = time.monotonic()
        deadline = time.monotonic() + 120  # every job terminal by then
        while progress.finished < N_JOBS:
            assert time.monotonic() < deadline, (statuses(data_dir), len(submitter.ids))
            assert submitter.error is None, submitter.error
            counts = statuses(data_dir)
            progress.update(terminal(counts))
            n = len(kills)
            if (
                n < len(KILLS_AT)
                and len(submitter.ids) >= KILLS_AT[n]
                and progress.finished >= baseline + 20  # the runner completes jobs again
                and counts.get("RUNNING", 0) > 0  # and holds leases right now
            ):
                kills.append(f"{len(submitter.ids)} submitted, {counts}")
                cp.proc.send_signal(signal.SIGKILL)  # kill -9: no shutdown, no checkpoint
                cp.proc.wait(timeout=10)
                shutil.copy(cp.log_file, cp_dir / f"control-plane.killed-{n}.log")
                cp = start_control_plane(cp_dir, CP_ENV, port=port)  # same dir, same port
                assert cp.url == url
                last_restart = time.monotonic()
                phases[f"restart {n} up"] = last_restart - started
                baseline = terminal(statuses(data_dir))
            time.sleep(0.2)
        submitter.join(timeout=10)
        assert len(kills) == len(KILLS_AT), kills
        run_s = time.monotonic() - started - setup_s

        # ---- every job SUCCEEDED once, each with the mock's answer for its own input
        client.close()
        client = Client(url, api_key=admin_key, timeout=30)  # the key from before the crashes
        views = job_snapshot(client)
        assert len(set(submitter.ids)) == N_JOBS, "a retried submit made a second job"
        assert set(views) == set(submitter.ids), "jobs lost or extra jobs listed"
        for job_id, (a, _) in zip(submitter.ids, cases, strict=True):
            v = views[job_id]
            assert v.status == "SUCCEEDED", (v.id, v.status, v.error, v.attempts)
            assert 1 <= v.attempts <= 5, (v.id, v.attempts)
            out = client.outputs(v)
            assert out["OUTPUT0"].shape == a.shape and out["OUTPUT1"].shape == a.shape
            assert not out["OUTPUT0"].any()  # the mock backend answers zeros

        # ---- committed once: the runner saw at most one accepted commit per job (a lease
        # lost in a crash ends in a refused commit or none), and no terminal state moves
        # once every lease handed out before the last crash has expired
        counters = runner.status()["counters"]
        attempts = sum(v.attempts for v in views.values())
        assert counters["failed"] == 0, counters
        assert counters["succeeded"] <= N_JOBS, counters  # more: a job committed twice
        assert N_JOBS <= counters["leased"] <= attempts, (counters, attempts)
        time.sleep(max(0.0, last_restart + LEASE_S + 1 - time.monotonic()))
        again = job_snapshot(client)
        assert {i: (v.status, v.attempts, v.finished_at) for i, v in again.items()} == {
            i: (v.status, v.attempts, v.finished_at) for i, v in views.items()
        }

        # ---- keys, model, deployment, webhook secret, runner config and credentials
        assert api_headers(url, admin_key)  # the admin key issued before both crashes
        with Client(url, api_key=user_key, timeout=10) as user:
            assert user.get(submitter.ids[0]).status == "SUCCEEDED"
        model = client.models.get(MODEL)
        assert [(v.version, v.state) for v in model.versions] == [("1", "READY")]
        for f in model.versions[0].files:
            stored = data_dir / "blobs" / "objects" / "models" / MODEL / "1" / f.path
            assert digest(stored) == f.sha256, f.path
        assert client.models.deployment(MODEL).desired == deployment.desired
        assert client.webhooks.secret() == secret
        runners = client.runners.list()
        assert [r.id for r in runners] == [runner_id], "the runner registered again"
        assert runners[0].status == "ONLINE"
        assert runners[0].config.max_concurrency == config["max_concurrency"]
        assert runner.starts == 1 and runner.running()
        assert runner.log_file.read_text().count("registered as runner") == 1

        # ---- the database: one row per job and per key, nothing left queued
        assert statuses(data_dir) == {"SUCCEEDED": N_JOBS}
        assert db_query(data_dir, "SELECT COUNT(*) FROM queue_entries") == [(0,)]
        keys = db_query(
            data_dir,
            "SELECT COUNT(*), COUNT(DISTINCT job_id) FROM idempotency WHERE key LIKE ?",
            f"%{submitter.tag}-%",
        )
        assert keys == [(N_JOBS, N_JOBS)]
        again_leased = sum(v.attempts > 1 for v in views.values())
        print(
            f"\nphases { {k: round(v, 1) for k, v in phases.items()} }; "
            f"setup {setup_s:.1f} s, run {run_s:.1f} s, total "
            f"{time.monotonic() - started:.1f} s; kills at {kills}; submit retries "
            f"{submitter.retries}; jobs leased again: {again_leased}; runner {counters}"
        )
    finally:
        client.close()
        if runner is not None and runner.running():
            runner.terminate(timeout=20)
        cp.stop()


# --------------------------------------------------------------------------- one server


@dataclass
class Serving:
    cp: ControlPlaneProc
    data_dir: Path
    key_file: Path
    job_ids: list[str]


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """One embedded control plane with a pushed model (blob files) and 5 queued jobs."""
    work = tmp_path_factory.mktemp("serving")
    cp = start_control_plane(work / "cp")
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=30) as client:
            client.models.push(REPO / "model_repository" / MODEL)
            a = np.ones((1, 4), np.float32)
            ids = [client.submit(MODEL, {"INPUT0": a, "INPUT1": a}).id for _ in range(5)]
        yield Serving(cp, work / "cp" / "data", work / "cp" / "admin.key", ids)
    finally:
        cp.stop()


@SERVING
def test_data_dir_0700_every_file_0600_while_serving(serving: Serving) -> None:
    seen = modes(serving.data_dir)
    for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", "lock", "blob-signing.key"):
        assert name in seen, (name, sorted(seen))
    assert f"blobs/objects/models/{MODEL}/1/config.pbtxt" in seen
    for rel, mode in seen.items():
        expected = 0o700 if (serving.data_dir / rel).is_dir() else 0o600
        assert mode == expected, f"{rel}: {oct(mode)} != {oct(expected)}"
    assert stat.S_IMODE(serving.key_file.stat().st_mode) == 0o600


@SERVING
def test_listens_on_its_api_port_only(serving: Serving) -> None:
    port = int(serving.cp.url.rsplit(":", 1)[1])
    assert listening_sockets(serving.cp.proc.pid) == [f"tcp 127.0.0.1:{port}"]


@SERVING
def test_second_serve_on_the_same_dir_exits_at_once_and_the_first_keeps_serving(
    serving: Serving, tmp_path: Path
) -> None:
    log = tmp_path / "second.log"
    t = time.monotonic()
    second = serve_proc(["--embedded", "--data-dir", str(serving.data_dir), "--port", "0"], log)
    try:
        rc = second.wait(timeout=30)
    finally:
        stop_pid(second, 5)
    took = time.monotonic() - t
    out = log.read_text(errors="replace")
    assert rc == 2, out
    assert f"{serving.data_dir} is in use by pid {serving.cp.proc.pid}" in out, out
    assert "one control plane per data directory" in out
    assert READY_PREFIX not in out
    assert took < 20, f"took {took:.1f} s to refuse"
    # the first one still serves, reads and writes
    assert (serving.data_dir / "lock").read_text().strip() == f"pid {serving.cp.proc.pid}"
    with Client(serving.cp.url, api_key=serving.cp.admin_key, timeout=30) as client:
        assert client.get(serving.job_ids[0]).status == "QUEUED"
        a = np.ones((1, 4), np.float32)
        assert client.submit(MODEL, {"INPUT0": a, "INPUT1": a}).status == "QUEUED"


@SERVING
def test_backup_while_serving_holds_the_jobs(serving: Serving, tmp_path: Path) -> None:
    dest = tmp_path / "backup.db"
    data_dir = str(serving.data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    done = subprocess.run(
        [sys.executable, "-m", "control_plane", "backup", str(dest), "--data-dir", data_dir],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    conn = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT id, status FROM jobs").fetchall()
    finally:
        conn.close()
    assert {i for i, _ in rows} >= set(serving.job_ids)
    assert serving.cp.proc.poll() is None
    with Client(serving.cp.url, api_key=serving.cp.admin_key, timeout=30) as client:
        assert client.get(serving.job_ids[-1]).status == "QUEUED"


# --------------------------------------------------------------------------- other stores


def test_newer_schema_is_refused_with_exit_2_and_left_untouched(tmp_path: Path) -> None:
    root = tmp_path / "data"
    path = newer_database(root)
    before = (digest(path), sorted(p.name for p in root.iterdir()))
    log = tmp_path / "serve.log"
    proc = serve_proc(["--embedded", "--data-dir", str(root), "--port", "0"], log)
    try:
        rc = proc.wait(timeout=30)
    finally:
        stop_pid(proc, 5)
    out = log.read_text(errors="replace")
    assert rc == 2, out
    assert "error: " in out and "has schema version" in out and "upgrade gpufleet" in out, out
    assert "Traceback" not in out
    assert (digest(path), sorted(p.name for p in root.iterdir())) == before


def test_ephemeral_leaves_no_directory_after_sigterm(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    log = tmp_path / "serve.log"
    proc = serve_proc(["--ephemeral", "--port", "0"], log, env={"TMPDIR": str(tmp)})
    try:
        url = wait_ready_line(proc, log)
        (made,) = list(tmp.iterdir())
        assert made.name.startswith("gpufleet-") and (made / DB_FILE).is_file()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5):
            pass
    finally:
        rc = stop_pid(proc, 20)
    assert rc == 0, log.read_text(errors="replace")
    assert list(tmp.iterdir()) == []
