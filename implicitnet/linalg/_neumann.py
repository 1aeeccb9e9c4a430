"""Truncated Neumann series: the cheapest approximate adjoint solve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._base import AbstractBatchedLinearSolver, _Outcome, _Problem
from ._forms import function_form
from ._iterate import Step, iterate_solver

__all__ = ["Neumann", "neumann"]


@dataclass(frozen=True, kw_only=True)
class Neumann(AbstractBatchedLinearSolver):
    """Truncated Neumann series ``x = sum_k (I - A)^k b``, i.e. Richardson iteration.

    The cheapest adjoint solve: it converges when the layer is contractive, at its rate.

    Parameters
    ----------
    maxiter : int, optional
        Maximum number of terms after the first (one product with ``A`` each).
        Default: 50.

    See Also
    --------
    neumann : The function form.

    Notes
    -----
    For the adjoint of an implicit layer, ``u = g + J^T u`` with ``J`` the Jacobian of
    the layer at its fixed point, the operator is ``A = I - J^T`` (``A(u) = u -
    vjp(u)``), the same operator GMRES is given. Richardson iteration from ``x0 = 0``::

        x_{k+1} = x_k + (b - A x_k),   r_{k+1} = r_k - A r_k

    produces the partial sums ``x_k = sum_{i<k} (I - A)^i b = sum_{i<k} (J^T)^i g``:
    the truncated Neumann series. It converges when the spectral radius of ``I - A``
    is below one (a contractive layer), linearly at that rate; the residual is the next
    term of the series. A residual that grows beyond ``1e8`` times its initial value
    stops the system with status ``"diverged"``; the best partial sum is returned.
    A few terms (``maxiter`` small, tolerance loose) give the cheap approximate
    gradients used by some DEQ training schemes.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> J = np.array([[0.2, 0.1], [0.0, 0.3]])
    >>> g = np.array([1.0, 1.0])
    >>> res = inet.linalg.Neumann(rtol=1e-12, maxiter=100).solve(lambda u: u - J.T @ u, g)
    >>> np.allclose(res.x, np.linalg.solve(np.eye(2) - J.T, g))
    True
    """

    rtol: float = 1e-6
    atol: float = 0.0
    maxiter: int | None = None
    callback: Callable[[Any], None] | None = None

    def run(self, problem: _Problem, tol: Any, *, xp: Any) -> _Outcome:
        """Richardson iteration on `problem` (internal layout)."""
        return iterate_solver(self, problem, tol, init=_init, step=_step, default_maxiter=50, xp=xp)


def _init(p, x, r, *, xp) -> None:
    return None  # no state: the residual is the next term


def _step(p, x, r, state, k, *, xp) -> Step:
    return Step(x=x + r, r=r - p.matvec(r), state=None)


neumann = function_form(
    Neumann,
    summary="Solve ``A x = b`` by the truncated Neumann series (Richardson iteration).",
    see_also="anderson : Anderson acceleration of the same iteration.",
    examples="""
>>> res = inet.linalg.neumann(lambda u: u - 0.5 * u, np.ones(3), rtol=1e-8)
>>> np.allclose(res.x, 2.0), res.nit
(True, 27)
""",
)
