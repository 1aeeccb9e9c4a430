"""nn modules: layers against NumPy formulas, gradients, reparameterisations, save/load."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import implicitnet as inet
from implicitnet import nn, optim
from implicitnet.autodiff import value_and_grad
from implicitnet.testing import assert_close, check_grads

RTOL = {"float32": 2e-5, "float64": 1e-12}
DTYPES = ["float32", "float64"]


def _as(xp, a, dtype="float64"):
    return xp.asarray(a, dtype=getattr(xp, dtype))


def _sumsq(y):
    return inet.namespace(y).sum(y * y)


# --- layers -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(backend, xp, dtype):
    lin = nn.Linear.create(4, 3, seed=0, dtype=dtype, backend=backend.name)
    ref = nn.Linear.create(4, 3, seed=0, dtype=dtype)
    np.testing.assert_array_equal(backend.to_numpy(lin.weight), ref.weight)
    assert np.all(np.abs(ref.weight) <= 0.5)  # U(-1/sqrt(4), 1/sqrt(4))
    x_np = np.random.default_rng(1).standard_normal((5, 4))
    y = lin(_as(xp, x_np, dtype))
    expected = x_np @ ref.weight.T.astype(np.float64) + ref.bias
    assert_close(y, _as(xp, expected, dtype), rtol=RTOL[dtype], atol=RTOL[dtype], xp=xp)
    assert nn.Linear.create(4, 3, bias=False).bias is None
    assert lin.num_parameters() == 15


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_and_group_norm(backend, xp, dtype):
    rng = np.random.default_rng(2)
    x_np = rng.standard_normal((3, 4, 2, 5)) * 3 + 1
    ln = nn.LayerNorm.create((2, 5), dtype=dtype, backend=backend.name)
    ln = ln.replace(
        weight=_as(xp, rng.standard_normal((2, 5)), dtype),
        bias=_as(xp, rng.standard_normal((2, 5)), dtype),
    )
    mu = x_np.mean(axis=(2, 3), keepdims=True)
    var = x_np.var(axis=(2, 3), keepdims=True)
    w, b = backend.to_numpy(ln.weight), backend.to_numpy(ln.bias)
    expected = (x_np - mu) / np.sqrt(var + 1e-5) * w + b
    tol = RTOL[dtype] * 10
    assert_close(ln(_as(xp, x_np, dtype)), _as(xp, expected, dtype), rtol=tol, atol=tol, xp=xp)
    gn = nn.GroupNorm.create(2, 4, dtype=dtype, backend=backend.name)
    gn = gn.replace(
        weight=_as(xp, rng.standard_normal(4), dtype), bias=_as(xp, rng.standard_normal(4), dtype)
    )
    g = x_np.reshape(3, 2, 2 * 2 * 5)
    normed = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)
    w, b = backend.to_numpy(gn.weight), backend.to_numpy(gn.bias)
    expected = normed.reshape(x_np.shape) * w[None, :, None, None] + b[None, :, None, None]
    assert_close(gn(_as(xp, x_np, dtype)), _as(xp, expected, dtype), rtol=tol, atol=tol, xp=xp)
    if dtype == "float64":
        check_grads(lambda m, a: m(a), (ln, _as(xp, x_np)), rtol=1e-6)
        check_grads(lambda m, a: m(a), (gn, _as(xp, x_np)), rtol=1e-6)
    with pytest.raises(ValueError, match="`num_groups`"):
        nn.GroupNorm.create(3, 4)


def test_activations_and_losses(backend, xp):
    x_np = np.array([[-3.0, 0.5, 2.0], [1000.0, -1000.0, 0.0]])
    x = _as(xp, x_np)
    assert_close(nn.relu(x), _as(xp, np.maximum(x_np, 0)), xp=xp)
    assert_close(nn.tanh(x), _as(xp, np.tanh(x_np)), xp=xp)
    assert_close(nn.sigmoid(x), _as(xp, 0.5 * (1 + np.tanh(x_np / 2))), rtol=1e-14, xp=xp)
    c = np.sqrt(2 / np.pi)
    gelu = 0.5 * x_np * (1 + np.tanh(c * (x_np + 0.044715 * x_np**3)))
    assert_close(nn.gelu(x), _as(xp, gelu), rtol=1e-14, xp=xp)
    # Stable log-softmax: shift by the row maximum by hand.
    m = x_np.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x_np - m).sum(axis=1))
    assert_close(nn.logsumexp(x), _as(xp, lse), rtol=1e-14, xp=xp)
    assert_close(nn.log_softmax(x), _as(xp, x_np - lse[:, None]), rtol=1e-14, atol=1e-14, xp=xp)
    assert_close(
        nn.softmax(x), _as(xp, np.exp(x_np - lse[:, None])), rtol=1e-14, atol=1e-300, xp=xp
    )
    labels = xp.asarray([2, 1])
    per = lse - x_np[[0, 1], [2, 1]]
    assert_close(nn.cross_entropy(x, labels, reduction="none"), _as(xp, per), rtol=1e-14, xp=xp)
    assert float(nn.cross_entropy(x, labels)) == pytest.approx(per.mean(), rel=1e-14)
    assert float(nn.cross_entropy(x, labels, reduction="sum")) == pytest.approx(per.sum())
    assert nn.accuracy(x, xp.asarray([2, 0])) == 1.0
    for f in (nn.relu, nn.tanh, nn.sigmoid, nn.gelu, nn.softmax, nn.log_softmax):
        assert f(_as(xp, x_np, "float32")).dtype == xp.float32


def test_cross_entropy_gradient_is_softmax_minus_onehot(xp):
    rng = np.random.default_rng(3)
    z_np = rng.standard_normal((4, 5)) * 3
    labels_np = np.array([0, 4, 2, 2])
    value, g = value_and_grad(nn.cross_entropy)(_as(xp, z_np), xp.asarray(labels_np))
    assert value.shape == () and type(value) is type(_as(xp, z_np))  # 0-d, no NumPy scalar
    p = np.exp(z_np - z_np.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(4), labels_np] -= 1
    assert_close(g, _as(xp, p / 4), rtol=1e-12, atol=1e-15, xp=xp)
    # a scalar loss, as it is (a NumPy scalar on raw NumPy arrays, 0-d when traced)
    check_grads(lambda z: nn.cross_entropy(z, xp.asarray(labels_np)), (_as(xp, z_np),))
    with pytest.raises(ValueError, match="`labels`"):
        nn.cross_entropy(_as(xp, z_np), xp.asarray([0, 1]))
    with pytest.raises(ValueError, match="`reduction`"):
        nn.cross_entropy(_as(xp, z_np), xp.asarray(labels_np), reduction="max")


def test_sequential_model_is_a_pytree_and_trains(backend, xp):
    ds = inet.data.load_digits(flatten=True, backend=backend.name)
    x, y = ds.x_train[:256, ...], ds.y_train[:256]
    rng = nn.generator(0)
    model = nn.Sequential(
        (
            nn.Linear.create(64, 32, seed=rng, backend=backend.name),
            nn.Tanh(),
            nn.Linear.create(32, 10, seed=rng, backend=backend.name),
        )
    )
    assert [k for k in nn.named_leaves(model)] == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.2.weight",
        "layers.2.bias",
    ]

    def loss_fn(m, xb, yb):
        return nn.cross_entropy(m(xb), yb)

    loss_grad = value_and_grad(loss_fn)
    opt = optim.Adam(lr=1e-2)
    state = opt.init(model)
    first, grads = loss_grad(model, x, y)
    assert type(grads) is nn.Sequential
    assert grads.layers[0].weight.shape == model.layers[0].weight.shape
    for _ in range(30):
        loss, grads = loss_grad(model, x, y)
        model, state = opt.update(model, grads, state)
    assert float(loss) < 0.5 * float(first)
    assert nn.accuracy(model(x), y) > 0.8


# --- dropout ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_variational_dropout(backend, xp, dtype):
    drop = nn.VariationalDropout(rate=0.25)
    z = _as(xp, np.ones((200, 50)), dtype)
    mask = drop.mask(z.shape, seed=7, like=z)
    assert mask.dtype == z.dtype and backend.is_array(mask)
    m = backend.to_numpy(mask)
    assert set(np.unique(m)) <= {0.0, np.float32(1 / 0.75) if dtype == "float32" else 1 / 0.75}
    assert abs((m == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(m, nn.dropout_mask((200, 50), 0.25, 7, dtype=dtype))
    # One mask per solve: every call applies the same mask.
    assert_close(drop(z, mask), drop(z, mask), rtol=0, xp=xp)
    assert_close(drop(z, mask), z * mask, rtol=0, xp=xp)
    assert nn.VariationalDropout(rate=0.0).mask(z.shape, seed=0, like=z) is None
    assert drop(z, None) is z
    # A shared mask along size-1 axes.
    m2 = backend.to_numpy(nn.dropout_mask((4, 3, 1, 1), 0.5, 1, backend=backend.name))
    assert m2.shape == (4, 3, 1, 1)
    with pytest.raises(ValueError, match="`rate`"):
        nn.VariationalDropout(rate=1.0)


# --- reparameterisations ----------------------------------------------------------------


def test_weight_norm(backend, xp):
    lin = nn.Linear.create(4, 3, seed=0, backend=backend.name)
    wn = nn.weight_norm(lin)
    x = backend.random_normal((5, 4), 1)
    assert_close(wn(x), lin(x), rtol=1e-14, xp=xp)  # same function at the start
    v = backend.to_numpy(wn.v)
    g = np.array([2.0, -1.0, 0.5])
    wn = wn.replace(g=_as(xp, g))
    expected = g[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)
    assert_close(wn.weight(), _as(xp, expected), rtol=1e-14, xp=xp)
    check_grads(lambda m, a: m(a), (wn, x), rtol=1e-6)
    conv = nn.weight_norm(nn.Conv2d.create(2, 3, 3, seed=0, backend=backend.name))
    v = backend.to_numpy(conv.v)
    assert_close(conv.g, _as(xp, np.linalg.norm(v.reshape(3, -1), axis=1)), rtol=1e-14, xp=xp)
    with pytest.raises(TypeError, match="`layer`"):
        nn.weight_norm(nn.ReLU())


def test_spectral_norm(backend, xp):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 4))
    sn = nn.spectral_norm(nn.Linear(weight=_as(xp, W), bias=None), seed=1)
    for _ in range(50):
        sn = nn.update_buffers(sn)
    sigma = np.linalg.norm(W, 2)
    assert float(sn.sigma()) == pytest.approx(sigma, rel=1e-10)
    assert_close(sn.weight(), _as(xp, W / sigma), rtol=1e-9, xp=xp)
    # Inside a model: update_buffers reaches nested layers; u gets no gradient.
    model = nn.Sequential((sn, nn.ReLU()))
    assert nn.update_buffers(model).layers[0].u.shape == (6,)
    x = backend.random_normal((3, 4), 2)
    _, grads = value_and_grad(lambda m: _sumsq(m(x)))(model)
    assert_close(grads.layers[0].u, xp.zeros((6,), dtype=xp.float64), xp=xp)
    # With u converged, the gradient in W is that of W / ||W||_2 (finite differences).
    sn60 = sn.replace(n_power_iterations=60)
    check_grads(lambda w, a: sn60.replace(weight_orig=w)(a), (sn60.weight_orig, x), rtol=1e-5)


@st.composite
def monotone_problems(draw):
    n = draw(st.integers(2, 8))
    m = draw(st.floats(0.05, 1.0))
    scale = draw(st.floats(0.1, 2.0)) / n**0.5
    seed = draw(st.integers(0, 2**16))
    start_scale = draw(st.floats(0.0, 100.0))
    return n, m, scale, seed, start_scale


@given(problem=monotone_problems())
def test_monotone_equilibrium_converges_from_any_start(backend, xp, problem):
    n, m, scale, seed, start_scale = problem
    lin = nn.MonotoneLinear.create(n, m=m, scale=scale, seed=seed, backend=backend.name)
    W = lin.weight()
    S_np = np.eye(n) - backend.to_numpy(W)
    assert np.linalg.eigvalsh((S_np + S_np.T) / 2).min() >= m - 1e-10  # strongly monotone
    rng = np.random.default_rng(seed)
    inj = _as(xp, rng.standard_normal((3, n)))  # U x + b, a batch of 3

    # Forward-backward splitting with the layer's step size is a contraction:
    # z <- relu(z - alpha ((I - W) z - inj)), factor sqrt(1 - m^2 / L^2) < 1.
    alpha = lin.step_size()
    L = np.linalg.norm(S_np, 2)

    def fb(z):
        return nn.relu(z - alpha * (z - lin(z) - inj))

    z1, z2 = (_as(xp, rng.standard_normal((3, n)) * start_scale) for _ in range(2))
    d0 = np.linalg.norm(backend.to_numpy(z1 - z2))
    d1 = np.linalg.norm(backend.to_numpy(fb(z1) - fb(z2)))
    assert d1 <= np.sqrt(1 - (m / L) ** 2) * d0 * (1 + 1e-12) + 1e-12

    # Peaceman-Rachford splitting (Winston & Kolter's solver) from two random starts:
    #   u_half = 2 z - u;  z_half = (I + S)^{-1} (u_half + inj);  u = 2 z_half - u_half;
    #   z = relu(u),  with S = I - W (strongly monotone, so it converges from any start).
    eye = xp.eye(n, dtype=xp.float64)
    R = xp.linalg.solve(eye + _as(xp, S_np), eye)  # (I + S)^{-1}
    fixed_points = []
    for _ in range(2):
        u = _as(xp, rng.standard_normal((3, n)) * start_scale)
        z = nn.relu(u)
        for k in range(2000):
            u_half = 2.0 * z - u
            u_new = 2.0 * ((u_half + inj) @ xp.matrix_transpose(R)) - u_half
            z = nn.relu(u_new)
            done = k % 10 == 0 and float(xp.max(xp.abs(u_new - u))) <= 1e-12 * (
                1 + float(xp.max(xp.abs(u)))
            )
            u = u_new
            if done:
                break
        residual = float(xp.max(xp.abs(nn.relu(lin(z) + inj) - z)))
        assert residual <= 1e-8, residual
        fixed_points.append(backend.to_numpy(z))
    # Unique equilibrium: both starts reach the same point.
    np.testing.assert_allclose(fixed_points[0], fixed_points[1], rtol=1e-7, atol=1e-9)


def test_monotone_linear_gradients(backend, xp):
    lin = nn.MonotoneLinear.create(4, m=0.2, seed=0, backend=backend.name)
    A, B = (backend.to_numpy(a) for a in (lin.A, lin.B))
    expected = 0.8 * np.eye(4) - A.T @ A + B - B.T
    assert_close(lin.weight(), _as(xp, expected), rtol=1e-14, atol=1e-15, xp=xp)
    check_grads(lambda mod, z: mod(z), (lin, backend.random_normal((3, 4), 1)), rtol=1e-6)
    with pytest.raises(ValueError, match="`m`"):
        nn.MonotoneLinear.create(3, m=0.0)


# --- save / load ------------------------------------------------------------------------


def _model(backend, dtype="float64"):
    rng = nn.generator(0)
    return nn.Sequential(
        (
            nn.Linear.create(3, 4, seed=rng, dtype=dtype, backend=backend.name),
            nn.ReLU(),
            nn.spectral_norm(nn.Linear.create(4, 2, seed=rng, dtype=dtype, backend=backend.name)),
        )
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load_roundtrip(tmp_path, backend, xp, dtype):
    model = _model(backend, dtype)
    opt = optim.Adam(lr=0.1)
    state = opt.init(model)
    x = _as(xp, np.ones((2, 3)), dtype)
    _, grads = value_and_grad(lambda m: _sumsq(m(x)))(model)
    model, state = opt.update(model, grads, state)
    path = tmp_path / "ckpt.npz"
    tree = {"model": model, "opt_state": state}
    nn.save(path, tree, metadata={"epoch": 1, "lr": 0.1})
    assert nn.load_metadata(path) == {"epoch": 1, "lr": 0.1}
    like = {"model": _model(backend, dtype), "opt_state": opt.init(_model(backend, dtype))}
    back = nn.load(path, like=like)
    assert type(back["model"]) is nn.Sequential and int(back["opt_state"].step) == 1
    for (name, a), b in zip(nn.named_leaves(tree).items(), inet.tree_leaves(back)):
        assert_close(b, a, rtol=0, xp=xp if a.dtype != xp.int64 else None, err_msg=name)
    assert_close(back["model"](x), model(x), rtol=0, xp=xp)
    flat = nn.load(path)
    assert "model.layers.2.weight_orig" in flat and "opt_state.mu.layers.0.bias" in flat
    # Load onto another backend.
    np_model = nn.load(path, like=like, backend="numpy")["model"]
    assert isinstance(np_model.layers[0].weight, np.ndarray)


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    from implicitnet.backends import _io

    path = tmp_path / "model.npz"
    model = nn.Linear.create(3, 2, seed=0)
    nn.save(path, model)
    before = path.read_bytes()

    def failing_write(fh, arrays):
        fh.write(b"PK\x03\x04 partial data")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(_io, "_write_npz", failing_write)
    with pytest.raises(KeyboardInterrupt):
        nn.save(path, nn.Linear.create(3, 2, seed=1))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind
    assert_close(nn.load(path, like=model).weight, model.weight, rtol=0)


def test_load_errors(tmp_path):
    model = nn.Linear.create(3, 2, seed=0)
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"this is not an npz archive at all")
    with pytest.raises(ValueError, match=r"corrupt\.npz.*not a readable checkpoint"):
        nn.load(bad, like=model)
    good = tmp_path / "good.npz"
    nn.save(good, model)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"truncated\.npz"):
        nn.load(truncated, like=model)
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        nn.load(tmp_path / "missing.npz", like=model)
    with pytest.raises(ValueError, match="missing arrays \\['extra'\\]"):
        nn.load(good, like={"weight": model.weight, "bias": model.bias, "extra": model.bias})
    with pytest.raises(ValueError, match="unexpected arrays \\['bias'\\]"):
        nn.load(good, like={"weight": model.weight})
    with pytest.raises(ValueError, match="shape"):
        nn.load(good, like=nn.Linear.create(4, 2, seed=0))
    with pytest.raises(ValueError, match="dtype"):
        nn.load(good, like=nn.Linear.create(3, 2, seed=0, dtype="float32"))


# --- printing ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_print_model_is_a_short_summary(backend, dtype):
    model = nn.mlp_deq(64, 10, width=64, seed=0, dtype=dtype, backend=backend.name)
    text = repr(model)
    assert str(model) == text
    lines = text.splitlines()
    assert lines[0] == f"DEQClassifier: {model.num_parameters():,} parameters ({dtype})"
    assert len(lines) < 20 and max(map(len, lines)) < 100  # not every array
    assert "injection: Linear(weight (64, 64), bias (64,))" in text
    assert "head: Linear(weight (10, 64), bias (10,))" in text
    assert "method='anderson'" in text and "rtol=" in text
    # Shapes, never values: no number of the weights appears.
    first = float(backend.to_numpy(model.injection.weight)[0, 0])
    assert f"{first:.4f}" not in text
    conv = nn.conv_deq(1, 10, channels=8, groups=4, image_size=8, seed=0, backend=backend.name)
    assert "conv: Conv2d(weight (8, 1, 3, 3), bias (8,), stride=1, padding=1)" in repr(conv)


def test_print_keeps_a_module_s_own_repr():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Named(nn.Module):
        w: object

        def __repr__(self):
            return "Named!"

    assert repr(Named(w=np.ones(2))) == "Named!"
    seq = nn.Sequential((nn.Linear.create(3, 2, seed=0), nn.ReLU()))
    assert repr(seq).splitlines()[1:] == [
        "  layers.0: Linear(weight (2, 3), bias (2,))",
        "  layers.1: ReLU",
    ]
