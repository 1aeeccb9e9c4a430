"""Matrix-free linear solvers: GMRES, BiCGSTAB, Neumann, Broyden, Anderson.

References are independent: ``numpy.linalg.solve`` for the solutions and
``scipy.sparse.linalg.gmres`` for GMRES iteration counts.
"""

from __future__ import annotations

import math

import numpy as np
import problems
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import implicitnet as inet
from implicitnet.testing import assert_close

DTYPES = ["float32", "float64"]

#: Solver tolerance per dtype, and the factor allowed between it and what is checked
#: (the float64 residual of the returned x, and the distance to the direct solve,
#: which also carries the condition number of the problems below: at most ~3).
RTOL = {"float32": 1e-4, "float64": 1e-10}
# Iterations by which a batched solve may differ from the same systems solved one by
# one: batched and single products round differently, and near float32's precision
# the Krylov recurrences amplify that (seen on PyTorch's CPU kernels).
NIT_SLACK = {"float32": 3, "float64": 1}
SLACK = {"float32": 20.0, "float64": 10.0}

#: Solvers that converge on every well-conditioned nonsymmetric system.
KRYLOV = {"gmres": inet.linalg.gmres, "bicgstab": inet.linalg.bicgstab}
#: Every solver: these converge on adjoint systems ``(I - J^T) u = g`` with ``||J|| < 1``.
ALL = {
    **KRYLOV,
    "neumann": inet.linalg.neumann,
    "broyden": inet.linalg.broyden,
    "anderson": inet.linalg.anderson,
}


def _np_dtype(dtype):
    return np.float32 if dtype == "float32" else np.float64


def perturbed_identity(n, seed, *, eps=0.5):
    """``I + eps G / sqrt(n)``, G standard normal: nonsymmetric, ``||A - I||_2 <~ 2 eps``."""
    rng = np.random.default_rng(seed)
    return np.eye(n) + eps * rng.standard_normal((n, n)) / math.sqrt(n)


def diagonally_dominant(n, seed):
    """Nonsymmetric, strictly diagonally dominant by rows, with varied diagonal."""
    rng = np.random.default_rng(seed)
    off = rng.uniform(-1.0, 1.0, (n, n))
    np.fill_diagonal(off, 0.0)
    diag = (np.abs(off).sum(axis=1) + 1.0) * rng.uniform(1.0, 2.0, n) * rng.choice([-1, 1], n)
    return off + np.diag(diag)


@st.composite
def linear_systems(draw, *, max_n=12):
    """A well-conditioned nonsymmetric system ``(A, b)`` as float64 NumPy arrays."""
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["perturbed", "dominant"]))
    if kind == "perturbed":
        A = perturbed_identity(n, seed, eps=draw(st.floats(0.0, 0.45)))
    else:
        A = diagonally_dominant(n, seed)
    b = np.random.default_rng(seed + 1).uniform(-2.0, 2.0, n)
    return A, b


def contractive_adjoint(n, seed, *, rho=0.8):
    """``I - J^T`` with ``||J||_2 = rho``: the operator of an implicit layer's adjoint."""
    J = np.random.default_rng(seed).standard_normal((n, n))
    J *= rho / max(np.linalg.norm(J, 2), 1e-300)
    return np.eye(n) - J.T


@st.composite
def adjoint_systems(draw, *, max_n=12):
    """An adjoint system ``(I - J^T, g)`` with a contractive ``J``, float64 NumPy."""
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    A = contractive_adjoint(n, seed, rho=draw(st.floats(0.0, 0.8)))
    g = np.random.default_rng(seed + 1).uniform(-2.0, 2.0, n)
    return A, g


def _residual64(A_np, x, b_np, backend):
    """True residual norm of `x` in float64 NumPy."""
    x64 = backend.to_numpy(x).astype(np.float64)
    return float(np.linalg.norm(A_np @ x64 - b_np))


def _cast(xp, dtype, *arrays):
    return tuple(xp.asarray(a.astype(_np_dtype(dtype))) for a in arrays)


