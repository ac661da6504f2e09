# ruff: noqa: F403, F405 - fixtures and helpers come from input_fixtures
"""Issue 12 item 10 (the input parts): a viewer gets 403 before its body is validated; the
webhook target check refuses 6to4/NAT64/Teredo forms of link-local and private addresses; a
body-less PUT of a deployment is 422; the OpenAPI document declares the /v2 error shape."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest
from input_fixtures import *

from control_plane.services.webhook_targets import TargetRefused, address_refusal, check_target

WRITES = [
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs/batch"),
    ("POST", "/v1/models/m1/versions"),
    ("POST", "/v1/models/m1/versions/1/commit"),
    ("PUT", "/v1/models/m1/deployment"),
    ("POST", "/v1/models/add_sub/infer"),
    ("POST", "/v2/models/add_sub/infer"),
    ("POST", "/v1/payloads"),
    ("POST", "/v1/admin/api-keys"),
    ("PUT", "/v1/pools/p1"),
]


@pytest.mark.parametrize(("method", "path"), WRITES)
async def test_viewer_gets_403_before_422(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
    method: str,
    path: str,
) -> None:
    viewer = await auth_headers("viewer", "acme")
    r = await client.request(method, path, content=b'{"nonsense": [1, 2', headers=viewer)
    assert r.status_code == 403, r.text


@pytest.mark.parametrize(
    "address",
    [
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:0a00:0001::",  # 6to4 of 10.0.0.1
        "2002:c0a8:0101::1",  # 6to4 of 192.168.1.1
        "2002:7f00:0001::1",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client 169.254.169.254
        "::a9fe:a9fe",  # IPv4-compatible
        "::ffff:0:a9fe:a9fe",  # IPv4-translated
    ],
)
def test_webhook_targets_refuse_embedded_ipv4(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), allow_loopback=True) is not None
    with pytest.raises(TargetRefused):
        check_target(f"http://[{address}]/hook", allow_loopback=False)
    with pytest.raises(TargetRefused):  # also when the name resolves to it
        check_target(
            "http://hooks.example/x", allow_loopback=False, resolver=lambda h, p: [address]
        )


def test_webhook_targets_allow_6to4_of_a_public_address() -> None:
    assert address_refusal(ipaddress.ip_address("2002:0808:0808::1"), False) is None


async def test_bodyless_put_deployment_is_422(
    client: httpx.AsyncClient, model: dict[str, str]
) -> None:
    before = (await client.get("/v1/models/add_sub/deployment", headers=model)).json()
    r = await client.put("/v1/models/add_sub/deployment", headers=model)
    err = assert_error(r, 422, "invalid_request")
    assert err["details"][0]["field"] == "body"
    after = (await client.get("/v1/models/add_sub/deployment", headers=model)).json()
    assert after == before  # nothing stored


async def test_openapi_declares_the_v2_error_shape(client: httpx.AsyncClient) -> None:
    doc: dict[str, Any] = (await client.get("/openapi.json")).json()
    v2 = {p: ops for p, ops in doc["paths"].items() if p.startswith("/v2")}
    assert v2
    for path, ops in v2.items():
        for op in ops.values():
            ref = op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/V2Error"), (path, ref)
    schema = doc["components"]["schemas"]["V2Error"]
    assert {"error", "code"} <= set(schema["required"])
    v1 = doc["paths"]["/v1/jobs"]["post"]["responses"]["default"]["content"]
    assert v1["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


async def test_v2_errors_before_routing_have_the_v2_shape(
    client: httpx.AsyncClient, model: dict[str, str], settings: Any
) -> None:
    too_big = str(settings.max_body_bytes + 1)
    r = await client.post(
        "/v2/models/add_sub/infer", content=b"{}", headers={**model, "Content-Length": too_big}
    )
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large", r.text
    assert isinstance(r.json()["error"], str)
    r = await client.delete("/v2/models/add_sub", headers=model)
    assert r.status_code == 405 and isinstance(r.json()["error"], str), r.text
