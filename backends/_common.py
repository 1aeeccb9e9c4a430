"""Helpers shared by the backend modules (host-side NumPy random numbers)."""

from __future__ import annotations

import numbers

import numpy as np

_FLOAT_NAMES = ("float32", "float64")


def generator(seed) -> np.random.Generator:
    """A NumPy ``Generator`` from an ``int`` seed or an existing ``Generator``."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if seed < 0:
            msg = f"`seed` must be non-negative, got {seed}"
            raise ValueError(msg)
        return np.random.default_rng(int(seed))
    msg = f"`seed` must be an int or a numpy.random.Generator, got {type(seed).__name__}"
    raise TypeError(msg)


def check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        msg = f"`shape` must be an int or a tuple of ints, got {shape!r}"
        raise TypeError(msg) from None
    if any(s < 0 for s in shape):
        msg = f"`shape` must not have negative entries, got {shape}"
        raise ValueError(msg)
    return shape


def dtype_name(dtype) -> str:
    """Normalise a dtype (object or name) to ``"float32"``/``"float64"``."""
    if dtype is None:
        return "float64"
    name = getattr(dtype, "__name__", None) if isinstance(dtype, type) else None
    name = name or getattr(dtype, "name", None) or str(dtype)
    name = str(name).rsplit(".", 1)[-1].strip("'>")
    if name not in _FLOAT_NAMES:
        msg = f"`dtype` must be float32 or float64, got {dtype!r}"
        raise ValueError(msg)
    return name


def host_normal(shape, seed, dtype) -> np.ndarray:
    rng = generator(seed)
    return rng.standard_normal(check_shape(shape)).astype(dtype_name(dtype))


def host_uniform(shape, seed, dtype, low, high) -> np.ndarray:
    rng = generator(seed)
    return rng.uniform(low, high, size=check_shape(shape)).astype(dtype_name(dtype))
