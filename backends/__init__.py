"""Per-library adapters: the only place in implicitnet that imports NumPy, CuPy or torch.

Every backend module gives the same small interface (see :class:`Backend`):

``name``
    Short name (``"numpy"``, ``"array_api_strict"``, ``"torch"``, ``"cupy"``).
``available()``
    Whether the library can be used here (for CuPy: importable *and* a CUDA device;
    for torch: importable, on the CPU and on any CUDA device it sees).
``namespace()``
    The library's array-API namespace.
``is_array(x)``
    Whether ``x`` is an array of this library.
``random_normal(shape, seed, *, dtype=None, device=None)`` / ``random_uniform(...)``
    Random arrays from an explicit ``seed`` (an ``int`` or a ``numpy.random.Generator``).
    Numbers are drawn on the host with NumPy, so one seed gives the same numbers on every
    backend.
``from_numpy(a, *, device=None)`` / ``to_numpy(x)``
    Conversion to and from NumPy.
``synchronize()``
    Block until queued device work is done (for honest GPU timing).
``storage(x)``
    ``(key, nbytes)`` of the buffer an array lives in (views of one buffer share the
    key): what :func:`implicitnet.autodiff.tape_summary` counts. Optional: without it an
    array counts as its own buffer of ``size * itemsize`` bytes.
``peak_memory()`` / ``reset_peak_memory()``
    Peak bytes allocated by the library, where it keeps such a figure, else ``None``.
``scipy_module()``
    The SciPy that serves this library: ``scipy`` or ``cupyx.scipy``.
``devices()``
    Descriptions of the devices the library sees.

The torch backend also has ``cuda_available()``, ``default_device()`` and
``set_default_device(device)`` (PyTorch's process-wide default device: ``"cpu"``,
``"cuda"``, ``"cuda:1"``, ...), since torch tensors live on the CPU or on a GPU.

Look a backend up with :func:`get_backend` from a name or from an array.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = [
    "BACKEND_NAMES",
    "available_backends",
    "backend_of",
    "get_backend",
]

#: Every backend implicitnet knows, in order of preference.
BACKEND_NAMES: tuple[str, ...] = ("numpy", "array_api_strict", "torch", "cupy")

_MODULES = {
    "numpy": "implicitnet.backends._numpy",
    "array_api_strict": "implicitnet.backends._array_api_strict",
    "torch": "implicitnet.backends._torch",
    "cupy": "implicitnet.backends._cupy",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(_MODULES[name])


def get_backend(name_or_array: Any) -> ModuleType:
    """Return the backend module for a backend name or for an array.

    Parameters
    ----------
    name_or_array : str or array
        A name from :data:`BACKEND_NAMES`, or an array of a supported library. An
        implicitnet ``Tensor`` resolves to the backend of the array it wraps.

    Returns
    -------
    module
        The backend module (see this package's docstring for its interface).

    Raises
    ------
    ValueError
        If the name is not a known backend, or the backend is not usable here.
    TypeError
        If the array's type is not supported.
    """
    if isinstance(name_or_array, str):
        name = name_or_array
        if name not in _MODULES:
            msg = f"unknown backend {name!r}; known backends: {', '.join(BACKEND_NAMES)}"
            raise ValueError(msg)
        mod = _load(name)
        if not mod.available():
            msg = f"backend {name!r} is not available here: {mod.unavailable_reason()}"
            raise ValueError(msg)
        return mod
    return backend_of(name_or_array)


def backend_of(x: Any) -> ModuleType:
    """Return the backend module of the array ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not an array of a supported library; the message names its type and
        lists the supported ones.
    """
    while getattr(type(x), "_implicitnet_tensor", False):  # autodiff Tensors, maybe nested
        x = x._implicitnet_data
    for name in BACKEND_NAMES:
        mod = _load(name)
        if mod.is_array(x):
            return mod
    msg = (
        f"unsupported array type {type(x).__module__}.{type(x).__qualname__}; "
        f"supported: numpy.ndarray, array_api_strict Array, torch.Tensor, cupy.ndarray"
    )
    raise TypeError(msg)


def available_backends() -> list[str]:
    """Names of the backends usable on this machine, in order of preference."""
    return [name for name in BACKEND_NAMES if _load(name).available()]
