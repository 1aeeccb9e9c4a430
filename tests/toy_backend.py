"""A toy backend: NumPy arrays under the name ``"toy"``.

The one new file of "A backend" in ``docs/contributing.md``: every member of
:class:`implicitnet.backends.Backend`, and nothing else. ``tests/test_extending_backend.py``
registers it (one line), runs the conformance test on it, and solves and differentiates
with it.
"""

from __future__ import annotations

import array_api_compat.numpy as _xp
import numpy as np

name = "toy"


def available() -> bool:
    return True


def unavailable_reason() -> str:
    return ""


def namespace():
    return _xp


def is_array(x) -> bool:
    return isinstance(x, np.ndarray)


def from_numpy(a, *, device=None):
    return np.array(a, copy=True)


def to_numpy(x) -> np.ndarray:
    return np.asarray(x)


def random_normal(shape, seed, *, dtype=None, device=None):
    draw = np.random.default_rng(seed).standard_normal(shape)
    return draw.astype(dtype or np.float64)


def random_uniform(shape, seed, *, low=0.0, high=1.0, dtype=None, device=None):
    draw = np.random.default_rng(seed).uniform(low, high, size=shape)
    return draw.astype(dtype or np.float64)


def synchronize() -> None:
    """Runs synchronously: nothing to wait for."""


def peak_memory() -> int | None:
    return None  # keeps no such figure


def reset_peak_memory() -> None:
    """Nothing to reset."""


def scipy_module():
    import scipy  # deferred: slow to import, and only the SciPy adapters use it

    return scipy


def devices() -> list[str]:
    return ["cpu"]
