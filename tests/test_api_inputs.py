"""SciPy-style inputs at the public boundary: Python numbers and lists as `x0`."""

from __future__ import annotations

import numpy as np
import pytest

import implicitnet as inet

COS_FIXED_POINT = 0.7390851332085995  # the Dottie number


@pytest.mark.parametrize("x0", [1.0, 1, [1.0, 2.0], (0.5, 1.5, 2.5), [[1.0], [2.0]]])
def test_python_numbers_as_x0_solve_on_numpy(x0):
    res = inet.fixed_point(np.cos, x0, rtol=1e-12)
    expected_shape = np.shape(x0)
    assert isinstance(res.x, np.ndarray)
    assert res.x.shape == expected_shape
    assert res.x.dtype == np.float64
    np.testing.assert_allclose(res.x, np.full(expected_shape, COS_FIXED_POINT), rtol=1e-10)


def test_python_numbers_as_x0_follow_the_namespace_of_args(xp):
    c = xp.asarray([0.5, 1.0])
    res = inet.fixed_point(lambda x, c: 0.5 * xp.cos(x) + c, [0.0, 0.0], (c,), rtol=1e-12)
    assert inet.namespace(res.x) is xp
    x = np.asarray(inet.backends.backend_of(res.x).to_numpy(res.x))
    np.testing.assert_allclose(x, 0.5 * np.cos(x) + np.array([0.5, 1.0]), rtol=1e-10)


def test_root_of_a_python_number():
    res = inet.root(lambda x: x**3 - 2.0, 1.0, rtol=1e-12)
    assert res.success
    assert float(res.x) == pytest.approx(2.0 ** (1 / 3), rel=1e-10)


def test_gradient_with_a_list_x0():
    def loss(c):
        f = lambda x, c: 0.5 * inet.ops.cos(x) + c  # noqa: E731
        return inet.ops.sum(inet.fixed_point(f, [0.0, 0.0], (c,), rtol=1e-12).x)

    c = np.array([0.5, 1.0])
    g = inet.grad(loss)(c)
    # dz/dc = 1 / (1 + 0.5 sin z) at the fixed point, elementwise.
    z = inet.fixed_point(lambda x, c: 0.5 * np.cos(x) + c, [0.0, 0.0], (c,), rtol=1e-14).x
    np.testing.assert_allclose(g, 1.0 / (1.0 + 0.5 * np.sin(z)), rtol=1e-8)


@pytest.mark.parametrize("x0", [True, "1.0", [], [1.0, "a"], None])
def test_non_numeric_x0_is_refused(x0):
    with pytest.raises(TypeError, match="`x0`"):
        inet.fixed_point(np.cos, x0)


# --- issue 13: one input contract everywhere ------------------------------------------

LINEAR = ["gmres", "bicgstab", "neumann", "anderson", "broyden"]


@pytest.mark.parametrize("name", LINEAR)
def test_linear_solvers_refuse_maxiter_zero(name):
    A = np.diag([1.0, 2.0, 3.0])
    solve = getattr(inet.linalg, name)
    with pytest.raises(ValueError, match="`maxiter` must be at least 1"):
        solve(lambda v: 0.5 * (A @ v), np.ones(3), maxiter=0)


@pytest.mark.parametrize("name", LINEAR)
def test_linear_solvers_take_lists_and_0d_right_hand_sides(name):
    solve = getattr(inet.linalg, name)
    # 0.5 A has spectral radius below 1, so Neumann converges too.
    A = 0.5 * np.diag([1.0, 1.5, 1.8])
    res = solve(lambda v: np.eye(3) @ v - (np.eye(3) - A) @ v, [1.0, 2.0, 3.0], rtol=1e-10)
    assert res.success and isinstance(res.x, np.ndarray)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, [1.0, 2.0, 3.0]), rtol=1e-8)
    res = solve(lambda v: 0.5 * v, np.asarray(1.0), rtol=1e-10)
    assert res.success and res.x.shape == ()
    assert float(res.x) == pytest.approx(2.0, rel=1e-8)
    res = solve(np.asarray([[0.5]]), 1.0, rtol=1e-10)
    assert res.x.shape == () and float(res.x) == pytest.approx(2.0, rel=1e-8)


