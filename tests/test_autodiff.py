"""The autodiff transforms, the Tensor type and the differentiable namespace."""

from __future__ import annotations

import ast
import dataclasses
import gc
import itertools
import tracemalloc
from pathlib import Path
from typing import NamedTuple

import array_api_compat
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import implicitnet as inet
from implicitnet import ops
from implicitnet._tree import register_dataclass, static_field
from implicitnet.testing import assert_close, check_grads

RTOL = {"float32": 1e-5, "float64": 1e-12}


def mlp_params(xp, widths=(5, 7, 6, 3), seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in itertools.pairwise(widths):
        W = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
        b = 0.1 * rng.standard_normal(n_out)
        params.append(
            {
                "W": xp.asarray(W, dtype=getattr(xp, dtype)),
                "b": xp.asarray(b, dtype=getattr(xp, dtype)),
            }
        )
    return params


def mlp(params, x):
    xp = inet.namespace(x, *inet.tree_leaves(params))
    h = x
    for i, layer in enumerate(params):
        h = h @ xp.matrix_transpose(layer["W"]) + layer["b"]
        if i < len(params) - 1:
            h = xp.tanh(h)
    return h


def cross_entropy(params, x, onehot):
    xp = inet.namespace(x)
    h = mlp(params, x)
    z = h - xp.max(h, axis=-1, keepdims=True)
    logp = z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))
    return -xp.sum(onehot * logp) / h.shape[0]


def batch(xp, n=4, widths=(5, 7, 6, 3), seed=1, dtype="float64"):
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal((n, widths[0])), dtype=getattr(xp, dtype))
    onehot = xp.asarray(
        np.eye(widths[-1])[rng.integers(0, widths[-1], n)], dtype=getattr(xp, dtype)
    )
    return x, onehot


# --- gradients of a model -----------------------------------------------------------


def test_mlp_cross_entropy_matches_finite_differences(xp):
    params = mlp_params(xp)
    x, onehot = batch(xp)
    res = check_grads(cross_entropy, (params, x, onehot), argnums=(0, 1))
    assert res.max_rel_error < 1e-5
    value, grads = inet.value_and_grad(cross_entropy)(params, x, onehot)
    assert isinstance(grads, list) and sorted(grads[0]) == ["W", "b"]
    assert_close(value, cross_entropy(params, x, onehot), rtol=RTOL["float64"], xp=xp)


def test_vjp_fn_reused_50_times_matches_fresh_calls(xp):
    params = mlp_params(xp)
    x, _ = batch(xp)
    out, vjp_fn = inet.vjp(mlp, params, x)
    rng = np.random.default_rng(3)
    for i in range(50):
        ct = xp.asarray(rng.standard_normal(tuple(out.shape)))
        reused = vjp_fn(ct)
        if i % 10 == 0:  # a fresh trace for every tenth cotangent
            fresh = inet.vjp(mlp, params, x)[1](ct)
            for a, b in zip(inet.tree_leaves(reused), inet.tree_leaves(fresh)):
                assert_close(a, b, rtol=RTOL["float64"], xp=xp)
    # linearity of the reused vjp_fn: vjp(2 ct) = 2 vjp(ct)
    g1, g2 = vjp_fn(ct), vjp_fn(2.0 * ct)
    for a, b in zip(inet.tree_leaves(g1), inet.tree_leaves(g2)):
        assert_close(2.0 * a, b, rtol=RTOL["float64"], xp=xp)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradients_keep_dtype_and_namespace(xp, dtype):
    params = mlp_params(xp, dtype=dtype)
    x, onehot = batch(xp, dtype=dtype)
    value, grads = inet.value_and_grad(cross_entropy)(params, x, onehot)
    assert array_api_compat.array_namespace(value) is xp
    assert value.dtype == getattr(xp, dtype)
    for g, p in zip(inet.tree_leaves(grads), inet.tree_leaves(params)):
        assert type(g) is not inet.Tensor
        assert g.dtype == p.dtype and g.shape == p.shape


