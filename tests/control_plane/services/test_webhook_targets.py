"""SSRF guard: only http(s); loopback, private, link-local, multicast, reserved refused."""

from __future__ import annotations

import pytest

from control_plane.errors import InvalidRequest
from control_plane.services.webhook_targets import (
    ResolvedTarget,
    TargetRefused,
    Unresolvable,
    check_target,
    resolve_target,
)

PUBLIC = "93.184.216.34"


class FakeResolver:
    """Answers from a table and records what it was asked (no real DNS)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError("no such host")
        return self.table[host]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/h",
        "http://172.16.5.4/h",
        "http://172.31.255.255/h",
        "http://192.168.1.1:8080/h",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/h",
        "http://[fc00::1]/h",
        "http://[fd12:3456::1]/h",
        "http://[::ffff:10.0.0.1]/h",
        "http://0.0.0.0/h",
        "http://[::]/h",
        "http://224.0.0.1/h",
        "http://100.64.0.1/h",
        "http://240.0.0.1/h",
        "http://192.0.2.10/h",
        "http://127.0.0.1/h",
        "http://[::1]/h",
    ],
)
def test_non_public_literals_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused) as info:
        check_target(url, allow_loopback=False, resolver=FakeResolver({}))
    assert info.value.field == "webhook.url"
    assert isinstance(info.value, InvalidRequest)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/h", "http://169.254.169.254/", "http://[fe80::1]/", "http://0.0.0.0/"]
)
def test_allow_loopback_allows_loopback_only(url: str) -> None:
    check_target("http://127.0.0.1:9/h", allow_loopback=True)
    check_target("http://[::1]:9/h", allow_loopback=True)
    check_target("http://[::ffff:127.0.0.1]:9/h", allow_loopback=True)
    with pytest.raises(TargetRefused):
        check_target(url, allow_loopback=True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.test/x",
        "file:///etc/passwd",
        "gopher://x",
        "//host/x",
        "http:///x",
        "http://user:pw@hooks.test/x",
        "http://hooks.test:99999/x",
        "https://hooks.test/a b",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    resolver = FakeResolver({"hooks.test": [PUBLIC]})
    with pytest.raises(TargetRefused):
        check_target(url, allow_loopback=True, resolver=resolver)


def test_every_resolved_address_must_be_public() -> None:
    resolver = FakeResolver(
        {"mixed.test": [PUBLIC, "10.1.1.1"], "good.test": [PUBLIC, "2606:2800:220:1::1"]}
    )
    with pytest.raises(TargetRefused, match="private"):
        check_target("https://mixed.test/h", allow_loopback=False, resolver=resolver)
    target = resolve_target("https://good.test/h?a=1", allow_loopback=False, resolver=resolver)
    assert target.ip == PUBLIC and target.path == "/h?a=1" and target.port == 443


def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(Unresolvable, match="cannot be resolved"):
        check_target("https://nowhere.test/h", allow_loopback=False, resolver=FakeResolver({}))


def test_pinned_url_and_host_header() -> None:
    t = ResolvedTarget(url="", scheme="https", host="hooks.test", port=8443, ip=PUBLIC, path="/x")
    assert t.pinned_url == f"https://{PUBLIC}:8443/x"
    assert t.host_header == "hooks.test:8443"
    t6 = ResolvedTarget(url="", scheme="http", host="::1", port=80, ip="::1", path="/")
    assert t6.pinned_url == "http://[::1]:80/" and t6.host_header == "[::1]"