# --------------------------------------------------------------------------------------
# Properties on random systems


def _every_solver_operator_and_dtype(solvers):
    """Parametrize a property (no deadline) over each solver `name`, operator form, dtype."""

    def mark(test):
        test = pytest.mark.parametrize("name", sorted(solvers))(settings(deadline=None)(test))
        forms = pytest.mark.parametrize("as_callable", [False, True], ids=["matrix", "callable"])
        return pytest.mark.parametrize("dtype", DTYPES)(forms(test))

    return mark


def _assert_solved(res, A_np, b_np, *, backend, xp, dtype):
    """`res` solves ``A x = b``: its own residual, again in float64, and against NumPy."""
    assert res.success, res
    tol = RTOL[dtype] * float(np.linalg.norm(b_np))
    assert res.residual <= tol
    assert _residual64(A_np, res.x, b_np, backend) <= SLACK[dtype] * tol + 1e-30
    expected = np.linalg.solve(A_np, b_np)
    scale = float(np.linalg.norm(expected, ord=np.inf)) + 1.0
    assert_close(
        res.x,
        xp.asarray(expected.astype(_np_dtype(dtype))),
        atol=SLACK[dtype] * 10 * RTOL[dtype] * scale,
        xp=xp,
    )


@_every_solver_operator_and_dtype(KRYLOV)
@given(problem=linear_systems())
def test_solves_well_conditioned_systems(backend, xp, name, as_callable, dtype, problem):
    A_np, b_np = problem
    A, b = _cast(xp, dtype, A_np, b_np)
    op = (lambda v: A @ v) if as_callable else A
    res = KRYLOV[name](op, b, rtol=RTOL[dtype], maxiter=200)
    assert res.status == "success"
    _assert_solved(res, A_np, b_np, backend=backend, xp=xp, dtype=dtype)
    assert res.history.shape == (res.nit + 1,)
    assert res.nmatvec >= res.nit


@_every_solver_operator_and_dtype(ALL)
@given(problem=adjoint_systems())
def test_solves_adjoint_systems(backend, xp, name, as_callable, dtype, problem):
    """Every solver, on ``(I - J^T) u = g`` given as ``u -> u - J^T u``."""
    A_np, g_np = problem
    A, g = _cast(xp, dtype, A_np, g_np)
    J_T = xp.eye(A.shape[0], dtype=A.dtype) - A
    op = (lambda u: u - J_T @ u) if as_callable else A
    res = ALL[name](op, g, rtol=RTOL[dtype], maxiter=300)
    _assert_solved(res, A_np, g_np, backend=backend, xp=xp, dtype=dtype)
    assert res.x.dtype == getattr(xp, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ALL))
@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3), n=st.integers(1, 8))
def test_batched_adjoint_equals_one_by_one(backend, xp, name, dtype, seed, batch, n):
    mats = np.stack([contractive_adjoint(n, seed + i, rho=0.2 * (i + 1)) for i in range(batch)])
    rhs = np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, n))
    As, bs = _cast(xp, dtype, mats, rhs)
    solve = ALL[name]
    res = solve(As, bs, rtol=RTOL[dtype], batch_axis=0, maxiter=300)
    assert res.success
    for i in range(batch):
        one = solve(As[i, ...], bs[i, ...], rtol=RTOL[dtype], maxiter=300)
        assert abs(int(res.nit[i]) - one.nit) <= 1
        assert_close(res.x[i, ...], one.x, rtol=0.0, atol=10 * RTOL[dtype], xp=xp)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(KRYLOV))
