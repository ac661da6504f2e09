"""Direct mode over real sockets: the embedded control plane (a process), a runner daemon
(mock backend) with its direct endpoint, and a stand-in for Triton's HTTP port (an aiohttp
server that adds and subtracts, so an answer that came through the runner's direct endpoint
(sums) is told apart from one through the control plane (the mock backend's zeros)).

Covered: tickets for another runner, model, version, tenant; expired, too long, tampered,
HS256, unknown-key and rotated-out-key tickets → 401 from the runner; a rotation is picked
up at once (new kid); a runner restart keeps accepting its unexpired tickets; the SDK (sync
and async) goes direct, falls back to the control plane when the runner is unreachable or
refuses the ticket, and goes direct again after. The real-Triton run is
tests/e2e/test_direct_triton.py."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from gpufleet import AsyncClient, Client

from control_plane.services.signing_keys import generate_key
from control_plane.storage.sqlite.db import Database
from control_plane.storage.sqlite.keys import SqliteSigningKeyStore
from runner.backends.mock_backend import MockBackend
from runner.daemon import Daemon
from runner.gpu import GpuReader
from runner.settings import RunnerSettings
from tests.helpers.procs import start_control_plane
from tests.rig import free_port
from tests.runner.test_runner_control_plane import REPO, ControlPlane

pytestmark = pytest.mark.slow

A = [1.0, 2.0, 3.0, 4.0]
B = [10.0, 20.0, 30.0, 40.0]
SUMS = [11.0, 22.0, 33.0, 44.0]


@pytest.fixture(scope="module")
def cp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cp")


@pytest.fixture(scope="module")
def control_plane(cp_dir: Path) -> Iterator[ControlPlane]:
    env = {
        "GPUFLEET_RUNNER_OFFLINE_AFTER_S": "30",
        "GPUFLEET_SIGNING_KEY_OVERLAP_S": "2",  # a rotated-out key verifies 2 s
        "GPUFLEET_SIGNING_KEY_CACHE_S": "0.5",
    }
    try:
        cp = start_control_plane(cp_dir, env)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        c = ControlPlane(cp.url, cp.admin_key)
        c.upload_model(REPO / "add_sub")
        yield c
    finally:
        cp.stop()


class FakeTriton:
    """Triton's KServe v2 HTTP infer for add_sub (OUTPUT0 = a + b, OUTPUT1 = a - b)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _infer(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        body = await request.json()
        x = {t["name"]: np.asarray(t["data"], dtype=np.float32) for t in body["inputs"]}
        a, b = x["INPUT0"], x["INPUT1"]
        out = [
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4], "data": (a + b).tolist()},
            {"name": "OUTPUT1", "datatype": "FP32", "shape": [1, 4], "data": (a - b).tolist()},
        ]
        return web.json_response({"model_name": "add_sub", "model_version": "1", "outputs": out})

    async def _ready(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v2/models/add_sub/versions/1/infer", self._infer)
        app.router.add_get("/v2/models/add_sub/versions/1/ready", self._ready)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def triton() -> AsyncIterator[FakeTriton]:
    t = FakeTriton()
    await t.start()
    yield t
    await t.stop()


def _runner_settings(cp: ControlPlane, tmp: Path, triton_port: int, direct_port: int) -> Any:
    url = f"http://127.0.0.1:{direct_port}"
    return RunnerSettings(
        control_plane_url=cp.url,
        join_token=cp.join_token(),
        name=f"direct-{tmp.name}"[:60],
        backend="mock",
        model_repository=REPO,
        state_dir=tmp / "state",
        status_port=0,
        triton_http_port=triton_port,
        direct_url=url,
        direct_host="127.0.0.1",
        direct_port=direct_port,
        direct_jwks_refresh_s=1.0,
    )


def _key(cp: ControlPlane, tenant: str, role: str = "user") -> str:
    r = cp.http.post("/v1/admin/api-keys", json={"tenant": tenant, "role": role, "name": tenant})
    r.raise_for_status()
    return str(r.json()["api_key"])


def _ticket(cp: ControlPlane, api_key: str, model: str = "add_sub") -> httpx.Response:
    tok = cp.http.post("/v1/auth/token", json={"api_key": api_key}).json()["access_token"]
    return httpx.post(
        f"{cp.url}/v1/models/{model}/direct",
        json={},
        headers={"Authorization": f"Bearer {tok}"},
        timeout=10,
    )


async def _wait_ticket(cp: ControlPlane, api_key: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            r = await asyncio.to_thread(_ticket, cp, api_key)
            if r.status_code == 200:
                return dict(r.json())
            assert r.status_code == 503, r.text  # no direct runner yet
            await asyncio.sleep(0.3)


def _body() -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": A},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": B},
        ]
    }


