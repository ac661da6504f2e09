"""Sending one webhook request to a checked, pinned address (httpx).

The request goes to the address ``webhook_targets.resolve_target`` checked (never to a fresh
DNS answer), with the original ``Host`` header and, for https, the original host name for SNI
and certificate verification. Redirects are not followed (a 3xx is the receiver's answer),
proxies from the environment are ignored, and connections are not kept alive, so a pooled
connection is never reused for another host name on the same address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import httpx

from control_plane.services.webhook_targets import ResolvedTarget

__all__ = ["HttpxSender", "SendError", "Sender"]


class SendError(Exception):
    """The request failed before a response arrived (connect, TLS, timeout, reset)."""


class Sender(Protocol):
    """Sends one POST; returns the status code or raises ``SendError``."""

    async def post(
        self, target: ResolvedTarget, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> int: ...

    async def aclose(self) -> None: ...


class HttpxSender:
    """``Sender`` on an ``httpx.AsyncClient``; ``transport`` is injectable for tests."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def post(
        self, target: ResolvedTarget, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> int:
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client.build_request(
            "POST",
            target.pinned_url,
            content=body,
            headers={**headers, "Host": target.host_header},
            timeout=timeout_s,
            extensions=extensions,
        )
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except TimeoutError as exc:
            raise SendError(f"timed out after {timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise SendError(f"{type(exc).__name__}: {exc}") from exc
        return response.status_code

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()