def test_user_function_runs_on_raw_arrays_and_under_grad(xp):
    def energy(z):
        xp_ = array_api_compat.array_namespace(z)
        return xp_.sum(xp_.sin(z) * z**2) + xp_.linalg.vector_norm(z)

    z = xp.asarray([0.3, -1.2, 2.0])
    raw = energy(z)
    assert array_api_compat.array_namespace(raw) is xp
    value, g = inet.value_and_grad(energy)(z)
    assert_close(value, raw, rtol=RTOL["float64"], xp=xp)
    expected = xp.cos(z) * z**2 + 2 * xp.sin(z) * z + z / xp.linalg.vector_norm(z)
    assert_close(g, expected, rtol=1e-12, xp=xp)


def test_trees_dataclasses_and_namedtuples(xp):
    @register_dataclass
    @dataclasses.dataclass(frozen=True)
    class Affine:
        weight: object
        bias: object
        scale: float = static_field(default=2.0)

    class Pair(NamedTuple):
        a: object
        b: object

    model = Affine(weight=xp.asarray([[1.0, 2.0], [3.0, 4.0]]), bias=xp.asarray([0.5, -0.5]))
    pair = Pair(xp.asarray([1.0, -1.0]), [xp.asarray(2.0)])

    def loss(model, pair):
        y = model.scale * (model.weight @ pair.a + model.bias) * pair.b[0]
        return ops.sum(y * y)

    g_model, g_pair = inet.grad(loss, argnums=(0, 1))(model, pair)
    assert type(g_model) is Affine and g_model.scale == 2.0
    assert type(g_pair) is Pair and isinstance(g_pair.b, list)
    check_grads(loss, (model, pair))


# --- 0-d results -------------------------------------------------------------------------

# Functions whose result is 0-d; NumPy itself would return a NumPy scalar (np.float64).
ZERO_D = {
    "sum": lambda x: ops.sum(x),
    "mean": lambda x: ops.mean(x),
    "max": lambda x: ops.max(x),
    "min": lambda x: ops.min(x),
    "prod": lambda x: ops.prod(x),
    "sum keepdims=False axis": lambda x: ops.sum(ops.reshape(x, (3, 1)), axis=(0, 1)),
    "vector_norm": lambda x: ops.linalg.vector_norm(x),
    "vector_norm ord=1": lambda x: ops.linalg.vector_norm(x, ord=1),
    "vecdot": lambda x: ops.vecdot(x, x),
    "matmul 1-D": lambda x: ops.matmul(x, x),
    "tensordot": lambda x: ops.tensordot(x, x, axes=1),
    "getitem": lambda x: ops.getitem(x, 1),
    "elementwise on 0-d": lambda x: ops.tanh(ops.exp(ops.sum(x)) * 2.0 - ops.sum(x)),
    "where on 0-d": lambda x: ops.where(ops.sum(x) > 0, ops.sum(x), ops.max(x)),
    "maximum on 0-d": lambda x: ops.maximum(ops.sum(x), ops.min(x)),
    "astype on 0-d": lambda x: ops.astype(ops.sum(x), x.dtype),
}


@pytest.mark.parametrize("name", sorted(ZERO_D))
def test_zero_d_results_are_arrays(xp, name):
    """0-d results are arrays of the backend on every backend, never NumPy scalars."""
    fun = ZERO_D[name]
    x = xp.asarray([0.5, -1.5, 2.0])
    array_type = type(x)
    raw = fun(x)
    assert type(raw) is array_type and raw.shape == ()
    out, vjp_fn = inet.vjp(fun, x)
    assert type(out) is array_type and out.shape == ()
    assert type(vjp_fn(xp.asarray(1.0))[0]) is array_type
    value, g = inet.value_and_grad(fun)(x)
    assert type(value) is array_type and type(g) is array_type
    check_grads(fun, (x,))


