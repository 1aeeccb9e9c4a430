"""Anderson acceleration (type II), batched and safeguarded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .._xp import device as _dev
from .._xp import small_solve, vector_norm
from ._base import AbstractIterativeSolver, Step, _check_int, _check_real, ring_write

__all__ = ["Anderson"]


class _AndersonState(NamedTuple):
    X: Any  # (batch, m, n) ring buffer of iterates
    G: Any  # (batch, m, n) ring buffer of their residuals
    H: Any  # (batch, m, m) Gram matrix G G^T of the buffer
    valid: Any  # (batch, m) which slots hold history
    x_prev: Any  # (batch, n) last accepted iterate
    g_prev: Any  # (batch, n) its residual
    r_prev: Any  # (batch,) its residual norm (inf before the first step)
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
    beta : float, default: 1.0
        Mixing (relaxation) parameter: the model Jacobian of the residual is
        ``-I / beta``.
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
    stagnation_window, divergence_factor
        See :class:`AbstractIterativeSolver`.

    Notes
    -----
    With ``G = [g_1, ..., g_m]`` (one column per remembered residual) and ``H = G^T G``,
    the coefficients solve the bordered (KKT) system ::

        [0  1^T] [nu   ]   [1]
        [1  H  ] [alpha] = [0]

    It is solved, for all systems at once with one batched ``linalg.solve``, after a
    symmetric diagonal scaling ``S = diag(H)^(-1/2)`` that gives ``S H S`` a unit
    diagonal (an exact change of variables ``alpha = S a``), plus ``lambda I``. Unused
    slots of the ring buffer get an identity row and a zero border, so their
    coefficient is zero. The Gram matrix is updated by one row and column per step.
    One function evaluation per iteration; the safeguards cost none (a rejected step
    is detected at the next one). On linear problems with ``m > n`` the method is
    equivalent to GMRES [2]_.

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

    m: int = 6
    beta: float = 1.0
    regularization: float = 1e-8
    safeguard: float = 10.0
    max_coefficient: float = 1e4

    def __post_init__(self):
        super().__post_init__()
        _check_int(self.m, "m", minimum=1)
        _check_real(self.beta, "beta", low=0.0, low_open=True)
        _check_real(self.regularization, "regularization", low=0.0)
        _check_real(self.safeguard, "safeguard", low=1.0, low_open=True)
        _check_real(self.max_coefficient, "max_coefficient", low=1.0, low_open=True)

    def init(self, g, x, gx, *, xp):
        rows, n = x.shape
        m = self.m
        dtype = x.dtype
        zeros = xp.zeros((rows, m, n), dtype=dtype, device=_dev(x))
        return _AndersonState(
            X=zeros,
            G=zeros,
            H=xp.zeros((rows, m, m), dtype=dtype, device=_dev(x)),
            valid=xp.zeros((rows, m), dtype=xp.bool, device=_dev(x)),
            x_prev=x,
            g_prev=gx,
            r_prev=xp.full((rows,), float("inf"), dtype=dtype, device=_dev(x)),
            k=0,
        )

    def step(self, g, x, gx, state, *, xp):
        m = self.m
        dtype = x.dtype
        dev = _dev(x)
        rows = x.shape[0]
        X, G, H, valid = state.X, state.G, state.H, state.valid

        # Safeguard: a residual much worse than the previous one (or not finite)
        # rejects the last step; restart from the previous iterate with a plain step.
        r = vector_norm(gx, axis=-1, xp=xp)
        reject = xp.logical_not(r <= self.safeguard * state.r_prev)
        rej = reject[:, None]
        x_c = xp.where(rej, state.x_prev, x)
        g_c = xp.where(rej, state.g_prev, gx)
        r_c = xp.where(reject, state.r_prev, r)
        valid = xp.logical_and(valid, xp.logical_not(rej))

        # Write (x_c, g_c) into ring slot p and update the Gram matrix's row/column p.
        p = state.k % m
        slot = xp.arange(m, device=dev) == p  # (m,)
        X = ring_write(X, x_c, p, xp=xp)
        G = ring_write(G, g_c, p, xp=xp)
        valid = xp.logical_or(valid, slot[None, :])
        h = xp.matmul(G, g_c[:, :, None])[:, :, 0]  # (rows, m): <g_j, g_c>
        H = xp.where(slot[None, :, None], h[:, None, :], H)
        H = xp.where(slot[None, None, :], h[:, :, None], H)

        if m == 1:
            alpha = xp.ones((rows, 1), dtype=dtype, device=dev)
        else:
            alpha = self._coefficients(H, valid, xp=xp)
            # Ill-conditioned least squares: restart the history, take a plain step.
            size = xp.sum(xp.abs(alpha), axis=-1)
            ill = xp.logical_not(size <= self.max_coefficient)
            onehot = xp.astype(slot, dtype)[None, :]
            alpha = xp.where(ill[:, None], onehot, alpha)
            valid = xp.where(ill[:, None], slot[None, :], valid)

        # x_next = sum_j alpha_j (x_j + beta g_j)
        a = alpha[:, None, :]
        x_new = xp.matmul(a, X)[:, 0, :]
        mixed_g = xp.matmul(a, G)[:, 0, :]
        x_new = x_new + (mixed_g if self.beta == 1.0 else self.beta * mixed_g)
        new_state = _AndersonState(X, G, H, valid, x_c, g_c, r_c, state.k + 1)
        return Step(x_new, g(x_new), new_state)

    def _coefficients(self, H, valid, *, xp):
        """Solve the scaled, regularised bordered systems for ``alpha`` (batched)."""
        rows, m, _ = H.shape
        dtype = H.dtype
        dev = _dev(H)
        eye = xp.eye(m, dtype=dtype, device=dev)
        vf = xp.astype(valid, dtype)
        diag = xp.sum(H * eye, axis=-1)
        positive = xp.logical_and(valid, diag > 0)
        # S = diag(H)^(-1/2) on used slots (1 where the residual is exactly zero), 0 else
        one = xp.ones_like(diag)
        s = xp.where(positive, 1.0 / xp.sqrt(xp.where(positive, diag, one)), vf)
        lam = max(self.regularization, 100.0 * float(xp.finfo(dtype).eps))
        C = H * s[:, :, None] * s[:, None, :] + eye * xp.where(valid, lam * one, one)[:, None, :]
        # Constraint 1^T alpha = s^T a = 1, row scaled by 1 / max(s) for balance.
        smax = xp.max(s, axis=-1, keepdims=True)
        t = s / smax
        top = xp.concat([xp.zeros((rows, 1, 1), dtype=dtype, device=dev), t[:, None, :]], axis=-1)
        bottom = xp.concat([t[:, :, None], C], axis=-1)
        K = xp.concat([top, bottom], axis=1)
        rhs = xp.concat([1.0 / smax, xp.zeros((rows, m), dtype=dtype, device=dev)], axis=-1)
        sol = small_solve(K, rhs, xp=xp)
        return sol[:, 1:] * s