@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3), n=st.integers(1, 8))
def test_batched_equals_one_by_one(backend, xp, name, dtype, seed, batch, n):
    mats = np.stack([diagonally_dominant(n, seed + i) for i in range(batch)])
    rhs = np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, n))
    As, bs = _cast(xp, dtype, mats, rhs)
    solve = KRYLOV[name]
    res = solve(As, bs, rtol=RTOL[dtype], batch_axis=0, maxiter=100)
    assert res.success
    assert tuple(res.nit.shape) == (batch,)
    assert tuple(res.residual.shape) == (batch,)
    assert tuple(res.history.shape[1:]) == (batch,)
    for i in range(batch):
        one = solve(As[i, ...], bs[i, ...], rtol=RTOL[dtype], maxiter=100)
        assert abs(int(res.nit[i]) - one.nit) <= NIT_SLACK[dtype]
        assert_close(res.x[i, ...], one.x, rtol=0.0, atol=10 * RTOL[dtype], xp=xp)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(KRYLOV))
def test_batch_axis_and_nd_layouts(backend, xp, name, dtype):
    """A callable acting on a batch along axis 1, and an N-D `b` without a batch axis."""
    n, batch = 6, 3
    mats = np.stack([perturbed_identity(n, 10 + i, eps=0.3) for i in range(batch)])
    rhs = np.random.default_rng(3).standard_normal((n, batch))  # batch along axis 1
    As, bs = _cast(xp, dtype, mats, rhs)

    def op(v):  # v: (n, batch)
        return xp.permute_dims((As @ xp.permute_dims(v, (1, 0))[..., None])[..., 0], (1, 0))

    res = KRYLOV[name](op, bs, rtol=RTOL[dtype], batch_axis=1, maxiter=100)
    assert res.success
    expected = np.stack([np.linalg.solve(mats[i], rhs[:, i]) for i in range(batch)], axis=1)
    assert_close(res.x, xp.asarray(expected.astype(_np_dtype(dtype))), atol=50 * RTOL[dtype])

    # N-D b without batch_axis: one system of b.size unknowns.
    big = perturbed_identity(12, 5, eps=0.3)
    rhs2 = np.random.default_rng(4).standard_normal((3, 4))
    A2, b2 = _cast(xp, dtype, big, rhs2)
    res = KRYLOV[name](
        lambda v: xp.reshape(A2 @ xp.reshape(v, (12,)), (3, 4)), b2, rtol=RTOL[dtype]
    )
    assert res.success
    assert isinstance(res.nit, int) and isinstance(res.residual, float)
    expected = np.linalg.solve(big, rhs2.reshape(12)).reshape(3, 4)
    assert_close(res.x, xp.asarray(expected.astype(_np_dtype(dtype))), atol=50 * RTOL[dtype])


# --------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("name", sorted(ALL))
def test_zero_rhs_returns_zero_at_once(backend, xp, name):
    A = xp.asarray(contractive_adjoint(5, 0, rho=0.5))
    b = xp.zeros(5, dtype=xp.float64)
    res = ALL[name](A, b, x0=xp.ones(5, dtype=xp.float64))
    assert res.success and res.nit == 0 and res.nmatvec == 0 and res.residual == 0.0
    assert_close(res.x, b, xp=xp)
    # Batched: zero systems converge at once, the others iterate.
    rhs = np.zeros((3, 5))
    rhs[1] = 1.0
    As = xp.asarray(np.stack([contractive_adjoint(5, i, rho=0.5) for i in range(3)]))
    res = ALL[name](As, xp.asarray(rhs), batch_axis=0)
    assert res.success
    assert [int(v) for v in res.nit] == [0, int(res.nit[1]), 0]
    assert int(res.nit[1]) > 0
    assert float(xp.max(xp.abs(res.x[0, ...]))) == 0.0


@pytest.mark.parametrize("name", sorted(KRYLOV))
def test_happy_breakdown(backend, xp, name):
    """``A = 2 I``, and ``b`` an eigenvector of a nonsymmetric ``A``: exact in one step."""
    b = xp.asarray(np.random.default_rng(0).standard_normal(7))
    res = KRYLOV[name](lambda v: 2.0 * v, b, rtol=1e-12)
    assert res.success and res.nit == 1
    assert_close(res.x, b / 2.0, rtol=1e-12, xp=xp)
    rng = np.random.default_rng(1)
    P = rng.standard_normal((6, 6)) + 6 * np.eye(6)
    A_np = P @ np.diag(np.arange(1.0, 7.0)) @ np.linalg.inv(P)
    A, b = xp.asarray(A_np), xp.asarray(P[:, 2])
    res = KRYLOV[name](A, b, rtol=1e-10)
    assert res.success and res.nit == 1
    assert_close(res.x, xp.asarray(P[:, 2] / 3.0), rtol=1e-8, atol=1e-10, xp=xp)