def test_check_grads_takes_scalar_outputs(xp):
    x = xp.asarray([0.5, -1.5, 2.0])

    def energy(x):  # written against the array namespace: on raw NumPy, np.float64
        xp_ = inet.namespace(x)
        return xp_.sum(xp_.sin(x) * x) / 3.0 + xp_.linalg.vector_norm(x)

    res = check_grads(energy, (x,))
    assert res.max_rel_error < 1e-6 and len(res.checks) == 4  # 1 random + 3 elements
    check_grads(lambda s: ops.exp(s) * s, (xp.asarray(0.7),))  # 0-d in, 0-d out
    check_grads(lambda x: (ops.sum(x * x), 2.0 * x, {"m": ops.max(x)}), (x,))
    c = xp.asarray([1.0, 2.0])
    res = check_grads(lambda x: ops.sum(c), (x,))  # does not depend on x
    assert all(ad == 0.0 and fd == 0.0 for _, ad, fd in res.checks)
    with pytest.raises(TypeError, match=r"output of `fun`.*float"):
        check_grads(lambda x: 1.0, (x,))


# --- higher order and nesting ---------------------------------------------------------


def test_grad_of_grad(xp):
    def f(x):
        return ops.sum(ops.tanh(x) ** 3 * ops.sin(x) + ops.exp(-x * x))

    x = xp.asarray([0.3, -0.7, 1.1])
    check_grads(inet.grad(f), (x,))
    # Hessian-vector product of the MLP loss through grad-of-vjp
    params = mlp_params(xp, widths=(3, 4, 2))
    xb, onehot = batch(xp, widths=(3, 4, 2))
    v = [{k: xp.ones_like(a) for k, a in layer.items()} for layer in params]

    def directional(params):
        g = inet.grad(cross_entropy)(params, xb, onehot)
        return sum(ops.sum(a * b) for a, b in zip(inet.tree_leaves(g), inet.tree_leaves(v)))

    check_grads(directional, (params,))


def test_no_perturbation_confusion(xp):
    # d/dx [x * d/dy (x + y)] = 1, not 2
    one = xp.asarray(1.0)
    g = inet.grad(lambda x: x * inet.grad(lambda y: x + y)(one))(one)
    assert_close(g, one, xp=xp)


def _fixed_point_primitive():
    """An implicit layer z* = tanh(W z* + x) whose VJP calls `vjp` in a linear solve."""

    def picard(W, x, z, steps):
        xp = inet.namespace(W, x, z)
        for _ in range(steps):
            z_new = xp.tanh(W @ z + x)
            if float(xp.linalg.vector_norm(z_new - z)) < 1e-14:  # driver-style sync
                return z_new
            z = z_new
        return z

    @inet.primitive
    def solve_fp(W, x, /):
        return picard(W, x, x * 0.0, 200)

    @inet.defvjp(solve_fp)
    def _solve_fp_vjp(ct, z, W, x, /, *, xp):
        _, f_vjp = inet.vjp(lambda z, W, x: ops.tanh(W @ z + x), z, W, x)
        # adjoint u = ct + J_z^T u, solved by Neumann iteration: vjp_fn called many times
        u = ct
        for _ in range(100):
            u = ct + f_vjp(u)[0]
        _, gW, gx = f_vjp(u)
        return gW, gx

    return picard, solve_fp


def test_reentrant_vjp_inside_a_vjp_rule(xp):
    picard, solve_fp = _fixed_point_primitive()
    rng = np.random.default_rng(0)
    W = xp.asarray(0.3 * rng.standard_normal((4, 4)) / 2)
    x = xp.asarray(rng.standard_normal(4))
    c = xp.asarray(rng.standard_normal(4))

    def implicit_loss(W, x):
        return ops.sum(solve_fp(W, x) * c)

    def unrolled_loss(W, x):  # backprop through the iterations, on tensors
        return ops.sum(picard(W, x, x * 0.0, 200) * c)

    g_implicit = inet.grad(implicit_loss, argnums=(0, 1))(W, x)
    g_unrolled = inet.grad(unrolled_loss, argnums=(0, 1))(W, x)
    for a, b in zip(g_implicit, g_unrolled):
        assert_close(a, b, rtol=1e-9, atol=1e-12, xp=xp)
    check_grads(implicit_loss, (W, x))


