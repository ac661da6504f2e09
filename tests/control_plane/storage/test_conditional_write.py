"""The one conditional-write helper of the DynamoDB adapters: a lost condition (or a
transaction cancelled only by lost conditions) is None; every other error is Unavailable."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from control_plane.errors import Unavailable
from control_plane.storage.aws import conditional_write, is_condition_failure, try_conditional


def _error(code: str, reasons: list[dict[str, Any]] | None = None) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": code}}
    if reasons is not None:
        response["CancellationReasons"] = reasons
    return ClientError(response, "PutItem")  # type: ignore[arg-type]


def _raising(exc: Exception) -> Any:
    def call(**kwargs: Any) -> dict[str, Any]:
        raise exc

    return call


def test_the_response_comes_back_with_the_arguments_passed_through() -> None:
    seen: dict[str, Any] = {}

    def put(**kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {"Attributes": {"id": {"S": "x"}}}

    out = conditional_write("put x", put, TableName="t", ConditionExpression="c")
    assert out == {"Attributes": {"id": {"S": "x"}}}
    assert seen == {"TableName": "t", "ConditionExpression": "c"}


@pytest.mark.parametrize(
    "exc",
    [
        _error("ConditionalCheckFailedException"),
        _error(
            "TransactionCanceledException", [{"Code": "None"}, {"Code": "ConditionalCheckFailed"}]
        ),
        _error("TransactionCanceledException", []),
    ],
)
def test_a_lost_condition_is_none(exc: ClientError) -> None:
    assert is_condition_failure(exc)
    assert conditional_write("put x", _raising(exc)) is None
    assert try_conditional(_raising(exc)) is None


@pytest.mark.parametrize(
    "exc",
    [
        _error("ProvisionedThroughputExceededException"),
        _error("ValidationException"),
        _error("TransactionCanceledException", [{"Code": "TransactionConflict"}]),
        _error(
            "TransactionCanceledException",
            [{"Code": "ConditionalCheckFailed"}, {"Code": "ThrottlingError"}],
        ),
    ],
)
def test_other_errors_are_unavailable_naming_the_write(exc: ClientError) -> None:
    assert not is_condition_failure(exc)
    with pytest.raises(Unavailable, match="put x"):
        conditional_write("put x", _raising(exc))
    with pytest.raises(ClientError):  # try_conditional leaves them to translate_errors
        try_conditional(_raising(exc))
