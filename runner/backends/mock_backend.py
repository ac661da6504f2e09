"""Mock backend: no Triton. Answers every job with zeros shaped from the model's config.

For development without a GPU or Docker; the runner logs a loud notice when it is used.
Output shapes: the config's dims (variable dims -1 become 1), prefixed with the batch size
of the first input when the model batches (``max_batch_size > 0``).

``mock_outputs: echo`` (``GPUFLEET_RUNNER_MOCK_OUTPUTS=echo``) answers output *i* with input
*i* instead, where shape and datatype match (zeros otherwise): every job gets an answer of
its own, which the soak test (bench/soak.py) uses to check each result belongs to its job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import numpy as np
from gpufleet.wire import OutputRequest, Tensor

from runner.backends.base import InferError
from runner.model_repo import read_model_config, scan_repository
from runner.tensors import CONFIG_DATATYPES, NP_DTYPES, from_numpy, to_numpy

log = logging.getLogger(__name__)

NOTICE = (
    "\n" + "!" * 72 + "\n"
    "!!  MOCK BACKEND: no Triton is running. Jobs are answered with ZEROS shaped\n"
    "!!  from each model's config.pbtxt. Use --backend docker|process for real inference.\n"
    + "!"
    * 72
)


class MockEngine:
    """``InferenceEngine`` answering from config.pbtxt."""

    protocol = "mock"

    def __init__(self, repository: Path, outputs: str = "zeros", delay_s: float = 0.0) -> None:
        self._repository = Path(repository).expanduser()
        self._echo = outputs == "echo"
        self._delay_s = delay_s
        self._configs: dict[str, Any] = {}
        self.loaded: set[str] = set()
        self.infer_count = 0
        self.failure_count = 0

    async def server_ready(self) -> bool:
        return True

    async def load_model(self, name: str, config: str | None = None) -> None:
        known = {m.name: m for m in scan_repository(self._repository)}
        if name not in known:
            raise InferError(f"failed to load '{name}': not in the model repository")
        try:
            self._configs[name] = read_model_config(known[name].path)
        except Exception as exc:
            raise InferError(f"failed to load '{name}': bad config.pbtxt: {exc}") from exc
        self.loaded.add(name)

    async def unload_model(self, name: str) -> None:
        self.loaded.discard(name)

    async def model_ready(self, name: str, version: str) -> bool:
        return name in self.loaded

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> list[Tensor]:
        config = self._configs.get(model)
        if config is None or model not in self.loaded:
            self.failure_count += 1
            raise InferError(f"Request for unknown model: '{model}' is not found")
        if self._delay_s > 0:
            await asyncio.sleep(self._delay_s)  # a model that takes its time
        arrays = [to_numpy(t) for t in inputs]
        batch = [int(arrays[0].shape[0])] if config.max_batch_size > 0 and arrays else []
        wanted = {o.name for o in outputs} if outputs else None
        from tritonclient.grpc import model_config_pb2

        result = []
        for i, spec in enumerate(config.output):
            if wanted is not None and spec.name not in wanted:
                continue
            datatype = CONFIG_DATATYPES[model_config_pb2.DataType.Name(spec.data_type)]
            shape = batch + [d if d > 0 else 1 for d in spec.dims]
            source = inputs[i] if self._echo and i < len(inputs) else None
            if source is not None and source.datatype == datatype and list(source.shape) == shape:
                result.append(from_numpy(spec.name, datatype, arrays[i]))
                continue
            if datatype == "BYTES":
                arr = np.full(shape, b"", dtype=np.object_)
            else:
                arr = np.zeros(shape, dtype=NP_DTYPES[datatype])
            result.append(from_numpy(spec.name, datatype, arr))
        self.infer_count += 1
        return result

    async def decoupled(self, model: str, version: str) -> bool:
        config = self._configs.get(model)
        return bool(config is not None and config.model_transaction_policy.decoupled)

    async def infer_stream(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> AsyncGenerator[list[Tensor], None]:
        """A decoupled model's answer: ``parameters["mock_chunks"]`` (default 3) responses,
        each what ``infer`` answers, ``delay_s`` apart."""
        for _ in range(int(parameters.get("mock_chunks", 3))):
            yield await self.infer(model, version, inputs, outputs, parameters, timeout_s)

    async def metrics(self) -> dict[str, Any]:
        return {"mock": True, "models": {}}

    async def reset(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class MockBackend:
    """``TritonBackend`` without a server."""

    kind = "mock"

    def __init__(self, repository: Path, outputs: str = "zeros", delay_s: float = 0.0) -> None:
        self.engine = MockEngine(repository, outputs, delay_s)

    async def start(self) -> None:
        log.warning(NOTICE)

    async def alive(self) -> bool:
        return True

    async def restart(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "notice": "no Triton: outputs are zeros"}
