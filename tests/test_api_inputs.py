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