def test_closure_captured_tensor_is_visible(xp):
    W = xp.asarray([[0.5, 0.1], [0.2, 0.3]])
    z = xp.asarray([1.0, 2.0])
    seen = []

    def loss(W):
        def f(z):  # captures the traced W
            return W @ z

        out = f(z)  # run on a raw array
        seen.append(type(out) is inet.Tensor and out.traced)
        return ops.sum(out)

    g = inet.grad(loss)(W)
    assert seen == [True]
    assert_close(g, xp.asarray([[1.0, 2.0], [1.0, 2.0]]), xp=xp)


def test_long_chain_has_no_recursion_limit(xp):
    def f(x):
        for _ in range(5000):
            x = x * 1.0001
        return ops.sum(x)

    g = inet.grad(f)(xp.asarray([1.0]))
    assert_close(g, xp.asarray([1.0001**5000]), rtol=1e-10, xp=xp)


# --- Tensor and namespace -------------------------------------------------------------


@given(
    scalar=st.floats(-3, 3, allow_nan=False, allow_subnormal=False),
    shape=st.sampled_from([(), (1,), (3,), (2, 3)]),
)
def test_mixed_operand_orders(xp, scalar, shape):
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.uniform(0.5, 2.0, shape))
    c = xp.asarray(rng.uniform(0.5, 2.0, shape))

    def f(x, c):
        # `c` is a raw array argument: the transform wraps it as a constant tensor, so
        # even array-api-strict's `c + x` reaches the tensor.
        terms = [
            c + x,
            x + c,
            c - x,
            x - c,
            c * x,
            x * c,
            c / x,
            x / c,
            c**x,
            x**c,
            scalar + x,
            x + scalar,
            scalar - x,
            scalar * x,
            scalar / x,
            x / 2,
            -x,
            +x,
            abs(x),
        ]
        return sum(ops.sum(t) for t in terms)

    value, _g = inet.value_and_grad(f)(x, c)
    assert_close(value, f(x, c), rtol=1e-12, xp=xp)
    check_grads(f, (x, c), argnums=0)


def test_closure_raw_array_operand_order(xp, backend):
    """The documented rule: a raw array the transform did not wrap (a closure) goes on
    the right of an operator, or through a namespace function; either order of
    arguments works with the functions."""
    c = xp.asarray([3.0, 4.0])
    x = xp.asarray([1.0, 2.0])

    def f(x):
        ns = inet.namespace(x, c)
        return ops.sum(ns.multiply(c, x) + ops.subtract(c, x) + x * c + ns.divide(c, x))

    assert_close(inet.grad(f)(x), 2.0 * c - 1.0 - c / x**2, xp=xp)
    left = inet.grad(lambda x: ops.sum(c * x))
    if backend.name == "array_api_strict":
        with pytest.raises(TypeError):  # strict arrays refuse a tensor on their right
            left(x)
    else:
        assert_close(left(x), c, xp=xp)


def test_numpy_array_on_the_left_defers_to_tensor():
    x = np.array([1.0, 2.0])
    g = inet.grad(lambda t: ops.sum(np.array([3.0, 4.0]) * t) + np.ones(2) @ t)(x)
    np.testing.assert_allclose(g, [4.0, 5.0])


