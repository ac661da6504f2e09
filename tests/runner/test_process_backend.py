"""Unit tests of the process backend's command line and environment (no Triton started;
the real thing runs in tests/e2e/test_runner_process.py)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.backends.base import BackendError
from runner.backends.process_backend import PID_FILE, ProcessBackend
from runner.settings import RunnerSettings
from runner.triton_client import TritonClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """NVIDIA's layout with a stand-in binary (never run here)."""
    root = tmp_path / "tritonserver"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "backends" / "python").mkdir(parents=True)
    binary = root / "bin" / "tritonserver"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    return root


def make_settings(tmp_path: Path, **over: object) -> RunnerSettings:
    values: dict[str, object] = {
        "backend": "process",
        "state_dir": tmp_path / "state",
        "model_repository": tmp_path / "models",
        "triton_http_port": free_port(),
        "triton_grpc_port": free_port(),
        "triton_metrics_port": free_port(),
    }
    values.update(over)
    return RunnerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def engine() -> AsyncIterator[TritonClient]:
    client = TritonClient(
        protocol="http", http_port=1, grpc_port=2, metrics_port=3, repository_key="k"
    )
    yield client
    await client.aclose()


def test_layout_gives_backend_directory_and_library_path(
    tree: Path, tmp_path: Path, engine: TritonClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/other/lib")
    s = make_settings(tmp_path, tritonserver_path=str(tree / "bin" / "tritonserver"))
    backend = ProcessBackend(s, engine, "key")
    cmd = backend.command()
    assert cmd[0] == str((tree / "bin" / "tritonserver").resolve())
    assert f"--backend-directory={tree.resolve() / 'backends'}" in cmd
    assert f"--model-repository={(tmp_path / 'models').resolve()}" in cmd
    assert f"--http-port={s.triton_http_port}" in cmd and "--http-address=127.0.0.1" in cmd
    assert backend.environment()["LD_LIBRARY_PATH"] == f"{tree.resolve() / 'lib'}:/opt/other/lib"


def test_binary_found_on_path(
    tree: Path, tmp_path: Path, engine: TritonClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{tree / 'bin'}:/usr/bin:/bin")
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    backend = ProcessBackend(make_settings(tmp_path), engine, "key")  # tritonserver_path default
    assert backend.command()[0] == str((tree / "bin" / "tritonserver").resolve())
    assert backend.environment()["LD_LIBRARY_PATH"] == str(tree.resolve() / "lib")


def test_settings_override_the_layout(
    tree: Path, tmp_path: Path, engine: TritonClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    s = make_settings(
        tmp_path,
        tritonserver_path=str(tree / "bin" / "tritonserver"),
        backend_directory="/srv/backends",
        triton_library_path=[],
    )
    backend = ProcessBackend(s, engine, "key")
    cmd = backend.command()
    assert "--backend-directory=/srv/backends" in cmd
    assert sum(a.startswith("--backend-directory=") for a in cmd) == 1
    assert "LD_LIBRARY_PATH" not in backend.environment()

    s2 = s.model_copy(update={"triton_library_path": ["/a", "/b"]})
    assert ProcessBackend(s2, engine, "key").environment()["LD_LIBRARY_PATH"] == "/a:/b"


def test_no_layout_no_derived_flags(tmp_path: Path, engine: TritonClient) -> None:
    binary = tmp_path / "somewhere" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    backend = ProcessBackend(make_settings(tmp_path, tritonserver_path=str(binary)), engine, "k")
    assert not any(a.startswith("--backend-directory=") for a in backend.command())


async def test_missing_binary_is_a_clear_error(tmp_path: Path, engine: TritonClient) -> None:
    s = make_settings(tmp_path, tritonserver_path=str(tmp_path / "nope" / "tritonserver"))
    with pytest.raises(BackendError, match="not found"):
        await ProcessBackend(s, engine, "key").start()


async def test_refuses_ports_someone_else_serves(
    tree: Path, tmp_path: Path, engine: TritonClient
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        s = make_settings(
            tmp_path,
            tritonserver_path=str(tree / "bin" / "tritonserver"),
            triton_http_port=port,
        )
        backend = ProcessBackend(s, engine, "key")
        with pytest.raises(BackendError, match=rf"\[{port}\] already in use"):
            await backend.start()
    assert backend.pid is None
    assert not (s.state_dir / PID_FILE).exists()
