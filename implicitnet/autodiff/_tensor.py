"""The autodiff ``Tensor``: an array that records what is applied to it.

The tape itself (trace levels, nodes, primitives) is :mod:`._core`; the primitives are
:mod:`._ops`. This module puts the two together as an array-like class whose operators
are those primitives, and whose ``__array_namespace__()`` is the differentiable
namespace (:mod:`._namespace`). The imports run one way,
``_core <- _ops <- _namespace <- _tensor <- _transforms, _summary``: nothing below this
module imports it, and nothing is attached to the class from outside.
"""

from __future__ import annotations

import operator

import array_api_compat

from . import _ops
from ._core import AbstractTensor, _raw, _raw_namespace, _unwrap_all
from ._namespace import differentiable_namespace

__all__ = ["Tensor"]


def _reflected(prim):
    """The reflected operator of the binary primitive `prim`: ``other op self``."""

    def method(self, other):
        return prim(other, self)

    return method


def _on_values(op):
    """An operator with no derivative (comparison, bitwise): computed on the raw values."""

    def method(self, other):
        return op(_raw(self), _unwrap_all(other))

    return method


def _not_differentiable(name: str, op):
    """An operator that computes on constants and refuses traced tensors."""

    def method(self, other):
        if self._level > 0 or (isinstance(other, AbstractTensor) and other._level > 0):
            msg = f"`{name}` is not differentiable (yet)"
            raise NotImplementedError(msg)
        return op(_raw(self), _unwrap_all(other))

    return method


