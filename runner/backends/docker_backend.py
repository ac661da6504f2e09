"""Triton in a Docker container, through the docker SDK (blocking calls run in threads).

The container is found again by its labels (``gpufleet.runner=<name>``,
``gpufleet.role=triton``): a restarted runner adopts a running container whose spec hash
matches and recreates it otherwise, so there is never a second one. Its logs are appended
to ``state_dir/triton.log`` whenever it is replaced or stopped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from runner.backends.base import BackendError
from runner.backends.common import append_log, wait_ready
from runner.backends.container_spec import (
    LABEL_ROLE,
    LABEL_RUNNER,
    LABEL_SPEC,
    ROLE_TRITON,
    ContainerSpec,
    build_container_spec,
)
from runner.settings import RunnerSettings
from runner.triton_client import TritonClient

log = logging.getLogger(__name__)
OUTPUT_LINES = 5000  # of Triton's output kept in memory for per-job logs
LOG_TAIL_LINES = 2000


def docker_unreachable(address: str, exc: BaseException) -> str:
    """One line: which Docker engine did not answer, and the ways out."""
    why = str(exc).split("\n", 1)[0]
    if "Permission denied" in why or "PermissionError" in why:
        why = "permission denied on the socket"
    elif len(why) > 160:
        why = why[:157] + "..."
    return (
        f"Docker at {address} does not answer ({why}): start Docker, point "
        "GPUFLEET_RUNNER_DOCKER_HOST (or DOCKER_HOST) at a running engine, add this user to "
        "the docker group for the socket, or run with --backend process (a tritonserver on "
        "PATH) or --backend mock"
    )


class DockerBackend:
    """``TritonBackend`` managing one Triton container."""

    kind = "docker"

    def __init__(
        self,
        settings: RunnerSettings,
        engine: TritonClient,
        repository_key: str,
        gpus: Sequence[str] = (),
        docker_client: Any = None,
    ) -> None:
        self._settings = settings
        self.engine = engine
        self._repository_key = repository_key
        self._gpus = list(gpus)
        self._docker = docker_client
        self._container: Any = None
        # Triton's output, followed once per container (per-job logs read it from memory:
        # a Docker API call per job cost ~40% of the runner's CPU in bench_runner)
        self._output: collections.deque[tuple[float, str]] = collections.deque(maxlen=OUTPUT_LINES)
        self._output_lock = threading.Lock()
        self._followed: Any = None
        self._spec: ContainerSpec | None = None
        self.adopted = False
        self.restarts = 0

    # ------------------------------------------------------------------ docker (threads)
    def _client(self) -> Any:
        if self._docker is None:
            import docker

            address = self._settings.docker_host or os.environ.get(
                "DOCKER_HOST", "unix:///var/run/docker.sock"
            )
            try:
                if self._settings.docker_host:
                    client = docker.DockerClient(base_url=self._settings.docker_host, timeout=60)
                else:
                    client = docker.from_env(timeout=60)
                client.ping()
            except docker.errors.DockerException as exc:
                raise BackendError(docker_unreachable(address, exc)) from None
            self._docker = client
        return self._docker

    def _ensure_image(self) -> list[str] | None:
        """Pull the image when missing; its ENTRYPOINT."""
        import docker

        client = self._client()
        image_name = self._settings.triton_image
        try:
            image = client.images.get(image_name)
        except docker.errors.ImageNotFound:
            log.info("pulling Triton image %s (this can take minutes)", image_name)
            try:
                image = client.images.pull(image_name)
            except docker.errors.APIError as exc:
                raise BackendError(
                    f"Triton image {image_name} is not present and cannot be pulled ({exc}); "
                    "pull or build it on this host (CPU hosts: `make triton-cpu-image` and "
                    "GPUFLEET_RUNNER_TRITON_IMAGE=gpufleet/tritonserver-cpu:2.51)"
                ) from exc
        entrypoint = (image.attrs.get("Config") or {}).get("Entrypoint")
        return list(entrypoint) if entrypoint else None

    def _find_own(self) -> list[Any]:
        return list(
            self._client().containers.list(
                all=True,
                filters={
                    "label": [
                        f"{LABEL_RUNNER}={self._settings.name}",
                        f"{LABEL_ROLE}={ROLE_TRITON}",
                    ]
                },
            )
        )

    def _save_logs(self, container: Any, why: str) -> None:
        try:
            text = container.logs(tail=LOG_TAIL_LINES).decode(errors="replace")
        except Exception as exc:
            text = f"<logs unavailable: {exc}>"
        append_log(self._settings.triton_log_file, f"container {container.name}: {why}", text)

    def _remove(self, container: Any, why: str) -> None:
        self._save_logs(container, why)
        try:
            container.remove(force=True)
        except Exception:
            log.warning("removing container %s failed", container.name, exc_info=True)

    def _start_sync(self) -> None:
        entrypoint = self._ensure_image()
        spec = build_container_spec(
            self._settings,
            repository_key=self._repository_key,
            gpus=self._gpus,
            image_entrypoint=entrypoint,
        )
        self._spec = spec
        self.adopted = False
        fallback = spec.without_memlock()
        # a container started with the fallback (no memlock) is the same spec on this host
        accepted = {spec.spec_hash} | ({fallback.spec_hash} if fallback else set())
        for container in self._find_own():
            same = container.labels.get(LABEL_SPEC) in accepted
            if same and container.status == "running" and self._container is None:
                log.info("adopting running Triton container %s", container.name)
                self._container = container
                self.adopted = True
                continue
            reason = "spec changed" if not same else f"status {container.status}"
            log.info("removing Triton container %s (%s)", container.name, reason)
            self._remove(container, f"replaced: {reason}")
        if self._container is None:
            log.info("starting Triton container %s from %s", spec.name, spec.image)
            try:
                self._container = self._run(spec, fallback)
            except Exception as exc:
                raise BackendError(f"cannot start the Triton container: {exc}") from exc
        self._follow(self._container)

    def _follow(self, container: Any) -> None:
        """Follow ``container``'s output in a daemon thread into ``self._output`` (each line
        with its Docker timestamp); ends with the container's log stream."""
        if container is None or container is self._followed:
            return
        self._followed = container

        def run() -> None:
            try:
                stream = container.logs(stream=True, follow=True, timestamps=True, tail=0)
                pending = b""
                for chunk in stream:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        self._keep(raw.decode(errors="replace"))
            except Exception:
                log.debug("following Triton's output of %s ended", container.name, exc_info=True)

        threading.Thread(target=run, daemon=True, name="triton-output").start()

    def _keep(self, line: str) -> None:
        stamp, _, text = line.partition(" ")  # RFC 3339 with nanoseconds, then the line
        try:
            at = datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()
        except ValueError:
            return
        with self._output_lock:
            self._output.append((at, f"{stamp[11:23]} {text}"))

    def _run(self, spec: ContainerSpec, fallback: ContainerSpec | None) -> Any:
        """``containers.run``; when the engine may not raise memlock, again without it."""
        import docker

        client = self._client()
        try:
            return client.containers.run(**spec.run_kwargs())
        except docker.errors.APIError as exc:
            if fallback is None or "rlimit" not in str(exc):
                raise
            log.warning(
                "this Docker engine cannot set the memlock ulimit (%s); starting Triton "
                "without it (set `ulimits` to silence this)",
                str(exc).strip()[-200:],
            )
        for container in self._find_own():  # the container created but never started
            self._remove(container, "could not start: memlock ulimit refused")
        self._spec = fallback
        return client.containers.run(**fallback.run_kwargs())

    def _alive_sync(self) -> bool:
        container = self._container
        if container is None:
            return False
        try:
            container.reload()
        except Exception:
            return False
        return bool(container.status in ("created", "running"))

    def _logs_sync(self) -> str:
        if self._container is None:
            return ""
        try:
            return str(self._container.logs(tail=60).decode(errors="replace"))
        except Exception as exc:
            return f"<logs unavailable: {exc}>"

    async def output_between(self, start: float, end: float) -> str:
        """Triton's output (stdout and stderr: what models printed, Triton's own lines)
        between two wall-clock times, each line with its time (per-job logs): read from the
        lines followed since the container started (the newest ``OUTPUT_LINES``), no I/O."""
        with self._output_lock:
            if not self._output or self._output[-1][0] < start:
                return ""
            return "\n".join(text for at, text in self._output if start <= at <= end)

    def _stop_sync(self, why: str) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.stop(timeout=self._settings.triton_exit_timeout_s + 5)
        except Exception:
            log.debug("stopping %s failed", container.name, exc_info=True)
        self._remove(container, why)

    # ------------------------------------------------------------------ TritonBackend
    async def start(self) -> None:
        await asyncio.to_thread(self._start_sync)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        async def alive() -> bool:
            return await asyncio.to_thread(self._alive_sync)

        async def logs() -> str:
            return await asyncio.to_thread(self._logs_sync)

        await wait_ready(self.engine, alive, self._settings.triton_ready_timeout_s, logs)

    async def alive(self) -> bool:
        return await asyncio.to_thread(self._alive_sync)

    async def restart(self) -> None:
        self.restarts += 1
        await asyncio.to_thread(self._stop_sync, f"restart #{self.restarts}")
        await self.engine.reset()
        await self.start()
        # A channel opened while Triton was down sits in reconnect backoff: start afresh.
        await self.engine.reset()

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop_sync, "runner stopped")
        await self.engine.aclose()
        if self._docker is not None:
            await asyncio.to_thread(self._docker.close)

    @property
    def container_id(self) -> str | None:
        return str(self._container.id) if self._container is not None else None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "image": self._settings.triton_image,
            "container": self._spec.name if self._spec else None,
            "container_id": self.container_id[:12] if self.container_id else None,
            "adopted": self.adopted,
            "restarts": self.restarts,
            "gpus": self._gpus,
            "protocol": self.engine.protocol,
        }
