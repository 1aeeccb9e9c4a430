"""Parameter initialisation: host NumPy draws moved to the target backend."""

from __future__ import annotations

import math

from .. import backends
from ..backends import host

__all__ = ["generator", "normal_init", "uniform_init", "zeros_init"]


def generator(seed):
    """A ``numpy.random.Generator`` from an int seed (or the generator itself).

    Draw several layers from one generator to build a whole model from one seed.
    """
    return host.generator(seed)


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
    be = backends.get_backend(backend)
    return be.random_uniform(shape, seed, low=-bound, high=bound, dtype=dtype, device=device)


def normal_init(shape, std: float, seed, *, dtype=None, backend="numpy", device=None):
    """Normal numbers with mean 0 and standard deviation `std` (see :func:`uniform_init`)."""
    be = backends.get_backend(backend)
    z = be.random_normal(shape, seed, dtype=dtype, device=device)
    return z * std if std != 1.0 else z


def zeros_init(shape, *, dtype=None, backend="numpy", device=None):
    """Zeros of `shape` on `backend` (float64 by default)."""
    be = backends.get_backend(backend)
    ns = be.namespace()
    dt = getattr(ns, host.dtype_name(dtype))
    return ns.zeros(host.check_shape(shape), dtype=dt, device=device)


def fan_in_bound(fan_in: int) -> float:
    """``1 / sqrt(fan_in)``: PyTorch's default bound for linear and conv layers."""
    return 1.0 / math.sqrt(max(fan_in, 1))
