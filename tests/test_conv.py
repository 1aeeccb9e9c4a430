"""Convolution kernels: forward against a direct loop, VJPs by the adjoint identity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from implicitnet.backends import _numpy as numpy_backend

from implicitnet.nn import _conv_kernels as K
from implicitnet.testing import assert_close

RTOL = {"float32": 2e-5, "float64": 1e-12}
DTYPES = ["float32", "float64"]


def direct_conv2d(x, w, stride, padding):
    """The definition, one output element at a time (float64)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xpad = np.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    xpad[:, :, padding : padding + h, padding : padding + wd] = x
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, o, ho, wo))
    for b in range(n):
        for oc in range(o):
            for i in range(ho):
                for j in range(wo):
                    win = xpad[b, :, stride * i : stride * i + kh, stride * j : stride * j + kw]
                    y[b, oc, i, j] = np.sum(w[oc] * win)
    return y


@st.composite
def conv_problems(draw):
    kh = draw(st.integers(1, 3))
    kw = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * padding), 7))
    w = draw(st.integers(max(1, kw - 2 * padding), 7))
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3))
    o = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, c, kh, kw))
    return x, wt, stride, padding, rng


def _impls(xp, backend):
    """The dispatching kernels and, on NumPy, also the portable ones."""
    impls = [("dispatch", K.conv2d_raw, K.conv2d_input_grad_raw, K.conv2d_weight_grad_raw)]
    if backend.name != "array_api_strict":
        impls.append(
            (
                "portable",
                lambda x, w, s, p: K.portable_conv2d(x, w, s, p, xp=xp),
                lambda g, w, sh, s, p: K.portable_conv2d_input_grad(g, w, sh, s, p, xp=xp),
                lambda g, x, sh, s, p: K.portable_conv2d_weight_grad(g, x, sh, s, p, xp=xp),
            )
        )
    return impls


@pytest.mark.parametrize("dtype", DTYPES)
@given(problem=conv_problems())
def test_conv2d_matches_direct_loop_and_adjoint_identity(backend, xp, dtype, problem):
    x_np, w_np, stride, padding, rng = problem
    y_np = direct_conv2d(x_np, w_np, stride, padding)
    g_np = rng.standard_normal(y_np.shape)
    dt = getattr(xp, dtype)
    x, w, g = (xp.asarray(a, dtype=dt) for a in (x_np, w_np, g_np))
    tol = RTOL[dtype]
    for name, conv, dconv_x, dconv_w in _impls(xp, backend):
        y = conv(x, w, stride, padding)
        assert_close(y, xp.asarray(y_np, dtype=dt), rtol=tol, atol=tol * 10, xp=xp, err_msg=name)
        dx = dconv_x(g, w, x.shape, stride, padding)
        dw = dconv_w(g, x, w.shape, stride, padding)
        assert dx.dtype == dt and dw.dtype == dt
        assert tuple(dx.shape) == x_np.shape and tuple(dw.shape) == w_np.shape
        # <conv(x, w), g> = <x, dconv_x(g, w)> = <w, dconv_w(g, x)>
        lhs = float(np.sum(y_np * g_np))
        scale = tol * 10 * (1 + np.sum(np.abs(y_np * g_np)))
        assert abs(lhs - float(xp.sum(x * dx))) <= scale, name
        assert abs(lhs - float(xp.sum(w * dw))) <= scale, name


def test_backends_choose_their_kernel():
    from implicitnet import backends

    assert backends.get_backend("numpy").conv2d is not None
    strict = backends.get_backend("array_api_strict")
    assert strict.conv2d is None  # uses the portable kernel in implicitnet.nn
    x = np.ones((1, 1, 3, 3))
    w = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(numpy_backend.conv2d(x, w, 1, 0), np.full((1, 1, 2, 2), 4.0))