def test_tensor_attributes(xp):
    seen = {}

    def f(x):
        seen["shape"], seen["ndim"], seen["size"] = x.shape, x.ndim, x.size
        seen["dtype"], seen["device"] = x.dtype, x.device
        assert x.T.shape == (3, 2) and x.mT.shape == (3, 2)
        assert type(x < 1.0) is not inet.Tensor and (x < 1.0).dtype == xp.bool
        assert array_api_compat.array_namespace(x) is x.__array_namespace__()
        assert inet.namespace(x, xp.ones(3)) is x.__array_namespace__()
        assert x.__array_namespace__().backend_namespace is xp
        assert "Tensor(" in repr(x) and "level=" in repr(x)
        assert float(x[0, 0]) == 1.0 and int(x[0, 1]) == 2 and bool(x[0, 0])
        assert float(ops.reshape(x[0, :1], (1,))) == 1.0
        assert len(x) == 2 and len(list(x)) == 2
        with pytest.raises(TypeError, match="immutable"):
            x[0, 0] = 5.0
        y = x.astype(xp.float32)
        assert y.dtype == xp.float32
        return ops.sum(y) + ops.sum(x[1, :])

    x = xp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    g = inet.grad(f)(x)
    assert seen["shape"] == (2, 3) and seen["ndim"] == 2 and seen["size"] == 6
    assert seen["dtype"] == xp.float64 and seen["device"] == array_api_compat.device(x)
    assert_close(g, xp.asarray([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]), xp=xp)


def test_namespace_is_cached_and_passes_through(xp):
    def f(x):
        ns = x.__array_namespace__()
        assert ns is x.__array_namespace__() and ns.__name__.startswith("implicitnet")
        assert ns.linalg.solve is ops.linalg.solve
        for out in (ns.zeros_like(x), ns.argmax(x), ns.isfinite(x), ns.asarray(1.0)):
            assert type(out) is not inet.Tensor
        assert ns.asarray(x) is x
        assert ns.finfo(x.dtype).eps > 0 and ns.float32 == xp.float32
        with pytest.raises(NotImplementedError, match="cumulative_sum"):
            ns.cumulative_sum(x)
        with pytest.raises(NotImplementedError, match=r"linalg\.inv"):
            ns.linalg.inv(ns.reshape(x, (1, 1)))
        return ns.sum(x)

    inet.grad(f)(xp.asarray([2.0]))
    # without traced tensors the not-yet-differentiable functions pass through
    ns = inet.Tensor(xp.asarray([1.0, 2.0])).__array_namespace__()
    assert_close(
        ns.cumulative_sum(inet.Tensor(xp.asarray([1.0, 2.0]))), xp.asarray([1.0, 3.0]), xp=xp
    )


def test_stop_gradient_nondifferentiable_and_user_primitives(xp):
    x = xp.asarray([1.0, -2.0, 3.0])
    g = inet.grad(lambda x: ops.sum(x * inet.stop_gradient(x)))(x)
    assert_close(g, x, xp=xp)

    sign = inet.nondifferentiable(lambda a: xp.sign(a))
    g = inet.grad(lambda x: ops.sum(x * sign(x)))(x)  # raw strict arrays go right
    assert_close(g, xp.sign(x), xp=xp)

    calls = []

    @inet.primitive
    def scaled_dot(a, b, /, *, scale):
        return scale * xp.sum(a * b)

    @inet.defvjp(scaled_dot)
    def _scaled_dot_vjp(ct, ans, a, b, /, *, xp, scale, needs_grad):
        calls.append(needs_grad)
        return (
            ct * scale * b if needs_grad[0] else None,
            ct * scale * a if needs_grad[1] else None,
        )

    y = xp.asarray([0.5, 0.5, 0.5])
    g = inet.grad(lambda a: scaled_dot(a, y, scale=3.0))(x)
    assert_close(g, 3.0 * y, xp=xp)
    assert calls == [(True, False)]
    check_grads(lambda a, b: scaled_dot(a, b, scale=2.0), (x, y))


def test_integer_index_gradient_accumulates_repeats(xp):
    x = xp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    idx = xp.asarray([0, 2, 0, 0])
    g = inet.grad(lambda x: ops.sum(x[idx, 1]) + ops.sum(ops.take(x, idx, axis=0)))(x)
    assert_close(g, xp.asarray([[3.0, 6.0], [0.0, 0.0], [1.0, 2.0]]), xp=xp)


# --- memory -----------------------------------------------------------------------------


