"""Standard Webhooks signing: the control plane's secrets and delivery header, signed and
verified by the one implementation (the SDK's ``gpufleet.webhooks``)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from gpufleet import WebhookVerificationError
from gpufleet.webhooks import sign_webhook, verify_webhook, webhook_signature_header

from control_plane.services.webhooks import new_secret


def test_new_secret_is_whsec_base64_of_32_bytes() -> None:
    s = new_secret()
    assert s.startswith("whsec_")
    assert len(base64.b64decode(s.removeprefix("whsec_"), validate=True)) == 32
    assert new_secret() != s


def test_signature_matches_the_standard_construction() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"type":"job.completed"}'
    expected = hmac.new(b"k" * 32, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    assert sign_webhook("msg_1", 1700000000, body, secret) == (
        "v1," + base64.b64encode(expected).decode()
    )
    assert webhook_signature_header("msg_1", 1700000000, body, [secret]) == (
        "v1," + base64.b64encode(expected).decode()
    )


def test_verify_accepts_any_listed_signature_and_rejects_others() -> None:
    old, new, other = new_secret(), new_secret(), new_secret()
    body = b"{}"
    headers = {
        "Webhook-Id": "msg_x",
        "webhook-timestamp": "1000",
        "webhook-signature": webhook_signature_header("msg_x", 1000, body, [new, old]),
    }
    assert len(headers["webhook-signature"].split()) == 2
    assert verify_webhook(headers, body, new, now=1000) == {}
    assert verify_webhook(headers, body, old, now=1001) == {}
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify_webhook(headers, body, other, now=1000)
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify_webhook(headers, b"{ }", new, now=1000)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(headers, body, new, now=1000 + 301)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook({"webhook-id": "m"}, body, new, now=1000)


def test_signing_needs_a_secret_and_valid_base64() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        webhook_signature_header("m", 1, b"", [])
    with pytest.raises(WebhookVerificationError, match="base64"):
        sign_webhook("m", 1, b"", "whsec_***")
