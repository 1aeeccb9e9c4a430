"""`fixed_point` and `root`: argument checks, problem set-up, dispatch to the method."""

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

__all__ = ["fixed_point", "root"]

_COMMON_DOC = """
    rtol, atol : float
        Relative and absolute tolerances; see Notes for the exact test.
    maxiter : int, default: 100
        Maximum number of iterations (of the method's outer loop; see `nfev` in the
        result for the number of function evaluations).
    batch_axis : int, optional
        Treat every slice of `x0` along this axis as its own system, with its own
        convergence test, residual, ``nit``, ``nfev`` and success. `{f}` must act on
        each slice independently. Default: the whole of `x0` is one system.
    arg_batch_axes : int, None or sequence of them, optional
        For each element of `args`, the axis that carries the batch (like ``vmap``'s
        ``in_axes``), or None for an argument shared by every system; a single value
        applies to every element. When given, systems that have finished are removed
        from the active set and `{f}` is evaluated only on the others (with `x` and the
        declared arguments sliced alike). Removal copies the solver's working arrays, so
        converged systems are removed in groups: once an eighth of the systems still
        held have converged, or the oldest of them has waited 8 iterations (a diverged
        or stagnated system leaves at once). Until then their rows are still passed to
        `{f}`, but their results are final when they converge. When not given, `{f}`
        is evaluated on the whole batch every iteration and finished systems are merely
        held fixed: shapes are never used to guess which arguments carry the batch.
    callback : callable, optional
        Called after every iteration as ``callback(x, residual)``: `x` the current
        iterate (shaped like `x0`), `residual` its residual norm (a float, or an
        array of one norm per system when batched). Returning True stops the solve
        (status ``"stopped"`` unless every system has converged).
    xp : array namespace, optional
        Namespace of `x0`. Default: inferred from `x0` and `args`.
    **options
        Configuration of the named `method` (e.g. ``m=5, beta=0.5`` for Anderson);
        not allowed together with a solver object.
"""


def check_tolerances(rtol, atol, maxiter) -> None:
    """Raise ``TypeError``/``ValueError`` naming `rtol`, `atol` or `maxiter` if invalid."""
    for value, label in ((rtol, "rtol"), (atol, "atol")):
        if isinstance(value, bool) or not isinstance(value, int | float):
            msg = f"`{label}` must be a real number, got {value!r}"
            raise TypeError(msg)
        if not (value >= 0 and math.isfinite(value)):
            msg = f"`{label}` must be finite and non-negative, got {value!r}"
            raise ValueError(msg)
    if isinstance(maxiter, bool) or not isinstance(maxiter, int):
        msg = f"`maxiter` must be an integer, got {maxiter!r}"
        raise TypeError(msg)
    if maxiter < 1:
        msg = f"`maxiter` must be at least 1, got {maxiter}"
        raise ValueError(msg)


