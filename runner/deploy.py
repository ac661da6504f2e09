"""Deploying the runner as a container: the ``docker run`` arguments and the healthcheck.

Standard library only, so ``scripts/deploy-runner.sh`` can run it with any ``python3`` on a
GPU host before anything is installed, and the image's HEALTHCHECK costs no imports.

    python3 -m runner.deploy args --image IMG --control-plane-url URL ...   # NUL-separated
    python3 -m runner.deploy healthcheck [--port N]                           # exit 0 = ok

:func:`docker_run_args` is a pure function of :class:`RunnerDeployment` (unit-tested in
tests/runner/test_runner_deploy.py). What it renders, and why:

- ``--network host``: Triton (started by the runner on the same engine) listens on
  127.0.0.1 of the host, and so does the runner's status port.
- the engine's socket mounted at ``/var/run/docker.sock`` and
  ``GPUFLEET_RUNNER_DOCKER_HOST`` pointing at it: the runner starts Triton as a *sibling*
  container on the host's engine, not inside its own;
- ``--group-add <socket gid>``: the image runs as a non-root user, which may use the socket
  only through its group;
- ``--gpus``: NVML inside the runner container sees the GPUs, reads them for heartbeats and
  gives their UUIDs to the Triton container;
- one data directory mounted at the *same* path on the host and in the container, holding
  the model repository (``<data>/models``, ``GPUFLEET_RUNNER_MODEL_REPOSITORY``) and the
  state directory (``<data>/runner``: credentials, Triton repository key, Triton log, the
  content-addressed download cache). The runner writes models there and asks the host's
  engine to bind-mount ``<data>/models`` into Triton; the engine resolves bind mounts on the
  host, hence the same path. One mount, so the cache and the repository share a file
  system *and* a mount point: model files are hard links, not copies. A recreated container
  keeps the runner's identity;
- ``--restart unless-stopped`` and a stop timeout longer than the runner's drain;
- the join token passed by name only (``-e GPUFLEET_RUNNER_JOIN_TOKEN``): docker takes its
  value from its own environment, so it appears on no command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

ENV_PREFIX = "GPUFLEET_RUNNER_"
JOIN_TOKEN_ENV = ENV_PREFIX + "JOIN_TOKEN"
CONTAINER_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_IMAGE = "gpufleet/runner:0.1.0"
DEFAULT_CONTAINER_NAME = "gpufleet-runner"
DEFAULT_DATA_DIR = "/var/lib/gpufleet"
MODELS_SUBDIR = "models"  # <data>/models: Triton's model repository
STATE_SUBDIR = "runner"  # <data>/runner: the runner's state directory
DEFAULT_STATUS_PORT = 8765
# The runner drains for lease_grace_s (default 30 s) on SIGTERM, then stops Triton
# (--exit-timeout-secs, default 10 s): docker's own default of 10 s would cut both short.
DEFAULT_STOP_TIMEOUT_S = 60
# Set by the deployment itself; not accepted as pass-through environment.
_RENDERED_ENV = frozenset(
    {
        ENV_PREFIX + "CONTROL_PLANE_URL",
        JOIN_TOKEN_ENV,
        ENV_PREFIX + "MODEL_REPOSITORY",
        ENV_PREFIX + "STATE_DIR",
        ENV_PREFIX + "DOCKER_HOST",
        ENV_PREFIX + "STATUS_PORT",
        ENV_PREFIX + "BACKEND",
        ENV_PREFIX + "NAME",
        ENV_PREFIX + "TRITON_IMAGE",
        ENV_PREFIX + "CONFIG_FILE",
    }
)


class DeployError(ValueError):
    """A deployment setting that cannot work; the message says which and why."""


@dataclass(frozen=True)
class RunnerDeployment:
    """Everything ``docker run`` of the runner container depends on."""

    image: str
    control_plane_url: str
    data_dir: str = DEFAULT_DATA_DIR
    container_name: str = DEFAULT_CONTAINER_NAME
    # "all", "none" (CPU host: no device request) or a comma list of indexes/UUIDs.
    gpus: str = "all"
    docker_socket: str = CONTAINER_DOCKER_SOCKET
    # Group of the socket on the host; None: run as root (socket not group-accessible).
    socket_gid: int | None = None
    status_port: int = DEFAULT_STATUS_PORT
    runner_name: str | None = None  # unset: the host name (host network)
    triton_image: str | None = None  # unset: the runner's default (NVIDIA's image)
    pass_join_token: bool = True
    restart: str = "unless-stopped"
    stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S
    extra_env: Mapping[str, str] = field(default_factory=dict)


def _absolute(path: str, what: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute():
        raise DeployError(f"{what} must be an absolute path (got {path!r})")
    text = str(p)
    if ":" in text or "," in text:
        raise DeployError(f"{what} may not contain ':' or ',' (got {path!r})")
    return text


def model_repository(data_dir: str) -> str:
    """The runner's model repository inside the data directory (same path on both sides)."""
    return str(PurePosixPath(data_dir) / MODELS_SUBDIR)


