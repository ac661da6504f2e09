"""Console-script targets that name what to install when a server part is missing.

The distributions' own scripts point at ``runner.cli:main`` and
``control_plane.__main__:main`` (distributions/*/pyproject.toml). These targets stay for
environments whose ``gpufleet-runner`` / ``gpufleet-control-plane`` scripts were generated
before the split (they import ``gpufleet._entry``): such a script keeps working until the
environment is reinstalled, and says which extra to install instead of an ImportError
traceback when the part is missing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def _main_of(module: str, script: str, extra: str) -> Callable[[], Any]:
    try:
        main: Callable[[], Any] = importlib.import_module(module).main
        return main
    except ImportError as exc:
        missing = exc.name or str(exc)
        sys.stderr.write(
            f"{script} needs the {extra!r} extra ({missing} is not installed): "
            f"pip install 'gpufleet[{extra}]'\n"
        )
        raise SystemExit(2) from None


def runner_main() -> None:
    """``gpufleet-runner``."""
    _main_of("runner.cli", "gpufleet-runner", "runner")()


def control_plane_main() -> None:
    """``gpufleet-control-plane``."""
    _main_of("control_plane.__main__", "gpufleet-control-plane", "control-plane")()
