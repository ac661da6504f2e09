"""The ``docker`` provider: one runner container per host on a Docker engine.

Each host is a container of the pool's ``image`` (the project's runner image) on the host
network, labelled ``gpufleet.pool=<pool>`` and ``gpufleet.host=<host id>``, started with the
runner's settings in its environment: the control plane's URL, a join token that only this
host uses (it carries the host and pool labels), the pool's region, and the runner's name.
Stopping a host is ``docker stop`` (SIGTERM: the runner drains, stops its Triton and exits)
then removing the container. A container that exited on its own is reported ``failed``.

Pool settings (``provider.settings``):

- ``image`` (required): the runner image, e.g. ``gpufleet/runner:0.1.0``.
- ``env``: more runner settings (``GPUFLEET_RUNNER_*``), e.g. the backend or Triton image.
- ``volumes``: ``["/host/path:/container/path[:ro]", ...]`` (the Docker socket for the
  runner's Triton container, a model repository).
- ``control_plane_url``: the URL runners use (default: the control plane's public URL).
- ``stop_timeout_s``: seconds ``docker stop`` waits before killing (default 60).
- ``gpus``: ``"all"`` or a device count to request NVIDIA GPUs (default: none).
- ``group_add``: extra groups of the runner's user (the Docker socket's group id, so the
  non-root runner can start its Triton container).

The runner's local status port is turned off (``GPUFLEET_RUNNER_STATUS_ENABLED=false``)
unless ``env`` sets it: several runners share the host network.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from control_plane.errors import InvalidRequest, Unavailable
from control_plane.services.capacity.providers.base import (
    FAILED,
    HOST_LABEL,
    POOL_LABEL,
    RUNNING,
    STARTING,
    Host,
    Launch,
    PoolConfig,
)

log = logging.getLogger(__name__)

MANAGED_LABEL = "gpufleet.capacity"
_FIELD = "provider.settings"


@contextlib.contextmanager
def _engine(what: str) -> Iterator[None]:
    """Docker SDK and connection errors become ``Unavailable``."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise Unavailable(f"docker engine error during {what}: {exc}") from exc


def _created_at(attrs: Mapping[str, Any]) -> float:
    raw = str(attrs.get("Created", ""))
    try:  # "2026-12-01T18:30:00.123456789Z": keep microseconds
        head, _, frac = raw.rstrip("Z").partition(".")
        stamp = datetime.fromisoformat(head + "+00:00")
        return stamp.timestamp() + (float("0." + frac) if frac else 0.0)
    except ValueError:
        return 0.0


