"""Array-API helpers: namespace resolution and the few functions the standard lacks.

Everything here works on any array-API namespace, including implicitnet's
differentiable one, so code written with these helpers is differentiable for free.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from . import backends
from .backends import host

__all__ = [
    "as_float_array",
    "default_float",
    "device",
    "host_reader",
    "is_array",
    "is_tensor",
    "namespace",
    "row_norms",
    "set_index",
    "small_solve",
    "to_host",
    "untraced",
    "vdot",
    "vector_norm",
]


def is_tensor(x: Any) -> bool:
    """Whether `x` is an implicitnet autodiff ``Tensor`` (without importing autodiff)."""
    return getattr(type(x), "_implicitnet_tensor", False)


_SCALAR_TYPES = (bool, int, float, complex)
_IS_ARRAY_TYPE: dict[type, bool] = {}


def is_array(x: Any) -> bool:
    """Whether `x` is an array: an autodiff ``Tensor`` or an array of any array library.

    Arrays are recognised through array-api-compat (:func:`array_api_compat.is_array_api_obj`
    and its per-library helpers), so libraries whose arrays have no
    ``__array_namespace__`` method (CuPy, PyTorch) count too. NumPy scalars
    (``np.float64(1.0)``) are arrays here; Python numbers are not. The answer is cached
    per type.
    """
    t = type(x)
    try:
        return _IS_ARRAY_TYPE[t]
    except KeyError:
        pass
    ok = is_tensor(x) or (
        t not in _SCALAR_TYPES and x is not None and array_api_compat.is_array_api_obj(x)
    )
    _IS_ARRAY_TYPE[t] = ok
    return ok


def untraced(x: Any) -> Any:
    """The array under any autodiff boxes of `x`: its values, recording nothing.

    For bookkeeping on traced values (norms read for a convergence test, ...), so that
    the tape of an unrolled solve holds only what the gradient needs.
    """
    while is_tensor(x):
        x = x._implicitnet_data
    return x


def namespace(*arrays: Any, xp: Any = None):
    """Return the array-API namespace of `arrays`, resolving autodiff tensors.

    Like :func:`array_api_compat.array_namespace`, but a mix of implicitnet ``Tensor``
    objects and raw arrays of the same library resolves to the differentiable namespace
    of the tensors, where array-api-compat alone would refuse the mix. Python scalars and
    ``None`` are ignored.

    Parameters
    ----------
    *arrays : array, Tensor, scalar or None
        The objects whose namespace is wanted.
    xp : namespace, optional
        If given, returned as it is (the usual ``xp=None`` convention).

    Returns
    -------
    namespace
        The array-API namespace.

    Raises
    ------
    TypeError
        If no array is given, or the arrays come from different libraries.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> inet.namespace(np.ones(3)).__name__
    'array_api_compat.numpy'
    """
    if xp is not None:
        return xp
    tensors = []
    raw = []
    for a in arrays:
        # exact types: NumPy scalars (np.float64 subclasses float) are arrays here
        if a is None or type(a) in (bool, int, float, complex):
            continue
        if is_tensor(a):
            tensors.append(a)
        else:
            raw.append(a)
    if tensors:
        ns = tensors[0].__array_namespace__()
        for t in tensors[1:]:
            if t.__array_namespace__() is not ns:
                msg = "tensors from different array libraries cannot be mixed"
                raise TypeError(msg)
        if raw:
            inner = array_api_compat.array_namespace(*raw)
            if inner is not ns.backend_namespace:
                msg = (
                    f"cannot mix tensors of {ns.backend_namespace.__name__} with arrays "
                    f"of {inner.__name__}"
                )
                raise TypeError(msg)
        return ns
    if not raw:
        msg = "namespace() needs at least one array"
        raise TypeError(msg)
    return array_api_compat.array_namespace(*raw)


def device(x: Any):
    """The device of `x` (works for tensors and raw arrays)."""
    if is_tensor(x):
        return x.device
    return array_api_compat.device(x)


def default_float(xp):
    """The default floating dtype of `xp` (float64 on every supported library)."""
    info = getattr(xp, "__array_namespace_info__", None)
    if info is not None:
        try:
            return info().default_dtypes()["real floating"]
        except Exception:  # pragma: no cover - namespaces without full info support
            pass
    return xp.float64


def as_float_array(x: Any, *, xp, dtype=None, name: str | None = None):
    """`x` as an array of a real floating dtype; integers become the default float.

    With `name` (the argument's name, for messages), the dtype must also be one the
    solvers support: float32 or float64 (or a bool/integer dtype, converted), never an
    object array, float16 or an extended precision.
    """
    if not is_array(x):
        x = xp.asarray(x)
    if dtype is not None:
        return x if x.dtype == dtype else xp.astype(x, dtype)
    if name is not None:
        _check_solver_dtype(x, name, xp=xp)
    if xp.isdtype(x.dtype, "real floating"):
        return x
    if xp.isdtype(x.dtype, "complex floating"):
        where = "" if name is None else f"`{name}`: "
        msg = f"{where}complex arrays are not supported, got dtype {x.dtype}"
        raise TypeError(msg)
    return xp.astype(x, default_float(xp))


def _check_solver_dtype(x: Any, name: str, *, xp) -> None:
    """Raise our own `TypeError` for a dtype no solver supports (see `as_float_array`)."""
    dt = x.dtype
    if xp.isdtype(dt, ("bool", "integral", "complex floating")):
        return
    if xp.isdtype(dt, "real floating"):
        if dt in (xp.float32, xp.float64):
            return
        msg = (
            f"`{name}` has dtype {dt}; the solvers compute in float32 or float64: "
            f"convert `{name}` first, e.g. with `xp.astype({name}, xp.float32)`"
        )
        raise TypeError(msg)
    msg = (
        f"`{name}` must be an array of numbers, got dtype {dt} (an object array, e.g. "
        "holding None?); build it from floats, e.g. `xp.asarray(values, dtype=xp.float64)`"
    )
    raise TypeError(msg)


def vector_norm(x: Any, /, *, axis=None, keepdims: bool = False, xp):
    """Euclidean norm of `x` over `axis` (all axes by default)."""
    return xp.linalg.vector_norm(x, axis=axis, keepdims=keepdims)


def row_norms(x: Any, *, xp: Any) -> Any:
    """Euclidean norm of each row of the ``(batch, n)`` array `x`.

    ``sqrt(vecdot(x, x))`` on raw arrays (one fused reduction, no temporary), the
    differentiable ``vector_norm`` on autodiff tensors.
    """
    if is_tensor(x):
        return xp.linalg.vector_norm(x, axis=-1)
    return xp.sqrt(xp.vecdot(x, x))


def vdot(a: Any, b: Any, /, *, axis=-1, xp):
    """Real inner product of `a` and `b` along `axis` (batched over the other axes)."""
    return xp.sum(a * b, axis=axis)


def small_solve(A: Any, b: Any, /, *, xp):
    """Solve the (batched) small dense systems ``A x = b`` with ``b[..., n]``.

    On NumPy arrays this calls the backend's solver directly (the array-API wrapper's
    overhead is comparable to the work for a few 6 x 6 systems); elsewhere, and on
    autodiff tensors, ``xp.linalg.solve``.
    """
    if array_api_compat.is_numpy_namespace(xp):
        return host.solve(A, b[..., None])[..., 0]
    return xp.linalg.solve(A, b[..., None])[..., 0]


def set_index(buf: Any, index: Any, value: Any, /, *, xp) -> Any:
    """``buf`` with ``buf[index]`` replaced by `value`: in place on raw arrays.

    For a raw array of any namespace (``__setitem__`` is part of the standard) this is
    ``buf[index] = value; return buf``: use it only on buffers the caller allocated
    itself and never hands out. When `buf` or `value` is an autodiff ``Tensor`` (which
    must stay out of place to be differentiable) it returns a new tensor built with
    ``where`` on a one-hot mask. There `index` may hold only integers and full slices
    (``:``), one entry per leading axis (missing trailing entries mean ``:``; no
    ``...``), and `value` must broadcast to ``buf[index]``.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet._xp import namespace, set_index
    >>> buf = np.zeros((2, 3))
    >>> set_index(buf, (slice(None), 1), np.array([1.0, 2.0]), xp=namespace(buf)) is buf
    True
    >>> buf.tolist()
    [[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]
    """
    if not isinstance(index, tuple):
        index = (index,)
    if len(index) < buf.ndim:  # the standard wants every axis indexed
        index = index + (slice(None),) * (buf.ndim - len(index))
    if not (is_tensor(buf) or is_tensor(value)):
        buf[index] = value
        return buf
    mask = None
    kept = []  # axes of `buf` that remain in ``buf[index]``
    for axis in range(buf.ndim):
        ix = index[axis] if axis < len(index) else slice(None)
        if isinstance(ix, slice) and ix == slice(None):
            kept.append(axis)
            continue
        if isinstance(ix, bool) or not isinstance(ix, int):
            msg = "set_index on a tensor supports only integers and full slices"
            raise TypeError(msg)
        size = buf.shape[axis]
        shape = [1] * buf.ndim
        shape[axis] = size
        hit = xp.reshape(xp.arange(size, device=device(buf)) == (ix % size), tuple(shape))
        mask = hit if mask is None else xp.logical_and(mask, hit)
    if mask is None:  # only full slices: the whole buffer is replaced
        return xp.broadcast_to(value, buf.shape)
    vndim = getattr(value, "ndim", 0)
    if vndim:  # align value's axes with the axes of `buf` that `index` keeps
        shape = [1] * buf.ndim
        for axis, size in zip(kept[len(kept) - vndim :], value.shape):
            shape[axis] = size
        value = xp.reshape(value, tuple(shape))
    return xp.where(mask, value, buf)


def host_reader(x: Any, /):
    """A function that reads arrays of `x`'s library to the host as Python lists.

    The same as :func:`to_host` with the backend looked up once: for loops that read a
    small array of the same library every iteration.
    """
    convert = backends.backend_of(x).to_numpy

    def read(a: Any, /) -> list:
        return convert(untraced(a)).tolist()  # autodiff tensors: read through

    return read


def to_host(x: Any, /) -> list:
    """The values of `x` as a (nested) Python list, in one device-to-host transfer.

    Autodiff tensors are read through without recording anything. This forces a device
    sync on GPU backends: solver drivers call it once per iteration, on a small array of
    residual norms, and nowhere else in a hot loop.
    """
    return host_reader(x)(x)
