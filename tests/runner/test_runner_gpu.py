"""GPU readings through a fake NVML that follows the pynvml API, and the real pynvml on a
host without NVIDIA's library."""

from __future__ import annotations

import pynvml
import pytest

from runner.gpu import GpuReader, read_gpus
from tests.runner.runner_fakes import FakeNvml


class MissingLibraryNvml(FakeNvml):
    def nvmlInit(self) -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def test_reads_every_gpu_with_units_converted() -> None:
    nvml = FakeNvml()
    gpus = read_gpus(nvml)
    assert [g.index for g in gpus] == [0, 1]
    a100 = gpus[0]
    assert a100.name == "NVIDIA A100-SXM4-80GB"
    assert a100.uuid == "GPU-1111"
    assert (a100.memory_total_mb, a100.memory_used_mb) == (81920, 1024)
    assert a100.utilization_pct == 37.0
    assert a100.temperature_c == 41.0
    assert a100.power_w == pytest.approx(71.234)
    assert gpus[1].uuid == "GPU-2222" and gpus[1].name == "NVIDIA L4"
    assert nvml.initialised == 1 and nvml.shutdowns == 1


def test_unsupported_reading_is_none_not_an_error() -> None:
    gpus = read_gpus(FakeNvml(power_supported=False))
    assert len(gpus) == 2
    assert all(g.power_w is None for g in gpus)
    assert gpus[0].temperature_c == 41.0


def test_reader_initialises_once() -> None:
    nvml = FakeNvml()
    reader = GpuReader(nvml)
    reader.read()
    reader.read()
    assert nvml.initialised == 1
    reader.close()
    assert nvml.shutdowns == 1


def test_missing_library_reports_no_gpus() -> None:
    reader = GpuReader(MissingLibraryNvml())
    assert reader.read() == []
    assert reader.read() == []
    assert reader.unavailable_reason is not None
    assert "NVMLError" in reader.unavailable_reason


def test_real_pynvml_on_this_host_reports_cleanly() -> None:
    """This machine has no NVIDIA driver: the real pynvml fails at init → []."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        has_driver = False
    else:
        has_driver = True
        pynvml.nvmlShutdown()
    reader = GpuReader()  # the real pynvml module
    gpus = reader.read()
    reader.close()
    if has_driver:  # a GPU machine: real readings
        assert all(g.memory_total_mb > 0 and g.uuid for g in gpus)
    else:
        assert gpus == []
        assert reader.unavailable_reason is not None
