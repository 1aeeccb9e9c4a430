"""Limited-memory "good" Broyden method with a lazy backtracking line search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .._xp import device, vdot, vector_norm
from ._base import AbstractIterativeSolver, Step, _check_int, _check_real, ring_write

__all__ = ["Broyden"]


class _BroydenState(NamedTuple):
    U: Any  # (batch, m, n) ring buffer: H = -beta I + sum_i u_i v_i^T
    V: Any  # (batch, m, n)
    x_prev: Any  # (batch, n) anchor: last accepted iterate
    g_prev: Any  # (batch, n) its residual
    r_prev: Any  # (batch,) its residual norm (inf: no anchor yet)
    d: Any  # (batch, n) search direction from the anchor
    t: Any  # (batch,) step length of the pending trial point x_prev + t d
    k: int  # updates written (ring position), shared by the batch


@dataclass(frozen=True, kw_only=True)
class Broyden(AbstractIterativeSolver):
    """Limited-memory "good" Broyden method (Broyden's first method).

    Finds a zero of the residual ``g`` (``f(x) - x`` for a fixed-point problem,
    ``F(x)`` for a root problem) with quasi-Newton steps ``x <- x - t H g(x)``, where
    ``H`` approximates the inverse Jacobian, starts as ``-beta I`` and receives one
    rank-one update per accepted step. The updates are stored in ring buffers of `m`
    vectors per system (bounded memory: the oldest update is dropped).

    Parameters
    ----------
    m : int, default: 30
        Number of rank-one updates kept per system.
    beta : float, default: 1.0
        Initial inverse Jacobian ``-beta I``; the first step is ``x + beta * g(x)``
        (Picard's step on a fixed-point problem).
    line_search : bool, default: False
        Backtracking on the residual norm: a trial ``x + t d`` is accepted when
        ``||g(x + t d)|| <= (1 - 1e-4 t) ||g(x)||``; otherwise `t` is halved. When `t`
        falls below ``1/64`` the trial is accepted anyway. Without it, a trial whose
        residual exceeds `safeguard` times the previous one resets that system's memory
        and a plain step ``beta * g`` is taken from the previous iterate instead.
    safeguard : float, default: 10.0
        See `line_search`.
    stagnation_window, divergence_factor
        See :class:`AbstractIterativeSolver`.

    Notes
    -----
    With ``s = x_{k+1} - x_k`` and ``y = g_{k+1} - g_k``, the good Broyden update of the
    inverse Jacobian (Sherman–Morrison form) is ::

        H_{k+1} = H_k + (s - H_k y) s^T H_k / (s^T H_k y),

    stored as ``u = (s - H_k y) / (s^T H_k y)`` and ``v = H_k^T s``. Since the trial
    direction was ``d = -H_k g_k``, ``H_k y = H_k g_{k+1} + d``, so a step costs four
    products with the ``(m, n)`` buffers and one function evaluation. The line search
    is lazy: a trial point is evaluated once, as the iteration's evaluation, and a
    rejection is acted on at the next step (the driver's best iterate is unaffected),
    so no extra host synchronisation is needed. An update with a vanishing
    denominator is skipped.

    References
    ----------
    .. [1] C. G. Broyden, "A class of methods for solving nonlinear simultaneous
       equations", Math. Comp. 19 (1965).
    .. [2] C. T. Kelley, "Iterative Methods for Linear and Nonlinear Equations",
       SIAM (1995), ch. 7.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> F = lambda x: np.stack([x[0] + 0.5 * np.sin(x[1]) - 1.0, x[1] - 0.2 * x[0] ** 2])
    >>> res = inet.solvers.root(F, np.zeros(2), method="broyden", beta=0.5, rtol=1e-10)
    >>> bool(res.success)
    True
    """

    m: int = 30
    beta: float = 1.0
    line_search: bool = False
    safeguard: float = 10.0

    def __post_init__(self):
        super().__post_init__()
        _check_int(self.m, "m", minimum=1)
        _check_real(self.beta, "beta", low=0.0, low_open=True)
        _check_real(self.safeguard, "safeguard", low=1.0, low_open=True)
        if not isinstance(self.line_search, bool):
            msg = f"`line_search` must be True or False, got {self.line_search!r}"
            raise TypeError(msg)

    def init(self, g, x, gx, *, xp):
        rows, n = x.shape
        dev = device(x)
        zeros = xp.zeros((rows, self.m, n), dtype=x.dtype, device=dev)
        return _BroydenState(
            U=zeros,
            V=zeros,
            x_prev=x,
            g_prev=gx,
            r_prev=xp.full((rows,), float("inf"), dtype=x.dtype, device=dev),
            d=xp.zeros_like(x),
            t=xp.ones((rows,), dtype=x.dtype, device=dev),
            k=0,
        )

    def _apply(self, U, V, z, *, xp):
        """``H z = -beta z + sum_i u_i (v_i . z)``."""
        c = xp.matmul(V, z[:, :, None])  # (rows, m, 1)
        return xp.matmul(xp.matrix_transpose(c), U)[:, 0, :] - self.beta * z

    def _apply_t(self, U, V, z, *, xp):
        """``H^T z = -beta z + sum_i v_i (u_i . z)``."""
        c = xp.matmul(U, z[:, :, None])
        return xp.matmul(xp.matrix_transpose(c), V)[:, 0, :] - self.beta * z

    def step(self, g, x, gx, state, *, xp):
        dtype = x.dtype
        U, V = state.U, state.V
        fresh = state.r_prev == float("inf")  # no anchor yet: x itself is the anchor
        r = vector_norm(gx, axis=-1, xp=xp)
        t_half = state.t * 0.5
        if self.line_search:
            # Backtracking exhausted: accept the trial anyway (the update learns from it).
            accept = r <= (1.0 - 1e-4 * state.t) * state.r_prev
            accept = xp.logical_or(accept, t_half < 1.0 / 64)
        else:
            accept = r <= self.safeguard * state.r_prev
        accept = xp.logical_or(accept, fresh)
        # Without line search a rejected trial resets that system's memory and a
        # plain step is taken from the anchor; with it, the step is halved.
        failed = xp.zeros_like(accept) if self.line_search else xp.logical_not(accept)

        # --- accepted rows: Broyden update with the accepted step, new direction.
        s = x - state.x_prev
        w = self._apply(U, V, gx, xp=xp)  # H_k g_{k+1}
        Hy = w + state.d  # H_k (g_{k+1} - g_k), since d = -H_k g_k
        v = self._apply_t(U, V, s, xp=xp)  # H_k^T s
        den = vdot(s, Hy, xp=xp)
        scale = xp.sqrt(vdot(s, s, xp=xp) * vdot(Hy, Hy, xp=xp))
        tiny = float(xp.finfo(dtype).eps)
        update = xp.logical_and(
            xp.logical_not(fresh),
            xp.logical_and(accept, xp.abs(den) > tiny * scale),
        )
        safe_den = xp.where(update, den, xp.ones_like(den))
        u = (s - Hy) / safe_den[:, None]
        zero = xp.zeros_like(u)
        u = xp.where(update[:, None], u, zero)
        v = xp.where(update[:, None], v, zero)
        # H_{k+1} g_{k+1} = H_k g_{k+1} + u (v . g_{k+1})
        d_acc = -(w + u * vdot(v, gx, xp=xp)[:, None])

        p = state.k % self.m
        if p == 0 and state.k > 0:  # memory full: restart every system's H at -beta I
            U = xp.zeros_like(U)
            V = xp.zeros_like(V)
        upd = update[:, None]
        U = ring_write(U, xp.where(upd, u, U[:, p, :]), p, xp=xp)
        V = ring_write(V, xp.where(upd, v, V[:, p, :]), p, xp=xp)

        if not self.line_search:
            keep = xp.astype(xp.logical_not(failed), dtype)[:, None, None]
            U = U * keep
            V = V * keep
        d_plain = self.beta * state.g_prev

        acc = accept[:, None]
        x_anchor = xp.where(acc, x, state.x_prev)
        g_anchor = xp.where(acc, gx, state.g_prev)
        r_anchor = xp.where(accept, r, state.r_prev)
        d = xp.where(acc, d_acc, xp.where(failed[:, None], d_plain, state.d))
        one = xp.ones_like(t_half)
        t = xp.where(xp.logical_or(accept, failed), one, t_half)
        x_new = x_anchor + t[:, None] * d
        new_state = _BroydenState(U, V, x_anchor, g_anchor, r_anchor, d, t, state.k + 1)
        return Step(x_new, g(x_new), new_state)