class DockerProvider:
    """Runner containers on one Docker engine (see the module docstring)."""

    kind = "docker"

    def __init__(
        self, docker_host: str | None, control_plane_url: Callable[[], str | None]
    ) -> None:
        self._docker_host = docker_host
        self._url = control_plane_url
        self._client: Any = None

    def _docker(self) -> Any:
        if self._client is None:
            import docker

            with _engine("connect"):
                if self._docker_host:
                    self._client = docker.DockerClient(base_url=self._docker_host, timeout=60)
                else:
                    self._client = docker.from_env(timeout=60)
        return self._client

    # ------------------------------------------------------------------ settings
    def validate(self, settings: Mapping[str, Any]) -> None:
        known = {
            "image",
            "env",
            "volumes",
            "control_plane_url",
            "stop_timeout_s",
            "gpus",
            "group_add",
        }
        for key in settings:
            if key not in known:
                raise InvalidRequest(
                    f"unknown docker provider setting {key!r} (known: {sorted(known)})",
                    field=f"{_FIELD}.{key}",
                )
        image = settings.get("image")
        if not isinstance(image, str) or not image.strip():
            raise InvalidRequest("the runner image to start is required", field=f"{_FIELD}.image")
        env = settings.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise InvalidRequest("env must map names to strings", field=f"{_FIELD}.env")
        volumes = settings.get("volumes", [])
        if not isinstance(volumes, list) or not all(
            isinstance(v, str) and len(v.split(":")) in (2, 3) for v in volumes
        ):
            raise InvalidRequest(
                "volumes must be a list of 'host:container[:ro]'", field=f"{_FIELD}.volumes"
            )
        url = settings.get("control_plane_url", self._url())
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidRequest(
                "an http(s) URL runners reach the control plane at is required (no public URL "
                "is configured)",
                field=f"{_FIELD}.control_plane_url",
            )
        stop = settings.get("stop_timeout_s", 60)
        if not isinstance(stop, int) or isinstance(stop, bool) or not 0 <= stop <= 3600:
            raise InvalidRequest(
                "stop_timeout_s must be an integer in [0, 3600]", field=f"{_FIELD}.stop_timeout_s"
            )
        groups = settings.get("group_add", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise InvalidRequest(
                "group_add must be a list of group names or ids", field=f"{_FIELD}.group_add"
            )
        gpus = settings.get("gpus")
        if gpus is not None and gpus != "all" and not (isinstance(gpus, int) and gpus > 0):
            raise InvalidRequest("gpus must be 'all' or a positive count", field=f"{_FIELD}.gpus")

    # ------------------------------------------------------------------ hosts
    def _containers(self, pool: PoolConfig) -> list[Any]:
        with _engine("list containers"):
            return list(
                self._docker().containers.list(
                    all=True, filters={"label": [f"{POOL_LABEL}={pool.name}", MANAGED_LABEL]}
                )
            )

    def list_hosts(self, pool: PoolConfig) -> list[Host]:
        out = []
        for c in self._containers(pool):
            status = str(c.status)
            if status in ("removing", "dead"):
                continue
            state = {"created": STARTING, "running": RUNNING, "restarting": RUNNING}.get(
                status, FAILED
            )
            code = c.attrs.get("State", {}).get("ExitCode")
            detail = f"container {c.name} {status}" + (f" (exit {code})" if state == FAILED else "")
            out.append(Host(str(c.labels[HOST_LABEL]), _created_at(c.attrs), state, detail))
        return sorted(out, key=lambda h: (h.launched_at, h.id))

    def start(self, pool: PoolConfig, launches: list[Launch]) -> list[str]:
        settings = pool.settings
        url = str(settings.get("control_plane_url") or self._url() or "")
        started: list[str] = []
        for launch in launches:
            env = {
                "GPUFLEET_RUNNER_CONTROL_PLANE_URL": url,
                "GPUFLEET_RUNNER_JOIN_TOKEN": launch.join_token,
                "GPUFLEET_RUNNER_NAME": launch.host_id,
                "GPUFLEET_RUNNER_REGION": pool.region,
                "GPUFLEET_RUNNER_LABELS": json.dumps(
                    {**pool.labels, POOL_LABEL: pool.name, HOST_LABEL: launch.host_id}
                ),
                "GPUFLEET_RUNNER_STATUS_ENABLED": "false",
                **dict(settings.get("env", {})),
                **dict(launch.env),
            }
            kwargs: dict[str, Any] = {}
            if settings.get("group_add"):
                kwargs["group_add"] = list(settings["group_add"])
            gpus = settings.get("gpus")
            if gpus is not None:
                import docker.types

                count = -1 if gpus == "all" else int(gpus)
                kwargs["device_requests"] = [
                    docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])
                ]
            with _engine("start a runner container"):
                self._docker().containers.run(
                    str(settings["image"]),
                    detach=True,
                    name=f"gpufleet-{pool.name}-{launch.host_id}",
                    labels={
                        MANAGED_LABEL: "1",
                        POOL_LABEL: pool.name,
                        HOST_LABEL: launch.host_id,
                    },
                    environment=env,
                    network_mode="host",
                    volumes=list(settings.get("volumes", [])),
                    stop_signal="SIGTERM",
                    **kwargs,
                )
            started.append(launch.host_id)
        return started

    def stop(self, pool: PoolConfig, host_id: str) -> None:
        import docker.errors

        timeout = int(pool.settings.get("stop_timeout_s", 60))
        for c in self._containers(pool):
            if c.labels.get(HOST_LABEL) != host_id:
                continue
            with _engine("stop a runner container"):
                try:
                    if c.status in ("running", "restarting", "created"):
                        c.stop(timeout=timeout)
                    c.remove(force=True)
                except docker.errors.NotFound:
                    pass  # gone meanwhile

    def protect(self, pool: PoolConfig, host_ids: list[str], protected: bool) -> None:
        """Docker never removes a container by itself: nothing to protect."""

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