@pytest.mark.skip_backend(
    "array_api_strict",
    "torch",
    "cupy",
    reason="tracemalloc sees NumPy buffers only (the tape logic is backend-independent "
    "and array-api-strict is NumPy underneath)",
)
def test_memory_is_flat_over_1000_steps(xp):
    # A leaked tape would keep every step's activations alive (~50 KB per step here,
    # 50 MB over 1000 steps); interpreter free lists account for a few hundred KB.
    widths = (16, 32, 32, 4)
    params = mlp_params(xp, widths=widths)
    x, onehot = batch(xp, n=32, widths=widths)
    vg = inet.value_and_grad(cross_entropy)
    for _ in range(20):  # warm caches
        vg(params, x, onehot)
    gc.collect()
    gc.disable()  # the tape must be freed by reference counting alone
    tracemalloc.start()
    try:
        marks = {}
        for step in range(1000):
            _loss, grads = vg(params, x, onehot)
            params = [{k: p[k] - 1e-3 * g[k] for k in p} for p, g in zip(params, grads)]
            if step in (9, 999):
                marks[step] = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    (cur_10, peak_10), (cur_1000, peak_1000) = marks[9], marks[999]
    assert cur_1000 - cur_10 < 1_000_000, (cur_10, cur_1000)
    assert peak_1000 - peak_10 < 1_000_000, (peak_10, peak_1000)


# --- errors -----------------------------------------------------------------------------


def test_errors(xp):
    x = xp.asarray([1.0, 2.0])
    with pytest.raises(ValueError, match=r"0-D.*shape \(2,\).*vjp"):
        inet.grad(lambda x: x * 2.0)(x)
    with pytest.raises(TypeError, match=r"int64.*floating"):
        inet.grad(lambda x: ops.sum(x))(xp.asarray([1, 2]))
    with pytest.raises(TypeError, match=r"leaf 1 .*float, not an array"):
        inet.grad(lambda p: ops.sum(p["a"]) * p["b"])({"a": x, "b": 2.0})
    with pytest.raises(TypeError, match="must return a 0-D floating array"):
        inet.grad(lambda x: "loss")(x)
    with pytest.raises(ValueError, match="`argnums` 3 is out of range"):
        inet.grad(lambda x: ops.sum(x), argnums=3)(x)
    with pytest.raises(TypeError, match="pair"):
        inet.grad(lambda x: ops.sum(x), has_aux=True)(x)
    _out, vjp_fn = inet.vjp(lambda x: x * 2.0, x)
    with pytest.raises(ValueError, match="`ct` has shape"):
        vjp_fn(xp.ones(3))
    with pytest.raises(ValueError, match="tree structure"):
        vjp_fn((x, x))


def test_has_aux_and_unused_arguments(xp):
    x = xp.asarray([1.0, 2.0])
    (_value, aux), g = inet.value_and_grad(
        lambda x, y: (ops.sum(x * x), {"y": y * 2.0}), has_aux=True
    )(x, x)
    assert type(aux["y"]) is not inet.Tensor
    assert_close(aux["y"], 2.0 * x, xp=xp)
    # an argument the output does not depend on gets a zero gradient
    g = inet.grad(lambda x, y: ops.sum(y * y), argnums=(0, 1))(x, x)
    assert_close(g[0], xp.zeros(2), xp=xp)


# --- what the tape keeps -----------------------------------------------------------------

# The unrolled weight-tied loop z <- tanh(z W^T + inj), gradients in W^T and inj.
LOOP_WIDTH, LOOP_BATCH = 32, 8


def _loop_problem(xp, dtype="float32", seed=3):
    rng = np.random.default_rng(seed)
    d, n = LOOP_WIDTH, LOOP_BATCH
    Wt = 0.5 * rng.standard_normal((d, d)) / np.sqrt(d)
    inj = 0.1 * rng.standard_normal((n, d))
    z0 = np.zeros((n, d))
    return tuple(xp.asarray(a, dtype=getattr(xp, dtype)) for a in (Wt, inj, z0))


