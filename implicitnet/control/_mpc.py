"""A differentiable model-predictive-control layer, solved as a root problem.

The plan of a finite-horizon optimal-control problem is the root of the gradient of its
shooting objective; :func:`implicitnet.root` solves it and differentiates it implicitly
with respect to everything in ``args`` (initial states, dynamics parameters, cost
weights). See :func:`mpc` for the mathematics and the choices made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._adjoint import UnrolledAdjoint, _constant, resolve_adjoint
from .._result import Result, Status
from .._tree import tree_flatten, tree_leaves, tree_map, tree_unflatten
from .._validate import check_int, check_real, check_tolerances
from .._xp import as_float_array, is_tensor, namespace, untraced, vector_norm
from ..autodiff import grad
from ..implicit import root as _root

__all__ = [
    "AbstractCost",
    "MPCResult",
    "QuadraticCost",
    "hessian_vector_product",
    "mpc",
    "shift_plan",
]


# ----------------------------------------------------------------------------------
# Costs
# ----------------------------------------------------------------------------------


class AbstractCost:
    """A stage-wise cost ``sum_t stage(x_t, u_t) + terminal(x_T)``.

    Subclass it (or pass any object with these two methods) for a user cost. Both
    methods receive the cost weights (any pytree of arrays, differentiable like the
    dynamics parameters) and return one value per row of the batch.
    """

    def stage(self, x, u, weights):
        """Cost of states ``x`` ``(batch, n)`` and controls ``u`` ``(batch, m)``: ``(batch,)``."""
        raise NotImplementedError

    def terminal(self, x, weights):
        """Cost of the final states ``x`` ``(batch, n)``: ``(batch,)``."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class QuadraticCost(AbstractCost):
    """A quadratic cost in features of the state, with diagonal weights.

    ::

        stage(x, u)  = sum_i q_i (phi(x)_i - goal_i)^2 + sum_j r_j u_j^2
        terminal(x)  = sum_i qf_i (phi(x)_i - goal_i)^2

    with the weights a dictionary of arrays ``{"q", "r", "goal"}`` and optionally
    ``"qf"`` (default: ``q``); every entry broadcasts against the features (or
    controls) and may be differentiated.

    Parameters
    ----------
    features : callable, optional
        ``phi(x)``, a map of states ``(batch, n)`` to features ``(batch, k)``. Default:
        the state itself. For the pendulum, :meth:`Pendulum.observe` (cosine and sine of
        the angle, angular velocity) with goal ``(1, 0, 0)`` gives
        ``2 (1 - cos theta) + ...``, a smooth form of Gymnasium's cost.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet.control import QuadraticCost
    >>> cost = QuadraticCost()
    >>> w = {"q": np.array([1.0, 0.1]), "r": np.array([0.01]), "goal": np.zeros(2)}
    >>> cost.stage(np.array([[1.0, 2.0]]), np.array([[3.0]]), w).tolist()
    [1.49]
    """

    features: Callable | None = None

    def _error(self, x, weights):
        phi = x if self.features is None else self.features(x)
        return phi - weights["goal"]

    def stage(self, x, u, weights):
        xp = namespace(x, u)
        e = self._error(x, weights)
        return xp.sum(weights["q"] * e**2, axis=-1) + xp.sum(weights["r"] * u**2, axis=-1)

    def terminal(self, x, weights):
        xp = namespace(x)
        e = self._error(x, weights)
        qf = weights["qf"] if "qf" in weights else weights["q"]
        return xp.sum(qf * e**2, axis=-1)


# ----------------------------------------------------------------------------------
# The shooting objective and its derivatives
# ----------------------------------------------------------------------------------


_SQUASH_LIMIT = math.tanh(4.0)


