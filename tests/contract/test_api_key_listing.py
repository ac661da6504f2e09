"""``AuthStore.list_api_keys`` on both stores: every key (revoked ones too) by creation time,
nothing else of the auth table (refresh tokens, join tokens) in the list."""

from __future__ import annotations

import pytest

from control_plane.storage.protocols_auth import ApiKeyRecord, RefreshRecord
from control_plane.storage.stores import Stores
from tests.conftest import STORE_KINDS

pytestmark = pytest.mark.parametrize("store_kind", STORE_KINDS)


def test_list_api_keys(stores: Stores) -> None:
    auth = stores.auth
    assert auth.list_api_keys() == []
    b = ApiKeyRecord("key_b", "acme", "user", "b", "h" * 64, created_at=20.0)
    a = ApiKeyRecord("key_a", "globex", "viewer", "a", "g" * 64, created_at=10.0)
    auth.save_api_key(b)
    auth.save_api_key(a)
    auth.save_refresh_token(RefreshRecord("rt1", "x" * 64, "fam", "key_a", "globex", "viewer", 9e9))
    auth.revoke_api_key("key_b")
    got = auth.list_api_keys()
    assert [k.id for k in got] == ["key_a", "key_b"]
    assert got[0] == a and got[1].revoked and got[1].tenant == "acme"
