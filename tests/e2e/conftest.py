"""Session fixtures for tests on real components: one Docker engine and the CPU Triton image
per test run (tests/rig.py does the work).

Set GPUFLEET_SKIP_DOCKER=1 to skip the tests that need them; without it a missing engine
is a test error with the reason, never a silent skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import rig


def _skip_requested() -> None:
    if os.environ.get("GPUFLEET_SKIP_DOCKER") == "1":
        pytest.skip("GPUFLEET_SKIP_DOCKER=1: tests that need a real Docker engine are skipped")


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a reachable Docker engine (reused, or a private dockerd for this run,
    stopped by its pid when the run ends)."""
    _skip_requested()
    try:
        host, stop = rig.ensure_docker_engine(tmp_path_factory.mktemp("engine"))
    except rig.RigError as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:
        pytest.fail(f"cannot get a Docker engine: {reason}", pytrace=False)
    try:
        yield host
    finally:
        stop()


@pytest.fixture(scope="session")
def triton_image(docker_host: str) -> str:
    """The CPU Triton image on ``docker_host`` (built offline when missing)."""
    try:
        return rig.ensure_triton_image(docker_host)
    except rig.RigError as exc:
        reason = str(exc)
    pytest.fail(f"cannot build the CPU Triton image: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The repository's model_repository/ (add_sub)."""
    return rig.MODEL_REPOSITORY
