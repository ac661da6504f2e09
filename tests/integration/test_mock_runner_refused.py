"""A fleet that does not allow mock runners (``GPUFLEET_ALLOW_MOCK_RUNNERS=false``), over
real sockets: a runner registered as mock that opens its channel and advertises a model is
routed no request (the call takes the job path), and its lease over the channel is refused
with 403 naming the setting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpufleet import Client, signing
from websockets.asyncio.client import connect

from tests.helpers.procs import ControlPlaneProc, start_control_plane

REPO = Path(__file__).resolve().parents[2]
STEP_S = 20.0


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProc]:
    env = {"GPUFLEET_ALLOW_MOCK_RUNNERS": "false", "GPUFLEET_IMPLICIT_MAX_REPLICAS": "0"}
    proc = start_control_plane(tmp_path_factory.mktemp("nomock") / "cp", env)
    try:
        yield proc
    finally:
        proc.stop()


async def test_a_mock_runners_channel_gets_no_work(cp: ControlPlaneProc) -> None:
    with Client(cp.url, api_key=cp.admin_key, timeout=STEP_S) as client:
        client.models.push(REPO / "tests" / "fixtures" / "models" / "scale")
        join = client.admin.create_join_token().join_token
        token = client.access_token()
    body = {"join_token": join, "name": "mock-1", "labels": {"gpufleet.backend": "mock"}}
    r = httpx.post(f"{cp.url}/v1/runners/register", json=body, timeout=STEP_S)
    assert r.status_code == 201, r.text
    rid, secret = r.json()["runner_id"], r.json()["secret"]
    path = f"/v1/runners/{rid}/channel"
    headers = signing.sign_headers(rid, secret, "GET", path, "", b"")
    url = f"ws://{cp.url.removeprefix('http://')}{path}"
    infer: dict[str, Any] = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}],
        "timeout_s": 1,
    }
    async with (
        connect(url, additional_headers=headers, proxy=None) as ws,
        httpx.AsyncClient(
            base_url=cp.url, headers={"Authorization": f"Bearer {token}"}, timeout=STEP_S
        ) as http,
    ):
        hello = {"type": "hello", "models": [{"name": "scale", "version": "1"}], "capacity": 2}
        await ws.send(json.dumps(hello))
        await asyncio.sleep(0.5)
        r = await http.post("/v1/models/scale/infer", json=infer)
        assert r.status_code == 504, r.text  # not dispatched: a job nobody may lease
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)  # no infer frame came

        lease = {"models": [{"name": "scale", "version": "1"}], "max_jobs": 1, "wait_s": 0}
        await ws.send(json.dumps({"type": "lease", "rid": 1, "body": lease}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), STEP_S))
        assert reply["type"] == "reply" and reply["status"] == 403, reply
        assert "GPUFLEET_ALLOW_MOCK_RUNNERS" in reply["error"]["message"]
