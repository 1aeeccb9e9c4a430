"""The loop shared by the one-step linear solvers (BiCGSTAB, Neumann, Broyden, Anderson).

A solver gives ``init`` and ``step``; this driver does the rest, for a batch of
independent systems: per-system convergence (a converged or failed system is frozen),
product counting, non-finite and divergence checks, the best iterate, the residual
history, the callback, and at most one host synchronisation per iteration.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._xp import vector_norm
from ._base import (
    CODE_DIVERGED,
    CODE_STAGNATED,
    _Outcome,
    _Problem,
    initial_residual,
    int_zeros,
)

#: A residual this many times the initial one counts as divergence.
DIVERGENCE_FACTOR = 1e8


class Step(NamedTuple):
    """What one iteration returns (internal ``(B, n)`` layout)."""

    x: Any  # (B, n) new iterate
    r: Any  # (B, n) its residual b - A x
    state: Any  # solver state for the next step
    fail: Any = None  # (B,) int status code, 0 where the step was fine


def iterate(
    p: _Problem,
    *,
    init,
    step,
    tol,
    maxiter: int,
    callback,
    xp,
    matvecs_per_step: int = 1,
    verify: bool = False,
) -> _Outcome:
    """Run ``step`` until every system converged or failed, or `maxiter` steps.

    ``init(p, x, r, *, xp)`` builds the state; ``step(p, x, r, state, k, *, xp)``
    returns a :class:`Step` (``k`` counts the iterations so far). With `verify`, the
    reported residual is recomputed as ``b - A x`` at the end (one more product),
    for methods whose residual is updated by a recurrence that may drift.
    """
    b = p.b
    B = b.shape[0]
    x, r, nfev = initial_residual(p, xp=xp)
    rnorm = vector_norm(r, axis=-1, xp=xp)
    limit = DIVERGENCE_FACTOR * rnorm
    converged = rnorm <= tol
    code = int_zeros(B, like=b, xp=xp)
    nit = int_zeros(B, like=b, xp=xp)
    history = [rnorm]
    best_x, best_r = x, rnorm
    state = init(p, x, r, xp=xp)
    steps = 0
    for k in range(maxiter):
        running = ~converged & (code == 0)
        if not bool(xp.any(running)):
            break
        out = step(p, x, r, state, k, xp=xp)
        steps += 1
        state = out.state
        nfev = nfev + matvecs_per_step * xp.astype(running, nfev.dtype)
        nit = nit + xp.astype(running, nit.dtype)
        rnorm_new = vector_norm(out.r, axis=-1, xp=xp)
        finite = xp.isfinite(rnorm_new)
        if out.fail is not None:
            code = xp.where(running & (out.fail != 0), out.fail, code)
        code = xp.where(running & (~finite | (rnorm_new > limit)), CODE_DIVERGED, code)
        keep = running & finite
        x = xp.where(keep[:, None], out.x, x)
        r = xp.where(keep[:, None], out.r, r)
        rnorm = xp.where(keep, rnorm_new, rnorm)
        better = keep & (rnorm < best_r)
        best_x = xp.where(better[:, None], x, best_x)
        best_r = xp.where(better, rnorm, best_r)
        converged = converged | (keep & (rnorm <= tol))
        history.append(rnorm)
        if callback is not None:
            callback(rnorm if p.batched else rnorm[0])

    residual = best_r
    if verify and steps:
        ran = nit > 0
        r_true = b - p.matvec(best_x)
        nfev = nfev + xp.astype(ran, nfev.dtype)
        true_norm = vector_norm(r_true, axis=-1, xp=xp)
        checked = ran & xp.isfinite(true_norm)
        code = xp.where(ran & ~checked, CODE_DIVERGED, code)
        residual = xp.where(checked, true_norm, best_r)
        # The recurrence said converged but the true residual disagrees: the tolerance
        # is below what the recurrence can resolve in this dtype.
        drifted = ran & (best_r <= tol) & ~(residual <= tol)
        code = xp.where(drifted & (code == 0), CODE_STAGNATED, code)
    converged = residual <= tol
    return _Outcome(
        x=best_x,
        residual=residual,
        converged=converged,
        nit=nit,
        nfev=nfev,
        history=history,
        code=code,
    )


def iterate_solver(solver, p: _Problem, tol, *, init, step, default_maxiter: int, xp) -> _Outcome:
    """:func:`iterate` (one product with ``A`` per step, no final check) with the
    `maxiter` (`default_maxiter` when it is None) and the `callback` of `solver`."""
    maxiter = default_maxiter if solver.maxiter is None else solver.maxiter
    callback = solver.callback
    return iterate(p, init=init, step=step, tol=tol, maxiter=maxiter, callback=callback, xp=xp)
