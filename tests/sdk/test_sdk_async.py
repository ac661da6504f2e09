"""AsyncClient against the real app in process (httpx.ASGITransport)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import AsyncClient, errors

from tests.helpers.fake_runner import FakeRunner

A = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)
B = np.ones((2, 4), dtype=np.float32)


def _client(
    cp_app: Any, admin_key: str, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncClient:
    return AsyncClient(
        "http://cp.test", api_key=admin_key, transport=transport or httpx.ASGITransport(app=cp_app)
    )


async def test_async_push_infer_batch_list(
    cp_app: Any, admin_key: str, cp_url: str, add_sub_dir: Any
) -> None:
    async with _client(cp_app, admin_key) as fleet:
        view = await fleet.models.push(add_sub_dir)
        assert view.state == "READY"
        token = (await fleet.admin.create_join_token()).join_token
        with FakeRunner(cp_url, token) as runner:
            out = await fleet.infer("add_sub", {"INPUT0": A, "INPUT1": B}, timeout=30)
            np.testing.assert_array_equal(out["OUTPUT0"], A + B)
            np.testing.assert_array_equal(out["OUTPUT1"], A - B)
            ids = await fleet.submit_batch(
                [{"model": "add_sub", "inputs": {"INPUT0": A, "INPUT1": B}, "priority": 3}] * 2
            )
            done = await asyncio.gather(*(fleet.wait(i, timeout=30) for i in ids))
            assert [d.status for d in done] == ["SUCCEEDED", "SUCCEEDED"]
            listed = [j.id async for j in fleet.list(page_size=1)]
            assert set(ids) <= set(listed) and len(listed) == 3
        assert not runner.errors
        assert [r.id for r in await fleet.runners.list()] == [runner.runner_id]
        with pytest.raises(errors.NotFoundError):
            await fleet.get("job_missing")


async def test_concurrent_calls_share_one_token_exchange(cp_app: Any, admin_key: str) -> None:
    seen: list[str] = []

    class Counting(httpx.ASGITransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.url.path)
            return await super().handle_async_request(request)

    async with _client(cp_app, admin_key, Counting(app=cp_app)) as fleet:
        await asyncio.gather(*(fleet.models.list() for _ in range(5)))
    assert seen.count("/v1/auth/token") == 1
    assert seen.count("/v1/models") == 5


class FailFirstSubmit(httpx.ASGITransport):
    """Lets the app take the first submit, then loses its answer (503)."""

    submits = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.submits += 1
            if self.submits == 1:
                await response.aread()
                body = {"api_version": "v1", "error": {"code": "unavailable", "message": "lost"}}
                return httpx.Response(503, json=body)
        return response


async def test_async_retry_on_503_keeps_one_job(
    cp_app: Any, admin_key: str, ready_model: Any
) -> None:
    transport = FailFirstSubmit(app=cp_app)
    async with _client(cp_app, admin_key, transport) as fleet:
        fleet._core.retry.base_s = 0.01
        job = await fleet.submit("add_sub", {"INPUT0": A, "INPUT1": B})
        assert transport.submits == 2
        assert [j.id async for j in fleet.list()] == [job.id]
