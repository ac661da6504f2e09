"""gpufleet: Python SDK and CLI for the gpufleet inference platform."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
