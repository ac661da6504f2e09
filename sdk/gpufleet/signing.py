"""HMAC request signing of runner calls (api-v1 "Runners"), shared by the runner and the
control plane.

signature = HMAC-SHA256(secret, METHOD "\n" PATH "\n" QUERY "\n" TIMESTAMP "\n" NONCE "\n"
hex(sha256(body))), sent as ``X-Gpufleet-Signature: v1=<hex>``. QUERY is the query string
with its parameters sorted (empty if none).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qsl, urlencode

HEADER_RUNNER = "X-Gpufleet-Runner"
HEADER_TIMESTAMP = "X-Gpufleet-Timestamp"
HEADER_NONCE = "X-Gpufleet-Nonce"
HEADER_SIGNATURE = "X-Gpufleet-Signature"
SIGNATURE_PREFIX = "v1="
TIMESTAMP_WINDOW_S = 300
MIN_NONCE_LENGTH = 16


def canonical_query(query: str) -> str:
    """The query string with its parameters sorted (by name, then value)."""
    if not query:
        return ""
    return urlencode(sorted(parse_qsl(query, keep_blank_values=True)))


def string_to_sign(
    method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    return "\n".join(
        [
            method.upper(),
            path,
            canonical_query(query),
            timestamp,
            nonce,
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()


def compute_signature(
    secret: str, method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes
) -> str:
    mac = hmac.new(
        secret.encode(), string_to_sign(method, path, query, timestamp, nonce, body), "sha256"
    )
    return SIGNATURE_PREFIX + mac.hexdigest()


def sign_headers(
    runner_id: str,
    secret: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that sign one runner call."""
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_urlsafe(18)
    return {
        HEADER_RUNNER: runner_id,
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: compute_signature(secret, method, path, query, ts, nonce, body),
    }


def signature_matches(expected: str, presented: str) -> bool:
    """Constant-time comparison of two signatures."""
    return hmac.compare_digest(expected.encode(), presented.encode())
