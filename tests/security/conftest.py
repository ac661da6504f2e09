"""Security tests: the API fixtures (app, in-process client, keys, tokens) of
tests/control_plane/api."""

from __future__ import annotations

from tests.control_plane.api.conftest import api_key, app, auth_headers, client, now, services

__all__ = ["api_key", "app", "auth_headers", "client", "now", "services"]
