"""Limited-memory "good" Broyden method with a lazy backtracking line search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .._validate import check_int, check_real
from .._xp import device, is_tensor, row_norms, set_index
from ._base import (
    AbstractIterativeSolver,
    Step,
    initial_beta,
)

__all__ = ["Broyden"]

# An update whose denominator d_j . (z + d_j) is below this fraction of
# d_j . d_j + |d_j . z| is skipped: it would stretch the step by more than ~1/_SKIP.
_SKIP = 1e-3


class _BroydenState(NamedTuple):
    R: Any  # (batch, m, n) residuals g_0 .. g_{k-1} at the trial points of this memory
    GR: Any  # (batch, m, m) their Gram matrix R R^T
    C: Any  # (batch, m, m) row i: direction d_i = sum_l C_il g_l (lower triangular)
    G: Any  # (batch, m, m) Gram matrix D D^T of the directions (lower triangle only)
    Minv: Any  # (batch, m, m) lower-triangular inverse of the updates' system (row i: update i)
    W: Any  # (batch, m) line search: step length along each direction; else 1 / 0 in use or not
    anc: Any  # (batch,) slot of the anchor's residual (unless `clean`: then slot k - 1)
    r_prev: Any  # (batch,) residual norm of the anchor (the last accepted iterate)
    r: Any  # (batch,) residual norm of the current iterate (computed by the last step)
    t: Any  # (batch,) step length of the pending trial point x_anchor + t d_{k-1}
    beta: Any  # H_0 = -beta I: a float, or (batch,) (automatic, root problem)
    safeguard: float  # the safeguard factor, resolved for the problem's kind
    k: int  # directions stored (0: before the first step), shared by the batch
    clean: bool  # no trial rejected since the last restart (shared by the batch)


def _set_head(buf, k, head, *, xp, column=False):
    """`buf` ``(batch, m, m)`` with the first entries of its row (or column) `k` set.

    ``buf[:, k, :h] = head`` (``buf[:, :h, k]`` with `column`) for `head` of shape
    ``(batch, h)``: as :func:`~implicitnet._xp.set_index`, in place on raw arrays, out
    of place on autodiff tensors.
    """
    h = head.shape[1]
    every = slice(None)
    if not (is_tensor(buf) or is_tensor(head)):
        buf[(every, slice(0, h), k) if column else (every, k, slice(0, h))] = head
        return buf
    rest = buf[:, h:, k] if column else buf[:, k, h:]
    index = (every, every, k) if column else (every, k)
    return set_index(buf, index, xp.concat([head, rest], axis=1), xp=xp)


def _one_hot(slot, m, *, xp):
    """``(batch, m)`` rows with a 1 at column `slot` (a ``(batch,)`` float array)."""
    cols = xp.arange(m, dtype=slot.dtype, device=device(slot))
    return xp.astype(cols == slot[:, None], slot.dtype)


@dataclass(frozen=True, kw_only=True)
class Broyden(AbstractIterativeSolver):
    """Limited-memory "good" Broyden method (Broyden's first method).

    Finds a zero of the residual ``g`` (``f(x) - x`` for a fixed-point problem,
    ``F(x)`` for a root problem) with quasi-Newton steps ``x <- x - t H g(x)``, where
    ``H`` approximates the inverse Jacobian, starts as ``-beta I`` and receives one
    rank-one update per accepted step. Only the residuals at the trial points are
    stored, `m` of them per system (bounded memory: when all `m` are used, ``H``
    restarts from ``-beta I``).

    Defaults that depend on the problem's kind are marked "(kind)" below: a fixed-point
    problem (a DEQ cell, usually a contraction) gets short memory and safeguards that
    keep the iteration monotone and cheap; a root problem gets plain good Broyden, as
    in SciPy's ``broyden1``: long memory and no resets, because Broyden's residual on a
    general system is not monotone (on a dense random ``20 x 20`` linear system it
    rises by a factor of about 1e5 before it converges in ``2 n`` steps), and
    restarting or stopping on a rise ends runs that would succeed.

    Parameters
    ----------
    m : int, optional
        Number of directions stored per system (``H`` holds at most ``m - 1``
        updates; with ``m=1`` every step is a plain step). Default (kind): 10 for a
        fixed-point problem, 100 for a root problem (memory: ``m`` residuals of
        ``n`` numbers per system).
    beta : float, optional
        Initial inverse Jacobian ``-beta I``; the first step is ``x + beta * g(x)``.
        Default: 1 for a fixed-point problem; for a root problem, per system,
        SciPy's ``0.5 * max(||x0||, 1) / ||F(x0)||`` (a first step about half the
        size of `x0` whatever the scale of ``F``), or, when one directional difference
        (one extra evaluation) shows that this step would go clearly uphill (cosine
        between ``F0`` and ``J F0`` above 0.1), the step that minimises the linearised
        residual along ``F0``, ``-(F0 . J F0) / ||J F0||^2``.
    line_search : bool, default: False
        Backtracking on the residual norm: a trial ``x + t d`` is accepted when
        ``||g(x + t d)|| <= (1 - 1e-4 t) ||g(x)||``; otherwise `t` is halved. When `t`
        falls below ``1/64`` the trial is accepted anyway. Without it, a trial whose
        residual exceeds `safeguard` times the previous one resets that system's memory
        and a plain step ``beta * g`` is taken from the previous iterate instead.
    safeguard : float, optional
        See `line_search`. Default (kind): 10 for a fixed-point problem; for a root
        problem, infinity (no reset).
    stagnation_window : int, optional
        See :class:`AbstractIterativeSolver`. Default (kind): 150 for a fixed-point
        problem, 300 for a root problem. Longer than the other methods' default (50):
        Broyden's residual is not monotone, and after a memory restart it can take more
        than 50 steps to get back below its best (seen on 512-unknown systems with a
        contraction factor of 0.99).
    divergence_factor : float, optional
        See :class:`AbstractIterativeSolver`. Default (kind): ``1e4`` for a
        fixed-point problem, ``1e8`` for a root problem.

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
    directions alone (Kelley's representation [2]_). Applying
    ``H_j = (I + a_{j-1} s_{j-1}^T) ... (I + a_0 s_0^T) (-beta I)`` to ``g`` gives
    ``z = -beta g + sum_i e_i (d_{i+1} + (t_i - 1) d_i)``, where the coefficients solve
    the lower-triangular system ``M e = -beta D g`` with ``D`` the directions (rows),
    ``M_ii = d_i . d_i`` and ``M_il = -(d_i . d_{l+1} + (t_l - 1) d_i . d_l)`` for
    ``l < i``. Each direction is a combination of the residuals met so far (``d_0`` is
    ``beta g_a``, and ``d_{j+1}`` combines the earlier directions and ``g(x)``), so
    what is stored is those residuals ``R`` (rows: ``g`` at the restart point and at
    every trial point since), with ``D = C R`` for a lower-triangular ``C``. Each system
    keeps ``C``, the Gram matrices ``R R^T`` and ``D D^T``, and ``M^{-1}``, each gaining
    one row per step. A step writes ``g(x)`` into the next slot of a preallocated buffer
    (in place on raw arrays, out of place on autodiff tensors; the slot position is
    shared by the batch) and makes two passes over the residuals in use: ``R g``, from
    which ``D g = C R g`` and the new direction's coefficients follow through products
    of ``m x m`` matrices (its Gram row too: ``D d = C (R R^T) c``), and the new iterate
    ``x + R^T c'`` (``c' = c``, the new direction, after an accepted trial; a rejected
    one first steps back to its anchor, ``x - t d_j``, also a combination of residuals).
    Neither the directions nor the anchors are formed as vectors. One host check per
    step (did every system accept its trial?) lets the common case skip all
    per-system selection.

    An update whose denominator ``d_j . (z + d_j)`` is below ``1e-3`` times
    ``d_j . d_j + |d_j . z|`` is skipped (``d_{j+1} = -z``): it would stretch the step
    by a factor of a thousand or more. When the memory is full, every system restarts
    from ``-beta I`` with the plain step ``beta g_a`` (the representation needs its
    first direction to be ``-H_0 g_a``). A system whose trial is rejected by the
    safeguard drops its stored directions (they get zero coefficients) and restarts
    the same way; with the line search it stores the same direction again, with no
    update between the two. The line search is lazy: a trial point is evaluated once,
    as the iteration's evaluation, and a rejection is acted on at the next step (the
    driver's best iterate is unaffected).

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

    stagnation_window: int | None = None
    divergence_factor: float | None = None
    m: int | None = None
    beta: float | None = None
    line_search: bool = False
    safeguard: float | None = None

    def __post_init__(self):
        super().__post_init__()
        check_int(self.m, "m", minimum=1, optional=True)
        if self.beta is not None:
            check_real(self.beta, "beta", low=0.0, low_open=True)
        if self.safeguard is not None:
            check_real(self.safeguard, "safeguard", low=1.0, low_open=True)
        if not isinstance(self.line_search, bool):
            msg = f"`line_search` must be True or False, got {self.line_search!r}"
            raise TypeError(msg)

    #: Root problems: a longer stagnation window and a larger divergence factor.
    DEFAULT_STOPPING: ClassVar[dict] = {"fixed_point": (150, 1e4), "root": (300, 1e8)}

    def settings(self, kind: str) -> tuple[int, float]:
        """``(m, safeguard)`` for a problem of this `kind` (see the class parameters)."""
        root = kind == "root"
        m = (100 if root else 10) if self.m is None else self.m
        safeguard = (float("inf") if root else 10.0) if self.safeguard is None else self.safeguard
        return m, float(safeguard)

    def init(self, g, x, gx, *, xp):
        rows, n = x.shape
        m, safeguard = self.settings(getattr(g, "kind", "fixed_point"))
        dev = device(x)
        dtype = x.dtype
        r = row_norms(gx, xp=xp)

        def zeros(*shape):
            return xp.zeros(shape, dtype=dtype, device=dev)

        return _BroydenState(
            R=zeros(rows, m, n),
            GR=zeros(rows, m, m),
            C=zeros(rows, m, m),
            G=zeros(rows, m, m),
            Minv=zeros(rows, m, m),
            W=xp.ones((rows, m), dtype=dtype, device=dev),
            anc=zeros(rows),
            r_prev=r,
            r=r,
            t=xp.ones((rows,), dtype=dtype, device=dev),
            beta=initial_beta(self.beta, g, x, gx, xp=xp),
            safeguard=safeguard,
            k=0,
            clean=True,
        )

    def step(self, g, x, gx, state, *, xp):
        k, m, beta = state.k, state.R.shape[1], state.beta
        unit = isinstance(beta, float) and beta == 1.0
        bcol = beta if isinstance(beta, float) else beta[:, None]  # against (rows, .)
        r, t, anc, clean = state.r, state.t, state.anc, state.clean
        line_search = self.line_search
        every = slice(None)
        if k == 0:  # first step: the anchor is x itself
            accept = None
            all_accepted = True
        else:
            if line_search:
                accept = r <= (1.0 - 1e-4 * t) * state.r_prev
                # Backtracking exhausted (next t below 1/64): accept the trial anyway.
                accept = xp.logical_or(accept, t < 2.0 / 64)
            else:
                accept = r <= state.safeguard * state.r_prev
            # One host check: when every system accepted its trial (the common case)
            # no per-system selection is needed.
            all_accepted = bool(xp.all(accept))
            if clean and not all_accepted:  # the anchors were the previous trials
                anc = xp.full_like(r, float(k - 1))
        R, GR, C, G, Minv, W = state.R, state.GR, state.C, state.G, state.Minv, state.W

        if k in (0, m):
            # First step, or the memory is full: every system (re)starts from
            # H = -beta I with the plain step d = beta g_a from its anchor.
            if all_accepted:
                x_a, g_a, r_a = x, gx, r
            else:  # a rejected trial goes back to its anchor: x_a = x - t d_{m-1}
                acc = accept[:, None]
                g_old = xp.matmul(_one_hot(anc, m, xp=xp)[:, None, :], R)[:, 0, :]
                g_a = xp.where(acc, gx, g_old)
                back = xp.matmul(C[:, m - 1, :][:, None, :], R)[:, 0, :]
                x_a = xp.where(acc, x, x - t[:, None] * back)
                r_a = xp.where(accept, r, state.r_prev)
            R = set_index(R, (every, 0), g_a, xp=xp)
            gg = xp.vecdot(g_a, g_a)
            GR = set_index(GR, (every, 0, 0), gg, xp=xp)
            if k:
                C = xp.zeros_like(C)
                Minv = xp.zeros_like(Minv)
                t = xp.ones_like(t)
                if not (line_search or clean):
                    W = xp.ones_like(W)
            C = set_index(C, (every, 0, 0), beta, xp=xp)
            G = set_index(G, (every, 0, 0), (beta * beta) * gg, xp=xp)
            x_new = x_a + (g_a if unit else bcol * g_a)
            g_new = g(x_new)
            r_new = row_norms(g_new, xp=xp)
            new_state = _BroydenState(
                R, GR, C, G, Minv, W, anc, r_a, r_new, t, beta, state.safeguard, 1, True
            )
            return Step(x_new, g_new, new_state, r_new, trial=line_search)

        # d_j (slot j = k - 1) led from the anchor to x; g(x) goes into slot k. With H_j
        # (from the stored directions) and z = H_j g(x): the good Broyden update j and
        # the new direction, all through products with R and small matrices.
        j = k - 1
        R = set_index(R, (every, k), gx, xp=xp)
        pr = xp.matmul(R[:, :k, :], gx[:, :, None])[:, :, 0]  # R g: first pass over R
        GR = _set_head(GR, k, pr, xp=xp)
        GR = _set_head(GR, k, pr, xp=xp, column=True)
        GR = set_index(GR, (every, k, k), r * r, xp=xp)
        p = xp.matmul(C[:, :k, :k], pr[:, :, None])[:, :, 0]  # D g (C_ik = 0 for i < k)
        q = -p if unit else (-bcol) * p  # D H_0 g
        if not (line_search or clean):
            q = q * W[:, :k]  # directions from before a reset take no part
        n_j = G[:, j, j]
        if j:
            e = xp.matmul(Minv[:, :j, :j], q[:, :j, None])[:, :, 0]  # the updates' coefficients
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
        update = xp.abs(den) > _SKIP * (n_j + xp.abs(dz))
        if not all_accepted:
            update = xp.logical_and(accept, update)
        inv_den = 1.0 / xp.where(update, den, 1.0)
        # New direction d = a z + b d_j (a = -1, b = 0 when the update is skipped).
        a = xp.where(update, -n_j * inv_den, -1.0)
        if line_search:
            b = xp.where(update, (1.0 - t) * dz * inv_den, 0.0)
            if all_accepted:
                t_new = xp.ones_like(t)
            else:
                a = xp.where(accept, a, 0.0)  # rejected: d = d_j, half the step
                b = xp.where(accept, b, 1.0)
                t_new = xp.where(accept, 1.0, 0.5 * t)
            alpha = (-beta) * a
            first = 0
            if c is None:
                coef = b[:, None]
            else:
                coef = a[:, None] * c
                coef = xp.concat([coef[:, :j], (coef[:, j] + b)[:, None]], axis=1)
        else:
            if all_accepted:
                alpha = (-beta) * a
            else:
                a = xp.where(accept, a, 0.0)  # rejected: plain step from the anchor
                alpha = xp.where(accept, (-beta) * a, beta)
            t_new = t
            first = 1  # c_0 = 0
            coef = None if c is None else a[:, None] * c
        # The new direction over the residuals: d = D^T coef + alpha g_anchor.
        if coef is None:
            cn = xp.zeros_like(C[:, k, : k + 1])
        else:
            cn = xp.matmul(coef[:, None, :], C[:, first:k, : k + 1])[:, 0, :]
        if all_accepted:  # the anchor is slot k
            cn = set_index(cn, (every, k), alpha, xp=xp)
            if not clean:
                anc = xp.full_like(r, float(k))
            r_a = r
        else:
            anc = xp.where(accept, float(k), anc)
            cn = cn + alpha[:, None] * _one_hot(anc, k + 1, xp=xp)
            r_a = xp.where(accept, r, state.r_prev)
        C = _set_head(C, k, cn, xp=xp)
        # Row k of D D^T: D d = C (R d), R d = GR cn (d . d is its last entry).
        rd = xp.matmul(GR[:, : k + 1, : k + 1], cn[:, :, None])
        G = _set_head(G, k, xp.matmul(C[:, : k + 1, : k + 1], rd)[:, :, 0], xp=xp)
        # Row j of the triangular inverse (zero: no update j).
        inv_n = xp.where(update, 1.0 / xp.where(update, n_j, 1.0), 0.0)
        if j:
            mrow = G[:, j, 1:k]
            if line_search:
                mrow = mrow + (W[:, :j] - 1.0) * G[:, j, :j]
            mrow = xp.matmul(mrow[:, None, :], Minv[:, :j, :j])[:, 0, :] * inv_n[:, None]
            Minv = _set_head(Minv, j, mrow, xp=xp)
        Minv = set_index(Minv, (every, j, j), inv_n, xp=xp)
        if line_search:
            W = set_index(W, (every, j), t, xp=xp)
        elif not all_accepted:  # a rejected trial resets that system's memory
            W = set_index(xp.where(accept[:, None], W, 0.0), (every, k), 1.0, xp=xp)
        elif not clean:
            W = set_index(W, (every, k), 1.0, xp=xp)
        # Second pass over R: x_new = x_a + t_new d, with x_a = x - t d_j for a
        # rejected trial.
        cx = t_new[:, None] * cn if line_search else cn
        if not all_accepted:
            cx = cx - C[:, j, : k + 1] * xp.where(accept, 0.0, t)[:, None]
        x_new = x + xp.matmul(cx[:, None, :], R[:, : k + 1, :])[:, 0, :]
        g_new = g(x_new)
        r_new = row_norms(g_new, xp=xp)
        clean = clean and all_accepted
        new_state = _BroydenState(
            R, GR, C, G, Minv, W, anc, r_a, r_new, t_new, beta, state.safeguard, k + 1, clean
        )
        return Step(x_new, g_new, new_state, r_new, trial=line_search)