def _loop_cell(z, Wt, inj):
    xp = inet.namespace(z, Wt, inj)
    return xp.tanh(xp.matmul(z, Wt) + inj)


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_unrolled_loop_keeps_one_array_per_step(xp, steps):
    """Counted, not timed: ``W^T`` once, the start ``z0`` and the output of each ``tanh``.

    ``matmul`` keeps ``z`` (for the cotangent of ``W^T``) and ``W^T`` (for that of ``z``,
    from the second step on), ``add`` keeps nothing, ``tanh`` its output, which is the
    next step's ``z``. PyTorch's autograd keeps the same buffers on this loop.
    """
    Wt, inj, z0 = _loop_problem(xp)

    def loop(Wt, inj, z0=z0):
        z = z0
        for _ in range(steps):
            z = _loop_cell(z, Wt, inj)
        return z

    _, vjp_fn = inet.vjp(loop, Wt, inj)
    s = inet.autodiff.tape_summary(vjp_fn)
    d, n, itemsize = LOOP_WIDTH, LOOP_BATCH, 4
    assert s.operations == 3 * steps
    kept_wt = steps > 1  # the first step's z is z0, a constant: no cotangent needs W^T
    assert s.arrays == kept_wt + (steps + 1)
    assert s.nbytes == itemsize * (kept_wt * d * d + (steps + 1) * n * d)
    assert s.by_primitive["add"] == (steps, 0)
    # what is kept is what the gradient needs: it matches the unrolled reference
    z0_64 = xp.astype(z0, xp.float64)  # no mixed dtypes: torch refuses them in matmul
    check_grads(
        lambda Wt, inj: loop(Wt, inj, z0_64),
        (xp.astype(Wt, xp.float64), xp.astype(inj, xp.float64)),
    )


def test_unrolled_picard_keeps_what_the_plain_loop_keeps(backend, xp):
    """``backward="unrolled"`` tapes the map's evaluations, not the driver's bookkeeping."""
    if not hasattr(backend, "storage"):
        pytest.skip(
            "the backend has no `storage()`: the solver's reshaped views of the iterate "
            "would be counted as arrays of their own"
        )
    Wt, inj, z0 = _loop_problem(xp)
    steps = 12

    def loop(Wt, inj):
        z = z0
        for _ in range(steps):
            z = _loop_cell(z, Wt, inj)
        return z

    def picard(Wt, inj):
        res = inet.fixed_point(
            _loop_cell,
            z0,
            (Wt, inj),
            method="picard",
            backward="unrolled",
            rtol=0.0,
            maxiter=steps,
        )
        assert res.nit == steps
        return res.x

    out_loop, vjp_loop = inet.vjp(loop, Wt, inj)
    out_picard, vjp_picard = inet.vjp(picard, Wt, inj)
    kept_loop = inet.autodiff.tape_summary(vjp_loop)
    kept_picard = inet.autodiff.tape_summary(vjp_picard)
    assert kept_picard.nbytes == kept_loop.nbytes
    assert "linalg.vector_norm" not in kept_picard.by_primitive
    assert_close(out_picard, out_loop, rtol=RTOL["float32"], xp=xp)
    u = xp.ones_like(out_loop)
    for a, b in zip(vjp_picard(u), vjp_loop(u)):
        assert_close(a, b, rtol=1e-4, atol=1e-6, xp=xp)


def test_tape_summary_of_a_traced_tensor_and_errors(xp):
    x = xp.asarray([1.0, 2.0])
    seen = []

    def f(x):
        y = ops.exp(x) + 1.0  # exp keeps its output, add nothing
        seen.append(inet.autodiff.tape_summary(y))
        return ops.sum(y)

    inet.grad(f)(x)
    assert (seen[0].operations, seen[0].arrays, seen[0].nbytes) == (2, 1, 16)
    assert "exp" in str(seen[0])
    with pytest.raises(TypeError, match="`trace` must be a `vjp_fn`"):
        inet.autodiff.tape_summary(x)


