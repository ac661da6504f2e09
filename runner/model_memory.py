"""How much GPU memory a model load took, and which GPUs Triton calls them.

Triton's statistics ``memory_usage`` where the backend reports it (per version), else the
NVML reading of the model's GPUs before and after the load (``gpu_used_mb``, split over the
versions the load added). ``gpu_map()``: host GPU index -> the index Triton sees
(``runner.triton_config.triton_gpu_map``; None: the same), asked at each use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gpufleet.wire import GpuInfo

from runner.backends.base import InferenceEngine

log = logging.getLogger(__name__)


class MemoryProbe:
    """Readings of GPU memory around loads (NVML through ``read_gpus``, Triton's stats)."""

    def __init__(
        self,
        engine: InferenceEngine,
        read_gpus: Callable[[], list[GpuInfo]] | None = None,
        gpu_map: Callable[[], dict[int, int] | None] | None = None,
    ) -> None:
        self._engine = engine
        self._read_gpus = read_gpus  # blocking (NVML): run in a thread
        self._gpu_map = gpu_map  # a provider: the daemon knows the map once Triton is given GPUs

    def triton_gpus(self, gpus: tuple[int, ...] | None) -> list[int] | None:
        """Host GPU indexes as Triton numbers them."""
        if gpus is None:
            return None
        gpu_map = self._gpu_map() if self._gpu_map is not None else None
        if gpu_map is None:
            return list(gpus)
        return [gpu_map.get(g, g) for g in gpus]

    async def gpu_used_mb(self, gpus: tuple[int, ...] | None) -> int | None:
        """Memory used on ``gpus`` (None: every GPU) by NVML; None when it cannot be read."""
        if self._read_gpus is None:
            return None
        try:
            readings: list[GpuInfo] = await asyncio.to_thread(self._read_gpus)
        except Exception:
            log.debug("NVML reading failed", exc_info=True)
            return None
        chosen = [g for g in readings if gpus is None or g.index in gpus]
        if not chosen:
            return None
        return sum(g.memory_used_mb for g in chosen)

    async def triton_memory_mb(self, name: str, version: str) -> int | None:
        """The version's memory as Triton's statistics report it (None: not reported)."""
        fn = getattr(self._engine, "model_memory_bytes", None)
        if fn is None:
            return None
        try:
            value = await fn(name, version)
        except Exception:
            log.debug("Triton statistics of %s failed", name, exc_info=True)
            return None
        return int(value) // 2**20 if value else None
