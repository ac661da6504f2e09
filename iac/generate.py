"""Render the CloudFormation templates from the code: ``python -m iac.generate [--check]``.

- ``iac/data.yaml``    tables (control_plane/storage/definitions.py) and the bucket
- ``iac/compute.yaml`` Lambda + HTTP API + least-privilege role (control_plane/settings.py)
- ``iac/ecs.yaml``     optional ECS/Fargate service running ``python -m control_plane serve``
- ``iac/runner.yaml``  optional GPU hosts of one capacity pool (Auto Scaling group)

The templates are committed; ``--check`` (and tests/iac) fails when they differ from what the
code renders, so the infrastructure and the code cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from iac.common import Template, render
from iac.compute_stack import compute_template
from iac.data_stack import data_template
from iac.ecs_stack import ecs_template
from iac.runner_stack import runner_template

IAC_DIR = Path(__file__).resolve().parent

TEMPLATES: dict[str, Callable[[], Template]] = {
    "data.yaml": data_template,
    "compute.yaml": compute_template,
    "ecs.yaml": ecs_template,
    "runner.yaml": runner_template,
}


def rendered() -> dict[str, str]:
    """File name → YAML text, as the code defines it now."""
    return {name: render(build()) for name, build in TEMPLATES.items()}


def stale(directory: Path = IAC_DIR) -> list[str]:
    """Names of the committed templates that differ from the rendered ones."""
    out = []
    for name, text in rendered().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            out.append(name)
    return out


def write(directory: Path = IAC_DIR) -> list[Path]:
    """Write every template; returns the paths."""
    paths = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a template is stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        if names:
            print(f"stale: {', '.join(names)}; run `python -m iac.generate`", file=sys.stderr)
            return 1
        print("iac templates up to date")
        return 0
    for path in write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
