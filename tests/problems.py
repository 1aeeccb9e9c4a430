"""Fixed, shared solver problems with known answers (reuse these in every test file).

Each function returns plain NumPy data or callables written against the array API
(``implicitnet.namespace``), so one problem runs on every backend.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla

from implicitnet import namespace
from implicitnet.solvers import fixed_point

#: The Dottie number: the solution of x = cos(x).
DOTTIE = 0.7390851332151607


def cos_map(x):
    """x -> cos(x), elementwise; fixed point `DOTTIE` in every element."""
    return namespace(x).cos(x)


def kepler_map(E, M, e):
    """Kepler's equation M = E - e sin(E) as the fixed point E = M + e sin(E)."""
    return M + e * namespace(E, M).sin(E)


def kepler_reference(M, e):
    """Eccentric anomaly E solving M = E - e sin E (float64 Newton, to round-off)."""
    M = np.asarray(M, dtype=np.float64)
    E = np.where(e < 0.8, M, np.pi * np.ones_like(M))
    for _ in range(100):
        step = (E - e * np.sin(E) - M) / (1.0 - e * np.cos(E))
        E = E - step
        if np.max(np.abs(step)) < 1e-16:
            break
    return E


def rosenbrock_root(x):
    """The Rosenbrock-type system F(x) = (10 (x1 - x0^2), 1 - x0); root (1, 1).

    Its Jacobian is far from -I (methods whose first model is -I/beta struggle); the
    classic start is (-1.2, 1).
    """
    xp = namespace(x)
    return xp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


ROSENBROCK_START = (-1.2, 1.0)
ROSENBROCK_ROOT = (1.0, 1.0)


def affine(z, A, c):
    """z -> A z + c on the last axis (batched rows allowed)."""
    xp = namespace(z, A, c)
    return xp.matmul(z, xp.matrix_transpose(A)) + c


def symmetric_matrix(n, lo, hi, *, seed=0):
    """``Q diag(lam) Q^T`` with eigenvalues evenly spread in ``[lo, hi]``."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.linspace(lo, hi, n)) @ Q.T


def slow_contraction(n=20, rho=0.98, *, seed=0):
    """An affine contraction with rate `rho` (symmetric, eigenvalues in [-rho, rho]).

    Returns ``(A, c, solution)``; Picard needs about ``log(tol) / log(rho)``
    iterations, accelerated methods far fewer.
    """
    A = symmetric_matrix(n, -rho, rho, seed=seed)
    c = np.random.default_rng(seed + 1).uniform(-1, 1, n)
    return A, c, np.linalg.solve(np.eye(n) - A, c)


def expansive_map(n=6, norm=1.5, *, seed=0):
    """An affine map with spectral norm `norm` > 1 and a well-posed fixed point.

    Eigenvalues in ``[-norm, 0.5]``: Picard diverges, Anderson and Broyden do not.
    Returns ``(A, c, solution)``.
    """
    A = symmetric_matrix(n, -norm, 0.5, seed=seed)
    c = np.random.default_rng(seed + 1).uniform(-1, 1, n)
    return A, c, np.linalg.solve(np.eye(n) - A, c)


def deq_cell(z, W, inj):
    """The DEQ cell z -> tanh(z W^T + inj) (batched rows)."""
    xp = namespace(z, W, inj)
    return xp.tanh(xp.matmul(z, xp.matrix_transpose(W)) + inj)


def deq_problem(d=16, batch=5, rho=0.9, *, scale=0.3, seed=0):
    """``(W, inj)`` for `deq_cell`, with ``||W||_2 = rho`` and per-sample injections."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, d))
    W *= rho / np.linalg.norm(W, 2)
    inj = scale * rng.standard_normal((batch, d))
    return W, inj


def deq_reference(W, inj):
    """The DEQ cell's fixed point per sample, by float64 Picard to round-off."""
    rho = np.linalg.norm(W, 2)
    z = np.zeros_like(inj)
    for _ in range(100_000):
        z_new = np.tanh(z @ W.T + inj)
        step = np.max(np.abs(z_new - z))
        z = z_new
        if step * rho / (1 - rho) < 1e-15 or step == 0:
            break
    return z


def deq_newton(WT, inj, *, tol=1e-14):
    """The fixed point of ``z -> tanh(z WT + inj)`` per row, by Newton with dense Jacobians.

    Stops when every row's residual ``||tanh(z WT + inj) - z||_2`` is below `tol`, or
    after 50 steps; quadratic convergence reaches round-off in a few.
    """
    z = np.zeros_like(inj)
    eye = np.eye(WT.shape[0])
    for _ in range(50):
        pre = z @ WT + inj
        g = np.tanh(pre) - z
        if np.max(np.linalg.norm(g, axis=1)) < tol:
            break
        J = (1.0 - np.tanh(pre) ** 2)[:, :, None] * WT.T[None] - eye  # d g / d z per row
        z = z - np.linalg.solve(J, g[..., None])[..., 0]
    return z


def solve_rows(f, s, *, xp, rtol, maxiter, **options):
    """Picard from zero on one scalar system per row of the ``(batch, 1)`` array `s`.

    ``f(x, s)`` is called on the rows still active (`s` has batch axis 0 too).
    """
    x0 = xp.zeros((s.shape[0], 1), dtype=xp.float64)
    return fixed_point(
        f,
        x0,
        (s,),
        method="picard",
        rtol=rtol,
        maxiter=maxiter,
        batch_axis=0,
        arg_batch_axes=0,
        **options,
    )


def scipy_gmres(A, b, *, rtol, restart):
    """SciPy's restarted GMRES (``atol=0``), the reference: ``(x, info, inner iterations)``.

    Inner iterations are counted by SciPy's ``pr_norm`` callback, one call per Arnoldi
    step; SciPy counts `maxiter` in restart cycles (here 1000).
    """
    nit = 0

    def count(_):
        nonlocal nit
        nit += 1

    x, info = spla.gmres(
        A,
        b,
        rtol=rtol,
        atol=0.0,
        restart=restart,
        maxiter=1000,
        callback=count,
        callback_type="pr_norm",
    )
    return x, info, nit
