"""Broyden's ("good") method specialised to linear systems, limited memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._validate import check_int
from .._xp import vdot, vector_norm
from ._base import AbstractBatchedLinearSolver, _Outcome, _Problem
from ._forms import function_form
from ._iterate import Step, iterate_solver

__all__ = ["Broyden", "broyden"]


@dataclass(frozen=True, kw_only=True)
class Broyden(AbstractBatchedLinearSolver):
    """Broyden's good method on ``F(x) = A x - b``, inverse form, limited memory.

    One product with ``A`` per iteration; ``A^{-1}`` is approximated by at most `m`
    rank-one updates of the identity.

    Parameters
    ----------
    maxiter : int, optional
        Maximum number of iterations, one product with ``A`` each. Default: 200.
    m : int, default: 20
        Rank-one updates kept; after `m` updates the approximation restarts from the
        identity.

    See Also
    --------
    broyden : The function form.
    Anderson : Anderson acceleration, the other quasi-Newton adjoint.

    Notes
    -----
    With ``H_0 = I`` approximating ``A^{-1}`` (right for an adjoint ``A = I - J^T``
    with small ``J``) and ``r = b - A x``::

        s = H r,  y = A s,  x <- x + s,  r <- r - y
        H <- H + (s - H y) (H^T s)^T / <s, H y>

    the Sherman-Morrison form of the rank-one secant update ``B s = y`` [1]_. ``H`` is
    stored as ``I + sum_i c_i d_i^T`` (two ``(m, n)`` buffers per system), so a step
    costs one product with ``A`` and ``O(m n)`` array work. On a linear system the
    method terminates in at most ``2 n`` steps in exact arithmetic [2]_; with a small
    `m` it behaves like a restarted Krylov method. An update whose denominator
    vanishes is skipped.

    This is a dedicated linear version rather than the nonlinear Broyden solver run on
    the affine map ``x -> b - A x``: the residual is updated with the product ``y``
    the update needs anyway (one product per step, not two), the stopping test is the
    linear solvers' ``norm(b - A x)``, the products are counted as ``nmatvec``, and the
    adjoint machinery does not depend on the forward solvers.

    References
    ----------
    .. [1] C. G. Broyden, "A class of methods for solving nonlinear simultaneous
       equations", Math. Comp. 19 (1965).
    .. [2] D. M. Gay, "Some convergence properties of Broyden's method", SIAM J. Numer.
       Anal. 16 (1979).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> J = np.array([[0.2, 0.1], [0.0, 0.3]])
    >>> res = inet.linalg.Broyden(rtol=1e-12).solve(np.eye(2) - J.T, np.ones(2))
    >>> np.allclose(res.x, np.linalg.solve(np.eye(2) - J.T, np.ones(2)))
    True
    """

    rtol: float = 1e-6
    atol: float = 0.0
    maxiter: int | None = None
    m: int = 20
    callback: Callable[[Any], None] | None = None

    def __post_init__(self):
        super().__post_init__()
        check_int(self.m, "m", minimum=1)

    def run(self, problem: _Problem, tol: Any, *, xp: Any) -> _Outcome:
        """Limited-memory Broyden on `problem` (internal layout)."""
        m = self.m
        eps = float(xp.finfo(problem.b.dtype).eps)

        def init(p, x, r, *, xp):
            return _State(C=None, D=None, s=None)

        def step(p, x, r, st, k, *, xp):
            return _step(p, x, r, st, k, m=m, eps=eps, xp=xp)

        return iterate_solver(self, problem, tol, init=init, step=step, default_maxiter=200, xp=xp)


class _State(NamedTuple):
    # H = I + sum_i C[:, i] D[:, i]^T; C, D of shape (B, q, n) with q < m the updates
    # since the last restart, grown by `concat` (None: H = I). Growing keeps the cost
    # of applying H proportional to the updates held, not to the memory `m`.
    C: Any
    D: Any
    # The next step's H r, carried over from the last step (None: compute it).
    s: Any


def _apply(C, D, v, *, xp):
    """``H v = v + C^T (D v)`` for every system."""
    if C is None:
        return v
    return v + (xp.vecdot(D, v[:, None, :])[:, None, :] @ C)[:, 0, :]


def _apply_t(C, D, v, *, xp):
    """``H^T v = v + D^T (C v)`` for every system."""
    if C is None:
        return v
    return v + (xp.vecdot(C, v[:, None, :])[:, None, :] @ D)[:, 0, :]


def _step(p, x, r, st: _State, k: int, *, m: int, eps: float, xp) -> Step:
    C, D, s = st
    if k % m == 0:  # memory full (or first step): restart from H = I
        C = D = None
        s = r
    elif s is None:
        s = _apply(C, D, r, xp=xp)
    y = p.matvec(s)
    Hy = _apply(C, D, y, xp=xp)
    denom = vdot(s, Hy, xp=xp)
    ok = xp.abs(denom) > eps * vector_norm(s, axis=-1, xp=xp) * vector_norm(Hy, axis=-1, xp=xp)
    scale = xp.where(ok, 1.0 / xp.where(ok, denom, xp.ones_like(denom)), xp.zeros_like(denom))
    c = (s - Hy) * scale[:, None]
    d = _apply_t(C, D, s, xp=xp)
    r_new = r - y
    # The next direction without applying H again: H r_new = H r - H y = s - H y, and
    # the update adds c (d . r_new). Systems the driver freezes never use it.
    s_next = (s - Hy) + c * vdot(d, r_new, xp=xp)[:, None]
    c, d = c[:, None, :], d[:, None, :]
    if C is None:
        C, D = c, d
    else:
        C, D = xp.concat([C, c], axis=1), xp.concat([D, d], axis=1)
    return Step(x=x + s, r=r_new, state=_State(C=C, D=D, s=s_next))


broyden = function_form(
    Broyden,
    summary="Solve ``A x = b`` by Broyden's good method (linear, limited memory).",
    see_also="anderson : The other quasi-Newton solver.",
    examples="""
>>> A = np.array([[1.2, 0.1], [-0.2, 0.9]])
>>> b = np.array([[1.0, 0.0], [0.0, 2.0]])  # two systems, one per row
>>> res = inet.linalg.broyden(A, b, rtol=1e-10, batch_axis=0)
>>> res.success, np.allclose(res.x @ A.T, b)
(True, True)
""",
)
