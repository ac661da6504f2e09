"""The Triton container spec: host network, loopback-only ports, explicit model control,
restricted repository API, shm/ulimits, GPU device requests, read-only model mount."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.types import DeviceRequest, Ulimit

from runner.backends.container_spec import (
    CONTAINER_MODEL_REPOSITORY,
    LABEL_ROLE,
    LABEL_RUNNER,
    LABEL_SPEC,
    REPOSITORY_KEY_HEADER,
    build_container_spec,
    container_name,
    triton_flags,
)
from runner.settings import RunnerSettings

NVIDIA_ENTRYPOINT = ["/opt/nvidia/nvidia_entrypoint.sh"]
CPU_ENTRYPOINT = [
    "/opt/tritonserver/bin/tritonserver",
    "--backend-directory=/opt/tritonserver/backends",
]


@pytest.fixture
def settings(tmp_path: Path) -> RunnerSettings:
    return RunnerSettings(
        name="gpu-host-1",
        model_repository=tmp_path / "repo",
        state_dir=tmp_path / "state",
        triton_http_port=18000,
        triton_grpc_port=18001,
        triton_metrics_port=18002,
        shm_size="256m",
    )


def test_flags_bind_loopback_explicit_mode_and_restrict_repository_api(
    settings: RunnerSettings,
) -> None:
    flags = triton_flags(settings, "/models", "s3cret")
    assert "--model-repository=/models" in flags
    assert "--model-control-mode=explicit" in flags
    for proto, port in (("http", 18000), ("grpc", 18001), ("metrics", 18002)):
        assert f"--{proto}-address=127.0.0.1" in flags
        assert f"--{proto}-port={port}" in flags
    assert f"--http-restricted-api=model-repository:{REPOSITORY_KEY_HEADER}=s3cret" in flags
    assert f"--grpc-restricted-protocol=model-repository:{REPOSITORY_KEY_HEADER}=s3cret" in flags
    assert not any(f.startswith("--backend-directory") for f in flags)


def test_cpu_host_has_no_device_request(settings: RunnerSettings) -> None:
    spec = build_container_spec(settings, repository_key="k", gpus=[])
    kwargs = spec.run_kwargs()
    assert "device_requests" not in kwargs
    assert kwargs["network_mode"] == "host"
    assert "ports" not in kwargs  # nothing published: host network, 127.0.0.1 only


def test_gpus_become_one_device_request(settings: RunnerSettings) -> None:
    spec = build_container_spec(settings, repository_key="k", gpus=["GPU-aaaa", "GPU-bbbb"])
    (request,) = spec.run_kwargs()["device_requests"]
    assert isinstance(request, DeviceRequest)
    assert request["DeviceIDs"] == ["GPU-aaaa", "GPU-bbbb"]
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0  # ids, not "all"


def test_model_repository_mounted_read_only(settings: RunnerSettings) -> None:
    kwargs = build_container_spec(settings, repository_key="k").run_kwargs()
    repo = str((settings.model_repository).resolve())
    assert kwargs["volumes"] == {repo: {"bind": CONTAINER_MODEL_REPOSITORY, "mode": "ro"}}


def test_shm_ulimits_labels_and_name(settings: RunnerSettings) -> None:
    spec = build_container_spec(settings, repository_key="k")
    kwargs = spec.run_kwargs()
    assert kwargs["shm_size"] == "256m"
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in kwargs["ulimits"]}
    assert all(isinstance(u, Ulimit) for u in kwargs["ulimits"])
    assert ulimits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    assert kwargs["labels"][LABEL_RUNNER] == "gpu-host-1"
    assert kwargs["labels"][LABEL_ROLE] == "triton"
    assert kwargs["labels"][LABEL_SPEC] == spec.spec_hash
    assert kwargs["name"] == "gpufleet-triton-gpu-host-1"
    assert kwargs["detach"] is True
    assert kwargs["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"


def test_ulimits_from_settings(settings: RunnerSettings) -> None:
    settings = settings.model_copy(update={"ulimits": {"stack": 1024}})
    kwargs = build_container_spec(settings, repository_key="k").run_kwargs()
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in kwargs["ulimits"]] == [("stack", 1024, 1024)]


def test_nvidia_image_gets_tritonserver_command(settings: RunnerSettings) -> None:
    spec = build_container_spec(settings, repository_key="k", image_entrypoint=NVIDIA_ENTRYPOINT)
    assert spec.command[0] == "tritonserver"
    assert spec.entrypoint is None
    assert "entrypoint" not in spec.run_kwargs()


def test_image_whose_entrypoint_is_tritonserver_gets_flags_only(settings: RunnerSettings) -> None:
    spec = build_container_spec(settings, repository_key="k", image_entrypoint=CPU_ENTRYPOINT)
    assert spec.command[0] == "--model-repository=/models"
    assert spec.entrypoint is None


def test_entrypoint_override(settings: RunnerSettings) -> None:
    settings = settings.model_copy(update={"triton_entrypoint": ["/usr/bin/tritonserver"]})
    spec = build_container_spec(settings, repository_key="k", image_entrypoint=NVIDIA_ENTRYPOINT)
    assert spec.run_kwargs()["entrypoint"] == ["/usr/bin/tritonserver"]
    assert spec.command[0].startswith("--")


def test_spec_hash_changes_with_the_spec_only(settings: RunnerSettings) -> None:
    a = build_container_spec(settings, repository_key="k")
    assert a.spec_hash == build_container_spec(settings, repository_key="k").spec_hash
    assert a.spec_hash != build_container_spec(settings, repository_key="other").spec_hash
    other_image = settings.model_copy(update={"triton_image": "x/y:1"})
    assert a.spec_hash != build_container_spec(other_image, repository_key="k").spec_hash
    assert a.spec_hash != build_container_spec(settings, repository_key="k", gpus=["0"]).spec_hash


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("host", "gpufleet-triton-host"),
        ("a b/c", "gpufleet-triton-a-b-c"),
        ("..", "gpufleet-triton-runner"),
    ],
)
def test_container_name_is_docker_safe(name: str, expected: str) -> None:
    assert container_name(name) == expected


def test_memlock_fallback_keeps_everything_else(settings: RunnerSettings) -> None:
    spec = build_container_spec(settings, repository_key="k")
    fallback = spec.without_memlock()
    assert fallback is not None
    assert [u[0] for u in fallback.ulimits] == ["stack"]
    assert fallback.spec_hash != spec.spec_hash
    assert {k: v for k, v in vars(fallback).items() if k != "ulimits"} == {
        k: v for k, v in vars(spec).items() if k != "ulimits"
    }
    assert fallback.without_memlock() is None  # nothing left to drop
