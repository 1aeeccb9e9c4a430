"""Picard iteration (plain fixed-point iteration) with optional damping."""

from __future__ import annotations

from dataclasses import dataclass

from .._validate import check_real
from ._base import AbstractIterativeSolver, Step, point_value

__all__ = ["Picard"]


@dataclass(frozen=True, kw_only=True)
class Picard(AbstractIterativeSolver):
    """Iterate ``x <- (1 - damping) * f(x, *args) + damping * x``.

    In terms of the residual ``g(x) = f(x, *args) - x`` the step is
    ``x <- x + (1 - damping) * g(x)``. On a root problem ``F(x, *args) = 0`` the same
    step is taken with ``g = F``: it is Picard's iteration on the map ``x + F(x)`` and
    converges when ``I + (1 - damping) J`` is a contraction near the root (``J`` the
    Jacobian of `F`); this is SciPy's ``linearmixing`` with ``alpha = 1 - damping``.

    Parameters
    ----------
    damping : float, default: 0.0
        Weight on the previous iterate, in ``[0, 1)``.
    stagnation_window, divergence_factor
        See :class:`AbstractIterativeSolver`.

    Notes
    -----
    Converges linearly, at the rate of the map's contraction factor, when `f` is a
    contraction; one function evaluation per iteration and no memory.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> res = inet.solvers.fixed_point(np.cos, np.array([1.0]), method=inet.Picard(),
    ...                               rtol=1e-10, maxiter=200)
    >>> round(float(res.x[0]), 6)
    0.739085
    """

    damping: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_real(self.damping, "damping", low=0.0, high=1.0, high_open=True)

    def init(self, g, x, gx, *, xp):
        return None

    def step(self, g, x, gx, state, *, xp):
        # x_{k+1} = x_k + (1 - damping) * g(x_k) = (1 - damping) f(x_k) + damping x_k;
        # undamped on a fixed-point problem, f(x_k) itself (no new array: an unrolled
        # backward pass then keeps one array per iteration, as a plain loop does)
        if self.damping == 0.0:
            x_new = point_value(g, x, gx, xp=xp)
        else:
            x_new = x + (1.0 - self.damping) * gx
        return Step(x_new, g(x_new), state)