def _solve(
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
    name = "f" if kind == "fixed_point" else "F"
    if not callable(f):
        msg = f"`{name}` must be callable, got {type(f).__name__}"
        raise TypeError(msg)
    if not isinstance(args, tuple | list):
        args = (args,)
    args = tuple(args)
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


def _fill(doc: str, f: str) -> str:
    return doc.replace("{COMMON}", _COMMON_DOC.format(f=f).strip("\n"))


def fixed_point(
    f: Callable,
    x0: Any,
    args: Any = (),
    *,
    method: Any = "anderson",
    rtol: float = 1e-6,
    atol: float = 0.0,
    maxiter: int = 100,
    batch_axis: int | None = None,
    arg_batch_axes: Any = None,
    callback: Callable | None = None,
    xp: Any = None,
    **options: Any,
) -> Result:
    return _solve(
        "fixed_point",
        f,
        x0,
        args,
        method=method,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        batch_axis=batch_axis,
        arg_batch_axes=arg_batch_axes,
        callback=callback,
        xp=xp,
        options=options,
    )


def root(
    F: Callable,
    x0: Any,
    args: Any = (),
    *,
    method: Any = "newton_krylov",
    rtol: float = 1e-6,
    atol: float = 0.0,
    maxiter: int = 100,
    batch_axis: int | None = None,
    arg_batch_axes: Any = None,
    callback: Callable | None = None,
    xp: Any = None,
    **options: Any,
) -> Result:
    return _solve(
        "root",
        F,
        x0,
        args,
        method=method,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        batch_axis=batch_axis,
        arg_batch_axes=arg_batch_axes,
        callback=callback,
        xp=xp,
        options=options,
    )


fixed_point.__doc__ = _fill(
    """Solve ``x = f(x, *args)``.

    Parameters
    ----------
    f : callable
        ``f(x, *args)`` returns an array shaped like `x` (and of its dtype).
    x0 : array, or a Python number or (nested) list of numbers
        Starting point; the result has its shape, dtype and device. Python numbers and
        lists become an array of the namespace of `args` (NumPy when `args` has no
        arrays), as in SciPy; integers become the default floating dtype.
    args : tuple, optional
        Extra arguments of `f`. Anything to be differentiated (by the differentiable
        wrapper :func:`implicitnet.fixed_point`) is passed here.
    method : str or AbstractSolver, default: "anderson"
        A registered name (``"picard"``, ``"anderson"``, ``"broyden"``,
        ``"newton_krylov"``, the SciPy adapters ``"scipy:anderson"``,
        ``"scipy:broyden1"``, ``"scipy:krylov"``, ``"scipy:hybr"``, ...; see
        :func:`available_methods`) or a solver object such as ``Anderson(m=5)``.
{COMMON}

    Returns
    -------
    Result
        ``x`` (the iterate that passed the test, else the one with the lowest
        residual), ``success``, ``status``, ``message``, ``nit``, ``nfev``,
        ``residual`` (``||f(x) - x||``), ``relative_residual`` (see Notes), ``history``
        (residual norm per iteration, entry 0 at `x0`; shape ``(iterations + 1,
        batch)`` when batched, finished systems repeating their last value) and
        ``converged``. Batched: ``nit``, ``nfev``, ``residual``,
        ``relative_residual`` and ``converged`` are arrays with one entry per system;
        ``nfev`` counts the evaluations spent on each system while it was iterating
        (``stats["ncalls"]`` counts calls of `f`).

    Raises
    ------
    ValueError
        If `x0` is empty or not finite, ``f(x0)`` is not finite, `rtol`/`atol` are
        negative, `maxiter < 1`,
        `method` is unknown (the message lists the known ones), `batch_axis` or
        `arg_batch_axes` do not fit `x0` and `args`, or `f` returns a wrongly shaped
        array (checked at the first evaluation).
    TypeError
        If `f` is not callable, returns another dtype than `x0`, or `options` are given
        with a solver object or do not fit the method.

    See Also
    --------
    root : Solve ``F(x, *args) = 0``.
    implicitnet.fixed_point : The differentiable version.

    Notes
    -----
    System ``i`` (the whole of `x0` when unbatched) has converged at ``x`` when, with
    Euclidean norms over the elements of that system,

        ||f(x) - x|| <= atol + rtol * max(r0, min(||f(x)||, 100 * s0)),

    where ``r0 = ||f(x0) - x0||`` and ``s0 = max(||f(x0)||, r0)``. The relative part is
    scale invariant (``||f(x)||`` is the size of the solution), works when the solution
    is zero (through ``r0``) and is not stricter for a warm start than for a cold one.
    The scale follows ``||f(x)||`` only up to 100 times its starting value: an iterate
    that runs away on a map without a fixed point never makes the test pass (beyond
    the cap, an iterate must also have a residual resolvable in its dtype). SciPy's
    ``f_rtol`` is this test with the scale ``r0``; torchdeq's relative residual
    ``||f(x) - x|| / ||f(x)||`` is this test without the cap (see the theory page on
    the stopping test). ``res.relative_residual`` is the residual divided by the scale:
    with ``atol=0``, a system converged exactly when it is at most `rtol`. A converged
    system returns the iterate that passed the test, which is finite.

    Failure is a value: ``status`` is ``"maxiter"`` when the iterations run out,
    ``"diverged"`` when the residual becomes non-finite (at any iterate) or grows by a
    large factor over the best one seen, ``"stagnated"`` when the best residual has not
    improved for a number of iterations; `x` is then the best iterate seen, never NaN. When batched,
    the overall status is the worst of the unconverged systems', and
    ``stats["statuses"]`` holds each system's.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> res = inet.solvers.fixed_point(np.cos, np.array([1.0]), rtol=1e-10)
    >>> res.status, round(float(res.x[0]), 8)
    (<Status.SUCCESS: 'success'>, 0.73908513)

    Many systems at once, each with its own convergence:

    >>> c = np.array([[0.0], [1.0], [2.0]])
    >>> res = inet.solvers.fixed_point(lambda x, c: 0.5 * np.cos(x) + c, np.zeros((3, 1)),
    ...                                (c,), batch_axis=0, arg_batch_axes=0)
    >>> res.nit.shape, bool(res.success)
    ((3,), True)
    """,
    "f",
)

root.__doc__ = _fill(
    """Solve ``F(x, *args) = 0``.

    Parameters
    ----------
    F : callable
        ``F(x, *args)`` returns an array shaped like `x` (and of its dtype).
    x0 : array, or a Python number or (nested) list of numbers
        Starting point; the result has its shape, dtype and device. Python numbers and
        lists become an array of the namespace of `args` (NumPy when `args` has no
        arrays), as in SciPy; integers become the default floating dtype.
    args : tuple, optional
        Extra arguments of `F`.
    method : str or AbstractSolver, default: "newton_krylov"
        A registered name or a solver object (see :func:`fixed_point`). The default is
        Jacobian-free Newton–Krylov: unlike Picard, Anderson and Broyden, whose first
        model of the Jacobian is ``-I / beta`` (natural for ``f(x) - x``, arbitrary for
        a general `F`), it assumes nothing about the sign or scale of the Jacobian and
        converges superlinearly near a regular root.
{COMMON}

    Returns
    -------
    Result
        As for :func:`fixed_point`, with ``residual = ||F(x)||``.

    Raises
    ------
    ValueError, TypeError
        As for :func:`fixed_point`.

    See Also
    --------
    fixed_point : Solve ``x = f(x, *args)``.

    Notes
    -----
    System ``i`` has converged at ``x`` when ``||F(x)|| <= atol + rtol * ||F(x0)||``
    (Euclidean norms over the elements of that system; SciPy's ``f_rtol`` sense, with
    ``atol`` for its ``f_tol``). The scale ``||F(x0)||`` is fixed, so an iterate that runs
    away never passes; ``res.relative_residual`` is ``||F(x)|| / ||F(x0)||``. A value of
    `F` that is not finite, or an iterate that is not finite (``F`` may be finite there,
    as ``tanh`` is at infinity), ends the system as ``"diverged"``.

    Methods built for fixed points apply to a root problem through the map
    ``x + beta * F(x)``: Picard, Anderson and Broyden use the model Jacobian
    ``-I / beta``, the convention of SciPy's mixing methods.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> F = lambda x: np.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
    >>> res = inet.solvers.root(F, np.array([-1.2, 1.0]), rtol=1e-10)
    >>> np.round(res.x, 6).tolist()
    [1.0, 1.0]
    """,
    "F",
)
