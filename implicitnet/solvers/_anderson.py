"""Anderson acceleration (type II), batched and safeguarded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .._validate import check_int, check_real
from .._xp import device as _dev
from .._xp import row_norms, set_index, small_solve
from ._base import (
    AbstractIterativeSolver,
    Step,
    initial_beta,
    point_value,
)

__all__ = ["Anderson"]


class _AndersonState(NamedTuple):
    Y: Any  # (batch, m, n) ring buffer of x_j + beta g_j (the points that are mixed)
    G: Any  # (batch, m, n) ring buffer of the residuals g_j
    H: Any  # (batch, m, m) Gram matrix G G^T of the buffer
    S: Any  # (batch, m) 1 / ||g_j|| per slot (1 where g_j = 0): the diagonal scaling
    valid: Any  # (batch, m) which slots hold usable history
    last: Any  # (batch, m) one-hot: slot of the last accepted iterate
    r_prev: Any  # (batch,) its residual norm (inf before the first step)
    r: Any  # (batch,) residual norm of the current iterate (computed by the last step)
    eye: Any  # (batch, m, m) boolean identity: constant, row j is slot j's one-hot mask
    lam_eye: Any  # (batch, m, m) lambda times the identity, in the floating dtype
    ones: Any  # (batch, m) ones in the floating dtype (sums as products: fewer calls)
    beta: Any  # mixing: a float, or (batch,) (automatic, root problem)
    k: int  # steps taken (ring position), shared by the batch


@dataclass(frozen=True, kw_only=True)
class Anderson(AbstractIterativeSolver):
    """Anderson acceleration (type II) of the fixed-point iteration.

    Keeps the last `m` iterates ``x_j`` and residuals ``g_j = g(x_j)`` (``g(x) =
    f(x) - x`` for a fixed-point problem, ``F(x)`` for a root problem) and moves to

        x_next = sum_j alpha_j (x_j + beta * g_j),

    with the coefficients ``alpha`` minimising ``||sum_j alpha_j g_j||`` subject to
    ``sum_j alpha_j = 1``, per system. With ``m = 1`` this is Picard's iteration with
    relaxation `beta`.

    Parameters
    ----------
    m : int, default: 6
        Memory: the number of iterates mixed (the current one and ``m - 1`` before it;
        SciPy's ``M`` is ``m - 1``).
    beta : float, optional
        Mixing (relaxation) parameter: the model Jacobian of the residual is
        ``-I / beta``. Default: 1 for a fixed-point problem; for a root problem, per
        system, SciPy's ``0.5 * max(||x0||, 1) / ||F(x0)||`` (a first step about half the
        size of `x0` whatever the scale of ``F``), or, when one directional difference
        (one extra evaluation) shows that this step would go clearly uphill (cosine
        between ``F0`` and ``J F0`` above 0.1), the step that minimises the linearised
        residual along ``F0``, ``-(F0 . J F0) / ||J F0||^2``.
    regularization : float, default: 1e-8
        Tikhonov regularisation ``lambda`` of the least-squares problem, relative to
        the scale of the residuals (the Gram matrix is scaled to unit diagonal before
        ``lambda`` is added); never below ``100 * eps`` of the dtype.
    safeguard : float, default: 10.0
        A step whose residual norm is more than `safeguard` times the previous one is
        rejected: the history is restarted and a plain step is taken from the previous
        iterate instead.
    max_coefficient : float, default: 1e4
        When ``sum_j |alpha_j|`` exceeds this (or is not finite), the least-squares
        problem is deemed ill-conditioned: the history is restarted and a plain step
        is taken.
    stagnation_window : int, optional
        See :class:`AbstractIterativeSolver`. Default (by the problem's kind): 50 for a
        fixed-point problem, 300 for a root problem.
    divergence_factor : float, optional
        See :class:`AbstractIterativeSolver`. Default (by the problem's kind): ``1e4``
        for a fixed-point problem, ``1e8`` for a root problem.

    Notes
    -----
    The stopping rules depend on the problem's kind. On a fixed-point problem (a DEQ
    cell, usually a contraction) a residual that stops falling or rises steeply means
    failure. On a general root problem the residual of Anderson's iteration (which has
    no line search) is not monotone: on Moré, Garbow and Hillstrom's trigonometric
    function (n = 10) it stays above its best for more than 50 steps before it
    converges, and on other systems it rises by more than ``1e4`` first. A root
    problem therefore gets a longer window and a larger factor.

    With ``G = [g_1, ..., g_m]`` (one column per remembered residual) and ``H = G^T G``,
    the coefficients solve the bordered (KKT) system ::

        [0  1^T] [nu   ]   [1]
        [1  H  ] [alpha] = [0]

    whose solution is ``alpha = H^-1 1 / (1^T H^-1 1)``. After a symmetric diagonal
    scaling ``S = diag(H)^(-1/2)`` that gives ``C = S H S`` a unit diagonal (an exact
    change of variables ``alpha = S a``) and the regularisation ``C + lambda I``
    (symmetric positive definite), this is one batched ``linalg.solve`` of
    ``(C + lambda I) y = S 1`` for all systems at once, then
    ``alpha = S y / (1^T S y)``. Unused slots of the ring buffer get ``S = 0``: their
    rows and columns of ``C`` vanish but for ``lambda`` on the diagonal, so their
    coefficient is exactly zero. ``S`` is kept per slot (``1 / ||g_j||``, known when the
    slot is written), so the small system costs a handful of ``(m, m)`` operations and
    the solve. The buffers hold ``x_j + beta g_j``
    (the points that are mixed) and ``g_j``; one slot of each and one row and column
    of ``H`` are rewritten per step (in place on raw arrays, out of place on autodiff
    tensors), so a step costs two products with the ``(m, n)`` buffers besides one
    function evaluation; the safeguards cost no evaluation (a rejected step is detected
    at the next one) and, in the common case, almost no work: the coefficients are
    computed as if every system accepted its step, and one host check per step
    confirms that every step was accepted and every least-squares problem well
    conditioned; only otherwise are the per-system rules applied (and the small
    systems solved again). On linear problems with ``m > n`` the method is equivalent to GMRES
    [2]_.

    References
    ----------
    .. [1] D. G. Anderson, "Iterative procedures for nonlinear integral equations",
       J. ACM 12 (1965).
    .. [2] H. F. Walker and P. Ni, "Anderson acceleration for fixed-point iterations",
       SIAM J. Numer. Anal. 49 (2011).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> res = inet.solvers.fixed_point(np.cos, np.array([1.0]), method=inet.Anderson(m=3))
    >>> round(float(res.x[0]), 6), res.nit < 15
    (0.739085, True)
    """

    stagnation_window: int | None = None
    divergence_factor: float | None = None
    m: int = 6
    beta: float | None = None
    regularization: float = 1e-8
    safeguard: float = 10.0
    max_coefficient: float = 1e4

    def __post_init__(self):
        super().__post_init__()
        check_int(self.m, "m", minimum=1)
        if self.beta is not None:
            check_real(self.beta, "beta", low=0.0, low_open=True)
        check_real(self.regularization, "regularization", low=0.0)
        check_real(self.safeguard, "safeguard", low=1.0, low_open=True)
        check_real(self.max_coefficient, "max_coefficient", low=1.0, low_open=True)

    #: Root problems: a longer stagnation window and a larger divergence factor.
    DEFAULT_STOPPING: ClassVar[dict] = {"fixed_point": (50, 1e4), "root": (300, 1e8)}

    def init(self, g, x, gx, *, xp):
        rows, n = x.shape
        m = self.m
        dtype = x.dtype
        dev = _dev(x)
        eye = xp.eye(m, dtype=xp.bool, device=dev)
        lam = max(self.regularization, 100.0 * float(xp.finfo(dtype).eps))
        lam_eye = lam * xp.eye(m, dtype=dtype, device=dev)
        return _AndersonState(
            Y=xp.zeros((rows, m, n), dtype=dtype, device=dev),
            G=xp.zeros((rows, m, n), dtype=dtype, device=dev),
            H=xp.zeros((rows, m, m), dtype=dtype, device=dev),
            S=xp.zeros((rows, m), dtype=dtype, device=dev),
            valid=xp.zeros((rows, m), dtype=xp.bool, device=dev),
            last=xp.broadcast_to(eye[None, 0, :], (rows, m)),
            r_prev=xp.full((rows,), float("inf"), dtype=dtype, device=dev),
            r=row_norms(gx, xp=xp),
            # Constants with a leading row axis (broadcast views) so that the driver's
            # row selection (`take`, `where`) applies to them like to the other leaves.
            eye=xp.broadcast_to(eye[None, :, :], (rows, m, m)),
            lam_eye=xp.broadcast_to(lam_eye[None, :, :], (rows, m, m)),
            ones=xp.ones((rows, m), dtype=dtype, device=dev),
            beta=initial_beta(self.beta, g, x, gx, xp=xp),
            k=0,
        )

    def step(self, g, x, gx, state, *, xp):
        m = self.m
        every = slice(None)
        r = state.r  # ||g(x)||, computed by the previous step

        # (x, g(x)) goes to ring slot p; row and column p of the Gram matrix are the
        # inner products of g(x) with the buffer.
        p = state.k % m
        beta = state.beta
        unit = isinstance(beta, float) and beta == 1.0
        if unit:
            point = point_value(g, x, gx, xp=xp)
        else:
            point = x + (beta if isinstance(beta, float) else beta[:, None]) * gx
        Y = set_index(state.Y, (every, p), point, xp=xp)
        G = set_index(state.G, (every, p), gx, xp=xp)

        # Safeguard: a residual much worse than that of the last accepted iterate (or
        # not finite) rejects the step that led here: only the last accepted slot
        # stays valid, so the next iterate is a plain step from there.
        accept = r <= self.safeguard * state.r_prev
        onehot = state.eye[:, p, :]  # (rows, m): slot p

        if m == 1:
            r_prev, last, valid = _safeguard(accept, r, onehot, state, xp=xp)
            # A fresh array: the iterate must not alias the value `f` returned.
            x_new = x + gx if unit else point
            H, S = state.H, state.S
        else:
            h = xp.vecdot(G, gx[:, None, :])  # (rows, m): <g_j, g(x)>
            H = set_index(state.H, (every, p), h, xp=xp)
            H = set_index(H, (every, every, p), h, xp=xp)
            S = set_index(state.S, (every, p), 1.0 / xp.where(r > 0, r, 1.0), xp=xp)
            # The common case first: every system accepted its step (slot p joins its
            # history) and every least-squares problem is well conditioned; one host
            # check confirms it. Otherwise the safeguards decide, per system.
            valid = xp.logical_or(state.valid, onehot)
            alpha = _coefficients(H, S, valid, state.lam_eye, state.ones, xp=xp)
            ok = self._well_conditioned(alpha, state.ones, xp=xp)
            if bool(xp.all(xp.logical_and(accept, ok))):
                r_prev, last = r, onehot
            else:
                r_prev, last, valid = _safeguard(accept, r, onehot, state, xp=xp)
                alpha = _coefficients(H, S, valid, state.lam_eye, state.ones, xp=xp)
                # Ill-conditioned least squares: restart the history, take a plain step.
                ok = self._well_conditioned(alpha, state.ones, xp=xp)[:, None]
                valid = xp.where(ok, valid, last)
                alpha = xp.where(ok, alpha, xp.astype(last, alpha.dtype))
            # x_next = sum_j alpha_j (x_j + beta g_j)
            x_new = xp.matmul(alpha[:, None, :], Y)[:, 0, :]
        g_new = g(x_new)
        r_new = row_norms(g_new, xp=xp)
        new_state = _AndersonState(
            Y,
            G,
            H,
            S,
            valid,
            last,
            r_prev,
            r_new,
            state.eye,
            state.lam_eye,
            state.ones,
            beta,
            state.k + 1,
        )
        return Step(x_new, g_new, new_state, r_new)

    def _well_conditioned(self, alpha, ones, *, xp):
        """Per system: ``sum_j |alpha_j| <= max_coefficient`` (False when not finite)."""
        return xp.vecdot(xp.abs(alpha), ones) <= self.max_coefficient


def _safeguard(accept, r, onehot, state, *, xp):
    """``(r_prev, last, valid)`` after the acceptance test, per system.

    Accepted: slot p (`onehot`) becomes the last accepted slot and joins the history;
    rejected: only the last accepted slot stays valid.
    """
    r_prev = xp.where(accept, r, state.r_prev)
    acc = accept[:, None]
    last = xp.where(acc, onehot, state.last)  # (rows, m) one-hot
    valid = xp.logical_or(last, xp.logical_and(acc, state.valid))
    return r_prev, last, valid


def _coefficients(H, S, valid, lam_eye, ones, *, xp):
    """``alpha`` from the scaled, regularised Gram matrices (batched).

    Unused slots get a zero scale: their rows and columns of ``C`` vanish except for
    ``lambda`` on the diagonal, and their right-hand side is zero, so their
    coefficient is exactly zero.
    """
    s = xp.where(valid, S, 0.0)
    C = H * (s[:, :, None] * s[:, None, :]) + lam_eye
    y = s * small_solve(C, s, xp=xp)
    return y / xp.vecdot(y, ones)[:, None]
