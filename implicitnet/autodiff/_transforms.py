"""The transforms: ``vjp``, ``grad`` and ``value_and_grad``, and the backward pass."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from .._tree import tree_flatten, tree_unflatten
from . import _ops
from ._core import Tensor, _new_level, _raw, _raw_namespace
from ._namespace import differentiable_namespace

__all__ = ["grad", "value_and_grad", "vjp"]

_SCALARS = (bool, int, float, complex)


# ----------------------------------------------------------------------------------
# Backward pass
# ----------------------------------------------------------------------------------


def _toposort(roots, level: int) -> list[Tensor]:
    """Boxes of `level` reachable from `roots` with a recorded operation, outputs first.

    Iterative depth-first search (no recursion limit on long unrolled graphs); the
    reversed post-order is a topological order.
    """
    visited: set[int] = set()
    order: list[Tensor] = []
    stack = [(r, False) for r in roots if r._prim is not None]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        for a in t._args:
            if type(a) is Tensor and a._level == level and a._prim is not None:
                if id(a) not in visited:
                    stack.append((a, False))
    order.reverse()
    return order


def _backward(order, outputs, cotangents, level: int) -> dict[int, Any]:
    """Propagate `cotangents` of `outputs` through `order`; return the leaves' sums."""
    acc: dict[int, Any] = {}
    add = _ops.add
    for o, c in zip(outputs, cotangents):
        k = id(o)
        acc[k] = c if k not in acc else add(acc[k], c)
    namespaces: dict[type, Any] = {}
    for t in order:
        ct = acc.pop(id(t), None)
        if ct is None:
            continue
        rec = t._prim
        args = t._args
        unboxed = [
            (a._implicitnet_data if (a._level == level or a._level == 0) else a)
            if type(a) is Tensor
            else a
            for a in args
        ]
        ans = t._implicitnet_data
        raw_type = type(_raw(ans))
        xp = namespaces.get(raw_type)
        if xp is None:
            xp = namespaces[raw_type] = differentiable_namespace(_raw_namespace((_raw(ans),)))
        kwargs = t._kwargs
        if rec.vjp_needs:
            needs = tuple(type(a) is Tensor and a._level == level for a in args)
            cts = rec.vjp(ct, ans, *unboxed, xp=xp, needs_grad=needs, **kwargs)
        else:
            cts = rec.vjp(ct, ans, *unboxed, xp=xp, **kwargs)
        if len(cts) != len(args):
            msg = (
                f"the VJP rule of `{rec.name}` returned {len(cts)} cotangents for "
                f"{len(args)} positional inputs"
            )
            raise ValueError(msg)
        for a, c in zip(args, cts):
            if c is None or type(a) is not Tensor or a._level != level:
                continue
            if tuple(c.shape) != tuple(a.shape):
                msg = (
                    f"the VJP rule of `{rec.name}` returned a cotangent of shape "
                    f"{tuple(c.shape)} for an input of shape {tuple(a.shape)}"
                )
                raise ValueError(msg)
            k = id(a)
            old = acc.get(k)
            acc[k] = c if old is None else add(old, c)
    return acc


def _zeros_like(x):
    raw = _raw(x)
    return _raw_namespace((raw,)).zeros_like(raw)


def _unbox(x, level: int):
    """An output of trace `level` as seen from outside it."""
    if type(x) is Tensor and (x._level == level or x._level == 0):
        return x._implicitnet_data
    return x


def _is_array(x) -> bool:
    return type(x) is Tensor or (type(x) not in _SCALARS and hasattr(x, "__array_namespace__"))


def _box_leaves(leaves, level: int, what: str) -> list[Tensor]:
    """Box the leaves of a differentiated argument, checking that they are float arrays."""
    boxed = []
    n = len(leaves)
    for i, leaf in enumerate(leaves):
        where = what if n == 1 else f"leaf {i} (of {n}) of {what}"
        if not _is_array(leaf):
            msg = (
                f"{where} is a {type(leaf).__name__}, not an array: only arrays can be "
                f"differentiated (convert numbers with `xp.asarray(value, dtype=...)`, or "
                f"pass them in a non-differentiated argument)"
            )
            raise TypeError(msg)
        raw = _raw(leaf)
        if not _raw_namespace((raw,)).isdtype(raw.dtype, "real floating"):
            msg = (
                f"{where} has dtype {raw.dtype}: only real floating arrays can be "
                f"differentiated (cast with `xp.astype(x, xp.float64)`)"
            )
            raise TypeError(msg)
        boxed.append(Tensor(leaf, level))
    return boxed


