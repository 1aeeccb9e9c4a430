"""The transforms: ``vjp``, ``grad`` and ``value_and_grad``, and the backward pass."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from .._tree import tree_flatten, tree_unflatten
from .._xp import device as _device
from .._xp import is_array as _is_any_array
from . import _ops
from ._core import (
    _UNKEPT,
    NODE_ANS,
    NODE_KWARGS,
    NODE_NEEDS,
    NODE_PARENTS,
    NODE_PRIM,
    NODE_SAVED,
    NODE_SPEC,
    _as_array,
    _new_level,
    _raw,
    _raw_namespace,
    _Released,
)
from ._namespace import differentiable_namespace
from ._tensor import Tensor

__all__ = ["grad", "value_and_grad", "vjp"]

_SCALARS = (bool, int, float, complex)


# ----------------------------------------------------------------------------------
# Backward pass
# ----------------------------------------------------------------------------------


class _Plan:
    """The backward pass of one trace, compiled once and run for every cotangent.

    Nodes (recorded operations of the trace's level) are numbered in topological order,
    outputs first; leaves (the trace's inputs) follow them. Each step holds everything
    its VJP rule needs (rule, kept answer, kept inputs, keyword arguments including
    ``xp`` and ``needs_grad``) and, for every input of the trace, the slot that
    receives its cotangent. A run is then a loop over a list with cotangents
    accumulated in a list indexed by slot: no graph walk, no dictionary. The plan holds
    no node: once built, what the rules do not keep is freed with the graph.
    """

    __slots__ = ("nslots", "slot_of", "steps")

    def __init__(self, roots, level: int, root_values=()):
        order = _toposort(roots)
        # The value (or stand-in) of each node's output as a consumer holds it, for
        # the stand-ins of outputs that their own rules do not keep.
        seen_as = {id(r): v for r, v in zip(roots, root_values)}
        slot_of = {id(n): i for i, n in enumerate(order)}
        for r in roots:  # an output that is an input leaf
            if id(r) not in slot_of:
                slot_of[id(r)] = len(slot_of)
        namespaces: dict[type, Any] = {}
        steps = []
        for node in order:
            rec = node[NODE_PRIM]
            saved = node[NODE_SAVED]
            targets = []
            for pos, parent in node[NODE_PARENTS]:
                slot = slot_of.get(id(parent))
                if slot is None:
                    slot = slot_of[id(parent)] = len(slot_of)
                targets.append((pos, slot, tuple(saved[pos].shape)))
                seen_as[id(parent)] = saved[pos]
            ans = node[NODE_ANS]
            if ans is _UNKEPT:
                ans = node[NODE_SPEC]
                if ans is None:
                    v = seen_as[id(node)]
                    ans = v if type(v) is _Released else _Released(v)
            if type(ans) is _Released:
                xp = differentiable_namespace(ans.namespace)
            else:
                xp = namespaces.get(type(ans))
                if xp is None:
                    xp = differentiable_namespace(_raw_namespace((_raw(ans),)))
                    if type(ans) is not Tensor:
                        namespaces[type(ans)] = xp
            static = node[NODE_KWARGS]
            kwargs = {**static, "xp": xp} if static else {"xp": xp}
            if rec.vjp_needs:
                kwargs["needs_grad"] = node[NODE_NEEDS]
            steps.append((rec, ans, saved, kwargs, targets))
        self.steps = steps
        self.slot_of = slot_of
        self.nslots = len(slot_of)

    def run(self, root_slots, cotangents, *, release: bool = False) -> list:
        """Cotangents of every slot, given `cotangents` of the outputs in `root_slots`.

        Intermediate cotangents are freed as soon as they are used; with `release`, so
        is what each step kept (a plan run once, as by :func:`value_and_grad`).
        """
        acc = [None] * self.nslots
        add = _ops.add
        for k, c in zip(root_slots, cotangents):
            acc[k] = c if acc[k] is None else add(acc[k], c)
        steps = self.steps
        for i, (rec, ans, saved, kwargs, targets) in enumerate(steps):
            if release:
                steps[i] = None  # the kept values die with the step
            ct = acc[i]
            if ct is None:
                continue
            acc[i] = None  # intermediate cotangents die as soon as they are used
            cts = rec.vjp(ct, ans, *saved, **kwargs)
            if len(cts) != len(saved):
                _bad_rule(rec, len(cts), len(saved))
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


def _toposort(roots) -> list[list]:
    """Recorded nodes reachable from the nodes `roots`, outputs first.

    Iterative depth-first search (no recursion limit on long unrolled graphs); the
    reversed post-order is a topological order. Leaf nodes are not included.
    """
    visited: set[int] = set()
    order: list[list] = []
    for root in roots:
        if root[NODE_PRIM] is None or id(root) in visited:
            continue
        visited.add(id(root))
        stack = [(root, iter(root[NODE_PARENTS]))]
        while stack:
            node, pending = stack[-1]
            for _, p in pending:
                if p[NODE_PRIM] is not None and id(p) not in visited:
                    visited.add(id(p))
                    stack.append((p, iter(p[NODE_PARENTS])))
                    break
            else:
                stack.pop()
                order.append(node)
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


def _box_argument(arg, level: int, what: str):
    """`arg` (an array or a tree of arrays) boxed at `level`: ``(boxed arg, (boxes, treedef))``."""
    leaves, td = tree_flatten(arg)
    boxed = _box_leaves(leaves, level, what)
    return (boxed[0] if td.kind == "leaf" else tree_unflatten(td, boxed)), (boxed, td)


def _split_aux(out, has_aux: bool, what: str):
    """``(out, aux)`` from the output of `fun`; ``(out, None)`` without `has_aux`."""
    if not has_aux:
        return out, None
    if not (isinstance(out, tuple) and len(out) == 2):
        msg = f"with `has_aux=True`, `fun` must return a pair ({what}, aux)"
        raise TypeError(msg)
    return out


def _unbox_tree(tree, level: int):
    """`tree` with the tensors of trace `level` as seen from outside it."""
    leaves, td = tree_flatten(tree)
    return tree_unflatten(td, [_unbox(x, level) for x in leaves])


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


def vjp(fun: Callable, *primals: Any, has_aux: bool = False):
    """Evaluate `fun` at `primals` and return its vector-Jacobian product function.

    Parameters
    ----------
    fun : callable
        ``fun(*primals)`` returning an array or a tree of arrays (or ``(out, aux)``
        when `has_aux`).
    *primals : array or tree of arrays
        Points of evaluation; every leaf must be a real floating array.
    has_aux : bool, default: False
        Whether `fun` returns a pair ``(out, aux)``: only `out` is differentiated, `aux`
        is returned as it is (traced arrays in it as plain arrays), as in JAX.

    Returns
    -------
    out : array or tree of arrays
        ``fun(*primals)``.
    vjp_fn : callable
        ``vjp_fn(ct)`` maps a cotangent shaped like `out` to a tuple with one cotangent
        per primal, each shaped like it. For a 0-D output, `ct` may also be a Python
        number or a 0-D array of any real floating dtype (cast to the output's). It may
        be called any number of times without re-running `fun`; what the VJP rules need
        (see :func:`tape_summary`) lives as long as `vjp_fn`.
    aux : any
        Only with `has_aux`: the second element of `fun`'s output.

    Raises
    ------
    TypeError
        If a leaf of `primals` is not a real floating array, or `fun` does not return a
        pair with `has_aux`.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> A = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> out, vjp_fn = inet.vjp(lambda x: A @ x, np.array([1.0, 1.0]))
    >>> vjp_fn(np.array([1.0, 0.0]))
    (array([1., 2.]),)

    A scalar output takes a Python number as cotangent; `has_aux` returns extra values:

    >>> out, vjp_fn, aux = inet.vjp(lambda x: (inet.ops.sum(x * x), "aux"),
    ...                             np.array([1.0, 2.0]), has_aux=True)
    >>> vjp_fn(1.0), aux
    ((array([2., 4.]),), 'aux')
    """
    level = _new_level()
    boxed_args = []
    inputs = []
    for i, p in enumerate(primals):
        arg, boxed = _box_argument(p, level, f"`primals[{i}]`")
        inputs.append(boxed)
        boxed_args.append(arg)
    out, aux = _split_aux(fun(*boxed_args), has_aux, "out")
    if has_aux:
        aux = _unbox_tree(aux, level)
    out_leaves, out_td = _output_leaves(out, level, "the output of `fun`")
    out_value = tree_unflatten(out_td, [_unbox(x, level) for x in out_leaves])
    # Which outputs are traced, and their shapes. The backward pass is compiled now,
    # once, and reused (the adjoint solves call vjp_fn dozens of times a step); the
    # graph itself is then dropped, so only what the rules keep stays alive.
    traced = [type(x) is Tensor and x._level == level for x in out_leaves]
    out_shapes = [tuple(x.shape) for x in out_leaves]
    # 0-D outputs (raw), to turn a Python number cotangent into an array like them
    scalar_outs = [_raw(x) if s == () else None for x, s in zip(out_leaves, out_shapes)]
    leaf_out = out_td.kind == "leaf"
    roots = [x._node for x, t in zip(out_leaves, traced) if t]
    plan = _Plan(roots, level, [x._implicitnet_data for x, t in zip(out_leaves, traced) if t])
    root_slots = [plan.slot_of[id(r)] for r in roots]
    slots = [[plan.slot_of.get(id(b._node)) for b in boxed] for boxed, _ in inputs]
    likes = [([b._implicitnet_data for b in boxed], td) for boxed, td in inputs]
    del out, out_leaves, roots, inputs, boxed_args
    plan.slot_of = None  # not needed any more

    def vjp_fn(ct):
        if leaf_out and _is_any_array(ct):  # one array: skip tree_flatten
            ct_leaves = (ct,)
        else:
            ct_leaves, ct_td = tree_flatten(ct)
            if ct_td != out_td:
                msg = "`ct` must have the tree structure of the output of `fun`"
                raise ValueError(msg)
        ct_leaves = list(ct_leaves)
        for i, (c, shape) in enumerate(zip(ct_leaves, out_shapes)):
            if shape == ():
                c = ct_leaves[i] = _scalar_cotangent(c, scalar_outs[i])
            c_shape = getattr(c, "shape", None)
            if c_shape is None:
                msg = f"`ct` must be an array or a tree of arrays, got a {type(c).__name__}"
                raise TypeError(msg)
            if c_shape != shape and tuple(c_shape) != shape:
                msg = f"`ct` has shape {tuple(c_shape)}, the output has shape {shape}"
                raise ValueError(msg)
        acc = plan.run(root_slots, [c for c, t in zip(ct_leaves, traced) if t])
        result = []
        for (like, td), in_slots in zip(likes, slots):
            grads = [_unbox_ct(None if k is None else acc[k], b) for k, b in zip(in_slots, like)]
            result.append(grads[0] if td.kind == "leaf" else tree_unflatten(td, grads))
        return tuple(result)

    vjp_fn._implicitnet_plan = plan
    if has_aux:
        return out_value, vjp_fn, aux
    return out_value, vjp_fn


def _scalar_cotangent(c, like):
    """The cotangent `c` of a 0-D output `like`: numbers and other float dtypes cast."""
    t = type(c)
    if t is bool or t is complex:
        msg = f"`ct` must be a real number or a real floating array, got a {t.__name__}"
        raise TypeError(msg)
    bxp = _raw_namespace((like,))
    if t is int or t is float:
        return bxp.asarray(c, dtype=like.dtype, device=_device(like))
    if t is Tensor or getattr(c, "shape", None) != ():
        return c
    raw = _raw(c)
    cxp = _raw_namespace((raw,))
    if cxp is bxp and raw.dtype == like.dtype:
        return c
    if not cxp.isdtype(raw.dtype, "real floating"):
        msg = f"`ct` must have a real floating dtype, got {raw.dtype}"
        raise TypeError(msg)
    if cxp is not bxp:  # a 0-d array of another library (a NumPy scalar, ...)
        return bxp.asarray(float(raw), dtype=like.dtype, device=_device(like))
    return bxp.astype(raw, like.dtype)


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
                call_args[i], inputs[i] = _box_argument(a, level, f"argument {i} of `fun`")
            else:
                call_args[i] = _wrap_constants(a)
        if kwargs:
            kwargs = {k: _wrap_constants(v) for k, v in kwargs.items()}
        out, aux = _split_aux(fun(*call_args, **kwargs), has_aux, "value")
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
        value = _unbox(out, level)
        if type(out) is Tensor and out._level == level:
            one = bxp.ones((), dtype=raw.dtype, device=out.device)
            plan = _Plan([out._node], level, [out._implicitnet_data])
            slot_of = plan.slot_of
            root = slot_of[id(out._node)]
            # Drop the graph: from here on the plan alone holds what the rules keep, and
            # it releases each step's values once the step has run.
            del out, call_args
            acc = plan.run([root], [one], release=True)
            del plan
        grads = []
        for i in nums:
            boxed, td = inputs[i]
            leaves = []
            for b in boxed:
                k = None if acc is None else slot_of.get(id(b._node))
                c = None if k is None else acc[k]
                leaves.append(_unbox_ct(c, b._implicitnet_data))
            grads.append(leaves[0] if td.kind == "leaf" else tree_unflatten(td, leaves))
        del acc
        if has_aux:  # after the backward pass: earlier, it raised the peak of training 5 %
            value = (value, _unbox_tree(aux, level))
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
