"""Optional dependencies, imported on first use with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, *, needed_for: str, install: str) -> ModuleType:
    """Import `module` (e.g. ``"dask.array"``), or raise ``ImportError`` saying what needs
    it (`needed_for`) and how to install it (`install`)."""
    try:
        importlib.import_module(module.partition(".")[0])  # the package itself first
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on the environment
        msg = f"{needed_for} needs {module.split('.')[0]}, which is not installed: {install}"
        raise ImportError(msg) from None
