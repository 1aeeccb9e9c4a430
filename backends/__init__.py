"""Per-library adapters: the only place in implicitnet that imports NumPy, CuPy or torch.

Every backend module gives the same small interface (see :class:`Backend`):

``name``
    Short name (``"numpy"``, ``"array_api_strict"``, ``"torch"``, ``"cupy"``).
``available()``
    Whether the library can be used here (for CuPy: importable *and* a CUDA device;
    for torch: importable, on the CPU and on any CUDA device it sees);
    ``unavailable_reason()`` says why not.
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
``conv2d(x, w, stride=1, padding=0)``, ``conv2d_input_grad(...)``, ``conv2d_weight_grad(...)``
    Fast NCHW convolution kernels and their VJPs. Optional (absent or ``None``): without
    them :mod:`implicitnet.nn` uses its portable array-API convolution.

The torch backend also has ``cuda_available()``, ``default_device()`` and
``set_default_device(device)`` (PyTorch's process-wide default device: ``"cpu"``,
``"cuda"``, ``"cuda:1"``, ...), since torch tensors live on the CPU or on a GPU.

Look a backend up with :func:`get_backend` from a name, a backend module or an array.
The host-side NumPy helpers the core needs (dtype names, seeded generators, data and
checkpoint files, a host comparison of arrays) are in :mod:`implicitnet.backends.host`.

Adding a backend is one new module with this interface plus one registration line: an
entry in ``_BUILT_IN`` below for a backend shipped with implicitnet, or
``register_backend(module)`` for one of your own; :func:`check_backend` (and
``tests/test_backend_protocol.py``) then says whether it conforms.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from . import host as host
from ._protocol import Backend as Backend
from ._protocol import check_backend as check_backend

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "available_backends",
    "backend_of",
    "check_backend",
    "get_backend",
    "load_backend",
    "register_backend",
]

# The backends implicitnet ships, in order of preference: one line each.
_BUILT_IN = {
    "numpy": "implicitnet.backends._numpy",
    "array_api_strict": "implicitnet.backends._array_api_strict",
    "torch": "implicitnet.backends._torch",
    "cupy": "implicitnet.backends._cupy",
}

#: The backends implicitnet ships, in order of preference.
BACKEND_NAMES: tuple[str, ...] = tuple(_BUILT_IN)

# name -> backend module, or the module's import path until it is first used. Backends
# added with register_backend come after the built-in ones.
_REGISTRY: dict[str, Any] = dict(_BUILT_IN)

# Backend modules known to conform, by identity: the built-in ones once loaded, and those
# that register_backend or get_backend checked.
_CHECKED: dict[int, Any] = {}


def _load(name: str) -> Backend:
    mod = _REGISTRY[name]
    if isinstance(mod, str):
        mod = _REGISTRY[name] = importlib.import_module(mod)
        _CHECKED[id(mod)] = mod  # built in: tests/test_backend_protocol.py checks it
    return mod


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}")


def load_backend(name: str) -> Backend:
    """Return the backend module registered as `name`, whether usable here or not.

    Unlike :func:`get_backend` this does not require the library to be usable: ask the
    module's ``available()`` and ``unavailable_reason()``.

    Raises
    ------
    ValueError
        If no backend is registered as `name`.

    Examples
    --------
    >>> from implicitnet import backends
    >>> backends.load_backend("numpy").name
    'numpy'
    """
    if name not in _REGISTRY:
        raise _unknown(name)
    return _load(name)


def register_backend(module: Any) -> Backend:
    """Register `module` (or the module at that import path) as the backend ``module.name``.

    It is checked with :func:`check_backend` first. A registered backend comes after the
    built-in ones: :func:`get_backend` finds it by name, :func:`available_backends` lists
    it, and :func:`backend_of` gives it the arrays no earlier backend claims.

    Parameters
    ----------
    module : module or str
        The backend module, or its import path (imported now).

    Returns
    -------
    module
        The registered backend.

    Raises
    ------
    TypeError
        If `module` does not have the interface of :class:`Backend`.
    ValueError
        If a backend of that name is registered already.
    """
    if isinstance(module, str):
        module = importlib.import_module(module)
    check_backend(module)
    if module.name in _REGISTRY:
        msg = f"`module`: a backend named {module.name!r} is registered already"
        raise ValueError(msg)
    _REGISTRY[module.name] = module
    _CHECKED[id(module)] = module
    return module


def get_backend(name_or_array: Any) -> Backend:
    """Return the backend for a backend name, a backend module or an array.

    Parameters
    ----------
    name_or_array : str, backend module or array
        A registered name (:data:`BACKEND_NAMES` and those added with
        :func:`register_backend`), a module with the interface of :class:`Backend`
        (returned as it is, once checked), or an array of a supported library. An
        implicitnet ``Tensor`` resolves to the backend of the array it wraps.

    Returns
    -------
    module
        The backend module (see :class:`Backend` for its interface).

    Raises
    ------
    ValueError
        If the name is not a known backend, or the backend is not usable here.
    TypeError
        If a module does not conform to :class:`Backend`, or the array's type is not
        supported.
    """
    x = name_or_array
    if isinstance(x, str):
        mod = load_backend(x)
        if not mod.available():
            msg = f"backend {x!r} is not available here: {mod.unavailable_reason()}"
            raise ValueError(msg)
        return mod
    if id(x) in _CHECKED:
        return x
    if isinstance(x, ModuleType):
        check_backend(x)
        _CHECKED[id(x)] = x
        return x
    try:
        return backend_of(x)
    except TypeError as exc:
        msg = f"{exc}; a `backend` argument is a backend name, a backend module or such an array"
        raise TypeError(msg) from None


def backend_of(x: Any) -> Backend:
    """Return the backend module of the array ``x``.

    The first registered backend whose ``is_array`` accepts `x` is its backend.

    Raises
    ------
    TypeError
        If ``x`` is not an array of a supported library; the message names its type and
        lists the supported ones.
    """
    while getattr(type(x), "_implicitnet_tensor", False):  # autodiff Tensors, maybe nested
        x = x._implicitnet_data
    for name in _REGISTRY:
        mod = _load(name)
        if mod.is_array(x):
            return mod
    others = [name for name in _REGISTRY if name not in _BUILT_IN]
    msg = (
        f"unsupported array type {type(x).__module__}.{type(x).__qualname__}; "
        f"supported: numpy.ndarray, array_api_strict Array, torch.Tensor, cupy.ndarray"
        + "".join(f", {name} arrays" for name in others)
    )
    raise TypeError(msg)


def available_backends() -> list[str]:
    """Names of the backends usable on this machine, in order of preference."""
    return [name for name in _REGISTRY if _load(name).available()]