@dataclass(frozen=True, eq=False)
class _Shooting:
    """The shooting objective of one MPC problem (static data only)."""

    dynamics: Callable
    cost: Any
    horizon: int
    lower: Any  # (m,) raw arrays
    upper: Any
    regularization: float
    batched_params: bool = False

    @property
    def m(self) -> int:
        return self.lower.shape[0]

    def controls(self, v, *, xp):
        # Box limits by a smooth squashing: u = mid + half * tanh(v), v unconstrained.
        mid = (self.lower + self.upper) / 2
        half = (self.upper - self.lower) / 2
        V = xp.reshape(v, (v.shape[0], self.horizon, self.m))
        return xp.tanh(V) * half + mid

    def unsquash(self, u, *, xp):
        """The plan ``v`` of controls ``u`` (clipped inside the box first)."""
        mid = (self.lower + self.upper) / 2
        half = (self.upper - self.lower) / 2
        # Clipped to |v| <= 4: a control at its limit would give |v| of 15 or more, where
        # tanh is flat to rounding and no step in v makes progress.
        s = xp.clip((u - mid) / half, -_SQUASH_LIMIT, _SQUASH_LIMIT)
        v = 0.5 * (xp.log1p(s) - xp.log1p(-s))  # atanh, from functions every library has
        return xp.reshape(v, (u.shape[0], self.horizon * self.m))

    def rollout(self, v, x0, params, weights, *, xp):
        """States ``(batch, T+1, n)``, controls ``(batch, T, m)`` and costs ``(batch,)``."""
        if is_tensor(v):
            # Strict array libraries refuse `raw_array op tensor`: constants enter as
            # constant tensors, so that every operator dispatches to the Tensor.
            leaves, td = tree_flatten((x0, params, weights))
            x0, params, weights = tree_unflatten(td, [_constant(a) for a in leaves])
        U = self.controls(v, xp=xp)
        x = x0
        states = [x0]
        total = self.regularization * xp.sum(v**2, axis=-1)
        for t in range(self.horizon):
            u = U[:, t, :]
            total = total + self.cost.stage(x, u, weights)
            x = self.dynamics(x, u, params)
            states.append(x)
        total = total + self.cost.terminal(x, weights)
        return xp.stack(states, axis=1), U, total

    def costs(self, v, x0, params, weights):
        xp = namespace(v, x0, *tree_leaves((params, weights)))
        return self.rollout(v, x0, params, weights, xp=xp)[2]

    def total(self, v, x0, params, weights):
        # The systems of a batch are independent, so the gradient of the sum is the
        # per-system gradient.
        xp = namespace(v, x0, *tree_leaves((params, weights)))
        return xp.sum(self.costs(v, x0, params, weights))

    def gradient(self, v, x0, params, weights):
        """``F(v) = dJ/dv``, the optimality condition (a root problem in ``v``)."""
        return grad(self.total)(v, x0, params, weights)

    def scaled_gradient(self, v, x0, params, weights, scale):
        """``F(v)`` with row ``i`` multiplied by ``scale[i]``."""
        return self.gradient(v, x0, params, weights) * scale[:, None]

    def gradient_and_hessian(self, v, x0, params, weights, *, xp):
        """The gradient ``(batch, N)`` and Hessians ``(batch, N, N)``, in one evaluation.

        Forward differences of the gradient, ``H e_j ~ (F(v + h e_j) - F(v)) / h`` with
        ``h = sqrt(eps) * max(1, ||v||)`` per system, every probe of every system and the
        point itself stacked into one batch of ``batch * (N + 1)`` rows: one gradient
        evaluation per Newton pass, where the systems are many small ones. (The backward
        pass uses exact Hessian–vector products instead, :func:`hessian_vector_product`.)
        """
        B, N = v.shape
        h = math.sqrt(float(xp.finfo(v.dtype).eps)) * xp.maximum(
            vector_norm(v, axis=-1, xp=xp), xp.asarray(1.0, dtype=v.dtype)
        )
        probes = xp.concat(
            [xp.zeros((1, N), dtype=v.dtype), xp.eye(N, dtype=v.dtype)], axis=0
        )  # (N + 1, N): the point, then e_1 .. e_N
        vr = v[:, None, :] + h[:, None, None] * probes[None, :, :]
        vr = xp.reshape(vr, (B * (N + 1), N))
        x0r, paramsr = self.repeat_rows((x0, params), N + 1, xp=xp)
        G = xp.reshape(self.gradient(vr, x0r, paramsr, weights), (B, N + 1, N))
        g = G[:, 0, :]
        H = (G[:, 1:, :] - g[:, None, :]) / h[:, None, None]
        return g, (H + xp.matrix_transpose(H)) / 2

    def repeat_rows(self, tree, k, *, xp):
        """Repeat each system's rows `k` times (``x0`` and batched ``params``)."""
        x0, params = tree

        def rep(a):
            shape = tuple(a.shape)
            b = xp.broadcast_to(a[:, None, ...], (shape[0], k, *shape[1:]))
            return xp.reshape(b, (shape[0] * k, *shape[1:]))

        if self.batched_params:
            leaves, td = tree_flatten(params)
            params = tree_unflatten(td, [rep(a) for a in leaves])
        return rep(x0), params


