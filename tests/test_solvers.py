"""Fixed-point and root solvers: properties on generated problems, classic problems,
batching, statuses, argument checks and the solver protocol, on every backend."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import nonlinear_systems
import numpy as np
import problems
import pytest
from hypothesis import given, settings

import implicitnet as inet
from implicitnet import backends
from implicitnet.solvers import (
    AbstractIterativeSolver,
    Anderson,
    Broyden,
    NewtonKrylov,
    Picard,
    Step,
    fixed_point,
    root,
)
from implicitnet.testing import assert_close
from implicitnet.testing.strategies import (
    contractive_affine_maps,
    contractive_tanh_maps,
    expansive_affine_maps,
    planted_root_problems,
)

# Solve tolerance per dtype, and the slack for float rounding in answers.
RTOL = {"float32": 1e-4, "float64": 1e-9}
ROUND = {"float32": 1e-5, "float64": 1e-13}
DTYPES = ["float32", "float64"]
METHODS = ["picard", "anderson", "broyden", "newton_krylov"]


def to_np(x):
    return backends.backend_of(x).to_numpy(x).astype(np.float64)


def fp_residual(f, x, args):
    """||f(x) - x|| recomputed from the returned x, independently of the solver."""
    return float(np.linalg.norm(to_np(f(x, *args)) - to_np(x)))


def solve(p, **kw):
    call = fixed_point if p.kind == "fixed_point" else root
    return call(p.f, p.x0, p.args, batch_axis=p.batch_axis, arg_batch_axes=p.arg_batch_axes, **kw)


# --- properties on generated problems ------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@settings(deadline=None)
@given(data=contractive_affine_maps(np, max_n=12, max_rho=0.8))
def test_every_method_reaches_the_answer_of_a_contraction(xp, dtype, method, data):
    # Drawn on NumPy in float64 (the reference), solved on `xp` in `dtype`.
    A, c = data.args
    A_x, c_x = xp.asarray(A, dtype=getattr(xp, dtype)), xp.asarray(c, dtype=getattr(xp, dtype))
    x0 = xp.zeros_like(c_x)
    res = fixed_point(problems.affine, x0, (A_x, c_x), method=method, rtol=RTOL[dtype], maxiter=500)
    assert res.success, res
    assert res.x.dtype == x0.dtype
    # Independent check: the residual at the returned x, and the a-posteriori error
    # bound of a contraction ||x - x*|| <= ||f(x) - x|| / (1 - rho).
    r = fp_residual(problems.affine, res.x, (A_x, c_x))
    scale = max(np.linalg.norm(data.solution), np.linalg.norm(c))
    assert r <= RTOL[dtype] * scale * 1.5 + ROUND[dtype] * scale * 10
    err = np.linalg.norm(to_np(res.x) - data.solution)
    assert err <= (r + ROUND[dtype] * scale * 10) / (1 - data.rho) + 10 * ROUND[dtype] * scale


@pytest.mark.parametrize("dtype", DTYPES)
# Each example runs 18 solves; a few examples per backend and dtype keep CI fast.
@settings(deadline=None, max_examples=6)
@given(data=contractive_tanh_maps(np, max_n=10, max_rho=0.9, batch=4))
def test_batched_solve_equals_one_by_one(xp, dtype, data):
    dt = getattr(xp, dtype)
    W, c = (xp.asarray(a, dtype=dt) for a in data.args)
    x0 = xp.zeros_like(c)
    for method in ["anderson", "broyden", "picard"]:
        kw = {"method": method, "rtol": RTOL[dtype], "maxiter": 500}
        # With `arg_batch_axes` finished systems leave the batch; without, they are frozen.
        batched = fixed_point(
            problems.deq_cell, x0, (W, c), batch_axis=0, arg_batch_axes=(None, 0), **kw
        )
        frozen = fixed_point(problems.deq_cell, x0, (W, c), batch_axis=0, **kw)
        assert batched.success and frozen.success
        for i in range(c.shape[0]):
            one = fixed_point(problems.deq_cell, x0[i, :], (W, c[i, :]), **kw)
            # Systems are independent: same trajectory, same answer and iteration count
            # (rounding may move the last iteration by one).
            tol = 10 * ROUND[dtype]
            assert_close(batched.x[i, :], one.x, rtol=tol, atol=tol, xp=xp)
            assert_close(frozen.x[i, :], one.x, rtol=tol, atol=tol, xp=xp)
            assert abs(int(batched.nit[i]) - one.nit) <= 1
            assert abs(int(frozen.nit[i]) - one.nit) <= 1
            assert abs(float(batched.residual[i]) - one.residual) <= 1e-3 * one.residual + tol
        err = np.max(np.abs(to_np(batched.x) - data.solution))
        assert err <= 20 * RTOL[dtype] / (1 - data.rho)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "method",
    [NewtonKrylov(), Broyden(beta=0.5), Anderson(beta=0.5), Picard(damping=0.5)],
    ids=["newton_krylov", "broyden", "anderson", "picard"],
)
@settings(deadline=None)
@given(data=planted_root_problems(np, max_n=8, batch=3))
def test_root_methods_find_the_planted_root(xp, dtype, method, data):
    dt = getattr(xp, dtype)
    args = tuple(xp.asarray(a, dtype=dt) for a in data.args)
    x0 = xp.asarray(data.x0, dtype=dt)
    res = root(
        data.f,
        x0,
        args,
        method=method,
        rtol=RTOL[dtype],
        maxiter=300,
        batch_axis=0,
        arg_batch_axes=data.arg_batch_axes,
    )
    assert res.success, res
    # ||F(x)|| >= (0.5 - 0.25) ||x - x*||: the error is at most 4 ||F(x)||.
    F0 = np.linalg.norm(to_np(data.f(x0, *args)), axis=1)
    Fx = np.linalg.norm(to_np(data.f(res.x, *args)), axis=1)
    assert np.all(Fx <= RTOL[dtype] * F0 * 1.5 + 100 * ROUND[dtype] * (1 + F0))
    err = np.linalg.norm(to_np(res.x) - data.solution, axis=1)
    assert np.all(err <= 4 * Fx + 100 * ROUND[dtype] * (1 + np.abs(data.solution).max()))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None)
@given(data=expansive_affine_maps(np, max_n=5))
def test_anderson_and_broyden_converge_where_picard_does_not(xp, dtype, data):
    dt = getattr(xp, dtype)
    A, c = (xp.asarray(a, dtype=dt) for a in data.args)
    x0 = xp.zeros_like(c)
    picard = fixed_point(
        problems.affine, x0, (A, c), method="picard", rtol=RTOL[dtype], maxiter=300
    )
    assert not picard.success
    assert picard.status in ("diverged", "stagnated")
    assert bool(xp.all(xp.isfinite(picard.x)))
    for method in ["anderson", "broyden"]:
        res = fixed_point(problems.affine, x0, (A, c), method=method, rtol=RTOL[dtype], maxiter=300)
        assert res.success, (method, res)
        err = np.linalg.norm(to_np(res.x) - data.solution)
        # ||x - x*|| <= ||(I - A)^{-1}|| ||f(x) - x|| <= 2 ||f(x) - x|| (eigenvalues of
        # I - A are >= 0.5)
        assert err <= 2 * fp_residual(problems.affine, res.x, (A, c)) + 1e3 * ROUND[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_acceleration_uses_fewer_evaluations_on_a_slow_contraction(xp, dtype):
    A, c, sol = problems.slow_contraction(n=20, rho=0.98)
    dt = getattr(xp, dtype)
    args = (xp.asarray(A, dtype=dt), xp.asarray(c, dtype=dt))
    x0 = xp.zeros_like(args[1])
    runs = {
        m: fixed_point(problems.affine, x0, args, method=m, rtol=RTOL[dtype], maxiter=3000)
        for m in ["picard", "anderson", "broyden"]
    }
    assert all(r.success for r in runs.values()), runs
    assert runs["anderson"].nfev * 3 < runs["picard"].nfev
    assert runs["broyden"].nfev * 3 < runs["picard"].nfev
    for r in runs.values():
        assert np.linalg.norm(to_np(r.x) - sol) <= 100 * RTOL[dtype] * np.linalg.norm(sol)


# --- classic problems ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_dottie_number(xp, dtype, method):
    x0 = xp.ones((3,), dtype=getattr(xp, dtype))
    res = fixed_point(problems.cos_map, x0, method=method, rtol=RTOL[dtype], maxiter=300)
    assert res.success
    expected = xp.full((3,), problems.DOTTIE, dtype=x0.dtype)
    assert_close(res.x, expected, rtol=3 * RTOL[dtype] + 10 * ROUND[dtype], xp=xp)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["picard", "anderson", "broyden", "newton_krylov"])
def test_kepler_equation_batched(xp, dtype, method):
    M = np.linspace(0.1, 3.0, 7)
    e = 0.6
    expected = problems.kepler_reference(M, e)
    dt = getattr(xp, dtype)
    res = fixed_point(
        problems.kepler_map,
        xp.asarray(M, dtype=dt),
        (xp.asarray(M, dtype=dt), e),
        method=method,
        rtol=RTOL[dtype],
        maxiter=500,
        batch_axis=0,
        arg_batch_axes=(0, None),
    )
    assert res.success, res
    # E - e sin E - M has derivative >= 1 - e: error <= residual / (1 - e).
    assert np.max(np.abs(to_np(res.x) - expected)) <= 10 * RTOL[dtype] * 3.0 / (1 - e)
    assert res.nit.shape == (7,) and res.history.shape[1] == 7


@pytest.mark.parametrize("dtype", DTYPES)
def test_rosenbrock_root_by_newton_krylov(xp, dtype):
    dt = getattr(xp, dtype)
    x0 = xp.asarray(problems.ROSENBROCK_START, dtype=dt)
    res = root(problems.rosenbrock_root, x0, rtol=RTOL[dtype], maxiter=200)  # default method
    assert res.success, res
    assert_close(
        res.x,
        xp.asarray(problems.ROSENBROCK_ROOT, dtype=dt),
        rtol=0,
        atol=20 * RTOL[dtype] + 1e3 * ROUND[dtype],
        xp=xp,
    )


# --- statuses ------------------------------------------------------------------------


def test_maxiter_status(xp):
    A, c, _ = problems.slow_contraction(n=10, rho=0.98)
    res = fixed_point(
        problems.affine,
        xp.zeros(10, dtype=xp.float64),
        (xp.asarray(A), xp.asarray(c)),
        method="picard",
        maxiter=5,
    )
    assert not res.success and res.status == "maxiter" and res.nit == 5
    assert res.message == inet._result.status_message("maxiter")
    assert res.history.shape == (6,)
    assert res.residual == pytest.approx(float(xp.min(res.history)))


def test_divergence_returns_the_best_iterate(xp):
    x0 = xp.asarray([0.5, -0.25], dtype=xp.float64)
    res = fixed_point(lambda x: 3.0 * x + 1.0, x0, method="picard", maxiter=1000)
    assert res.status == "diverged" and not res.success
    assert_close(res.x, x0, xp=xp)  # the residual only grew: x0 was the best

    # A map that produces NaN once x leaves [-10, 10]: diverged, never NaN.
    def blowup(x):
        return xp.where(xp.abs(x) < 10, 2.0 * x + 1.0, xp.full_like(x, float("nan")))

    res = fixed_point(blowup, x0, method="anderson", m=1, maxiter=100)
    assert res.status == "diverged"
    assert bool(xp.all(xp.isfinite(res.x)))


def test_stagnation_is_detected(xp):
    # x -> x + 1 has no fixed point: the residual never improves.
    res = fixed_point(
        lambda x: x + 1.0,
        xp.zeros(3, dtype=xp.float64),
        method="picard",
        maxiter=1000,
        stagnation_window=10,
    )
    assert res.status == "stagnated" and res.nit == 10


def test_batched_statuses_are_per_system(xp):
    # System 0 contracts, system 1 diverges: each gets its own status and count.
    scale = xp.asarray([[0.5], [3.0]], dtype=xp.float64)
    res = problems.solve_rows(lambda x, s: s * x + 1.0, scale, xp=xp, rtol=1e-10, maxiter=200)
    assert res.stats["statuses"] == (inet.Status.SUCCESS, inet.Status.DIVERGED)
    assert res.status == "diverged" and not res.success
    assert to_np(res.converged).tolist() == [True, False]
    assert_close(res.x[0, :], xp.asarray([2.0], dtype=xp.float64), rtol=1e-9, xp=xp)
    assert int(res.nit[0]) != int(res.nit[1])


def test_callback_sees_every_iteration_and_can_stop(xp):
    seen = []
    x0 = xp.ones(2, dtype=xp.float64)

    def cb(x, r):
        seen.append(r)
        return len(seen) == 3

    res = fixed_point(problems.cos_map, x0, method="picard", rtol=1e-14, callback=cb)
    assert res.status == "stopped" and res.nit == 3 and len(seen) == 3
    assert all(isinstance(r, float) for r in seen)


def test_float32_stays_float32_and_layout_follows_batch_axis(xp):
    W, inj = problems.deq_problem(d=6, batch=4)
    dt = xp.float32
    # Batch along axis 1: z has shape (d, batch).
    z0 = xp.zeros((6, 4), dtype=dt)

    def cell_t(z, W, inj_t):
        return xp.tanh(W @ z + inj_t)

    res = fixed_point(
        cell_t,
        z0,
        (xp.asarray(W, dtype=dt), xp.asarray(inj.T, dtype=dt)),
        rtol=1e-5,
        batch_axis=1,
        arg_batch_axes=(None, 1),
    )
    assert res.success and res.x.dtype == dt and res.x.shape == (6, 4)
    assert res.residual.dtype == dt and res.nit.shape == (4,)
    expected = problems.deq_reference(W, inj).T
    assert np.max(np.abs(to_np(res.x) - expected)) < 1e-4


# --- argument checks -----------------------------------------------------------------


def test_bad_arguments_raise_before_any_work(xp):
    calls = []

    def f(x):
        calls.append(1)
        return x

    x0 = xp.zeros(3, dtype=xp.float64)
    with pytest.raises(ValueError, match="`rtol`"):
        fixed_point(f, x0, rtol=-1.0)
    with pytest.raises(ValueError, match="`maxiter`"):
        fixed_point(f, x0, maxiter=0)
    with pytest.raises(ValueError, match=r"unknown `method` 'nope'.*anderson.*picard"):
        fixed_point(f, x0, method="nope")
    with pytest.raises(ValueError, match="`x0` must be finite"):
        fixed_point(f, xp.asarray([0.0, float("nan")]))
    with pytest.raises(ValueError, match="`batch_axis`"):
        fixed_point(f, x0, batch_axis=1)
    with pytest.raises(ValueError, match="`arg_batch_axes` needs `batch_axis`"):
        fixed_point(f, x0, (x0,), arg_batch_axes=0)
    with pytest.raises(ValueError, match="`args\\[0\\]` has size 2"):
        fixed_point(
            lambda x, a: x, xp.zeros((3, 1)), (xp.zeros((2, 1)),), batch_axis=0, arg_batch_axes=0
        )
    with pytest.raises(TypeError, match="solver object"):
        fixed_point(f, x0, method=Anderson(), m=3)
    with pytest.raises(TypeError, match="unknown option"):
        fixed_point(f, x0, method="anderson", mm=3)
    with pytest.raises(ValueError, match="`damping`"):
        Picard(damping=1.0)
    with pytest.raises(TypeError, match="`f` must be callable"):
        fixed_point(None, x0)
    assert not calls
    with pytest.raises(ValueError, match="`f` must return an array shaped like `x0`"):
        fixed_point(lambda x: x[:2], x0)
    with pytest.raises(TypeError, match="`F` returned dtype"):
        root(lambda x: xp.astype(x, xp.float32), x0)


# --- the solver protocol -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Relaxed(AbstractIterativeSolver):
    """A user-written solver: over-relaxed iteration x <- x + omega * g(x)."""

    omega: float = 1.2

    def init(self, g, x, gx, *, xp):
        return xp.zeros((x.shape[0],), dtype=x.dtype)  # steps taken, per system

    def step(self, g, x, gx, state, *, xp):
        x_new = x + self.omega * gx
        return Step(x_new, g(x_new), state + 1.0)


def test_user_written_solver_and_registry(xp):
    A, c, sol = problems.slow_contraction(n=8, rho=0.5)
    args = (xp.asarray(A), xp.asarray(c))
    x0 = xp.zeros(8, dtype=xp.float64)
    res = fixed_point(problems.affine, x0, args, method=Relaxed(omega=0.9), rtol=1e-10)
    assert res.success
    assert_close(res.x, xp.asarray(sol), rtol=1e-8, xp=xp)
    inet.solvers.register("relaxed-test", Relaxed, overwrite=True)
    res2 = fixed_point(problems.affine, x0, args, method="relaxed-test", omega=0.9, rtol=1e-10)
    assert res2.nit == res.nit
    with pytest.raises(ValueError, match="already registered"):
        inet.solvers.register("relaxed-test", Relaxed)
    # Batched with compaction: the state (one entry per system) is compacted too.
    res3 = fixed_point(
        problems.affine,
        xp.zeros((3, 8), dtype=xp.float64),
        (args[0], xp.stack([args[1] * s for s in (0.0, 1.0, 2.0)])),
        method=Relaxed(omega=0.9),
        rtol=1e-10,
        batch_axis=0,
        arg_batch_axes=(None, 0),
    )
    assert res3.success and int(res3.nit[0]) == 0


# --- SciPy adapters ------------------------------------------------------------------


@pytest.mark.skip_backend(
    "array_api_strict", "torch", "cupy", reason="the SciPy adapters take NumPy arrays only"
)
@pytest.mark.parametrize(
    "method", ["scipy:anderson", "scipy:broyden1", "scipy:krylov", "scipy:hybr", "scipy:df-sane"]
)
def test_scipy_adapters_agree_with_native_methods(xp, method):
    W, inj = problems.deq_problem(d=8, batch=3)
    expected = problems.deq_reference(W, inj)
    solve = partial(
        fixed_point,
        problems.deq_cell,
        xp.zeros((3, 8)),
        (xp.asarray(W), xp.asarray(inj)),
        method=method,
        rtol=1e-10,
    )
    res = solve()  # the batch as one system
    assert res.success, res
    assert np.max(np.abs(res.x - expected)) < 1e-8
    assert res.nfev == res.stats["ncalls"] and res.nfev > 1
    per = solve(batch_axis=0, arg_batch_axes=(None, 0))  # each row its own system
    assert per.success and per.nfev.shape == (3,)
    assert np.max(np.abs(per.x - expected)) < 1e-8


def test_scipy_adapters_refuse_other_backends():
    xs = backends.get_backend("array_api_strict").namespace()
    with pytest.raises(TypeError, match="needs NumPy arrays"):
        fixed_point(problems.cos_map, xs.ones(2), method="scipy:anderson")


# --- autodiff tensors: the solvers are differentiable code ---------------------------


@pytest.mark.parametrize("method", ["picard", "anderson", "broyden"])
def test_unrolled_gradient_matches_finite_differences(method):
    """Running a solver on autodiff tensors differentiates through its iterations."""
    W = np.array([[0.5, 0.1], [-0.2, 0.3]])
    c = np.array([[1.0, 2.0], [0.5, -0.5], [0.0, 0.3]])

    def loss(W, c):
        xp = inet.namespace(W, c)
        res = fixed_point(
            problems.deq_cell,
            xp.zeros((3, 2), dtype=xp.float64),
            (W, c),
            method=method,
            rtol=1e-13,
            maxiter=300,
            batch_axis=0,
            arg_batch_axes=(None, 0),
        )
        return xp.sum(res.x * res.x)

    g = inet.grad(loss)(W, c)
    eps = 1e-6
    fd = np.zeros_like(W)
    for idx in np.ndindex(*W.shape):
        Wp, Wm = W.copy(), W.copy()
        Wp[idx] += eps
        Wm[idx] -= eps
        fd[idx] = (float(loss(Wp, c)) - float(loss(Wm, c))) / (2 * eps)
    assert np.allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-7)


def test_available_methods_lists_everything():
    names = inet.solvers.available_methods()
    native = ["picard", "anderson", "broyden", "newton_krylov"]
    adapters = [f"scipy:{name}" for name in ("anderson", "broyden1", "krylov", "hybr")]
    for n in native + adapters:
        assert n in names


@pytest.mark.parametrize("method", ["anderson", "broyden"])
def test_iterates_handed_out_are_never_modified_later(xp, method):
    # The history buffers are updated in place on raw arrays: nothing the user sees
    # (callback iterates, the returned x) may alias them.
    W, inj = problems.deq_problem(d=6, batch=3)
    seen = []

    def cb(x, r):
        seen.append((x, to_np(x).copy()))

    res = fixed_point(
        problems.deq_cell,
        xp.zeros((3, 6), dtype=xp.float64),
        (xp.asarray(W), xp.asarray(inj)),
        method=method,
        m=2,
        rtol=1e-12,
        maxiter=60,
        batch_axis=0,
        arg_batch_axes=(None, 0),
        callback=cb,
    )
    assert res.success and len(seen) > 4
    for x, copy in seen:
        assert np.array_equal(to_np(x), copy)


def test_set_index_in_place_on_arrays_and_differentiable_on_tensors(xp):
    from implicitnet._xp import set_index

    buf = xp.zeros((2, 3, 4), dtype=xp.float64)
    row = xp.ones((2, 4), dtype=xp.float64)
    out = set_index(buf, (slice(None), 1), row, xp=xp)
    assert out is buf
    expected = np.zeros((2, 3, 4))
    expected[:, 1] = 1.0
    assert np.array_equal(to_np(buf), expected)

    # On tensors: out of place, and the gradient flows to both the buffer and the value.
    def loss(b, v):
        ns = inet.namespace(b, v)
        new = set_index(b, (slice(None), 1), v, xp=ns)
        return ns.sum(new * new)

    b0 = np.arange(24.0).reshape(2, 3, 4)
    v0 = np.full((2, 4), 3.0)
    gb, gv = inet.grad(loss, argnums=(0, 1))(b0, v0)
    mask = np.ones((2, 3, 4))
    mask[:, 1] = 0.0
    assert np.allclose(gb, 2 * b0 * mask) and np.allclose(gv, 2 * v0)
    assert b0[0, 1, 0] == 4.0  # the input was not modified


# --- automatic beta on root problems ---------------------------------------------------


def _broyden_tridiagonal_scaled(x, s):
    # Broyden's tridiagonal function (Moré, Garbow, Hillstrom 1981, problem 30), one
    # system per row, each scaled by its own factor s. Its Jacobian is positive definite
    # near the start, so a plain step x + beta F(x) with beta > 0 goes uphill.
    xp = inet.namespace(x, s)
    z = xp.zeros((x.shape[0], 1), dtype=x.dtype)
    left = xp.concat([z, x[:, :-1]], axis=1)
    right = xp.concat([x[:, 1:], z], axis=1)
    return s * ((3.0 - 2.0 * x) * x - left - 2.0 * right + 1.0)


@pytest.mark.parametrize("method", ["anderson", "broyden"])
def test_root_default_beta_adapts_to_scale_and_sign(xp, method):
    # The default first step is chosen per system from the starting point (SciPy's
    # scaling, or the linearised-optimal step when that one goes uphill), so the
    # standard start converges whatever the scale of F; beta = 1, the plain step of the
    # old default, goes uphill and fails on the large-scale system.
    x0 = -xp.ones((3, 20), dtype=xp.float64)
    s = xp.asarray([[1.0], [1e-3], [1e4]], dtype=xp.float64)
    kw = dict(rtol=1e-10, maxiter=500, batch_axis=0, arg_batch_axes=0)
    res = root(_broyden_tridiagonal_scaled, x0, (s,), method=method, **kw)
    assert res.success, res.stats["statuses"]
    assert float(np.max(np.abs(to_np(_broyden_tridiagonal_scaled(res.x, s)) / to_np(s)))) < 1e-8
    # An explicit beta is used as given.
    plain = root(_broyden_tridiagonal_scaled, x0, (s,), method=method, beta=1.0, **kw)
    assert plain.stats["statuses"][2] != inet.Status.SUCCESS


def _root_residual(A, c, *, xp):
    """``g(x) = x A^T - c`` on ``(batch, n)`` rows, marked as a root problem's residual."""
    A_x = xp.asarray(A, dtype=xp.float64)
    c_x = xp.asarray(c, dtype=xp.float64)

    def g(x):
        return xp.matmul(x, xp.matrix_transpose(A_x)) - c_x

    g.kind = "root"
    return g