class Tensor(AbstractTensor):
    """An array that records the operations applied to it, for reverse-mode autodiff.

    A ``Tensor`` wraps one backend array (or, under nested transforms, a ``Tensor`` of an
    outer trace). It behaves like an array-API array: it has ``shape``, ``dtype``,
    ``device``, ``ndim``, ``size``, ``T`` and ``mT``, the arithmetic operators in both
    operand orders, comparisons (which return plain boolean arrays) and indexing, and
    ``__array_namespace__()`` returns implicitnet's differentiable namespace for its
    backend. Tensors are immutable.

    Tensors are created by the transforms (:func:`grad`, :func:`value_and_grad`,
    :func:`vjp`); ``Tensor(x)`` builds a *constant* tensor, which records nothing.

    Notes
    -----
    **Operand order with raw arrays.** A tensor's operators accept raw arrays and Python
    scalars on either side, and so do the functions of the differentiable namespace
    (``xp.multiply(raw, t)``, ``implicitnet.ops.add(raw, t)``, ...). ``raw + t`` with
    the raw array on the *left* works on NumPy and CuPy (the tensor's
    ``__array_ufunc__`` turns NumPy's operator into the tensor's reflected one; any
    other NumPy function applied to a traced tensor raises ``TypeError`` saying to use
    the differentiable namespace), but **not on
    array-api-strict**: its operators raise ``TypeError`` for a foreign operand
    instead of returning ``NotImplemented``, so Python never asks the tensor. Inside
    the transforms this cannot happen with the function's arguments, because
    :func:`grad`, :func:`value_and_grad`, :func:`vjp` and
    :func:`~implicitnet.testing.check_grads` wrap every array argument as a tensor
    (constant for the ones not differentiated). It can happen with raw arrays that the
    function gets in another way (a closure, a global, a value made with a creation
    function such as ``xp.ones``): with array-api-strict, put such arrays on the
    *right* of an operator (``t * raw``, ``t - raw``), or call the namespace function
    (``xp.subtract(raw, t)``), or wrap them as ``Tensor(raw)``. VJP rules follow the
    same rule (they are written with :mod:`implicitnet.ops` functions), which is what
    makes grad-of-grad work on array-api-strict.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> inet.grad(lambda x: inet.ops.sum(x * x))(np.array([1.0, 2.0]))
    array([2., 4.])
    """

    __slots__ = ()

    _implicitnet_tensor = True
    __array_priority__ = 1000

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # NumPy calls this for ``raw op tensor`` (its operators are ufuncs) and for a
        # NumPy function applied to a tensor. The first is the tensor's own operator;
        # the second would leave the tape, so it is refused with a pointer to the
        # differentiable namespace.
        name = ufunc.__name__.removeprefix("cupy_")  # CuPy's ufuncs are "cupy_add", ...
        names = _UFUNC_OPERATORS.get(name)
        if names is not None and method == "__call__" and not kwargs and len(inputs) == 2:
            a, b = inputs
            if type(a) is Tensor:
                return getattr(a, names[0])(b)
            return getattr(b, names[1])(a)
        what = name if method == "__call__" else f"{name}.{method}"
        raise TypeError(_numpy_message(f"numpy.{what}"))

    # --- array attributes -------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self._implicitnet_data.shape)

    @property
    def dtype(self):
        return self._implicitnet_data.dtype

    @property
    def ndim(self) -> int:
        return self._implicitnet_data.ndim

    @property
    def size(self) -> int:
        # array-api-compat's size(): a torch tensor's own ``.size`` is a method
        return array_api_compat.size(self._implicitnet_data)

    @property
    def device(self):
        data = self._implicitnet_data
        if type(data) is Tensor:
            return data.device
        return array_api_compat.device(data)

    @property
    def traced(self) -> bool:
        """Whether this tensor belongs to a trace (``False`` for constants)."""
        return self._level > 0

    def __array_namespace__(self, api_version=None):
        return differentiable_namespace(_raw_namespace((_raw(self),)))

    # --- conversions to Python numbers ----------------------------------------------
    def _scalar(self):
        raw = _raw(self)
        if raw.ndim != 0:
            if array_api_compat.size(raw) != 1:
                msg = (
                    f"only size-1 tensors can be converted to Python scalars, got shape "
                    f"{tuple(raw.shape)}"
                )
                raise TypeError(msg)
            raw = _raw_namespace((raw,)).reshape(raw, ())
        return raw

    def __float__(self) -> float:
        return float(self._scalar())

    def __int__(self) -> int:
        return int(self._scalar())

    def __bool__(self) -> bool:
        return bool(self._scalar())

    def __complex__(self) -> complex:
        return complex(self._scalar())

    def __len__(self) -> int:
        if self.ndim == 0:
            msg = "len() of a 0-d tensor"
            raise TypeError(msg)
        return self.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i, ...]

    # --- interop -------------------------------------------------------------------
    def __dlpack__(self, *args, **kwargs):
        return _raw(self).__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return _raw(self).__dlpack_device__()

    def __array__(self, dtype=None, copy=None):
        if self._level:
            # A traced value turned into a NumPy array loses its gradient silently.
            raise TypeError(_numpy_message("a NumPy conversion"))
        raw = _raw(self)
        if not hasattr(raw, "__array__"):
            msg = f"cannot convert a tensor of {type(raw).__module__} to a NumPy array"
            raise TypeError(msg)
        return raw.__array__() if dtype is None else raw.__array__(dtype)

    def __setitem__(self, key, value):
        msg = (
            "implicitnet tensors are immutable: build a new array instead, e.g. "
            "`xp.where(mask, value, x)` or `xp.concat(...)`"
        )
        raise TypeError(msg)

    def __repr__(self) -> str:
        kind = f"level={self._level}" if self._level else "constant"
        return f"Tensor({_raw(self)!r}, {kind})"

    # --- operators -------------------------------------------------------------------
    # The primitives are plain functions, so they bind as methods: `t + x` is add(t, x),
    # and `x + t` is add(x, t).
    __add__, __radd__ = _ops.add, _reflected(_ops.add)
    __sub__, __rsub__ = _ops.subtract, _reflected(_ops.subtract)
    __mul__, __rmul__ = _ops.multiply, _reflected(_ops.multiply)
    __truediv__, __rtruediv__ = _ops.divide, _reflected(_ops.divide)
    __pow__, __rpow__ = _ops.pow, _reflected(_ops.pow)
    __matmul__, __rmatmul__ = _ops.matmul, _reflected(_ops.matmul)
    __neg__ = _ops.negative

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops.abs(self)

    def __getitem__(self, key):
        return _ops._getitem(self, key=_unwrap_all(key))

    @property
    def mT(self):
        """Transpose of the last two axes."""
        return _ops.matrix_transpose(self)

    @property
    def T(self):
        """Transpose of a 2-D tensor."""
        if self.ndim != 2:
            msg = f"`.T` needs a 2-D tensor, got {self.ndim}-D; use `.mT` or permute_dims"
            raise ValueError(msg)
        return _ops.matrix_transpose(self)

    def astype(self, dtype, /, *, copy=True, device=None):
        return _ops.astype(self, dtype)

    # Comparisons and bitwise operators have no derivative: they return plain arrays.
    __eq__ = _on_values(operator.eq)
    __ne__ = _on_values(operator.ne)
    __lt__ = _on_values(operator.lt)
    __le__ = _on_values(operator.le)
    __gt__ = _on_values(operator.gt)
    __ge__ = _on_values(operator.ge)

    def __invert__(self):
        return ~_raw(self)

    __and__, __rand__ = _on_values(operator.and_), _on_values(lambda a, b: b & a)
    __or__, __ror__ = _on_values(operator.or_), _on_values(lambda a, b: b | a)
    __xor__, __rxor__ = _on_values(operator.xor), _on_values(lambda a, b: b ^ a)
    __floordiv__ = _not_differentiable("floor_divide", operator.floordiv)
    __rfloordiv__ = _not_differentiable("floor_divide", lambda a, b: b // a)
    __mod__ = _not_differentiable("remainder", operator.mod)
    __rmod__ = _not_differentiable("remainder", lambda a, b: b % a)

    __hash__ = None  # like arrays: == is elementwise


# NumPy ufuncs behind the operators, and the tensor methods for each operand order
# (``a < t`` reflects to ``t > a``).
_UFUNC_OPERATORS = {
    "add": ("__add__", "__radd__"),
    "subtract": ("__sub__", "__rsub__"),
    "multiply": ("__mul__", "__rmul__"),
    "divide": ("__truediv__", "__rtruediv__"),
    "true_divide": ("__truediv__", "__rtruediv__"),
    "floor_divide": ("__floordiv__", "__rfloordiv__"),
    "remainder": ("__mod__", "__rmod__"),
    "power": ("__pow__", "__rpow__"),
    "matmul": ("__matmul__", "__rmatmul__"),
    "equal": ("__eq__", "__eq__"),
    "not_equal": ("__ne__", "__ne__"),
    "less": ("__lt__", "__gt__"),
    "less_equal": ("__le__", "__ge__"),
    "greater": ("__gt__", "__lt__"),
    "greater_equal": ("__ge__", "__le__"),
}


def _numpy_message(what: str) -> str:
    return (
        f"{what} was applied to an implicitnet Tensor (a value under `grad`/`vjp`); "
        "NumPy cannot record it, so its gradient would be lost. Write the function "
        "with the namespace of its inputs, `xp = inet.namespace(z)` and then `xp.tanh(z)`, "
        "`xp.sum(z)`, ..., or with `implicitnet.ops` (`inet.ops.tanh(z)`)"
    )