def hessian_vector_product(fun: Callable, x, v, *args):
    """The product ``H v`` of the Hessian of a scalar ``fun(x, *args)`` in ``x``.

    Computed as the gradient of ``<grad fun(x), v>`` (reverse over reverse through
    implicitnet's autodiff), exact to rounding: no finite-difference step.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args)`` returning a scalar, written with the array API.
    x : array
        The point.
    v : array
        The direction, shaped like `x`.
    *args
        Further arguments of `fun` (held fixed; they may be traced by an outer
        differentiation).

    Returns
    -------
    array
        ``H v``, shaped like `x`.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet.control import hessian_vector_product
    >>> import implicitnet as inet
    >>> f = lambda x: inet.namespace(x).sum(x[0] ** 2 * x[1])
    >>> hessian_vector_product(f, np.array([1.0, 2.0]), np.array([1.0, 0.0])).tolist()
    [4.0, 2.0]
    """

    def directional(y, d, *a):
        xp = namespace(y, d)
        return xp.sum(grad(fun)(y, *a) * d)

    return grad(directional)(x, v, *args)


# ----------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MPCResult:
    """The solution of :func:`mpc`.

    Attributes
    ----------
    u : array
        The optimal controls, ``(batch, horizon, m)`` (``(horizon, m)`` for one initial
        state); differentiable with respect to the initial states, `params` and
        `weights` when they are traced.
    x : array
        The predicted states, ``(batch, horizon + 1, n)``, starting at `x0`.
    cost : array
        The objective at the solution, ``(batch,)``.
    success : bool
        Whether every system's optimality condition holds to the tolerance.
    status : Status
        Why the solve stopped (that of `result`).
    message : str
        A description of the outcome.
    nit : int
        Iterations: Newton passes plus iterations of the root solve.
    gradient_norm : array
        ``||dJ/dv||`` at the solution, per system (raw array).
    result : Result
        The :func:`implicitnet.root` result on the plan ``v`` (``(batch, horizon * m)``).
    """

    u: Any
    x: Any
    cost: Any
    success: bool
    status: Status
    message: str
    nit: int
    gradient_norm: Any
    result: Result


def _limits(u_lower, u_upper, *, dtype, xp):
    lo = as_float_array(u_lower, xp=xp, dtype=dtype)
    hi = as_float_array(u_upper, xp=xp, dtype=dtype)
    lo, hi = xp.reshape(lo, (-1,)), xp.reshape(hi, (-1,))
    if lo.shape[0] == 1 and hi.shape[0] > 1:
        lo = xp.broadcast_to(lo, hi.shape)
    if hi.shape[0] == 1 and lo.shape[0] > 1:
        hi = xp.broadcast_to(hi, lo.shape)
    if lo.shape != hi.shape:
        msg = (
            "`u_lower` and `u_upper` must have one entry per control, "
            f"got {lo.shape} and {hi.shape}"
        )
        raise ValueError(msg)
    if not bool(xp.all(xp.isfinite(lo))) or not bool(xp.all(xp.isfinite(hi))):
        msg = "`u_lower` and `u_upper` must be finite"
        raise ValueError(msg)
    if not bool(xp.all(lo < hi)):
        msg = "`u_lower` must be strictly below `u_upper` in every control"
        raise ValueError(msg)
    return lo, hi


