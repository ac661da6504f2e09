"""The soak run: many jobs through the real fleet while it is being broken, then a check
that every job ended as the documented semantics say (docs/failure_modes.md).

Real processes on loopback sockets: a control plane (``python -m control_plane serve``) on
the embedded SQLite store or on DynamoDB + S3 (a moto server in its own process, so a kill
of the control plane keeps the store), mock runners (``gpufleet-runner start --backend
mock`` answering each job with its own inputs, ``mock_outputs=echo``, after
``mock_delay_s``) and optionally one runner with the real CPU Triton (add_sub: a + b, a - b).
A submitter sends the jobs in batches with an Idempotency-Key each (a failed batch is sent
again with the same key), paced over ``submit_over_s``. Meanwhile:

- a mock runner is SIGKILLed every ``kill_every_s`` and started again at once (its jobs come
  back by lease expiry);
- the control plane is ``kill -9``ed ``cp_kills`` times and started again on the same port
  and store;
- the store is paused once for ``store_pause_s`` (DynamoDB: SIGSTOP of the moto process;
  SQLite: another connection holds the write lock);
- a prober times ``GET /v1/health`` and ``GET /v1/jobs/{id}`` every 0.5 s.

Checks (each failure is a line of ``SoakReport.problems``): every job terminal; every
SUCCEEDED job's outputs are its own (echo of its inputs, or add_sub of them when the Triton
runner ran it); attempts within max_attempts; every job committed exactly once (the
store's own record: ``commits`` on the job, incremented in the conditional write that ends
a running attempt; also the control plane's ``job … committed`` lines over every
incarnation's log, and the runners' accepted commits ≤ jobs); no request of the prober took
longer than the storage deadlines allow; on SQLite no queue entry or marker outlives its job.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from gpufleet import Client
from gpufleet import errors as gf_errors

from tests import rig
from tests.helpers.add_sub_jobs import MODEL, Case, make_cases
from tests.helpers.procs import REPO, ControlPlaneProc, RunnerProc, start_control_plane

RETRIABLE = (gf_errors.ConnectionError, gf_errors.UnavailableError, gf_errors.ServerError)
COMMITTED = re.compile(r"job (job_\w+) committed (\w+) by runner (\w+)")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
# Storage deadlines of the control plane under soak (its defaults): a request ends within the
# budget plus the call that overran it (tries x (connect + read)), plus scheduling slack.
STORAGE = {"budget": 10.0, "connect": 2.0, "read": 5.0, "attempts": 2}
REQUEST_LIMIT_S = STORAGE["budget"] + STORAGE["attempts"] * (STORAGE["connect"] + STORAGE["read"])


@dataclass
class SoakConfig:
    workdir: Path
    jobs: int = 10_000
    store: str = "sqlite"  # "sqlite" | "dynamodb"
    mock_runners: int = 3
    triton_runner: bool = False
    docker_host: str | None = None  # the engine of the Triton runner
    kill_every_s: float = 5.0
    cp_kills: int = 2
    store_pause_s: float = 15.0
    submit_over_s: float = 120.0
    batch: int = 100
    max_attempts: int = 10
    lease_s: float = 5.0
    mock_delay_s: float = 0.2
    deadline_s: float = 1800.0
    seed: int = 7


@dataclass
class SoakReport:
    store: str
    jobs: int
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    attempts: Counter[int] = field(default_factory=Counter)
    runner_kills: int = 0
    cp_kills: int = 0
    pauses: int = 0
    submit_retries: int = 0
    max_probe_s: float = 0.0
    commits_logged: Counter[int] = field(default_factory=Counter)  # lines per job -> jobs
    commits_stored: Counter[int] = field(default_factory=Counter)  # store records -> jobs
    by_triton: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------- the store


class MotoProc:
    """DynamoDB + S3 (moto, one request at a time) in a process of its own."""

    def __init__(self, workdir: Path) -> None:
        self.port = rig.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        script = (
            "import sys, time\n"
            "from control_plane.embedded import serialized_moto_server\n"
            f"s = serialized_moto_server({self.port})\n"
            "s.start()\n"
            "print('moto ready', flush=True)\n"
            "while True: time.sleep(3600)\n"
        )
        self._log = (workdir / "moto.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            assert self.proc.poll() is None, "moto exited"
            time.sleep(0.1)
        raise RuntimeError("moto did not start")

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


class Store:
    """The fleet's store: settings for the control plane, pause, progress, index checks."""

    def __init__(self, cfg: SoakConfig) -> None:
        self.kind = cfg.store
        self.cp_dir = cfg.workdir / "cp"
        self.moto: MotoProc | None = None
        self.env: dict[str, str] = {}
        self.paused = threading.Event()
        self._scanned: Counter[str] = Counter()
        self._scanned_at = float("-inf")
        if self.kind == "dynamodb":
            from control_plane.settings import Settings
            from control_plane.storage.aws import make_clients
            from control_plane.storage.definitions import create_all

            self.moto = MotoProc(cfg.workdir / "moto")
            tag = f"soak{uuid.uuid4().hex[:8]}"
            self.env = {
                "GPUFLEET_DYNAMODB_ENDPOINT_URL": self.moto.url,
                "GPUFLEET_S3_ENDPOINT_URL": self.moto.url,
                "GPUFLEET_TABLE_PREFIX": tag,
                "GPUFLEET_BUCKET": tag,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            os.environ.update({k: v for k, v in self.env.items() if k.startswith("AWS_")})
            self.settings = Settings(
                dynamodb_endpoint_url=self.moto.url,
                s3_endpoint_url=self.moto.url,
                table_prefix=tag,
                bucket=tag,
                storage_read_timeout_s=30.0,
            )
            self.dynamodb, s3 = make_clients(self.settings)
            create_all(self.dynamodb, s3, tag, tag, self.settings.aws_region)
        elif self.kind != "sqlite":
            raise ValueError(f"store must be sqlite or dynamodb, not {self.kind!r}")

    @property
    def proc_store(self) -> str:
        return "sqlite" if self.kind == "sqlite" else "dynamodb"

    def _db(self) -> sqlite3.Connection:
        from control_plane.storage.embedded_store import DB_FILE

        return sqlite3.connect(self.cp_dir / "data" / DB_FILE, timeout=30, isolation_level=None)

    def pause(self, seconds: float) -> None:
        """Stall the store for ``seconds`` (in a thread; returns at once)."""

        def run() -> None:
            self.paused.set()
            try:
                if self.moto is not None:
                    self.moto.pause()
                    time.sleep(seconds)
                    self.moto.resume()
                else:
                    conn = self._db()
                    conn.execute("BEGIN EXCLUSIVE")
                    time.sleep(seconds)
                    conn.execute("ROLLBACK")
                    conn.close()
            finally:
                self.paused.clear()

        threading.Thread(target=run, daemon=True, name="store-pause").start()

    def statuses(self, max_age_s: float = 0.0) -> Counter[str]:
        """Jobs per status, read from the store itself (at most every ``max_age_s`` on
        DynamoDB: a scan holds moto's one request lock long enough to starve the fleet)."""
        if self.kind != "sqlite" and time.monotonic() - self._scanned_at < max_age_s:
            return self._scanned
        if self.kind == "sqlite":
            conn = self._db()
            try:
                rows = conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
            finally:
                conn.close()
            return Counter({str(s): int(n) for s, n in rows})
        out: Counter[str] = Counter()
        kwargs: dict[str, Any] = {
            "TableName": self.settings.table("jobs"),
            "ProjectionExpression": "#s",
            "ExpressionAttributeNames": {"#s": "status"},
        }
        while True:
            page = self.dynamodb.scan(**kwargs)
            out.update(item["status"]["S"] for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                self._scanned, self._scanned_at = out, time.monotonic()
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def commit_records(self) -> dict[str, int]:
        """Per job, how many times the store finished a running attempt of it (``commits``,
        written in the same conditional write as the terminal status)."""
        if self.kind == "sqlite":
            conn = self._db()
            try:
                rows = conn.execute("SELECT id, commits FROM jobs").fetchall()
            finally:
                conn.close()
            return {str(i): int(c) for i, c in rows}
        out: dict[str, int] = {}
        kwargs: dict[str, Any] = {
            "TableName": self.settings.table("jobs"),
            "ProjectionExpression": "id, commits",
        }
        while True:
            page = self.dynamodb.scan(**kwargs)
            for item in page.get("Items", []):
                out[item["id"]["S"]] = int(item.get("commits", {"N": "0"})["N"])
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def leftover_indexes(self) -> dict[str, int]:
        """Queue entries and markers still stored (all jobs are terminal by now)."""
        if self.kind == "sqlite":
            conn = self._db()
            try:
                entries = conn.execute("SELECT COUNT(*) FROM queue_entries").fetchone()[0]
                markers = conn.execute("SELECT COUNT(*) FROM markers").fetchone()[0]
            finally:
                conn.close()
            return {"queue entries": int(entries), "markers": int(markers)}
        counts = {}
        for name, table in (("queue entries", "queue"), ("markers", "leases")):
            page = self.dynamodb.scan(TableName=self.settings.table(table), Select="COUNT")
            counts[name] = int(page.get("Count", 0))
        return counts

    def close(self) -> None:
        if self.moto is not None:
            self.moto.stop()


# --------------------------------------------------------------------------- the client side


class Submitter(threading.Thread):
    """Batches of jobs with one Idempotency-Key each, resent with it until accepted."""

    def __init__(self, url: str, key: str, cases: list[Case], cfg: SoakConfig) -> None:
        super().__init__(daemon=True, name="soak-submitter")
        self.url, self.key, self.cases, self.cfg = url, key, cases, cfg
        self.ids: list[str] = []
        self.retries = 0
        self.error: BaseException | None = None
        self.tag = uuid.uuid4().hex[:8]

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main loop
            self.error = exc

    def _run(self) -> None:
        n = len(self.cases)
        batches = range(0, n, self.cfg.batch)
        pace = self.cfg.submit_over_s / max(1, len(batches))
        start = time.monotonic()
        with Client(self.url, api_key=self.key, timeout=60) as client:
            for b, first in enumerate(batches):
                time.sleep(max(0.0, start + b * pace - time.monotonic()))
                jobs = [
                    {
                        "model": MODEL,
                        "inputs": {"INPUT0": a, "INPUT1": c},
                        "max_attempts": self.cfg.max_attempts,
                        "timeout_s": 60,
                    }
                    for a, c in self.cases[first : first + self.cfg.batch]
                ]
                key = f"soak-{self.tag}-{b}"
                while True:
                    try:
                        self.ids += client.submit_batch(jobs, idempotency_key=key)
                        break
                    except RETRIABLE as exc:
                        assert exc.idempotency_key == key
                        self.retries += 1
                        time.sleep(0.5)


class Prober(threading.Thread):
    """Times health and job reads every 0.5 s: none may hang past the storage deadlines."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True, name="soak-prober")
        self.url, self.key = url, key
        self.job_id: str | None = None
        self.max_s = 0.0
        self.slowest = ""
        self.stop = threading.Event()

    def run(self) -> None:
        with Client(self.url, api_key=self.key, timeout=30) as client, httpx.Client() as http:
            token: str | None = None
            while not self.stop.wait(0.5):
                paths = ["/v1/health"] + ([f"/v1/jobs/{self.job_id}"] if self.job_id else [])
                for path in paths:
                    if token is None and path != "/v1/health":
                        with contextlib.suppress(Exception):
                            token = client._run(client._core.authenticate())
                        if token is None:
                            continue
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    t0 = time.monotonic()
                    try:
                        r = http.get(self.url + path, headers=headers, timeout=120)
                        if r.status_code == 401:
                            token = None
                    except httpx.TransportError:
                        pass  # the control plane is down (killed): refused at once
                    took = time.monotonic() - t0
                    if took > self.max_s:
                        self.max_s, self.slowest = took, path


# --------------------------------------------------------------------------- the run


def _runner_env(cfg: SoakConfig) -> dict[str, str]:
    return {
        "GPUFLEET_RUNNER_REQUEST_TIMEOUT_S": "10",
        "GPUFLEET_RUNNER_LEASE_GRACE_S": "2",
        "GPUFLEET_RUNNER_MOCK_OUTPUTS": "echo",
        "GPUFLEET_RUNNER_MOCK_DELAY_S": str(cfg.mock_delay_s),
    }


def _start_cp(store: Store, cfg: SoakConfig, port: int) -> ControlPlaneProc:
    env = {
        "GPUFLEET_LEASE_DURATION_S": str(cfg.lease_s),
        "GPUFLEET_MAX_LEASE_WAIT_S": "1",
        "GPUFLEET_SWEEP_INTERVAL_S": "0.5",
        "GPUFLEET_WEBHOOKS_ALLOW_LOOPBACK": "true",
        **store.env,
    }
    return start_control_plane(
        store.cp_dir,
        env,
        port=port,
        store=store.proc_store,
        timeout=120,
        extra_args=("--log-level", "info"),  # the "job … committed" lines are counted
    )


def run_soak(cfg: SoakConfig, log: Any = print) -> SoakReport:
    """Run one soak (see the module docstring); the report lists what went wrong."""
    report = SoakReport(store=cfg.store, jobs=cfg.jobs)
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    store = Store(cfg)
    port = rig.free_port()
    cp: ControlPlaneProc | None = None
    runners: list[RunnerProc] = []
    prober: Prober | None = None
    logs: list[Path] = []
    try:
        cp = _start_cp(store, cfg, port)
        url, admin = cp.url, cp.admin_key
        client = Client(url, api_key=admin, timeout=60)
        assert client.models.push(REPO / "model_repository" / MODEL).state == "READY"
        replicas = cfg.mock_runners + (1 if cfg.triton_runner else 0)
        client.models.deploy(MODEL, min_replicas=replicas, max_replicas=replicas)
        token = client.admin.create_join_token(
            region="default", max_uses=max(1, replicas)
        ).join_token
        for i in range(cfg.mock_runners):
            (cfg.workdir / f"models-{i}").mkdir(exist_ok=True)
            runners.append(
                RunnerProc(
                    url,
                    token,
                    cfg.workdir / f"runner-{i}",
                    docker_host="unused://",
                    triton_image="unused",
                    model_repository=cfg.workdir / f"models-{i}",
                    backend="mock",
                    extra_env=_runner_env(cfg),
                )
            )
        triton: RunnerProc | None = None
        if cfg.triton_runner:
            assert cfg.docker_host, "the Triton runner needs docker_host"
            (cfg.workdir / "triton-models").mkdir(exist_ok=True)
            triton = RunnerProc(
                url,
                token,
                cfg.workdir / "runner-triton",
                docker_host=cfg.docker_host,
                triton_image=rig.TRITON_CPU_IMAGE,
                model_repository=cfg.workdir / "triton-models",
                extra_env={"GPUFLEET_RUNNER_REQUEST_TIMEOUT_S": "10"},
            )
            runners.append(triton)
        for r in runners:
            r.start()
        config = {"heartbeat_interval_s": 1.0, "max_concurrency": 32, "lease_wait_s": 1.0}
        ids_of: dict[str, RunnerProc] = {}
        for r in runners:
            status = r.wait_ready(timeout=300)
            ids_of[status["runner_id"]] = r
            resp = httpx.patch(
                f"{url}/v1/runners/{status['runner_id']}/config",
                json=config,
                headers={"Authorization": f"Bearer {client._run(client._core.authenticate())}"},
                timeout=30,
            )
            assert resp.status_code == 200, resp.text
        triton_id = next((i for i, r in ids_of.items() if r is triton), None)
        log(f"[soak {cfg.store}] fleet up: {len(runners)} runners")

        cases = make_cases(cfg.jobs, seed=cfg.seed)
        submitter = Submitter(url, admin, cases, cfg)
        prober = Prober(url, admin)
        started = time.monotonic()
        submitter.start()
        prober.start()
        deadline = started + cfg.deadline_s
        next_kill = started + cfg.kill_every_s
        cp_kill_at = [(k + 1) / (cfg.cp_kills + 1) for k in range(cfg.cp_kills)]
        pause_at = 0.3 if cfg.store_pause_s > 0 else None
        rng = random.Random(cfg.seed)
        mocks = [r for r in runners if r is not triton]
        finished = 0
        while True:
            if submitter.error is not None:
                raise submitter.error
            if prober.job_id is None and submitter.ids:
                prober.job_id = submitter.ids[0]
            if not store.paused.is_set():
                finished = sum(store.statuses(max_age_s=15.0)[s] for s in TERMINAL)
            if finished >= cfg.jobs and not submitter.is_alive():
                break
            now = time.monotonic()
            if now > deadline:
                report.problems.append(
                    f"only {finished} of {cfg.jobs} jobs terminal after {cfg.deadline_s:.0f}s"
                )
                break
            done = finished / cfg.jobs
            if now >= next_kill and mocks:
                victim = rng.choice(mocks)
                if victim.running():
                    victim.kill()
                    report.runner_kills += 1
                victim.start()  # replaced at once: the same runner (its state directory)
                next_kill = now + cfg.kill_every_s
            if cp_kill_at and done >= cp_kill_at[0] and not store.paused.is_set():
                cp_kill_at.pop(0)
                cp.proc.send_signal(signal.SIGKILL)
                cp.proc.wait(timeout=10)
                saved = store.cp_dir / f"control-plane.killed-{report.cp_kills}.log"
                shutil.copy(cp.log_file, saved)
                logs.append(saved)
                cp.log_file.write_bytes(b"")
                cp = _start_cp(store, cfg, port)
                report.cp_kills += 1
                log(f"[soak {cfg.store}] control plane killed -9 and restarted at {done:.0%}")
            if pause_at is not None and done >= pause_at:
                pause_at = None
                store.pause(cfg.store_pause_s)
                report.pauses += 1
                log(f"[soak {cfg.store}] store paused {cfg.store_pause_s:g}s at {done:.0%}")
            time.sleep(0.5 if cfg.store == "sqlite" else 2.0)
        report.seconds = time.monotonic() - started
        submitter.join(timeout=30)
        prober.stop.set()
        prober.join(timeout=130)
        report.submit_retries = submitter.retries
        report.max_probe_s = prober.max_s
        if prober.max_s > REQUEST_LIMIT_S + 5:
            report.problems.append(
                f"{prober.slowest} took {prober.max_s:.1f}s (limit {REQUEST_LIMIT_S + 5:.0f}s)"
            )
        _check(report, cfg, store, client, submitter, cases, triton_id, runners)
        logs.append(cp.log_file)
        _check_commits(report, logs, submitter.ids)
        client.close()
    finally:
        if prober is not None:
            prober.stop.set()
        for r in runners:
            if r.running():
                with contextlib.suppress(Exception):
                    r.terminate(timeout=15)
        if cp is not None:
            cp.stop()
        store.close()
    return report


def _check(
    report: SoakReport,
    cfg: SoakConfig,
    store: Store,
    client: Client,
    submitter: Submitter,
    cases: list[Case],
    triton_id: str | None,
    runners: list[RunnerProc],
) -> None:
    ids = submitter.ids
    if len(ids) != cfg.jobs or len(set(ids)) != cfg.jobs:
        report.problems.append(f"{len(set(ids))} distinct ids for {cfg.jobs} jobs")
    views = {v.id: v for v in client.list(model=MODEL, page_size=100)}
    if set(views) != set(ids):
        report.problems.append(f"listed {len(views)} jobs, submitted {len(set(ids))}")
    for job_id, (a, b) in zip(ids, cases, strict=False):
        v = views.get(job_id)
        if v is None:
            continue
        report.statuses[v.status] += 1
        report.attempts[v.attempts] += 1
        if v.status not in TERMINAL:
            report.problems.append(f"{job_id} still {v.status}")
            continue
        if v.attempts > cfg.max_attempts:
            report.problems.append(f"{job_id}: {v.attempts} attempts > {cfg.max_attempts}")
        if v.status != "SUCCEEDED":
            code = v.error.code if v.error else None
            if code != "attempts_exhausted":
                report.problems.append(f"{job_id} ended {v.status} ({code})")
            continue
        out = client.outputs(v)
        if v.runner_id is not None and v.runner_id == triton_id:
            report.by_triton += 1
            want = (a + b, a - b)
        else:
            want = (a, b)
        ok = np.allclose(out["OUTPUT0"], want[0], rtol=1e-6) and np.allclose(
            out["OUTPUT1"], want[1], rtol=1e-6
        )
        if not ok:
            report.problems.append(f"{job_id}: outputs are not its own")
    # Exactly once, from the store itself: every job here ended from RUNNING (no cancels),
    # so each must carry exactly one commit record.
    stored = store.commit_records()
    report.commits_stored = Counter(stored.get(i, 0) for i in ids)
    wrong = [f"{i}={stored.get(i, 0)}" for i in ids if stored.get(i, 0) != 1]
    if wrong:
        report.problems.append(f"{len(wrong)} jobs without exactly one commit, e.g. {wrong[:3]}")
    if store.kind == "sqlite":
        leftover = store.leftover_indexes()
        if any(leftover.values()):
            report.problems.append(f"index items outlived their jobs: {leftover}")
    accepted = 0
    for r in runners:
        with contextlib.suppress(Exception):
            accepted += int(r.status()["counters"]["succeeded"])
    if accepted > cfg.jobs:
        report.problems.append(f"runners saw {accepted} accepted commits for {cfg.jobs} jobs")


def _check_commits(report: SoakReport, logs: list[Path], ids: list[str]) -> None:
    per_job: Counter[str] = Counter()
    for path in logs:
        for m in COMMITTED.finditer(path.read_text(errors="replace")):
            per_job[m.group(1)] += 1
    report.commits_logged = Counter(per_job[i] for i in ids)
    twice = [i for i in ids if per_job[i] > 1]
    if twice:
        report.problems.append(f"{len(twice)} jobs committed more than once, e.g. {twice[:3]}")


def table(reports: list[SoakReport]) -> str:
    """The reports as a plain-text table."""
    head = (
        "store", "jobs", "s", "jobs/s", "runner kills", "cp kills", "pauses",
        "submit retries", "max probe s", "statuses", "attempts histogram",
        "commits per job (store)", "problems",
    )  # fmt: skip
    rows = [
        (
            r.store,
            str(r.jobs),
            f"{r.seconds:.0f}",
            f"{r.jobs_per_s:.1f}",
            str(r.runner_kills),
            str(r.cp_kills),
            str(r.pauses),
            str(r.submit_retries),
            f"{r.max_probe_s:.1f}",
            " ".join(f"{k}={v}" for k, v in sorted(r.statuses.items())),
            " ".join(f"{k}:{v}" for k, v in sorted(r.attempts.items())),
            " ".join(f"{k}:{v}" for k, v in sorted(r.commits_stored.items())),
            str(len(r.problems)),
        )
        for r in reports
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
