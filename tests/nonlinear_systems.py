"""Square systems of nonlinear equations with known solvability, for root finders.

Two collections, each a list of :class:`System` (name, function, standard start):

* :data:`MGH_SYSTEMS`: the fourteen square systems of Moré, Garbow and Hillstrom
  (1981), the test set of MINPACK's ``hybrd``, at the dimensions MINPACK's test driver
  uses (Watson at n = 6 and 9, Chebyquad at n = 5 to 9, the scalable ones at n = 10);
  the paper also starts each from ``10 x0`` and ``100 x0`` (:func:`mgh_cases`). Wood's
  and Watson's functions and the variably dimensioned function are least-squares
  problems in the paper; as systems they are the gradients of their sums of squares
  (halved), as in MINPACK's driver. Chebyquad at n = 8 has no zero (its least-squares
  minimum is positive): no method can solve it.
* :data:`SCIPY_SYSTEMS`: the problems of SciPy's tests of its nonlinear solvers
  (``scipy/optimize/tests/test_nonlin.py``: ``F`` to ``F6`` and the linear system of
  ``TestLinear``), at the starts used there.

The functions take a 1-D array and are written against the array API (the namespace
of `x`), so they run on every backend; constants are built once with NumPy and moved
to `x`'s namespace, dtype and device on each call.

References
----------
J. J. Moré, B. S. Garbow and K. E. Hillstrom, "Testing unconstrained optimization
software", ACM Trans. Math. Software 7 (1981) 17-41.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from implicitnet import namespace
from implicitnet._xp import device

__all__ = ["MGH_SYSTEMS", "SCIPY_SYSTEMS", "System", "mgh_cases"]


class System(NamedTuple):
    """A square system ``F(x) = 0`` with its standard starting point."""

    name: str
    F: Callable[[Any], Any]
    x0: tuple[float, ...]


def _const(values, x):
    xp = namespace(x)
    return xp.asarray(np.asarray(values, dtype=np.float64), dtype=x.dtype, device=device(x))


# -- Moré, Garbow and Hillstrom ----------------------------------------------------------


def rosenbrock(x):
    xp = namespace(x)
    return xp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def powell_singular(x):
    xp = namespace(x)
    return xp.stack(
        [
            x[0] + 10.0 * x[1],
            math.sqrt(5.0) * (x[2] - x[3]),
            (x[1] - 2.0 * x[2]) ** 2,
            math.sqrt(10.0) * (x[0] - x[3]) ** 2,
        ]
    )


def powell_badly_scaled(x):
    xp = namespace(x)
    return xp.stack([1e4 * x[0] * x[1] - 1.0, xp.exp(-x[0]) + xp.exp(-x[1]) - 1.0001])


def wood(x):
    """Half the gradient of Wood's function (MGH problem 14)."""
    xp = namespace(x)
    return xp.stack(
        [
            -200.0 * x[0] * (x[1] - x[0] ** 2) - (1.0 - x[0]),
            200.0 * (x[1] - x[0] ** 2) + 20.2 * (x[1] - 1.0) + 19.8 * (x[3] - 1.0),
            -180.0 * x[2] * (x[3] - x[2] ** 2) - (1.0 - x[2]),
            180.0 * (x[3] - x[2] ** 2) + 20.2 * (x[3] - 1.0) + 19.8 * (x[1] - 1.0),
        ]
    )


def helical_valley(x):
    """MGH problem 7; the angle ``theta`` lies in ``(-1/4, 3/4)`` as in the paper."""
    xp = namespace(x)
    theta = xp.atan2(x[1], x[0]) / (2.0 * math.pi)
    theta = xp.where(theta < -0.25, theta + 1.0, theta)
    return xp.stack(
        [10.0 * (x[2] - 10.0 * theta), 10.0 * (xp.sqrt(x[0] ** 2 + x[1] ** 2) - 1.0), x[2]]
    )


def _watson_tables(n):
    t = np.arange(1, 30) / 29.0
    powers = np.arange(n)
    V = t[:, None] ** powers  # t^(j-1)
    W = np.zeros((29, n))
    W[:, 1:] = powers[1:] * t[:, None] ** (powers[1:] - 1)  # (j-1) t^(j-2)
    return V, W


