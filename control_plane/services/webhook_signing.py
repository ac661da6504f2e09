"""Standard Webhooks signing: tenant secrets (``whsec_<base64>``) and delivery signatures.

A delivery carries ``webhook-id``, ``webhook-timestamp`` (unix seconds) and
``webhook-signature``: one ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` per
valid secret, space-separated (two while a rotated-out secret is in its grace period). The
key is the base64-decoded part of the secret after ``whsec_``.

``verify_signature`` is the receiver's side; the control plane uses it only in tests and
docs, the SDK has its own (``gpufleet.webhooks.verify_webhook``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret
SECRET_BYTES = 32
SIGNATURE_VERSION = "v1"

__all__ = [
    "SECRET_PREFIX",
    "SignatureError",
    "decode_secret",
    "new_secret",
    "sign",
    "signature_header",
    "verify_signature",
]


class SignatureError(ValueError):
    """A delivery whose headers, timestamp or signature do not verify."""


def new_secret() -> str:
    """A fresh tenant signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret (the prefix is optional)."""
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("the webhook secret is not valid base64") from exc


def sign(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """``v1,<base64>``: the signature of one delivery under one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION}," + base64.b64encode(mac).decode()


def signature_header(msg_id: str, timestamp: int, body: bytes, secrets_: Iterable[str]) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    sigs = [sign(msg_id, timestamp, body, s) for s in secrets_]
    if not sigs:
        raise ValueError("at least one secret is needed to sign a delivery")
    return " ".join(sigs)


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise SignatureError(f"missing header {name}")


def verify_signature(
    headers: Mapping[str, str], body: bytes, secret: str, *, now: float, tolerance_s: int = 300
) -> str:
    """Check one delivery against ``secret``; return its ``webhook-id``.

    Raises ``SignatureError`` when a header is missing, the timestamp is more than
    ``tolerance_s`` from ``now`` or no ``v1`` signature in the header matches.
    """
    msg_id = _header(headers, "webhook-id")
    ts_text = _header(headers, "webhook-timestamp")
    try:
        timestamp = int(ts_text)
    except ValueError as exc:
        raise SignatureError("webhook-timestamp is not an integer") from exc
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError("webhook-timestamp is outside the tolerance")
    expected = sign(msg_id, timestamp, body, secret).encode()
    for candidate in _header(headers, "webhook-signature").split():
        if hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise SignatureError("no matching signature")