def _constant(x):
    """Wrap a raw array as a constant tensor (non-arrays are left alone)."""
    if type(x) is Tensor or type(x) in _SCALARS or not hasattr(x, "__array_namespace__"):
        return x
    return Tensor(x)


def _wrap_constants(tree):
    leaves, td = tree_flatten(tree)
    if not leaves:
        return tree
    return tree_unflatten(td, [_constant(x) for x in leaves])


def _normalize_argnums(argnums, nargs: int) -> tuple[int, ...]:
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    out = []
    for a in nums:
        if not isinstance(a, int) or isinstance(a, bool):
            msg = f"`argnums` must be an int or a tuple of ints, got {argnums!r}"
            raise TypeError(msg)
        if not -nargs <= a < nargs:
            msg = f"`argnums` {a} is out of range for a function called with {nargs} arguments"
            raise ValueError(msg)
        out.append(a % nargs)
    return tuple(out)


def _output_leaves(out, level: int, what: str):
    leaves, td = tree_flatten(out)
    for i, leaf in enumerate(leaves):
        if not _is_array(leaf):
            msg = (
                f"{what} must be an array or a tree of arrays; leaf {i} is a {type(leaf).__name__}"
            )
            raise TypeError(msg)
    return leaves, td


# ----------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------


def vjp(fun: Callable, *primals: Any):
    """Evaluate `fun` at `primals` and return its vector-Jacobian product function.

    Parameters
    ----------
    fun : callable
        ``fun(*primals)`` returning an array or a tree of arrays.
    *primals : array or tree of arrays
        Points of evaluation; every leaf must be a real floating array.

    Returns
    -------
    out : array or tree of arrays
        ``fun(*primals)``.
    vjp_fn : callable
        ``vjp_fn(ct)`` maps a cotangent shaped like `out` to a tuple with one cotangent
        per primal, each shaped like it. It may be called any number of times without
        re-running `fun`; the recorded graph lives as long as `vjp_fn`.

    Raises
    ------
    TypeError
        If a leaf of `primals` is not a real floating array.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> A = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> out, vjp_fn = inet.vjp(lambda x: A @ x, np.array([1.0, 1.0]))
    >>> vjp_fn(np.array([1.0, 0.0]))
    (array([1., 2.]),)
    """
    level = _new_level()
    boxed_args = []
    inputs = []
    for i, p in enumerate(primals):
        leaves, td = tree_flatten(p)
        boxed = _box_leaves(leaves, level, f"`primals[{i}]`")
        inputs.append((boxed, td))
        boxed_args.append(tree_unflatten(td, boxed))
    out = fun(*boxed_args)
    out_leaves, out_td = _output_leaves(out, level, "the output of `fun`")
    out_value = tree_unflatten(out_td, [_unbox(x, level) for x in out_leaves])
    traced = [x for x in out_leaves if type(x) is Tensor and x._level == level]
    cache: list = []

    def vjp_fn(ct):
        ct_leaves, ct_td = tree_flatten(ct)
        if ct_td != out_td:
            msg = "`ct` must have the tree structure of the output of `fun`"
            raise ValueError(msg)
        outs, cts = [], []
        for x, c in zip(out_leaves, ct_leaves):
            if tuple(c.shape) != tuple(x.shape):
                msg = f"`ct` has shape {tuple(c.shape)}, the output has shape {tuple(x.shape)}"
                raise ValueError(msg)
            if type(x) is Tensor and x._level == level:
                outs.append(x)
                cts.append(c)
        if not cache:
            cache.append(_toposort(traced, level))
        acc = _backward(cache[0], outs, cts, level)
        result = []
        for boxed, td in inputs:
            grads = [_unbox_ct(acc.get(id(b)), b._implicitnet_data) for b in boxed]
            result.append(tree_unflatten(td, grads))
        return tuple(result)

    return out_value, vjp_fn


def _unbox_ct(c, like):
    if c is None:
        return _zeros_like(like)
    if type(c) is Tensor and c._level == 0:
        return c._implicitnet_data
    return c


