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
from .._validate import (
    check_arg_batch_axes,
    check_batch_axis,
    check_callable,
    check_finite,
    check_tolerances,
    is_python_numbers,
)
from .._xp import as_float_array, namespace
from ._base import Problem
from ._registry import resolve_method

__all__ = ["solve"]


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
    """The raw solve: check the arguments, build the :class:`Problem`, run the method.

    What :func:`implicitnet.fixed_point` and :func:`implicitnet.root` run with
    ``backward=None``, and what an adjoint's ``apply`` calls for the forward solve. It
    knows nothing of autodiff: `x0` and `args` must hold raw arrays.

    Parameters
    ----------
    kind : {"fixed_point", "root"}
        Which problem: ``x = f(x, *args)`` or ``f(x, *args) = 0``.
    f : callable
        The map (`kind` ``"fixed_point"``) or the residual function (``"root"``).
    x0 : array
        The starting point.
    args : tuple
        The further arguments of `f`.
    method, rtol, atol, maxiter, batch_axis, arg_batch_axes, callback, xp
        As in :func:`implicitnet.fixed_point`.
    options : dict
        The method's keyword options (``**options`` of :func:`implicitnet.fixed_point`).

    Returns
    -------
    Result
        As :func:`implicitnet.fixed_point` returns it.

    Raises
    ------
    ValueError, TypeError
        For a `kind` other than the two, and for the arguments
        :func:`implicitnet.fixed_point` refuses.
    """
    if kind not in ("fixed_point", "root"):
        msg = f"`kind` must be 'fixed_point' or 'root', got {kind!r}"
        raise ValueError(msg)
    check_callable(f, "f" if kind == "fixed_point" else "F")
    if xp is None:
        if is_python_numbers(x0):
            # A Python number or (nested) list of numbers, as SciPy accepts: solve on the
            # namespace of the array arguments, or on NumPy when there are none.
            arrays = [a for a in tree_leaves(args) if not is_python_numbers(a)]
            xp = namespace(*arrays) if arrays else _backends.get_backend("numpy").namespace()
        else:
            try:
                xp = namespace(x0, *tree_leaves(args))
            except TypeError as exc:
                msg = f"`x0` must be an array (or pass `xp`): {exc}"
                raise TypeError(msg) from exc
    x0 = as_float_array(x0, xp=xp, name="x0")
    check_tolerances(rtol, atol, maxiter)
    check_callable(callback, "callback", optional=True)
    solver = resolve_method(method, options)

    batch_axis = check_batch_axis(batch_axis, x0.ndim, "x0")
    if batch_axis is not None and x0.shape[batch_axis] == 0:
        msg = "`x0` has no systems along `batch_axis` (size 0)"
        raise ValueError(msg)
    if arg_batch_axes is not None:
        arg_batch_axes = check_arg_batch_axes(arg_batch_axes, args, batch_axis, x0)
    if math.prod(x0.shape) == 0:
        msg = "`x0` must not be empty"
        raise ValueError(msg)
    check_finite(x0, "x0", xp=xp)

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
