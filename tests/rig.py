"""Real-component test rig: a Docker engine and the CPU Triton image.

Used by the session fixtures in tests/e2e/conftest.py; importable from any test as
``from tests import rig``. Nothing here imitates Docker or Triton: a reachable engine is
reused (``DOCKER_HOST``, else the default socket), otherwise a private ``dockerd`` is
started with ``scripts/dockerd.sh`` and stopped by its pid; the image
``gpufleet/tritonserver-cpu:2.51`` is built by ``scripts/build-triton-cpu-image.sh`` when
missing. Containers use the host network and Triton binds 127.0.0.1 only.
``ensure_tritonserver_tree`` lays out the same Triton on the host (no Docker) for the
runner's process backend (scripts/triton-tree.sh).

Image layout (same as NVIDIA's tritonserver images):
  /opt/tritonserver/bin/tritonserver, /opt/tritonserver/lib (LD_LIBRARY_PATH),
  /opt/tritonserver/backends/python, ENTRYPOINT
  ["/opt/tritonserver/bin/tritonserver", "--backend-directory=/opt/tritonserver/backends"].
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
TRITON_CPU_IMAGE = os.environ.get("TRITON_CPU_IMAGE", "gpufleet/tritonserver-cpu:2.51")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Where Triton lives inside the image (and in NVIDIA's images).
TRITON_BIN = "/opt/tritonserver/bin/tritonserver"
TRITON_BACKENDS = "/opt/tritonserver/backends"
CONTAINER_MODEL_REPOSITORY = "/models"
# Label on every container the rig starts, for finding leftovers.
RIG_LABEL = "gpufleet.test-rig"

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin


class RigError(RuntimeError):
    """The rig could not provide a real component; the message says why."""


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """GET an http:// URL: (status, body)."""
    if not url.startswith("http://"):
        raise ValueError(f"not an http:// URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http only)
        return int(resp.status), bytes(resp.read())


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_client(docker_host: str, timeout: int = 60) -> Any:
    """A docker SDK client for ``docker_host`` (caller closes it)."""
    import docker

    return docker.DockerClient(base_url=docker_host, timeout=timeout)


def engine_reachable(docker_host: str, timeout: int = 5) -> bool:
    """True when a Docker engine answers at ``docker_host``."""
    if docker_host.startswith("unix://") and not Path(docker_host[len("unix://") :]).exists():
        return False
    try:
        client = docker_client(docker_host, timeout=timeout)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _run_script(args: Sequence[str], env: dict[str, str], timeout: float) -> str:
    try:
        proc = subprocess.run(
            ["bash", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RigError(f"{' '.join(args)} timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()[-6000:]
        raise RigError(f"{' '.join(args)} exited with {proc.returncode}:\n{output}")
    return proc.stdout


def _engine_dirs(tmpdir: Path) -> Iterator[tuple[Path, bool]]:
    """Candidate private-engine directories, as (dir, persistent).

    The persistent one (kept between runs, so the built image survives) comes first;
    a second session that finds it taken gets a throw-away directory.
    """
    explicit = os.environ.get("GPUFLEET_DOCKERD_DIR")
    if explicit:
        yield Path(explicit), True
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    yield Path("/tmp") / f"gpufleet-dockerd-{os.getuid()}-{worker}", True
    short = Path(tmpdir) / "dockerd"
    if len(str(short / "docker.sock")) < _SOCKET_PATH_MAX:
        yield short, False
    else:
        yield Path(tempfile.mkdtemp(prefix="gfd-", dir="/tmp")), False


class _EngineStopper:
    """Stops a private dockerd by its pid (scripts/dockerd.sh stop); safe to call twice."""

    def __init__(self, engine_dir: Path, lock: Any, persistent: bool, env: dict[str, str]):
        self.engine_dir, self.lock, self.persistent, self.env = engine_dir, lock, persistent, env
        self.stopped = False

    def __call__(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            _run_script([str(SCRIPTS / "dockerd.sh"), "stop", str(self.engine_dir)], self.env, 90)
        finally:
            self.lock.close()
        if not self.persistent:
            shutil.rmtree(self.engine_dir, ignore_errors=True)


def ensure_docker_engine(tmpdir: Path | str) -> tuple[str, Callable[[], None]]:
    """A reachable Docker engine as ``(docker_host, stop)``.

    Reuses ``DOCKER_HOST`` or the default socket when an engine answers there (``stop``
    then does nothing). Otherwise starts a private dockerd (root needed) with
    ``scripts/dockerd.sh``; ``stop`` stops it by its pid. Its directory is
    ``$GPUFLEET_DOCKERD_DIR`` or ``/tmp/gpufleet-dockerd-<uid>-<xdist worker>``, which keeps
    images between runs; one session at a time holds it (a lock), others use ``tmpdir``.
    Raises RigError with the reason when no engine can be had.
    """
    candidates = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else []
    candidates.append(DEFAULT_DOCKER_HOST)
    for host in candidates:
        if engine_reachable(host):
            return host, lambda: None

    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        raise RigError(
            "no reachable Docker engine (tried "
            + ", ".join(candidates)
            + ") and dockerd/docker are not installed: run `make rig-deps` "
            "(scripts/install-rig-deps.sh)"
        )
    if os.geteuid() != 0:
        raise RigError(
            "no reachable Docker engine (tried " + ", ".join(candidates) + ") and a private "
            "dockerd needs root; set DOCKER_HOST to an engine you can use"
        )

    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    for engine_dir, persistent in _engine_dirs(Path(tmpdir)):
        engine_dir.mkdir(parents=True, exist_ok=True)
        lock = (engine_dir / "session.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue  # another test session owns this engine
        try:
            out = _run_script([str(SCRIPTS / "dockerd.sh"), "start", str(engine_dir)], env, 120)
        except RigError:
            lock.close()
            raise
        host = out.strip().splitlines()[-1]
        return host, _EngineStopper(engine_dir, lock, persistent, env)
    raise RigError("every private dockerd directory is in use by other test sessions")


def image_present(docker_host: str, image: str = TRITON_CPU_IMAGE) -> bool:
    import docker

    client = docker_client(docker_host)
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def ensure_triton_image(docker_host: str, image: str = TRITON_CPU_IMAGE) -> str:
    """The CPU Triton image on ``docker_host``, built offline when missing (~30 s cold)."""
    if image_present(docker_host, image):
        return image
    env = dict(os.environ, DOCKER_HOST=docker_host, TRITON_CPU_IMAGE=image)
    _run_script([str(SCRIPTS / "build-triton-cpu-image.sh")], env, 900)
    if not image_present(docker_host, image):
        raise RigError(f"build-triton-cpu-image.sh succeeded but {image} is not on {docker_host}")
    return image


# The host-side Triton tree of the runner's process backend (scripts/triton-tree.sh).
TRITON_TREE_STUB_PYTHON = "3.11"  # the Python backend's stub embeds this system Python
SYSTEM_PYTHON = Path(f"/usr/bin/python{TRITON_TREE_STUB_PYTHON}")


def ensure_tritonserver_tree(dest: Path | str | None = None) -> Path:
    """A real Triton 2.51 on the host, in NVIDIA's layout: ``<tree>/bin/tritonserver``,
    ``<tree>/lib``, ``<tree>/backends/python`` (with the Python 3.11 stub).

    Made by scripts/triton-tree.sh from the nvidia-pytriton wheel (the same steps and cache,
    .cache/rig/, as the CPU image) and reused when complete. The runner's process backend
    derives ``--backend-directory`` (``<tree>/backends``) and ``LD_LIBRARY_PATH``
    (``<tree>/lib``) from the binary's location. The stub embeds the system Python 3.11,
    which needs numpy (Debian python3-numpy, installed by ``make rig-deps``): RigError when
    it is missing.
    """
    if not SYSTEM_PYTHON.exists():
        raise RigError(
            f"{SYSTEM_PYTHON} not found: the Triton Python backend stub embeds the system "
            f"Python {TRITON_TREE_STUB_PYTHON} (Debian python{TRITON_TREE_STUB_PYTHON}, "
            f"libpython{TRITON_TREE_STUB_PYTHON})"
        )
    check = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import numpy"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RigError(
            f"numpy is missing from {SYSTEM_PYTHON} (the Python backend needs it): run "
            "`make rig-deps` (Debian python3-numpy)"
        )
    env = dict(os.environ, STUB_PY=TRITON_TREE_STUB_PYTHON)
    env.setdefault("PYTHON", sys.executable)  # has pip for the one-time wheel download
    args = [str(SCRIPTS / "triton-tree.sh")] + ([str(dest)] if dest is not None else [])
    out = _run_script(args, env, 900)
    tree = Path(out.strip().splitlines()[-1])
    if not (tree / "bin" / "tritonserver").is_file():
        raise RigError(f"triton-tree.sh printed {tree}, which has no bin/tritonserver")
    return tree


@dataclass
class TritonContainer:
    """A running Triton container on the host network, bound to 127.0.0.1."""

    container: Any
    http_port: int
    grpc_port: int
    metrics_port: int
    args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        """host:port, as tritonclient.http wants it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def logs(self, tail: int = 200) -> str:
        try:
            return str(self.container.logs(tail=tail).decode(errors="replace"))
        except Exception as exc:  # container already gone
            return f"<no logs: {exc}>"

    def metrics(self) -> str:
        return http_get(self.metrics_url)[1].decode()


def triton_args(
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    model_repository: str = CONTAINER_MODEL_REPOSITORY,
    load_models: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """tritonserver arguments (after the image's entrypoint) for explicit model control."""
    args = [
        f"--model-repository={model_repository}",
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--exit-timeout-secs=5",
    ]
    args += [f"--load-model={m}" for m in load_models]
    args += list(extra_args)
    return args


def wait_http_ready(
    url: str, timeout: float, alive: Callable[[], bool] | None = None, interval: float = 0.2
) -> None:
    """Poll ``url`` until it answers 200; RigError on timeout or when ``alive()`` is False."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            status, _ = http_get(url, timeout=2)
            if status == 200:
                return
            last = status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        if alive is not None and not alive():
            raise RigError(f"server exited before {url} was ready (last: {last})")
        if time.monotonic() > deadline:
            raise RigError(f"{url} not ready after {timeout:.0f} s (last: {last})")
        time.sleep(interval)


@contextlib.contextmanager
def triton_container(
    docker_host: str,
    model_repo_dir: Path | str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    *,
    image: str = TRITON_CPU_IMAGE,
    load_models: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    read_only: bool = True,
    startup_timeout: float = 60,
    shm_size: str = "256m",
) -> Iterator[TritonContainer]:
    """Run a raw Triton from ``image`` serving ``model_repo_dir`` (mounted at /models).

    Explicit model control: load models with ``load_models`` or tritonclient's repository
    API. Yields once the server is ready; the container is removed on exit.
    """
    client = docker_client(docker_host)
    args = triton_args(
        http_port, grpc_port, metrics_port, load_models=load_models, extra_args=extra_args
    )
    container = None
    try:
        container = client.containers.run(
            image,
            command=args,
            detach=True,
            name=f"gf-rig-triton-{uuid.uuid4().hex[:8]}",
            network_mode="host",  # never Docker's bridge: only loopback is a target
            shm_size=shm_size,  # the Python backend talks to its stubs over /dev/shm
            volumes={
                str(Path(model_repo_dir).resolve()): {
                    "bind": CONTAINER_MODEL_REPOSITORY,
                    "mode": "ro" if read_only else "rw",
                }
            },
            labels={RIG_LABEL: "1"},
        )
        handle = TritonContainer(container, http_port, grpc_port, metrics_port, args)

        def alive() -> bool:
            container.reload()
            return bool(container.status in ("created", "running"))

        try:
            wait_http_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", startup_timeout, alive)
        except RigError as exc:
            raise RigError(f"{exc}\n--- tritonserver log ---\n{handle.logs()}") from exc
        yield handle
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        client.close()