def test_automatic_beta_takes_the_linearised_step_only_when_clearly_uphill(xp):
    from implicitnet.solvers._base import UPHILL_COSINE, initial_beta

    n = 10
    c = np.linspace(-1.0, 1.0, n)
    x0 = xp.zeros((1, n), dtype=xp.float64)
    scipy_beta = 0.5 / np.linalg.norm(c)  # 0.5 max(||x0||, 1) / ||F(x0)||
    # Clearly uphill (J = I, cosine 1): the linearised-optimal step, beta = -1, which
    # solves this linear system in one step.
    g = _root_residual(np.eye(n), c, xp=xp)
    beta = initial_beta(None, g, x0, g(x0), xp=xp)
    np.testing.assert_allclose(to_np(beta), [-1.0], rtol=1e-6)
    # Uphill but nearly orthogonal (a rotation with a small symmetric part: cosine
    # 0.02): the linearised step would be ~0.02, a tenth of SciPy's, and Broyden's
    # inverse-Jacobian guess would stay that small; SciPy's scaling is kept.
    A = np.kron(np.eye(n // 2), np.array([[0.02, 1.0], [-1.0, 0.02]]))
    assert 0 < 0.02 < UPHILL_COSINE
    g = _root_residual(A, c, xp=xp)
    beta = initial_beta(None, g, x0, g(x0), xp=xp)
    np.testing.assert_allclose(to_np(beta), [scipy_beta], rtol=1e-12)
    # Downhill (J = -I): SciPy's scaling as well.
    g = _root_residual(-np.eye(n), c, xp=xp)
    beta = initial_beta(None, g, x0, g(x0), xp=xp)
    np.testing.assert_allclose(to_np(beta), [scipy_beta], rtol=1e-12)


# --- Moré–Garbow–Hillstrom root problems at their standard starting points -----------


MGH = {
    "rosenbrock": (nonlinear_systems.rosenbrock, [-1.2, 1.0], [1.0, 1.0]),
    "powell_singular": (nonlinear_systems.powell_singular, [3.0, -1.0, 0.0, 1.0], [0.0] * 4),
    "brown_almost_linear": (nonlinear_systems.brown_almost_linear, [0.5] * 10, [1.0] * 10),
    # The gradient of Wood's function also vanishes at saddle points: any root counts.
    "wood_gradient": (nonlinear_systems.wood, [-3.0, -1.0, -3.0, -1.0], None),
    "broyden_tridiagonal": (nonlinear_systems.broyden_tridiagonal, [-1.0] * 20, None),
}
MGH_SOLVED = (  # what each method solves at default settings (benchmarks/root_problems.py)
    [("newton_krylov", name) for name in MGH]
    + [("anderson", name) for name in MGH]
    + [("broyden", name) for name in ("brown_almost_linear", "broyden_tridiagonal")]
)


@pytest.mark.parametrize(("method", "problem"), MGH_SOLVED)
def test_mgh_root_problems_at_default_settings(xp, method, problem):
    F, x0, solution = MGH[problem]
    res = root(F, xp.asarray(x0, dtype=xp.float64), method=method, rtol=1e-10, maxiter=2000)
    assert res.success, (res.status, res.nfev)
    # Recomputed independently of the solver's own residual.
    assert float(np.linalg.norm(to_np(F(res.x)))) <= 1e-8 * max(
        1.0, float(np.linalg.norm(to_np(F(xp.asarray(x0, dtype=xp.float64)))))
    )
    # Powell's singular function has a singular Jacobian at its root: x converges slowly.
    if solution is not None and problem != "powell_singular":
        np.testing.assert_allclose(to_np(res.x), solution, atol=1e-5)


# --- one status order for every driver ---------------------------------------------


def test_status_severity_is_one_order():
    order = ["success", "maxiter", "stopped", "stagnated", "breakdown", "diverged"]
    assert sorted(inet.Status, key=lambda s: s.severity) == [inet.Status(s) for s in order]
    assert inet.Status.worst([]) == inet.Status.SUCCESS
    assert inet.Status.worst(["success", "maxiter", "stagnated"]) == "stagnated"
    assert inet.Status.worst(["stagnated", "breakdown", "maxiter"]) == "breakdown"
    assert inet.Status.worst(["breakdown", "diverged"]) == "diverged"


def test_linear_and_nonlinear_drivers_rank_statuses_alike(xp):
    from implicitnet.linalg import _base as lb

    # A batch of linear systems, one stagnated and one broken down: the batch status
    # is the worse of the two by `Status.severity`, as for a nonlinear batch.
    b = xp.ones((2, 3), dtype=xp.float64)
    p = lb.prepare(lambda v: v, b, None, None, 0, xp=xp)
    code = xp.asarray([lb.CODE_STAGNATED, lb.CODE_BREAKDOWN], dtype=xp.int64)
    out = lb._Outcome(
        x=b,
        residual=xp.ones((2,), dtype=xp.float64),
        converged=xp.asarray([False, False]),
        nit=lb.int_zeros(2, like=b, xp=xp),
        nfev=lb.int_zeros(2, like=b, xp=xp),
        history=[xp.ones((2,), dtype=xp.float64)],
        code=code,
    )
    res = lb.make_result(p, out, xp=xp)
    assert res.status == inet.Status.worst(["stagnated", "breakdown"]) == "breakdown"
