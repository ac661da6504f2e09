"""The console's fleet page shows the regions: live runners, measured round trips and the
latency table of ``GET /v1/regions``; the admin page lists the region defaults of tenants
and API keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from control_plane.app import Services
from tests.control_plane.api.conftest import TokenFor
from tests.control_plane.api.test_console_routes import Browser, browser  # noqa: F401 - the fixture
from tests.control_plane.api.test_deployments import gpu, register


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(
        update={"control_plane_region": "eu-west-1", "region_spill_after_s": 12.0}
    )


async def test_fleet_page_shows_regions_and_latencies(
    browser: Browser,  # noqa: F811
    api_key: Callable[..., str],
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
) -> None:
    admin = await auth_headers("admin", "default")
    eu = await register(client, admin, "eu-host", "eu-west-1")
    us = await register(client, admin, "us-host", "us-east-1")
    await eu.heartbeat([gpu(16000)], [])
    r = await us.post("heartbeat", {"gpus": [gpu(16000)], "models": [], "rtt_ms": 81.5})
    assert r.status_code == 200, r.text
    c = await browser(api_key("viewer", "acme"))
    html = (await c.get("/console/fleet")).text
    for text in (
        'id="region-table"',
        "control plane in <strong>eu-west-1</strong>",
        "spill after 12.0 s",
        '<tr data-region="us-east-1"><td>us-east-1</td><td class="live">1</td>'
        '<td class="rtt">81.5 ms</td><td>1</td></tr>',
        '<tr data-region="eu-west-1"><td>eu-west-1</td><td class="live">1</td>'
        '<td class="rtt">\u2013</td>',
        'id="latency-table"',
        '<tr data-pair="eu-west-1:us-east-1">',
        '<td>81.5 ms</td><td>81.5 ms</td><td class="source">measured</td>',
    ):
        assert text in html, text


async def test_admin_page_lists_region_defaults(
    browser: Browser,  # noqa: F811
    api_key: Callable[..., str],
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
    services: Services,
) -> None:
    admin = await auth_headers("admin", "default")
    c = await browser(api_key("admin", "default"))
    assert "No tenant or API key has region defaults." in (await c.get("/console/admin")).text
    key = services.auth.issue_api_key("acme", "user", "eu")
    r = await client.put(
        "/v1/admin/tenants/acme/regions",
        headers=admin,
        json={"default_region": "eu-west-1", "regions_allowed": ["eu-west-1", "eu-central-1"]},
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        f"/v1/admin/api-keys/{key.id}/regions",
        headers=admin,
        json={"regions_allowed": ["eu-central-1"]},
    )
    assert r.status_code == 200, r.text
    html = (await c.get("/console/admin")).text
    tenant = html.split('<tr data-scope="tenant" data-name="acme">')[1].split("</tr>")[0]
    assert "<td>eu-west-1</td><td>eu-west-1, eu-central-1</td><td>stored</td>" in tenant
    row = html.split(f'<tr data-scope="key" data-name="{key.id}">')[1].split("</tr>")[0]
    assert "<td>eu-central-1</td><td>stored</td>" in row, row
    assert "in eu-central-1</td>" in row  # effective: no default inside the key's limit
    # a user's settings page has no such section
    user = await browser(api_key("user", "acme"))
    assert 'id="region-defaults"' not in (await user.get("/console/admin")).text
