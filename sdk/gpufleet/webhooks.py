"""Verify webhook deliveries (Standard Webhooks).

A delivery carries ``webhook-id``, ``webhook-timestamp`` (unix seconds) and
``webhook-signature: v1,<base64>`` (several space-separated while a secret rotates), where
the signature is HMAC-SHA256 over ``"{id}.{timestamp}.{body}"`` keyed with the base64-decoded
part of the tenant's ``whsec_…`` secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from gpufleet.errors import WebhookVerificationError

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SECRET_PREFIX",
    "sign_webhook",
    "verify_webhook",
    "webhook_signature_header",
]

DEFAULT_TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("the webhook secret is not valid base64") from exc


def sign_webhook(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """The ``v1,<base64>`` signature of one delivery (what the control plane sends)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def webhook_signature_header(
    msg_id: str, timestamp: int, body: bytes, secrets: Iterable[str]
) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated (two while
    a rotated-out secret is in its grace period)."""
    sigs = [sign_webhook(msg_id, timestamp, body, s) for s in secrets]
    if not sigs:
        raise ValueError("at least one secret is needed to sign a delivery")
    return " ".join(sigs)


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """Check a delivery's signature and timestamp; return its parsed JSON body.

    ``headers`` is any mapping (names are matched case-insensitively); ``body`` the raw
    request body exactly as received. Raises
    :class:`~gpufleet.errors.WebhookVerificationError` when the headers are missing, the
    timestamp is more than ``tolerance_s`` away from ``now``, or no signature matches.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    msg_id = _header(headers, "webhook-id")
    ts_text = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(ts_text)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    expected = sign_webhook(msg_id, timestamp, raw, secret)
    for candidate in signatures.split():
        version, _, _ = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode(), expected.encode()):
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise WebhookVerificationError("the body is not JSON") from exc
    raise WebhookVerificationError("no matching signature")
