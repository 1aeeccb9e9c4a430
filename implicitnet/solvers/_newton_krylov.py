"""Jacobian-free Newton–Krylov: inexact Newton steps solved by GMRES on finite-difference
Jacobian–vector products, with the Eisenstat–Walker forcing term and a line search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .._validate import check_int, check_real
from .._xp import device, row_norms
from ..linalg import gmres_rows
from ._base import AbstractIterativeSolver, Step

__all__ = ["NewtonKrylov"]


class _NKState(NamedTuple):
    x_prev: Any  # (batch, n) anchor: last accepted iterate
    g_prev: Any  # (batch, n) its residual
    r_prev: Any  # (batch,) its residual norm (inf: no anchor yet)
    d: Any  # (batch, n) Newton direction from the anchor
    t: Any  # (batch,) step length of the pending trial point
    eta: Any  # (batch,) forcing term of the last linear solve
    inner: int  # GMRES iterations so far (largest over the batch)
    restart: int  # the inner GMRES's settings, resolved for the problem's kind
    inner_maxiter: int


@dataclass(frozen=True, kw_only=True)
class NewtonKrylov(AbstractIterativeSolver):
    """Jacobian-free Newton–Krylov (JFNK) with an inner GMRES.

    Each outer iteration solves the Newton equation ``J(x) d = -g(x)`` inexactly, to
    relative residual ``eta``, with :func:`implicitnet.linalg.gmres`, where products
    with the Jacobian of the residual ``g`` (``f(x) - x`` for a fixed-point problem,
    ``F(x)`` for a root problem) are forward differences
    ``J v ~ (g(x + h v) - g(x)) / h`` (one function evaluation each), then steps to
    ``x + t d`` with a backtracking line search on ``||g||``.

    Parameters
    ----------
    restart : int, optional
        Krylov dimension of the inner GMRES between restarts. Default: 10 for a
        fixed-point problem, 30 for a root problem (see Notes).
    inner_maxiter : int, optional
        Maximum inner GMRES iterations per Newton step. Default: 20 for a fixed-point
        problem, 90 (three cycles of 30) for a root problem.
    eta0 : float, default: 0.5
        Forcing term of the first Newton step.
    eta_max : float, default: 0.9
        Upper bound of the forcing term.
    line_search : bool, default: True
        Backtracking: a trial ``x + t d`` is accepted when
        ``||g(x + t d)|| <= (1 - 1e-4 t) ||g(x)||``, otherwise `t` is halved; below
        ``1/64`` the trial is accepted anyway. A trial point is exempt from the driver's
        divergence test (a rejected trial is no iterate).
    fd_step : float, optional
        Relative finite-difference step; the perturbation of system ``i`` has norm
        ``fd_step * max(1, ||x_i||)``. Default: the square root of the dtype's
        machine epsilon.
    stagnation_window, divergence_factor
        See :class:`AbstractIterativeSolver`.

    Notes
    -----
    The defaults of the inner solve depend on the problem's kind. The residual of a
    fixed-point problem, ``f(x) - x``, has the Jacobian ``J_f - I``, well conditioned
    when ``f`` is a contraction (a DEQ cell): short restarted cycles suffice and are the
    cheapest. A general root problem's Jacobian can be far from normal and badly
    conditioned: restarted GMRES(10) can stall on a dense random ``20 x 20`` linear
    system (no Newton step then makes progress), so the inner solve of a root problem
    keeps up to 30 Krylov vectors and may take up to three cycles. (SciPy's
    ``newton_krylov`` goes further: LGMRES with 30 vectors, up to 20 cycles, and
    augmentation vectors recycled between Newton steps; on a 1000-unknown discretised
    boundary-value problem it needs several times fewer evaluations than this method.)

    Forcing term, Eisenstat–Walker choice 2 [1]_, per system::

        eta_k = min(eta_max, max(0.9 (r_k / r_{k-1})^2, 0.9 eta_{k-1}^2 if > 0.1))

    The systems of a batch share one inner GMRES call (one batched function evaluation
    per inner iteration), each with its own Krylov space and its own tolerance
    ``eta_k r_k``. A system that reaches its tolerance keeps iterating until the end of
    the restart cycle in which the last system reaches its own: the evaluations are made
    on the whole batch anyway, and the extra accuracy saves Newton steps. The inner
    solve makes no evaluation beyond its Krylov vectors: restarts take the residual from
    the Arnoldi relation (formed only when another cycle follows) and the final residual
    is GMRES's estimate, not recomputed. Products with the Jacobian are forward
    differences on the unit basis vectors, ``g(x + h v) - g(x)`` with
    ``h = fd_step * max(1, ||x||)`` per system, i.e. GMRES runs on ``h J`` and the step
    is scaled back by ``h`` (a per-system factor, which changes no residual). Per Newton
    step this costs the inner iterations plus one evaluation at the trial point. The
    line search is lazy, as in :class:`Broyden`: a rejected trial is replaced by a
    shorter one at the next iteration, reusing the Newton direction. Each inner
    iteration synchronises with the host twice (to decide on the Gram-Schmidt path and
    on stopping); the cheaper methods are better when the map is a good contraction.

    References
    ----------
    .. [1] S. C. Eisenstat and H. F. Walker, "Choosing the forcing terms in an inexact
       Newton method", SIAM J. Sci. Comput. 17 (1996).
    .. [2] D. A. Knoll and D. E. Keyes, "Jacobian-free Newton–Krylov methods: a survey
       of approaches and applications", J. Comput. Phys. 193 (2004).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> F = lambda x: np.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
    >>> res = inet.solvers.root(F, np.array([-1.2, 1.0]), method=inet.NewtonKrylov())
    >>> np.round(res.x, 6).tolist(), res.status
    ([1.0, 1.0], <Status.SUCCESS: 'success'>)
    """

    restart: int | None = None
    inner_maxiter: int | None = None
    eta0: float = 0.5
    eta_max: float = 0.9
    line_search: bool = True
    fd_step: float | None = None

    def __post_init__(self):
        super().__post_init__()
        check_int(self.restart, "restart", minimum=1, optional=True)
        check_int(self.inner_maxiter, "inner_maxiter", minimum=1, optional=True)
        check_real(self.eta_max, "eta_max", low=0.0, high=1.0, low_open=True, high_open=True)
        check_real(self.eta0, "eta0", low=0.0, high=self.eta_max, low_open=True)
        if self.fd_step is not None:
            check_real(self.fd_step, "fd_step", low=0.0, low_open=True)
        if not isinstance(self.line_search, bool):
            msg = f"`line_search` must be True or False, got {self.line_search!r}"
            raise TypeError(msg)

    def inner_settings(self, kind: str) -> tuple[int, int]:
        """``(restart, inner_maxiter)`` of the inner GMRES for a problem of this `kind`."""
        root = kind == "root"
        restart = (30 if root else 10) if self.restart is None else self.restart
        inner = (90 if root else 20) if self.inner_maxiter is None else self.inner_maxiter
        return restart, inner

    def init(self, g, x, gx, *, xp):
        rows = x.shape[0]
        dev = device(x)
        restart, inner_maxiter = self.inner_settings(getattr(g, "kind", "fixed_point"))
        return _NKState(
            x_prev=x,
            g_prev=gx,
            r_prev=xp.full((rows,), float("inf"), dtype=x.dtype, device=dev),
            d=xp.zeros_like(x),
            t=xp.ones((rows,), dtype=x.dtype, device=dev),
            eta=xp.full((rows,), self.eta0, dtype=x.dtype, device=dev),
            inner=0,
            restart=restart,
            inner_maxiter=inner_maxiter,
        )

    def step(self, g, x, gx, state, *, xp):
        dtype = x.dtype
        fresh = state.r_prev == float("inf")
        r = row_norms(gx, xp=xp)
        if self.line_search:
            accept = r <= (1.0 - 1e-4 * state.t) * state.r_prev
        else:
            accept = r == r
        t_half = state.t * 0.5
        exhausted = t_half < 1.0 / 64
        accept = xp.logical_or(xp.logical_or(accept, fresh), exhausted)

        # Forcing term (Eisenstat–Walker 2) for the systems taking a new Newton step.
        # Safe denominator: 1 where there is no previous residual (or it is zero);
        # those systems keep their forcing term below.
        unusable = xp.logical_or(fresh, state.r_prev == 0)
        ratio = r / xp.where(unusable, xp.ones_like(r), state.r_prev)
        eta = 0.9 * ratio * ratio
        prev = 0.9 * state.eta * state.eta
        eta = xp.where(prev > 0.1, xp.maximum(eta, prev), eta)
        eta = xp.minimum(eta, xp.full_like(eta, self.eta_max))
        eta = xp.where(unusable, state.eta, eta)
        eta = xp.where(accept, eta, state.eta)

        d = state.d
        inner = state.inner
        all_acc = bool(xp.all(accept))
        if all_acc or bool(xp.any(accept)):
            eps = float(xp.finfo(dtype).eps)
            h_rel = self.fd_step if self.fd_step is not None else eps**0.5
            xnorm = row_norms(x, xp=xp)[:, None]
            size = h_rel * xp.maximum(xnorm, xp.ones_like(xnorm))

            def jvp(v):
                # GMRES calls this only on its basis vectors (unit rows, or zero rows for
                # systems not iterating), so ``size * v`` has norm `size`: the forward
                # difference g(x + size v) - g(x) is `size` times J v. GMRES runs on this
                # operator diag(size) J and its solution is scaled back below (each
                # system is scaled by its own number, which leaves the residuals and
                # hence the tolerances unchanged).
                return g(x + size * v) - gx

            b = -gx if all_acc else xp.where(accept[:, None], -gx, xp.zeros_like(gx))
            bnorm = r if all_acc else xp.where(accept, r, xp.zeros_like(r))
            tiny = 10 * eps
            tol = xp.maximum(eta, xp.full_like(eta, tiny)) * bnorm
            solution, iterations = gmres_rows(
                jvp,
                b,
                bnorm,
                tol=tol,
                restart=state.restart,
                maxiter=state.inner_maxiter,
                exact_residual=False,
                greedy=True,
                xp=xp,
            )
            step_dir = size * solution
            inner = inner + iterations
            d = step_dir if all_acc else xp.where(accept[:, None], step_dir, d)

        one = xp.ones_like(t_half)
        t = xp.where(accept, one, t_half)
        if all_acc:
            x_anchor, g_anchor, r_anchor, x_new = x, gx, r, x + d
        else:
            acc = accept[:, None]
            x_anchor = xp.where(acc, x, state.x_prev)
            g_anchor = xp.where(acc, gx, state.g_prev)
            r_anchor = xp.where(accept, r, state.r_prev)
            x_new = x_anchor + t[:, None] * d
        new_state = _NKState(
            x_anchor, g_anchor, r_anchor, d, t, eta, inner, state.restart, state.inner_maxiter
        )
        return Step(x_new, g(x_new), new_state, trial=self.line_search)
