"""The transforms: ``vjp``, ``grad`` and ``value_and_grad``, and the backward pass."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from .._tree import tree_flatten, tree_unflatten
from .._xp import is_array as _is_any_array
from . import _ops
from ._core import Tensor, _as_array, _new_level, _raw, _raw_namespace
from ._namespace import differentiable_namespace

__all__ = ["grad", "value_and_grad", "vjp"]

_SCALARS = (bool, int, float, complex)


# ----------------------------------------------------------------------------------
# Backward pass
# ----------------------------------------------------------------------------------


class _Plan:
    """The backward pass of one trace, compiled once and run for every cotangent.

    Nodes (boxes of the trace's level with a recorded operation) are numbered in
    topological order, outputs first; leaves (the trace's inputs) follow them. Each
    step holds everything its VJP rule needs (rule, answer, unboxed inputs, keyword
    arguments including ``xp`` and ``needs_grad``) and, for every input of the trace,
    the slot that receives its cotangent. A run is then a loop over a list with
    cotangents accumulated in a list indexed by slot: no graph walk, no dictionary.
    """

    __slots__ = ("nslots", "slot_of", "steps")

    def __init__(self, roots, level: int):
        order = _toposort(roots, level)
        slot_of = {id(t): i for i, t in enumerate(order)}
        for r in roots:  # an output that is an input leaf
            if id(r) not in slot_of:
                slot_of[id(r)] = len(slot_of)
        namespaces: dict[type, Any] = {}
        steps = []
        for t in order:
            rec = t._prim
            unboxed = []
            needs = []
            targets = []
            for pos, a in enumerate(t._args):
                if type(a) is Tensor:
                    lv = a._level
                    if lv == level:
                        slot = slot_of.get(id(a))
                        if slot is None:
                            slot = slot_of[id(a)] = len(slot_of)
                        targets.append((pos, slot, a.shape))
                        unboxed.append(a._implicitnet_data)
                        needs.append(True)
                        continue
                    unboxed.append(a._implicitnet_data if lv == 0 else a)
                else:
                    unboxed.append(a)
                needs.append(False)
            ans = t._implicitnet_data
            xp = namespaces.get(type(ans))
            if xp is None:
                raw = _raw(ans)
                xp = differentiable_namespace(_raw_namespace((raw,)))
                if type(ans) is not Tensor:
                    namespaces[type(ans)] = xp
            kwargs = {**t._kwargs, "xp": xp} if t._kwargs else {"xp": xp}
            if rec.vjp_needs:
                kwargs["needs_grad"] = tuple(needs)
            steps.append((rec, ans, unboxed, kwargs, targets))
        self.steps = steps
        self.slot_of = slot_of
        self.nslots = len(slot_of)

    def run(self, outputs, cotangents) -> list:
        """Cotangents of every slot, given `cotangents` of `outputs` (slots freed)."""
        acc = [None] * self.nslots
        add = _ops.add
        slot_of = self.slot_of
        for o, c in zip(outputs, cotangents):
            k = slot_of[id(o)]
            acc[k] = c if acc[k] is None else add(acc[k], c)
        for i, (rec, ans, unboxed, kwargs, targets) in enumerate(self.steps):
            ct = acc[i]
            if ct is None:
                continue
            acc[i] = None  # intermediate cotangents die as soon as they are used
            cts = rec.vjp(ct, ans, *unboxed, **kwargs)
            if len(cts) != len(unboxed):
                _bad_rule(rec, len(cts), len(unboxed))
            for pos, slot, shape in targets:
                c = cts[pos]
                if c is None:
                    continue
                if c.shape != shape and tuple(c.shape) != shape:
                    _bad_rule_shape(rec, c, shape)
                old = acc[slot]
                acc[slot] = c if old is None else add(old, c)
        return acc


def _bad_rule(rec, n: int, nargs: int):
    msg = f"the VJP rule of `{rec.name}` returned {n} cotangents for {nargs} positional inputs"
    raise ValueError(msg)


def _bad_rule_shape(rec, c, shape):
    msg = (
        f"the VJP rule of `{rec.name}` returned a cotangent of shape {tuple(c.shape)} for "
        f"an input of shape {shape}"
    )
    raise ValueError(msg)


def _toposort(roots, level: int) -> list[Tensor]:
    """Boxes of `level` reachable from `roots` with a recorded operation, outputs first.

    Iterative depth-first search (no recursion limit on long unrolled graphs); the
    reversed post-order is a topological order.
    """
    visited: set[int] = set()
    order: list[Tensor] = []
    for root in roots:
        if root._prim is None or id(root) in visited:
            continue
        visited.add(id(root))
        stack = [(root, iter(root._args))]
        while stack:
            t, pending = stack[-1]
            for a in pending:
                if (
                    type(a) is Tensor
                    and a._level == level
                    and a._prim is not None
                    and id(a) not in visited
                ):
                    visited.add(id(a))
                    stack.append((a, iter(a._args)))
                    break
            else:
                stack.pop()
                order.append(t)
    order.reverse()
    return order


def _zeros_like(x):
    raw = _raw(x)
    return _raw_namespace((raw,)).zeros_like(raw)


def _unbox(x, level: int):
    """An output of trace `level` as seen from outside it."""
    if type(x) is Tensor and (x._level == level or x._level == 0):
        return x._implicitnet_data
    return x


def _is_array(x) -> bool:
    return type(x) is Tensor or _is_any_array(x)


_REAL_FLOATING: dict[tuple, bool] = {}


def _is_real_floating(raw) -> bool:
    """Whether the backend array `raw` has a real floating dtype (cached per dtype)."""
    key = (type(raw), raw.dtype)
    try:
        return _REAL_FLOATING[key]
    except KeyError:
        ok = _REAL_FLOATING[key] = bool(_raw_namespace((raw,)).isdtype(raw.dtype, "real floating"))
        return ok
    except TypeError:  # an unhashable dtype
        return bool(_raw_namespace((raw,)).isdtype(raw.dtype, "real floating"))


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
        if not _is_real_floating(raw):
            msg = (
                f"{where} has dtype {raw.dtype}: only real floating arrays can be "
                f"differentiated (cast with `xp.astype(x, xp.float64)`)"
            )
            raise TypeError(msg)
        boxed.append(Tensor(_as_array(leaf), level))
    return boxed


def _constant(x):
    """Wrap a raw array as a constant tensor (non-arrays are left alone)."""
    if type(x) is Tensor or not _is_any_array(x):
        return x
    return Tensor(_as_array(x))


def _wrap_constants(tree):
    if type(tree) is not tuple and type(tree) is not list and type(tree) is not dict:
        if _is_any_array(tree):
            return _constant(tree)  # one array: no tree to walk
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
        boxed_args.append(boxed[0] if td.kind == "leaf" else tree_unflatten(td, boxed))
    out = fun(*boxed_args)
    out_leaves, out_td = _output_leaves(out, level, "the output of `fun`")
    out_value = tree_unflatten(out_td, [_unbox(x, level) for x in out_leaves])
    # Which outputs are traced, and their shapes; the compiled backward pass is built at
    # the first call and reused (the adjoint solves call vjp_fn dozens of times a step).
    traced = [type(x) is Tensor and x._level == level for x in out_leaves]
    out_shapes = [tuple(x.shape) for x in out_leaves]
    leaf_out = out_td.kind == "leaf"
    compiled: list = []

    def vjp_fn(ct):
        if leaf_out and hasattr(type(ct), "shape"):  # one array: skip tree_flatten
            ct_leaves = (ct,)
        else:
            ct_leaves, ct_td = tree_flatten(ct)
            if ct_td != out_td:
                msg = "`ct` must have the tree structure of the output of `fun`"
                raise ValueError(msg)
        for c, shape in zip(ct_leaves, out_shapes):
            c_shape = getattr(c, "shape", None)
            if c_shape is None:
                msg = f"`ct` must be an array or a tree of arrays, got a {type(c).__name__}"
                raise TypeError(msg)
            if c_shape != shape and tuple(c_shape) != shape:
                msg = f"`ct` has shape {tuple(c_shape)}, the output has shape {shape}"
                raise ValueError(msg)
        if not compiled:
            roots = [x for x, t in zip(out_leaves, traced) if t]
            plan = _Plan(roots, level)
            slots = [[plan.slot_of.get(id(b)) for b in boxed] for boxed, _ in inputs]
            compiled.extend((plan, roots, slots))
        plan, roots, slots = compiled
        acc = plan.run(roots, [c for c, t in zip(ct_leaves, traced) if t])
        result = []
        for (boxed, td), in_slots in zip(inputs, slots):
            grads = [
                _unbox_ct(None if k is None else acc[k], b._implicitnet_data)
                for k, b in zip(in_slots, boxed)
            ]
            result.append(grads[0] if td.kind == "leaf" else tree_unflatten(td, grads))
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
                call_args[i] = boxed[0] if td.kind == "leaf" else tree_unflatten(td, boxed)
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
        if not _is_real_floating(raw):
            msg = f"`fun` must return a real floating array, got dtype {raw.dtype}"
            raise TypeError(msg)
        acc = None
        if type(out) is Tensor and out._level == level:
            one = bxp.ones((), dtype=raw.dtype, device=out.device)
            plan = _Plan([out], level)
            acc = plan.run([out], [one])
            slot_of = plan.slot_of
            del plan
        grads = []
        for i in nums:
            boxed, td = inputs[i]
            leaves = []
            for b in boxed:
                k = None if acc is None else slot_of.get(id(b))
                c = None if k is None else acc[k]
                leaves.append(_unbox_ct(c, b._implicitnet_data))
            grads.append(leaves[0] if td.kind == "leaf" else tree_unflatten(td, leaves))
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
