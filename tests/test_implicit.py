"""Differentiable solves: implicit gradients against closed forms, unrolled backprop and
finite differences; backward modes; root problems; memory; error paths."""

from __future__ import annotations

import gc
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import implicitnet as inet
from implicitnet.testing import assert_close

# Tolerances of the forward solve and of the gradient comparisons (float64 throughout:
# gradient checks run in float64 only).
FWD_RTOL = 1e-12
GRAD_RTOL = 1e-7


def _contractive(n: int, rho: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    return rho * A / np.linalg.norm(A, 2)


def _tanh_problem(seed=0, d=6, batch=4, p=3, rho=0.8):
    rng = np.random.default_rng(seed)
    W = _contractive(d, rho, seed)
    U = rng.standard_normal((d, p)) / np.sqrt(p)
    b = 0.1 * rng.standard_normal(d)
    x = rng.standard_normal((batch, p))
    return W, U, b, x


def cell(z, W, U, b, x):
    xp = inet.namespace(z, W, U, b, x)
    return xp.tanh(z @ xp.matrix_transpose(W) + x @ xp.matrix_transpose(U) + b)


def deq_loss(W, U, b, x, *, backward="implicit", maxiter=200, method="anderson", rtol=FWD_RTOL):
    xp = inet.namespace(W, U, b, x)
    z0 = xp.zeros((x.shape[0], W.shape[0]), dtype=W.dtype)
    res = inet.fixed_point(
        cell,
        z0,
        (W, U, b, x),
        method=method,
        rtol=rtol,
        maxiter=maxiter,
        batch_axis=0,
        backward=backward,
    )
    return xp.sum(res.x * res.x) + xp.sum(xp.sin(res.x))


# ----------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------


@settings(deadline=None)
@given(
    n=st.integers(1, 8), k=st.integers(1, 4), rho=st.floats(0.05, 0.9), seed=st.integers(0, 2**16)
)
def test_linear_fixed_point_gradient_is_closed_form(xp, n, k, rho, seed):
    """z = A z + B θ gives dz*/dθ = (I - A)^{-1} B; checked to 1e-10 in float64."""
    A_np = _contractive(n, rho, seed)
    B_np = np.random.default_rng(seed + 1).standard_normal((n, k))
    theta_np = np.random.default_rng(seed + 2).standard_normal(k)
    c_np = np.random.default_rng(seed + 3).standard_normal(n)  # loss L = c · z*
    A, B, theta, c = (xp.asarray(a) for a in (A_np, B_np, theta_np, c_np))

    def loss(theta, B):
        def f(z, th, B):
            # A is a captured constant: use namespace functions, since a raw strict
            # array cannot be the left operand of a Tensor.
            return inet.namespace(z, th, B).matmul(A, z) + B @ th

        res = inet.fixed_point(
            f, xp.zeros(n, dtype=xp.float64), (theta, B), rtol=1e-14, maxiter=500
        )
        return inet.ops.sum(res.x * c)

    g_theta, g_B = inet.grad(loss, argnums=(0, 1))(theta, B)
    u = np.linalg.solve(np.eye(n) - A_np.T, c_np)  # adjoint: u = c + A^T u
    z_star = np.linalg.solve(np.eye(n) - A_np, B_np @ theta_np)
    assert np.allclose(A_np @ z_star + B_np @ theta_np, z_star)
    assert_close(g_theta, xp.asarray(B_np.T @ u), rtol=1e-10, atol=1e-12, xp=xp)
    assert_close(g_B, xp.asarray(np.outer(u, theta_np)), rtol=1e-10, atol=1e-12, xp=xp)


def test_root_gradient_is_closed_form(xp):
    """x² = a at x > 0: dx/da = 1 / (2 sqrt(a)); a batched, per-system root problem."""
    a = xp.asarray([0.25, 1.0, 4.0, 9.0])

    def loss(a):
        res = inet.root(
            lambda x, a: x * x - a, xp.ones(4, dtype=xp.float64), (a,), rtol=1e-13, batch_axis=0
        )
        return inet.ops.sum(res.x)

    g = inet.grad(loss)(a)
    assert_close(g, 0.5 / xp.sqrt(a), rtol=1e-9, xp=xp)


def test_backward_none_is_the_raw_solve(xp):
    """``backward=None``: `f` receives the very arrays of `args` (no wrapper), and the
    result equals the default's and the closed form."""
    W = xp.asarray([[0.5, 0.1], [0.0, 0.3]])
    theta = xp.asarray([1.0, -2.0])
    seen = []

    def f(z, th):
        seen.append(th)
        return W @ z + th

    raw = inet.fixed_point(f, xp.zeros(2, dtype=xp.float64), (theta,), rtol=1e-12, backward=None)
    assert all(th is theta for th in seen) and len(seen) == raw.nfev
    default = inet.fixed_point(f, xp.zeros(2, dtype=xp.float64), (theta,), rtol=1e-12)
    assert raw.success and raw.nit == default.nit
    assert_close(raw.x, default.x, rtol=0, atol=0, xp=xp)
    want = np.linalg.solve(np.eye(2) - np.asarray([[0.5, 0.1], [0.0, 0.3]]), [1.0, -2.0])
    assert_close(raw.x, xp.asarray(want), rtol=1e-10, xp=xp)


# ----------------------------------------------------------------------------------
# The tanh DEQ: implicit vs unrolled vs finite differences
# ----------------------------------------------------------------------------------


def _fd_grads(W, U, b, x, eps=1e-6):
    """Central differences of deq_loss along a fixed random direction per argument."""
    rng = np.random.default_rng(7)
    out = []
    args = [W, U, b, x]
    for i, a in enumerate(args):
        v = rng.standard_normal(a.shape)
        plus = list(args)
        minus = list(args)
        plus[i] = a + eps * v
        minus[i] = a - eps * v
        out.append((float(deq_loss(*plus)) - float(deq_loss(*minus))) / (2 * eps))
        out[-1] = (out[-1], v)
    return out


def test_tanh_deq_implicit_matches_finite_differences(xp, backend):
    W, U, b, x = (backend.from_numpy(a) for a in _tanh_problem())
    grads = inet.grad(deq_loss, argnums=(0, 1, 2, 3))(W, U, b, x)
    fds = _fd_grads(*(_ for _ in _tanh_problem()))
    for g, (fd, v) in zip(grads, fds):
        directional = float(np.sum(backend.to_numpy(g) * v))
        assert directional == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_tanh_deq_implicit_equals_unrolled_as_iterations_grow(xp, backend):
    W, U, b, x = (backend.from_numpy(a) for a in _tanh_problem(seed=3))
    implicit = inet.grad(deq_loss, argnums=(0, 1, 2, 3))(W, U, b, x)
    errors = []
    for maxiter in (3, 8, 40):
        unrolled = inet.grad(deq_loss, argnums=(0, 1, 2, 3))(
            W, U, b, x, backward="unrolled", method="picard", maxiter=maxiter, rtol=0.0
        )
        errors.append(
            max(
                float(np.max(np.abs(backend.to_numpy(g) - backend.to_numpy(h))))
                for g, h in zip(implicit, unrolled)
            )
        )
    # Unrolled backprop converges to the implicit gradient (linearly, like the forward).
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6
    # Anderson run on tensors (unrolled) to full convergence agrees as well.
    unrolled_aa = inet.grad(deq_loss, argnums=(0, 1, 2, 3))(W, U, b, x, backward="unrolled")
    for g, h in zip(implicit, unrolled_aa):
        assert_close(g, h, rtol=1e-6, atol=1e-9, xp=xp)


@pytest.mark.parametrize("linear_solver", ["gmres", "bicgstab", "broyden", "anderson", "neumann"])
def test_every_backward_linear_solver_gives_the_same_gradient(xp, backend, linear_solver):
    W, U, b, x = (backend.from_numpy(a) for a in _tanh_problem(seed=5))
    reference = inet.grad(deq_loss, argnums=(0, 1, 2, 3))(
        W, U, b, x, backward=inet.ImplicitAdjoint(linear_solver="gmres", rtol=1e-12)
    )
    adjoint = inet.ImplicitAdjoint(linear_solver=linear_solver, rtol=1e-10, maxiter=2000)
    grads = inet.grad(deq_loss, argnums=(0, 1, 2, 3))(W, U, b, x, backward=adjoint)
    for g, h in zip(grads, reference):
        assert_close(g, h, rtol=1e-7, atol=1e-9, xp=xp)


def _host_max(backend, value) -> float:
    if isinstance(value, int | float):
        return float(value)
    return float(np.max(backend.to_numpy(value)))


def test_phantom_is_close_and_cheaper(xp, backend):
    W, U, b, x = (backend.from_numpy(a) for a in _tanh_problem(seed=11, rho=0.5))
    seen = {}

    def loss(W, backward):
        xp_ = inet.namespace(W)
        res = inet.fixed_point(
            cell,
            xp_.zeros((4, 6), dtype=W.dtype),
            (W, U, b, x),
            batch_axis=0,
            rtol=1e-12,
            backward=backward,
        )
        seen[backward if isinstance(backward, str) else "obj"] = res
        return xp_.sum(res.x * res.x)

    g_impl = backend.to_numpy(inet.grad(loss)(W, "implicit"))
    g_ph = backend.to_numpy(inet.grad(loss)(W, inet.PhantomAdjoint(steps=5, damping=1.0)))
    rel = np.linalg.norm(g_ph - g_impl) / np.linalg.norm(g_impl)
    assert rel < 0.05
    implicit_cost = _host_max(backend, seen["implicit"].stats["backward"]["nmatvec"])
    phantom_cost = _host_max(backend, seen["obj"].stats["backward"]["nmatvec"])
    assert phantom_cost < implicit_cost
    # Jacobian-free (steps=0) is a cruder approximation, still pointing the same way.
    g_jfb = backend.to_numpy(inet.grad(loss)(W, inet.PhantomAdjoint(steps=0)))
    assert float(np.sum(g_jfb * g_impl)) > 0


def test_backward_stats_are_reported(xp, backend):
    W, U, b, x = (backend.from_numpy(a) for a in _tanh_problem())
    box = {}

    def loss(W):
        res = inet.fixed_point(
            cell,
            inet.namespace(W).zeros((4, 6), dtype=W.dtype),
            (W, U, b, x),
            batch_axis=0,
            rtol=1e-10,
        )
        box["res"] = res
        return inet.namespace(W).sum(res.x)

    inet.grad(loss)(W)
    stats = box["res"].stats["backward"]
    assert stats["success"] is True or bool(stats["success"])
    assert stats["status"] == "success"
    assert _host_max(backend, stats["nit"]) >= 1


def test_backward_nonconvergence_warns_and_stays_finite(xp, backend):
    W, U, b, x = (backend.from_numpy(a) for a in _tanh_problem())
    adjoint = inet.ImplicitAdjoint(linear_solver="neumann", rtol=1e-14, maxiter=2)
    with pytest.warns(inet.ConvergenceWarning, match="adjoint"):
        grads = inet.grad(deq_loss, argnums=(0, 1, 2, 3))(W, U, b, x, backward=adjoint)
    for g in grads:
        assert np.all(np.isfinite(backend.to_numpy(g)))


def test_x0_gets_zero_gradient_and_constants_mix(xp, backend):
    W_np, U_np, b_np, x_np = _tanh_problem()
    W, U, b, x = (backend.from_numpy(a) for a in (W_np, U_np, b_np, x_np))
    params = {"W": W, "inj": (U, b)}

    def loss(params, z0):
        def f(z, params, x):
            U, b = params["inj"]
            return cell(z, params["W"], U, b, x)

        res = inet.fixed_point(f, z0, (params, x), batch_axis=0, rtol=1e-12)
        return inet.ops.sum(res.x)

    z0 = xp.zeros((4, 6), dtype=xp.float64)
    g_params, g_z0 = inet.grad(loss, argnums=(0, 1))(params, z0)
    assert_close(g_z0, xp.zeros_like(z0), rtol=0, xp=xp)
    assert set(g_params) == {"W", "inj"}
    direct = inet.grad(lambda W, U, b: loss({"W": W, "inj": (U, b)}, z0), argnums=(0, 1, 2))(
        W, U, b
    )
    assert_close(g_params["W"], direct[0], rtol=1e-12, xp=xp)
    assert_close(g_params["inj"][1], direct[2], rtol=1e-12, xp=xp)


def test_closure_capture_is_refused(xp, backend):
    W, U, b, x = (backend.from_numpy(a) for a in _tanh_problem())

    def loss(W):
        def f(z, x):  # captures the traced W instead of receiving it in args
            return cell(z, W, U, b, x)

        res = inet.fixed_point(
            f, inet.namespace(x).zeros((4, 6), dtype=x.dtype), (x,), batch_axis=0
        )
        return inet.namespace(W).sum(res.x)

    with pytest.raises(ValueError, match=r"closure.*`args`"):
        inet.grad(loss)(W)


def test_no_tape_without_differentiation(xp, backend):
    W, U, b, x = (backend.from_numpy(a) for a in _tanh_problem())
    res = inet.fixed_point(cell, xp.zeros((4, 6), dtype=xp.float64), (W, U, b, x), batch_axis=0)
    assert not isinstance(res.x, inet.Tensor)
    assert inet.namespace(res.x) is xp
    assert res.success


def test_bad_backward_arguments():
    with pytest.raises(ValueError, match=r"unknown `backward`.*implicit"):
        inet.fixed_point(np.cos, np.ones(1), backward="adjoint")
    with pytest.raises(TypeError, match="`backward`"):
        inet.fixed_point(np.cos, np.ones(1), backward=3)
    with pytest.raises(ValueError, match="gmres"):
        inet.ImplicitAdjoint(linear_solver="cg")
    with pytest.raises(ValueError, match="`rtol`"):
        inet.ImplicitAdjoint(rtol=-1.0)
    with pytest.raises(ValueError, match="`damping`"):
        inet.PhantomAdjoint(damping=0.0)
    with pytest.raises(ValueError, match="`steps`"):
        inet.PhantomAdjoint(steps=-1)


# ----------------------------------------------------------------------------------
# Jacobian regularisation
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fd", "vjp"])
def test_jacobian_regularization_estimates_frobenius_norm(xp, backend, method):
    W_np, U_np, b_np, x_np = _tanh_problem(seed=2, d=5, batch=3)
    W, U, b, x = (backend.from_numpy(a) for a in (W_np, U_np, b_np, x_np))
    z_np = np.random.default_rng(0).standard_normal((3, 5)) * 0.3
    z = backend.from_numpy(z_np)
    # Exact: J is block diagonal, J_b = diag(1 - tanh²(pre_b)) W.
    pre = z_np @ W_np.T + x_np @ U_np.T + b_np
    exact = sum(np.sum(((1 - np.tanh(p) ** 2)[:, None] * W_np) ** 2) for p in pre) / z_np.size
    est = inet.jacobian_regularization(cell, z, (W, U, b, x), n_probes=400, seed=1, method=method)
    assert float(est) == pytest.approx(exact, rel=0.1)


@pytest.mark.parametrize("method", ["fd", "vjp"])
def test_jacobian_regularization_is_differentiable(xp, backend, method):
    W_np, U_np, b_np, x_np = _tanh_problem(seed=2, d=5, batch=3)
    W, U, b, x = (backend.from_numpy(a) for a in (W_np, U_np, b_np, x_np))
    z = backend.from_numpy(np.random.default_rng(0).standard_normal((3, 5)) * 0.3)

    def reg(W):
        return inet.jacobian_regularization(
            cell, z, (W, U, b, x), n_probes=2, seed=3, method=method
        )

    g = backend.to_numpy(inet.grad(reg)(W))
    v = np.random.default_rng(4).standard_normal(W_np.shape)
    eps = 1e-5
    fd = (
        float(reg(backend.from_numpy(W_np + eps * v)))
        - float(reg(backend.from_numpy(W_np - eps * v)))
    ) / (2 * eps)
    assert float(np.sum(g * v)) == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_jacobian_regularization_bad_arguments():
    with pytest.raises(ValueError, match="`method`"):
        inet.jacobian_regularization(np.tanh, np.ones(2), method="exact")
    with pytest.raises(ValueError, match="`n_probes`"):
        inet.jacobian_regularization(np.tanh, np.ones(2), n_probes=0)


# ----------------------------------------------------------------------------------
# Memory: constant in the forward iterations (counted with tracemalloc, not timed)
# ----------------------------------------------------------------------------------


def _peak_bytes(maxiter: int, backward: str) -> int:
    W, U, b, x = _tanh_problem(seed=0, d=64, batch=32, p=16, rho=0.99)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", inet.ConvergenceWarning)
            inet.grad(deq_loss, argnums=(0, 1, 2))(
                W, U, b, x, backward=backward, maxiter=maxiter, rtol=0.0, method="picard"
            )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.skip_backend("array_api_strict", reason="tracemalloc counts NumPy buffers only")
def test_implicit_memory_is_constant_in_depth(backend):
    if backend.name != "numpy":
        pytest.skip("memory is counted with tracemalloc, which sees NumPy buffers only")
    shallow = _peak_bytes(10, "implicit")
    deep = _peak_bytes(100, "implicit")
    assert deep <= 1.10 * shallow, (shallow, deep)
    unrolled_shallow = _peak_bytes(10, "unrolled")
    unrolled_deep = _peak_bytes(100, "unrolled")
    assert unrolled_deep > 3 * unrolled_shallow, (unrolled_shallow, unrolled_deep)
    # (the unrolled tape keeps one array per iteration, as PyTorch's autograd does: about
    # 1.8x the implicit peak at 100 iterations; tests/test_autodiff.py counts it exactly)
    assert unrolled_deep > 1.3 * deep, (deep, unrolled_deep)


def test_unrolled_through_a_nondifferentiable_method_says_what_to_do():
    def loss(c):
        res = inet.fixed_point(
            lambda x, c: 0.5 * inet.ops.cos(x) + c,
            np.zeros(2),
            (c,),
            method="newton_krylov",
            backward="unrolled",
        )
        return inet.ops.sum(res.x)

    with pytest.raises(NotImplementedError, match=r"unrolled.*backward='implicit'"):
        inet.grad(loss)(np.array([0.5, 1.0]))
