"""BiCGSTAB: short recurrences, constant memory, two products with ``A`` per iteration."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._xp import vdot, vector_norm
from ._base import CODE_BREAKDOWN, CODE_STAGNATED, AbstractBatchedLinearSolver, _Outcome, _Problem
from ._forms import function_form
from ._iterate import Step, iterate

__all__ = ["BiCGSTAB", "bicgstab"]


@dataclass(frozen=True, kw_only=True)
class BiCGSTAB(AbstractBatchedLinearSolver):
    """BiCGSTAB (van der Vorst), right-preconditioned, batched.

    Short recurrences: constant memory per system and two products with ``A`` per
    iteration, but the residual is not monotone and the method may break down.

    Parameters
    ----------
    maxiter : int, optional
        Maximum number of iterations; each costs two products with ``A`` (and with
        `M`). Default: 100.
    M : callable, array or object with ``matvec``, optional
        Right preconditioner approximating ``A^{-1}``.

    See Also
    --------
    bicgstab : The function form.
    GMRES : Minimal residual, more robust, memory growing with `restart`.

    Notes
    -----
    With the shadow residual ``rh = r0`` and ``rho = <rh, r>`` [1]_::

        p <- r + (rho_k / rho_{k-1}) (alpha / omega) (p - omega v)
        v = A p,  alpha = rho_k / <rh, v>,  s = r - alpha v
        t = A s,  omega = <t, s> / <t, t>
        x <- x + alpha p + omega s,  r <- s - omega t

    A system whose half-step residual ``norm(s)`` already meets the tolerance takes
    ``omega = 0``. When ``<rh, r>`` vanishes the shadow residual is reset to the current
    residual; when ``<rh, v>`` vanishes the system stops with status ``"breakdown"``.
    The residual is updated by the recurrence, so at the end it is recomputed as
    ``b - A x``; when the recurrence claimed convergence but the true residual misses the
    tolerance (drift, typically after a near-breakdown in float32), the solve restarts
    from the best iterate with the true residual, up to three times within `maxiter`.
    The residual is updated by recurrence; the reported `residual` is recomputed as
    ``b - A x`` at the end (one more product).

    References
    ----------
    .. [1] H. A. van der Vorst, "Bi-CGSTAB: A fast and smoothly converging variant of
       Bi-CG for the solution of nonsymmetric linear systems", SIAM J. Sci. Stat.
       Comput. 13 (1992).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> res = inet.linalg.BiCGSTAB(rtol=1e-10).solve(np.array([[3.0, 1.0], [1.0, 2.0]]),
    ...                                               np.array([1.0, 0.0]))
    >>> np.round(res.x, 6)
    array([ 0.4, -0.2])
    """

    rtol: float = 1e-6
    atol: float = 0.0
    maxiter: int | None = None
    M: Any = None
    callback: Callable[[Any], None] | None = None

    def run(self, problem: _Problem, tol: Any, *, xp: Any) -> _Outcome:
        """BiCGSTAB on `problem` (internal layout), with residual replacement."""
        maxiter = 100 if self.maxiter is None else self.maxiter
        eps = float(xp.finfo(problem.b.dtype).eps)

        def attempt(prob, budget):
            return iterate(
                prob,
                init=_init,
                step=lambda p, x, r, s, k, *, xp: _step(p, x, r, s, tol=tol, eps=eps, xp=xp),
                matvecs_per_step=2,
                tol=tol,
                maxiter=budget,
                callback=self.callback,
                verify=True,
                xp=xp,
            )

        out = attempt(problem, maxiter)
        # Residual replacement: when the recurrence claimed convergence but the true
        # residual b - A x disagrees (it drifted, typically after a near-breakdown in
        # low precision), restart from the best iterate with the true residual, while
        # the iteration budget lasts.
        for _ in range(_MAX_RESTARTS):
            used = int(xp.max(out.nit))
            if used >= maxiter or not bool(xp.any(out.code == CODE_STAGNATED)):
                break
            again = attempt(problem._replace(x0=out.x), maxiter - used)
            out = _merge(out, again, xp=xp)
        return out


bicgstab = function_form(
    BiCGSTAB,
    summary="Solve ``A x = b`` by BiCGSTAB, given only ``v -> A v``.",
    returns="""
