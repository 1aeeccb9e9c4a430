"""NumPy backend (CPU)."""

from __future__ import annotations

import tracemalloc

import array_api_compat.numpy as _xp
import numpy as np

from . import _common

name = "numpy"


def available() -> bool:
    return True


def unavailable_reason() -> str:
    return ""


def namespace():
    """The array-API namespace of NumPy (array-api-compat's wrapper)."""
    return _xp


def is_array(x) -> bool:
    return isinstance(x, np.ndarray | np.generic)


def from_numpy(a, *, device=None):
    return np.asarray(a)


def to_numpy(x) -> np.ndarray:
    return np.asarray(x)


def random_normal(shape, seed, *, dtype=None, device=None):
    """Standard normal numbers of `shape` from `seed` (int or ``numpy.random.Generator``)."""
    return _common.host_normal(shape, seed, dtype)


def random_uniform(shape, seed, *, low=0.0, high=1.0, dtype=None, device=None):
    """Uniform numbers on ``[low, high)`` of `shape` from `seed`."""
    return _common.host_uniform(shape, seed, dtype, low, high)


def storage(x) -> tuple[int, int]:
    """``(key, nbytes)`` of the buffer `x` lives in; views of one buffer share the key."""
    base = np.asarray(x)
    while isinstance(base.base, np.ndarray):
        base = base.base
    return id(base), int(base.nbytes)


def synchronize() -> None:
    """NumPy runs synchronously: nothing to wait for."""


def peak_memory() -> int | None:
    """Peak bytes traced by :mod:`tracemalloc` (NumPy reports its buffers there).

    ``None`` when tracemalloc is not tracing.
    """
    if not tracemalloc.is_tracing():
        return None
    return tracemalloc.get_traced_memory()[1]


def reset_peak_memory() -> None:
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()


scipy_module = _common.scipy


def devices() -> list[str]:
    return ["cpu"]


# --- convolution kernels (im2col through strided views; see _conv.py) ---
from . import _conv as _conv_impl  # noqa: E402


def conv2d(x, w, stride=1, padding=0):
    """2-D cross-correlation, NCHW (see :mod:`implicitnet.backends._conv`)."""
    return _conv_impl.conv2d(np, x, w, stride, padding)


def conv2d_input_grad(g, w, x_shape, stride=1, padding=0):
    """VJP of :func:`conv2d` with respect to the input."""
    return _conv_impl.conv2d_input_grad(np, g, w, tuple(x_shape), stride, padding)


def conv2d_weight_grad(g, x, w_shape, stride=1, padding=0):
    """VJP of :func:`conv2d` with respect to the weight."""
    return _conv_impl.conv2d_weight_grad(np, g, x, tuple(w_shape), stride, padding)