def test_linear_list_b_follows_the_namespace_of_the_matrix(xp):
    A = xp.asarray([[2.0, 0.0], [0.0, 4.0]])
    res = inet.linalg.gmres(A, [2.0, 2.0], rtol=1e-12)
    assert inet.namespace(res.x) is xp
    assert float(res.x[1]) == pytest.approx(0.5, rel=1e-10)


@pytest.mark.parametrize("name", ["tol", "xtol", "f_tol"])
@pytest.mark.parametrize("call", ["fixed_point", "root"])
def test_scipy_tolerance_names_point_to_rtol_and_atol(name, call):
    solve = getattr(inet.solvers, call)
    with pytest.raises(TypeError, match=r"`rtol`.*`atol`") as info:
        solve(np.cos, np.ones(2), **{name: 1e-8})
    assert f"`{name}`" in str(info.value)


def test_numpy_function_on_a_traced_value_says_what_to_use():
    for fun in (lambda z: np.sum(np.tanh(z)), lambda z: np.sum(z), lambda z: np.asarray(z)):
        with pytest.raises(TypeError, match=r"inet\.namespace\(z\).*implicitnet\.ops"):
            inet.grad(fun)(np.ones(3))
    # NumPy's operators with the array on the left still give the tensor's operator.
    g = inet.grad(lambda z: inet.ops.sum(np.ones(3) * z + np.full(3, 2.0) - z**2))(np.ones(3))
    np.testing.assert_allclose(g, np.full(3, -1.0))
    g = inet.grad(lambda z: inet.ops.sum(np.eye(3) @ z))(np.ones(3))
    np.testing.assert_allclose(g, np.ones(3))


def test_gradient_through_an_unconverged_forward_solve_warns():
    def loss(w):
        xp = inet.namespace(w)
        res = inet.fixed_point(lambda z, w: xp.tanh(w * z) + 1.0, np.zeros(3), (w,), maxiter=2)
        return xp.sum(res.x)

    with pytest.warns(inet.ConvergenceWarning, match="forward solve that did not converge"):
        inet.grad(loss)(np.full(3, 0.9))


def test_no_warning_when_the_forward_solve_converged():
    import warnings

    def loss(w):
        xp = inet.namespace(w)
        res = inet.fixed_point(lambda z, w: xp.tanh(w * z) + 1.0, np.zeros(3), (w,), rtol=1e-10)
        return xp.sum(res.x)

    with warnings.catch_warnings():
        warnings.simplefilter("error", inet.ConvergenceWarning)
        inet.grad(loss)(np.full(3, 0.5))


@pytest.mark.parametrize(
    ("x0", "match"),
    [
        (np.array([1.0, None], dtype=object), "`x0` must be an array of numbers"),
        (np.ones(2, dtype=np.float16), "`x0` has dtype float16"),
        (np.ones(2, dtype=np.longdouble), "`x0` has dtype"),
    ],
    ids=["object-none", "float16", "longdouble"],
)
def test_unsupported_x0_dtypes_get_our_message(x0, match):
    with pytest.raises(TypeError, match=match):
        inet.solvers.fixed_point(np.cos, x0)
    with pytest.raises(TypeError, match=match.replace("x0", "b")):
        inet.linalg.gmres(lambda v: v, x0)


def test_callback_returning_an_array_in_batched_mode(xp):
    x0 = xp.ones((3, 2), dtype=xp.float64)
    with pytest.raises(TypeError, match="`callback` must return True, False or None"):
        inet.solvers.fixed_point(
            lambda x: 0.5 * xp.cos(x), x0, batch_axis=0, callback=lambda x, r: r < 1.0
        )
    # A reduced answer works.
    res = inet.solvers.fixed_point(
        lambda x: 0.5 * xp.cos(x), x0, batch_axis=0, callback=lambda x, r: bool(xp.all(r < 1.0))
    )
    assert res.status == "stopped" or res.success


def test_raw_solve_checks_its_kind():
    kw = dict(method="anderson", rtol=1e-8, atol=0.0, maxiter=50, batch_axis=None)
    kw.update(arg_batch_axes=None, callback=None, xp=None, options={})
    res = inet.solvers.solve("fixed_point", np.cos, np.ones(1), (), **kw)
    assert res.success and abs(float(res.x[0]) - 0.7390851332151607) < 1e-7
    with pytest.raises(ValueError, match="`kind`"):
        inet.solvers.solve("fixedpoint", np.cos, np.ones(1), (), **kw)
