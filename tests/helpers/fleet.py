"""Fixtures for SDK / CLI / example tests: the real app (on the ``stores`` of
tests/conftest.py: the embedded store unless ``store_kind`` says otherwise) on a real socket
(uvicorn in a thread on 127.0.0.1), an admin API key, an SDK client, add_sub pushed, a fake
runner.

Import the fixtures into a conftest: ``from tests.helpers.fleet import *  # noqa: F403``.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from gpufleet import Client
from gpufleet.wire import ModelVersionView

from tests.conftest import free_port, serve_blobs_through
from tests.helpers.fake_runner import FakeRunner

__all__ = [
    "add_sub_dir",
    "admin_key",
    "cp_app",
    "cp_services",
    "cp_url",
    "fake_runner",
    "fleet",
    "ready_model",
    "serve_in_thread",
]

REPO = Path(__file__).resolve().parents[2]
ADD_SUB = REPO / "model_repository" / "add_sub"
ADD_SUB_CONFIG = """name: "add_sub"
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
"""
ADD_SUB_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (a + b).astype(np.float32)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(np.float32)),
            ]))
        return out
"""


def serve_in_thread(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Start ``app`` under uvicorn on a free loopback port; (server, thread, base URL)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def cp_services(settings: Any, stores: Any) -> Any:
    from control_plane.composition import build_services

    return build_services(settings, stores)


@pytest.fixture
def cp_app(settings: Any, cp_services: Any, stores: Any, request: pytest.FixtureRequest) -> Any:
    """The app; until ``cp_url`` serves it, the embedded store's blob URLs reach it through
    the blob host (clients on ``httpx.ASGITransport`` fetch them over a socket)."""
    from control_plane.app import create_app

    return serve_blobs_through(create_app(settings, cp_services), stores, request)


@pytest.fixture
def cp_url(cp_app: Any, stores: Any) -> Iterator[str]:
    """``cp_app`` on a loopback socket; the embedded store's blob URLs name it."""
    server, thread, url = serve_in_thread(cp_app)
    stores.set_public_url(url)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def admin_key(cp_services: Any) -> str:
    return str(cp_services.auth.issue_api_key("acme", "admin", "sdk tests").api_key)


@pytest.fixture
def fleet(cp_url: str, admin_key: str) -> Iterator[Client]:
    with Client(cp_url, api_key=admin_key, timeout=30.0) as client:
        yield client


@pytest.fixture
def add_sub_dir(tmp_path: Path) -> Path:
    """The repository's add_sub model, or Triton's example written afresh."""
    target = tmp_path / "models" / "add_sub"
    if (ADD_SUB / "config.pbtxt").is_file():
        shutil.copytree(ADD_SUB, target)
    else:
        (target / "1").mkdir(parents=True)
        (target / "config.pbtxt").write_text(ADD_SUB_CONFIG)
        (target / "1" / "model.py").write_text(ADD_SUB_MODEL)
    return target


@pytest.fixture
def ready_model(fleet: Client, add_sub_dir: Path) -> ModelVersionView:
    return fleet.models.push(add_sub_dir)


@pytest.fixture
def fake_runner(fleet: Client, cp_url: str, ready_model: ModelVersionView) -> Iterator[FakeRunner]:
    token = fleet.admin.create_join_token(region="default").join_token
    with FakeRunner(cp_url, token) as runner:
        yield runner
    assert not runner.errors, runner.errors
