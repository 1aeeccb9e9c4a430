"""The entry points: ``fixed_point`` and ``root``, differentiable through `backward`.

``fixed_point(f, x0, args)`` and ``root(F, x0, args)`` (:func:`implicitnet.fixed_point`,
:func:`implicitnet.root`, also importable from :mod:`implicitnet.solvers`) are the one
way to solve. The solve itself (argument checks, the problem in the solvers' layout,
the method's driver) is :func:`implicitnet.solvers.solve`; the adjoint object given
as `backward` (:mod:`implicitnet._adjoint`) decides how the solution is differentiated:
on raw arrays with the implicit-function-theorem VJP attached (``"implicit"``,
``"phantom"``), or through the iterations on tensors (``"unrolled"``). With
``backward=None`` the raw solve runs as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import solvers as _solvers
from ._adjoint import AbstractAdjoint as AbstractAdjoint
from ._adjoint import AbstractLinearAdjoint as AbstractLinearAdjoint
from ._adjoint import ImplicitAdjoint as ImplicitAdjoint
from ._adjoint import PhantomAdjoint as PhantomAdjoint
from ._adjoint import UnrolledAdjoint as UnrolledAdjoint
from ._adjoint import resolve_adjoint
from ._result import Result

# The adjoint classes above are re-exported (``X as X``); this module defines these.
__all__ = ["fixed_point", "root"]


#: The keywords of the entry points that the raw solve takes as they are.
_SOLVE_KEYWORDS = (
    "method",
    "rtol",
    "atol",
    "maxiter",
    "batch_axis",
    "arg_batch_axes",
    "callback",
    "options",
)


def _solve(kind: str, f: Callable, x0: Any, args: Any, params: dict[str, Any]) -> Result:
    """The one solve under :func:`fixed_point` and :func:`root` (`params`: their keywords)."""
    if not isinstance(args, tuple | list):
        args = (args,)
    args = tuple(args)
    backward, xp = params["backward"], params["xp"]
    keywords = {k: params[k] for k in _SOLVE_KEYWORDS}

    def solve(f, x0, args, *, raw=False):
        # `raw`: the adjoint solves on the raw arrays under any autodiff namespace given.
        ns = getattr(xp, "backend_namespace", xp) if raw and xp is not None else xp
        return _solvers.solve(kind, f, x0, args, xp=ns, **keywords)

    if backward is None:
        return solve(f, x0, args)
    adjoint = resolve_adjoint(backward, rtol=params["rtol"], atol=params["atol"])
    return adjoint.apply(solve, kind, f, x0, args, batch_axis=params["batch_axis"])


def fixed_point(
    f: Callable,
    x0: Any,
    args: Any = (),
    *,
    method: Any = "anderson",
    rtol: float = 1e-6,
    atol: float = 0.0,
    maxiter: int = 100,
    backward: Any = "implicit",
    batch_axis: int | None = None,
    arg_batch_axes: Any = None,
    callback: Callable | None = None,
    xp: Any = None,
    **options: Any,
) -> Result:
    """Solve ``x = f(x, *args)``, differentiably with respect to `args`.

    Parameters
    ----------
    f : callable
        ``f(x, *args)`` returns an array shaped like `x` (and of its dtype).
    x0 : array, or a Python number or (nested) list of numbers
        Starting point; the result has its shape, dtype and device. Python numbers and
        lists become an array of the namespace of `args` (NumPy when `args` has no
        arrays), as in SciPy; integers become the default floating dtype.
    args : tuple, optional
        Extra arguments of `f`. Anything to be differentiated is passed here.
    method : str or AbstractSolver, default: "anderson"
        A registered name (``"picard"``, ``"anderson"``, ``"broyden"``,
        ``"newton_krylov"``, the SciPy adapters ``"scipy:anderson"``,
        ``"scipy:broyden1"``, ``"scipy:krylov"``, ``"scipy:hybr"``, ...; see
        :func:`implicitnet.solvers.available_methods`) or a solver object such as
        ``Anderson(m=5)``.
    rtol, atol : float
        Relative and absolute tolerances; see Notes for the exact test.
    maxiter : int, default: 100
        Maximum number of iterations (of the method's outer loop; see `nfev` in the
        result for the number of function evaluations).
    backward : {"implicit", "phantom", "unrolled"}, adjoint object or None, default: "implicit"
        How gradients with respect to `args` are computed when the solution is
        differentiated (under :func:`implicitnet.grad`, :func:`~implicitnet.vjp`, ...):
        ``"implicit"`` solves the adjoint system exactly (:class:`ImplicitAdjoint`,
        configurable linear solver, tolerance and maxiter; by name it uses GMRES with
        this solve's `rtol` and `atol`), ``"phantom"`` takes a few
        damped adjoint steps (:class:`PhantomAdjoint`), ``"unrolled"`` backpropagates
        through the solver's iterations (:class:`UnrolledAdjoint`; memory grows with
        them); any :class:`AbstractAdjoint` may be given, and a name registered with
        :func:`implicitnet.register_adjoint`. None runs the raw solve, with no
        differentiation set up: `x0` and `args` reach `f` as they are (to differentiate
        through the iterations, use ``"unrolled"``, which also handles raw arrays that
        `f` mixes with traced ones).
        After a backward pass, ``result.stats["backward"]`` holds the adjoint
        solve's ``nit``, ``nmatvec``, ``residual``, ``success`` and ``status``; an
        adjoint solve that does not converge warns (:class:`ConvergenceWarning`), and
        so does a gradient taken (implicitly or by phantom steps) through a forward
        solve that did not converge.
    batch_axis : int, optional
        Treat every slice of `x0` along this axis as its own system, with its own
        convergence test, residual, ``nit``, ``nfev`` and success. `f` must act on
        each slice independently. Default: the whole of `x0` is one system.
    arg_batch_axes : int, None or sequence of them, optional
        For each element of `args`, the axis that carries the batch (like ``vmap``'s
        ``in_axes``), or None for an argument shared by every system; a single value
        applies to every element. When given, systems that have finished are removed
        from the active set and `f` is evaluated only on the others (with `x` and the
        declared arguments sliced alike). Removal copies the solver's working arrays, so
        converged systems are removed in groups: once an eighth of the systems still
        held have converged, or the oldest of them has waited 8 iterations (a diverged
        or stagnated system leaves at once). Until then their rows are still passed to
        `f`, but their results are final when they converge. When not given, `f`
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
        `method` or `backward` is unknown (the message lists the known ones),
        `batch_axis` or `arg_batch_axes` do not fit `x0` and `args`, or `f` returns a
        wrongly shaped array (checked at the first evaluation).
    TypeError
        If `f` is not callable, returns another dtype than `x0`, or `options` are given
        with a solver object or do not fit the method.

    See Also
    --------
    root : Solve ``F(x, *args) = 0``.

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
    the overall status is the worst of the unconverged systems' (in the order of
    :attr:`Status.severity`), and ``stats["statuses"]`` holds each system's.

    The solution ``result.x`` is differentiable with respect to every array in `args`
    (``x0`` gets a zero gradient); see `backward`. Anything differentiated must be passed
    in `args`: a map that captures a traced value in a closure is refused.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> res = inet.fixed_point(np.cos, np.array([1.0]), rtol=1e-10)
    >>> res.status, round(float(res.x[0]), 8)
    (<Status.SUCCESS: 'success'>, 0.73908513)

    Many systems at once, each with its own convergence:

    >>> c = np.array([[0.0], [1.0], [2.0]])
    >>> res = inet.fixed_point(lambda x, c: 0.5 * np.cos(x) + c, np.zeros((3, 1)),
    ...                        (c,), batch_axis=0, arg_batch_axes=0)
    >>> res.nit.shape, bool(res.success)
    ((3,), True)

    Differentiate the solution of ``z = W z + theta`` with respect to ``theta``:

    >>> W = np.array([[0.5, 0.1], [0.0, 0.3]])
    >>> def loss(theta):
    ...     res = inet.fixed_point(lambda z, th: W @ z + th, np.zeros(2), (theta,),
    ...                            rtol=1e-12)
    ...     return inet.ops.sum(res.x)
    >>> g = inet.grad(loss)(np.array([1.0, 2.0]))
    >>> np.allclose(g, np.linalg.solve(np.eye(2) - W.T, np.ones(2)))
    True
    """
    return _solve("fixed_point", f, x0, args, locals())


def root(
    F: Callable,
    x0: Any,
    args: Any = (),
    *,
    method: Any = "newton_krylov",
    rtol: float = 1e-6,
    atol: float = 0.0,
    maxiter: int = 100,
    backward: Any = "implicit",
    batch_axis: int | None = None,
    arg_batch_axes: Any = None,
    callback: Callable | None = None,
    xp: Any = None,
    **options: Any,
) -> Result:
    """Solve ``F(x, *args) = 0``, differentiably with respect to `args`.

    Parameters
    ----------
    F : callable
        ``F(x, *args)`` returns an array shaped like `x` (and of its dtype).
    x0, args
        As for :func:`fixed_point`.
    method : str or AbstractSolver, default: "newton_krylov"
        A registered name or a solver object (see :func:`fixed_point`). The default is
        Jacobian-free Newton–Krylov: unlike Picard, Anderson and Broyden, whose first
        model of the Jacobian is ``-I / beta`` (natural for ``f(x) - x``, arbitrary for
        a general `F`), it assumes nothing about the sign or scale of the Jacobian and
        converges superlinearly near a regular root.
    rtol, atol, maxiter, backward, batch_axis, arg_batch_axes, callback, xp, **options
        As for :func:`fixed_point` (with `F` for `f`); see Notes for the test.

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

    The solution ``result.x`` is differentiable with respect to every array in `args`,
    by the same adjoint mechanism as :func:`fixed_point` (the adjoint system is
    ``w ∂F/∂x = -g``); see `backward`.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> F = lambda x: np.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
    >>> res = inet.root(F, np.array([-1.2, 1.0]), rtol=1e-10)
    >>> np.round(res.x, 6).tolist()
    [1.0, 1.0]
    >>> def sqrt_of(a):  # the root of x**2 - a
    ...     return inet.root(lambda x, a: x * x - a, np.ones(1), (a,), rtol=1e-12).x
    >>> round(float(inet.grad(lambda a: inet.ops.sum(sqrt_of(a)))(np.array([4.0]))[0]), 10)
    0.25
    """
    return _solve("root", F, x0, args, locals())


def __getattr__(name: str) -> Any:
    # `implicitnet.implicit.jacobian_regularization` stays importable; it lives with the
    # nn code (a layer above).
    if name == "jacobian_regularization":
        # Deferred to first use: at module level it would close a cycle (nn -> implicit).
        from .nn import jacobian_regularization

        return jacobian_regularization
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
