"""Console helpers shared by the route tests and the browser tests."""

from __future__ import annotations

import re

import httpx

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "the page has no CSRF field"
    return m.group(1)


async def sign_in(client: httpx.AsyncClient, api_key: str) -> str:
    """Sign ``client`` in with ``api_key`` through the form; the CSRF token of the session
    (a new one: signing in replaces the CSRF cookie)."""
    r = await client.get("/console/signin")
    assert r.status_code == 200, r.text
    token = csrf_of(r.text)
    r = await client.post(
        "/console/signin",
        data={"csrf": token, "api_key": api_key, "next": "/console/fleet"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console/fleet"
    r = await client.get("/console/fleet")
    assert r.status_code == 200, r.text
    return csrf_of(r.text)
