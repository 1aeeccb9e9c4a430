"""The raw solve under :func:`implicitnet.fixed_point` and :func:`implicitnet.root`.

:func:`solve` checks the arguments once, builds the :class:`Problem` and runs the
method. The public entry points (:mod:`implicitnet.implicit`) call it, through the
adjoint that `backward` selects; this module knows nothing of autodiff.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import backends as _backends
from .._result import Result
from .._tree import tree_leaves
from .._xp import as_float_array, is_array, namespace, to_host
from ._base import Problem
from ._registry import resolve_method

__all__ = ["check_tolerance", "check_tolerances", "solve"]


def check_tolerance(value: Any, label: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming `label` unless `value` is a real >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"`{label}` must be a real number, got {value!r}"
        raise TypeError(msg)
    if not (value >= 0 and math.isfinite(value)):
        msg = f"`{label}` must be finite and non-negative, got {value!r}"
        raise ValueError(msg)


def check_tolerances(rtol, atol, maxiter) -> None:
    """Raise ``TypeError``/``ValueError`` naming `rtol`, `atol` or `maxiter` if invalid."""
    check_tolerance(rtol, "rtol")
    check_tolerance(atol, "atol")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int):
        msg = f"`maxiter` must be an integer, got {maxiter!r}"
        raise TypeError(msg)
    if maxiter < 1:
        msg = f"`maxiter` must be at least 1, got {maxiter}"
        raise ValueError(msg)


def solve(
    kind: str,
    f: Callable,
    x0: Any,
    args: Any,
    *,
    method: Any,
    rtol: float,
    atol: float,
    maxiter: int,
    batch_axis: int | None,
    arg_batch_axes: Any,
    callback: Callable | None,
    xp: Any,
    options: dict[str, Any],
) -> Result:
    """Check the arguments of a solve, build its :class:`Problem` and run the method.

    The arguments are those of :func:`implicitnet.fixed_point` (`kind` says which
    problem); `args` is a tuple.
    """
    name = "f" if kind == "fixed_point" else "F"
    if not callable(f):
        msg = f"`{name}` must be callable, got {type(f).__name__}"
        raise TypeError(msg)
    if xp is None:
        if _is_python_numbers(x0):
            # A Python number or (nested) list of numbers, as SciPy accepts: solve on the
            # namespace of the array arguments, or on NumPy when there are none.
            arrays = [a for a in tree_leaves(args) if not _is_python_numbers(a)]
            xp = namespace(*arrays) if arrays else _backends.get_backend("numpy").namespace()
        else:
            try:
                xp = namespace(x0, *tree_leaves(args))
            except TypeError as exc:
                msg = f"`x0` must be an array (or pass `xp`): {exc}"
                raise TypeError(msg) from exc
    x0 = as_float_array(x0, xp=xp, name="x0")
    check_tolerances(rtol, atol, maxiter)
    if callback is not None and not callable(callback):
        msg = f"`callback` must be callable or None, got {type(callback).__name__}"
        raise TypeError(msg)
    solver = resolve_method(method, options)

    ndim = x0.ndim
    if batch_axis is not None:
        if isinstance(batch_axis, bool) or not isinstance(batch_axis, int):
            msg = f"`batch_axis` must be an integer or None, got {batch_axis!r}"
            raise TypeError(msg)
        if not -ndim <= batch_axis < ndim:
            msg = f"`batch_axis` {batch_axis} is out of range for `x0` with {ndim} dimensions"
            raise ValueError(msg)
        batch_axis %= ndim
        batch = x0.shape[batch_axis]
        if batch == 0:
            msg = "`x0` has no systems along `batch_axis` (size 0)"
            raise ValueError(msg)
    if arg_batch_axes is not None:
        arg_batch_axes = _check_arg_batch_axes(arg_batch_axes, args, batch_axis, x0)
    if _size(x0) == 0:
        msg = "`x0` must not be empty"
        raise ValueError(msg)
    if not to_host(xp.all(xp.isfinite(x0))):
        msg = "`x0` must be finite (it contains NaN or infinity)"
        raise ValueError(msg)

    problem = Problem(
        kind,
        f,
        x0,
        args,
        batch_axis=batch_axis,
        arg_batch_axes=arg_batch_axes,
        xp=xp,
    )
    return solver.run(
        problem, rtol=float(rtol), atol=float(atol), maxiter=maxiter, callback=callback, xp=xp
    )


def _is_python_numbers(x) -> bool:
    """Whether `x` is a real Python number or a non-empty nested list/tuple of them."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int | float):
        return True
    if isinstance(x, list | tuple) and x:
        return all(_is_python_numbers(v) for v in x)
    return False


def _size(x) -> int:
    n = 1
    for s in x.shape:
        n *= s
    return n


def _check_arg_batch_axes(arg_batch_axes, args, batch_axis, x0) -> tuple:
    if batch_axis is None:
        msg = "`arg_batch_axes` needs `batch_axis` (which axis of `x0` is the batch)"
        raise ValueError(msg)
    if arg_batch_axes is None or isinstance(arg_batch_axes, int):
        axes = (arg_batch_axes,) * len(args)
    elif isinstance(arg_batch_axes, tuple | list):
        axes = tuple(arg_batch_axes)
        if len(axes) != len(args):
            msg = (
                f"`arg_batch_axes` has {len(axes)} entries but `args` has {len(args)}; "
                "give one axis (or None) per argument"
            )
            raise ValueError(msg)
    else:
        msg = f"`arg_batch_axes` must be an int, None or a sequence, got {arg_batch_axes!r}"
        raise TypeError(msg)
    batch = x0.shape[batch_axis]
    out = []
    for k, (a, ax) in enumerate(zip(args, axes)):
        if ax is None:
            out.append(None)
            continue
        if isinstance(ax, bool) or not isinstance(ax, int):
            msg = f"`arg_batch_axes[{k}]` must be an int or None, got {ax!r}"
            raise TypeError(msg)
        leaves = tree_leaves(a)
        if not leaves or not all(is_array(leaf) for leaf in leaves):
            msg = f"`args[{k}]` has a batch axis in `arg_batch_axes` but holds non-arrays"
            raise TypeError(msg)
        norm_axes = set()
        for leaf in leaves:
            nd = len(leaf.shape)
            if not -nd <= ax < nd:
                msg = (
                    f"`arg_batch_axes[{k}]` = {ax} is out of range for an argument "
                    f"with {nd} dimensions"
                )
                raise ValueError(msg)
            if leaf.shape[ax] != batch:
                msg = (
                    f"`args[{k}]` has size {leaf.shape[ax]} along its batch axis {ax}, "
                    f"but `x0` holds {batch} systems"
                )
                raise ValueError(msg)
            norm_axes.add(ax % nd)
        out.append(ax if len(norm_axes) > 1 else norm_axes.pop())
    return tuple(out)