def test_rules_see_released_values_as_shapes(xp):
    """A rule that reads a value its declaration does not keep fails with a clear error."""

    @inet.primitive
    def scale(a, b, /):
        return a * b

    @inet.defvjp(scale, save_inputs="none", save_output=False)
    def _scale_vjp(ct, ans, a, b, /, *, xp):
        assert tuple(a.shape) == (2,) and b.ndim == 1
        return ct * b, ct * a

    x = xp.asarray([1.0, 2.0])
    # (array-api-strict refuses the stand-in itself, before it can explain)
    with pytest.raises(TypeError, match=r"does not keep on the tape|Expected Array"):
        inet.grad(lambda x: ops.sum(scale(x, x)))(x)
    with pytest.raises(ValueError, match="`save_inputs` must be"):
        inet.defvjp(scale, save_inputs="some")
    with pytest.raises(TypeError, match="`save_output` must be"):
        inet.defvjp(scale, save_output="yes")


# --- vjp: scalar cotangents and auxiliary outputs ------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vjp_of_a_scalar_output_takes_a_number(xp, dtype):
    x = xp.asarray([1.0, -2.0], dtype=getattr(xp, dtype))
    _out, vjp_fn = inet.vjp(lambda x: ops.sum(x * x), x)
    expected = 2.0 * x
    for ct in (1.0, 1, xp.asarray(1.0, dtype=xp.float32), xp.asarray(1.0, dtype=xp.float64)):
        (g,) = vjp_fn(ct)
        assert_close(g, expected, xp=xp)
    (g,) = vjp_fn(np.float64(3.0))  # a NumPy scalar, whatever the backend
    assert_close(g, 3.0 * expected, xp=xp)
    with pytest.raises(TypeError, match="real number"):
        vjp_fn(True)
    with pytest.raises(TypeError, match="real floating"):
        vjp_fn(xp.asarray(1))
    _, vjp_vec = inet.vjp(lambda x: x * 2.0, x)
    with pytest.raises(TypeError, match="got a float"):
        vjp_vec(1.0)


def test_vjp_has_aux(xp):
    x = xp.asarray([1.0, 2.0])
    _out, vjp_fn, aux = inet.vjp(lambda x: (x * 3.0, {"sq": x * x, "n": 2}), x, has_aux=True)
    assert type(aux["sq"]) is not inet.Tensor and aux["n"] == 2
    assert_close(aux["sq"], x * x, xp=xp)
    assert_close(vjp_fn(xp.ones(2))[0], xp.asarray([3.0, 3.0]), xp=xp)
    with pytest.raises(TypeError, match="pair"):
        inet.vjp(lambda x: x, x, has_aux=True)


# --- structure -----------------------------------------------------------------------


def _autodiff_imports() -> dict[str, set[str]]:
    """For each module of ``implicitnet.autodiff``, the sibling modules it imports."""
    package = Path(inet.autodiff.__file__).parent
    graph = {}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if node not in tree.body:  # no module needs a deferred import any more
                pytest.fail(f"{path.name}:{node.lineno}: an import that is not at module level")
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                # `from ._core import x` names a module, `from . import _ops` the names
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps
    return graph


def test_autodiff_imports_have_no_cycle():
    # Tensor's operators are defined in its class body, on the primitives; nothing is
    # attached from below. So the modules form a chain
    # _core <- _ops <- _namespace <- _tensor <- _transforms, _summary.
    graph = _autodiff_imports()
    assert graph["_core"] == set(), graph["_core"]
    order = []
    pending = dict(graph)
    while pending:
        ready = sorted(m for m, deps in pending.items() if deps <= set(order))
        assert ready, f"import cycle among {sorted(pending)}: {pending}"
        order += ready
        for m in ready:
            del pending[m]
    assert order.index("_ops") < order.index("_tensor") < order.index("_transforms")
    assert "__add__" in vars(inet.Tensor) and "__radd__" in vars(inet.Tensor)
