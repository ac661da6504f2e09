"""Triton as a local ``tritonserver`` process in its own process group, stopped by pid."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import IO, Any

from runner.backends.base import BackendError
from runner.backends.common import append_log, wait_ready
from runner.backends.container_spec import triton_flags
from runner.settings import RunnerSettings
from runner.triton_client import TritonClient

log = logging.getLogger(__name__)


class ProcessBackend:
    """``TritonBackend`` running ``settings.tritonserver_path``; output goes to triton.log."""

    kind = "process"

    def __init__(self, settings: RunnerSettings, engine: TritonClient, repository_key: str) -> None:
        self._settings = settings
        self.engine = engine
        self._repository_key = repository_key
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.restarts = 0

    def command(self) -> list[str]:
        """The tritonserver command line."""
        repo = str(Path(self._settings.model_repository).expanduser().resolve())
        return [
            self._settings.tritonserver_path,
            *triton_flags(self._settings, repo, self._repository_key),
        ]

    def _spawn(self) -> None:
        binary = self._settings.tritonserver_path
        if shutil.which(binary) is None:
            raise BackendError(
                f"tritonserver binary {binary!r} not found (set GPUFLEET_RUNNER_TRITONSERVER_PATH)"
            )
        path = self._settings.triton_log_file
        append_log(path, "tritonserver started", " ".join(self.command()[:3]) + " ...")
        self._log = path.open("ab")
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stopped as a whole, by pid
            )
        except OSError as exc:
            raise BackendError(f"cannot start {binary}: {exc}") from exc
        log.info("started tritonserver (pid %d)", self._proc.pid)

    def _tail(self) -> str:
        try:
            lines = self._settings.triton_log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-60:])

    async def start(self) -> None:
        await asyncio.to_thread(self._spawn)

        async def logs() -> str:
            return self._tail()

        await wait_ready(self.engine, self.alive, self._settings.triton_ready_timeout_s, logs)

    async def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self._settings.triton_exit_timeout_s + 5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def restart(self) -> None:
        self.restarts += 1
        await asyncio.to_thread(self._terminate)
        await self.engine.reset()
        await self.start()
        # A channel opened while Triton was down sits in reconnect backoff: start afresh.
        await self.engine.reset()

    async def stop(self) -> None:
        await asyncio.to_thread(self._terminate)
        await self.engine.aclose()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "binary": self._settings.tritonserver_path,
            "pid": self._proc.pid if self._proc else None,
            "restarts": self.restarts,
            "protocol": self.engine.protocol,
        }
