"""The Triton container's ``docker run`` spec, built from settings by pure functions.

Triton listens on 127.0.0.1 only (host network: nothing is published), runs with explicit
model control and a model-repository API restricted by a header only the runner knows.
The spec hash (a label) lets a restarted runner adopt its container only when the spec is
unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.settings import RunnerSettings

CONTAINER_MODEL_REPOSITORY = "/models"
REPOSITORY_KEY_HEADER = "gpufleet-repository-key"
LABEL_RUNNER = "gpufleet.runner"
LABEL_ROLE = "gpufleet.role"
LABEL_SPEC = "gpufleet.spec"
ROLE_TRITON = "triton"
# NVIDIA's recommendation for Triton containers (--ulimit memlock=-1 --ulimit stack=67108864).
ULIMITS: tuple[tuple[str, int, int], ...] = (("memlock", -1, -1), ("stack", 67108864, 67108864))


def triton_flags(settings: RunnerSettings, model_repository: str, repository_key: str) -> list[str]:
    """tritonserver arguments shared by the docker and process backends."""
    flags = [
        f"--model-repository={model_repository}",
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1",
        f"--http-port={settings.triton_http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={settings.triton_grpc_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={settings.triton_metrics_port}",
        f"--http-restricted-api=model-repository:{REPOSITORY_KEY_HEADER}={repository_key}",
        f"--grpc-restricted-protocol=model-repository:{REPOSITORY_KEY_HEADER}={repository_key}",
        f"--exit-timeout-secs={settings.triton_exit_timeout_s}",
    ]
    if settings.backend_directory:
        flags.append(f"--backend-directory={settings.backend_directory}")
    flags.extend(settings.triton_extra_args)
    return flags


def container_name(runner_name: str) -> str:
    """``gpufleet-triton-<runner name>`` with characters Docker refuses replaced."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", runner_name).strip(".-") or "runner"
    return f"gpufleet-triton-{safe}"[:128]


@dataclass(frozen=True)
class ContainerSpec:
    """Everything ``containers.run`` gets (see :meth:`run_kwargs`)."""

    name: str
    image: str
    command: list[str]
    entrypoint: list[str] | None
    labels: dict[str, str]
    volumes: dict[str, dict[str, str]]
    shm_size: str
    device_ids: list[str] = field(default_factory=list)
    ulimits: tuple[tuple[str, int, int], ...] = ULIMITS
    network_mode: str = "host"

    @property
    def spec_hash(self) -> str:
        """Hash of everything but the labels (which carry it)."""
        body = {k: v for k, v in asdict(self).items() if k != "labels"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def without_memlock(self) -> ContainerSpec | None:
        """The same spec without the memlock ulimit, for engines that may not raise it
        (unprivileged or nested dockerd: "error setting rlimits"); None when it has none."""
        kept = tuple(u for u in self.ulimits if u[0] != "memlock")
        return None if kept == self.ulimits else replace(self, ulimits=kept)

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``docker.DockerClient().containers.run``."""
        from docker.types import DeviceRequest, Ulimit

        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": self.command,
            "name": self.name,
            "labels": {**self.labels, LABEL_SPEC: self.spec_hash},
            "network_mode": self.network_mode,
            "shm_size": self.shm_size,
            "ulimits": [Ulimit(name=n, soft=s, hard=h) for n, s, h in self.ulimits],
            "volumes": self.volumes,
            "detach": True,
        }
        if self.entrypoint is not None:
            kwargs["entrypoint"] = self.entrypoint
        if self.device_ids:
            kwargs["device_requests"] = [
                DeviceRequest(device_ids=list(self.device_ids), capabilities=[["gpu"]])
            ]
        return kwargs


def _is_tritonserver(entrypoint: Sequence[str] | None) -> bool:
    return bool(entrypoint) and Path(entrypoint[0]).name == "tritonserver"  # type: ignore[index]


def build_container_spec(
    settings: RunnerSettings,
    *,
    repository_key: str,
    gpus: Sequence[str] = (),
    image_entrypoint: Sequence[str] | None = None,
) -> ContainerSpec:
    """The container for ``settings``.

    ``gpus``: device ids (indexes or UUIDs) to request; none → no device request (CPU).
    ``image_entrypoint``: the image's ENTRYPOINT; when it already is ``tritonserver`` (the
    CPU rig image) the command is the flags alone, else (NVIDIA's image, whose entrypoint is
    a wrapper script) it is ``tritonserver`` + flags. ``settings.triton_entrypoint``
    overrides the entrypoint (and then the command is the flags alone).
    """
    flags = triton_flags(settings, CONTAINER_MODEL_REPOSITORY, repository_key)
    entrypoint = list(settings.triton_entrypoint) if settings.triton_entrypoint else None
    if entrypoint is not None or _is_tritonserver(image_entrypoint):
        command = flags
    else:
        command = ["tritonserver", *flags]
    repo = str(Path(settings.model_repository).expanduser().resolve())
    return ContainerSpec(
        name=container_name(settings.name),
        image=settings.triton_image,
        command=command,
        entrypoint=entrypoint,
        labels={LABEL_RUNNER: settings.name, LABEL_ROLE: ROLE_TRITON},
        volumes={repo: {"bind": CONTAINER_MODEL_REPOSITORY, "mode": "ro"}},
        shm_size=settings.shm_size,
        device_ids=list(gpus),
        ulimits=tuple((name, value, value) for name, value in sorted(settings.ulimits.items())),
    )