def _newton(problem: _Shooting, v, x0, params, weights, threshold, *, steps, xp):
    """Saddle-free damped Newton on the shooting objective (raw arrays, no tape).

    Each pass: the per-system gradient ``g`` and Hessian ``H = Q diag(lam) Q^T``
    (one batched evaluation, :meth:`_Shooting.gradient_and_hessian`); the step
    ``d = -Q diag(1/max(|lam|, delta)) Q^T g``, a descent direction even where ``H``
    is indefinite, so that the iterates go to minima and not to saddles of the
    non-convex objective, also tried plus and minus the eigenvector of the most
    negative eigenvalue; and the best of these directions and step lengths
    ``t in {1, 1/2, ..., 1/32, 0}`` by the objective, every trial of every system in
    one batched rollout. Returns
    the plan and the number of passes made.
    """
    B, N = v.shape
    ts = xp.asarray([1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0], dtype=v.dtype)
    K = ts.shape[0]
    x0k, paramsk = problem.repeat_rows((x0, params), 3 * K, xp=xp)
    delta_min = xp.asarray(max(problem.regularization, 1e-12), dtype=v.dtype)
    nit = 0
    for _ in range(steps):
        g, H = problem.gradient_and_hessian(v, x0, params, weights, xp=xp)
        done = vector_norm(g, axis=-1, xp=xp) <= threshold
        if bool(xp.all(done)):
            break
        lam, Q = xp.linalg.eigh(H)  # ascending eigenvalues
        scale = xp.max(xp.abs(lam), axis=-1, keepdims=True)
        lam_abs = xp.maximum(xp.abs(lam), xp.maximum(scale * 1e-8, delta_min))
        coef = xp.linalg.vecdot(Q, g[:, :, None], axis=-2) / lam_abs  # Q^T g / |lam|
        d = -xp.sum(Q * coef[:, None, :], axis=-1)
        # Where the curvature is negative, also try moving along the most negative
        # eigenvector, both ways: a symmetric start (a pendulum hanging still, controls
        # at zero) is a stationary point that a gradient-based step never leaves.
        neg = xp.astype(lam[:, 0] < -xp.maximum(scale[:, 0] * 1e-8, delta_min), v.dtype)
        q = Q[:, :, 0] * neg[:, None]
        dirs = xp.stack([d, d + q, d - q], axis=1)  # (B, 3, N)
        trial = v[:, None, None, :] + ts[None, None, :, None] * dirs[:, :, None, :]
        J = problem.costs(xp.reshape(trial, (B * 3 * K, N)), x0k, paramsk, weights)
        J = xp.reshape(J, (B, 3 * K))
        J = xp.where(xp.isfinite(J), J, xp.asarray(math.inf, dtype=v.dtype))
        best = xp.argmin(J, axis=-1)
        t = xp.take(ts, best % K, axis=0)
        t = xp.where(done, xp.zeros_like(t), t)
        which = best // K  # 0: Newton, 1: +q, 2: -q
        sign = xp.astype(which == 1, v.dtype) - xp.astype(which == 2, v.dtype)
        v = v + t[:, None] * (d + sign[:, None] * q)
        nit += 1
    return v, nit


