"""array-api-strict backend: the strict reference implementation of the standard.

It runs on NumPy underneath but exposes only what the standard defines, so a test that
passes here is evidence that the core is backend-neutral.
"""

from __future__ import annotations

import numpy as np

from . import _common, _numpy

name = "array_api_strict"

try:
    import array_api_strict as _xp
    from array_api_strict._array_object import Array as _ArrayType
except ImportError:  # pragma: no cover - depends on the environment
    _xp = None
    _ArrayType = ()


def available() -> bool:
    return _xp is not None


def unavailable_reason() -> str:
    return "" if available() else "array-api-strict is not installed (pip install array-api-strict)"


def namespace():
    return _xp


def is_array(x) -> bool:
    return isinstance(x, _ArrayType)


def from_numpy(a, *, device=None):
    a = np.asarray(a)
    return _xp.asarray(a) if device is None else _xp.asarray(a, device=device)


def to_numpy(x) -> np.ndarray:
    # array-api-strict implements the buffer protocol through DLPack.
    return np.from_dlpack(x)


def random_normal(shape, seed, *, dtype=None, device=None):
    return from_numpy(_common.host_normal(shape, seed, dtype), device=device)


def random_uniform(shape, seed, *, low=0.0, high=1.0, dtype=None, device=None):
    return from_numpy(_common.host_uniform(shape, seed, dtype, low, high), device=device)


def storage(x) -> tuple[int, int]:
    """``(key, nbytes)`` of the NumPy buffer under `x` (views share the key)."""
    return _numpy.storage(x._array)  # the wrapped ndarray (its views share a base)


def synchronize() -> None:
    """Runs synchronously: nothing to wait for."""


peak_memory = _numpy.peak_memory
reset_peak_memory = _numpy.reset_peak_memory
scipy_module = _common.scipy


def devices() -> list[str]:
    return [str(d) for d in _xp.__array_namespace_info__().devices()] if _xp else []


# --- convolution kernels ---
# No fast kernel: implicitnet.nn uses its portable array-API implementation instead.
conv2d = None
conv2d_input_grad = None
conv2d_weight_grad = None
