"""The address the embedded store's blob URLs name when GPUFLEET_PUBLIC_URL is unset."""

from __future__ import annotations

import socket

import pytest

from control_plane.__main__ import public_url


def test_the_listening_address_is_named() -> None:
    assert public_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert public_url("::1", 8080) == "http://[::1]:8080"


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_all_interfaces_name_this_host_not_the_wildcard(host: str) -> None:
    url = public_url(host, 9000)
    assert url == f"http://{socket.getfqdn()}:9000"
    assert "0.0.0.0" not in url


def test_the_scheme_follows_tls() -> None:
    assert public_url("127.0.0.1", 8443, "https") == "https://127.0.0.1:8443"
