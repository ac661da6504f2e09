"""Console scripts of the server parts that explain what to install when it is missing.

``pip install gpufleet`` is the SDK and the ``gpufleet`` CLI; ``gpufleet-runner`` and
``gpufleet-control-plane`` need the ``runner`` / ``control-plane`` extras. Without them these
entry points say which extra to install instead of ending in an ImportError traceback.
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
