"""``client.admin`` region defaults, sync and async, against the real control plane."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gpufleet import Client
from gpufleet.aio import AsyncClient
from gpufleet.errors import InvalidRequestError

EU = ["eu-west-1", "eu-central-1"]


def test_sync_set_get_list_reset(fleet: Client, cp_services: Any) -> None:
    admin = fleet.admin
    view = admin.set_region_defaults(tenant="beta", regions_allowed=EU)
    assert (view.default_region, view.regions_allowed, view.source) == (None, EU, "stored")
    view = admin.set_region_defaults(tenant="beta", default_region="eu-central-1")
    assert (view.default_region, view.regions_allowed) == ("eu-central-1", EU)  # kept
    key = cp_services.auth.issue_api_key("beta", "user", "k")
    view = admin.set_region_defaults(key_id=key.id, regions_allowed=["eu-west-1"])
    assert view.effective.regions_allowed == ["eu-west-1"]
    assert view.effective.default_region is None
    assert admin.get_region_defaults(key_id=key.id).tenant == "beta"
    listing = admin.list_region_defaults()
    assert [t.tenant for t in listing.tenants] == ["beta"] and len(listing.keys) == 1
    with pytest.raises(InvalidRequestError) as err:
        admin.set_region_defaults(tenant="beta", default_region="us-east-1")
    assert (err.value.status_code, err.value.field) == (422, "default_region")
    with pytest.raises(InvalidRequestError) as err:
        admin.set_region_defaults(tenant="beta", regions_allowed=["eu-west-1", "atlantis-1"])
    assert err.value.field == "regions_allowed[1]"
    with pytest.raises(ValueError):
        admin.get_region_defaults()
    with pytest.raises(ValueError):
        admin.get_region_defaults(tenant="beta", key_id=key.id)
    assert admin.reset_region_defaults(key_id=key.id).source == "none"
    view = admin.set_region_defaults(tenant="beta", default_region=None, regions_allowed=None)
    assert (view.default_region, view.regions_allowed) == (None, [])
    assert admin.reset_region_defaults(tenant="beta").source == "none"


async def test_async_set_get_list_reset(cp_app: Any, admin_key: str) -> None:
    transport = httpx.ASGITransport(app=cp_app)
    async with AsyncClient("http://cp.test", api_key=admin_key, transport=transport) as fleet:
        view = await fleet.admin.set_region_defaults(
            tenant="gamma", default_region="eu-west-1", regions_allowed=EU
        )
        assert view.effective.default_region == "eu-west-1"
        assert (await fleet.admin.get_region_defaults(tenant="gamma")).regions_allowed == EU
        listing = await fleet.admin.list_region_defaults()
        assert [t.tenant for t in listing.tenants] == ["gamma"]
        assert (await fleet.admin.reset_region_defaults(tenant="gamma")).source == "none"
