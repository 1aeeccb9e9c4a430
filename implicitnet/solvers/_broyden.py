"""Limited-memory "good" Broyden method with a lazy backtracking line search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .._xp import device, set_index
from ._base import AbstractIterativeSolver, Step, _check_int, _check_real, row_norms

__all__ = ["Broyden"]

# An update whose denominator d_j . (z + d_j) is below this fraction of
# d_j . d_j + |d_j . z| is skipped: it would stretch the step by more than ~1/_SKIP.
_SKIP = 1e-3


class _BroydenState(NamedTuple):
    D: Any  # (batch, m, n) directions d_0 .. d_{k-1} of the current memory (d_{k-1}: current)
    G: Any  # (batch, m, m) their Gram matrix D D^T (entries between stored directions)
    Minv: Any  # (batch, m, m) lower-triangular inverse of the updates' system (row i: update i)
    W: Any  # (batch, m) line search: step length along each direction; else 1 / 0 in use or not
    x_prev: Any  # (batch, n) anchor: last accepted iterate
    g_prev: Any  # (batch, n) its residual
    r_prev: Any  # (batch,) its residual norm
    r: Any  # (batch,) residual norm of the current iterate (computed by the last step)
    t: Any  # (batch,) step length of the pending trial point x_prev + t d_{k-1}
    k: int  # directions stored (0: before the first step), shared by the batch


@dataclass(frozen=True, kw_only=True)
class Broyden(AbstractIterativeSolver):
    """Limited-memory "good" Broyden method (Broyden's first method).

    Finds a zero of the residual ``g`` (``f(x) - x`` for a fixed-point problem,
    ``F(x)`` for a root problem) with quasi-Newton steps ``x <- x - t H g(x)``, where
    ``H`` approximates the inverse Jacobian, starts as ``-beta I`` and receives one
    rank-one update per accepted step. Only the steps' directions are stored, `m` of
    them per system (bounded memory: when all `m` are used, ``H`` restarts from
    ``-beta I``).

    Parameters
    ----------
    m : int, default: 10
        Number of directions stored per system (``H`` holds at most ``m - 1``
        updates; with ``m=1`` every step is a plain step).
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
    From the anchor ``x_a`` (the last accepted iterate, residual ``g_a``) the trial is
    ``x = x_a + t d_j`` with direction ``d_j = -H_j g_a``. When it is accepted, with
    ``s = t d_j`` and ``y = g(x) - g_a`` the good Broyden update is ::

        H_{j+1} = (I + a_j s^T) H_j,    a_j = (s - H_j y) / (s^T H_j y).

    With ``z = H_j g(x)`` we have ``H_j y = z + d_j``, so the next direction is ::

        d_{j+1} = -H_{j+1} g(x) = -(z + (t - 1) rho d_j) / (1 + rho),
        rho = d_j . z / (d_j . d_j),

    and ``a_j = (d_{j+1} + (t - 1) d_j) / (t d_j . d_j)``: the updates are known from the
    directions alone, which are the only vectors stored (Kelley's representation [2]_).
    Applying ``H_j = (I + a_{j-1} s_{j-1}^T) ... (I + a_0 s_0^T) (-beta I)`` to ``g``
    gives ``z = -beta g + sum_i e_i (d_{i+1} + (t_i - 1) d_i)``, where the coefficients
    solve the lower-triangular system ``M e = -beta D g`` with ``D`` the stored
    directions (rows), ``M_ii = d_i . d_i`` and
    ``M_il = -(d_i . d_{l+1} + (t_l - 1) d_i . d_l)`` for ``l < i``. Each system keeps
    the Gram matrix ``D D^T`` and ``M^{-1}``, which gains one row per step, so a step
    costs two passes over the directions in use (``D g`` and a combination of them) and
    one function evaluation; everything else is products of ``m x m`` matrices, the
    new direction's Gram row included (``D d_{j+1}`` follows from ``D g`` and
    ``D D^T``; its norm is computed directly). The direction is written into one slot
    of a preallocated buffer (in place on raw arrays, out of place on autodiff
    tensors); the slot position is shared by the batch.

    An update whose denominator ``d_j . (z + d_j)`` is below ``1e-3`` times
    ``d_j . d_j + |d_j . z|`` is skipped (``d_{j+1} = -z``): it would stretch the step
    by a factor of a thousand or more. When the memory is full, every system restarts
    from ``-beta I`` with the plain step ``beta g_a`` (the representation needs its
    first direction to be ``-H_0 g_a``). A system whose trial is rejected by the
    safeguard drops its stored directions (they get zero coefficients) and restarts
    the same way; with the line search it stores the same direction again, with no
    update between the two. The line search is lazy: a trial point is evaluated once,
    as the iteration's evaluation, and a rejection is acted on at the next step (the
    driver's best iterate is unaffected), so no extra host synchronisation is needed.

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
    m: int = 10
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
        m = self.m
        dev = device(x)
        dtype = x.dtype
        r = row_norms(gx, xp=xp)
        return _BroydenState(
            D=xp.zeros((rows, m, n), dtype=dtype, device=dev),
            G=xp.zeros((rows, m, m), dtype=dtype, device=dev),
            Minv=xp.zeros((rows, m, m), dtype=dtype, device=dev),
            W=xp.ones((rows, m), dtype=dtype, device=dev),
            x_prev=x,
            g_prev=gx,
            r_prev=r,
            r=r,
            t=xp.ones((rows,), dtype=dtype, device=dev),
            k=0,
        )

    def step(self, g, x, gx, state, *, xp):
        k, m, beta = state.k, self.m, self.beta
        r, t = state.r, state.t
        line_search = self.line_search
        every = slice(None)
        if k == 0:  # first step: the anchor is x itself
            accept = None
            x_a, g_a, r_a = x, gx, r
        else:
            if line_search:
                accept = r <= (1.0 - 1e-4 * t) * state.r_prev
                # Backtracking exhausted (next t below 1/64): accept the trial anyway.
                accept = xp.logical_or(accept, t < 2.0 / 64)
            else:
                accept = r <= self.safeguard * state.r_prev
            acc = accept[:, None]
            x_a = xp.where(acc, x, state.x_prev)
            g_a = xp.where(acc, gx, state.g_prev)
            r_a = xp.where(accept, r, state.r_prev)

        D, G, Minv, W = state.D, state.G, state.Minv, state.W
        if k in (0, m):
            # First step, or the memory is full: every system (re)starts from
            # H = -beta I with the plain step d = beta g from its anchor.
            d = g_a if beta == 1.0 else beta * g_a
            D = set_index(D, (every, 0), d, xp=xp)
            G = set_index(G, (every, 0, 0), xp.vecdot(d, d), xp=xp)
            if k:
                Minv = xp.zeros_like(Minv)
                t = xp.ones_like(t)
                if not line_search:
                    W = set_index(xp.zeros_like(W), (every, 0), 1.0, xp=xp)
            x_new = x_a + d
            g_new = g(x_new)
            r_new = row_norms(g_new, xp=xp)
            new_state = _BroydenState(D, G, Minv, W, x_a, g_a, r_a, r_new, t, 1)
            return Step(x_new, g_new, new_state, r_new)

        # d_j (slot j = k - 1) led from the anchor to x. With H_j (from the stored
        # directions) and z = H_j g(x): the good Broyden update j and the new direction
        # from the new anchor, all through products with D and small matrices.
        j = k - 1
        p = xp.vecdot(D[:, :k, :], gx[:, None, :])  # D g: first pass over the memory
        q = -p if beta == 1.0 else (-beta) * p  # D H_0 g
        if not line_search:
            q = q * W[:, :k]  # directions from before a reset take no part
        n_j = G[:, j, j]
        if j:
            e = (Minv[:, :j, :j] @ q[:, :j, None])[:, :, 0]  # the updates' coefficients
            if line_search:
                # z = -beta g + D^T c, c_i = e_{i-1} + (t_i - 1) e_i
                zc = xp.zeros_like(e[:, :1])
                c = xp.concat([(W[:, :j] - 1.0) * e, zc], axis=1)
                c = c + xp.concat([zc, e], axis=1)
                dz = q[:, j] + xp.vecdot(G[:, j, :k], c)  # d_j . z
            else:  # every step length is 1: c = (0, e)
                c = e
                dz = q[:, j] + xp.vecdot(G[:, j, 1:k], e)
        else:
            c = None
            dz = q[:, 0]
        den = n_j + dz  # s^T H_j y / t = d_j . (z + d_j)
        # Skip the update when the denominator is round-off relative to its terms.
        update = xp.logical_and(accept, xp.abs(den) > _SKIP * (n_j + xp.abs(dz)))
        inv_den = 1.0 / xp.where(update, den, 1.0)
        # New direction d = a z + b d_j (a = -1, b = 0 when the update is skipped).
        a = xp.where(update, -n_j * inv_den, -1.0)
        if line_search:
            b = xp.where(update, (1.0 - t) * dz * inv_den, 0.0)
            a = xp.where(accept, a, 0.0)  # rejected: d = d_j, half the step
            b = xp.where(accept, b, 1.0)
            alpha = (-beta) * a
            t_new = xp.where(accept, 1.0, 0.5 * t)
        else:
            a = xp.where(accept, a, 0.0)  # rejected: plain step from the anchor
            alpha = xp.where(accept, (-beta) * a, beta)
            t_new = t
        # d = D^T (a c + b e_j) + alpha g_anchor: second pass over the memory
        if line_search:
            first = 0
            if c is None:
                coef = b[:, None]
            else:
                coef = a[:, None] * c
                coef = xp.concat([coef[:, :j], (coef[:, j] + b)[:, None]], axis=1)
        else:
            first = 1  # c_0 = 0
            coef = None if c is None else a[:, None] * c
        if coef is None:
            d = alpha[:, None] * g_a
            grow = alpha[:, None] * p
        else:
            d = (coef[:, None, :] @ D[:, first:k, :])[:, 0, :] + alpha[:, None] * g_a
            # Gram row of d: D d = G coef + alpha D g (garbage only where a system resets)
            grow = (G[:, :k, first:k] @ coef[:, :, None])[:, :, 0] + alpha[:, None] * p
        D = set_index(D, (every, k), d, xp=xp)
        grow = xp.concat([grow, xp.vecdot(d, d)[:, None], G[:, k, k + 1 :]], axis=1)
        G = set_index(G, (every, k), grow, xp=xp)
        G = set_index(G, (every, every, k), grow, xp=xp)
        # Row j of the triangular inverse (zero: no update j).
        inv_n = xp.where(update, 1.0 / xp.where(update, n_j, 1.0), 0.0)
        if j:
            mrow = G[:, j, 1:k]
            if line_search:
                mrow = mrow + (W[:, :j] - 1.0) * G[:, j, :j]
            mrow = (mrow[:, None, :] @ Minv[:, :j, :j])[:, 0, :] * inv_n[:, None]
            mrow = xp.concat([mrow, inv_n[:, None], Minv[:, j, k:]], axis=1)
        else:
            mrow = xp.concat([inv_n[:, None], Minv[:, j, k:]], axis=1)
        Minv = set_index(Minv, (every, j), mrow, xp=xp)
        if line_search:
            W = set_index(W, (every, j), t, xp=xp)
        else:  # a rejected trial resets that system's memory
            W = set_index(xp.where(accept[:, None], W, 0.0), (every, k), 1.0, xp=xp)
        x_new = x_a + (t_new[:, None] * d if line_search else d)
        g_new = g(x_new)
        r_new = row_norms(g_new, xp=xp)
        new_state = _BroydenState(D, G, Minv, W, x_a, g_a, r_a, r_new, t_new, k + 1)
        return Step(x_new, g_new, new_state, r_new)
