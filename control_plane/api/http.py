"""Parsing and serialising helpers shared by the route modules."""

from __future__ import annotations

from typing import TypeVar

from gpufleet.wire import API_VERSION
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from control_plane.api import jsonbody
from control_plane.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def parse_body(body: bytes, model: type[M], *, required: bool = False) -> M:
    """Validate a JSON body against a wire model (422 on malformed JSON, wrong api_version,
    wrong types or unknown fields; pydantic errors become field details in the handler).
    An empty body is ``{}`` unless ``required`` (a PUT replacing a resource: a missing body
    must not store the defaults)."""
    if not body.strip():
        if required:
            raise InvalidRequest("a JSON body is required", field="body")
        data: object = {}
    else:
        data = jsonbody.loads(body)
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    version = data.get("api_version", API_VERSION)
    if version != API_VERSION:
        raise InvalidRequest(f"unsupported api_version {version!r}; use 'v1'", "api_version")
    # strict: JSON types as the schema says them (no true for a number, no "5" for 5)
    return model.model_validate(data, strict=True)


async def read_model(request: Request, model: type[M], *, required: bool = False) -> M:
    """Read (within the body limit) and validate the request body."""
    return parse_body(await request.body(), model, required=required)


_JSON = (b"content-type", b"application/json")


class JsonBody(Response):
    """``Response(body, status, media_type="application/json")`` (the same body, status and
    headers) built without ``render`` and ``init_headers``: one per JSON answer."""

    media_type = "application/json"

    def __init__(self, body: str, status_code: int = 200) -> None:
        data = body.encode()
        self.status_code = status_code
        self.background = None
        self.body = data
        if status_code < 200 or status_code in (204, 304):  # no Content-Length (Starlette)
            self.raw_headers = [_JSON]
        else:
            self.raw_headers = [(b"content-length", str(len(data)).encode()), _JSON]


def send(model: BaseModel, status: int = 200) -> Response:
    """Serialise a response model."""
    return JsonBody(model.model_dump_json(), status)


def header(request: Request, name: bytes) -> str | None:
    """The request's first ``name`` header (lower-case), as ``request.headers.get`` reads
    it, without building ``request.headers``."""
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def query_value(request: Request, name: str) -> str | None:
    """``request.query_params.get(name)``: the last value of ``name`` in the query string.
    A query string without escapes (``%``, ``+``) is read without building the parsed
    ``QueryParams``."""
    raw: bytes = request.scope["query_string"]
    if b"%" in raw or b"+" in raw:
        return request.query_params.get(name)
    found = None
    for pair in raw.decode("latin-1").split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            found = value
    return found


def query_float(request: Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = query_value(request, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a number", field=name) from exc
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo:g} and {hi:g}", field=name)
    return value


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = query_value(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an integer", field=name) from exc
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}", field=name)
    return value
