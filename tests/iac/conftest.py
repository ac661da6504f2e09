"""The IaC tests are about DynamoDB tables and an S3 bucket: ``settings``/``aws`` on moto."""

from __future__ import annotations

import pytest


@pytest.fixture
def store_kind() -> str:
    return "dynamodb"
