"""Differentiable solves: implicit differentiation through fixed points and roots.

``fixed_point(f, x0, args)`` and ``root(F, x0, args)`` here are the public entry points
(:func:`implicitnet.fixed_point`, :func:`implicitnet.root`). Forward, they run a solver
from :mod:`implicitnet.solvers` on raw arrays, with no tape. When some array in `args`
is being differentiated, the solution is returned as a ``Tensor`` whose VJP rule solves
the adjoint system at the solution, reusing one vector–Jacobian product of the map.

Both problem kinds share one mechanism. Write the problem as ``G(z, θ) = 0`` with
``G = f(z) - z`` for a fixed point and ``G = F`` for a root. The implicit function
theorem gives ``dz*/dθ = -(∂G/∂z)^{-1} ∂G/∂θ``, so for a cotangent ``g = ∂L/∂z*``

    solve   w ∂G/∂z = -g                     (the adjoint system)
    then    ∂L/∂θ = w ∂G/∂θ.

For a fixed point ``∂G/∂z = J - I`` (``J = ∂f/∂z``) and ``∂G/∂θ = ∂f/∂θ``: the system
reads ``u = g + u J``, i.e. ``(I - J^T) u = g``, and ``∂L/∂θ = u ∂f/∂θ``. For a root it
reads ``w ∂F/∂z = -g`` and ``∂L/∂θ = w ∂F/∂θ``. In both cases the adjoint solve sees
only the linear operator ``A(w) = w ∂G/∂z`` (up to sign), built from one VJP of the map
at ``z*`` that is reused for every product.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import linalg as _linalg
from . import solvers as _solvers
from ._result import ConvergenceWarning, Result, Status
from ._tree import tree_flatten, tree_unflatten
from ._xp import is_array, is_tensor, namespace, vector_norm
from .autodiff import Tensor, defvjp, primitive, vjp
from .autodiff._core import _raw

__all__ = [
    "AbstractAdjoint",
    "ImplicitAdjoint",
    "PhantomAdjoint",
    "UnrolledAdjoint",
    "fixed_point",
    "jacobian_regularization",
    "root",
]


# ----------------------------------------------------------------------------------
# Backward modes
# ----------------------------------------------------------------------------------


class AbstractAdjoint:
    """How gradients flow through a solve.

    A backward mode either solves the adjoint system ``A w = b`` (see the module
    notes) given only products with ``A`` (:meth:`solve_adjoint`), or, for
    :class:`UnrolledAdjoint`, differentiates through the solver's own iterations.
    Any object with :meth:`solve_adjoint` of this signature can be passed as
    ``backward=``.
    """

    unrolled: bool = False

    def solve_adjoint(self, A: Callable, b: Any, /, *, batch_axis: int | None, xp: Any):
        """Solve ``A w = b`` (``A`` a callable matvec) and return a :class:`Result`."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class ImplicitAdjoint(AbstractAdjoint):
    """Exact implicit differentiation: one matrix-free linear solve per backward pass.

    Parameters
    ----------
    linear_solver : str or linear solver object, default: "gmres"
        A name known to :func:`implicitnet.linalg.get_solver` (``"gmres"``,
        ``"bicgstab"``, ``"broyden"``, ``"anderson"``, ``"neumann"``), or any object
        with ``solve(A, b, *, x0=None, batch_axis=None, xp=None) -> Result``. A name is
        configured with `rtol`, `atol` and `maxiter`; an object is used as it is.
    rtol, atol : float
        Tolerances of the adjoint solve (when `linear_solver` is a name): stop when
        ``norm(b - A w) <= atol + rtol * norm(b)`` per system.
    maxiter : int, optional
        Iteration limit of the adjoint solve (when `linear_solver` is a name). Default:
        the linear solver's own.

    Examples
    --------
    >>> import implicitnet as inet
    >>> adj = inet.ImplicitAdjoint(linear_solver="gmres", rtol=1e-8)
    >>> adj.solver().rtol
    1e-08
    """

    linear_solver: Any = "gmres"
    rtol: float = 1e-6
    atol: float = 0.0
    maxiter: int | None = None

    def __post_init__(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                msg = f"`{name}` must be a real number, got {value!r}"
                raise TypeError(msg)
            if not (value >= 0 and math.isfinite(value)):
                msg = f"`{name}` must be finite and non-negative, got {value!r}"
                raise ValueError(msg)
        if self.maxiter is not None and (
            isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or self.maxiter < 1
        ):
            msg = f"`maxiter` must be a positive integer or None, got {self.maxiter!r}"
            raise ValueError(msg)
        self.solver()  # validate the name (or object) now, not in the backward pass

    def solver(self):
        """The configured linear solver object."""
        if isinstance(self.linear_solver, str):
            proto = _linalg.get_solver(self.linear_solver)
            changes = {"rtol": self.rtol, "atol": self.atol}
            if self.maxiter is not None:
                changes["maxiter"] = self.maxiter
            return dataclasses.replace(proto, **changes)
        if not callable(getattr(self.linear_solver, "solve", None)):
            msg = (
                "`linear_solver` must be a name or an object with a `solve(A, b, ...)` "
                f"method, got {type(self.linear_solver).__name__}"
            )
            raise TypeError(msg)
        return self.linear_solver

    def solve_adjoint(self, A, b, /, *, batch_axis, xp):
        return self.solver().solve(A, b, batch_axis=batch_axis, xp=xp)


@dataclass(frozen=True, kw_only=True)
class PhantomAdjoint(AbstractAdjoint):
    """Approximate adjoint: a few damped steps of the adjoint fixed-point iteration.

    Starting from ``w_0 = b``, takes `steps` damped Richardson steps
    ``w <- w + damping * (b - A w)``. For a fixed point (``A w = w - w J``, ``b = g``)
    this is ``u <- (1 - damping) u + damping (g + u J)``, a truncated, damped Neumann
    series for ``u = g + u J``; ``steps=0`` gives the Jacobian-free gradient
    ``u = g`` of Fung et al. (2022). Cheaper than :class:`ImplicitAdjoint`, and exact
    only in the limit of many steps on a contraction. Meant for fixed-point problems.

    Parameters
    ----------
    steps : int, default: 5
        Number of damped steps (each costs one VJP of the map).
    damping : float, default: 0.5
        Step weight, in ``(0, 1]``.

    References
    ----------
    S. W. Fung, H. Heaton, Q. Li, D. McKenzie, S. Osher and W. Yin, "JFB: Jacobian-free
    backpropagation for implicit networks", AAAI (2022).
    """

    steps: int = 5
    damping: float = 0.5

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            msg = f"`steps` must be a non-negative integer, got {self.steps!r}"
            raise ValueError(msg)
        if not (isinstance(self.damping, int | float) and 0.0 < self.damping <= 1.0):
            msg = f"`damping` must lie in (0, 1], got {self.damping!r}"
            raise ValueError(msg)

    def solve_adjoint(self, A, b, /, *, batch_axis, xp):
        w = b
        for _ in range(self.steps):
            w = w + self.damping * (b - A(w))
        axis = _system_axes(b, batch_axis)
        r = vector_norm(b - A(w), axis=axis, xp=xp) if self.steps else None
        residual = float(xp.max(r)) if r is not None else math.nan
        return Result(
            x=w,
            success=True,
            status=Status.SUCCESS,
            message=f"{self.steps} phantom steps (approximate adjoint by design).",
            nit=self.steps,
            nfev=self.steps + (1 if self.steps else 0),
            residual=residual,
        )


@dataclass(frozen=True, kw_only=True)
class UnrolledAdjoint(AbstractAdjoint):
    """Backpropagate through the solver's own iterations (memory grows with them).

    The array-API solver runs on autodiff tensors, so the gradient is that of the
    unrolled computation. This is the reference that implicit differentiation is tested
    against; it is exact for the iterate returned, not for the true fixed point.
    """

    unrolled = True

    def solve_adjoint(self, A, b, /, *, batch_axis, xp):  # pragma: no cover - not used
        msg = "UnrolledAdjoint does not solve an adjoint system"
        raise TypeError(msg)


_BACKWARD = {
    "implicit": ImplicitAdjoint,
    "phantom": PhantomAdjoint,
    "unrolled": UnrolledAdjoint,
}


def _resolve_backward(backward, *, rtol: float, atol: float) -> AbstractAdjoint:
    if isinstance(backward, str):
        if backward == "implicit":
            # The adjoint solve by name inherits the forward tolerances: a solution asked
            # for to rtol gets a gradient of comparable accuracy.
            # (Invalid tolerances are refused here, with the same message as the solver.)
            return ImplicitAdjoint(rtol=rtol, atol=atol)
        try:
            return _BACKWARD[backward]()
        except KeyError:
            known = ", ".join(repr(k) for k in _BACKWARD)
            msg = f"unknown `backward` {backward!r}; known: {known}, or an adjoint object"
            raise ValueError(msg) from None
    if isinstance(backward, AbstractAdjoint) or callable(getattr(backward, "solve_adjoint", None)):
        return backward
    msg = (
        "`backward` must be 'implicit', 'phantom', 'unrolled' or an object with "
        f"`solve_adjoint`, got {type(backward).__name__}"
    )
    raise TypeError(msg)


def _system_axes(b, batch_axis):
    if batch_axis is None:
        return None
    return tuple(i for i in range(b.ndim) if i != batch_axis % b.ndim)


# ----------------------------------------------------------------------------------
# The differentiable solution
# ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Spec:
    """Static data of one differentiable solve (carried by the tape node)."""

    kind: str
    f: Callable
    treedef: Any
    adjoint: AbstractAdjoint
    batch_axis: int | None
    stats: dict
    forward: Result


@primitive(name="implicit_solution")
def _implicit_solution(z_star, *leaves, spec):
    """Identity on the solution; its VJP rule is the adjoint solve."""
    return z_star


@defvjp(_implicit_solution)
def _implicit_solution_vjp(ct, ans, z_star, *leaves, xp, spec, needs_grad):
    if is_tensor(ct) and ct.traced:
        msg = "second derivatives through an implicit solve are not supported"
        raise NotImplementedError(msg)
    ct = _raw(ct)
    bxp = namespace(ct)
    fwd = spec.forward
    if not fwd.success:
        # The implicit function theorem holds at a fixed point (a root); at an iterate
        # that is not one, the "gradient" below is that of no function of the inputs.
        warnings.warn(
            f"differentiating through a forward solve that did not converge: "
            f"{fwd.status.value}, residual {_fmt(fwd.residual)} after {_fmt(fwd.nit)} "
            "iterations; the implicit gradient assumes a solution and is unreliable here. "
            "Check `result.success`, raise `maxiter` or loosen `rtol`, or make the map "
            "contractive.",
            ConvergenceWarning,
            stacklevel=2,
        )
    # Constants enter as constant Tensors, so that operators of a strict array library
    # (which refuse foreign operands) always dispatch to the Tensor.
    leaves = [_constant(a) for a in leaves]

    def call(z, leaf_values):
        return spec.f(z, *tree_unflatten(spec.treedef, leaf_values))

    # One VJP of the map in z at z*, reused for every product of the adjoint solve.
    _, vjp_z = vjp(lambda z: call(z, leaves), z_star)
    if spec.kind == "fixed_point":

        def A(w):
            return w - _raw(vjp_z(w)[0])

        b = ct
    else:

        def A(w):
            return _raw(vjp_z(w)[0])

        b = -ct

    if spec.batch_axis is not None and b.ndim == 1:
        # One unknown per system: give the linear solver an explicit system axis.
        A1 = A

        def A(w):
            return bxp.reshape(A1(bxp.reshape(w, (-1,))), (-1, 1))

        res = spec.adjoint.solve_adjoint(A, bxp.reshape(b, (-1, 1)), batch_axis=0, xp=bxp)
        res = dataclasses.replace(res, x=bxp.reshape(res.x, (-1,)))
    else:
        res = spec.adjoint.solve_adjoint(A, b, batch_axis=spec.batch_axis, xp=bxp)
    spec.stats["backward"] = {
        "nit": res.nit,
        "nmatvec": res.nfev,
        "residual": res.residual,
        "success": res.success,
        "status": res.status.value,
    }
    if not res.success:
        warnings.warn(
            f"the adjoint (backward) solve did not converge: {res.status.value}, "
            f"residual {_fmt(res.residual)} after {_fmt(res.nit)} iterations; gradients "
            "are approximate. Loosen or change `backward`, or check that the map is "
            "contractive at the solution.",
            ConvergenceWarning,
            stacklevel=2,
        )
    w = res.x

    # Parameter cotangents: w ∂G/∂θ, with one more VJP in the inputs that need one.
    wanted = [i for i, need in enumerate(needs_grad[1:]) if need]
    cts: list[Any] = [None] * (1 + len(leaves))
    if wanted:

        def of_wanted(*values):
            full = list(leaves)
            for i, v in zip(wanted, values):
                full[i] = v
            return call(Tensor(z_star), full)

        _, vjp_p = vjp(of_wanted, *(leaves[i] for i in wanted))
        for i, c in zip(wanted, vjp_p(w)):
            cts[1 + i] = c
    return tuple(cts)


def _constant(a):
    """A raw array as a constant Tensor (anything else unchanged).

    Strict array libraries refuse ``raw_array op tensor``; wrapping every raw array that
    meets traced values makes each operator dispatch to the Tensor.
    """
    if is_array(a) and not is_tensor(a):
        return Tensor(a)
    return a


def _fmt(value) -> str:
    if isinstance(value, float | int):
        return f"{value:.3g}"
    try:
        return f"max {float(namespace(value).max(value)):.3g}"
    except Exception:  # pragma: no cover - display only
        return str(value)


def _solve(
    kind,
    f,
    x0,
    args,
    *,
    backward,
    method,
    rtol,
    atol,
    maxiter,
    batch_axis,
    arg_batch_axes,
    callback,
    xp,
    options,
) -> Result:
    name = "f" if kind == "fixed_point" else "F"
    if not callable(f):
        msg = f"`{name}` must be callable, got {type(f).__name__}"
        raise TypeError(msg)
    adjoint = _resolve_backward(backward, rtol=rtol, atol=atol)
    if not isinstance(args, tuple | list):
        args = (args,)
    args = tuple(args)
    leaves, treedef = tree_flatten(args)
    traced = any(is_tensor(a) and a.traced for a in leaves)
    raw_solve = _solvers.fixed_point if kind == "fixed_point" else _solvers.root
    common = dict(
        method=method,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        batch_axis=batch_axis,
        arg_batch_axes=arg_batch_axes,
        callback=callback,
        **options,
    )

    if traced and adjoint.unrolled:
        # Differentiate through the iterations: run the array-API solver on tensors
        # (raw arrays enter as constant tensors, so every operator dispatches to Tensor).
        x0 = _constant(x0)
        args = tree_unflatten(treedef, [_constant(a) for a in leaves])
        try:
            return raw_solve(f, x0, args, xp=xp, **common)
        except NotImplementedError as exc:
            msg = (
                "`backward='unrolled'` differentiates through the solver's iterations, so "
                f"every operation of `method` must be differentiable: {exc}. Use "
                "backward='implicit' (exact at the solution) or a method built from "
                "differentiable operations ('picard', 'anderson', 'broyden')."
            )
            raise NotImplementedError(msg) from exc

    raw_leaves = [_raw(a) for a in leaves]
    raw_args = tree_unflatten(treedef, raw_leaves)

    def checked(z, *a):
        try:
            out = f(z, *a)
        except TypeError:
            # A strict array library refuses `raw_array op tensor` before the result can
            # show the captured tensor: retry with constant tensors to diagnose.
            try:
                out = f(
                    Tensor(z),
                    *tree_unflatten(treedef, [_constant(v) for v in tree_flatten(a)[0]]),
                )
            except Exception:
                out = None
            if not (is_tensor(out) and out.traced):
                raise
        if is_tensor(out):
            if out.traced:
                msg = (
                    f"`{name}` returned a traced Tensor when called on raw arrays: it "
                    "captures a value being differentiated in a closure. Pass every "
                    f"array you differentiate with respect to in `args`, as `{name}(x, "
                    "*args)` receives them, so that its gradient is not lost."
                )
                raise ValueError(msg)
            out = _raw(out)
        return out

    res = raw_solve(
        checked,
        _raw(x0),
        raw_args,
        xp=None if xp is None else getattr(xp, "backend_namespace", xp),
        **common,
    )
    if not traced:
        return res
    spec = _Spec(kind, f, treedef, adjoint, batch_axis, res.stats, res)
    z = _implicit_solution(res.x, *leaves, spec=spec)
    return dataclasses.replace(res, x=z)


_DOC_TAIL = """
    backward : {"implicit", "phantom", "unrolled"} or adjoint object, default: "implicit"
        How gradients with respect to `args` are computed when the solution is
        differentiated (under :func:`implicitnet.grad`, :func:`~implicitnet.vjp`, ...):
        ``"implicit"`` solves the adjoint system exactly (:class:`ImplicitAdjoint`,
        configurable linear solver, tolerance and maxiter; by name it uses GMRES with
        this solve's `rtol` and `atol`), ``"phantom"`` takes a few
        damped adjoint steps (:class:`PhantomAdjoint`), ``"unrolled"`` backpropagates
        through the solver's iterations (:class:`UnrolledAdjoint`; memory grows with
        them). After a backward pass, ``result.stats["backward"]`` holds the adjoint
        solve's ``nit``, ``nmatvec``, ``residual``, ``success`` and ``status``; an
        adjoint solve that does not converge warns (:class:`ConvergenceWarning`), and
        so does a gradient taken (implicitly or by phantom steps) through a forward
        solve that did not converge.
"""


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
    return _solve(
        "fixed_point",
        f,
        x0,
        args,
        backward=backward,
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
    backward: Any = "implicit",
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
        backward=backward,
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


def _differentiable_doc(raw_doc: str, notes: str, examples: str) -> str:
    """The raw solver's docstring, plus `backward`, differentiation notes and examples."""
    doc = raw_doc or ""
    doc = doc.replace("    callback :", _DOC_TAIL.strip("\n") + "\n    callback :", 1)
    doc = doc.replace(
        "    implicitnet.fixed_point : The differentiable version.",
        "    implicitnet.solvers.fixed_point : The same solve, not differentiable.",
    )
    doc = doc.replace(
        "    Examples\n    --------", notes.rstrip() + "\n\n    Examples\n    --------", 1
    )
    return doc.rstrip() + "\n" + examples


# ----------------------------------------------------------------------------------
# Jacobian regularisation
# ----------------------------------------------------------------------------------


def jacobian_regularization(
    f: Callable,
    z: Any,
    args: Any = (),
    *,
    n_probes: int = 1,
    seed: Any = 0,
    method: str = "fd",
    eps: float | None = None,
):
    """Hutchinson estimate of ``||∂f/∂z||_F^2 / z.size`` at `z`, differentiable.

    Draws `n_probes` standard normal probes ``v`` (shaped like `z`) and averages
    ``||J v||^2`` (``method="fd"``) or ``||v^T J||^2`` (``method="vjp"``); both are
    unbiased estimates of ``||J||_F^2`` because ``E[v v^T] = I``. Divided by the number
    of elements of `z`, as in Bai, Koltun & Kolter (2021), so its scale does not depend
    on batch size or width. Add it to the loss (times a small weight) to keep the
    equilibrium well conditioned.

    Parameters
    ----------
    f : callable
        The map ``f(z, *args)``.
    z : array or Tensor
        The point, usually the equilibrium ``z*``.
    args : tuple
        Arguments of `f`; gradients flow to them when they are tensors.
    n_probes : int, default: 1
        Number of Hutchinson probes.
    seed : int or numpy.random.Generator, default: 0
        Source of the probes (drawn on the host, so every backend sees the same ones).
    method : {"fd", "vjp"}, default: "fd"
        ``"fd"``: Jacobian-vector products by forward differences
        ``(f(z + eps v) - f(z)) / eps``: first-order, only forward evaluations of `f`.
        ``"vjp"``: exact vector-Jacobian products; differentiating the estimate then
        needs second derivatives of `f` (supported by implicitnet's autodiff).
    eps : float, optional
        Finite-difference step for ``"fd"``. Default: ``sqrt(machine epsilon)`` times
        ``max(1, rms(z))``.
    Returns
    -------
    array or Tensor
        A 0-d estimate, differentiable with respect to `z` and `args`.

    References
    ----------
    S. Bai, V. Koltun and J. Z. Kolter, "Stabilizing equilibrium models by Jacobian
    regularization", ICML (2021). M. F. Hutchinson, "A stochastic estimator of the
    trace of the influence matrix for Laplacian smoothing splines" (1989).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> W = 0.5 * np.eye(3)
    >>> est = inet.jacobian_regularization(lambda z, W: z @ W.T, np.ones((2, 3)), (W,),
    ...                                    n_probes=200)
    >>> bool(abs(float(est) - 0.25) < 0.05)
    True
    """
    from . import backends as _backends

    if method not in ("fd", "vjp"):
        msg = f"`method` must be 'fd' or 'vjp', got {method!r}"
        raise ValueError(msg)
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        msg = f"`n_probes` must be a positive integer, got {n_probes!r}"
        raise ValueError(msg)
    if not isinstance(args, tuple | list):
        args = (args,)
    backend = _backends.backend_of(z)
    raw_z = _raw(z)
    size = 1
    for s in raw_z.shape:
        size *= s
    probes = backend.random_normal(
        (n_probes, *raw_z.shape), seed, dtype=raw_z.dtype, device=getattr(raw_z, "device", None)
    )
    # Raw arrays enter as constant tensors (strict libraries refuse `raw op tensor`).
    z = _constant(z)
    leaves, treedef = tree_flatten(tuple(args))
    args = tree_unflatten(treedef, [_constant(a) for a in leaves])
    xp = namespace(z)
    total = None
    if method == "fd":
        if eps is None:
            rms = float(vector_norm(raw_z, xp=namespace(raw_z))) / math.sqrt(max(size, 1))
            finfo = namespace(raw_z).finfo(raw_z.dtype)
            eps = math.sqrt(float(finfo.eps)) * max(1.0, rms)
        fz = f(z, *args)
        for k in range(n_probes):
            jv = (f(z + eps * probes[k, ...], *args) - fz) / eps
            term = xp.sum(jv * jv)
            total = term if total is None else total + term
    else:
        _, vjp_fn = vjp(lambda zz: f(zz, *args), z)
        for k in range(n_probes):
            vj = vjp_fn(probes[k, ...])[0]
            term = xp.sum(vj * vj)
            total = term if total is None else total + term
    out = total / (n_probes * size)
    return out if is_tensor(out) and out.traced else _raw(out)


fixed_point.__doc__ = _differentiable_doc(
    _solvers.fixed_point.__doc__,
    """
    The solution ``result.x`` is differentiable with respect to every array in `args`
    (``x0`` gets a zero gradient); see `backward`. Anything differentiated must be passed
    in `args`: a map that captures a traced value in a closure is refused.
    """,
    """
    Differentiate the solution of ``z = W z + theta`` with respect to ``theta``:

    >>> import numpy as np
    >>> import implicitnet as inet
    >>> W = np.array([[0.5, 0.1], [0.0, 0.3]])
    >>> def loss(theta):
    ...     res = inet.fixed_point(lambda z, th: W @ z + th, np.zeros(2), (theta,),
    ...                            rtol=1e-12)
    ...     return inet.ops.sum(res.x)
    >>> g = inet.grad(loss)(np.array([1.0, 2.0]))
    >>> np.allclose(g, np.linalg.solve(np.eye(2) - W.T, np.ones(2)))
    True
""",
)

root.__doc__ = _differentiable_doc(
    _solvers.root.__doc__,
    """
    The solution ``result.x`` is differentiable with respect to every array in `args`,
    by the same adjoint mechanism as :func:`fixed_point` (the adjoint system is
    ``w ∂F/∂x = -g``); see `backward`.
    """,
    """
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> def sqrt_of(a):  # the root of x**2 - a
    ...     return inet.root(lambda x, a: x * x - a, np.ones(1), (a,), rtol=1e-12).x
    >>> round(float(inet.grad(lambda a: inet.ops.sum(sqrt_of(a)))(np.array([4.0]))[0]), 10)
    0.25
""",
)
