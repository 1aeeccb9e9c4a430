"""The DEQ layer and the ready-made DEQ classifiers: fixed points, gradients against
finite differences, warm starts, active sets, reparameterised weights, dropout masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import implicitnet as inet
from implicitnet import nn
from implicitnet.testing import assert_close, check_grads

DTYPES = ["float32", "float64"]
# Forward tolerance asked of the solve, and the check of the fixed-point equation
# (relative to ||z||), per dtype.
SOLVE_RTOL = {"float32": 1e-5, "float64": 1e-10}
CHECK_RTOL = {"float32": 1e-4, "float64": 1e-9}
GRAD_RTOL = 1e-5  # check_grads (float64 only), forward and adjoint solved to 1e-12


# ``z -> tanh(W z + x)`` (+ optional mask), W a plain or reparameterised layer.
TanhCell = nn.TanhCell


def _contractive(n, rho, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    return rho * A / np.linalg.norm(A, 2)


def _problem(xp, dtype="float64", *, n=6, batch=5, rho=0.7, seed=0):
    rng = np.random.default_rng(seed + 100)
    W = _contractive(n, rho, seed)
    x = rng.standard_normal((batch, n))
    dt = getattr(xp, dtype)
    return W, x, nn.Linear(weight=xp.asarray(W, dtype=dt), bias=None), xp.asarray(x, dtype=dt)


def _reference(W, x, iters=2000):
    """Picard iteration in float64 NumPy, far past convergence (a contraction)."""
    z = np.zeros_like(x)
    for _ in range(iters):
        z = np.tanh(z @ W.T + x)
    return z


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["anderson", "broyden", "picard", "newton_krylov"])
def test_forward_reaches_the_fixed_point(xp, dtype, method):
    W, x_np, lin, x = _problem(xp, dtype)
    deq = nn.DEQ(TanhCell(lin), method=method, rtol=SOLVE_RTOL[dtype], maxiter=200)
    z, res = deq(x)
    assert bool(res.success)
    assert res.nit.shape == (5,) and res.residual.shape == (5,) and res.nfev.shape == (5,)
    assert z.dtype == x.dtype and z.shape == x.shape
    expected = xp.asarray(_reference(W, x_np), dtype=getattr(xp, dtype))
    tol = CHECK_RTOL[dtype]
    assert_close(z, expected, rtol=tol, atol=tol, xp=xp)


def test_samples_converge_independently(xp):
    # Sample 0 is at its fixed point from the start; the others need iterations.
    W, x_np, lin, x = _problem(xp)
    z_star = _reference(W, x_np)
    z0 = xp.asarray(np.concatenate([z_star[:1], np.zeros((4, 6))]), dtype=xp.float64)
    _, res = nn.DEQ(TanhCell(lin), method="picard", rtol=1e-10, maxiter=300)(x, z0=z0)
    nit = np.asarray(inet.backends.backend_of(res.nit).to_numpy(res.nit))
    assert nit[0] <= 1 and np.all(nit[1:] > 10)


def test_warm_start_reduces_iterations(xp):
    _, _, lin, x = _problem(xp, seed=1)
    deq = nn.DEQ(TanhCell(lin), rtol=1e-8, maxiter=100)
    z, first = deq(x)
    assert bool(first.success)
    # A nearby input (as in consecutive training steps or time steps), warm-started at z.
    x2 = x + xp.asarray(1e-3, dtype=x.dtype)
    z_cold, cold2 = deq(x2)
    z_warm, warm = deq(x2, z0=z)
    assert bool(warm.success) and bool(cold2.success)
    assert int(xp.sum(warm.nit)) < int(xp.sum(cold2.nit))
    assert_close(z_warm, z_cold, rtol=1e-6, atol=1e-7, xp=xp)


def test_gradients_match_finite_differences(xp):
    # A tiny model in float64: injection -> DEQ with a weight-normalised cell -> loss.
    W, _, _, x = _problem(xp, n=3, batch=2, rho=0.6, seed=2)
    lin = nn.weight_norm(nn.Linear(weight=xp.asarray(W), bias=None))
    inj = nn.Linear.create(4, 3, seed=3, backend=inet.backends.backend_of(x))
    inputs = xp.asarray(np.random.default_rng(4).standard_normal((2, 4)))
    deq = nn.DEQ(TanhCell(lin), rtol=1e-12, maxiter=200, backward_options={"rtol": 1e-12})

    def loss(deq, inj, inputs):
        z, _ = deq(inj(inputs))
        xq = inet.namespace(z)
        return xq.sum(z * z) + xq.sum(xq.sin(z))

    # check_grads raises on a failed check; every parameter and input entry is checked.
    res = check_grads(loss, (deq, inj, inputs), rtol=GRAD_RTOL, eps=1e-6)
    n_entries = sum(int(np.prod(a.shape)) for a in inet.tree_leaves((deq, inj, inputs)))
    assert len(res.checks) >= n_entries


@pytest.mark.parametrize("backward", ["implicit", "phantom", "unrolled"])
def test_backward_modes_and_statistics(xp, backward):
    _, _, lin, x = _problem(xp, seed=5)
    deq = nn.DEQ(TanhCell(lin), backward=backward, rtol=1e-10, maxiter=100)
    seen = {}

    def loss(deq, x):
        z, res = deq(x)
        seen["res"] = res
        return inet.namespace(z).sum(z * z)

    grads = inet.grad(loss, argnums=(0, 1))(deq, x)
    res = seen["res"]
    if backward == "unrolled":
        assert "backward" not in res.stats  # no adjoint solve: backprop through iterations
    else:
        stats = res.stats["backward"]
        assert {"nit", "nmatvec", "residual", "success"} <= set(stats)
        assert bool(stats["success"])
    # The exact modes agree with each other; the phantom gradient is an approximation.
    reference = inet.grad(loss, argnums=(0, 1))(deq.replace(backward="implicit"), x)
    if backward != "phantom":
        assert_close(grads[1], reference[1], rtol=1e-6, atol=1e-9, xp=xp)
        assert_close(
            grads[0].cell.linear.weight,
            reference[0].cell.linear.weight,
            rtol=1e-6,
            atol=1e-9,
            xp=xp,
        )
    else:
        g, r = (inet.backends.backend_of(a).to_numpy(a) for a in (grads[1], reference[1]))
        cos = float(np.sum(g * r) / (np.linalg.norm(g) * np.linalg.norm(r)))
        assert cos > 0.9


def test_reparameterised_weights_are_computed_once_per_solve(xp, monkeypatch):
    _, _, lin, x = _problem(xp)
    calls = {"n": 0}
    original = nn.WeightNorm.weight

    def counting(self):
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(nn.WeightNorm, "weight", counting)
    deq = nn.DEQ(TanhCell(nn.weight_norm(lin)), rtol=1e-10, maxiter=100)

    def loss(deq, x):
        z, res = deq(x)
        assert int(inet.namespace(res.nit).max(res.nit)) > 5
        return inet.namespace(z).sum(z)

    inet.grad(loss)(deq, x)
    assert calls["n"] == 1  # one forward solve and its adjoint: one weight computation


def test_materialize_keeps_the_function(xp):
    rng = np.random.default_rng(6)
    x = xp.asarray(rng.standard_normal((3, 4)))
    base = nn.Linear(weight=xp.asarray(rng.standard_normal((4, 4))), bias=None)
    for layer in (
        nn.weight_norm(base),
        nn.spectral_norm(base, seed=0),
        nn.MonotoneLinear(A=base.weight, B=xp.asarray(rng.standard_normal((4, 4)))),
    ):
        plain = nn.materialize({"cell": layer})["cell"]
        assert isinstance(plain, nn.Linear)
        assert_close(plain(x), layer(x), rtol=1e-12, atol=1e-12, xp=xp)


def test_monotone_cell_converges(xp):
    @dataclass(frozen=True)
    class MonCell(nn.Module):
        lin: Any

        def __call__(self, z, x):
            return nn.relu(self.lin(z) + x)

    mon = nn.MonotoneLinear.create(
        5, m=0.5, scale=0.2, seed=1, backend=inet.backends.backend_of(xp.zeros(1))
    )
    x = xp.asarray(np.random.default_rng(7).standard_normal((4, 5)))
    z, res = nn.DEQ(MonCell(mon), rtol=1e-10, maxiter=100)(x)
    assert bool(res.success)
    assert_close(z, nn.relu(mon(z) + x), rtol=1e-8, atol=1e-8, xp=xp)


def test_dropout_mask_is_fixed_during_the_solve(xp):
    _, _, lin, x = _problem(xp, seed=8)
    mask = nn.dropout_mask((5, 6), 0.5, seed=0, backend=inet.backends.backend_of(x))
    z, res = nn.DEQ(TanhCell(lin), rtol=1e-10, maxiter=100)(x, mask=mask)
    assert bool(res.success)
    assert_close(z, TanhCell(lin)(z, x, mask), rtol=1e-8, atol=1e-9, xp=xp)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_classifiers_are_differentiable_pytrees(backend, xp, kind):
    if kind == "mlp":
        model = nn.mlp_deq(12, 3, width=8, dropout=0.2, seed=0, backend=backend.name)
        x = xp.asarray(np.random.default_rng(0).random((4, 12)))
    else:
        model = nn.conv_deq(
            1,
            3,
            channels=4,
            groups=2,
            image_size=4,
            pool=2,
            dropout=0.2,
            seed=0,
            backend=backend.name,
        )
        x = xp.asarray(np.random.default_rng(0).random((4, 1, 4, 4)))
    y = xp.asarray(np.array([0, 1, 2, 0]))
    mask = model.mask(4, 0, like=x)
    assert mask is not None and mask.shape[0] == 4

    def loss(model):
        logits, _ = model(x, mask=mask)
        return nn.cross_entropy(logits, y)

    value, grads = inet.value_and_grad(loss)(model)
    assert float(value) > 0
    assert len(inet.tree_leaves(grads)) == len(inet.tree_leaves(model))
    assert all(g.shape == p.shape for g, p in zip(inet.tree_leaves(grads), inet.tree_leaves(model)))
    logits, res = model(x)
    assert logits.shape == (4, 3) and bool(res.success)


def test_bad_arguments():
    lin = nn.Linear(weight=np.eye(2) * 0.5, bias=None)
    with pytest.raises(TypeError, match="`cell`"):
        nn.DEQ(3)
    with pytest.raises(ValueError, match="`rtol`"):
        nn.DEQ(TanhCell(lin), rtol=-1.0)
    with pytest.raises(ValueError, match="`maxiter`"):
        nn.DEQ(TanhCell(lin), maxiter=0)
    with pytest.raises(ValueError, match="`options`"):
        nn.DEQ(TanhCell(lin), method=inet.Anderson(), options={"m": 3})
    with pytest.raises(ValueError, match="`backward_options`"):
        nn.DEQ(TanhCell(lin), backward="unrolled", backward_options={"rtol": 1e-3})(np.ones((1, 2)))
    with pytest.raises(ValueError, match="`z0`"):
        nn.DEQ(TanhCell(lin))(np.ones((2, 2)), z0=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="`pool`"):
        nn.conv_deq(image_size=8, pool=3)
    with pytest.raises(TypeError, match="unknown DEQ options"):
        nn.mlp_deq(4, 2, tolerance=1e-3)


@pytest.mark.parametrize("name", ["TanhCell", "ReluCell"])
def test_plain_cells_make_the_smallest_deq(backend, xp, name):
    """``nn.DEQ(nn.TanhCell.create(d))``: the fixed point of ``sigma(W z + x)``, and its
    implicit gradient against the unrolled one (Picard run to convergence)."""
    cls = getattr(nn, name)
    sigma = {"TanhCell": np.tanh, "ReluCell": lambda v: np.maximum(v, 0.0)}[name]
    cell = cls.create(6, init_scale=0.5, seed=1, backend=backend, dtype="float64")
    x_np = np.random.default_rng(2).standard_normal((3, 6))
    x = xp.asarray(x_np)
    z, res = nn.DEQ(cell, rtol=1e-12, maxiter=200)(x)
    assert bool(res.success)
    W, z_np = backend.to_numpy(cell.linear.weight), backend.to_numpy(z)
    np.testing.assert_allclose(z_np, sigma(z_np @ W.T + x_np), rtol=1e-9, atol=1e-12)

    def loss(cell, x, backward):
        deq = nn.DEQ(cell, method="picard", backward=backward, rtol=1e-12, maxiter=300)
        return inet.ops.sum(deq(x)[0] ** 2)

    g_imp = inet.grad(loss, argnums=(0, 1))(cell, x, "implicit")
    g_unr = inet.grad(loss, argnums=(0, 1))(cell, x, "unrolled")
    assert_close(g_imp[0].linear.weight, g_unr[0].linear.weight, rtol=1e-6, atol=1e-9)
    assert_close(g_imp[1], g_unr[1], rtol=1e-6, atol=1e-9)