``nmatvec`` is ``2 * nit`` plus one for the final residual check.
""",
    see_also="gmres : The more robust alternative.",
    examples="""
>>> A = np.array([[3.0, 1.0], [1.0, 2.0]])
>>> res = inet.linalg.bicgstab(lambda v: A @ v, np.array([1.0, 0.0]), rtol=1e-10)
>>> bool(res.success), np.allclose(A @ res.x, [1.0, 0.0])
(True, True)
""",
)


class _State(NamedTuple):
    r_hat: Any  # (B, n) shadow residual
    p: Any  # (B, n) search direction (in the preconditioned variable)
    v: Any  # (B, n) A M p
    rho: Any  # (B,)
    alpha: Any  # (B,)
    omega: Any  # (B,)


_MAX_RESTARTS = 3


def _merge(first, second, *, xp):
    """One outcome for two consecutive runs (the second started at the first's x)."""
    return dataclasses.replace(
        second,
        nit=first.nit + second.nit,
        nfev=first.nfev + second.nfev,
        history=list(first.history) + list(second.history[1:]),
    )


def _init(p, x, r, *, xp):
    ones = xp.ones_like(r[:, 0])
    zeros = xp.zeros_like(r)
    return _State(r_hat=r, p=zeros, v=zeros, rho=ones, alpha=ones, omega=ones)


def _step(prob, x, r, st: _State, *, tol, eps, xp) -> Step:
    matvec, precond = prob.matvec, prob.precond
    ones = xp.ones_like(st.rho)
    zeros = xp.zeros_like(st.rho)
    rnorm = vector_norm(r, axis=-1, xp=xp)
    rho = vdot(st.r_hat, r, xp=xp)
    # Lost bi-orthogonality (<rh, r> ~ 0): restart the shadow residual, rh = r, p = r.
    lost = xp.abs(rho) <= eps * vector_norm(st.r_hat, axis=-1, xp=xp) * rnorm
    r_hat = xp.where(lost[:, None], r, st.r_hat)
    rho = xp.where(lost, rnorm * rnorm, rho)
    # Frozen (converged) systems may hold zeros here: guard every division.
    rho_old = xp.where(st.rho == 0, ones, st.rho)
    omega_old = xp.where(st.omega == 0, ones, st.omega)
    beta = xp.where(lost, zeros, (rho / rho_old) * (st.alpha / omega_old))
    p = r + beta[:, None] * (st.p - st.omega[:, None] * st.v)
    p_hat = p if precond is None else precond(p)
    v = matvec(p_hat)
    sigma = vdot(r_hat, v, xp=xp)
    broken = xp.abs(sigma) <= eps * vector_norm(r_hat, axis=-1, xp=xp) * vector_norm(
        v, axis=-1, xp=xp
    )
    alpha = xp.where(broken, zeros, rho / xp.where(broken, ones, sigma))
    s = r - alpha[:, None] * v
    half = vector_norm(s, axis=-1, xp=xp) <= tol
    s_hat = s if precond is None else precond(s)
    t = matvec(s_hat)
    tt = vdot(t, t, xp=xp)
    stop = half | (tt == 0)
    omega = xp.where(stop, zeros, vdot(t, s, xp=xp) / xp.where(stop, ones, tt))
    x_new = x + alpha[:, None] * p_hat + omega[:, None] * s_hat
    r_new = s - omega[:, None] * t
    # omega = 0 without convergence stalls the recurrence (the next beta divides by it).
    stalled = ~half & (xp.abs(omega) <= eps)
    fail = CODE_BREAKDOWN * xp.astype(broken | stalled, xp.int64)
    x_new = xp.where(broken[:, None], x, x_new)
    r_new = xp.where(broken[:, None], r, r_new)
    state = _State(r_hat=r_hat, p=p, v=v, rho=rho, alpha=alpha, omega=xp.where(stop, ones, omega))
    return Step(x=x_new, r=r_new, state=state, fail=fail)