def value_and_grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False):
    """Return a function computing `fun` and its gradient with respect to `argnums`.

    Parameters
    ----------
    fun : callable
        A function returning a 0-D real floating array (or ``(value, aux)`` when
        `has_aux`).
    argnums : int or tuple of int, default: 0
        Which positional arguments to differentiate; each may be an array or a tree of
        arrays (e.g. a model), and its gradient has the same structure.
    has_aux : bool, default: False
        Whether `fun` returns ``(value, aux)``; `aux` is returned as it is.

    Returns
    -------
    callable
        ``(*args, **kwargs) -> (value, grads)``, or ``((value, aux), grads)``. `grads`
        is one tree when `argnums` is an int, else a tuple of trees.

    Raises
    ------
    TypeError
        If a differentiated leaf is not a real floating array, or `fun` does not
        return an array.
    ValueError
        If `fun` does not return a 0-D array.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> def loss(params, x):
    ...     xp = inet.namespace(x)
    ...     return xp.sum(xp.tanh(x @ params["w"]) ** 2)
    >>> params = {"w": np.array([0.5, -0.5])}
    >>> value, grads = inet.value_and_grad(loss)(params, np.array([[1.0, 2.0]]))
    >>> sorted(grads)
    ['w']
    """

    @functools.wraps(fun)
    def wrapped(*args, **kwargs):
        nums = _normalize_argnums(argnums, len(args))
        level = _new_level()
        call_args = list(args)
        inputs = {}
        for i, a in enumerate(args):
            if i in nums:
                leaves, td = tree_flatten(a)
                boxed = _box_leaves(leaves, level, f"argument {i} of `fun`")
                inputs[i] = (boxed, td)
                call_args[i] = tree_unflatten(td, boxed)
            else:
                call_args[i] = _wrap_constants(a)
        if kwargs:
            kwargs = {k: _wrap_constants(v) for k, v in kwargs.items()}
        out = fun(*call_args, **kwargs)
        aux = None
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                msg = "with `has_aux=True`, `fun` must return a pair (value, aux)"
                raise TypeError(msg)
            out, aux = out
        if not _is_array(out):
            msg = (
                f"`fun` must return a 0-D floating array to be differentiated, got a "
                f"{type(out).__name__}"
            )
            raise TypeError(msg)
        if len(out.shape) != 0:
            msg = (
                f"`fun` must return a 0-D (scalar) array to take its gradient, got shape "
                f"{tuple(out.shape)}; use `vjp` for non-scalar outputs"
            )
            raise ValueError(msg)
        raw = _raw(out)
        bxp = _raw_namespace((raw,))
        if not bxp.isdtype(raw.dtype, "real floating"):
            msg = f"`fun` must return a real floating array, got dtype {raw.dtype}"
            raise TypeError(msg)
        acc = {}
        if type(out) is Tensor and out._level == level:
            one = bxp.ones((), dtype=raw.dtype, device=out.device)
            acc = _backward(_toposort([out], level), [out], [one], level)
        grads = []
        for i in nums:
            boxed, td = inputs[i]
            leaves = [_unbox_ct(acc.get(id(b)), b._implicitnet_data) for b in boxed]
            grads.append(tree_unflatten(td, leaves))
        del acc
        value = _unbox(out, level)
        if has_aux:
            leaves, td = tree_flatten(aux)
            value = (value, tree_unflatten(td, [_unbox(x, level) for x in leaves]))
        return value, (grads[0] if isinstance(argnums, int) else tuple(grads))

    return wrapped


def grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False):
    """Return a function computing the gradient of the scalar function `fun`.

    Same arguments as :func:`value_and_grad`; the returned function gives only the
    gradient (``(grads, aux)`` when `has_aux`).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> def f(x):
    ...     xp = inet.namespace(x)
    ...     return xp.sum(xp.sin(x))
    >>> inet.grad(f)(np.array([0.0]))
    array([1.])
    >>> float(inet.grad(inet.grad(lambda x: x**3))(np.asarray(2.0)))
    12.0
    """
    vg = value_and_grad(fun, argnums=argnums, has_aux=has_aux)

    @functools.wraps(fun)
    def wrapped(*args, **kwargs):
        value, g = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    return wrapped
