"""Parameter initialisation: host NumPy draws moved to the target backend."""

from __future__ import annotations

import math
import types

from .. import backends
from ..backends import _common

__all__ = ["generator", "normal_init", "resolve_backend", "uniform_init", "zeros_init"]


def generator(seed):
    """A ``numpy.random.Generator`` from an int seed (or the generator itself).

    Draw several layers from one generator to build a whole model from one seed.
    """
    return _common.generator(seed)


def resolve_backend(backend):
    """A backend module from a name or a backend module."""
    if isinstance(backend, str):
        return backends.get_backend(backend)
    if isinstance(backend, types.ModuleType) and backend.__name__.startswith(
        "implicitnet.backends."
    ):
        return backend
    msg = (
        f"`backend` must be a backend name ({', '.join(backends.BACKEND_NAMES)}) or a "
        f"backend module, got {backend!r}"
    )
    raise TypeError(msg)


def uniform_init(shape, bound: float, seed, *, dtype=None, backend="numpy", device=None):
    """Uniform numbers on ``[-bound, bound)`` of `shape`, on `backend`.

    Parameters
    ----------
    shape : tuple of int
        Shape of the array.
    bound : float
        Half-width of the interval.
    seed : int or numpy.random.Generator
        Source of randomness (drawn on the host, so every backend gets the same values).
    dtype : dtype or str, optional
        float32 or float64 (default).
    backend : str or backend module, default: "numpy"
        Where the array lives.
    device : optional
        Device of the array.

    Examples
    --------
    >>> from implicitnet import nn
    >>> w = nn.uniform_init((2, 3), 0.5, seed=0)
    >>> w.shape, bool(abs(w).max() <= 0.5)
    ((2, 3), True)
    """
    be = resolve_backend(backend)
    return be.random_uniform(shape, seed, low=-bound, high=bound, dtype=dtype, device=device)


def normal_init(shape, std: float, seed, *, dtype=None, backend="numpy", device=None):
    """Normal numbers with mean 0 and standard deviation `std` (see :func:`uniform_init`)."""
    be = resolve_backend(backend)
    z = be.random_normal(shape, seed, dtype=dtype, device=device)
    return z * std if std != 1.0 else z


def zeros_init(shape, *, dtype=None, backend="numpy", device=None):
    """Zeros of `shape` on `backend` (float64 by default)."""
    be = resolve_backend(backend)
    ns = be.namespace()
    dt = getattr(ns, _common.dtype_name(dtype))
    return ns.zeros(_common.check_shape(shape), dtype=dt, device=device)


def fan_in_bound(fan_in: int) -> float:
    """``1 / sqrt(fan_in)``: PyTorch's default bound for linear and conv layers."""
    return 1.0 / math.sqrt(max(fan_in, 1))