def state_dir(data_dir: str) -> str:
    """The runner's state directory inside the data directory."""
    return str(PurePosixPath(data_dir) / STATE_SUBDIR)


def gpus_flag(gpus: str) -> list[str]:
    """``--gpus`` arguments: ``all``, none at all for ``none``, or ``"device=0,1"``."""
    value = gpus.strip()
    if value in ("", "none"):
        return []
    if value == "all":
        return ["--gpus", "all"]
    if value.isdigit():  # a bare count: --gpus 2 means "two GPUs"
        return ["--gpus", value]
    devices = [d.strip() for d in value.removeprefix("device=").split(",") if d.strip()]
    if not devices:
        raise DeployError(f"no GPU in {gpus!r}")
    # The double quotes are part of the value: docker's parser reads it as CSV.
    return ["--gpus", '"device=' + ",".join(devices) + '"']


def docker_run_args(dep: RunnerDeployment) -> list[str]:
    """The arguments after ``docker`` that start the runner container (``run -d ... IMAGE``)."""
    data = _absolute(dep.data_dir, "data directory")
    if data == "/":
        raise DeployError("the data directory cannot be /")
    socket = _absolute(dep.docker_socket, "Docker socket")
    if not dep.control_plane_url.startswith(("http://", "https://")):
        raise DeployError(f"control plane URL must be http(s):// (got {dep.control_plane_url!r})")
    if not 0 < dep.status_port < 65536:
        raise DeployError(f"status port out of range: {dep.status_port}")
    for key in dep.extra_env:
        if not key.startswith(ENV_PREFIX):
            raise DeployError(f"{key}: only {ENV_PREFIX}* settings may be passed")
        if key in _RENDERED_ENV:
            raise DeployError(f"{key} is set by the deployment itself")

    args = [
        "run",
        "--detach",
        "--name",
        dep.container_name,
        "--restart",
        dep.restart,
        "--network",
        "host",
        "--stop-timeout",
        str(dep.stop_timeout_s),
        "--volume",
        f"{socket}:{CONTAINER_DOCKER_SOCKET}",
        "--volume",
        f"{data}:{data}",
    ]
    if dep.socket_gid is None:
        args += ["--user", "0:0"]
    else:
        args += ["--group-add", str(dep.socket_gid)]
    args += gpus_flag(dep.gpus)
    env: list[tuple[str, str | None]] = [
        (ENV_PREFIX + "CONTROL_PLANE_URL", dep.control_plane_url),
        (ENV_PREFIX + "BACKEND", "docker"),
        (ENV_PREFIX + "DOCKER_HOST", f"unix://{CONTAINER_DOCKER_SOCKET}"),
        (ENV_PREFIX + "MODEL_REPOSITORY", model_repository(data)),
        (ENV_PREFIX + "STATE_DIR", state_dir(data)),
        (ENV_PREFIX + "STATUS_PORT", str(dep.status_port)),
    ]
    if dep.runner_name:
        env.append((ENV_PREFIX + "NAME", dep.runner_name))
    if dep.triton_image:
        env.append((ENV_PREFIX + "TRITON_IMAGE", dep.triton_image))
    if dep.pass_join_token:
        env.append((JOIN_TOKEN_ENV, None))  # value from docker's own environment
    env += sorted(dep.extra_env.items())
    for key, value in env:
        args += ["--env", key if value is None else f"{key}={value}"]
    args.append(dep.image)
    return args


