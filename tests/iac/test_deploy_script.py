"""The pieces of scripts/deploy_control_plane.py that run without AWS: code zip, upload, CLI."""

from __future__ import annotations

import zipfile
from pathlib import Path

import boto3
import pytest

from control_plane.settings import Settings
from scripts import deploy_control_plane as deploy_script


def test_lambda_requirements_leave_out_what_lambda_does_not_need() -> None:
    reqs = deploy_script.lambda_requirements()
    names = {deploy_script._requirement_name(r) for r in reqs}
    assert {"starlette", "boto3", "pydantic-settings", "mangum", "pyjwt"} <= names
    assert not names & deploy_script.LAMBDA_EXCLUDE
    assert all("[" not in r for r in reqs if r.startswith("tritonclient"))


def _site(root: Path) -> Path:
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("X = 1\n")
    (root / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    return root


def test_zip_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    site = _site(tmp_path / "site")
    a = deploy_script.zip_directory(site, tmp_path / "a.zip")
    (site / "pkg" / "__init__.py").touch()  # a new mtime changes nothing
    b = deploy_script.zip_directory(site, tmp_path / "b.zip")
    assert a.read_bytes() == b.read_bytes()
    assert zipfile.ZipFile(a).namelist() == ["pkg/__init__.py"]


def test_zip_over_the_lambda_limit_is_refused(tmp_path: Path) -> None:
    site = _site(tmp_path / "site")
    with pytest.raises(SystemExit, match=r"ecs\.yaml"):
        deploy_script.zip_directory(site, tmp_path / "a.zip", limit=3)
    assert deploy_script.LAMBDA_UNZIPPED_LIMIT == 250 * 2**20


def test_upload_is_content_addressed(tmp_path: Path, settings: Settings, aws: object) -> None:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
    site = _site(tmp_path / "site")
    zip_path = deploy_script.zip_directory(site, tmp_path / "a.zip")
    key = deploy_script.upload_code(s3, settings.bucket, zip_path)
    assert key.startswith("deploy/control-plane-") and key.endswith(".zip")
    assert deploy_script.upload_code(s3, settings.bucket, zip_path) == key
    body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    assert body == zip_path.read_bytes()
    (site / "pkg" / "__init__.py").write_text("X = 2\n")
    other = deploy_script.zip_directory(site, tmp_path / "b.zip")
    assert deploy_script.upload_code(s3, settings.bucket, other) != key


def test_instructions_name_the_url_and_the_bootstrap() -> None:
    text = deploy_script.admin_key_instructions("prod", "eu-west-1", "https://x.example")
    assert "https://x.example" in text
    assert "scripts/create_admin_key.py --stack prod --region eu-west-1" in text


def test_param_pairs() -> None:
    assert deploy_script._pairs(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(SystemExit):
        deploy_script._pairs(["nope"])
