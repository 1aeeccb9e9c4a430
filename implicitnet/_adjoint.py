"""Adjoints: how gradients flow through a solve, and the implicit VJP they share.

An adjoint object decides how :func:`implicitnet.fixed_point` and
:func:`implicitnet.root` are differentiated (the shape of optimistix's
``adjoint.apply``): :meth:`AbstractAdjoint.apply` receives the raw solve, with every
option bound, and the problem, and returns the :class:`~implicitnet.Result`.

* :class:`ImplicitAdjoint` and :class:`PhantomAdjoint` solve on raw arrays and attach
  the implicit-function-theorem primitive to the solution; its VJP rule is
  :func:`root_vjp`, which hands the adjoint linear system to the adjoint's
  :meth:`~AbstractLinearAdjoint.solve_adjoint`.
* :class:`UnrolledAdjoint` runs the solver on autodiff tensors, so the gradient is that
  of the iterations.

:func:`root_vjp` works on an optimality function ``G(z, *leaves)`` that vanishes at the
solution: ``G = z - f(z)`` for a fixed point, ``G = F`` for a root. The implicit
function theorem gives, for a cotangent ``g = ∂L/∂z*``,

    solve   w ∂G/∂z = -g                     (the adjoint system)
    then    ∂L/∂θ = w ∂G/∂θ,

so the linear solve sees only the operator ``A(w) = w ∂G/∂z``, built from one VJP of
``G`` at ``z*`` reused for every product. For a fixed point ``A(w) = w - w J``
(``J = ∂f/∂z``) and ``-w`` is the solution ``u`` of ``u = g + u J``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import linalg as _linalg
from ._registry import Registry
from ._result import ConvergenceWarning, Result, Status
from ._tree import tree_flatten, tree_unflatten
from ._validate import check_int, check_real, check_tolerances
from ._xp import is_array, is_tensor, namespace, untraced, vector_norm
from .autodiff import Tensor, defvjp, primitive, vjp

__all__ = [
    "AbstractAdjoint",
    "AbstractLinearAdjoint",
    "ImplicitAdjoint",
    "PhantomAdjoint",
    "UnrolledAdjoint",
    "available_adjoints",
    "register_adjoint",
    "resolve_adjoint",
    "root_vjp",
]


# ----------------------------------------------------------------------------------
# The pure implicit VJP
# ----------------------------------------------------------------------------------


def root_vjp(G: Callable, z_star: Any, leaves: list, ct: Any, *, solve: Callable):
    """Cotangents of `leaves` for the solution `z_star` of ``G(z, *leaves) = 0``.

    Parameters
    ----------
    G : callable
        The optimality function ``G(z, *leaves)``, zero at `z_star`; it is evaluated on
        autodiff tensors.
    z_star : array
        The solution (a raw array).
    leaves : list
        The inputs of `G` besides `z`; raw arrays enter as constant tensors.
    ct : array
        The cotangent of the solution, ``∂L/∂z*``, shaped like `z_star`.
    solve : callable
        ``solve(A, b) -> Result`` solves the adjoint system ``A(w) = b`` with
        ``A(w) = w ∂G/∂z`` (a callable on arrays shaped like `z_star`) and ``b = -ct``.

    Returns
    -------
    cotangents : list
        One cotangent per leaf, ``w ∂G/∂θ``.
    result : Result
        The adjoint solve's result (``w`` is ``result.x``).

    Notes
    -----
    The shape of jaxopt's ``root_vjp``: differentiating ``G(z*(θ), θ) = 0`` gives
    ``dz*/dθ = -(∂G/∂z)^{-1} ∂G/∂θ``, so ``∂L/∂θ = w ∂G/∂θ`` with ``w ∂G/∂z = -g``.
    """
    leaves = [_constant(a) for a in leaves]
    # One VJP of G in z at z*, reused for every product of the adjoint solve.
    _, vjp_z = vjp(lambda z: G(z, *leaves), z_star)

    def A(w):
        return untraced(vjp_z(w)[0])

    res = solve(A, -ct)
    if not leaves:
        return [], res
    # Parameter cotangents: w ∂G/∂θ, one more VJP in the leaves.
    _, vjp_p = vjp(lambda *values: G(Tensor(z_star), *values), *leaves)
    return list(vjp_p(res.x)), res


# ----------------------------------------------------------------------------------
# Adjoint objects
# ----------------------------------------------------------------------------------


class AbstractAdjoint(abc.ABC):
    """How gradients flow through a solve: the `backward` of :func:`~implicitnet.fixed_point`.

    An adjoint runs the solve itself (:meth:`apply`), so that it decides how the solution
    is differentiated: on raw arrays with an implicit VJP attached
    (:class:`AbstractLinearAdjoint`), or through the solver's iterations on tensors
    (:class:`UnrolledAdjoint`). Register a new one with :func:`register_adjoint` to make
    it available by name.
    """

    @abc.abstractmethod
    def apply(
        self, solve: Callable, kind: str, f: Callable, x0: Any, args: tuple, *, batch_axis: Any
    ) -> Result:
        """Solve the problem and return its :class:`~implicitnet.Result`.

        Parameters
        ----------
        solve : callable
            ``solve(f, x0, args, *, raw) -> Result``: the raw solve, every option of
            the entry point bound. With ``raw=True`` it runs on the backend namespace
            under any autodiff namespace the caller passed.
        kind : {"fixed_point", "root"}
            The problem: ``x = f(x, *args)`` or ``f(x, *args) = 0``.
        f : callable
            The user's map.
        x0 : array
            The starting point (possibly a Tensor).
        args : tuple
            Extra arguments of `f`: anything differentiated is here.
        batch_axis : int or None
            The entry point's `batch_axis` (validated by `solve`).
        """


class AbstractLinearAdjoint(AbstractAdjoint):
    """An adjoint that solves on raw arrays and differentiates by the implicit function theorem.

    The forward solve runs on raw arrays (no tape). When some array in `args` is being
    differentiated, the solution is returned as a Tensor whose VJP rule is
    :func:`root_vjp`, with :meth:`solve_adjoint` as its linear solve.
    """

    @abc.abstractmethod
    def solve_adjoint(self, A: Callable, b: Any, /, *, batch_axis: int | None, xp: Any):
        """Solve ``A w = b`` (``A`` a callable matvec) and return a :class:`Result`."""

    def apply(self, solve, kind, f, x0, args, *, batch_axis):
        leaves, treedef = tree_flatten(args)
        raw_args = tree_unflatten(treedef, [untraced(a) for a in leaves])
        res = solve(_guarded(f, kind, treedef), untraced(x0), raw_args, raw=True)
        if not any(is_tensor(a) and a.traced for a in leaves):
            return res
        spec = _Spec(kind, f, treedef, self, batch_axis, res)
        return dataclasses.replace(res, x=_implicit_solution(res.x, *leaves, spec=spec))


@dataclass(frozen=True, kw_only=True)
class ImplicitAdjoint(AbstractLinearAdjoint):
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
        check_tolerances(self.rtol, self.atol, self.maxiter, maxiter_optional=True)
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
class PhantomAdjoint(AbstractLinearAdjoint):
    """Approximate adjoint: a few damped steps of the adjoint fixed-point iteration.

    Starting from ``w_0 = b``, takes `steps` damped Richardson steps
    ``w <- w + damping * (b - A w)``. For a fixed point (``A w = w - w J``, ``b = g``
    up to a common sign) this is ``u <- (1 - damping) u + damping (g + u J)``, a
    truncated, damped Neumann series for ``u = g + u J``; ``steps=0`` gives the
    Jacobian-free gradient ``u = g`` of Fung et al. (2022). Cheaper than
    :class:`ImplicitAdjoint`, and exact only in the limit of many steps on a
    contraction. Meant for fixed-point problems.

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
        check_int(self.steps, "steps", minimum=0)
        check_real(self.damping, "damping", low=0.0, high=1.0, low_open=True)

    def solve_adjoint(self, A, b, /, *, batch_axis, xp):
        w = b
        for _ in range(self.steps):
            w = w + self.damping * (b - A(w))
        axis = None
        if batch_axis is not None:
            axis = tuple(i for i in range(b.ndim) if i != batch_axis % b.ndim)
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

    def apply(self, solve, kind, f, x0, args, *, batch_axis):
        leaves, treedef = tree_flatten(args)
        if not any(is_tensor(a) and a.traced for a in leaves):
            raw_args = tree_unflatten(treedef, [untraced(a) for a in leaves])
            return solve(_guarded(f, kind, treedef), untraced(x0), raw_args, raw=True)
        # Differentiate through the iterations: run the array-API solver on tensors
        # (raw arrays enter as constant tensors, so every operator dispatches to Tensor).
        args = tree_unflatten(treedef, [_constant(a) for a in leaves])
        try:
            return solve(f, _constant(x0), args, raw=False)
        except NotImplementedError as exc:
            msg = (
                "`backward='unrolled'` differentiates through the solver's iterations, so "
                f"every operation of `method` must be differentiable: {exc}. Use "
                "backward='implicit' (exact at the solution) or a method built from "
                "differentiable operations ('picard', 'anderson', 'broyden')."
            )
            raise NotImplementedError(msg) from exc