def watson(x):
    """Half the gradient of Watson's sum of squares (MGH problem 20)."""
    xp = namespace(x)
    n = x.shape[0]
    V_np, W_np = _watson_tables(n)
    V, W = _const(V_np, x), _const(W_np, x)
    s = xp.matmul(V, x)
    r = xp.matmul(W, x) - s**2 - 1.0  # the 29 polynomial residuals
    J = W - 2.0 * s[:, None] * V
    grad = xp.matmul(xp.matrix_transpose(J), r)
    r30 = x[0]
    r31 = x[1] - x[0] ** 2 - 1.0
    e = _const(np.eye(n)[:2], x)
    return grad + (r30 - 2.0 * x[0] * r31) * e[0, :] + r31 * e[1, :]


def chebyquad(x):
    """MGH problem 35 with m = n: shifted Chebyshev moments minus their integrals."""
    xp = namespace(x)
    n = x.shape[0]
    y = 2.0 * x - 1.0
    prev, cur = xp.ones_like(x), y
    rows = []
    for i in range(1, n + 1):
        exact = 0.0 if i % 2 else -1.0 / (i * i - 1)
        rows.append(xp.sum(cur) / n - exact)
        prev, cur = cur, 2.0 * y * cur - prev
    return xp.stack(rows)


def brown_almost_linear(x):
    xp = namespace(x)
    n = x.shape[0]
    head = x[:-1] + xp.sum(x) - (n + 1.0)
    return xp.concat([head, xp.reshape(xp.prod(x) - 1.0, (1,))])


def _grid(x):
    n = x.shape[0]
    return 1.0 / (n + 1), _const(np.arange(1, n + 1) / (n + 1), x)


def discrete_boundary_value(x):
    xp = namespace(x)
    h, t = _grid(x)
    zero = xp.zeros_like(x[:1])
    left = xp.concat([zero, x[:-1]])
    right = xp.concat([x[1:], zero])
    return 2.0 * x - left - right + h**2 * (x + t + 1.0) ** 3 / 2.0


def discrete_integral_equation(x):
    xp = namespace(x)
    n = x.shape[0]
    h, t = _grid(x)
    cube = (x + t + 1.0) ** 3
    lower = _const(np.tril(np.ones((n, n))), x)  # sums over j <= i
    upper = _const(np.triu(np.ones((n, n)), 1), x)  # sums over j > i
    inner = (1.0 - t) * xp.matmul(lower, t * cube) + t * xp.matmul(upper, (1.0 - t) * cube)
    return x + h * inner / 2.0


def trigonometric(x):
    xp = namespace(x)
    n = x.shape[0]
    i = _const(np.arange(1, n + 1), x)
    return n - xp.sum(xp.cos(x)) + i * (1.0 - xp.cos(x)) - xp.sin(x)


def variably_dimensioned(x):
    """Half the gradient of the variably dimensioned sum of squares (MGH problem 25)."""
    xp = namespace(x)
    j = _const(np.arange(1, x.shape[0] + 1), x)
    s = xp.sum(j * (x - 1.0))
    return x - 1.0 + j * (s * (1.0 + 2.0 * s * s))


def broyden_tridiagonal(x):
    xp = namespace(x)
    zero = xp.zeros_like(x[:1])
    left = xp.concat([zero, x[:-1]])
    right = xp.concat([x[1:], zero])
    return (3.0 - 2.0 * x) * x - left - 2.0 * right + 1.0


def broyden_banded(x):
    xp = namespace(x)
    n = x.shape[0]
    i, j = np.indices((n, n))
    band = _const(((j >= i - 5) & (j <= i + 1) & (j != i)).astype(np.float64), x)
    return x * (2.0 + 5.0 * x**2) + 1.0 - xp.matmul(band, x * (1.0 + x))


def _uniform(n, value):
    return (float(value),) * n


def _ramp(n):
    return tuple(float(v) for v in np.arange(1, n + 1) / (n + 1))


def _parabola(n):
    t = np.arange(1, n + 1) / (n + 1)
    return tuple(float(v) for v in t * (t - 1.0))


MGH_SYSTEMS = [
    System("Rosenbrock", rosenbrock, (-1.2, 1.0)),
    System("Powell singular", powell_singular, (3.0, -1.0, 0.0, 1.0)),
    System("Powell badly scaled", powell_badly_scaled, (0.0, 1.0)),
    System("Wood", wood, (-3.0, -1.0, -3.0, -1.0)),
    System("helical valley", helical_valley, (-1.0, 0.0, 0.0)),
    System("Watson, n=6", watson, _uniform(6, 0.0)),
    System("Watson, n=9", watson, _uniform(9, 0.0)),
    *(System(f"Chebyquad, n={n}", chebyquad, _ramp(n)) for n in range(5, 10)),
    System("Brown almost-linear, n=10", brown_almost_linear, _uniform(10, 0.5)),
    System("discrete boundary value, n=10", discrete_boundary_value, _parabola(10)),
    System("discrete integral eq., n=10", discrete_integral_equation, _parabola(10)),
    System("trigonometric, n=10", trigonometric, _uniform(10, 0.1)),
    System(
        "variably dimensioned, n=10",
        variably_dimensioned,
        tuple(1.0 - k / 10 for k in range(1, 11)),
    ),
    System("Broyden tridiagonal, n=10", broyden_tridiagonal, _uniform(10, -1.0)),
    System("Broyden banded, n=10", broyden_banded, _uniform(10, -1.0)),
]


