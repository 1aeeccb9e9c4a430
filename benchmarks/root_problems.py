"""Root problems from Moré, Garbow and Hillstrom (1981): which methods solve them.

Ten of the standard test problems for nonlinear equations, at their standard starting
points: implicitnet's root-capable methods and SciPy's of the same families, at default
settings, ``rtol=1e-8`` and ``maxiter=2000``. A problem counts as solved when the
solver reports success and ``||F(x)|| <= 1e-6 max(1, ||F(x0)||)`` holds when recomputed
here. Printed per method: "ok" or "no" and the function evaluations used.

Reference: J. J. Moré, B. S. Garbow and K. E. Hillstrom, "Testing unconstrained
optimization software", ACM Trans. Math. Software 7 (1981), problems 1, 3, 13, 7, 26,
30, 31, 28 and 27 in that paper's numbering, and the gradient of its problem 14 (Wood's
function) as a system of equations.

Run: ``python benchmarks/root_problems.py``.
"""

from __future__ import annotations

import numpy as np

import implicitnet as inet


def rosenbrock(x):
    return np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def powell_badly_scaled(x):
    return np.array([1e4 * x[0] * x[1] - 1, np.exp(-x[0]) + np.exp(-x[1]) - 1.0001])


def powell_singular(x):
    return np.array(
        [
            x[0] + 10 * x[1],
            np.sqrt(5) * (x[2] - x[3]),
            (x[1] - 2 * x[2]) ** 2,
            np.sqrt(10) * (x[0] - x[3]) ** 2,
        ]
    )


def helical_valley(x):
    theta = np.arctan2(x[1], x[0]) / (2 * np.pi)
    return np.array([10 * (x[2] - 10 * theta), 10 * (np.hypot(x[0], x[1]) - 1), x[2]])


def trigonometric(x):
    n = x.size
    return n - np.sum(np.cos(x)) + np.arange(1, n + 1) * (1 - np.cos(x)) - np.sin(x)


def broyden_tridiagonal(x):
    padded = np.concatenate([[0.0], x, [0.0]])
    return (3 - 2 * x) * x - padded[:-2] - 2 * padded[2:] + 1


def broyden_banded(x):
    n = x.size
    out = np.empty(n)
    for i in range(n):
        near = [j for j in range(max(0, i - 5), min(n, i + 2)) if j != i]
        out[i] = x[i] * (2 + 5 * x[i] ** 2) + 1 - sum(x[j] * (1 + x[j]) for j in near)
    return out


def discrete_boundary_value(x):
    n = x.size
    h = 1 / (n + 1)
    t = np.arange(1, n + 1) * h
    padded = np.concatenate([[0.0], x, [0.0]])
    return 2 * x - padded[:-2] - padded[2:] + h**2 * (x + t + 1) ** 3 / 2


def brown_almost_linear(x):
    n = x.size
    out = x + np.sum(x) - (n + 1)
    out[-1] = np.prod(x) - 1
    return out


def wood(x):
    return np.array(
        [
            -200 * x[0] * (x[1] - x[0] ** 2) - (1 - x[0]),
            200 * (x[1] - x[0] ** 2) + 20.2 * (x[1] - 1) + 19.8 * (x[3] - 1),
            -180 * x[2] * (x[3] - x[2] ** 2) - (1 - x[2]),
            180 * (x[3] - x[2] ** 2) + 20.2 * (x[3] - 1) + 19.8 * (x[1] - 1),
        ]
    )


def _boundary_start(n):
    t = np.arange(1, n + 1) / (n + 1)
    return t * (t - 1)


PROBLEMS = [
    ("Rosenbrock", rosenbrock, [-1.2, 1.0]),
    ("Powell badly scaled", powell_badly_scaled, [0.0, 1.0]),
    ("Powell singular", powell_singular, [3.0, -1.0, 0.0, 1.0]),
    ("helical valley", helical_valley, [-1.0, 0.0, 0.0]),
    ("trigonometric, n=10", trigonometric, [0.1] * 10),
    ("Broyden tridiagonal, n=20", broyden_tridiagonal, [-1.0] * 20),
    ("Broyden banded, n=20", broyden_banded, [-1.0] * 20),
    ("discrete boundary value, n=20", discrete_boundary_value, _boundary_start(20)),
    ("Brown almost-linear, n=10", brown_almost_linear, [0.5] * 10),
    ("Wood (gradient), n=4", wood, [-3.0, -1.0, -3.0, -1.0]),
]

METHODS = [
    "anderson",
    "broyden",
    "newton_krylov",
    "scipy:anderson",
    "scipy:broyden1",
    "scipy:krylov",
]


def run(F, x0, method):
    x0 = np.asarray(x0, dtype=np.float64)
    with np.errstate(all="ignore"):
        F0 = np.linalg.norm(F(x0))
        try:
            res = inet.solvers.root(F, x0, method=method, rtol=1e-8, maxiter=2000)
        except Exception as exc:  # a SciPy method may raise on a bad step
            return False, f"error ({type(exc).__name__})"
        final = np.linalg.norm(F(np.asarray(res.x)))
    ok = bool(res.success) and final <= 1e-6 * max(1.0, F0)
    return ok, int(res.nfev)


def main():
    width = max(len(m) for m in METHODS) + 1
    print(f"{'problem':30s}" + "".join(f"{m:>{width}s}" for m in METHODS))
    solved = dict.fromkeys(METHODS, 0)
    for name, F, x0 in PROBLEMS:
        cells = []
        for method in METHODS:
            ok, nfev = run(F, x0, method)
            solved[method] += ok
            cells.append(f"{('ok ' if ok else 'no ') + str(nfev):>{width}s}")
        print(f"{name:30s}" + "".join(cells), flush=True)
    print(f"{'solved (of 10)':30s}" + "".join(f"{solved[m]:>{width}d}" for m in METHODS))


if __name__ == "__main__":
    main()