def test_gmres_restart(backend, xp):
    """Restarting costs iterations and one extra product per cycle, and still converges."""
    A_np = diagonally_dominant(30, 7) + 3 * perturbed_identity(30, 8)
    b_np = np.random.default_rng(2).standard_normal(30)
    A, b = xp.asarray(A_np), xp.asarray(b_np)
    full = inet.linalg.gmres(A, b, rtol=1e-10, restart=30)
    short = inet.linalg.gmres(A, b, rtol=1e-10, restart=4, maxiter=2000)
    assert full.success and short.success
    assert short.nit >= full.nit
    cycles = math.ceil(short.nit / 4)
    assert short.nmatvec == short.nit + cycles
    assert full.nmatvec == full.nit + 1
    assert _residual64(A_np, short.x, b_np, backend) <= 1e-9 * np.linalg.norm(b_np)
    # The history is monotone: GMRES minimises the residual over a growing space.
    h = backend.to_numpy(short.history)
    assert np.all(np.diff(h) <= 1e-12 * h[0])


def test_gmres_singular_breakdown(backend, xp):
    """An inconsistent singular system: best least-squares iterate, never NaN."""
    A = xp.asarray(np.diag([1.0, 0.0, 2.0]))
    b = xp.asarray([1.0, 1.0, 1.0])
    res = inet.linalg.gmres(A, b, maxiter=50)
    assert not res.success
    assert res.status in ("breakdown", "stagnated")
    x = backend.to_numpy(res.x)
    assert np.all(np.isfinite(x))
    assert abs(res.residual - 1.0) < 1e-12
    assert_close(res.x[0], xp.asarray(1.0), rtol=1e-12, xp=xp)


def test_gmres_singular_symmetric_reaches_the_least_squares_residual(backend, xp):
    """A numerically singular symmetric system, b outside the range: GMRES reaches the
    least-squares residual (the part of b in the null space) and keeps it, instead of
    dividing by the rounding-level pivot of the happy breakdown that follows."""
    rng = np.random.default_rng(0)
    n = 8
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    d = rng.uniform(0.5, 2.0, n)
    d[0] = 0.0
    A_np = (Q * d) @ Q.T
    b_np = rng.standard_normal(n)
    least = abs(float(Q[:, 0] @ b_np))
    res = inet.linalg.gmres(xp.asarray(A_np), xp.asarray(b_np), restart=n, maxiter=50)
    assert not res.success
    assert res.status in ("breakdown", "stagnated")
    assert np.all(np.isfinite(backend.to_numpy(res.x)))
    assert res.residual == pytest.approx(least, rel=1e-6)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("dtype", DTYPES)
def test_ill_conditioned_reports_not_converged(backend, xp, name, dtype):
    n = 40
    rng = np.random.default_rng(0)
    A_np = np.diag(np.logspace(0, -7, n)) + np.triu(0.1 * rng.standard_normal((n, n)), 1)
    b_np = rng.standard_normal(n)
    A, b = _cast(xp, dtype, A_np, b_np)
    res = ALL[name](A, b, rtol=RTOL[dtype], maxiter=15)
    assert not res.success
    assert res.status in ("maxiter", "stagnated", "breakdown", "diverged")
    assert res.nit <= 15
    assert np.all(np.isfinite(backend.to_numpy(res.x)))
    assert math.isfinite(res.residual)
    # The best iterate is returned: never worse than the start (x = 0).
    assert res.residual <= float(np.linalg.norm(b_np)) * (1 + 1e-5)
    assert res.x.dtype == getattr(xp, dtype)
    # Batched: one hard system among easy ones, only it fails.
    mats = np.stack([np.eye(n), A_np, 0.8 * np.eye(n)])
    As, bs = _cast(xp, dtype, mats, np.stack([b_np] * 3))
    res = ALL[name](As, bs, rtol=RTOL[dtype], maxiter=15, batch_axis=0)
    assert not res.success
    assert [bool(c) for c in res.converged] == [True, False, True]


