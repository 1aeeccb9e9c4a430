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


def is_array(x) -> bool:
    """Whether `x` is a NumPy array (the numpy backend, registered first, claims them)."""
    return isinstance(x, np.ndarray)


def from_numpy(a, *, device=None):
    """A copy of `a` (there is only the CPU)."""
    return np.array(a, copy=True)


def to_numpy(x) -> np.ndarray:
    """`x` itself, as a NumPy array."""
    return np.asarray(x)


def namespace():
    """NumPy's array-API namespace, as array-api-compat wraps it."""
    return _xp


def random_normal(shape, seed, *, dtype=None, device=None):
    """Standard normal numbers from `seed` (an int or a NumPy Generator)."""
    draw = np.random.default_rng(seed).standard_normal(shape)
    return draw.astype(dtype or np.float64)


def random_uniform(shape, seed, *, low=0.0, high=1.0, dtype=None, device=None):
    """Uniform numbers on ``[low, high)`` from `seed`."""
    draw = np.random.default_rng(seed).uniform(low, high, size=shape)
    return draw.astype(dtype or np.float64)


def available() -> bool:
    """Always: NumPy is a dependency of implicitnet."""
    return True


def unavailable_reason() -> str:
    """Nothing to explain."""
    return ""


def devices() -> list[str]:
    """Only the CPU."""
    return ["cpu"]


def synchronize() -> None:
    """Runs synchronously: nothing to wait for."""


def peak_memory() -> int | None:
    """No such figure is kept."""
    return None


def reset_peak_memory() -> None:
    """Nothing to reset."""


def scipy_module():
    """SciPy itself."""
    import scipy  # deferred: slow to import, and only the SciPy adapters use it

    return scipy