#: The adjoints by name: ``backward="implicit"`` etc.
ADJOINTS = Registry("backward", kind="adjoint", base=AbstractAdjoint)


def register_adjoint(name: str, adjoint: Any, *, overwrite: bool = False) -> None:
    """Register `adjoint` (a class or factory of :class:`AbstractAdjoint`) as ``backward=name``.

    Parameters
    ----------
    name : str
        The name.
    adjoint : callable
        Called with no arguments to give the adjoint object.
    overwrite : bool, default: False
        Allow replacing an existing registration.
    """
    ADJOINTS.register(name, adjoint, overwrite=overwrite)


def available_adjoints() -> list[str]:
    """The registered `backward` names, sorted."""
    return ADJOINTS.names()


register_adjoint("implicit", ImplicitAdjoint)
register_adjoint("phantom", PhantomAdjoint)
register_adjoint("unrolled", UnrolledAdjoint)


def resolve_adjoint(backward: Any, *, rtol: float, atol: float) -> AbstractAdjoint:
    """The adjoint object for `backward` (a registered name or an adjoint object)."""
    if isinstance(backward, AbstractAdjoint):
        return backward
    if isinstance(backward, str):
        entry = ADJOINTS.lookup(backward, also="or an adjoint object")
        if entry is ImplicitAdjoint:
            # The adjoint solve by name inherits the forward tolerances: a solution asked
            # for to rtol gets a gradient of comparable accuracy.
            # (Invalid tolerances are refused here, with the same message as the solver.)
            return ImplicitAdjoint(rtol=rtol, atol=atol)
        return entry()
    msg = (
        f"`backward` must be one of {', '.join(map(repr, ADJOINTS.names()))}, an "
        f"AbstractAdjoint or None, got {type(backward).__name__}"
    )
    raise TypeError(msg)


