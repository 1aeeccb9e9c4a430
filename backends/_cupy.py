"""CuPy backend (NVIDIA GPUs). Usable when CuPy imports and a CUDA device is present."""

from __future__ import annotations

import array_api_compat
import numpy as np

from . import _common

name = "cupy"


def _import_cupy():
    try:
        import cupy  # deferred: an optional dependency, slow to import
    except Exception as exc:  # ImportError, or a CUDA library failing to load
        return None, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return None, "no CUDA device"
    return cupy, ""


_library = _common.OptionalLibrary("CuPy", _import_cupy)
available = _library.available
unavailable_reason = _library.unavailable_reason
_cupy = _library.module


namespace = _common.compat_namespace("cupy")
# array-api-compat looks at the type without importing CuPy (slow, and it may fail).
is_array = array_api_compat.is_cupy_array


def from_numpy(a, *, device=None):
    cp = _cupy()
    if device is None:
        return cp.asarray(a)
    with cp.cuda.Device(getattr(device, "id", device)):
        return cp.asarray(a)


def to_numpy(x) -> np.ndarray:
    return _cupy().asnumpy(x)


def random_normal(shape, seed, *, dtype=None, device=None):
    return from_numpy(_common.host_normal(shape, seed, dtype), device=device)


def random_uniform(shape, seed, *, low=0.0, high=1.0, dtype=None, device=None):
    return from_numpy(_common.host_uniform(shape, seed, dtype, low, high), device=device)


def storage(x) -> tuple[int, int]:
    """``(key, nbytes)`` of the device buffer `x` lives in (views share the key)."""
    base = x
    while base.base is not None:
        base = base.base
    return id(base), int(base.nbytes)


def synchronize() -> None:
    _cupy().cuda.get_current_stream().synchronize()


_peak = [0]


def peak_memory() -> int | None:
    """Bytes held by CuPy's default memory pool (CuPy keeps no true peak figure)."""
    pool = _cupy().get_default_memory_pool()
    _peak[0] = max(_peak[0], pool.total_bytes())
    return _peak[0]


def reset_peak_memory() -> None:
    _peak[0] = _cupy().get_default_memory_pool().total_bytes()


def scipy_module():
    import cupyx.scipy  # deferred: part of CuPy, an optional dependency

    return cupyx.scipy


def devices() -> list[str]:
    cp = _cupy()
    out = []
    for i in range(cp.cuda.runtime.getDeviceCount()):
        props = cp.cuda.runtime.getDeviceProperties(i)
        out.append(f"cuda:{i} ({props['name'].decode()})")
    return out


# --- convolution kernels (im2col through strided views; see _conv.py) ---
from . import _conv as _conv_impl  # noqa: E402


def conv2d(x, w, stride=1, padding=0):
    """2-D cross-correlation, NCHW (see :mod:`implicitnet.backends._conv`)."""
    return _conv_impl.conv2d(_cupy(), x, w, stride, padding)


def conv2d_input_grad(g, w, x_shape, stride=1, padding=0):
    """VJP of :func:`conv2d` with respect to the input."""
    return _conv_impl.conv2d_input_grad(_cupy(), g, w, tuple(x_shape), stride, padding)


def conv2d_weight_grad(g, x, w_shape, stride=1, padding=0):
    """VJP of :func:`conv2d` with respect to the weight."""
    return _conv_impl.conv2d_weight_grad(_cupy(), g, x, tuple(w_shape), stride, padding)
