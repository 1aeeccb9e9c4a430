"""Newton–Krylov and its inner GMRES: selective re-orthogonalisation, the estimated
(product-free) residual, greedy batches, and evaluation budgets.

References are independent: ``numpy.linalg.solve`` for linear solutions, a dense
Newton iteration (``numpy.linalg.solve`` on the exact Jacobian) for the fixed points.
"""

from __future__ import annotations

import numpy as np
import problems
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nonlinear_systems import _linear_tables, dense_linear

import implicitnet as inet
from implicitnet.linalg._gmres import _gmres_operator
from implicitnet.solvers import NewtonKrylov, fixed_point

DTYPES = ["float32", "float64"]

#: GMRES tolerance per dtype, and the factor allowed between it and the checked
#: residual (float64 residual of the returned x).
RTOL = {"float32": 1e-4, "float64": 1e-10}
SLACK = {"float32": 50.0, "float64": 10.0}


def _np_dtype(dtype):
    return np.float32 if dtype == "float32" else np.float64


def ill_conditioned(n, seed, cond):
    """``U diag(s) V^T`` with singular values log-spaced from 1 down to ``1 / cond``."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * np.logspace(0.0, -np.log10(cond), n)) @ V.T


@st.composite
def ill_conditioned_systems(draw, *, max_n=24):
    """``(A, b, cond)``: a dense nonsymmetric system with condition number `cond`."""
    n = draw(st.integers(2, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    cond = 10.0 ** draw(st.floats(0.0, 6.0))
    b = np.random.default_rng(seed + 1).uniform(-1.0, 1.0, n)
    return ill_conditioned(n, seed, cond), b, cond


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None)
@given(system=ill_conditioned_systems())
def test_gmres_selective_reorthogonalisation_matches_direct_solve(xp, dtype, system):
    # Full GMRES (restart = n) on ill-conditioned systems: one Gram-Schmidt pass with a
    # second one only when the orthogonality estimate asks for it must still give the
    # minimal-residual solution, i.e. reach the tolerance within n (+ a few) products.
    A_np, b_np, cond = system
    n = b_np.shape[0]
    npd = _np_dtype(dtype)
    rtol = RTOL[dtype]
    if dtype == "float32" and cond > 1e3:
        rtol = 1e-3  # float32 cannot resolve much below eps * cond
    A = xp.asarray(A_np.astype(npd))
    b = xp.asarray(b_np.astype(npd))
    res = inet.linalg.gmres(A, b, rtol=rtol, restart=n, maxiter=3 * n)
    x = np.asarray(res.x, dtype=np.float64)
    A64 = A_np.astype(npd).astype(np.float64)
    b64 = b_np.astype(npd).astype(np.float64)
    rel = np.linalg.norm(A64 @ x - b64) / np.linalg.norm(b64)
    eps = float(np.finfo(npd).eps)
    # Within the tolerance, or at the attainable accuracy eps * cond (ill-conditioned
    # float32 systems), up to the slack.
    assert rel <= SLACK[dtype] * max(rtol, 10 * n * eps * cond)
    if res.success:
        direct = np.linalg.solve(A64, b64)
        err = np.linalg.norm(x - direct) / np.linalg.norm(direct)
        assert err <= SLACK[dtype] * cond * max(rtol, n * eps * cond)


def test_gmres_orthogonality_keeps_iteration_count_of_scipy():
    # A classic stress test for Gram-Schmidt: the 1-D Laplacian (cond ~ 4e3 at n=100).
    # Full GMRES in exact arithmetic terminates in n steps; with an orthogonal basis it
    # reaches 1e-10 well before, as does SciPy's GMRES (Householder/MGS based).
    import scipy.sparse.linalg as spla

    n = 100
    A = 2.0 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    b = np.random.default_rng(3).standard_normal(n)
    count = []
    spla.gmres(
        A,
        b,
        rtol=1e-10,
        atol=0.0,
        restart=n,
        maxiter=5,
        callback=lambda r: count.append(r),
        callback_type="pr_norm",
    )
    res = inet.linalg.gmres(A, b, rtol=1e-10, restart=n, maxiter=5 * n)
    assert res.success
    assert abs(int(res.nit) - len(count)) <= 2
    assert np.linalg.norm(A @ res.x - b) <= 1e-9 * np.linalg.norm(b)


@pytest.mark.parametrize("greedy", [False, True])
def test_internal_gmres_estimated_residual_and_greedy_batch(xp, greedy):
    # The Newton–Krylov entry point: no true-residual product at the end (the returned
    # residual is the Arnoldi estimate, which must match b - A x), one tolerance per
    # system, and (greedy) systems that keep improving while others iterate.
    rng = np.random.default_rng(0)
    B, n = 5, 30
    mats = np.stack([np.eye(n) + 0.6 * rng.standard_normal((n, n)) / np.sqrt(n) for _ in range(B)])
    b_np = rng.standard_normal((B, n))
    A = xp.asarray(mats)
    b = xp.asarray(b_np)
    calls = []

    def matvec(v):
        calls.append(1)
        return (A @ v[..., None])[..., 0]

    bnorm = xp.asarray(np.linalg.norm(b_np, axis=1))
    rtols = np.array([1e-1, 1e-3, 1e-6, 1e-8, 1e-10])
    tol = xp.asarray(rtols) * bnorm
    out = _gmres_operator(
        matvec,
        b,
        bnorm,
        tol=tol,
        restart=8,
        maxiter=60,
        exact_residual=False,
        greedy=greedy,
        xp=xp,
    )
    x = np.asarray(out.x)
    true = np.linalg.norm(b_np - np.einsum("bij,bj->bi", mats, x), axis=1)
    est = np.asarray(out.residual)
    assert np.all(np.asarray(out.converged))
    assert np.all(true <= 1.01 * np.asarray(tol) + 1e-13)
    np.testing.assert_allclose(est, true, rtol=1e-3, atol=1e-13)
    # One product per inner iteration of the longest-running system: none for the
    # final residual, none at restarts.
    assert len(calls) == int(np.max(np.asarray(out.nit)))
    nit = np.asarray(out.nit)
    if greedy:
        # Within a restart cycle every system iterates as long as the slowest one: a
        # system stops only at the end of the cycle where it reached its tolerance.
        assert np.all((nit % 8 == 0) | (nit == len(calls)))
        assert true[0] < 0.1 * float(np.asarray(tol)[0])
    else:
        assert int(nit[0]) < 8


@pytest.mark.parametrize("greedy", [False, True])
def test_internal_gmres_rows_that_stop_do_not_disturb_the_others(xp, greedy):
    # Rows that stop early get zero basis vectors (the fast Gram-Schmidt path computes
    # ||w - V h||^2 by Pythagoras and skips them): a row with a non-finite product
    # ("diverged"), a row whose Krylov space is invariant after one step (A = 2 I) and
    # a row with a zero right-hand side must leave the ordinary rows exactly as if each
    # were solved alone.
    rng = np.random.default_rng(1)
    n = 20
    mats = np.stack([np.eye(n) + 0.5 * rng.standard_normal((n, n)) / np.sqrt(n) for _ in range(5)])
    mats[1] = 2.0 * np.eye(n)
    b_np = rng.standard_normal((5, n))
    b_np[3] = 0.0

    def make_matvec(rows):
        A_rows = xp.asarray(mats[rows])
        poison = xp.asarray([[float("nan") if i == 2 else 0.0] for i in rows])

        def matvec(v):
            return (A_rows @ v[..., None])[..., 0] + poison

        return matvec

    def solve(rows):
        b = xp.asarray(b_np[rows])
        bnorm = xp.asarray(np.linalg.norm(b_np[rows], axis=1))
        return _gmres_operator(
            make_matvec(rows),
            b,
            bnorm,
            tol=1e-10 * bnorm,
            restart=6,
            maxiter=40,
            exact_residual=False,
            greedy=greedy,
            xp=xp,
        )

    both = solve([0, 1, 2, 3, 4])
    code = np.asarray(both.code)
    assert code[2] != 0 and code[[0, 1, 3, 4]].tolist() == [0, 0, 0, 0]
    x = np.asarray(both.x)
    assert np.all(np.isfinite(x))
    assert np.array_equal(x[3], np.zeros(n))
    np.testing.assert_allclose(x[1], b_np[1] / 2.0, rtol=1e-12)
    for i in (0, 4):
        ref = np.linalg.solve(mats[i], b_np[i])
        np.testing.assert_allclose(x[i], ref, rtol=1e-8, atol=1e-10)
    if not greedy:
        alone = solve([0, 4])
        np.testing.assert_allclose(x[[0, 4]], np.asarray(alone.x), rtol=1e-12, atol=1e-14)


# -- Newton–Krylov ---------------------------------------------------------------------


def deq_problem(lo, hi, *, d=64, batch=8, seed=0):
    """``z = tanh(z W^T + inj)`` with symmetric W of spectrum [lo, hi] (benchmark-like)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    W = (Q * np.linspace(lo, hi, d)) @ Q.T
    inj = 0.05 * rng.standard_normal((batch, d))
    return W.T.copy(), inj


