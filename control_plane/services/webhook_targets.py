"""Webhook target validation (SSRF guard).

A target must be ``http``/``https`` with a host and no credentials in the URL. Its host is
resolved (every A/AAAA record) and refused when any address is loopback, private
(10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10…), link-local (169.254/16, fe80::/10),
multicast, unspecified, reserved or otherwise not globally routable.
``allow_loopback`` (the setting ``webhooks_allow_loopback``) lets loopback through and nothing
else. IPv4-mapped IPv6 addresses are judged by the IPv4 address they carry; IPv6 forms
that embed an IPv4 address another way (6to4 ``2002::/16``, NAT64 ``64:ff9b::/96`` and
``64:ff9b:1::/48``, Teredo ``2001::/32``, IPv4-compatible ``::/96``, IPv4-translated
``::ffff:0:0:0/96``) are refused when the address they embed is (a 6to4 relay would carry
``2002:a9fe:a9fe::`` to 169.254.169.254), and otherwise judged as IPv6.

The check runs at submit time (``check_target``) and again right before every delivery
(``resolve_target``); the delivery then connects to the checked address itself (pinned), so a
DNS answer that changes between check and connect (rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from control_plane.errors import InvalidRequest

__all__ = [
    "FIELD",
    "ResolvedTarget",
    "Resolver",
    "TargetRefused",
    "Unresolvable",
    "address_refusal",
    "check_target",
    "resolve_target",
    "system_resolver",
]

FIELD = "webhook.url"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""``resolver(host, port)`` -> every address the host resolves to (A and AAAA)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetRefused(InvalidRequest):
    """A webhook URL that may not be delivered to; ``field`` is ``webhook.url``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field=FIELD)


class Unresolvable(TargetRefused):
    """The host has no usable addresses right now (refused at submit, retried at delivery)."""


@dataclass(frozen=True)
class ResolvedTarget:
    """A checked target: the original URL's parts and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    ip: str
    path: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header of the original URL (port only when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    @property
    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address."""
        ip = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.scheme}://{ip}:{self.port}{self.path}"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address of ``host`` from the system resolver (A and AAAA records)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """(form, IPv4 address) of every IPv4 address ``ip`` carries besides IPv4-mapped."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [("Teredo", server), ("Teredo", client)]
    if any(ip in net for net in _NAT64):
        found.append(("NAT64", low32))
    if ip in _V4_TRANSLATED:
        found.append(("IPv4-translated", low32))
    elif ip in _V4_COMPATIBLE and int(ip) > 1:  # not :: and ::1
        found.append(("IPv4-compatible", low32))
    return found


def address_refusal(ip: IPAddress, allow_loopback: bool) -> str | None:
    """Why ``ip`` may not be a target, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_refusal(ip.ipv4_mapped, allow_loopback)
    if isinstance(ip, ipaddress.IPv6Address):
        for form, v4 in embedded_ipv4(ip):
            why = address_refusal(v4, allow_loopback=False)
            if why is not None:
                return f"{form} form of a {why} ({v4})"
    if ip.is_loopback:
        return None if allow_loopback else "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _split(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path+query) of a syntactically acceptable URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"webhook url is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise TargetRefused("webhook url must be http or https")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetRefused("webhook url has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("webhook url must not carry credentials")
    if any(c.isspace() for c in url):
        raise TargetRefused("webhook url must not contain whitespace")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme], path


def _addresses(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"webhook host {host!r} cannot be resolved") from exc
    if not found:
        raise Unresolvable(f"webhook host {host!r} has no addresses")
    try:
        return [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    except ValueError as exc:
        raise TargetRefused(f"webhook host {host!r} resolved to a malformed address") from exc


def resolve_target(
    url: str, *, allow_loopback: bool, resolver: Resolver = system_resolver
) -> ResolvedTarget:
    """Check ``url`` and every address its host resolves to; return the pinned target.

    Raises ``TargetRefused`` (an ``InvalidRequest`` naming ``webhook.url``) when the URL is
    not http(s), cannot be resolved, or any of its addresses is refused. No connection is
    made here.
    """
    scheme, host, port, path = _split(url)
    addresses = _addresses(host, port, resolver)
    for ip in addresses:
        reason = address_refusal(ip, allow_loopback)
        if reason is not None:
            raise TargetRefused(f"webhook url resolves to a {reason} address ({ip}); refused")
    return ResolvedTarget(
        url=url, scheme=scheme, host=host, port=port, ip=str(addresses[0]), path=path
    )


def check_target(url: str, *, allow_loopback: bool, resolver: Resolver = system_resolver) -> None:
    """Submit-time check of a job's ``webhook.url`` (see ``resolve_target``)."""
    resolve_target(url, allow_loopback=allow_loopback, resolver=resolver)
