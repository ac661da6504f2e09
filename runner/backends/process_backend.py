"""Triton as a local ``tritonserver`` process in its own process group, stopped by pid.

The binary is ``settings.tritonserver_path`` (a path, or a name looked up on ``PATH``). In
NVIDIA's layout (``<root>/bin/tritonserver``, ``<root>/lib``, ``<root>/backends``; also the
tree scripts/triton-tree.sh lays out) the backend directory and the library path default to
``<root>/backends`` and ``<root>/lib``: the Python backend's stub does not find Triton's
libraries without ``LD_LIBRARY_PATH``.

The server runs in a new session (its own process group, so its Python-backend stubs stop
with it) and outside the runner's: a runner that dies leaves it running. Its pid and command
line are kept in ``<state_dir>/tritonserver.pid``; a restarted runner adopts a server that
still runs with the same command line (like the docker backend adopts its container) and
stops one with a different command line before it starts its own. Output goes to
``triton.log`` in the state directory (``triton_log_file``); the runner follows that file
and stamps each line as it arrives (``FileFollower``), so per-job logs get what the model
printed while the job ran (``output_between``), adopted servers included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from runner.backends.base import BackendError
from runner.backends.common import FileFollower, append_log, wait_ready
from runner.backends.container_spec import triton_flags
from runner.settings import RunnerSettings
from runner.triton_client import TritonClient

log = logging.getLogger(__name__)
PID_FILE = "tritonserver.pid"


def _cmdline(pid: int) -> list[str] | None:
    """The command line of a live (not zombie) process, None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if stat[stat.rfind(")") + 2 :].startswith(("Z", "X")):  # zombie or dead
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _kill_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pid`` leads (the server and its backend stubs); just the
    process when it leads none."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _port_answers(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ProcessBackend:
    """``TritonBackend`` running ``settings.tritonserver_path``; output goes to triton.log."""

    kind = "process"

    def __init__(self, settings: RunnerSettings, engine: TritonClient, repository_key: str) -> None:
        self._settings = settings
        self.engine = engine
        self._repository_key = repository_key
        self._proc: subprocess.Popen[bytes] | None = None  # a server this runner started
        self._pid: int | None = None  # the server this runner manages (started or adopted)
        self._cmd: list[str] = []
        self._log: IO[bytes] | None = None
        self.adopted = False
        self.restarts = 0
        self._output = FileFollower(settings.triton_log_file)

    # ------------------------------------------------------------------ the command
    def binary(self) -> Path:
        """The tritonserver binary, resolved (BackendError when there is none)."""
        configured = self._settings.tritonserver_path
        found = shutil.which(os.path.expanduser(configured))
        if found is None:
            raise BackendError(
                f"tritonserver binary {configured!r} not found or not executable "
                "(set GPUFLEET_RUNNER_TRITONSERVER_PATH)"
            )
        return Path(found).resolve()

    def backend_directory(self, binary: Path) -> str | None:
        """``backend_directory``, else ``<root>/backends`` when it exists."""
        if self._settings.backend_directory:
            return self._settings.backend_directory
        derived = binary.parent.parent / "backends"
        return str(derived) if derived.is_dir() else None

    def library_path(self, binary: Path) -> list[str]:
        """``triton_library_path``, else ``<root>/lib`` when it exists."""
        if self._settings.triton_library_path is not None:
            return [str(Path(p).expanduser()) for p in self._settings.triton_library_path]
        derived = binary.parent.parent / "lib"
        return [str(derived)] if derived.is_dir() else []

    def command(self) -> list[str]:
        """The tritonserver command line."""
        binary = self.binary()
        repo = str(Path(self._settings.model_repository).expanduser().resolve())
        settings = self._settings.model_copy(
            update={"backend_directory": self.backend_directory(binary)}
        )
        return [str(binary), *triton_flags(settings, repo, self._repository_key)]

    def environment(self) -> dict[str, str]:
        """The runner's environment with the library path first on ``LD_LIBRARY_PATH``."""
        env = dict(os.environ)
        dirs = self.library_path(self.binary())
        old = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        if dirs or old:
            env["LD_LIBRARY_PATH"] = ":".join([*dirs, *(p for p in old if p not in dirs)])
        return env

    # ------------------------------------------------------------------ pid file
    @property
    def _pid_file(self) -> Path:
        return self._settings.state_dir / PID_FILE

    def _write_pid_file(self, pid: int, cmd: list[str]) -> None:
        self._pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "command": cmd}))
        tmp.replace(self._pid_file)

    def _read_pid_file(self) -> tuple[int, list[str]] | None:
        try:
            data = json.loads(self._pid_file.read_text())
            return int(data["pid"]), [str(a) for a in data["command"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _clear_pid_file(self) -> None:
        with contextlib.suppress(OSError):
            self._pid_file.unlink()

    # ------------------------------------------------------------------ lifecycle (sync)
    def _start_sync(self) -> None:
        cmd = self.command()
        self.adopted = False
        previous = self._read_pid_file()
        if previous is not None:
            pid, recorded = previous
            if _cmdline(pid) == recorded:  # still the server a runner started
                if recorded == cmd and self._pid is None:
                    log.info("adopting running tritonserver (pid %d)", pid)
                    self._pid, self._cmd, self.adopted = pid, cmd, True
                    return
                log.info("stopping tritonserver pid %d (command line changed)", pid)
                self._signal_and_wait(pid, None, "replaced: command line changed")
            self._clear_pid_file()
        self._spawn(cmd)

    def _spawn(self, cmd: list[str]) -> None:
        busy = [
            p
            for p in (
                self._settings.triton_http_port,
                self._settings.triton_grpc_port,
                self._settings.triton_metrics_port,
            )
            if _port_answers(p)
        ]
        if busy:
            raise BackendError(
                f"cannot start tritonserver: 127.0.0.1 port(s) {busy} already in use "
                "(another Triton? set triton_http_port/triton_grpc_port/triton_metrics_port)"
            )
        path = self._settings.triton_log_file
        append_log(path, "tritonserver starting", " ".join(cmd))
        self._log = path.open("ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,  # own process group: stopped as a whole, by pid
            )
        except OSError as exc:
            self._close_log()
            raise BackendError(f"cannot start {cmd[0]}: {exc}") from exc
        self._pid, self._cmd = self._proc.pid, cmd
        self._write_pid_file(self._proc.pid, cmd)
        log.info("started tritonserver (pid %d)", self._proc.pid)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _alive_sync(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self._pid is not None:  # adopted: not our child, /proc tells
            return _cmdline(self._pid) == self._cmd
        return False

    def _signal_and_wait(
        self, pid: int, proc: subprocess.Popen[bytes] | None, why: str
    ) -> int | None:
        """SIGTERM the process group of ``pid``, SIGKILL it after the exit timeout; the exit
        code when ``proc`` (our child) is given."""
        cmd = _cmdline(pid) if proc is None else None

        def gone() -> bool:
            if proc is not None:
                return proc.poll() is not None
            return cmd is None or _cmdline(pid) != cmd

        if not gone():
            _kill_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + self._settings.triton_exit_timeout_s + 5
            while not gone() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not gone():
                log.warning("tritonserver pid %d ignored SIGTERM: SIGKILL", pid)
                _kill_group(pid, signal.SIGKILL)
                if proc is not None:
                    proc.wait(timeout=30)
        code = proc.poll() if proc is not None else None
        append_log(
            self._settings.triton_log_file, f"tritonserver pid {pid}: {why}", f"exit code {code}"
        )
        return code

    def _terminate(self, why: str) -> None:
        proc, pid = self._proc, self._pid
        self._proc, self._pid, self._cmd = None, None, []
        if pid is not None:
            self._signal_and_wait(pid, proc, why)
        self._close_log()
        self._clear_pid_file()

    def _release(self) -> None:
        """Leave the server running for the next runner to adopt."""
        self._proc, self._pid, self._cmd = None, None, []
        self._close_log()

    def _tail(self) -> str:
        try:
            lines = self._settings.triton_log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-60:])

    # ------------------------------------------------------------------ TritonBackend
    async def start(self) -> None:
        self._output.start()  # before the server: its first lines are followed too
        await asyncio.to_thread(self._start_sync)

        async def logs() -> str:
            return await asyncio.to_thread(self._tail)

        await wait_ready(self.engine, self.alive, self._settings.triton_ready_timeout_s, logs)

    async def alive(self) -> bool:
        return await asyncio.to_thread(self._alive_sync)

    async def restart(self) -> None:
        self.restarts += 1
        await asyncio.to_thread(self._terminate, f"restart #{self.restarts}")
        await self.engine.reset()
        await self.start()
        # A channel opened while Triton was down sits in reconnect backoff: start afresh.
        await self.engine.reset()

    async def stop(self) -> None:
        if self._settings.keep_triton_on_exit:
            await asyncio.to_thread(self._release)
        else:
            await asyncio.to_thread(self._terminate, "runner stopped")
        self._output.stop()
        await self.engine.aclose()

    async def output_between(self, start: float, end: float) -> str:
        """Triton's output (what models printed, Triton's own lines) that arrived in
        ``triton.log`` between two wall-clock times, each line with its time (per-job logs).
        A stat (and a read when something was appended): no Docker-like API call."""
        return self._output.between(start, end)

    @property
    def pid(self) -> int | None:
        return self._pid

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "binary": self._cmd[0] if self._cmd else self._settings.tritonserver_path,
            "pid": self._pid,
            "adopted": self.adopted,
            "restarts": self.restarts,
            "protocol": self.engine.protocol,
        }
