"""Differentiable primitives and their VJP rules, named after the array API.

Each primitive computes on backend arrays (its ``xp`` is the backend namespace); each
rule is written with these same functions, so rules are differentiable themselves
(grad-of-grad). Static arguments (axis, shape, keepdims, ...) are keyword arguments of
the primitive; thin public wrappers give the array-API signatures.

What the differentiable namespace and :mod:`implicitnet.ops` serve is declared here, by
``primitive(export=True)`` on a primitive with the array-API signature and ``@export``
on a wrapper: a new function is one edit in this file (and its entry in the table of
``tests/test_ops_vjp.py``).
"""

from __future__ import annotations

import builtins
import math
import operator

from .._xp import device as _device
from ._core import (
    AbstractTensor,
    _as_array,
    _raw,
    _raw_namespace,
    _unwrap_all,
    defvjp,
    export,
    primitive,
)

_SCALARS = (bool, int, float)


def _is_scalar(x) -> bool:
    # exact types: NumPy scalars (np.float64 subclasses float) are arrays here
    return type(x) in _SCALARS


def _norm_axes(axis, ndim: int) -> tuple[int, ...]:
    """`axis` (None, int or tuple) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(sorted(a % ndim if ndim else a for a in axis))


# ----------------------------------------------------------------------------------
# Helpers used by the rules
# ----------------------------------------------------------------------------------


@export
def unbroadcast(ct, like, *, xp=None):
    """Sum the cotangent `ct` back to the shape (and dtype) of the operand `like`.

    Undoes broadcasting in a VJP rule: leading axes that broadcasting added are
    summed away, and so are axes where `like` has size 1. Returns ``None`` when `like`
    is a Python scalar (it has no cotangent).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> inet.unbroadcast(np.ones((3, 2)), like=np.ones((1, 2)))
    array([[3., 3.]])
    """
    if like is None or type(like) in _SCALARS:
        return None
    shape = like.shape
    if ct.shape == shape and ct.dtype == like.dtype:  # the common case: nothing to do
        return ct
    shape = tuple(shape)
    ct_shape = tuple(ct.shape)
    if ct_shape != shape:
        lead = len(ct_shape) - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, s in enumerate(shape) if s == 1 and ct_shape[lead + i] != 1
        )
        if axes:
            ct = sum(ct, axis=axes)
        ct = reshape(ct, shape)
    if ct.dtype != like.dtype:
        ct = astype(ct, like.dtype)
    return ct


class _ShapeDtype:
    """The shape and dtype of an operand, for :func:`unbroadcast` (no value needed)."""

    __slots__ = ("dtype", "shape")

    def __init__(self, shape, dtype):
        self.shape = tuple(shape)
        self.dtype = dtype


def _keepdims_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _expand_to(ct, x, axis, keepdims):
    """Broadcast the cotangent of a reduction of `x` back to ``x.shape``."""
    shape = tuple(x.shape)
    axes = _norm_axes(axis, len(shape))
    if not keepdims:
        ct = reshape(ct, _keepdims_shape(shape, axes))
    return broadcast_to(ct, shape)


def _float_mask(mask, dtype):
    """A boolean backend array as 0/1 of `dtype` (a constant)."""
    return _raw_namespace((mask,)).astype(mask, dtype)


# What the rules read, for the declarations of `defvjp` (see its `save_inputs`): a rule
# that reads only shapes keeps nothing; products keep the other operand.
def _needs_first(needs):
    return needs[0]


def _needs_second(needs):
    return needs[1]


def _divide_saves(needs):  # d/dx1 = 1/x2, d/dx2 = -ans/x2
    return (False, True)


def _pow_saves(needs):  # d/dx1 = x2 x1**(x2-1), d/dx2 = log(x1) ans
    return (True, needs[0])


def _where_saves(needs):  # only the condition
    return (True, False, False)


def _solve_saves(needs):  # dB = A^{-T} dX, dA = -dB X^T
    return (True, False)


def _take_saves(needs):  # only the indices
    return (False, True)


# ----------------------------------------------------------------------------------
# Elementwise arithmetic
# ----------------------------------------------------------------------------------


@primitive(export=True)
def add(x1, x2, /):
    return x1 + x2


@defvjp(add, save_inputs="none", save_output=False)
def _add_vjp(ct, ans, x1, x2, /, *, xp):
    return unbroadcast(ct, x1), unbroadcast(ct, x2)


@primitive(export=True)
def subtract(x1, x2, /):
    return x1 - x2


@defvjp(subtract, save_inputs="none", save_output=False)
def _subtract_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    return unbroadcast(ct, x1), (unbroadcast(-ct, x2) if needs_grad[1] else None)


@primitive(export=True)
def multiply(x1, x2, /):
    return x1 * x2


@defvjp(multiply, save_inputs="others", save_output=False)
def _multiply_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    g1 = unbroadcast(multiply(ct, x2), x1) if needs_grad[0] else None
    g2 = unbroadcast(multiply(ct, x1), x2) if needs_grad[1] else None
    return g1, g2


@primitive(export=True)
def divide(x1, x2, /):
    return x1 / x2


@defvjp(divide, save_inputs=_divide_saves, save_output=_needs_second)
def _divide_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    g1 = unbroadcast(divide(ct, x2), x1) if needs_grad[0] else None
    g2 = unbroadcast(divide(multiply(-ct, ans), x2), x2) if needs_grad[1] else None
    return g1, g2


@primitive(export=True)
def pow(x1, x2, /):
    return x1**x2


@defvjp(pow, save_inputs=_pow_saves, save_output=_needs_second)
def _pow_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    g1 = g2 = None
    if needs_grad[0]:
        # d/dx x**p = p x**(p-1); written as p * x**(p-1) (exact at x = 0 for p >= 1)
        g1 = unbroadcast(multiply(multiply(ct, x2), pow(x1, x2 - 1)), x1)
    if needs_grad[1] and _is_scalar(x1):
        g2 = unbroadcast(multiply(ct, ans) * math.log(x1), x2) if x1 > 0 else None
    elif needs_grad[1]:
        # d/dp x**p = log(x) x**p, defined for x > 0 (0 elsewhere)
        pos = _raw(x1 > 0)
        safe = where(pos, x1, 1.0)
        g2 = unbroadcast(where(pos, multiply(multiply(ct, ans), log(safe)), 0.0), x2)
    return g1, g2


@primitive(export=True)
def negative(x, /):
    return -x


@defvjp(negative, save_inputs="none", save_output=False)
def _negative_vjp(ct, ans, x, /, *, xp):
    return (-ct,)


@primitive(export=True)
def maximum(x1, x2, /, *, xp):
    return xp.maximum(x1, x2)


def _select_vjp(ct, ans, x1, x2, first_wins, needs_grad):
    """The VJP of an elementwise choice between `x1` and `x2` (``maximum``, ``minimum``).

    The cotangent goes where ``first_wins(x1, x2)`` says, split evenly on ties; the
    masks compare the raw values (a raw array-api-strict array refuses a Tensor on its
    right).
    """
    dtype = ans.dtype
    r1, r2 = _raw(x1), _raw(x2)
    w1 = _float_mask(first_wins(r1, r2), dtype) + 0.5 * _float_mask(r1 == r2, dtype)
    g1 = unbroadcast(multiply(ct, w1), x1) if needs_grad[0] else None
    g2 = unbroadcast(multiply(ct, 1.0 - w1), x2) if needs_grad[1] else None
    return g1, g2


@defvjp(maximum, save_output=False)
def _maximum_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    return _select_vjp(ct, ans, x1, x2, operator.gt, needs_grad)


@primitive(export=True)
def minimum(x1, x2, /, *, xp):
    return xp.minimum(x1, x2)


@defvjp(minimum, save_output=False)
def _minimum_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    return _select_vjp(ct, ans, x1, x2, operator.lt, needs_grad)


@primitive(export=True)
def logaddexp(x1, x2, /, *, xp):
    return xp.logaddexp(x1, x2)


@defvjp(logaddexp)
def _logaddexp_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    g1 = unbroadcast(multiply(ct, exp(subtract(x1, ans))), x1) if needs_grad[0] else None
    g2 = unbroadcast(multiply(ct, exp(subtract(x2, ans))), x2) if needs_grad[1] else None
    return g1, g2


@primitive(export=True)
def where(condition, x1, x2, /, *, xp):
    return xp.where(condition, x1, x2)


@defvjp(where, save_inputs=_where_saves, save_output=False)
def _where_vjp(ct, ans, condition, x1, x2, /, *, xp, needs_grad):
    cond = _raw(condition)
    g1 = unbroadcast(where(cond, ct, 0.0), x1) if needs_grad[1] else None
    g2 = unbroadcast(where(cond, 0.0, ct), x2) if needs_grad[2] else None
    return None, g1, g2


@primitive(name="clip")
def _clip(x, min, max, /, *, xp):
    return xp.clip(x, min, max)


@defvjp(_clip, save_output=False)
def _clip_vjp(ct, ans, x, min, max, /, *, xp, needs_grad):
    inside = None
    g_min = g_max = None
    rx = _raw(x)
    if min is not None:
        below = rx < _raw(min)
        inside = ~below
        if needs_grad[1]:
            g_min = unbroadcast(where(below, ct, 0.0), min)
    if max is not None:
        above = rx > _raw(max)
        inside = ~above if inside is None else inside & ~above
        if needs_grad[2]:
            g_max = unbroadcast(where(above, ct, 0.0), max)
    g_x = ct if inside is None else where(inside, ct, 0.0)
    return unbroadcast(g_x, x), g_min, g_max


@export
def clip(x, /, min=None, max=None):
    """Differentiable ``clip(x, min, max)``; `min` and `max` may be arrays."""
    return _clip(x, min, max)


# ----------------------------------------------------------------------------------
# Elementwise functions
# ----------------------------------------------------------------------------------


@primitive(export=True)
def exp(x, /, *, xp):
    return xp.exp(x)


@defvjp(exp, save_inputs="none")
def _exp_vjp(ct, ans, x, /, *, xp):
    return (multiply(ct, ans),)


@primitive(export=True)
def log(x, /, *, xp):
    return xp.log(x)


@defvjp(log, save_output=False)
def _log_vjp(ct, ans, x, /, *, xp):
    return (divide(ct, x),)


@primitive(export=True)
def log1p(x, /, *, xp):
    return xp.log1p(x)


@defvjp(log1p, save_output=False)
def _log1p_vjp(ct, ans, x, /, *, xp):
    return (divide(ct, 1.0 + x),)


@primitive(export=True)
def expm1(x, /, *, xp):
    return xp.expm1(x)


@defvjp(expm1, save_inputs="none")
def _expm1_vjp(ct, ans, x, /, *, xp):
    return (multiply(ct, ans + 1.0),)


@primitive(export=True)
def sqrt(x, /, *, xp):
    return xp.sqrt(x)


@defvjp(sqrt, save_inputs="none")
def _sqrt_vjp(ct, ans, x, /, *, xp):
    return (divide(ct * 0.5, ans),)


@primitive(export=True)
def tanh(x, /, *, xp):
    return xp.tanh(x)


@defvjp(tanh, save_inputs="none")
def _tanh_vjp(ct, ans, x, /, *, xp):
    return (multiply(ct, 1.0 - ans * ans),)


@primitive(export=True)
def sin(x, /, *, xp):
    return xp.sin(x)


@defvjp(sin, save_output=False)
def _sin_vjp(ct, ans, x, /, *, xp):
    return (multiply(ct, cos(x)),)


@primitive(export=True)
def cos(x, /, *, xp):
    return xp.cos(x)


@defvjp(cos, save_output=False)
def _cos_vjp(ct, ans, x, /, *, xp):
    return (-multiply(ct, sin(x)),)


@primitive(export=True)
def abs(x, /, *, xp):
    return xp.abs(x)


@defvjp(abs, save_output=False)
def _abs_vjp(ct, ans, x, /, *, xp):
    raw = _raw(x)
    return (multiply(ct, _raw_namespace((raw,)).sign(raw)),)


@primitive(export=True)
def square(x, /, *, xp):
    return xp.square(x)


@defvjp(square, save_output=False)
def _square_vjp(ct, ans, x, /, *, xp):
    return (multiply(2.0 * ct, x),)


@primitive(name="astype")
def _astype(x, /, *, dtype, xp):
    return x if x.dtype == dtype else xp.astype(x, dtype)


@defvjp(_astype, save_inputs="none", save_output=False)
def _astype_vjp(ct, ans, x, /, *, xp, dtype):
    return (astype(ct, x.dtype),)


@export
def astype(x, dtype, /, *, copy=True, device=None):
    """Differentiable ``astype`` between floating dtypes.

    A cast to a non-floating dtype returns a plain (untraced) array: it has no useful
    derivative.
    """
    if not isinstance(x, AbstractTensor):
        xp = _raw_namespace((x,))
        return _as_array(
            xp.astype(x, dtype, copy=copy)
            if device is None
            else xp.astype(x, dtype, copy=copy, device=device)
        )
    xp = _raw_namespace((x,))
    if not xp.isdtype(dtype, "real floating"):
        return xp.astype(_raw(x), dtype)
    return _astype(x, dtype=dtype)


# ----------------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------------


@primitive(export=True)
def sum(x, /, *, axis=None, dtype=None, keepdims=False, xp):
    return xp.sum(x, axis=axis, dtype=dtype, keepdims=keepdims)


@defvjp(sum, save_inputs="none", save_output=False)
def _sum_vjp(ct, ans, x, /, *, xp, axis=None, dtype=None, keepdims=False):
    g = _expand_to(ct, x, axis, keepdims)
    return (g if g.dtype == x.dtype else astype(g, x.dtype),)


@primitive(export=True)
def mean(x, /, *, axis=None, keepdims=False, xp):
    return xp.mean(x, axis=axis, keepdims=keepdims)


@defvjp(mean, save_inputs="none", save_output=False)
def _mean_vjp(ct, ans, x, /, *, xp, axis=None, keepdims=False):
    shape = tuple(x.shape)
    n = math.prod(shape[a] for a in _norm_axes(axis, len(shape)))
    return (_expand_to(ct, x, axis, keepdims) / float(n),)


def _extremum_vjp(ct, ans, x, axis, keepdims):
    # the cotangent goes to the entries equal to the extremum, split evenly among ties
    shape = tuple(x.shape)
    axes = _norm_axes(axis, len(shape))
    ans_k = ans if keepdims else reshape(ans, _keepdims_shape(shape, axes))
    mask = _float_mask(_raw(x) == _raw(ans_k), x.dtype)
    xp = _raw_namespace((mask,))
    count = xp.sum(mask, axis=axes, keepdims=True)
    return (multiply(_expand_to(ct, x, axis, keepdims), mask / count),)


@primitive(export=True)
def max(x, /, *, axis=None, keepdims=False, xp):
    return xp.max(x, axis=axis, keepdims=keepdims)


@defvjp(max)
def _max_vjp(ct, ans, x, /, *, xp, axis=None, keepdims=False):
    return _extremum_vjp(ct, ans, x, axis, keepdims)


@primitive(export=True)
def min(x, /, *, axis=None, keepdims=False, xp):
    return xp.min(x, axis=axis, keepdims=keepdims)


@defvjp(min)
def _min_vjp(ct, ans, x, /, *, xp, axis=None, keepdims=False):
    return _extremum_vjp(ct, ans, x, axis, keepdims)


@primitive(export=True)
def prod(x, /, *, axis=None, dtype=None, keepdims=False, xp):
    return xp.prod(x, axis=axis, dtype=dtype, keepdims=keepdims)


@defvjp(prod, save_output=False)
def _prod_vjp(ct, ans, x, /, *, xp, axis=None, dtype=None, keepdims=False):
    # d prod / d x_i = prod_{j != i} x_j. With z = number of zeros along the axis and
    # p = product of the non-zero entries: z == 0 -> p / x_i; z == 1 -> p at the zero
    # and 0 elsewhere; z >= 2 -> 0.
    axes = _norm_axes(axis, x.ndim)
    zero = _raw(x == 0.0)
    bx = _raw_namespace((zero,))
    nzero = bx.sum(bx.astype(zero, bx.int32), axis=axes, keepdims=True)
    safe = where(zero, 1.0, x)
    p = prod(safe, axis=axes, keepdims=True)
    g = where(zero, where(nzero == 1, p, 0.0), where(nzero == 0, p / safe, 0.0))
    g = multiply(_expand_to(ct, x, axis, keepdims), g)
    return (g if g.dtype == x.dtype else astype(g, x.dtype),)


# ----------------------------------------------------------------------------------
# Linear algebra
# ----------------------------------------------------------------------------------


@primitive(export=True)
def matmul(x1, x2, /):
    return x1 @ x2


@defvjp(matmul, save_inputs="others", save_output=False)
def _matmul_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    # C = A B: dA = dC B^T, dB = A^T dC; 1-D operands are promoted to matrices first.
    # Each operand is kept only for the other's cotangent: read shapes, not values,
    # of an operand that is not.
    g = ct
    if x2.ndim == 1:
        g = expand_dims(g, axis=-1)
    if x1.ndim == 1:
        g = expand_dims(g, axis=-2)
    g1 = g2 = None
    if needs_grad[0]:
        b = expand_dims(x2, axis=-1) if x2.ndim == 1 else x2
        g1 = matmul(g, matrix_transpose(b))
        g1 = unbroadcast(g1, _ShapeDtype((1, *x1.shape), x1.dtype) if x1.ndim == 1 else x1)
        if x1.ndim == 1:
            g1 = reshape(g1, tuple(x1.shape))
    if needs_grad[1]:
        a = expand_dims(x1, axis=0) if x1.ndim == 1 else x1
        g2 = matmul(matrix_transpose(a), g)
        g2 = unbroadcast(g2, _ShapeDtype((*x2.shape, 1), x2.dtype) if x2.ndim == 1 else x2)
        if x2.ndim == 1:
            g2 = reshape(g2, tuple(x2.shape))
    return g1, g2


@primitive(export=True)
def matrix_transpose(x, /, *, xp):
    return xp.matrix_transpose(x)


@defvjp(matrix_transpose, save_inputs="none", save_output=False)
def _matrix_transpose_vjp(ct, ans, x, /, *, xp):
    return (matrix_transpose(ct),)


def _tensordot_axes(axes, n1, n2):
    if isinstance(axes, int):
        return list(range(n1 - axes, n1)), list(range(axes))
    a1, a2 = axes
    a1 = [a1] if isinstance(a1, int) else list(a1)
    a2 = [a2] if isinstance(a2, int) else list(a2)
    return [a % n1 for a in a1], [a % n2 for a in a2]


def _inverse_perm(src):
    perm = [0] * len(src)
    for i, s in enumerate(src):
        perm[s] = i
    return tuple(perm)


@primitive(export=True)
def tensordot(x1, x2, /, *, axes=2, xp):
    return xp.tensordot(x1, x2, axes=axes)


@defvjp(tensordot, save_inputs="others", save_output=False)
def _tensordot_vjp(ct, ans, x1, x2, /, *, xp, needs_grad, axes=2):
    n1, n2 = x1.ndim, x2.ndim
    c1, c2 = _tensordot_axes(axes, n1, n2)
    f1 = [i for i in range(n1) if i not in c1]
    f2 = [i for i in range(n2) if i not in c2]
    k1, k2 = len(f1), len(f2)
    g1 = g2 = None
    if needs_grad[0]:
        # contract ct's x2-part with x2's free axes; the result's axes are x1's free
        # axes followed by x2's contracted axes in increasing order.
        r = tensordot(ct, x2, axes=(list(range(k1, k1 + k2)), f2))
        src = f1 + [c1[c2.index(j)] for j in sorted(c2)]
        g1 = permute_dims(r, _inverse_perm(src))
    if needs_grad[1]:
        r = tensordot(x1, ct, axes=(f1, list(range(k1))))
        src = [c2[c1.index(i)] for i in sorted(c1)] + f2
        g2 = permute_dims(r, _inverse_perm(src))
    return g1, g2


@primitive(export=True)
def vecdot(x1, x2, /, *, axis=-1, xp):
    return xp.vecdot(x1, x2, axis=axis)


@defvjp(vecdot, save_inputs="others", save_output=False)
def _vecdot_vjp(ct, ans, x1, x2, /, *, xp, needs_grad, axis=-1):
    ndim = builtins.max(x1.ndim, x2.ndim)
    ax = axis - ndim if axis >= 0 else axis
    g = expand_dims(ct, axis=ax)
    g1 = unbroadcast(multiply(g, x2), x1) if needs_grad[0] else None
    g2 = unbroadcast(multiply(g, x1), x2) if needs_grad[1] else None
    return g1, g2


@primitive(name="linalg.solve", export=True)
def solve(x1, x2, /, *, xp):
    return xp.linalg.solve(x1, x2)


@defvjp(solve, save_inputs=_solve_saves, save_output=_needs_first)
def _solve_vjp(ct, ans, x1, x2, /, *, xp, needs_grad):
    # X = A^{-1} B: dB = A^{-T} dX, dA = -dB X^T. A 1-D B is a single column. Only A
    # is kept, and X when A needs a cotangent.
    vector = x2.ndim == 1
    g = expand_dims(ct, axis=-1) if vector else ct
    gb = solve(matrix_transpose(x1), g)
    g1 = g2 = None
    if needs_grad[0]:
        X = expand_dims(ans, axis=-1) if vector else ans
        g1 = unbroadcast(-matmul(gb, matrix_transpose(X)), x1)
    if needs_grad[1]:
        g2 = unbroadcast(gb, _ShapeDtype((*x2.shape, 1), x2.dtype) if vector else x2)
        if vector:
            g2 = reshape(g2, tuple(x2.shape))
    return g1, g2


@primitive(name="linalg.vector_norm")
def _vector_norm2(x, /, *, axis=None, keepdims=False, xp):
    return xp.linalg.vector_norm(x, axis=axis, keepdims=keepdims)


@defvjp(_vector_norm2)
def _vector_norm2_vjp(ct, ans, x, /, *, xp, axis=None, keepdims=False):
    # d||x|| / dx = x / ||x|| (taken as 0 at x = 0)
    axes = _norm_axes(axis, x.ndim)
    n = ans if keepdims else reshape(ans, _keepdims_shape(tuple(x.shape), axes))
    zero = _raw(n == 0.0)
    safe = where(zero, 1.0, n)
    return (multiply(_expand_to(ct, x, axis, keepdims), where(zero, 0.0, divide(x, safe))),)


@export(name="linalg.vector_norm")
def vector_norm(x, /, *, axis=None, keepdims=False, ord=2):
    """Differentiable ``linalg.vector_norm``; ord 2 is a primitive, others composites."""
    if ord == 2:
        return _vector_norm2(x, axis=axis, keepdims=keepdims)
    if not isinstance(x, AbstractTensor):
        xp = _raw_namespace((x,))
        return _as_array(xp.linalg.vector_norm(x, axis=axis, keepdims=keepdims, ord=ord))
    if ord == 1:
        return sum(abs(x), axis=axis, keepdims=keepdims)
    if ord == math.inf:
        return max(abs(x), axis=axis, keepdims=keepdims)
    if ord == -math.inf:
        return min(abs(x), axis=axis, keepdims=keepdims)
    if isinstance(ord, int | float) and ord > 0:
        return sum(abs(x) ** ord, axis=axis, keepdims=keepdims) ** (1.0 / ord)
    msg = f"`linalg.vector_norm` with ord={ord!r} is not differentiable (yet)"
    raise NotImplementedError(msg)


# ----------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------


@primitive(name="reshape")
def _reshape(x, /, *, shape, xp):
    return xp.reshape(x, shape)


@defvjp(_reshape, save_inputs="none", save_output=False)
def _reshape_vjp(ct, ans, x, /, *, xp, shape):
    return (reshape(ct, tuple(x.shape)),)


@export
def reshape(x, /, shape, *, copy=None):
    """Differentiable ``reshape``."""
    return _reshape(x, shape=tuple(shape))


@primitive(name="permute_dims")
def _permute_dims(x, /, *, axes, xp):
    return xp.permute_dims(x, axes)


@defvjp(_permute_dims, save_inputs="none", save_output=False)
def _permute_dims_vjp(ct, ans, x, /, *, xp, axes):
    return (permute_dims(ct, _inverse_perm([a % x.ndim for a in axes])),)


@export
def permute_dims(x, /, axes):
    """Differentiable ``permute_dims``."""
    return _permute_dims(x, axes=tuple(axes))


@primitive(export=True)
def expand_dims(x, /, *, axis=0, xp):
    return xp.expand_dims(x, axis=axis)


@defvjp(expand_dims, save_inputs="none", save_output=False)
def _expand_dims_vjp(ct, ans, x, /, *, xp, axis=0):
    return (reshape(ct, tuple(x.shape)),)


@primitive(name="squeeze")
def _squeeze(x, /, *, axis, xp):
    return xp.squeeze(x, axis=axis)


@defvjp(_squeeze, save_inputs="none", save_output=False)
def _squeeze_vjp(ct, ans, x, /, *, xp, axis):
    return (reshape(ct, tuple(x.shape)),)


@export
def squeeze(x, /, axis):
    """Differentiable ``squeeze``."""
    return _squeeze(x, axis=axis)


@primitive(name="broadcast_to")
def _broadcast_to(x, /, *, shape, xp):
    return xp.broadcast_to(x, shape)


@defvjp(_broadcast_to, save_inputs="none", save_output=False)
def _broadcast_to_vjp(ct, ans, x, /, *, xp, shape):
    return (unbroadcast(ct, x),)


@export
def broadcast_to(x, /, shape):
    """Differentiable ``broadcast_to``."""
    if tuple(x.shape) == tuple(shape):
        return x
    return _broadcast_to(x, shape=tuple(shape))


@primitive(export=True)
def flip(x, /, *, axis=None, xp):
    return xp.flip(x, axis=axis)


@defvjp(flip, save_inputs="none", save_output=False)
def _flip_vjp(ct, ans, x, /, *, xp, axis=None):
    return (flip(ct, axis=axis),)


@primitive(name="concat")
def _concat(*arrays, axis, xp):
    return xp.concat(arrays, axis=axis)


@defvjp(_concat, save_inputs="none", save_output=False)
def _concat_vjp(ct, ans, *arrays, xp, axis, needs_grad):
    ax = axis % ans.ndim
    out = []
    start = 0
    for a, need in zip(arrays, needs_grad):
        stop = start + a.shape[ax]
        if need:
            out.append(getitem(ct, key=(slice(None),) * ax + (slice(start, stop), Ellipsis)))
        else:
            out.append(None)
        start = stop
    return tuple(out)


@export
def concat(arrays, /, *, axis=0):
    """Differentiable ``concat``; ``axis=None`` concatenates the flattened arrays."""
    if axis is None:
        arrays = [reshape(a, (-1,)) for a in arrays]
        axis = 0
    return _concat(*arrays, axis=axis)


@primitive(name="stack")
def _stack(*arrays, axis, xp):
    return xp.stack(arrays, axis=axis)


@defvjp(_stack, save_inputs="none", save_output=False)
def _stack_vjp(ct, ans, *arrays, xp, axis, needs_grad):
    ax = axis % ans.ndim
    return tuple(
        getitem(ct, key=(slice(None),) * ax + (i, Ellipsis)) if need else None
        for i, need in enumerate(needs_grad)
    )


@export
def stack(arrays, /, *, axis=0):
    """Differentiable ``stack``."""
    return _stack(*arrays, axis=axis)


def _is_int_array(k) -> bool:
    if k is None or isinstance(k, int | slice) or k is Ellipsis:
        return False
    xp = _raw_namespace((k,))
    return not xp.isdtype(k.dtype, "bool")


@primitive(name="getitem")
def _getitem(x, /, *, key):
    return x[key]


@defvjp(_getitem, save_inputs="none", save_output=False)
def _getitem_vjp(ct, ans, x, /, *, xp, key):
    return (_scatter(ct, shape=tuple(x.shape), key=key),)


@primitive(name="getitem_transpose")
def _scatter(ct, /, *, shape, key, take_axis=None, xp):
    """The transpose of ``x[key]``: zeros of `shape` with `ct` added at ``[key]``.

    With `take_axis`, the transpose of ``take(x, key, axis=take_axis)`` instead.
    """
    items = key if isinstance(key, tuple) else (key,)
    dev = _device(ct)
    if take_axis is None and not any(_is_int_array(k) for k in items):
        # no index repeats: assign into zeros (None is not a setitem index: drop it)
        z = xp.zeros(shape, dtype=ct.dtype, device=dev)
        if any(k is None for k in items):
            key = tuple(k for k in items if k is not None)
            ct = xp.reshape(ct, tuple(z[key].shape))
        z[key] = ct
        return z
    # Integer-array indices may repeat, so entries must be summed. Index a grid of
    # linear positions the same way to learn where every entry of ct goes, sort those
    # positions, and read the per-position sums off a cumulative sum (in float64):
    #   out[p] = C[hi(p)] - C[lo(p)],  C = cumsum(ct sorted by position, initial 0).
    n = math.prod(shape)
    grid = xp.reshape(xp.arange(n, device=dev), shape)
    pos = grid[key] if take_axis is None else xp.take(grid, key, axis=take_axis)
    pos = xp.reshape(pos, (-1,))
    vals = xp.reshape(ct, (-1,))
    order = xp.argsort(pos)
    pos = xp.take(pos, order)
    vals = xp.astype(xp.take(vals, order), xp.float64)
    csum = xp.cumulative_sum(vals, include_initial=True)
    grid = xp.arange(n, dtype=pos.dtype, device=dev)
    lo = xp.searchsorted(pos, grid, side="left")
    hi = xp.searchsorted(pos, grid, side="right")
    out = xp.take(csum, hi) - xp.take(csum, lo)
    return xp.reshape(xp.astype(out, ct.dtype), shape)


@defvjp(_scatter, save_inputs="none", save_output=False)
def _scatter_vjp(ct, ans, g, /, *, xp, shape, key, take_axis=None):
    if take_axis is not None:
        return (take(ct, key, axis=take_axis),)
    return (getitem(ct, key=key),)


@export
def getitem(x, /, key):
    """Differentiable ``x[key]`` (basic slicing and integer-array indexing)."""
    return _getitem(x, key=_unwrap_all(key))


@primitive(export=True)
def take(x, indices, /, *, axis=None, xp):
    return xp.take(x, indices, axis=axis)


@defvjp(take, save_inputs=_take_saves, save_output=False)
def _take_vjp(ct, ans, x, indices, /, *, xp, axis=None):
    ax = 0 if axis is None else axis % x.ndim
    return _scatter(ct, shape=tuple(x.shape), key=_raw(indices), take_axis=ax), None
