"""Deploy the control plane to AWS with CloudFormation (``make deploy-control-plane STACK=…``).

1. ``<stack>-data``    iac/data.yaml: the tables and the bucket (created or updated, waited on);
2. the code zip        the ``gpufleet`` and ``gpufleet-control-plane`` wheels (distributions/)
                       and their requirements for the Lambda runtime and architecture,
                       uploaded to ``s3://<bucket>/deploy/control-plane-<sha256>.zip``;
3. ``<stack>-compute`` iac/compute.yaml: Lambda + HTTP API + role, pointed at the data stack;
4. prints the API URL and how to create the first admin key.

    python scripts/deploy_control_plane.py --stack prod [--region eu-west-1] [--bucket NAME]
        [--table-prefix P] [--jwt-secret-arn ARN] [--param QueueShards=8 …] [--code-zip Z]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[1]
IAC = ROOT / "iac"
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
# Not needed inside Lambda (and they would push the code over 250 MiB): the embedded moto
# server, the uvicorn server, tritonclient's HTTP client stack (its model-config code stays).
LAMBDA_EXCLUDE = {"moto", "uvicorn"}
LAMBDA_STRIP_EXTRAS = {"tritonclient"}


@dataclass(frozen=True)
class Deployment:
    """What a deploy produced."""

    data_outputs: dict[str, str]
    compute_outputs: dict[str, str]

    @property
    def api_url(self) -> str:
        return self.compute_outputs.get("ApiUrl", "")


def stack_outputs(cfn: Any, name: str) -> dict[str, str]:
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _stack_status(cfn: Any, name: str) -> str | None:
    try:
        return str(cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"])
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise


def deploy_stack(
    cfn: Any,
    name: str,
    template_body: str,
    parameters: dict[str, str],
    *,
    capabilities: tuple[str, ...] = (),
    delay_s: int = 5,
) -> dict[str, str]:
    """Create the stack, or update it (a no-op update is fine); wait; return its outputs."""
    kwargs: dict[str, Any] = {
        "StackName": name,
        "TemplateBody": template_body,
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        "Capabilities": list(capabilities),
    }
    waiter_config = {"Delay": delay_s, "MaxAttempts": 3600 // delay_s}
    status = _stack_status(cfn, name)
    if status == "ROLLBACK_COMPLETE":
        raise SystemExit(f"{name} is ROLLBACK_COMPLETE (a failed create): delete it, then rerun")
    if status is None:
        print(f"creating {name} …")
        cfn.create_stack(**kwargs)
        cfn.get_waiter("stack_create_complete").wait(StackName=name, WaiterConfig=waiter_config)
    else:
        print(f"updating {name} ({status}) …")
        try:
            cfn.update_stack(**kwargs)
        except ClientError as exc:
            if "No updates are to be performed" not in str(exc):
                raise
            print(f"{name}: no changes")
        else:
            cfn.get_waiter("stack_update_complete").wait(StackName=name, WaiterConfig=waiter_config)
    return stack_outputs(cfn, name)


def _requirement_name(req: str) -> str:
    return re.split(r"[\[<>=!~;\s]", req, maxsplit=1)[0].lower()


def lambda_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The base and ``[control-plane]`` requirements that the function needs at run time."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["control-plane"]]
    out = []
    for req in reqs:
        name = _requirement_name(req)
        if name in LAMBDA_EXCLUDE:
            continue
        if name in LAMBDA_STRIP_EXTRAS:
            req = re.sub(r"\[[^\]]*\]", "", req)
        out.append(req)
    return out


def build_code_zip(dest: Path, *, python_version: str, architecture: str) -> Path:
    """The gpufleet and gpufleet-control-plane wheels (distributions/) and
    ``lambda_requirements()`` for the Lambda runtime and architecture, zipped."""
    with tempfile.TemporaryDirectory() as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        pip = [sys.executable, "-m", "pip"]
        parts = [str(ROOT / "distributions" / d) for d in ("gpufleet", "control-plane")]
        subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), *parts], check=True)
        built = [str(w) for w in sorted(wheels.glob("gpufleet*.whl"))]  # + _control_plane
        target = ["--target", str(site), "--upgrade"]
        platform = [
            "--platform", PLATFORMS[architecture], "--implementation", "cp",
            "--python-version", python_version, "--only-binary=:all:",
        ]  # fmt: skip
        subprocess.run([*pip, "install", "-q", *target, "--no-deps", *built], check=True)
        subprocess.run(
            [*pip, "install", "-q", *target, *platform, *lambda_requirements()], check=True
        )
        return zip_directory(site, dest)


def zip_directory(site: Path, dest: Path, *, limit: int = LAMBDA_UNZIPPED_LIMIT) -> Path:
    """A deterministic zip of ``site`` (sorted, fixed timestamps, no bytecode caches)."""
    files = sorted(p for p in site.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    size = sum(p.stat().st_size for p in files)
    if size > limit:
        raise SystemExit(
            f"code is {size / 2**20:.0f} MiB unzipped, over Lambda's {limit / 2**20:.0f} MiB: "
            "use the container alternative (iac/ecs.yaml)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(str(path.relative_to(site)), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return dest


def upload_code(s3: Any, bucket: str, zip_path: Path) -> str:
    """Upload the zip under a content-addressed key (unchanged code → same key); the key."""
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()[:20]
    key = f"deploy/control-plane-{digest}.zip"
    s3.upload_file(str(zip_path), bucket, key)
    return key


def admin_key_instructions(stack: str, region: str, api_url: str) -> str:
    return (
        f"API URL: {api_url}\n"
        "Create the first admin key (with your AWS credentials; printed once):\n"
        f"  python scripts/create_admin_key.py --stack {stack} --region {region}\n"
        "then:\n"
        f"  export GPUFLEET_URL={api_url} GPUFLEET_API_KEY=gf_…\n"
        "  gpufleet models push model_repository/add_sub\n"
    )


def deploy(
    session: Any,
    *,
    stack: str,
    bucket: str,
    table_prefix: str,
    code_zip: Path | None,
    compute_params: dict[str, str],
    data_params: dict[str, str],
    endpoint_url: str | None = None,
    data_only: bool = False,
    delay_s: int = 5,
) -> Deployment:
    """Data stack, code upload, compute stack; returns both stacks' outputs."""
    cfn = session.client("cloudformation", endpoint_url=endpoint_url)
    data = deploy_stack(
        cfn,
        f"{stack}-data",
        (IAC / "data.yaml").read_text(),
        {"TablePrefix": table_prefix, "Bucket": bucket, **data_params},
        delay_s=delay_s,
    )
    if data_only:
        return Deployment(data, {})
    s3 = session.client("s3", endpoint_url=endpoint_url)
    runtime = compute_params.get("Runtime", "python3.12")
    arch = compute_params.get("Architecture", "x86_64")
    with tempfile.TemporaryDirectory() as tmp:
        zip_path = code_zip or build_code_zip(
            Path(tmp) / "code.zip", python_version=runtime.removeprefix("python"), architecture=arch
        )
        key = upload_code(s3, data["Bucket"], zip_path)
    params = {
        "TablePrefix": data["TablePrefix"],
        "Bucket": data["Bucket"],
        "BucketKmsKeyArn": data.get("BucketKmsKeyArn", ""),
        "CodeBucket": data["Bucket"],
        "CodeKey": key,
        **compute_params,
    }
    compute = deploy_stack(
        cfn,
        f"{stack}-compute",
        (IAC / "compute.yaml").read_text(),
        params,
        capabilities=("CAPABILITY_IAM",),
        delay_s=delay_s,
    )
    return Deployment(data, compute)


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param/--data-param needs KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deploy the gpufleet control plane (AWS).")
    parser.add_argument("--stack", required=True, help="name; stacks are NAME-data, NAME-compute")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    parser.add_argument("--bucket", help="bucket name (default gpufleet-NAME-ACCOUNT-REGION)")
    parser.add_argument("--table-prefix", help="table prefix (default: NAME)")
    parser.add_argument("--jwt-secret-arn", default="", help="Secrets Manager ARN of the key")
    parser.add_argument("--code-zip", type=Path, help="prebuilt code zip (skips the build)")
    parser.add_argument("--param", action="append", default=[], help="compute KEY=VALUE")
    parser.add_argument("--data-param", action="append", default=[], help="data KEY=VALUE")
    parser.add_argument("--data-only", action="store_true", help="deploy the data stack only")
    parser.add_argument("--endpoint-url", help="CloudFormation/S3/STS endpoint (tests only)")
    args = parser.parse_args(argv)

    import boto3

    session = boto3.session.Session(region_name=args.region)
    region = session.region_name or "us-east-1"
    bucket = args.bucket
    if not bucket:
        sts = session.client("sts", endpoint_url=args.endpoint_url)
        account = sts.get_caller_identity()["Account"]
        bucket = f"gpufleet-{args.stack}-{account}-{region}".lower()
    compute_params = _pairs(args.param)
    if args.jwt_secret_arn:
        compute_params["JwtSecretArn"] = args.jwt_secret_arn
    result = deploy(
        session,
        stack=args.stack,
        bucket=bucket,
        table_prefix=args.table_prefix or args.stack,
        code_zip=args.code_zip,
        compute_params=compute_params,
        data_params=_pairs(args.data_param),
        endpoint_url=args.endpoint_url,
        data_only=args.data_only,
    )
    for key, value in result.data_outputs.items():
        if key in ("TablePrefix", "Bucket", "AwsRegion"):
            print(f"{key}: {value}")
    if not args.data_only:
        print(admin_key_instructions(args.stack, region, result.api_url))
    else:
        print(
            f"Create the first admin key: python scripts/create_admin_key.py --stack {args.stack}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