@pytest.mark.parametrize("name", sorted(ALL))
def test_nonfinite_operator_is_reported(backend, xp, name):
    b = xp.asarray(np.ones(4))
    res = ALL[name](lambda v: v * xp.asarray(float("nan")), b, maxiter=10)
    assert not res.success
    assert np.all(np.isfinite(backend.to_numpy(res.x)))
    assert math.isfinite(res.residual)


# --------------------------------------------------------------------------------------
# Against SciPy


GMRES_FIXED_SET = [
    ("perturbed-50", lambda: perturbed_identity(50, 0, eps=0.5), 20, 1e-8),
    ("perturbed-50-r5", lambda: perturbed_identity(50, 1, eps=0.6), 5, 1e-8),
    ("dominant-40", lambda: diagonally_dominant(40, 2), 10, 1e-10),
    ("convdiff-60", lambda: _convection_diffusion(60), 15, 1e-6),
    ("convdiff-60-r30", lambda: _convection_diffusion(60), 30, 1e-8),
]


def _convection_diffusion(n, peclet=0.4):
    """1-D upwinded convection-diffusion: nonsymmetric, moderately conditioned."""
    return (
        np.diag(np.full(n, 2.0 + peclet))
        + np.diag(np.full(n - 1, -1.0 - peclet), -1)
        + np.diag(np.full(n - 1, -1.0), 1)
    )


@pytest.mark.parametrize("case", GMRES_FIXED_SET, ids=[c[0] for c in GMRES_FIXED_SET])
def test_gmres_iterations_match_scipy(backend, xp, case):
    """SciPy counts `maxiter` in restart cycles and stops at ``max(atol, rtol ||b||)``;
    with ``atol=0`` that is our ``atol + rtol ||b||``. Inner iterations are counted by
    SciPy's ``pr_norm`` callback, one call per Arnoldi step."""
    _, make, restart, rtol = case
    A_np = make()
    b_np = np.random.default_rng(0).standard_normal(A_np.shape[0])
    _, info, expected = problems.scipy_gmres(A_np, b_np, rtol=rtol, restart=restart)
    assert info == 0
    res = inet.linalg.gmres(
        xp.asarray(A_np), xp.asarray(b_np), rtol=rtol, restart=restart, maxiter=5000
    )
    assert res.success
    assert abs(res.nit - expected) <= max(2, 0.05 * expected), (res.nit, expected)


# --------------------------------------------------------------------------------------
# Input checking and the solver objects