def test_input_grad_is_explicit_transposed_convolution():
    # 1 channel, 1-D-like case written out: x = [x0, x1, x2], w = [w0, w1], stride 1:
    # y0 = w0 x0 + w1 x1, y1 = w0 x1 + w1 x2  =>  dx = [w0 g0, w1 g0 + w0 g1, w1 g1].
    w = np.array([2.0, 3.0]).reshape(1, 1, 1, 2)
    g = np.array([5.0, 7.0]).reshape(1, 1, 1, 2)
    dx = K.conv2d_input_grad_raw(g, w, (1, 1, 1, 3), 1, 0)
    np.testing.assert_array_equal(dx.ravel(), [10.0, 15.0 + 14.0, 21.0])


# --- the differentiable primitives and the Conv2d module ---------------------------------

from implicitnet import nn  # noqa: E402
from implicitnet.testing import check_grads  # noqa: E402

GRAD_CASES = [(1, 0), (2, 1), (3, 2)]


@pytest.mark.parametrize(("stride", "padding"), GRAD_CASES)
def test_conv2d_gradients(backend, xp, stride, padding):
    x = backend.random_normal((2, 3, 7, 6), 0)
    w = backend.random_normal((4, 3, 3, 2), 1)
    check_grads(lambda a, b: nn.conv2d(a, b, stride=stride, padding=padding), (x, w), rtol=1e-6)


@pytest.mark.parametrize(("stride", "padding"), GRAD_CASES)
def test_conv2d_vjp_kernels_are_differentiable(backend, xp, stride, padding):
    # The VJP kernels are primitives too (for double backward): check their own VJPs.
    x = backend.random_normal((2, 3, 7, 6), 0)
    w = backend.random_normal((4, 3, 3, 2), 1)
    g = backend.random_normal(tuple(nn.conv2d(x, w, stride=stride, padding=padding).shape), 2)
    check_grads(
        lambda gg, ww: nn.conv2d_input_grad(
            gg, ww, x_shape=x.shape, stride=stride, padding=padding
        ),
        (g, w),
        rtol=1e-6,
    )
    check_grads(
        lambda gg, xx: nn.conv2d_weight_grad(
            gg, xx, w_shape=w.shape, stride=stride, padding=padding
        ),
        (g, x),
        rtol=1e-6,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_module_matches_direct_loop(backend, xp, dtype):
    conv = nn.Conv2d.create(
        2, 3, (3, 2), stride=2, padding=1, seed=4, dtype=dtype, backend=backend.name
    )
    x_np = np.random.default_rng(5).standard_normal((2, 2, 6, 5))
    x = xp.asarray(x_np, dtype=getattr(xp, dtype))
    w_np = backend.to_numpy(conv.weight).astype(np.float64)
    b_np = backend.to_numpy(conv.bias).astype(np.float64)
    expected = direct_conv2d(x_np, w_np, 2, 1) + b_np[None, :, None, None]
    y = conv(x)
    assert y.dtype == getattr(xp, dtype)
    tol = RTOL[dtype]
    assert_close(y, xp.asarray(expected, dtype=getattr(xp, dtype)), rtol=tol, atol=tol * 10, xp=xp)
    # Same seed, same filters on every backend.
    ref = nn.Conv2d.create(2, 3, (3, 2), stride=2, padding=1, seed=4, dtype=dtype)
    np.testing.assert_array_equal(backend.to_numpy(conv.weight), ref.weight)
    check_grads(lambda m, a: m(a), (conv, x), rtol=1e-6)


def test_conv2d_module_bad_arguments():
    with pytest.raises(ValueError, match="`stride`"):
        nn.Conv2d.create(1, 1, 3, stride=0)
    with pytest.raises(ValueError, match="`kernel_size`"):
        nn.Conv2d.create(1, 1, (3, 3, 3))
    with pytest.raises(ValueError, match="`x`"):
        nn.Conv2d.create(1, 1, 3)(np.ones((3, 3)))
