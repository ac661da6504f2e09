"""boto3 clients built from settings, and translation of botocore errors at the boundary."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from control_plane.errors import Unavailable
from control_plane.settings import Settings
from control_plane.storage import budget

_UNAVAILABLE_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "SlowDown",
    "ResourceNotFoundException",
}


def make_clients(settings: Settings) -> tuple[Any, Any]:
    """(dynamodb client, s3 client) for the endpoints in the settings."""
    cfg = Config(  # every call has a deadline: a stalled store answers 503, not a hang
        retries={"total_max_attempts": settings.storage_max_attempts, "mode": "standard"},
        connect_timeout=settings.storage_connect_timeout_s,
        read_timeout=settings.storage_read_timeout_s,
        max_pool_connections=64,
        s3={"addressing_style": "path"},
    )
    session = boto3.session.Session(region_name=settings.aws_region)
    dynamodb = session.client("dynamodb", endpoint_url=settings.dynamodb_endpoint_url, config=cfg)
    s3 = session.client("s3", endpoint_url=settings.s3_endpoint_url, config=cfg)
    return dynamodb, s3


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_condition_failure(exc: ClientError) -> bool:
    """A failed ``ConditionExpression``, or a transaction cancelled only by failed conditions:
    the expected outcome of a lost race, which adapters answer with False/None/Conflict."""
    code = error_code(exc)
    if code == "ConditionalCheckFailedException":
        return True
    if code != "TransactionCanceledException":
        return False
    reasons = exc.response.get("CancellationReasons") or []
    codes = {r.get("Code") for r in reasons} - {"None", None}
    return not reasons or codes <= {"ConditionalCheckFailed"}


def try_conditional(call: Callable[..., dict[str, Any]], /, **kwargs: Any) -> dict[str, Any] | None:
    """``call(**kwargs)`` (a conditional DynamoDB write); None when its condition failed.

    For use inside a ``translate_errors`` block that also holds other calls; any other
    ClientError propagates (``translate_errors`` turns it into ``Unavailable``)."""
    try:
        return call(**kwargs)
    except ClientError as exc:
        if is_condition_failure(exc):
            return None
        raise


def conditional_write(
    what: str, call: Callable[..., dict[str, Any]], /, **kwargs: Any
) -> dict[str, Any] | None:
    """One conditional DynamoDB write: ``call(**kwargs)`` under ``translate_errors(what)``;
    its response, or None when its condition failed (a lost race)."""
    with translate_errors(what):
        return try_conditional(call, **kwargs)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn storage outages into ``Unavailable``; other ClientErrors propagate for the adapter.

    Adapters catch the ClientErrors they understand (conditional-check failures, cancelled
    transactions) inside this block and raise domain errors; anything else that escapes
    becomes ``Unavailable`` so no botocore error reaches a handler.
    """
    try:
        with budget.charge(what):
            yield
    except ClientError as exc:
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            raise Unavailable(
                f"storage error during {what}: a table does not exist (the store lost its "
                "schema: create the tables again, or restore them)"
            ) from exc
        raise Unavailable(f"storage error during {what}: {code}") from exc
    except BotoCoreError as exc:
        raise Unavailable(f"storage unreachable during {what}: {exc}") from exc