# ----------------------------------------------------------------------------------
# The implicit primitive
# ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Spec:
    """Static data of one differentiable solve (carried by the tape node)."""

    kind: str
    f: Callable
    treedef: Any
    adjoint: AbstractLinearAdjoint
    batch_axis: int | None
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
    ct = untraced(ct)
    bxp = namespace(ct)
    fwd = spec.forward
    if not fwd.success:
        # The implicit function theorem holds at a fixed point (a root); at an iterate
        # that is not one, the "gradient" below is that of no function of the inputs.
        _warn(
            f"differentiating through a forward solve that did not converge: "
            f"{fwd.status.value}, residual {_fmt(fwd.residual)} after {_fmt(fwd.nit)} "
            "iterations; the implicit gradient assumes a solution and is unreliable here. "
            "Check `result.success`, raise `maxiter` or loosen `rtol`, or make the map "
            "contractive."
        )
    f, treedef = spec.f, spec.treedef
    if spec.kind == "fixed_point":

        def G(z, *values):
            return z - f(z, *tree_unflatten(treedef, list(values)))
    else:

        def G(z, *values):
            return f(z, *tree_unflatten(treedef, list(values)))

    def solve(A, b):
        if spec.batch_axis is not None and b.ndim == 1:
            # One unknown per system: give the linear solver an explicit system axis.
            def A2(w):
                return bxp.reshape(A(bxp.reshape(w, (-1,))), (-1, 1))

            res = spec.adjoint.solve_adjoint(A2, bxp.reshape(b, (-1, 1)), batch_axis=0, xp=bxp)
            return dataclasses.replace(res, x=bxp.reshape(res.x, (-1,)))
        return spec.adjoint.solve_adjoint(A, b, batch_axis=spec.batch_axis, xp=bxp)

    # Only the leaves that need a gradient are differentiated; the others are constants.
    wanted = [i for i, need in enumerate(needs_grad[1:]) if need]

    consts = [_constant(a) for a in leaves]

    def G_wanted(z, *values):
        full = list(consts)
        for i, v in zip(wanted, values):
            full[i] = v
        return G(z, *full)

    cts_wanted, res = root_vjp(G_wanted, z_star, [leaves[i] for i in wanted], ct, solve=solve)
    spec.forward.stats["backward"] = {
        "nit": res.nit,
        "nmatvec": res.nfev,
        "residual": res.residual,
        "success": res.success,
        "status": res.status.value,
    }
    if not res.success:
        _warn(
            f"the adjoint (backward) solve did not converge: {res.status.value}, "
            f"residual {_fmt(res.residual)} after {_fmt(res.nit)} iterations; gradients "
            "are approximate. Loosen or change `backward`, or check that the map is "
            "contractive at the solution."
        )
    cts: list[Any] = [None] * (1 + len(leaves))
    for i, c in zip(wanted, cts_wanted):
        cts[1 + i] = c
    return tuple(cts)


def _guarded(f: Callable, kind: str, treedef: Any) -> Callable:
    """`f` refusing to return a traced Tensor on raw arrays (a captured traced value).

    A value being differentiated must reach `f` through `args`, where the adjoint sees
    it; one captured in a closure would silently lose its gradient. A non-callable `f`
    is returned as it is, for the solve to refuse with its own message.
    """
    if not callable(f):
        return f
    name = "f" if kind == "fixed_point" else "F"

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
            out = untraced(out)
        return out

    return checked


def _constant(a):
    """A raw array as a constant Tensor (anything else unchanged).

    Strict array libraries refuse ``raw_array op tensor``; wrapping every raw array that
    meets traced values makes each operator dispatch to the Tensor.
    """
    if is_array(a) and not is_tensor(a):
        return Tensor(a)
    return a


def _warn(message: str) -> None:
    # stacklevel 3: the caller of the VJP rule, as a warning from the rule itself gave.
    warnings.warn(message, ConvergenceWarning, stacklevel=3)


def _fmt(value) -> str:
    if isinstance(value, float | int):
        return f"{value:.3g}"
    try:
        return f"max {float(namespace(value).max(value)):.3g}"
    except Exception:  # pragma: no cover - display only
        return str(value)
