"""``Client.admin.check_join_token`` / ``AsyncClient.admin.check_join_token`` against the real
control plane on a loopback socket: an accepted token (none of it used), a refused one. (The
route needs no credentials; the SDK sends none with it.)"""

from __future__ import annotations

import pytest
from gpufleet import AsyncClient, Client
from gpufleet.errors import AuthError


def test_check_join_token(fleet: Client) -> None:
    created = fleet.admin.create_join_token(region="eu-west-1", max_uses=3)
    found = fleet.admin.check_join_token(created.join_token)  # sent without credentials
    assert (found.id, found.region, found.uses_left) == (created.id, "eu-west-1", 3)
    with pytest.raises(AuthError, match="invalid or expired join token"):
        fleet.admin.check_join_token("gfj_" + "x" * 40)
    (listed,) = [t for t in fleet.admin.list_join_tokens() if t.id == created.id]
    assert listed.uses == 0


async def test_check_join_token_async(fleet: Client, cp_url: str, admin_key: str) -> None:
    token = fleet.admin.create_join_token().join_token
    async with AsyncClient(cp_url, api_key=admin_key) as client:
        assert (await client.admin.check_join_token(token)).uses_left == 1
        with pytest.raises(AuthError):
            await client.admin.check_join_token("gfj_forged_token")
