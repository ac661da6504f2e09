"""The console's routes in process (httpx over ASGI on the embedded store): sign-in and the
session cookies, CSRF on every form, roles and tenants enforced by the server, and each page
showing what the services hold. The browser tests (tests/e2e/test_console_browser.py) drive
the same pages in a real Chromium."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from gpufleet import signing

from control_plane.composition import Services
from tests.control_plane.api.conftest import TokenFor
from tests.control_plane.api.helpers import add_sub_job, push_model
from tests.helpers.console import csrf_of, sign_in

GPU = {
    "index": 0,
    "uuid": "GPU-1",
    "name": "A100-SXM4-40GB",
    "memory_total_mb": 40960,
    "memory_used_mb": 10240,
    "utilization_pct": 37.5,
}
Browser = Callable[..., Any]


@pytest.fixture
async def browser(app: Any) -> AsyncIterator[Browser]:
    """``await browser(role, tenant)`` -> a client with its own cookie jar, signed in."""
    clients: list[httpx.AsyncClient] = []

    async def make(key: str, base_url: str = "http://cp.test") -> httpx.AsyncClient:
        c = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=base_url, follow_redirects=True
        )
        clients.append(c)
        c.csrf = await sign_in(c, key)  # type: ignore[attr-defined]
        return c

    yield make
    for c in clients:
        await c.aclose()


async def _runner(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    r = await client.post("/v1/admin/join-tokens", headers=admin, json={"region": "eu-west-1"})
    token = r.json()["join_token"]
    r = await client.post(
        "/v1/runners/register",
        json={"join_token": token, "name": "gpu-host-1", "labels": {"gpu": "a100"}},
    )
    runner_id, secret = r.json()["runner_id"], r.json()["secret"]
    path = f"/v1/runners/{runner_id}/heartbeat"
    body = {
        "gpus": [GPU],
        "models": [{"name": "add_sub", "version": "1", "state": "READY", "memory_mb": 312}],
        "triton": {"ready": True},
        "running_jobs": ["job_a", "job_b"],
    }
    raw = json.dumps(body).encode()
    h = signing.sign_headers(runner_id, secret, "POST", path, body=raw)
    r = await client.post(path, content=raw, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return str(runner_id)


# --------------------------------------------------------------------------- sign-in


async def test_pages_need_a_session_and_sign_in_sets_strict_cookies(
    client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    r = await client.get("/console/jobs?status=FAILED", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/signin?next=%2Fconsole%2Fjobs%3Fstatus%3DFAILED"
    r = await client.get("/console/signin")
    token = csrf_of(r.text)
    r = await client.post(
        "/console/signin",
        data={"csrf": token, "api_key": api_key("user"), "next": "/console/jobs"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/jobs"
    cookies = {c.split("=", 1)[0]: c.lower() for c in r.headers.get_list("set-cookie")}
    assert set(cookies) == {"gf_access", "gf_refresh", "gf_csrf"}  # a new CSRF cookie too
    for text in cookies.values():
        assert "httponly" in text and "samesite=strict" in text and "path=/console" in text
        assert "secure" not in text  # plain HTTP: a Secure cookie would never come back
    r = await client.get("/console/jobs")
    assert r.status_code == 200 and "acme · user" in r.text
    assert csrf_of(r.text) != token  # the sign-in page's token ends with it
    assert (await client.post("/console/signout", data={"csrf": token})).status_code == 403
    assert r.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


async def test_cookies_are_secure_over_tls(app: Any, api_key: Callable[..., str]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://cp.test") as c:
        r = await c.get("/console/signin")
        assert all("secure" in x.lower() for x in r.headers.get_list("set-cookie"))
        r = await c.post(
            "/console/signin",
            data={"csrf": csrf_of(r.text), "api_key": api_key("user")},
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert all("secure" in x.lower() for x in r.headers.get_list("set-cookie"))


async def test_a_bad_key_is_refused_on_the_form(client: httpx.AsyncClient) -> None:
    r = await client.get("/console/signin")
    r = await client.post(
        "/console/signin", data={"csrf": csrf_of(r.text), "api_key": "gf_key_nope_nothing"}
    )
    assert r.status_code == 401
    assert "That API key is not valid." in r.text
    assert "gf_access" not in r.headers.get("set-cookie", "")


async def test_next_never_leaves_the_console(
    client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    r = await client.get("/console/signin")
    r = await client.post(
        "/console/signin",
        data={"csrf": csrf_of(r.text), "api_key": api_key(), "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/console/fleet"


async def test_an_expired_access_cookie_is_refreshed(
    browser: Browser, api_key: Callable[..., str]
) -> None:
    c = await browser(api_key("user"))
    old_refresh = c.cookies["gf_refresh"]
    c.cookies.set("gf_access", "not-a-token", domain="cp.test", path="/console")
    r = await c.get("/console/models")
    assert r.status_code == 200
    assert c.cookies["gf_refresh"] != old_refresh  # rotated, as any client rotates it


async def test_sign_out_revokes_the_refresh_family(
    browser: Browser, api_key: Callable[..., str], services: Services
) -> None:
    c = await browser(api_key("user"))
    refresh = c.cookies["gf_refresh"]
    r = await c.post("/console/signout", data={"csrf": c.csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/signin"
    assert "gf_access" not in c.cookies and "gf_refresh" not in c.cookies
    from control_plane.errors import Unauthorized

    with pytest.raises(Unauthorized, match="revoked"):
        services.auth.refresh(refresh)
    r = await c.get("/console/fleet", follow_redirects=False)
    assert r.status_code == 303


# --------------------------------------------------------------------------- CSRF


@pytest.mark.parametrize(
    "path",
    [
        "/console/signout",
        "/console/runners/set",
        "/console/models/add_sub/deployment",
        "/console/models/add_sub/try",
        "/console/jobs/job_x/cancel",
        "/console/admin/api-keys",
        "/console/admin/join-tokens",
        "/console/admin/webhook-secret",
    ],
)
async def test_every_form_needs_the_csrf_token(
    browser: Browser, api_key: Callable[..., str], path: str
) -> None:
    c = await browser(api_key("admin", "default"))
    for data in ({}, {"csrf": "0" * 64}, {"csrf": c.csrf[:-1] + "x"}):
        r = await c.post(path, data=data, follow_redirects=False)
        assert r.status_code == 403, (path, data, r.text)
        assert "CSRF" in r.text
    assert (await c.get("/console/fleet")).status_code == 200  # still signed in


async def test_sign_in_itself_needs_the_csrf_token(
    client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    await client.get("/console/signin")
    r = await client.post("/console/signin", data={"api_key": api_key()}, follow_redirects=False)
    assert r.status_code == 403
    assert "gf_access" not in client.cookies


async def test_a_token_of_another_session_is_refused(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    mallory = await browser(api_key("user"))
    alice = await browser(api_key("user"))
    user = await auth_headers("user")
    await push_model(client, user)
    r = await client.post("/v1/jobs", headers=user, json=add_sub_job())
    job_id = r.json()["id"]
    r = await alice.post(f"/console/jobs/{job_id}/cancel", data={"csrf": mallory.csrf})
    assert r.status_code == 403


# --------------------------------------------------------------------------- pages


async def test_fleet_shows_each_runner_with_gpus_models_and_state(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    runner_id = await _runner(client, await auth_headers("admin", "default"))
    c = await browser(api_key("admin", "default"))
    html = (await c.get("/console/fleet")).text
    assert f'id="runner-{runner_id}" data-state="healthy"' in html
    for text in (
        "gpu-host-1",
        "eu-west-1",
        "gpu=a100",
        "A100-SXM4-40GB",
        'value="38"',  # utilization 37.5 % as a meter
        "10240 / 40960 MB",
        "312 MB",
        'class="triton">ready<',
        'class="inflight">2<',
        "Drain gpu-host-1",
        'id="runner-set-form"',
    ):
        assert text in html, text


async def test_admin_drains_a_runner_and_sets_a_runtime_setting(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    runner_id = await _runner(client, admin)
    c = await browser(api_key("admin", "default"))
    r = await c.post(f"/console/runners/{runner_id}/drain", data={"csrf": c.csrf, "drain": "true"})
    assert r.status_code == 200 and 'data-state="draining"' in r.text
    assert "Resume gpu-host-1" in r.text
    r = await c.post(
        "/console/runners/set",
        data={"csrf": c.csrf, "runner": runner_id, "key": "max_concurrency", "value": "3"},
    )
    assert r.status_code == 200 and "concurrency 3" in r.text
    r = await c.post(
        "/console/runners/set",
        data={"csrf": c.csrf, "runner": runner_id, "key": "max_concurrency", "value": "0"},
    )
    assert r.status_code == 422 and "max_concurrency" in r.text
    r = await c.post(
        "/console/runners/set",
        data={"csrf": c.csrf, "runner": runner_id, "key": "secret", "value": "x"},
    )
    assert r.status_code == 422 and "key must be one of" in r.text
    views = (await client.get("/v1/runners", headers=admin)).json()["runners"]
    assert views[0]["config"]["max_concurrency"] == 3 and views[0]["config"]["drain"] is True


async def test_viewer_sees_no_write_controls_and_forged_writes_are_refused(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "acme")
    runner_id = await _runner(client, admin)
    await push_model(client, admin)
    job_id = (await client.post("/v1/jobs", headers=admin, json=add_sub_job())).json()["id"]
    v = await browser(api_key("viewer", "acme"))
    pages = {
        "/console/fleet": ("Drain", "runner-set-form"),
        "/console/models/add_sub": ("deployment-form", "try-form"),
        f"/console/jobs/{job_id}": ("cancel-form",),
    }
    for path, controls in pages.items():
        r = await v.get(path)
        assert r.status_code == 200, path
        for control in controls:
            assert control not in r.text, (path, control)
    assert (await v.get("/console/admin")).status_code == 403
    forged = {
        f"/console/runners/{runner_id}/drain": {"drain": "true"},
        f"/console/jobs/{job_id}/cancel": {},
        "/console/models/add_sub/deployment": {"min_replicas": "0", "max_replicas": "0"},
        "/console/models/add_sub/try": {"version": "1", "input:INPUT0": "[[1,2,3,4]]"},
        "/console/admin/api-keys": {"tenant": "acme", "role": "admin"},
    }
    for path, data in forged.items():
        r = await v.post(path, data={"csrf": v.csrf, **data})
        assert r.status_code == 403, (path, r.text)
    job = (await client.get(f"/v1/jobs/{job_id}", headers=admin)).json()
    assert job["status"] == "QUEUED"
    runners = (await client.get("/v1/runners", headers=admin)).json()["runners"]
    assert runners[0]["config"]["drain"] is False


async def test_other_tenants_pages_are_not_found(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    acme = await auth_headers("user", "acme")
    await push_model(client, acme)
    job_id = (await client.post("/v1/jobs", headers=acme, json=add_sub_job())).json()["id"]
    other = await browser(api_key("user", "globex"))
    for path in ("/console/models/add_sub", f"/console/jobs/{job_id}"):
        r = await other.get(path)
        assert r.status_code == 404, path
        assert (
            'data-code="' in r.text
            and "add_sub" not in r.text.split("<main")[1].split("data-code")[0]
        )
    r = await other.post(f"/console/jobs/{job_id}/cancel", data={"csrf": other.csrf})
    assert r.status_code == 404
    assert 'data-model="add_sub"' not in (await other.get("/console/models")).text
    assert job_id not in (await other.get("/console/jobs")).text


async def test_models_page_and_a_model_with_its_deployment(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    c = await browser(api_key("user", "acme"))
    html = (await c.get("/console/models")).text
    assert 'data-model="add_sub"' in html and "v1 READY" in html
    html = (await c.get("/console/models/add_sub")).text
    for text in ("INPUT0 FP32 [-1, 4]", "OUTPUT1 FP32 [-1, 4]", 'id="try-form"'):
        assert text in html, text
    # a pushed model is servable on demand: its implicit deployment (min 0, max 1)
    assert "Wants 0 to 1 replicas; the plan asks for 0, 0 ready." in html
    assert "[[0, 0, 0, 0]]" in html  # the try-it form starts with a batch of one
    r = await c.post(
        "/console/models/add_sub/deployment",
        data={"csrf": c.csrf, "min_replicas": "2", "max_replicas": "1", "regions": ""},
    )
    assert r.status_code == 422 and "max_replicas" in r.text
    r = await c.post(
        "/console/models/add_sub/deployment",
        data={"csrf": c.csrf, "min_replicas": "1", "max_replicas": "2", "regions": "eu-west-1"},
    )
    assert r.status_code == 200
    assert "Wants 1 to 2 replicas in eu-west-1; the plan asks for 1, 0 ready." in r.text
    assert 'id="waiting-reason"' in r.text  # no runner: the reason is shown


async def test_try_it_names_the_bad_field(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    await push_model(client, await auth_headers("user", "acme"))
    c = await browser(api_key("user", "acme"))
    r = await c.post(
        "/console/models/add_sub/try",
        data={"csrf": c.csrf, "version": "1", "input:INPUT0": "[1, 2", "input:INPUT1": "[[1]]"},
    )
    assert r.status_code == 422
    assert "INPUT0: not a JSON array" in r.text
    assert "[1, 2</textarea>" in r.text  # what was typed stays in the form


async def test_jobs_list_filters_pages_and_a_job_is_cancelled(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    ids = [
        (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()["id"]
        for _ in range(3)
    ]
    c = await browser(api_key("user", "acme"))
    html = (await c.get("/console/jobs?limit=2")).text
    assert html.count('data-status="QUEUED"') == 2 and 'id="next-page"' in html
    nxt = html.split('id="next-page" href="')[1].split('"')[0].replace("&amp;", "&")
    html2 = (await c.get(nxt)).text
    assert html2.count('data-status="QUEUED"') == 1
    r = await c.get(f"/console/jobs/{ids[0]}")
    assert 'data-step="QUEUED"' in r.text and 'id="cancel-form"' in r.text
    r = await c.post(f"/console/jobs/{ids[0]}/cancel", data={"csrf": c.csrf})
    assert r.status_code == 200 and 'id="job-status">CANCELLED' in r.text
    assert 'data-step="CANCELLED"' in r.text and 'id="cancel-form"' not in r.text
    html = (await c.get("/console/jobs?status=CANCELLED")).text
    assert ids[0] in html and ids[1] not in html
    assert (await c.get("/console/jobs?status=NOPE")).status_code == 422
    assert (await c.get("/console/jobs?model=other")).text.count("data-job=") == 0


async def test_admin_creates_keys_and_join_tokens_shown_once(
    browser: Browser, api_key: Callable[..., str], services: Services
) -> None:
    c = await browser(api_key("admin", "default"))
    r = await c.post(
        "/console/admin/api-keys",
        data={"csrf": c.csrf, "tenant": "globex", "role": "viewer", "name": "ops"},
    )
    assert r.status_code == 200
    key = r.text.split('id="created-key-value">')[1].split("<")[0]
    assert services.auth.exchange_api_key(key).access_token
    assert key not in (await c.get("/console/admin")).text  # shown once
    key_id = key[len("gf_") :].rpartition("_")[0]
    row = r.text.split(f'<tr data-key="{key_id}">')[1].split("</tr>")[0]
    assert "globex" in row and "viewer" in row and "ops" in row and "Revoke" in row
    assert "secret_hash" not in r.text and key.rpartition("_")[2] not in row
    r = await c.post("/console/admin/api-keys/revoke", data={"csrf": c.csrf, "key_id": key_id})
    assert r.status_code == 200 and "is revoked" in r.text
    row = r.text.split(f'<tr data-key="{key_id}">')[1].split("</tr>")[0]
    assert "revoked" in row and "Revoke" not in row
    r = await c.post(
        "/console/admin/api-keys", data={"csrf": c.csrf, "tenant": "Bad Name!", "role": "user"}
    )
    assert r.status_code == 422 and "tenant" in r.text
    r = await c.post(
        "/console/admin/join-tokens",
        data={"csrf": c.csrf, "region": "eu-west-1", "labels": "gpu=a100", "expires_in_s": "600"},
    )
    assert r.status_code == 200 and "gfj_" in r.text and "registers 1 runner(s)" in r.text
    r = await c.post(
        "/console/admin/join-tokens",
        data={"csrf": c.csrf, "region": "default", "labels": "", "max_uses": "3"},
    )
    assert r.status_code == 200 and "registers 3 runner(s)" in r.text
    r = await c.post("/console/admin/webhook-secret", data={"csrf": c.csrf})
    assert r.status_code == 200 and 'id="webhook-secret"' in r.text


async def test_a_user_rotates_the_webhook_secret_but_cannot_make_keys(
    browser: Browser, api_key: Callable[..., str]
) -> None:
    c = await browser(api_key("user", "acme"))
    html = (await c.get("/console/admin")).text
    assert "create-key-form" not in html and "rotate-form" in html
    r = await c.post(
        "/console/admin/api-keys", data={"csrf": c.csrf, "tenant": "acme", "role": "admin"}
    )
    assert r.status_code == 403


async def test_static_files_are_served_with_their_licences(client: httpx.AsyncClient) -> None:
    for path in (
        "/console/static/vendor/htmx.org-2.0.11/htmx.min.js",
        "/console/static/vendor/htmx.org-2.0.11/LICENSE",
        "/console/static/vendor/uplot-1.6.32/uPlot.iife.min.js",
        "/console/static/vendor/uplot-1.6.32/LICENSE",
        "/console/static/console.css",
    ):
        assert (await client.get(path)).status_code == 200, path


async def test_the_bare_prefix_leads_to_the_fleet(
    browser: Browser, api_key: Callable[..., str]
) -> None:
    c = await browser(api_key("user"))
    for path in ("/console", "/console/"):
        r = await c.get(path)
        assert r.status_code == 200 and str(r.url).endswith("/console/fleet"), path


async def test_charts_come_from_the_shared_rollups(
    browser: Browser,
    api_key: Callable[..., str],
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
    services: Services,
) -> None:
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    job_id = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()["id"]
    await client.post(f"/v1/jobs/{job_id}/cancel", headers=user)
    assert services.rollups is not None
    services.rollups.flush()
    c = await browser(api_key("user", "acme"))
    html = (await c.get("/console/charts")).text
    assert 'data-chart="jobs"' in html and 'data-chart="gpu"' not in html
    assert "vendor/uplot-1.6.32/uPlot.iife.min.js" in html
    data = (await c.get("/console/charts/data?kind=jobs&window=hour")).json()
    totals = {s["label"]: sum(s["values"]) for s in data["series"]}
    assert totals == {"SUBMITTED": 1, "CANCELLED": 1} and len(data["x"]) == 60
    assert (await c.get("/console/charts/data?kind=gpu&window=hour")).status_code == 403
    assert (await c.get("/console/charts/data?kind=jobs&window=year")).status_code == 422
    other = await browser(api_key("user", "globex"))
    data = (await other.get("/console/charts/data?kind=jobs&window=day")).json()
    assert data["series"] == [] and len(data["x"]) == 1440
    admin = await browser(api_key("admin", "default"))
    html = (await admin.get("/console/charts?window=day")).text
    assert all(f'data-chart="{k}"' in html for k in ("jobs", "queue", "gpu"))


async def test_job_page_previews_inputs_and_jobs_filter_by_time(
    browser: Browser, api_key: Callable[..., str], client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    job_id = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()["id"]
    c = await browser(api_key("user", "acme"))
    html = (await c.get(f"/console/jobs/{job_id}")).text
    assert 'data-input="INPUT0"' in html and "[1, 2, 3, 4]" in html
    assert job_id in (await c.get("/console/jobs?since=15m")).text
    r = await c.get("/console/jobs?since=1y")
    assert r.status_code == 422 and "since must be one of" in r.text