def mgh_cases(factors=(1, 10, 100)):
    """``(name, F, x0)`` for every MGH system started at each multiple of its start.

    As in the paper, a start that is zero (Watson's) becomes ``factor`` in every
    component for a factor other than 1.
    """
    cases = []
    for system in MGH_SYSTEMS:
        for k in factors:
            if k == 1:
                x0 = system.x0
            elif any(system.x0):
                x0 = tuple(k * v for v in system.x0)
            else:
                x0 = (float(k),) * len(system.x0)
            label = system.name if k == 1 else f"{system.name}, {k}x0"
            cases.append(System(label, system.F, x0))
    return cases


# -- SciPy's tests of its nonlinear solvers -----------------------------------------------


def scipy_f(x):
    """``-D x - c (x . x) x`` with ``D = diag(3, 2, 1.5, 1, 0.5)``, ``c = 0.01``."""
    xp = namespace(x)
    d = _const([3.0, 2.0, 1.5, 1.0, 0.5], x)
    return -d * x - 0.01 * xp.sum(x * x) * x


def identity(x):
    return x * 1.0


def _f3_tables():
    A = np.array([[-2.0, 1.0, 0.0], [1.0, -2.0, 1.0], [0.0, 1.0, -2.0]])
    return A, np.array([1.0, 2.0, 3.0])


def scipy_f3(x):
    """The tridiagonal linear system ``A x - b`` of SciPy's ``F3``."""
    A, b = _f3_tables()
    return namespace(x).matmul(_const(A, x), x) - _const(b, x)


def powell_scipy(x):
    """Powell's badly scaled function, SciPy's form (``1 + 1/A`` for 1.0001)."""
    xp = namespace(x)
    return xp.stack([1e4 * x[0] * x[1] - 1.0, xp.exp(-x[0]) + xp.exp(-x[1]) - (1.0 + 1e-4)])


def pressure_network(x):
    """Four parallel pipes: equal pressures ``0.5 Q_i^2`` and a total flow of 4."""
    xp = namespace(x)
    p = 0.5 * x**2
    return xp.concat([p[1:] - p[0], xp.reshape(xp.sum(x) - 4.0, (1,))])


# SciPy's F6 multiplies its residual by -J0^{-1} for a fixed 2 x 2 matrix J0.
_J0 = np.array([[-4.256, 14.7], [0.8394989, 0.59964207]])
_J0_INV = np.linalg.inv(_J0)


def scipy_f6(x):
    xp = namespace(x)
    v = xp.stack(
        [
            (x[0] + 3.0) * (x[1] ** 5 - 7.0) + 18.0,
            xp.sin(x[1] * xp.exp(x[0]) - 1.0),
        ]
    )
    return -xp.matmul(_const(_J0_INV, x), v)


def _linear_tables(n=20, seed=123):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n)), rng.standard_normal(n)


def dense_linear(x):
    """``A x - b`` with a dense random ``20 x 20`` matrix (SciPy's ``TestLinear``)."""
    A, b = _linear_tables(x.shape[0])
    return namespace(x).matmul(_const(A, x), x) - _const(b, x)


SCIPY_SYSTEMS = [
    System("SciPy F", scipy_f, _uniform(5, 1.0)),
    System("SciPy F2", identity, tuple(float(v) for v in range(1, 7))),
    System("SciPy F2 (lucky)", identity, _uniform(6, 0.0)),
    System("SciPy F3", scipy_f3, (1.0, 2.0, 3.0)),
    System("SciPy F4 (Powell)", powell_scipy, (-1.0, -2.0)),
    System("SciPy F5 (pressure)", pressure_network, (2.0, 0.0, 2.0, 0.0)),
    System("SciPy F6", scipy_f6, (-0.5, 1.4)),
    System("SciPy linear, n=20", dense_linear, _uniform(20, 0.0)),
]
