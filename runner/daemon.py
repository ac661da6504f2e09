"""The runner daemon: one shutdown event, separate tracked loops (lease, heartbeat, Triton
watch), the local status server, and a drain on SIGTERM/SIGINT.

Shutdown order: stop leasing → in-flight jobs get ``lease_grace_s`` to finish (the rest
are left to lease expiry, so the control plane requeues them) → one last heartbeat →
heartbeat and watch loops stop → Triton stopped and removed (unless
``keep_triton_on_exit``) → exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import httpx
from gpufleet.tls import check_url, client_context

from runner.backends.base import TritonBackend
from runner.cache import ContentCache
from runner.channel import DispatchChannel
from runner.cp_client import ControlPlaneClient
from runner.credentials import load_or_create_secret
from runner.direct import DirectServer, TicketVerifier, stop_quietly, tls_context
from runner.gpu import GpuReader, Nvml
from runner.heartbeat import Heartbeat
from runner.identity import Identity, StartupError
from runner.joblogs import JobLogs
from runner.jobloop import JobLoop
from runner.model_download import Downloader
from runner.model_manager import ModelManager
from runner.settings import RunnerSettings
from runner.state import RunnerState
from runner.status_server import StatusServer
from runner.supervisor import Supervisor
from runner.triton_config import triton_gpu_map

log = logging.getLogger(__name__)


def build_backend(
    settings: RunnerSettings, gpus: GpuReader, docker_client: Any = None
) -> TritonBackend:
    """The backend named in ``settings`` (docker, process or mock)."""
    if settings.backend == "mock":
        from runner.backends.mock_backend import MockBackend

        return MockBackend(settings.model_repository, settings.mock_outputs, settings.mock_delay_s)
    from runner.triton_client import TritonClient

    key = load_or_create_secret(settings.state_dir / "triton-repository-key")
    engine = TritonClient(
        protocol=settings.protocol,
        http_port=settings.triton_http_port,
        grpc_port=settings.triton_grpc_port,
        metrics_port=settings.triton_metrics_port,
        repository_key=key,
        load_timeout_s=settings.model_load_timeout_s,
    )
    if settings.backend == "process":
        from runner.backends.process_backend import ProcessBackend

        return ProcessBackend(settings, engine, key)
    from runner.backends.docker_backend import DockerBackend

    detected = [g.uuid for g in gpus.read()] if settings.gpus is None else []
    device_ids = list(settings.gpus) if settings.gpus is not None else detected
    return DockerBackend(settings, engine, key, device_ids, docker_client)


class Daemon:
    """Everything one runner process runs."""

    def __init__(
        self,
        settings: RunnerSettings,
        backend: TritonBackend,
        *,
        gpus: GpuReader,
        client: ControlPlaneClient | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.gpus = gpus
        self.state = RunnerState()
        tls = settings.tls_options()
        check_url(settings.control_plane_url, tls)  # warns when verification is off
        # One context for the control plane, the dispatch channel and presigned bucket URLs.
        self.ssl_context = client_context(tls)
        self.client = client or ControlPlaneClient(
            settings.control_plane_url,
            timeout_s=settings.request_timeout_s,
            verify=self.ssl_context,
            tls_names=tls.names,
        )
        self.identity = Identity(settings, self.client, gpus.read)
        self.downloader = Downloader(
            ContentCache(settings.state_dir / "cache"),
            concurrency=settings.model_download_concurrency,
            verify=self.ssl_context,
        )
        # Host GPU index -> Triton's, known once run() has read the GPUs (docker backend).
        self._triton_gpu_map: dict[int, int] | None = None
        self.models = ModelManager(
            backend.engine,
            settings.model_repository,
            downloader=self.downloader,
            state_dir=settings.state_dir,
            read_gpus=gpus.read,
            gpu_map=lambda: self._triton_gpu_map,
            busy=self._busy_models,
        )
        self.job_logs = JobLogs() if settings.job_logs else None
        self.jobs = JobLoop(
            self.state,
            self.client,
            self.identity,
            backend.engine,
            self.models,
            verify=self.ssl_context,
            job_logs=self.job_logs,
            model_output=getattr(backend, "output_between", None) if settings.job_logs else None,
        )
        self.channel = DispatchChannel(
            self.state,
            self.identity,
            backend.engine,
            self.models,
            settings.control_plane_url,
            self.ssl_context,
            on_wake=lambda: self.heartbeat.wake(),  # a placement change: heartbeat now
        )
        if (
            settings.dispatch
            and settings.channel_jobs
            and isinstance(self.client, ControlPlaneClient)
        ):
            self.client.channel = self.channel  # lease and complete over it while open
        self.direct_grpc: Any = None  # runner.direct_grpc.DirectGrpcServer when configured
        self.direct = self._build_direct()
        info: dict[str, object] = {"backend": backend.kind}
        if settings.direct_url:  # handed out with tickets (control_plane/services/direct.py)
            info["direct_url"] = settings.direct_url
            if settings.direct_grpc_url:
                info["direct_grpc_url"] = settings.direct_grpc_url
        self.heartbeat = Heartbeat(
            self.state,
            self.client,
            self.identity,
            gpus,
            backend.engine,
            self.models,
            self.jobs,
            info,
        )
        self.supervisor = Supervisor(settings, backend, self.models, self.state)
        self.status = StatusServer(self.snapshot, settings.status_port)
        self.shutdown = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _build_direct(self) -> DirectServer | None:
        """Direct mode's endpoint (docs/direct.md), when ``direct_url`` is set."""
        s = self.settings
        if not s.direct_url:
            return None
        self._jwks_http = httpx.AsyncClient(verify=self.ssl_context, timeout=10.0)
        verifier = TicketVerifier(
            s.control_plane_url.rstrip("/") + "/v1/auth/jwks",
            lambda: self.identity.runner_id,
            s.direct_ticket_issuer,
            self._jwks_http,
            refresh_s=s.direct_jwks_refresh_s,
        )
        if s.direct_grpc_url:
            from runner.direct_grpc import DirectGrpcServer, server_credentials

            self.direct_grpc = DirectGrpcServer(
                verifier,
                f"127.0.0.1:{s.triton_grpc_port}",
                host=s.direct_host,
                port=s.direct_grpc_port,
                credentials=server_credentials(s.direct_tls_cert, s.direct_tls_key),
            )
        return DirectServer(
            verifier,
            f"http://127.0.0.1:{s.triton_http_port}",
            self.state.triton_ready.is_set,
            host=s.direct_host,
            port=s.direct_port,
            ssl_context=tls_context(s.direct_tls_cert, s.direct_tls_key),
        )

    def _busy_models(self) -> set[tuple[str, str]]:
        """(model, version) of the jobs in flight: a version is not dropped under them."""
        return {(e.job.model, e.job.model_version) for e in self.state.inflight.values()}

    def request_stop(self) -> None:
        """Begin the drain (signal handlers call this)."""
        if not self.shutdown.is_set():
            log.info("stop requested: no new leases; draining in-flight jobs")
        self.state.stopping = True
        self.shutdown.set()

    def snapshot(self) -> dict[str, Any]:
        """What ``gpufleet-runner status`` shows."""
        st = self.state
        now = time.monotonic()
        unreachable = self._control_plane_health()
        return {
            "health": "stopping"
            if st.stopping
            else ("ok" if st.triton_ready.is_set() and unreachable is None else "degraded"),
            "control_plane": unreachable or "ok",
            "name": self.settings.name,
            "runner_id": self.identity.runner_id,
            "control_plane_url": self.settings.control_plane_url,
            "uptime_s": round(time.time() - st.started_at, 1),
            "config": st.config.model_dump(),
            "triton": {"ready": st.triton_ready.is_set(), **self.backend.describe()},
            "gpus": [g.model_dump() for g in st.gpus],
            "gpus_note": self.gpus.unavailable_reason,
            "models": [m.model_dump() for m in self.models.states()],
            "jobs_in_flight": [
                {"id": j, "model": e.job.model, "running_s": round(now - e.started, 2)}
                for j, e in st.inflight.items()
            ],
            "counters": vars(st.counters),
            "dispatch": {
                "connected": self.channel.connected,
                "in_flight": st.dispatch_inflight,
                "served": self.channel.served,
                "passed_through": self.channel.passed_through,
                "job_calls": self.channel.calls_made,
            },
            "direct": None
            if self.direct is None
            else {"url": self.settings.direct_url, **vars(self.direct.counters)},
            "last_heartbeat_at": st.last_heartbeat_at,
            "last_error": st.last_error,
        }

    async def _start_status(self) -> None:
        port = self.settings.status_port
        try:
            await self.status.start()
        except OSError as exc:
            if await _runner_answers(port):
                raise StartupError(
                    f"a runner is already running here (status on :{port}; "
                    "`gpufleet-runner status`): stop it, or give this one its own "
                    "--status-port and --state-dir"
                ) from exc
            raise StartupError(
                f"the status port {port} is taken by another program ({exc.strerror}): "
                "choose another with --status-port"
            ) from exc

    def _control_plane_health(self) -> str | None:
        """Why the control plane counts as unreachable now (None: it answers)."""
        st = self.state
        limit = max(3 * st.config.heartbeat_interval_s, 15.0)
        last = st.last_heartbeat_at
        if last is not None and time.time() - last <= limit:
            return None
        if last is None and time.time() - st.started_at <= limit:
            return None  # starting
        return f"control plane {self.settings.control_plane_url} not reachable" + (
            f" ({st.last_error})" if st.last_error else ""
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    def _spawn(self, name: str, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until a stop is requested; returns the exit code."""
        if install_signals:
            self._install_signals()
        if self.job_logs is not None:
            logging.getLogger().addHandler(self.job_logs)
        if self.settings.status_enabled:
            await self._start_status()
        loops_stop = asyncio.Event()
        try:
            # a refused join token or a URL with no control plane: say so and exit non-zero
            # before Triton starts (an unreachable control plane is retried by the heartbeat)
            await self.identity.ensure(self.shutdown, first_try=True)
            if self.shutdown.is_set():
                return 0
            self.state.gpus = await asyncio.to_thread(self.gpus.read)
            if self.backend.kind == "docker":  # Triton numbers the GPUs it was given from 0
                self._triton_gpu_map = triton_gpu_map(self.settings.gpus, self.state.gpus)
            start = asyncio.ensure_future(self.supervisor.start())
            stopped = asyncio.ensure_future(self.shutdown.wait())
            await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not start.done():
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await start
                return 0
            start.result()  # BackendError → exit 1 (after the finally)
            if self.direct is not None:
                try:
                    await self.direct.start()
                    if self.direct_grpc is not None:
                        await self.direct_grpc.start()
                except (OSError, RuntimeError) as exc:
                    raise StartupError(
                        f"direct mode: port {self.settings.direct_port} (or gRPC "
                        f"{self.settings.direct_grpc_port}) on {self.settings.direct_host} "
                        f"cannot be used ({exc}): choose others with direct_port / "
                        "direct_grpc_port"
                    ) from exc
            self._spawn("heartbeat", self.heartbeat.run(loops_stop))
            self._spawn("triton-watch", self.supervisor.run(loops_stop))
            self._spawn("model-sync", self.models.run(loops_stop))
            lease = self._spawn("lease", self.jobs.run(self.shutdown))
            channel = (
                self._spawn("dispatch-channel", self.channel.run(self.shutdown))
                if self.settings.dispatch
                else None
            )
            await self.shutdown.wait()
            # the lease loop may be waiting on registration (control plane down): no wait
            # past 5 s, and no traceback for it (SIGTERM exits 0 in any state)
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(lease, 5)
            await self.jobs.drain(self.settings.lease_grace_s)
            if self.identity.runner_id is None and channel is not None:
                channel.cancel()  # never registered: nothing in flight, maybe stuck joining
            elif channel is not None:  # closes once its requests in flight are answered
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(channel, self.settings.lease_grace_s)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.heartbeat.beat_once(), 5)
            return 0
        finally:
            if self.job_logs is not None:
                logging.getLogger().removeHandler(self.job_logs)
            loops_stop.set()
            await self._stop_tasks()
            if self.direct_grpc is not None:
                with contextlib.suppress(Exception):
                    await self.direct_grpc.stop()
            if self.direct is not None:
                await stop_quietly(self.direct)
                await self._jwks_http.aclose()
            await self._stop_backend()
            await self.status.stop()
            await self.client.aclose()
            await self.downloader.aclose()
            self.gpus.close()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _stop_backend(self) -> None:
        if self.settings.keep_triton_on_exit:
            log.info("leaving Triton running for the next runner to adopt")
            await self.backend.engine.aclose()
            return
        try:
            await self.backend.stop()
        except Exception:
            log.warning("stopping Triton failed", exc_info=True)


async def _runner_answers(port: int) -> bool:
    """Whether a gpufleet runner's status server answers on ``port``."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(4096), 2)
        writer.close()
    except (TimeoutError, OSError):
        return False
    return b'"status"' in data


def build_daemon(
    settings: RunnerSettings, *, nvml: Nvml | None = None, docker_client: Any = None
) -> Daemon:
    """Composition root of one runner process."""
    gpus = GpuReader(nvml)
    backend = build_backend(settings, gpus, docker_client)
    return Daemon(settings, backend, gpus=gpus)