def test_bad_inputs(xp):
    A = xp.asarray(np.eye(3))
    b = xp.asarray(np.ones(3))
    with pytest.raises(ValueError, match="`b`"):
        inet.linalg.gmres(A, xp.asarray([1.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="`x0`"):
        inet.linalg.gmres(A, b, x0=xp.asarray([1.0, float("inf"), 0.0]))
    with pytest.raises(ValueError, match="`x0`"):
        inet.linalg.gmres(A, b, x0=xp.asarray(np.ones(4)))
    with pytest.raises(ValueError, match="`A`"):
        inet.linalg.gmres(xp.asarray(np.eye(4)), b)
    with pytest.raises(ValueError, match="`A`"):
        inet.linalg.gmres(lambda v: xp.ones(5, dtype=xp.float64), b)
    with pytest.raises(TypeError, match="`A`"):
        inet.linalg.gmres("not an operator", b)
    with pytest.raises(ValueError, match="`restart`"):
        inet.linalg.gmres(A, b, restart=0)
    with pytest.raises(ValueError, match="`rtol`"):
        inet.linalg.gmres(A, b, rtol=-1.0)
    with pytest.raises(ValueError, match="`maxiter`"):
        inet.linalg.gmres(A, b, maxiter=-1)
    with pytest.raises(ValueError, match="`batch_axis`"):
        inet.linalg.gmres(A, b, batch_axis=3)
    with pytest.raises(ValueError, match="`maxiter` must be at least 1"):
        inet.linalg.gmres(A, b, maxiter=0)
    # A 0-D `b` is one equation in one unknown (as in SciPy): a 3 x 3 `A` does not fit.
    with pytest.raises(ValueError, match=r"`A` as a matrix must have shape \(1, 1\)"):
        inet.linalg.gmres(A, xp.asarray(1.0))


def test_matvec_object_preconditioner_and_callback(backend, xp):
    A_np = diagonally_dominant(20, 3)
    b_np = np.random.default_rng(0).standard_normal(20)
    A = xp.asarray(A_np)

    class Operator:
        def matvec(self, v):
            return A @ v

    seen = []
    jacobi = xp.asarray(np.diag(1.0 / np.diag(A_np)))
    plain = inet.linalg.gmres(Operator(), xp.asarray(b_np), rtol=1e-10)
    pre = inet.linalg.gmres(
        Operator(), xp.asarray(b_np), rtol=1e-10, M=jacobi, callback=seen.append
    )
    assert plain.success and pre.success
    assert len(seen) == pre.nit
    assert pre.nit <= plain.nit
    assert _residual64(A_np, pre.x, b_np, backend) <= 1e-9 * np.linalg.norm(b_np)


def test_solver_objects_and_registry(xp):
    solver = inet.linalg.GMRES(rtol=1e-8, restart=30)
    assert isinstance(solver, inet.linalg.AbstractLinearSolver)
    with pytest.raises(AttributeError):
        solver.rtol = 1.0  # frozen
    with pytest.raises(TypeError):
        inet.linalg.GMRES(1e-8)  # keyword-only
    A = xp.asarray(np.eye(3) * 2)
    b = xp.asarray(np.ones(3))
    res = solver.solve(A, b)
    assert res.success
    assert inet.linalg.get_solver("gmres") == inet.linalg.GMRES()
    assert inet.linalg.get_solver("GMRES") == inet.linalg.GMRES()
    assert inet.linalg.get_solver(solver) is solver

    class Custom:
        def solve(self, A, b, /, *, x0=None, batch_axis=None, xp=None):
            return None

    custom = Custom()
    assert inet.linalg.get_solver(custom) is custom
    with pytest.raises(ValueError, match="gmres"):
        inet.linalg.get_solver("cholesky")
    with pytest.raises(TypeError, match="`name_or_obj`"):
        inet.linalg.get_solver(3)


@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_inputs_all_solvers(xp, name):
    A = xp.asarray(np.eye(3))
    b = xp.asarray(np.ones(3))
    with pytest.raises(ValueError, match="`b`"):
        ALL[name](A, xp.asarray([1.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="`x0`"):
        ALL[name](A, b, x0=xp.asarray([float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="`maxiter`"):
        ALL[name](A, b, maxiter=-2)
    with pytest.raises(TypeError, match="`A`"):
        ALL[name](None, b)


@pytest.mark.parametrize(
    "cls",
    [
        inet.linalg.GMRES,
        inet.linalg.BiCGSTAB,
        inet.linalg.Neumann,
        inet.linalg.Broyden,
        inet.linalg.Anderson,
    ],
)
def test_every_solver_object(xp, cls):
    """Frozen, keyword-only, registered under its lower-case name, and it solves."""
    solver = cls(rtol=1e-10)
    assert isinstance(solver, inet.linalg.AbstractLinearSolver)
    assert inet.linalg.get_solver(cls.__name__.lower()) == cls()
    with pytest.raises(AttributeError):
        solver.atol = 1.0
    A_np = contractive_adjoint(6, 0, rho=0.5)
    g_np = np.ones(6)
    res = solver.solve(xp.asarray(A_np), xp.asarray(g_np))
    assert res.success
    assert_close(res.x, xp.asarray(np.linalg.solve(A_np, g_np)), rtol=1e-8, xp=xp)


def test_neumann_is_the_truncated_series(backend, xp):
    """After k terms, x = sum_{i<k} (J^T)^i g exactly (up to rounding)."""
    n = 7
    A_np = contractive_adjoint(n, 3, rho=0.7)
    JT = np.eye(n) - A_np
    g = np.random.default_rng(0).standard_normal(n)
    for k in (1, 2, 5):
        res = inet.linalg.neumann(xp.asarray(A_np), xp.asarray(g), rtol=0.0, maxiter=k)
        terms = [np.linalg.matrix_power(JT, i) @ g for i in range(k + 1)]
        assert res.nit == k and res.nmatvec == k and res.status == "maxiter"
        assert_close(res.x, xp.asarray(sum(terms[:k])), rtol=1e-12, atol=1e-12, xp=xp)
        # The residual is the next term of the series.
        assert abs(res.residual - np.linalg.norm(terms[k])) <= 1e-12 * np.linalg.norm(g)


def test_neumann_reports_divergence(backend, xp):
    """Spectral radius of I - A above one: the series diverges, the start is returned."""
    res = inet.linalg.neumann(lambda u: -0.5 * u, xp.asarray(np.ones(3)), maxiter=200)
    assert not res.success and res.status == "diverged"
    assert res.nit < 200
    assert np.all(np.isfinite(backend.to_numpy(res.x)))


def test_broyden_memory_restart_still_converges(backend, xp):
    A_np = contractive_adjoint(30, 1, rho=0.9)
    g_np = np.random.default_rng(0).standard_normal(30)
    for m in (2, 5, 40):
        res = inet.linalg.broyden(xp.asarray(A_np), xp.asarray(g_np), rtol=1e-10, m=m, maxiter=500)
        assert res.success, (m, res)
        assert _residual64(A_np, res.x, g_np, backend) <= 1e-9 * np.linalg.norm(g_np)
    # Full memory: at most 2n steps on a linear system (Gay, 1979).
    assert res.nit <= 2 * 30


@pytest.mark.parametrize("name", sorted(ALL))
def test_initial_guess(backend, xp, name):
    """The exact solution as `x0` stops at once (one product to check it)."""
    A_np = contractive_adjoint(8, 4, rho=0.6)
    g_np = np.random.default_rng(5).standard_normal(8)
    exact = np.linalg.solve(A_np, g_np)
    A, g = xp.asarray(A_np), xp.asarray(g_np)
    res = ALL[name](A, g, x0=xp.asarray(exact), rtol=1e-8)
    assert res.success and res.nit == 0 and res.nmatvec == 1
    near = ALL[name](A, g, x0=xp.asarray(exact + 1e-6), rtol=1e-10)
    cold = ALL[name](A, g, rtol=1e-10)
    assert near.success and cold.success
    assert near.nit <= cold.nit
    assert_close(near.x, xp.asarray(exact), rtol=1e-8, atol=1e-9, xp=xp)


@pytest.mark.skip_backend("numpy", reason="needs two different array libraries")
def test_operator_from_another_library_is_refused(xp):
    with pytest.raises(TypeError, match="`A`"):
        inet.linalg.gmres(np.eye(3), xp.asarray(np.ones(3)))


def test_bicgstab_restarts_when_its_recurrence_drifts(backend, xp):
    """float32, near-breakdown in the second step: the recurrence residual reaches the
    tolerance while the true one does not; BiCGSTAB restarts from the true residual."""
    seed, n = 2817794, 8
    A_np = diagonally_dominant(n, seed)
    b_np = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
    A, b = _cast(xp, "float32", A_np, b_np)
    res = inet.linalg.bicgstab(A, b, rtol=1e-4, maxiter=100)
    assert res.success, res
    x = backend.to_numpy(res.x).astype(np.float64)
    true = np.linalg.norm(b_np - A_np @ x) / np.linalg.norm(b_np)
    assert true <= 1e-4 * 1.01