def passthrough_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``GPUFLEET_RUNNER_*`` variables of ``environ`` that the deployment does not set."""
    return {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX) and k not in _RENDERED_ENV}


# --------------------------------------------------------------------------- healthcheck


def healthcheck(port: int, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Asks the runner's status port: healthy when it answers and reports ``health: ok``
    (registered or registering, Triton ready). ``degraded`` (Triton down or restarting)
    and ``stopping`` are unhealthy."""
    url = f"http://127.0.0.1:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"no runner answering at {url}: {exc}"
    health = data.get("health")
    detail = f"health={health} triton={data.get('triton', {}).get('ready')}"
    if data.get("last_error"):
        detail += f" last_error={data['last_error']}"
    return health == "ok", detail


# --------------------------------------------------------------------------- CLI


def _parse_env(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise DeployError(f"--env wants KEY=VALUE (got {item!r})")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("args", help="print the docker run arguments, NUL-separated")
    a.add_argument("--image", default=DEFAULT_IMAGE)
    a.add_argument("--control-plane-url", required=True)
    a.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="models/ and runner/ in it")
    a.add_argument("--container-name", default=DEFAULT_CONTAINER_NAME)
    a.add_argument("--gpus", default="all", help="all | none | 0,1 | GPU-uuid,...")
    a.add_argument("--docker-socket", default=CONTAINER_DOCKER_SOCKET)
    a.add_argument("--socket-gid", type=int, default=None, help="unset: run as root")
    a.add_argument("--status-port", type=int, default=DEFAULT_STATUS_PORT)
    a.add_argument("--runner-name", default=None)
    a.add_argument("--triton-image", default=None)
    a.add_argument("--no-join-token", action="store_true", help="already registered")
    a.add_argument("--env", action="append", default=[], help="GPUFLEET_RUNNER_KEY=VALUE")
    a.add_argument(
        "--pass-environment",
        action="store_true",
        help="also pass this process's other GPUFLEET_RUNNER_* variables",
    )
    h = sub.add_parser("healthcheck", help="exit 0 when the local runner reports health ok")
    h.add_argument("--port", type=int, default=None, help="default: GPUFLEET_RUNNER_STATUS_PORT")
    h.add_argument("--timeout", type=float, default=5.0)
    ns = parser.parse_args(argv)

    if ns.command == "healthcheck":
        port = ns.port or int(os.environ.get(ENV_PREFIX + "STATUS_PORT", DEFAULT_STATUS_PORT))
        ok, detail = healthcheck(port, ns.timeout)
        print(("healthy: " if ok else "unhealthy: ") + detail)
        return 0 if ok else 1

    try:
        extra = passthrough_env(os.environ) if ns.pass_environment else {}
        extra.update(_parse_env(ns.env))
        dep = RunnerDeployment(
            image=ns.image,
            control_plane_url=ns.control_plane_url,
            data_dir=ns.data_dir,
            container_name=ns.container_name,
            gpus=ns.gpus,
            docker_socket=ns.docker_socket,
            socket_gid=ns.socket_gid,
            status_port=ns.status_port,
            runner_name=ns.runner_name,
            triton_image=ns.triton_image,
            pass_join_token=not ns.no_join_token,
            extra_env=extra,
        )
        args = docker_run_args(dep)
    except DeployError as exc:
        print(f"runner.deploy: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write("\0".join(args) + "\0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
