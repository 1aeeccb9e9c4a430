"""PyTorch backend: torch tensors on the CPU and on CUDA devices.

implicitnet uses PyTorch only as an array library, through array-api-compat's wrapper
(``array_api_compat.torch``); gradients come from implicitnet's own autodiff, never from
``torch.autograd``. Tensors are created on PyTorch's default device
(``torch.get_default_device()``, the CPU unless changed with ``torch.set_default_device``)
or on the device asked for. PyTorch is an optional dependency: without it this backend
is unavailable, and says why.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from . import _common

name = "torch"


def _import_torch():
    try:
        import torch  # deferred: an optional dependency, slow to import
    except Exception as exc:  # ImportError, or a shared library failing to load
        return None, f"PyTorch is not importable ({type(exc).__name__}: {exc}; pip install torch)"
    return torch, ""


_library = _common.OptionalLibrary("torch", _import_torch)
available = _library.available
unavailable_reason = _library.unavailable_reason
_torch = _library.module


def cuda_available() -> bool:
    """Whether PyTorch sees a usable CUDA device."""
    torch = _library.loaded()
    return torch is not None and torch.cuda.is_available()


def default_device():
    """The device where new tensors go (``torch.get_default_device()``)."""
    return _torch().get_default_device()


def set_default_device(device) -> None:
    """Make `device` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) where new tensors go.

    This is PyTorch's own process-wide setting (``torch.set_default_device``): it also
    places the tensors that ``xp.asarray``, ``xp.zeros``, ... of the array-API namespace
    create without an explicit device. ``None`` restores PyTorch's default (the CPU,
    without the small per-call cost of a default-device mode).
    """
    torch = _torch()
    if device is None:
        torch.set_default_device(None)
        return
    dev = torch.device(device)
    if dev.type == "cpu":  # PyTorch's own default: no default-device mode needed
        torch.set_default_device(None)
        return
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"`device` {device!r}: PyTorch sees no CUDA device here"
        raise ValueError(msg)
    torch.set_default_device(dev)


namespace = _common.compat_namespace("torch")
# array-api-compat looks at the type without importing torch (which is slow).
is_array = array_api_compat.is_torch_array


def from_numpy(a, *, device=None):
    """A tensor holding a copy of the NumPy array `a`, on `device` (default: PyTorch's)."""
    torch = _torch()
    a = np.asarray(a)
    if a.dtype.byteorder not in "=|":
        a = a.astype(a.dtype.newbyteorder("="))
    t = torch.from_numpy(np.array(a, copy=True, order="C"))
    return t.to(torch.get_default_device() if device is None else device)


def to_numpy(x) -> np.ndarray:
    """The values of the tensor `x` as a NumPy array (a device-to-host copy on CUDA)."""
    return x.detach().cpu().numpy()


def random_normal(shape, seed, *, dtype=None, device=None):
    return from_numpy(_common.host_normal(shape, seed, dtype), device=device)


def random_uniform(shape, seed, *, low=0.0, high=1.0, dtype=None, device=None):
    return from_numpy(_common.host_uniform(shape, seed, dtype, low, high), device=device)


def storage(x) -> tuple[int, int]:
    """``(key, nbytes)`` of the storage `x` lives in; views of one storage share the key."""
    s = x.untyped_storage()
    return (s.device.type, s.data_ptr()), int(s.nbytes())


def synchronize() -> None:
    """Wait for queued CUDA work (nothing to wait for on the CPU)."""
    torch = _torch()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_memory() -> int | None:
    """Peak bytes allocated by PyTorch on the current CUDA device.

    On the CPU PyTorch keeps no such figure, and :mod:`tracemalloc` does not see its
    buffers: ``None`` there.
    """
    torch = _torch()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return None


def reset_peak_memory() -> None:
    torch = _torch()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


# SciPy itself: it serves CPU tensors through NumPy (there is no SciPy for CUDA).
scipy_module = _common.scipy


def devices() -> list[str]:
    torch = _torch()
    out = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.append(f"cuda:{i} ({torch.cuda.get_device_name(i)})")
    return out


# --- convolution kernels: PyTorch's own (cuDNN on CUDA), NCHW ---


def conv2d(x, w, stride=1, padding=0):
    """2-D cross-correlation, NCHW (``torch.nn.functional.conv2d``)."""
    return _torch().nn.functional.conv2d(x, w, stride=stride, padding=padding)


def conv2d_input_grad(g, w, x_shape, stride=1, padding=0):
    """VJP of :func:`conv2d` with respect to the input."""
    torch = _torch()
    return torch.nn.grad.conv2d_input(tuple(x_shape), w, g, stride=stride, padding=padding)


def conv2d_weight_grad(g, x, w_shape, stride=1, padding=0):
    """VJP of :func:`conv2d` with respect to the weight."""
    torch = _torch()
    return torch.nn.grad.conv2d_weight(x, tuple(w_shape), g, stride=stride, padding=padding)
