"""Standard Webhooks signing: secrets, signatures, verification (and the SDK agreeing)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from control_plane.services.webhook_signing import (
    SignatureError,
    decode_secret,
    new_secret,
    sign,
    signature_header,
    verify_signature,
)


def test_new_secret_is_whsec_base64_of_32_bytes() -> None:
    s = new_secret()
    assert s.startswith("whsec_")
    assert len(decode_secret(s)) == 32
    assert new_secret() != s


def test_signature_matches_the_standard_construction() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"type":"job.completed"}'
    expected = hmac.new(b"k" * 32, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    assert sign("msg_1", 1700000000, body, secret) == "v1," + base64.b64encode(expected).decode()


def test_verify_accepts_any_listed_signature_and_rejects_others() -> None:
    old, new, other = new_secret(), new_secret(), new_secret()
    body = b"{}"
    headers = {
        "Webhook-Id": "msg_x",
        "webhook-timestamp": "1000",
        "webhook-signature": signature_header("msg_x", 1000, body, [new, old]),
    }
    assert verify_signature(headers, body, new, now=1000) == "msg_x"
    assert verify_signature(headers, body, old, now=1001) == "msg_x"
    with pytest.raises(SignatureError, match="no matching"):
        verify_signature(headers, body, other, now=1000)
    with pytest.raises(SignatureError, match="no matching"):
        verify_signature(headers, b"{ }", new, now=1000)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature(headers, body, new, now=1000 + 301)
    with pytest.raises(SignatureError, match="missing"):
        verify_signature({"webhook-id": "m"}, body, new, now=1000)


def test_sdk_verifier_agrees() -> None:
    sdk = pytest.importorskip("gpufleet.webhooks")
    secret = new_secret()
    body = b'{"type":"job.completed","timestamp":"t","data":{}}'
    headers = {
        "webhook-id": "msg_y",
        "webhook-timestamp": "2000",
        "webhook-signature": signature_header("msg_y", 2000, body, [secret]),
    }
    assert sdk.verify_webhook(headers, body, secret, now=2000)["type"] == "job.completed"


def test_signing_needs_a_secret_and_valid_base64() -> None:
    with pytest.raises(ValueError):
        signature_header("m", 1, b"", [])
    with pytest.raises(SignatureError):
        decode_secret("whsec_***")