def mpc(
    dynamics: Callable,
    cost: Any,
    x0: Any,
    params: Any,
    weights: Any,
    *,
    horizon: int,
    u_lower: Any,
    u_upper: Any,
    u_init: Any = None,
    method: Any = "newton_krylov",
    backward: Any = "implicit",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    maxiter: int = 50,
    newton_steps: int = 30,
    regularization: float = 1e-4,
    batched_params: bool = False,
    xp: Any = None,
) -> MPCResult:
    """Solve a finite-horizon optimal-control problem; differentiable in its inputs.

    Finds controls ``u_0 .. u_{T-1}`` within ``[u_lower, u_upper]`` that minimise ::

        J = sum_{t<T} cost.stage(x_t, u_t; weights) + cost.terminal(x_T; weights)
            + regularization * ||v||^2,
        x_{t+1} = dynamics(x_t, u_t, params),   x_0 given,

    for every initial state of a batch, and returns the plan and its predicted
    trajectory. The controls are differentiable with respect to `x0`, `params` and
    `weights` (through :func:`implicitnet.grad` and friends) by the implicit function
    theorem.

    Parameters
    ----------
    dynamics : callable
        ``dynamics(x, u, params)``, next states ``(batch, n)`` of states ``(batch, n)``
        and controls ``(batch, m)``, written with the array API (for example
        :class:`Pendulum` or :class:`CartPole`).
    cost : AbstractCost
        The cost, with ``stage(x, u, weights)`` and ``terminal(x, weights)`` (for
        example :class:`QuadraticCost`).
    x0 : array
        Initial states, ``(batch, n)``, or one state ``(n,)``.
    params : pytree of arrays
        Parameters of `dynamics` (shared by the batch, unless `batched_params`).
    weights : pytree of arrays
        Weights of `cost` (shared by the batch).
    horizon : int
        Number of steps ``T``.
    u_lower, u_upper : float or array
        Box limits of the controls, one entry per control (their length is ``m``).
    u_init : array, optional
        Initial guess of the controls, ``(batch, horizon, m)`` (or ``(horizon, m)``),
        e.g. the previous plan shifted by one step (:func:`shift_plan`): a warm start.
        Default: the middle of the box.
    method : str or solver, default: "newton_krylov"
        Method of the :func:`implicitnet.root` solve of ``dJ/dv = 0``.
    backward : {"implicit", "unrolled", ...} or adjoint object, default: "implicit"
        How gradients flow, as in :func:`implicitnet.root`. By name, ``"implicit"``
        solves the adjoint (Hessian) system by GMRES to relative accuracy
        ``max(rtol, 1e-10)``. ``"unrolled"`` differentiates through the iterations of
        `method` and skips the Newton passes (``newton_steps`` is ignored), so the
        whole solve is on the tape: a reference for tests, costly in memory.
    rtol, atol : float
        System ``i`` has converged when
        ``||dJ_i/dv|| <= atol + rtol * ||dJ_i/dv (v_init)||``.
    maxiter : int, default: 50
        Iteration limit of the root solve.
    newton_steps : int, default: 30
        Largest number of damped Newton passes made before the root solve.
    regularization : float, default: 1e-4
        Weight of ``||v||^2`` on the unconstrained plan; keeps the Hessian positive
        where controls saturate.
    batched_params : bool, default: False
        Whether every leaf of `params` carries the batch along its axis 0 (one model
        per initial state, e.g. several learned models evaluated in one solve).
    xp : namespace, optional
        Namespace of `x0`. Default: inferred.

    Returns
    -------
    MPCResult
        Controls `u`, predicted states `x`, cost, success and the root solve's result.

    Raises
    ------
    ValueError
        If `horizon`, `maxiter` or `newton_steps` are not valid integers, `x0` is not
        1-D or 2-D, `u_init` has the wrong shape, or the limits are not ordered.
    TypeError
        If `dynamics` is not callable.

    See Also
    --------
    implicitnet.root : The root solve underneath, and its backward modes.
    shift_plan : Warm starts from one time step to the next.

    Notes
    -----
    **Formulation.** Box limits are a smooth reparameterisation:
    ``u = (l + h)/2 + (h - l)/2 * tanh(v)`` with ``v`` unconstrained, so every ``v`` is
    feasible and the limits hold exactly. The states are eliminated by the dynamics
    (single shooting), leaving an unconstrained objective ``J(v; x0, params,
    weights)`` whose optimality condition ``F(v) = dJ/dv = 0`` is a root problem. Its
    gradient is computed by implicitnet's reverse-mode autodiff through the rollout.

    **Solve.** Why a root of ``dJ/dv`` rather than an iLQR-style fixed point: the
    implicit function theorem applied to ``F`` needs only products with the Hessian of
    ``J`` and mixed second derivatives, which implicitnet's autodiff gives exactly
    (reverse over reverse), for any dynamics and cost written with the array API; an
    iLQR map would need the dynamics' Jacobians as explicit matrices and a backward
    pass through the Riccati recursion. The forward solve has two stages: first at
    most `newton_steps` saddle-free damped Newton passes on raw arrays (batched
    Hessians from forward differences of the gradient, all probes in one evaluation,
    eigen-decomposed so that the step descends even where ``J`` is not convex; a step
    length chosen by the objective), because Newton–Krylov alone on ``dJ/dv`` finds
    any stationary point, saddles and maxima included, and spends many gradient
    evaluations per step on a problem this small; then :func:`implicitnet.root` with `method`
    (Newton–Krylov by default) from that point, which confirms the tolerance (zero
    iterations when the passes have converged), finishes the job otherwise, and
    carries the implicit gradient.

    **Gradient.** For a cotangent ``g`` of ``v*``, the backward pass solves
    ``H w = -g`` (``H = d^2J/dv^2`` at ``v*``, Hessian–vector products by autodiff,
    GMRES) and returns ``w d^2J/(dv d theta)`` for ``theta`` each of `x0`, `params`
    and `weights` (Amos et al. 2018 differentiate the KKT conditions of the box-
    constrained QP at the fixed point of their solver; here the box is in the
    parameterisation, so the conditions are unconstrained).

    **Batching.** Each initial state is its own system with its own convergence:
    `x0` is batched along axis 0 in the root solve, so converged systems leave the
    active set.

    References
    ----------
    B. Amos, I. D. J. Rodriguez, J. Sacks, B. Boots and J. Z. Kolter,
    "Differentiable MPC for end-to-end planning and control", NeurIPS (2018).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet.control import Pendulum, QuadraticCost, mpc
    >>> model = Pendulum()
    >>> cost = QuadraticCost(features=model.observe)
    >>> w = {"q": np.array([1.0, 1.0, 0.1]), "r": np.array([0.001]),
    ...      "goal": np.array([1.0, 0.0, 0.0])}
    >>> sol = mpc(model, cost, np.array([0.5, 0.0]), model.default_params(xp=np), w,
    ...           horizon=10, u_lower=-2.0, u_upper=2.0)
    >>> bool(sol.success), sol.u.shape, bool(sol.u[0, 0] < 0)
    (True, (10, 1), True)
    """
    if not callable(dynamics):
        msg = f"`dynamics` must be callable, got {type(dynamics).__name__}"
        raise TypeError(msg)
    check_int(horizon, "horizon", minimum=1)
    check_tolerances(rtol, atol, maxiter)
    check_int(newton_steps, "newton_steps", minimum=0)
    check_real(regularization, "regularization", low=0.0)
    leaves = tree_leaves((params, weights))
    xp = namespace(x0, *leaves) if xp is None else xp
    bxp = namespace(untraced(x0))  # the backend namespace (no tape)
    x0 = as_float_array(x0, xp=xp)
    single = x0.ndim == 1
    if x0.ndim not in (1, 2):
        msg = f"`x0` must be one state (n,) or a batch (batch, n), got shape {x0.shape}"
        raise ValueError(msg)
    if single:
        x0 = xp.reshape(x0, (1, -1))
    B = x0.shape[0]
    dtype = x0.dtype
    lo, hi = _limits(u_lower, u_upper, dtype=dtype, xp=bxp)
    if not isinstance(batched_params, bool):
        msg = f"`batched_params` must be True or False, got {batched_params!r}"
        raise TypeError(msg)
    if batched_params:
        for a in tree_leaves(params):
            if a.ndim == 0 or a.shape[0] != B:
                msg = (
                    "with `batched_params=True` every leaf of `params` must have the batch "
                    f"({B}) along axis 0, got shape {tuple(a.shape)}"
                )
                raise ValueError(msg)
    problem = _Shooting(
        dynamics, cost, horizon, lo, hi, float(regularization), batched_params=batched_params
    )
    m = lo.shape[0]
    N = horizon * m

    if u_init is None:
        v = bxp.zeros((B, N), dtype=dtype)
    else:
        u0 = as_float_array(untraced(u_init), xp=bxp, dtype=dtype)
        want = (horizon, m) if single else (B, horizon, m)
        if tuple(u0.shape) != want:
            msg = f"`u_init` must have shape {want}, got {tuple(u0.shape)}"
            raise ValueError(msg)
        v = problem.unsquash(bxp.reshape(u0, (B, horizon, m)), xp=bxp)

    raw_x0 = untraced(x0)
    raw_params = _treeuntraced(params)
    raw_weights = _treeuntraced(weights)
    g0 = problem.gradient(v, raw_x0, raw_params, raw_weights)
    threshold = atol + rtol * vector_norm(g0, axis=-1, xp=bxp)
    adjoint = _adjoint(backward, rtol)
    unrolled = isinstance(adjoint, UnrolledAdjoint)
    nit = 0
    if not unrolled and newton_steps > 0:
        v, nit = _newton(
            problem, v, raw_x0, raw_params, raw_weights, threshold, steps=newton_steps, xp=bxp
        )
    # The root solve's own test is relative to its starting residual, which here is
    # already the Newton passes' output. Its residual is the gradient divided by each
    # system's threshold, so that `atol=1` is every system's own test. (A constant
    # per-system scaling changes neither the root nor its implicit gradient.)
    res = _root(
        problem.scaled_gradient,
        v,
        args=(x0, params, weights, 1.0 / threshold),
        method=method,
        rtol=0.0,
        atol=1.0,
        maxiter=maxiter,
        backward=adjoint,
        batch_axis=0,
        arg_batch_axes=(0, 0 if batched_params else None, None, 0),
    )
    states, U, J = problem.rollout(res.x, x0, params, weights, xp=namespace(res.x, x0, *leaves))
    if single:
        states, U, J = states[0, ...], U[0, ...], J[0]
    success = bool(res.success)
    message = res.message if not success else "The optimality conditions hold to the tolerance."
    return MPCResult(
        u=U,
        x=states,
        cost=J,
        success=success,
        status=res.status,
        message=message,
        nit=nit + int(res.nit if isinstance(res.nit, int) else bxp.max(res.nit)),
        gradient_norm=bxp.asarray(res.residual, dtype=dtype) * threshold,
        result=res,
    )


def _treeuntraced(tree):
    return tree_map(untraced, tree)


def _adjoint(backward, rtol):
    # By name, the adjoint solve gets a relative tolerance of its own: the root solve
    # runs with an absolute one in gradient units, which means nothing to the adjoint.
    return resolve_adjoint(backward, rtol=max(rtol, 1e-10), atol=0.0)


def shift_plan(u, /):
    """Shift a plan one step forward in time, repeating its last control: a warm start.

    Parameters
    ----------
    u : array
        Controls ``(..., horizon, m)`` of the last solve.

    Returns
    -------
    array
        ``(u_1, ..., u_{T-1}, u_{T-1})``, the guess for the next time step's solve.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet.control import shift_plan
    >>> shift_plan(np.array([[1.0], [2.0], [3.0]]))[:, 0].tolist()
    [2.0, 3.0, 3.0]
    """
    xp = namespace(u)
    return xp.concat([u[..., 1:, :], u[..., -1:, :]], axis=-2)
