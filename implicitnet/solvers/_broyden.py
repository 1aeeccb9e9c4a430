"""Limited-memory "good" Broyden method with a lazy backtracking line search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .._xp import device, set_index
from ._base import AbstractIterativeSolver, Step, _check_int, _check_real, row_norms

__all__ = ["Broyden"]


class _BroydenState(NamedTuple):
    U: Any  # (batch, m, n) ring buffer: H = -beta I + sum_i u_i v_i^T over valid slots
    V: Any  # (batch, m, n)
    valid: Any  # (batch, m) which slots hold an update of the current H
    x_prev: Any  # (batch, n) anchor: last accepted iterate
    g_prev: Any  # (batch, n) its residual
    r_prev: Any  # (batch,) its residual norm (inf: no anchor yet)
    r: Any  # (batch,) residual norm of the current iterate (computed by the last step)
    d: Any  # (batch, n) search direction from the anchor
    t: Any  # (batch,) step length of the pending trial point x_prev + t d
    k: int  # steps taken (ring position), shared by the batch


@dataclass(frozen=True, kw_only=True)
class Broyden(AbstractIterativeSolver):
    """Limited-memory "good" Broyden method (Broyden's first method).

    Finds a zero of the residual ``g`` (``f(x) - x`` for a fixed-point problem,
    ``F(x)`` for a root problem) with quasi-Newton steps ``x <- x - t H g(x)``, where
    ``H`` approximates the inverse Jacobian, starts as ``-beta I`` and receives one
    rank-one update per accepted step. The updates are stored in buffers of `m`
    vectors per system (bounded memory: when all `m` are used, ``H`` restarts from
    ``-beta I``).

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
    stagnation_window : int, default: 150
        See :class:`AbstractIterativeSolver`. Longer than the other methods' default
        (50): Broyden's residual is not monotone, and after a memory restart it can take
        more than 50 steps to get back below its best (seen on 512-unknown systems with
        a contraction factor of 0.99).
    divergence_factor
        See :class:`AbstractIterativeSolver`.

    Notes
    -----
    With ``s = x_{k+1} - x_k`` and ``y = g_{k+1} - g_k``, the good Broyden update of the
    inverse Jacobian (Sherman–Morrison form) is ::

        H_{k+1} = H_k + (s - H_k y) s^T H_k / (s^T H_k y),

    stored as ``u = (s - H_k y) / (s^T H_k y)`` and ``v = H_k^T s``. Since the trial
    direction was ``d = -H_k g_k``, ``H_k y = H_k g_{k+1} + d``, so a step costs four
    products with the ``(m, n)`` buffers and one function evaluation; the new pair is
    written into one slot of each buffer (in place on raw arrays, out of place on
    autodiff tensors) and a per-system mask says which slots are in use, so a memory
    reset costs nothing. The line search
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

    stagnation_window: int = 150
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
        dtype = x.dtype
        return _BroydenState(
            U=xp.zeros((rows, self.m, n), dtype=dtype, device=dev),
            V=xp.zeros((rows, self.m, n), dtype=dtype, device=dev),
            valid=xp.zeros((rows, self.m), dtype=xp.bool, device=dev),
            x_prev=x,
            g_prev=gx,
            r_prev=xp.full((rows,), float("inf"), dtype=dtype, device=dev),
            r=row_norms(gx, xp=xp),
            d=xp.zeros_like(x),
            t=xp.ones((rows,), dtype=dtype, device=dev),
            k=0,
        )

    def step(self, g, x, gx, state, *, xp):
        dtype = x.dtype
        U, V, valid = state.U, state.V, state.valid
        fresh = state.r_prev == float("inf")  # no anchor yet: x itself is the anchor
        r = state.r
        t_half = state.t * 0.5
        if self.line_search:
            # Backtracking exhausted: accept the trial anyway (the update learns from it).
            accept = r <= (1.0 - 1e-4 * state.t) * state.r_prev
            accept = xp.logical_or(accept, t_half < 1.0 / 64)
        else:
            accept = r <= self.safeguard * state.r_prev
        accept = xp.logical_or(accept, fresh)

        # --- accepted rows: Broyden update with the accepted step, new direction.
        # Products with the buffers: c = V g, w = H g, e = U s, v = H^T s (unused slots
        # get a zero coefficient; `where`, not a product, so stale values never leak).
        zero_m = xp.zeros(valid.shape, dtype=dtype, device=device(x))
        zero = xp.zeros_like(x)
        beta = self.beta
        s = x - state.x_prev
        c = xp.where(valid, xp.vecdot(V, gx[:, None, :]), zero_m)
        w = xp.matmul(c[:, None, :], U)[:, 0, :]
        w = w - (gx if beta == 1.0 else beta * gx)  # H_k g_{k+1}
        Hy = w + state.d  # H_k (g_{k+1} - g_k), since d = -H_k g_k
        e = xp.where(valid, xp.vecdot(U, s[:, None, :]), zero_m)
        v = xp.matmul(e[:, None, :], V)[:, 0, :]
        v = v - (s if beta == 1.0 else beta * s)  # H_k^T s
        den = xp.vecdot(s, Hy)
        scale = xp.sqrt(xp.vecdot(s, s) * xp.vecdot(Hy, Hy))
        tiny = float(xp.finfo(dtype).eps)
        update = xp.logical_and(
            xp.logical_not(fresh),
            xp.logical_and(accept, xp.abs(den) > tiny * scale),
        )
        upd = update[:, None]
        u = xp.where(upd, (s - Hy) / xp.where(update, den, xp.ones_like(den))[:, None], zero)
        v = xp.where(upd, v, zero)
        # H_{k+1} g_{k+1} = H_k g_{k+1} + u (v . g_{k+1})
        d_acc = -(w + u * xp.vecdot(v, gx)[:, None])

        # Ring slot p receives (u, v) (in place on raw arrays). When the memory is full
        # every system restarts from H = -beta I: the slots are marked unused, not
        # cleared. (Overwriting only the oldest update is not a Broyden method any
        # more, since later updates were built on it; it measured worse.)
        p = state.k % self.m
        every = slice(None)
        if p == 0 and state.k > 0:
            valid = xp.zeros_like(valid)
        U = set_index(U, (every, p), u, xp=xp)
        V = set_index(V, (every, p), v, xp=xp)
        slot = xp.arange(self.m, device=device(x)) == p
        valid = xp.where(slot, upd, valid)
        # Without line search a rejected trial resets that system's memory and a plain
        # step is taken from the anchor; with it, the step is halved.
        if self.line_search:
            failed = xp.zeros_like(accept)
        else:
            failed = xp.logical_not(accept)
            valid = xp.logical_and(valid, xp.logical_not(failed[:, None]))

        acc = accept[:, None]
        x_anchor = xp.where(acc, x, state.x_prev)
        g_anchor = xp.where(acc, gx, state.g_prev)
        r_anchor = xp.where(accept, r, state.r_prev)
        if self.line_search:
            d = xp.where(acc, d_acc, state.d)
        else:
            plain = state.g_prev if beta == 1.0 else beta * state.g_prev
            d = xp.where(acc, d_acc, plain)  # rejected trial: plain step from the anchor
        t = xp.where(xp.logical_or(accept, failed), xp.ones_like(t_half), t_half)
        x_new = x_anchor + t[:, None] * d
        g_new = g(x_new)
        r_new = row_norms(g_new, xp=xp)
        new_state = _BroydenState(
            U, V, valid, x_anchor, g_anchor, r_anchor, r_new, d, t, state.k + 1
        )
        return Step(x_new, g_new, new_state, r_new)
