"""Engine for a real Triton: tritonclient aio (gRPC by default, HTTP as an option).

Model-repository calls carry the restricted-API header. Concurrent ``infer`` calls stay
concurrent (one aio client), so Triton's dynamic batcher sees them together.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from gpufleet.wire import OutputRequest, Tensor

from runner.backends.base import InferError
from runner.backends.container_spec import REPOSITORY_KEY_HEADER
from runner.tensors import from_numpy, to_numpy
from runner.triton_metrics import scrape_triton_metrics

log = logging.getLogger(__name__)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"

# gRPC status codes / error texts that mean "Triton is not there (right now)".
_TRANSIENT_MARKERS = (
    "UNAVAILABLE",
    "Connection refused",
    "connect",
    "Socket closed",
    "not found",  # unknown model: not (re)loaded yet after a restart
    "is not ready",
    "Server disconnected",
    "Stub process",
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, OSError)):
        return True
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientConnectionError):
            return True
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        pass
    text = f"{getattr(exc, 'status', lambda: '')()} {exc}" if hasattr(exc, "status") else str(exc)
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (vs. a cancelled gRPC call)."""
    task = asyncio.current_task()
    if task is None:
        return True
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else True


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return str(text or type(exc).__name__)


class TritonClient:
    """``InferenceEngine`` over tritonclient's aio clients."""

    def __init__(
        self,
        *,
        protocol: str,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        repository_key: str,
        request_timeout_s: float = 10.0,
        load_timeout_s: float = 300.0,
    ) -> None:
        self.protocol = protocol
        self._http_port = http_port
        self._grpc_port = grpc_port
        self._metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self._ready_url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        # Triton checks the gRPC restricted-protocol header under a fixed prefix.
        header = (
            REPOSITORY_KEY_HEADER
            if protocol == "http"
            else GRPC_HEADER_PREFIX + REPOSITORY_KEY_HEADER
        )
        self._repo_headers = {header: repository_key}
        self._request_timeout_s = request_timeout_s
        self._load_timeout_s = load_timeout_s
        self._client: Any = None
        self._http = httpx.AsyncClient(timeout=request_timeout_s)

    def _triton(self) -> Any:
        if self._client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc.aio as grpcclient

                self._client = grpcclient.InferenceServerClient(f"127.0.0.1:{self._grpc_port}")
            else:
                import tritonclient.http.aio as httpclient

                self._client = httpclient.InferenceServerClient(
                    f"127.0.0.1:{self._http_port}", conn_limit=1024, conn_timeout=10.0
                )
        return self._client

    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpcclient

            return grpcclient
        import tritonclient.http.aio as httpclient

        return httpclient

    async def server_ready(self) -> bool:
        try:
            resp = await self._http.get(self._ready_url, timeout=2.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def _call(self, timeout_s: float, fn: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(getattr(self._triton(), fn)(*args, **kwargs), timeout_s)
        except asyncio.TimeoutError as exc:
            raise InferError(f"{fn} timed out after {timeout_s:.0f}s", transient=True) from exc
        except asyncio.CancelledError as exc:
            if _cancelling():
                raise
            # Not us: the channel was closed under the call (Triton restarted; reset()).
            raise InferError("call cancelled by a Triton restart", transient=True) from exc
        except Exception as exc:
            raise InferError(_message(exc), transient=_is_transient(exc)) from exc

    async def load_model(self, name: str, config: str | None = None) -> None:
        """Load or reload; ``config`` (JSON) overrides the model's config.pbtxt."""
        await self._call(
            self._load_timeout_s, "load_model", name, headers=self._repo_headers, config=config
        )

    async def unload_model(self, name: str) -> None:
        await self._call(self._load_timeout_s, "unload_model", name, headers=self._repo_headers)

    async def model_memory_bytes(self, name: str, version: str) -> int | None:
        """GPU memory Triton's statistics report for one loaded version (``memory_usage``;
        None when the backend reports none)."""
        try:
            extra = {"as_json": True} if self.protocol == "grpc" else {}  # HTTP: always JSON
            stats = await self._call(
                self._request_timeout_s, "get_inference_statistics", name, version, **extra
            )
        except InferError:
            return None
        total = None
        for model in (stats or {}).get("model_stats", []):
            for usage in model.get("memory_usage", []) or []:
                if str(usage.get("type", "")).upper() == "GPU":
                    total = (total or 0) + int(usage.get("byte_size", 0))
        return total

    async def model_ready(self, name: str, version: str) -> bool:
        try:
            return bool(await self._call(self._request_timeout_s, "is_model_ready", name, version))
        except InferError:
            return False

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> list[Tensor]:
        module = self._module()
        infer_inputs = []
        for tensor in inputs:
            arr = to_numpy(tensor)
            item = module.InferInput(tensor.name, list(arr.shape), tensor.datatype)
            item.set_data_from_numpy(arr)
            infer_inputs.append(item)
        requested = [module.InferRequestedOutput(o.name) for o in outputs] if outputs else None
        result = await self._call(
            timeout_s,
            "infer",
            model,
            infer_inputs,
            model_version=version,
            outputs=requested,
            parameters=parameters or None,
        )
        return _outputs(result)

    async def metrics(self) -> dict[str, Any]:
        return await scrape_triton_metrics(self._http, self._metrics_url)

    async def reset(self) -> None:
        """Drop the connection (after a restart the old channel may be stale)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:
                log.debug("closing tritonclient failed", exc_info=True)

    async def aclose(self) -> None:
        await self.reset()
        await self._http.aclose()


def _outputs(result: Any) -> list[Tensor]:
    response = result.get_response()
    if isinstance(response, dict):  # HTTP
        specs = [(o["name"], o["datatype"]) for o in response.get("outputs", [])]
    else:  # gRPC protobuf
        specs = [(o.name, o.datatype) for o in response.outputs]
    out = []
    for name, datatype in specs:
        arr = result.as_numpy(name)
        if arr is None:
            continue
        out.append(from_numpy(name, datatype, arr))
    return out
