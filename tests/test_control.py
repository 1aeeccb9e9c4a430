"""implicitnet.control: dynamics against Gymnasium, the MPC layer's solution, box limits,
batching and warm starts, and its gradients against finite differences and unrolled
backpropagation; Hessian-vector products against differences of gradients."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import implicitnet as inet
from implicitnet.control import (
    CartPole,
    Pendulum,
    QuadraticCost,
    hessian_vector_product,
    mpc,
    shift_plan,
)
from implicitnet.testing import assert_close, check_grads

# Tolerances: the MPC solve (float64, tight) and the comparisons built on it.
SOLVE_RTOL = 1e-10
TOL = {"float32": 1e-4, "float64": 1e-9}
GRAD_RTOL = 1e-5  # implicit gradient vs central differences of solves
ACTIVE_GRAD_RTOL = 1e-4  # the same with active box limits (ill-conditioned Hessian)
# Implicit vs backprop through Broyden iterations converged to a gradient norm of 1e-13
# (the derivatives of quasi-Newton iterates converge more slowly than the iterates).
UNROLLED_RTOL = 1e-5

HAS_GYM = importlib.util.find_spec("gymnasium") is not None
needs_gym = pytest.mark.skipif(
    not HAS_GYM, reason="needs gymnasium (pip install 'implicitnet[control]')"
)

MODEL = Pendulum()
COST = QuadraticCost(features=MODEL.observe)


def _weights(xp, dtype=None):
    dtype = xp.float64 if dtype is None else dtype
    return {
        "q": xp.asarray([1.0, 1.0, 0.1], dtype=dtype),
        "r": xp.asarray([0.01], dtype=dtype),
        "goal": xp.asarray([1.0, 0.0, 0.0], dtype=dtype),
    }


X0 = np.array([[0.8, 0.3], [-0.5, 0.1], [2.5, -0.4]])


def _solve(x0, params, weights, **kw):
    kw.setdefault("horizon", 6)
    kw.setdefault("u_lower", -2.0)
    kw.setdefault("u_upper", 2.0)
    kw.setdefault("rtol", SOLVE_RTOL)
    return mpc(MODEL, COST, x0, params, weights, **kw)


# -- Dynamics ------------------------------------------------------------------------


@needs_gym
def test_pendulum_matches_gymnasium_step_by_step():
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    params = MODEL.default_params(xp=np)
    x = np.asarray(env.unwrapped.state, dtype=np.float64)
    for t in range(200):
        u = rng.uniform(-3.0, 3.0, size=1)  # beyond the torque limit too: clipped alike
        obs, *_ = env.step(u.astype(np.float32))
        x = MODEL(x, u, params)
        np.testing.assert_allclose(x, env.unwrapped.state, rtol=1e-5, atol=1e-6, err_msg=f"{t=}")
        np.testing.assert_allclose(MODEL.observe(x), obs, rtol=1e-5, atol=1e-6)
        x = np.asarray(env.unwrapped.state, dtype=np.float64)  # no drift from float32 u
    env.close()


@needs_gym
def test_cartpole_matches_gymnasium_step_by_step():
    import gymnasium as gym

    model = CartPole()
    params = model.default_params(xp=np)
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(1)
    steps = 0
    for episode in range(3):
        env.reset(seed=episode)
        x = np.asarray(env.unwrapped.state, dtype=np.float64)
        terminated = False
        while not terminated:
            action = int(rng.integers(2))
            _, _, terminated, truncated, _ = env.step(action)
            x = model(x, np.array([10.0 if action == 1 else -10.0]), params)
            np.testing.assert_allclose(x, env.unwrapped.state, rtol=1e-12, atol=1e-12)
            steps += 1
            if truncated:
                break
    assert steps > 20
    env.close()


@needs_gym
@pytest.mark.slow  # 100 solves, about 15 s
def test_mpc_balances_cartpole_in_gymnasium():
    import gymnasium as gym

    model = CartPole()
    params = model.default_params(xp=np)
    cost = QuadraticCost()
    w = {"q": np.array([1.0, 0.1, 10.0, 0.1]), "r": np.array([1e-3]), "goal": np.zeros(4)}
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    plan, total = None, 0.0
    for _ in range(100):
        x = np.asarray(env.unwrapped.state, dtype=np.float64)
        sol = mpc(
            model, cost, x, params, w, horizon=10, u_lower=-10.0, u_upper=10.0,
            u_init=plan, rtol=0.0, atol=1e-3, newton_steps=5, maxiter=1,
        )  # fmt: skip
        # Gymnasium's actions are the forces -10 and +10: push the way the plan does.
        _, reward, terminated, _, _ = env.step(int(sol.u[0, 0] > 0))
        total += reward
        assert not terminated, f"the pole fell after {total:.0f} steps"
        plan = shift_plan(sol.u)
    env.close()
    assert total == 100


def test_dynamics_agree_across_backends(xp, backend):
    for model, x, u in (
        (Pendulum(), np.array([[0.3, -1.0], [3.0, 7.9]]), np.array([[1.5], [-2.5]])),
        (CartPole(), np.array([[0.1, -0.2, 0.05, 0.3], [0.0, 1.0, -0.2, 0.0]]), np.ones((2, 1))),
    ):
        p_np = model.default_params(xp=np, damping=0.1)
        expected = model(x, u, p_np)
        params = model.default_params(xp=xp, damping=0.1)
        out = model(backend.from_numpy(x), backend.from_numpy(u), params)
        assert_close(out, backend.from_numpy(expected), rtol=1e-12, xp=xp)


def test_dynamics_parameters_change_the_motion():
    x, u = np.array([0.3, 0.0]), np.array([1.0])
    base = MODEL(x, u, MODEL.default_params(xp=np))
    for name, value in (("gravity", 9.0), ("mass", 2.0), ("length", 0.5)):
        other = MODEL(x, u, MODEL.default_params(xp=np, **{name: value}))
        assert not np.allclose(base, other), name
    moving = np.array([0.3, 2.0])
    assert (
        MODEL(moving, u, MODEL.default_params(xp=np, damping=0.5))[1]
        < MODEL(moving, u, MODEL.default_params(xp=np))[1]
    )
    with pytest.raises(TypeError, match="unknown parameters"):
        MODEL.default_params(xp=np, friction=1.0)
    with pytest.raises(ValueError, match="`dt`"):
        Pendulum(dt=0.0)


# -- The MPC solution ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mpc_solution_is_stationary_and_within_limits(xp, backend, dtype):
    dt = getattr(xp, dtype)
    x0 = xp.asarray(X0, dtype=dt)
    params = MODEL.default_params(xp=xp, dtype=dt)
    sol = _solve(x0, params, _weights(xp, dt), u_lower=-0.5, u_upper=0.4, rtol=1e-5)
    assert sol.success, sol.message
    assert sol.u.dtype == dt and sol.u.shape == (3, 6, 1) and sol.x.shape == (3, 7, 2)
    u = backend.to_numpy(sol.u)
    assert np.all(u >= -0.5) and np.all(u <= 0.4)
    assert np.any(u < -0.49) or np.any(u > 0.39)  # a limit is active somewhere
    # The predicted states are the rollout of the controls through the model.
    x = backend.to_numpy(sol.x)
    p_np = MODEL.default_params(xp=np)
    for t in range(6):
        np.testing.assert_allclose(
            x[:, t + 1], MODEL(x[:, t], u[:, t], p_np), rtol=10 * TOL[dtype], atol=TOL[dtype]
        )


def test_mpc_is_a_minimum_against_perturbed_plans():
    sol = _solve(X0, MODEL.default_params(xp=np), _weights(np))
    rng = np.random.default_rng(0)
    # The objective of perturbed controls, by a rollout of its own.
    w = _weights(np)
    p = MODEL.default_params(xp=np)

    def objective(u):
        x, total = X0, 0.0
        for t in range(6):
            total = total + COST.stage(x, u[:, t], w)
            x = MODEL(x, u[:, t], p)
        # The layer adds `regularization * ||v||^2` on the plan v = atanh(u / 2).
        reg = 1e-4 * np.sum(np.arctanh(u[..., 0] / 2.0) ** 2, axis=-1)
        return total + COST.terminal(x, w) + reg

    best = objective(sol.u)
    np.testing.assert_allclose(best, sol.cost, rtol=1e-12)
    for _ in range(20):
        u = np.clip(sol.u + 0.05 * rng.standard_normal(sol.u.shape), -1.999, 1.999)
        assert np.all(objective(u) >= best)


def test_mpc_batch_equals_one_by_one(xp, backend):
    params = MODEL.default_params(xp=xp)
    batch = _solve(xp.asarray(X0[:2]), params, _weights(xp), horizon=4)
    for i in range(2):
        one = _solve(xp.asarray(X0[i]), params, _weights(xp), horizon=4)
        assert one.u.shape == (4, 1)
        assert_close(one.u, batch.u[i, ...], rtol=1e-6, atol=1e-8, xp=xp)


def test_batched_params_equal_separate_solves():
    x0 = np.array([[0.8, 0.3], [0.8, 0.3]])
    p1, p2 = MODEL.default_params(xp=np), MODEL.default_params(xp=np, mass=1.5, damping=0.2)
    stacked = {k: np.stack([p1[k], p2[k]]) for k in p1}
    both = _solve(x0, stacked, _weights(np), batched_params=True)
    for i, p in enumerate((p1, p2)):
        np.testing.assert_allclose(both.u[i], _solve(x0[i], p, _weights(np)).u, atol=1e-7)
    with pytest.raises(ValueError, match="batched_params"):
        _solve(X0, stacked, _weights(np), batched_params=True)


def test_warm_start_takes_fewer_iterations():
    params, w = MODEL.default_params(xp=np), _weights(np)
    x = X0
    cold = _solve(x, params, w, horizon=10)
    x_next = MODEL(x, cold.u[:, 0], params)
    warm = _solve(x_next, params, w, horizon=10, u_init=shift_plan(cold.u))
    cold_next = _solve(x_next, params, w, horizon=10)
    assert warm.success and cold_next.success
    assert warm.nit < cold_next.nit
    np.testing.assert_allclose(warm.u, cold_next.u, rtol=1e-5, atol=1e-7)


def test_mpc_rejects_bad_arguments():
    params, w = MODEL.default_params(xp=np), _weights(np)
    with pytest.raises(ValueError, match="`horizon`"):
        _solve(X0, params, w, horizon=0)
    with pytest.raises(ValueError, match="`u_lower`"):
        _solve(X0, params, w, u_lower=1.0, u_upper=-1.0)
    with pytest.raises(ValueError, match="`u_init`"):
        _solve(X0, params, w, u_init=np.zeros((6, 1)))
    with pytest.raises(ValueError, match="`x0`"):
        _solve(np.zeros((1, 2, 2)), params, w)
    with pytest.raises(TypeError, match="`dynamics`"):
        mpc(None, COST, X0, params, w, horizon=3, u_lower=-1.0, u_upper=1.0)
    with pytest.raises(ValueError, match="`rtol`"):
        _solve(X0, params, w, rtol=-1.0)


# -- Second-order information --------------------------------------------------------


def test_hessian_vector_product_matches_differences_of_gradients(xp, backend):
    rng = np.random.default_rng(0)
    v_np, d_np = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    from implicitnet.control._mpc import _Shooting

    lo, hi = xp.asarray([-2.0], dtype=xp.float64), xp.asarray([2.0], dtype=xp.float64)
    problem = _Shooting(MODEL, COST, 6, lo, hi, 1e-4)
    args = (xp.asarray(X0), MODEL.default_params(xp=xp), _weights(xp))
    v, d = xp.asarray(v_np), xp.asarray(d_np)
    hv = hessian_vector_product(problem.total, v, d, *args)
    eps = 1e-5
    fd = (problem.gradient(v + eps * d, *args) - problem.gradient(v - eps * d, *args)) / (2 * eps)
    assert_close(hv, fd, rtol=1e-6, atol=1e-7, xp=xp)
    # The batched Hessians of the Newton passes (forward differences of the gradient,
    # symmetrised) give the same products, system by system, to the differences' accuracy.
    g, H = problem.gradient_and_hessian(v, *args, xp=xp)
    assert_close(g, problem.gradient(v, *args), rtol=1e-12, atol=1e-14, xp=xp)
    assert_close(xp.linalg.vecdot(H, d[:, None, :], axis=-1), hv, rtol=1e-5, atol=1e-5, xp=xp)


# -- Gradients through the layer -----------------------------------------------------


def _plan(x0, params, weights, **kw):
    return _solve(x0, params, weights, **kw).u


def test_mpc_gradients_match_finite_differences():
    params = MODEL.default_params(xp=np, damping=0.1)
    res = check_grads(_plan, (X0, params, _weights(np)), rtol=GRAD_RTOL, elementwise=4)
    assert res.max_rel_error < GRAD_RTOL


def test_mpc_gradients_match_finite_differences_with_active_limits():
    # Saturated controls leave the Hessian with eigenvalues near `regularization`: the
    # solves' errors are amplified in the differences, hence a larger step.
    params = MODEL.default_params(xp=np)
    res = check_grads(
        lambda x0, p, w: _plan(x0, p, w, u_lower=-0.6, u_upper=0.6, atol=1e-12),
        (X0, params, _weights(np)),
        eps=1e-4,
        rtol=ACTIVE_GRAD_RTOL,
        elementwise=4,
    )
    assert res.max_rel_error < ACTIVE_GRAD_RTOL


def _loss(x0, params, weights, **kw):
    u = _plan(x0, params, weights, **kw)
    xp = inet.namespace(u)
    return xp.sum(u[:, :3, 0] ** 2) + xp.sum(u)


def test_implicit_gradient_equals_unrolled_backprop(xp, backend):
    params = MODEL.default_params(xp=xp, damping=0.1)
    args = (xp.asarray(X0), params, _weights(xp))
    implicit = inet.grad(_loss, argnums=(0, 1, 2))(*args)
    unrolled = inet.grad(_loss, argnums=(0, 1, 2))(
        *args,
        backward="unrolled",
        # The fixed-point configuration (short memory, safeguard resets): its unrolled
        # derivative iterates converge with its iterates; the root defaults' long plain
        # Broyden memory lets them lag far behind.
        method=inet.solvers.Broyden(m=10, safeguard=10.0),
        maxiter=400,
        rtol=0.0,
        atol=1e-13,
    )
    for a, b in zip(inet.tree_leaves(implicit), inet.tree_leaves(unrolled)):
        assert_close(a, b, rtol=UNROLLED_RTOL, atol=1e-9, xp=xp)
