"""Anderson acceleration of the Richardson (Neumann) iteration, for linear systems."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._validate import check_int, check_real
from .._xp import device, small_solve
from ._base import AbstractBatchedLinearSolver, _Outcome, _Problem
from ._forms import function_form
from ._iterate import Step, iterate_solver

__all__ = ["Anderson", "anderson"]


@dataclass(frozen=True, kw_only=True)
class Anderson(AbstractBatchedLinearSolver):
    """Anderson acceleration of ``x <- x + (b - A x)``, memory `m`.

    One product with ``A`` and one small least-squares solve per iteration; without
    truncation, equivalent to GMRES.

    Parameters
    ----------
    maxiter : int, optional
        Maximum number of iterations, one product with ``A`` each. Default: 200.
    m : int, default: 5
        Number of previous differences mixed.
    regularization : float, default: 1e-10
        Tikhonov term of the mixing least squares, relative to the largest squared
        difference norm (never below ``10 * eps`` of the dtype).

    See Also
    --------
    anderson : The function form.
    Neumann : The iteration Anderson accelerates.

    Notes
    -----
    The fixed-point map is ``G(x) = x + (b - A x)``; for an adjoint ``A = I - J^T``
    it is ``G(u) = g + J^T u``, the plain adjoint iteration. With residuals
    ``f_k = b - A x_k``, ``g_k = x_k + f_k`` and the last `m` differences
    ``dF = [f_{i+1} - f_i]``, ``dG = [g_{i+1} - g_i]`` (type-II Anderson [2]_)::

        gamma = argmin || f_k - dF gamma ||,   x_{k+1} = g_k - dG gamma

    ``gamma`` solves ``(dF^T dF + lam I) gamma = dF^T f_k``, one small batched solve.
    Without truncation this is equivalent to GMRES on ``A x = b`` [1]_; with a short
    memory it is the classic DEQ accelerator.

    This is a dedicated linear version rather than the nonlinear Anderson solver run
    on ``G``: the linear solvers' stopping test ``norm(b - A x)`` and product count are
    exact here (the residual is the map's own residual, one product per step), and the
    adjoint machinery does not depend on the forward solvers.

    References
    ----------
    .. [1] H. F. Walker and P. Ni, "Anderson acceleration for fixed-point iterations",
       SIAM J. Numer. Anal. 49 (2011).
    .. [2] D. G. Anderson, "Iterative procedures for nonlinear integral equations",
       J. ACM 12 (1965).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> A = np.array([[[2.0, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.3, 3.0]]])
    >>> b = np.ones((2, 2))  # with batch_axis=0: one system per row, one matrix each
    >>> res = inet.linalg.Anderson(rtol=1e-12).solve(A, b, batch_axis=0)
    >>> np.allclose((A @ res.x[:, :, None])[:, :, 0], b)
    True
    """

    rtol: float = 1e-6
    atol: float = 0.0
    maxiter: int | None = None
    m: int = 5
    regularization: float = 1e-10
    callback: Callable[[Any], None] | None = None

    def __post_init__(self):
        super().__post_init__()
        check_int(self.m, "m", minimum=1)
        check_real(self.regularization, "regularization", low=0.0)

    def run(self, problem: _Problem, tol: Any, *, xp: Any) -> _Outcome:
        """Anderson-accelerated Richardson iteration on `problem` (internal layout)."""
        m = self.m
        finfo = xp.finfo(problem.b.dtype)
        lam = max(self.regularization, 10 * float(finfo.eps))
        tiny = float(finfo.smallest_normal)

        def init(p, x, r, *, xp):
            B, n = r.shape
            zeros = xp.zeros((B, m, n), dtype=r.dtype, device=device(r))
            return _State(dF=zeros, dG=zeros, f=r, g=x + r)

        def step(p, x, r, st, k, *, xp):
            return _step(p, x, r, st, k, m=m, lam=lam, tiny=tiny, xp=xp)

        return iterate_solver(self, problem, tol, init=init, step=step, default_maxiter=200, xp=xp)


class _State(NamedTuple):
    dF: Any  # (B, m, n) residual differences, oldest first (rolling buffer)
    dG: Any  # (B, m, n) map-value differences
    f: Any  # (B, n) previous residual
    g: Any  # (B, n) previous map value


def _step(p, x, r, st: _State, k: int, *, m: int, lam: float, tiny: float, xp) -> Step:
    dev = device(r)
    f, g = r, x + r
    dF, dG = st.dF, st.dG
    if k > 0:
        # The history rolls: drop the oldest difference, append the newest (one copy of
        # the buffer, cheaper than rewriting it whole with `where` on a one-hot slot).
        dF = xp.concat([dF[:, 1:, :], (f - st.f)[:, None, :]], axis=1)
        dG = xp.concat([dG[:, 1:, :], (g - st.g)[:, None, :]], axis=1)
    filled = min(k, m)
    if filled == 0:
        x_new = g
    else:
        # The newest `filled` differences are the last slots; the others are zero.
        valid = xp.arange(m, device=dev) >= m - filled
        both = valid[:, None] & valid[None, :]
        # Gram matrix by `vecdot` (one fused reduction; a batched `matmul` of these thin
        # matrices is several times slower on CPU), its diagonal read off it.
        gram = xp.vecdot(dF[:, :, None, :], dF[:, None, :, :])
        eye = xp.eye(m, dtype=r.dtype, device=dev)
        diag = xp.sum(gram * eye, axis=-1)
        scale = lam * xp.max(diag, axis=-1) + tiny
        H = xp.where(both[None, :, :], gram + scale[:, None, None] * eye, eye)
        rhs = xp.where(valid[None, :], xp.vecdot(dF, f[:, None, :]), xp.zeros_like(diag))
        gamma = small_solve(H, rhs, xp=xp)
        x_new = g - (gamma[:, None, :] @ dG)[:, 0, :]
    r_new = p.b - p.matvec(x_new)
    return Step(x=x_new, r=r_new, state=_State(dF=dF, dG=dG, f=f, g=g))


anderson = function_form(
    Anderson,
    summary="Solve ``A x = b`` by Anderson acceleration of the Neumann (Richardson) iteration.",
    see_also="neumann : The iteration it accelerates.",
    examples="""
>>> J = 0.5 * np.eye(3)  # an adjoint system (I - J^T) u = g
>>> res = inet.linalg.anderson(lambda u: u - J.T @ u, np.ones(3), m=2, rtol=1e-10)
>>> bool(res.success), np.allclose(res.x, 2.0)
(True, True)
""",
)
