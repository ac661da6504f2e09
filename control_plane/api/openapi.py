"""OpenAPI 3.1 document built from the route table and the pydantic wire models."""

from __future__ import annotations

import re
from typing import Any, Literal

from gpufleet import signing
from gpufleet.wire import ErrorBody
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute, Route

from control_plane.api.spec import DocumentedRoute, RouteSpec

_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")

SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "Access token from POST /v1/auth/token (EdDSA or ES256 with a kid, keys at "
            "GET /v1/auth/jwks; or HS256; typ at+jwt, ~15 min)."
        ),
    },
    "runnerId": {"type": "apiKey", "in": "header", "name": signing.HEADER_RUNNER},
    "runnerTimestamp": {"type": "apiKey", "in": "header", "name": signing.HEADER_TIMESTAMP},
    "runnerNonce": {"type": "apiKey", "in": "header", "name": signing.HEADER_NONCE},
    "runnerSignature": {
        "type": "apiKey",
        "in": "header",
        "name": signing.HEADER_SIGNATURE,
        "description": "v1=hex(HMAC-SHA256(secret, METHOD\\nPATH\\nSORTED_QUERY\\nTIMESTAMP\\n"
        "NONCE\\nhex(sha256(body)))); timestamp within 300 s; nonce used once.",
    },
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "bearer": [{"bearerAuth": []}],
    "runner": [{"runnerId": [], "runnerTimestamp": [], "runnerNonce": [], "runnerSignature": []}],
    "none": [],
}


def _schemas(specs: list[RouteSpec]) -> tuple[dict[tuple[Any, str], Any], Any]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorBody, "serialization"): None
    }
    for s in specs:
        if s.error is not None:
            wanted[(s.error, "serialization")] = None
        if s.request is not None:
            wanted[(s.request, "validation")] = None
        if s.response is not None:
            wanted[(s.response, "serialization")] = None
    refs, defs = models_json_schema(list(wanted), ref_template=_REF)
    return {(m, mode): v for (m, mode), v in refs.items()}, defs.get("$defs", {})


def _json(schema: Any) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation_id(spec: RouteSpec) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", spec.path.lower()).strip("_")
    return f"{spec.method.lower()}_{slug}"


def _operation(spec: RouteSpec, refs: dict[tuple[Any, str], Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in _PARAM.findall(spec.path)
    ]
    params += [
        {
            "name": n,
            "in": "query",
            "required": False,
            "description": d,
            "schema": {"type": "string"},
        }
        for n, d in spec.query.items()
    ]
    params += [
        {
            "name": n,
            "in": "header",
            "required": False,
            "description": d,
            "schema": {"type": "string"},
        }
        for n, d in spec.headers.items()
    ]
    if spec.response is not None:
        schema = refs[(spec.response, "serialization")]
        ok: dict[str, Any] = {
            "description": spec.summary,
            # An event stream names the model of its events' data (streaming routes).
            "content": _json(schema)
            if spec.content_type == "application/json"
            else {spec.content_type: {"schema": schema}},
        }
    elif spec.content_type != "application/json":
        ok = {
            "description": spec.summary,
            "content": {spec.content_type: {"schema": {"type": "string"}}},
        }
    else:
        ok = {"description": spec.summary, "content": _json({"type": "object"})}
    op: dict[str, Any] = {
        "summary": spec.summary,
        "operationId": _operation_id(spec),
        "parameters": params,
        "responses": {
            str(spec.status): ok,
            "default": {
                "description": "Error",
                "content": _json(refs[(spec.error or ErrorBody, "serialization")]),
            },
        },
        "security": _SECURITY[spec.security],
    }
    if spec.request is not None:
        # An empty body is read as {} (http.parse_body): the body is required only when the
        # model has a required field or the route refuses an empty body (``body_required``).
        required = spec.body_required or any(
            f.is_required() for f in spec.request.model_fields.values()
        )
        op["requestBody"] = {
            "required": required,
            "content": _json(refs[(spec.request, "validation")]),
        }
    return op


def build_openapi(routes: list[BaseRoute], version: str) -> dict[str, Any]:
    """The OpenAPI document of every route in ``routes``."""
    specs: list[RouteSpec] = []
    for r in routes:
        if isinstance(r, DocumentedRoute):
            specs.append(r.spec)
        elif isinstance(r, Route):
            for m in sorted((r.methods or set()) - {"HEAD"}):
                specs.append(RouteSpec(r.path, m, r.name, None, security="none"))
    refs, defs = _schemas(specs)
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        path = _PARAM.sub(r"{\1}", spec.path)  # OpenAPI templates: {key}, not {key:path}
        paths.setdefault(path, {})[spec.method.lower()] = _operation(spec, refs)
    method: Literal["3.1.0"] = "3.1.0"
    return {
        "openapi": method,
        "info": {
            "title": "gpufleet control plane",
            "version": version,
            "description": "Every JSON body carries api_version 'v1'. Errors: "
            '{"api_version":"v1","error":{"code","message","details"}}.',
        },
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": SECURITY_SCHEMES},
    }