#: Evaluation budgets (rtol=1e-8, d=64, batch 8), measured with the defaults
#: (restart=10, inner_maxiter=20) at the time of writing, plus ~10%: a regression in
#: the forcing terms, the inner solver or the line search shows up here. Measured then:
#: indefinite 57 whole / 64 per-sample (previous version 72 / 78), slow 97 / 111
#: (previous 91 / 120); scipy:krylov needed 112 (indefinite) and 235 (slow), whole.
NFEV_BUDGET = {
    ("slow", "whole"): 107,
    ("slow", "per-sample"): 122,
    ("indefinite", "whole"): 63,
    ("indefinite", "per-sample"): 70,
}
CASES = {"slow": (-0.98, 0.98), "indefinite": (-1.5, 0.9)}


@pytest.mark.parametrize("mode", ["whole", "per-sample"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_newton_krylov_evaluation_budget(case, mode):
    WT, inj = deq_problem(*CASES[case])
    kw = {"batch_axis": 0, "arg_batch_axes": 0} if mode == "per-sample" else {}
    res = fixed_point(
        lambda z, a: np.tanh(z @ WT + a),
        np.zeros_like(inj),
        (inj,),
        method="newton_krylov",
        rtol=1e-8,
        maxiter=200,
        **kw,
    )
    assert res.success
    np.testing.assert_allclose(res.x, problems.deq_newton(WT, inj), rtol=0, atol=1e-6)
    nfev = int(np.max(np.asarray(res.nfev)))
    assert nfev <= NFEV_BUDGET[case, mode], nfev
    # Every evaluation is accounted for: per-sample nfev never exceeds the calls of f.
    assert nfev <= res.stats["ncalls"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_newton_krylov_batched_equals_alone(xp, dtype):
    # Per-system forcing terms and a greedy inner solve must keep systems independent:
    # the batch solve agrees with each system solved alone (to the tolerance).
    npd = _np_dtype(dtype)
    WT, inj = deq_problem(-1.2, 0.9, d=16, batch=4, seed=2)
    WT_x = xp.asarray(WT.astype(npd))
    rtol = 1e-4 if dtype == "float32" else 1e-10

    def f(z, a):
        return xp.tanh(z @ WT_x + a)

    inj_x = xp.asarray(inj.astype(npd))
    z0 = xp.zeros_like(inj_x)
    batched = fixed_point(
        f, z0, (inj_x,), method=NewtonKrylov(), rtol=rtol, batch_axis=0, arg_batch_axes=0
    )
    assert batched.success
    ref = problems.deq_newton(WT, inj)
    for i in range(inj.shape[0]):
        alone = fixed_point(
            f, z0[i : i + 1, :], (inj_x[i : i + 1, :],), rtol=rtol, method=NewtonKrylov()
        )
        assert alone.success
        tol = 1e-3 if dtype == "float32" else 1e-8
        np.testing.assert_allclose(np.asarray(alone.x)[0], ref[i], atol=tol)
        np.testing.assert_allclose(np.asarray(batched.x)[i], ref[i], atol=tol)


# --- root problems at default settings (issue 13) ---------------------------------------

#: Root tolerance per dtype (relative to ||F(x0)||) for the default-settings tests.
ROOT_RTOL = {"float32": 1e-4, "float64": 1e-10}


def to_np(x):
    return inet.backends.backend_of(x).to_numpy(x)


def _exp_minus_one(x):
    return inet.namespace(x).exp(x) - 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_rejected_line_search_trial_does_not_end_the_run_as_diverged(xp, dtype):
    # From x0 = -3 the full Newton step of exp(x) - 1 lands near x = 16, where the
    # residual is ~1e7 times the current one: the line search rejects that trial and
    # backtracks. The driver's divergence test (1e4 times the best) must not fire on
    # the rejected trial: only accepted iterates count.
    dt = getattr(xp, dtype)
    x0 = xp.full((3,), -3.0, dtype=dt)
    res = inet.solvers.root(_exp_minus_one, x0, method="newton_krylov", rtol=ROOT_RTOL[dtype])
    assert res.success, res.status
    x = np.asarray(to_np(res.x), dtype=np.float64)
    np.testing.assert_allclose(x, 0.0, atol=1e-3 if dtype == "float32" else 1e-9)
    # The first trial really was far uphill (what used to end the run).
    assert float(xp.max(res.history)) > 1e4 * float(res.history[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_inner_solve_handles_a_dense_random_linear_system(xp, dtype):
    # SciPy's TestLinear system: a dense random 20 x 20 A x = b. Restarted GMRES(10)
    # stalls on it (every Newton step then fails to make progress); the default inner
    # solve of a root problem must give Newton steps that converge in a few steps.
    dt = getattr(xp, dtype)
    res = inet.solvers.root(
        dense_linear, xp.zeros((20,), dtype=dt), rtol=ROOT_RTOL[dtype], method="newton_krylov"
    )
    assert res.success, res.status
    assert res.nit <= 5
    A, b = _linear_tables()
    want = np.linalg.solve(A, b)
    got = np.asarray(to_np(res.x), dtype=np.float64)
    assert np.max(np.abs(got - want)) <= (1e-2 if dtype == "float32" else 1e-8) * np.max(
        np.abs(want)
    )


def test_inner_defaults_follow_the_problem_kind():
    nk = NewtonKrylov()
    assert nk.inner_settings("fixed_point") == (10, 20)
    assert nk.inner_settings("root") == (30, 90)
    assert NewtonKrylov(restart=7, inner_maxiter=9).inner_settings("root") == (7, 9)
