"""verify_webhook per Standard Webhooks: valid, tampered, stale, rotated, malformed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from gpufleet import WebhookVerificationError, verify_webhook
from gpufleet.webhooks import sign_webhook

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-another-secret!!!").decode()
BODY = json.dumps({"type": "job.completed", "data": {"id": "job_1"}}).encode()
NOW = 1_700_000_000


def _headers(secret: str = SECRET, ts: int = NOW, body: bytes = BODY) -> dict[str, str]:
    return {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(ts),
        "Webhook-Signature": sign_webhook("msg_1", ts, body, secret),
    }


def test_signature_matches_the_spec_computed_independently() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, b"msg_1.%d." % NOW + BODY, hashlib.sha256).digest()
    assert sign_webhook("msg_1", NOW, BODY, SECRET) == "v1," + base64.b64encode(mac).decode()


def test_valid_delivery_returns_the_payload() -> None:
    assert verify_webhook(_headers(), BODY, SECRET, now=NOW + 10)["data"]["id"] == "job_1"
    assert verify_webhook(_headers(), BODY.decode(), SECRET, now=NOW)["type"] == "job.completed"


def test_any_of_several_signatures_may_match_during_rotation() -> None:
    headers = _headers()
    headers["Webhook-Signature"] = (
        f"{sign_webhook('msg_1', NOW, BODY, OTHER)} v2,zzz " + headers["Webhook-Signature"]
    )
    assert verify_webhook(headers, BODY, SECRET, now=NOW)
    assert verify_webhook(headers, BODY, OTHER, now=NOW)


@pytest.mark.parametrize(
    ("headers", "body", "secret", "now", "match"),
    [
        (_headers(), BODY + b" ", SECRET, NOW, "no matching signature"),
        (_headers(), BODY, OTHER, NOW, "no matching signature"),
        (_headers(), BODY, SECRET, NOW + 301, "tolerance"),
        (_headers(), BODY, SECRET, NOW - 301, "tolerance"),
        ({"webhook-id": "m", "webhook-timestamp": str(NOW)}, BODY, SECRET, NOW, "missing"),
        ({**_headers(), "Webhook-Timestamp": "soon"}, BODY, SECRET, NOW, "integer"),
        (_headers(), BODY, "whsec_***", NOW, "base64"),
    ],
)
def test_rejections(
    headers: dict[str, str], body: bytes, secret: str, now: int, match: str
) -> None:
    with pytest.raises(WebhookVerificationError, match=match):
        verify_webhook(headers, body, secret, now=now)


def test_signed_with_another_id_fails() -> None:
    headers = {**_headers(), "Webhook-Id": "msg_2"}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, BODY, SECRET, now=NOW)
