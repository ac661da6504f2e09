"""Auth routes: token exchange and refresh, JWKS, admin API keys and join tokens."""

from __future__ import annotations

from gpufleet.wire import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyRotate,
    ApiKeyRotated,
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenList,
    RefreshRequest,
    Response,
    TokenPair,
    TokenRequest,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.context import services
from control_plane.api.http import read_model, send
from control_plane.api.security import client_address, principal
from control_plane.api.spec import DocumentedRoute, route


class Jwks(Response):
    """JSON Web Key Set: the public keys that verify access tokens (unless HS256) and
    direct-mode tickets, the current one first (docs/direct.md)."""

    keys: list[dict[str, str]]


class Revoked(Response):
    id: str
    revoked: bool = True


async def token(request: Request) -> HttpResponse:
    req = await read_model(request, TokenRequest)
    auth, client = services(request).auth, client_address(request)
    return send(await run_in_threadpool(auth.exchange_api_key, req.api_key, client))


async def refresh(request: Request) -> HttpResponse:
    req = await read_model(request, RefreshRequest)
    auth, client = services(request).auth, client_address(request)
    return send(await run_in_threadpool(auth.refresh, req.refresh_token, client))


async def jwks(request: Request) -> HttpResponse:
    keys = services(request).signing_keys
    found = await run_in_threadpool(keys.jwks) if keys is not None else []
    return HttpResponse(
        Jwks(keys=found).model_dump_json(),
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=60"},
    )


async def create_api_key(request: Request) -> HttpResponse:
    p = principal(request)
    req = await read_model(request, ApiKeyCreate)
    return send(await run_in_threadpool(services(request).auth.create_api_key, p, req), 201)


async def revoke_api_key(request: Request) -> HttpResponse:
    p = principal(request)
    key_id = request.path_params["key_id"]
    await run_in_threadpool(services(request).auth.revoke_api_key, p, key_id)
    return send(Revoked(id=key_id))


async def rotate_api_key(request: Request) -> HttpResponse:
    p = principal(request)
    req = await read_model(request, ApiKeyRotate)
    key_id = request.path_params["key_id"]
    return send(await run_in_threadpool(services(request).auth.rotate_api_key, p, key_id, req))


async def list_api_keys(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(services(request).auth.list_api_keys, p))


async def list_join_tokens(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(services(request).auth.list_join_tokens, p))


async def revoke_join_token(request: Request) -> HttpResponse:
    p = principal(request)
    token_id = request.path_params["token_id"]
    await run_in_threadpool(services(request).auth.revoke_join_token, p, token_id)
    return send(Revoked(id=token_id))


async def create_join_token(request: Request) -> HttpResponse:
    p = principal(request)
    req = await read_model(request, JoinTokenCreate)
    return send(await run_in_threadpool(services(request).auth.create_join_token, p, req), 201)


ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/auth/token",
        token,
        "Exchange an API key for a token pair",
        TokenPair,
        request=TokenRequest,
        security="none",
    ),
    route(
        "POST",
        "/v1/auth/refresh",
        refresh,
        "Rotate a refresh token",
        TokenPair,
        request=RefreshRequest,
        security="none",
    ),
    route("GET", "/v1/auth/jwks", jwks, "Public signing keys (JWKS)", Jwks, security="none"),
    route(
        "POST",
        "/v1/admin/api-keys",
        create_api_key,
        "Create an API key (admin)",
        ApiKeyCreated,
        status=201,
        request=ApiKeyCreate,
    ),
    route("GET", "/v1/admin/api-keys", list_api_keys, "List API keys (admin)", ApiKeyList),
    route(
        "DELETE",
        "/v1/admin/api-keys/{key_id}",
        revoke_api_key,
        "Revoke an API key (admin)",
        Revoked,
    ),
    route(
        "POST",
        "/v1/admin/api-keys/{key_id}/rotate",
        rotate_api_key,
        "Rotate an API key's secret; the old one works until old_valid_for_s passes (admin, "
        "or the key itself)",
        ApiKeyRotated,
        request=ApiKeyRotate,
        scope="",  # an admin or the key itself: checked by the service
    ),
    route(
        "POST",
        "/v1/admin/join-tokens",
        create_join_token,
        "Create a runner join token (admin)",
        JoinTokenCreated,
        status=201,
        request=JoinTokenCreate,
    ),
    route(
        "GET", "/v1/admin/join-tokens", list_join_tokens, "List join tokens (admin)", JoinTokenList
    ),
    route(
        "DELETE",
        "/v1/admin/join-tokens/{token_id}",
        revoke_join_token,
        "Revoke a join token (admin): it registers no more runners",
        Revoked,
    ),
]
