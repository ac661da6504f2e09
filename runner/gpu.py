"""GPU readings through NVML (nvidia-ml-py's ``pynvml``), behind an injectable module.

``read_gpus(nvml)`` takes any object that follows the pynvml API (tests pass a fake); a
host without NVIDIA's library (``NVMLError_LibraryNotFound``) or without GPUs reports ``[]``
without raising. Calls block: run them in a thread.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from gpufleet.wire import GpuInfo

log = logging.getLogger(__name__)

NVML_TEMPERATURE_GPU = 0


class Nvml(Protocol):
    """The part of the pynvml API the runner uses."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _optional(fn: Any, *args: Any) -> Any:
    """A reading some GPUs do not support (NVMLError_NotSupported) is None."""
    try:
        return fn(*args)
    except Exception:
        return None


class GpuReader:
    """Reads every GPU; initialises NVML once and remembers when it is absent."""

    def __init__(self, nvml: Nvml | None = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml: Nvml = nvml
        self._initialised = False
        self._unavailable: str | None = None

    @property
    def unavailable_reason(self) -> str | None:
        """Why NVML cannot be used (None while it works or was not tried yet)."""
        return self._unavailable

    def _init(self) -> bool:
        if self._initialised:
            return True
        if self._unavailable is not None:
            return False
        try:
            self._nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._unavailable = f"{type(exc).__name__}: {exc}"
            log.info("no NVIDIA GPUs reported (NVML unavailable: %s)", self._unavailable)
            return False
        self._initialised = True
        return True

    def read(self) -> list[GpuInfo]:
        """One reading of every GPU; ``[]`` on a CPU-only host."""
        if not self._init():
            return []
        nvml = self._nvml
        out: list[GpuInfo] = []
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception:
            log.warning("nvmlDeviceGetCount failed", exc_info=True)
            return []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                util = _optional(nvml.nvmlDeviceGetUtilizationRates, handle)
                temp = _optional(nvml.nvmlDeviceGetTemperature, handle, NVML_TEMPERATURE_GPU)
                power_mw = _optional(nvml.nvmlDeviceGetPowerUsage, handle)
                out.append(
                    GpuInfo(
                        index=index,
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        memory_total_mb=int(mem.total) // 2**20,
                        memory_used_mb=int(mem.used) // 2**20,
                        utilization_pct=float(util.gpu) if util is not None else None,
                        temperature_c=float(temp) if temp is not None else None,
                        power_w=power_mw / 1000.0 if power_mw is not None else None,
                    )
                )
            except Exception:
                log.warning("reading GPU %d failed", index, exc_info=True)
        return out

    def close(self) -> None:
        if self._initialised:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed", exc_info=True)
            self._initialised = False


def read_gpus(nvml: Nvml | None = None) -> list[GpuInfo]:
    """Convenience: one reading with a fresh reader."""
    reader = GpuReader(nvml)
    try:
        return reader.read()
    finally:
        reader.close()