async def _call(
    url: str, ticket: str | None, path: str = "/v2/models/add_sub/infer"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ticket}"} if ticket is not None else {}
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(url + path, json=_body(), headers=headers)


class Minter:
    """Signs tickets with the control plane's current private key, read from its store file
    (a ticket the control plane could have issued, with claims it would not have issued)."""

    def __init__(self, cp_dir: Path) -> None:
        self._store = SqliteSigningKeyStore(Database(cp_dir / "data" / "gpufleet.db"))

    def mint(self, claims: dict[str, Any], *, unknown_key: bool = False) -> str:
        rec = next(r for r in self._store.list_signing_keys() if r.retired_at is None)
        if unknown_key:
            rec = generate_key("EdDSA", time.time())
        private = serialization.load_pem_private_key(rec.private_pem.encode(), None)
        headers = {"typ": "gf-ticket+jwt", "kid": rec.kid}
        return jwt.encode(claims, private, algorithm=rec.alg, headers=headers)  # type: ignore[arg-type]


def _claims(of: dict[str, Any], **over: Any) -> dict[str, Any]:
    claims = jwt.decode(of["ticket"], options={"verify_signature": False})
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


async def test_runner_checks_tickets_and_sdk_falls_back(
    control_plane: ControlPlane, cp_dir: Path, triton: FakeTriton, tmp_path: Path
) -> None:
    cp = control_plane
    direct_port = free_port()
    settings = _runner_settings(cp, tmp_path, triton.port, direct_port)
    daemon = Daemon(settings, MockBackend(REPO), gpus=GpuReader())
    run = asyncio.create_task(daemon.run(install_signals=False))
    user = await asyncio.to_thread(_key, cp, "default")
    try:
        t = await _wait_ticket(cp, user)
        runner_id = daemon.identity.runner_id
        assert t["url"] == settings.direct_url and t["runner_id"] == runner_id
        assert t["model"] == "add_sub" and t["version"] == "1" and t["expires_in"] <= 300
        header = jwt.get_unverified_header(t["ticket"])
        assert header["typ"] == "gf-ticket+jwt" and header["alg"] == "EdDSA" and header["kid"]
        claims = _claims(t)
        assert claims["aud"] == f"runner:{runner_id}" and claims["tenant"] == "default"
        assert claims["exp"] - claims["iat"] <= 300

        # a good ticket: passed to Triton, on the ticket's version
        r = await _call(t["url"], t["ticket"])
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == SUMS
        assert triton.paths[-1] == "/v2/models/add_sub/versions/1/infer"
        r = await _call(t["url"], t["ticket"], "/v2/models/add_sub/versions/1/infer")
        assert r.status_code == 200, r.text
        seen = len(triton.paths)

        async def refused(
            ticket: str | None, why: str, path: str = "/v2/models/add_sub/infer"
        ) -> None:
            r = await _call(t["url"], ticket, path)
            assert r.status_code == 401, r.text
            assert why in r.json()["error"], r.json()
            assert r.headers["WWW-Authenticate"].startswith("Bearer")

        await refused(None, "ticket is required")
        await refused(t["ticket"], "not 'other'", "/v2/models/other/infer")
        await refused(t["ticket"], "version 1, not 2", "/v2/models/add_sub/versions/2/infer")
        m = Minter(cp_dir)
        now = int(time.time())
        await refused(m.mint(_claims(t, aud="runner:someone-else")), "another runner")
        await refused(m.mint(_claims(t, model="other")), "for model 'other'")
        await refused(m.mint(_claims(t, tenant="")), "names no tenant")
        await refused(m.mint(_claims(t, tenant=None)), "invalid ticket")  # claim missing
        await refused(m.mint(_claims(t, iat=now - 400, nbf=now - 400, exp=now - 100)), "expired")
        await refused(m.mint(_claims(t, exp=now + 3600)), "lifetime over 5 minutes")
        await refused(m.mint(_claims(t, iss="someone")), "invalid ticket")
        await refused(m.mint(_claims(t), unknown_key=True), "unknown or retired key")
        head, _payload, sig = t["ticket"].split(".")
        forged = _claims(t, model="add_sub", sub="mallory")
        fake = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        await refused(f"{head}.{fake}.{sig}", "invalid ticket")  # tampered
        hs = jwt.encode(_claims(t), "k" * 32, algorithm="HS256", headers=header | {"alg": "HS256"})
        await refused(hs, "algorithm")
        assert len(triton.paths) == seen  # nothing refused reached Triton

        # another tenant gets no ticket for this model at all
        globex = await asyncio.to_thread(_key, cp, "globex")
        r = await asyncio.to_thread(_ticket, cp, globex)
        assert r.status_code == 404, r.text

        # rotation: a ticket with the new kid works at once (the runner re-reads the JWKS),
        # the old key's ticket until the overlap (2 s) ends, then 401
        rot = await asyncio.to_thread(cp.http.post, "/v1/admin/signing-keys/rotate")
        assert rot.status_code == 200, rot.text
        keys = rot.json()["keys"]
        assert [k["current"] for k in keys] == [True, False]
        old = t
        async with asyncio.timeout(10):
            while True:  # the control plane's replica cache (0.5 s) may still sign with the old
                t = await _wait_ticket(cp, user)
                if jwt.get_unverified_header(t["ticket"])["kid"] == keys[0]["kid"]:
                    break
                await asyncio.sleep(0.2)
        assert (await _call(t["url"], t["ticket"])).status_code == 200
        assert (await _call(t["url"], old["ticket"])).status_code == 200  # in the overlap
        await asyncio.sleep(4.0)
        await refused(old["ticket"], "unknown or retired key")
        assert (await _call(t["url"], t["ticket"])).status_code == 200

        # the SDK: direct (sums), fallback when the endpoint is gone (the mock backend's
        # zeros through the control plane), direct again once it is back
        client = Client(cp.url, api_key=user)
        aclient = AsyncClient(cp.url, api_key=user)
        try:
            inputs = {"INPUT0": np.asarray([A], np.float32), "INPUT1": np.asarray([B], np.float32)}
            out = await asyncio.to_thread(client.infer, "add_sub", inputs, direct=True)
            assert out["OUTPUT0"].tolist() == [SUMS]
            out = await aclient.infer("add_sub", inputs, direct=True)
            assert out["OUTPUT0"].tolist() == [SUMS]
            assert client.direct_tickets.direct_calls == 1 == aclient.direct_tickets.direct_calls

            assert daemon.direct is not None
            await daemon.direct.stop()
            out = await asyncio.to_thread(client.infer, "add_sub", inputs, direct=True)
            assert out["OUTPUT0"].tolist() == [[0.0] * 4]  # through the control plane
            out = await aclient.infer("add_sub", inputs, direct=True)
            assert out["OUTPUT0"].tolist() == [[0.0] * 4]
            assert client.direct_tickets.fallbacks == 1 == aclient.direct_tickets.fallbacks
            await daemon.direct.start()
            out = await asyncio.to_thread(client.infer, "add_sub", inputs, direct=True)
            assert out["OUTPUT0"].tolist() == [SUMS]  # a new ticket, direct again

            # a refused ticket (its key rotated out): fallback, then a fresh ticket
            rot = await asyncio.to_thread(cp.http.post, "/v1/admin/signing-keys/rotate")
            assert rot.status_code == 200, rot.text
            await asyncio.sleep(4.0)
            out = await asyncio.to_thread(client.infer, "add_sub", inputs, direct=True)
            assert out["OUTPUT0"].tolist() == [[0.0] * 4]
            assert client.direct_tickets.fallbacks == 2
            out = await asyncio.to_thread(client.infer, "add_sub", inputs, direct=True)
            assert out["OUTPUT0"].tolist() == [SUMS]
        finally:
            client.close()
            await aclient.close()
        t = await _wait_ticket(cp, user)

        # a runner restart: same identity, the unexpired ticket still works
        daemon.request_stop()
        assert await asyncio.wait_for(run, 30) == 0
        with pytest.raises(httpx.ConnectError):  # nothing listens now
            await _call(t["url"], t["ticket"])
    finally:
        if not run.done():
            daemon.request_stop()
            await asyncio.wait_for(run, 30)
    daemon2 = Daemon(settings, MockBackend(REPO), gpus=GpuReader())
    run2 = asyncio.create_task(daemon2.run(install_signals=False))
    try:
        async with asyncio.timeout(30):
            while daemon2.direct is None or daemon2.direct._site is None:
                await asyncio.sleep(0.1)
        assert daemon2.identity.runner_id == runner_id
        r = await _call(t["url"], t["ticket"])
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == SUMS
    finally:
        daemon2.request_stop()
        assert await asyncio.wait_for(run2, 30) == 0
