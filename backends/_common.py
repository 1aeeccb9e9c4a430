"""Helpers shared by the backend modules: host-side NumPy random numbers, dtype names,
the probe of an optional array library, and NumPy's batched solver."""

from __future__ import annotations

import functools
import importlib
import numbers
from collections.abc import Callable
from types import ModuleType

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
    """`shape` (an int or a sequence of ints) as a tuple of non-negative ints."""
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


def compat_namespace(library: str) -> Callable[[], ModuleType]:
    """The ``namespace()`` of a backend whose library array-api-compat wraps.

    The wrapper (``array_api_compat.torch``, ``array_api_compat.cupy``) imports the
    library itself, so it is imported on the first call, not with the backend module.
    """

    def namespace() -> ModuleType:
        return importlib.import_module(f"array_api_compat.{library}")

    namespace.__doc__ = f"The array-API namespace of {library} (array-api-compat's wrapper)."
    return namespace


def scipy() -> ModuleType:
    """SciPy, which serves NumPy arrays (and CPU tensors through NumPy)."""
    import scipy  # deferred: a fifth of a second to import, used only by the SciPy adapters

    return scipy


def solve(A, b):
    """Batched ``A x = b`` for NumPy arrays ``b[..., n, k]``: NumPy's own solver.

    Without the array-API wrapper's per-call overhead, which matters for the many tiny
    systems that Anderson and GMRES solve once per iteration.
    """
    return np.linalg.solve(A, b)


class OptionalLibrary:
    """An array library imported on first use, remembering why it could not be.

    `load` imports the library and returns ``(module, "")``, or ``(None, reason)`` when
    it cannot be used here; it runs once. `label` names the backend in the error that
    :meth:`module` raises.
    """

    def __init__(self, label: str, load: Callable[[], tuple[ModuleType | None, str]]):
        self._label = label
        self._load = functools.cache(load)

    def available(self) -> bool:
        """Whether the library imported (and found what it needs)."""
        return self._load()[0] is not None

    def unavailable_reason(self) -> str:
        """Why the library cannot be used here (``""`` when it can)."""
        return self._load()[1]

    def loaded(self) -> ModuleType | None:
        """The library, or ``None`` when it cannot be used here."""
        return self._load()[0]

    def module(self) -> ModuleType:
        """The library; ``RuntimeError`` naming the reason when it cannot be used here."""
        lib, why = self._load()
        if lib is None:
            msg = f"the {self._label} backend is not available: {why}"
            raise RuntimeError(msg)
        return lib
