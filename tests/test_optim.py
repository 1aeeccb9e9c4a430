"""Optimizers and schedules: every update against hand-derived NumPy formulas."""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest

from implicitnet import optim
from implicitnet.testing import assert_close

RTOL = {"float32": 2e-6, "float64": 1e-13}
DTYPES = ["float32", "float64"]


def _problem(seed=0):
    """Parameters and a few gradient steps as NumPy float64 (a dict with a nested list)."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((3, 2)), "b": [rng.standard_normal(2), None]}
    grads = [
        {"w": rng.standard_normal((3, 2)), "b": [rng.standard_normal(2), None]} for _ in range(4)
    ]
    return params, grads


def _to(tree, xp, dtype):
    if isinstance(tree, dict):
        return {k: _to(v, xp, dtype) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to(v, xp, dtype) for v in tree]
    if tree is None:
        return None
    return xp.asarray(tree, dtype=getattr(xp, dtype))


def _run(opt, params, grads, xp, dtype):
    p = _to(params, xp, dtype)
    state = opt.init(p)
    for g in grads:
        p, state = opt.update(p, _to(g, xp, dtype), state)
    return p, state


def _check(result, expected, xp, dtype):
    assert_close(
        result["w"],
        xp.asarray(expected["w"], dtype=getattr(xp, dtype)),
        rtol=RTOL[dtype],
        atol=RTOL[dtype],
        xp=xp,
    )
    assert_close(
        result["b"][0],
        xp.asarray(expected["b"][0], dtype=getattr(xp, dtype)),
        rtol=RTOL[dtype],
        atol=RTOL[dtype],
        xp=xp,
    )
    assert result["b"][1] is None


def _leafwise(fn, params, grads_list):
    """Apply a per-leaf reference update ``fn(p, [g_1, g_2, ...]) -> p_T``."""
    out = {"w": fn(params["w"], [g["w"] for g in grads_list])}
    out["b"] = [fn(params["b"][0], [g["b"][0] for g in grads_list]), None]
    return out


def _sgd_reference(lr, momentum, nesterov, wd, lr_fn=None):
    def fn(p, gs):
        b = np.zeros_like(p)
        for t, g in enumerate(gs):
            step_lr = lr if lr_fn is None else lr_fn(t)
            g = g + wd * p
            b = momentum * b + g
            d = g + momentum * b if nesterov else (b if momentum else g)
            p = p - step_lr * d
        return p

    return fn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("momentum", "nesterov", "wd"),
    [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2), (0.0, False, 0.1)],
)
def test_sgd_matches_hand_computed_steps(xp, dtype, momentum, nesterov, wd):
    params, grads = _problem()
    opt = optim.SGD(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    result, state = _run(opt, params, grads, xp, dtype)
    _check(
        result, _leafwise(_sgd_reference(0.05, momentum, nesterov, wd), params, grads), xp, dtype
    )
    assert int(state.step) == len(grads)
    assert (state.momentum is None) == (momentum == 0)


def test_sgd_single_step_by_hand(xp):
    # p = 1, g = 2, mu = 0.5, nesterov, wd = 0.25, lr = 0.1:
    # g' = 2 + 0.25 = 2.25; b = 2.25; d = 2.25 + 0.5 * 2.25 = 3.375; p = 1 - 0.3375
    opt = optim.SGD(lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.25)
    p = [xp.asarray([1.0])]
    p, state = opt.update(p, [xp.asarray([2.0])], opt.init(p))
    assert_close(p[0], xp.asarray([0.6625]), rtol=1e-14, xp=xp)
    assert_close(state.momentum[0], xp.asarray([2.25]), rtol=1e-14, xp=xp)


def _adam_reference(lr, b1, b2, eps, wd, decoupled, lr_fn=None):
    def fn(p, gs):
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, g in enumerate(gs, start=1):
            step_lr = lr if lr_fn is None else lr_fn(t - 1)
            if not decoupled:
                g = g + wd * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            mhat = m / (1 - b1**t)
            vhat = v / (1 - b2**t)
            d = mhat / (np.sqrt(vhat) + eps)
            if decoupled:
                d = d + wd * p
            p = p - step_lr * d
        return p

    return fn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cls", "wd"), [(optim.Adam, 0.0), (optim.Adam, 0.1), (optim.AdamW, 0.1)])
def test_adam_matches_hand_computed_steps(xp, dtype, cls, wd):
    params, grads = _problem(1)
    opt = cls(lr=0.01, b1=0.8, b2=0.95, eps=1e-6, weight_decay=wd)
    result, state = _run(opt, params, grads, xp, dtype)
    ref = _adam_reference(0.01, 0.8, 0.95, 1e-6, wd, decoupled=cls is optim.AdamW)
    _check(result, _leafwise(ref, params, grads), xp, dtype)
    assert int(state.step) == len(grads)
    assert state.mu["w"].dtype == getattr(xp, dtype)


def test_adam_first_step_by_hand(xp):
    # First step: m_hat = g, v_hat = g^2, so p <- p - lr * g / (|g| + eps).
    opt = optim.Adam(lr=0.1, eps=0.0)
    p = [xp.asarray([1.0, -1.0])]
    p, _ = opt.update(p, [xp.asarray([5.0, -0.01])], opt.init(p))
    assert_close(p[0], xp.asarray([0.9, -0.9]), rtol=1e-14, xp=xp)


def test_adamw_decay_is_decoupled(xp):
    # Zero gradient: Adam's L2 decay still feeds the moments (first step moves by lr),
    # AdamW moves by lr * wd * p only.
    p0 = [xp.asarray([2.0])]
    g = [xp.asarray([0.0])]
    pa, _ = optim.Adam(lr=0.1, weight_decay=0.5).update(p0, g, optim.Adam().init(p0))
    pw, _ = optim.AdamW(lr=0.1, weight_decay=0.5).update(p0, g, optim.AdamW().init(p0))
    assert_close(pa[0], xp.asarray([1.9]), rtol=1e-7, xp=xp)
    assert_close(pw[0], xp.asarray([1.9]), rtol=1e-14, xp=xp)
    # On a second step with zero gradient they differ: Adam's normalised step stays ~lr.
    pa2, _ = optim.Adam(lr=0.1, weight_decay=0.5).update(pa, g, optim.Adam().init(p0))
    pw2, _ = optim.AdamW(lr=0.1, weight_decay=0.5).update(pw, g, optim.AdamW().init(p0))
    assert_close(pw2[0], xp.asarray([1.9 * 0.95]), rtol=1e-14, xp=xp)
    assert_close(pa2[0], xp.asarray([1.8]), rtol=1e-7, xp=xp)


@pytest.mark.parametrize("dtype", DTYPES)
def test_schedules_drive_the_learning_rate(xp, dtype):
    params, grads = _problem(2)
    sched = optim.cosine_schedule(0.1, 3, final_lr=0.01, warmup_steps=1)
    result, _ = _run(optim.SGD(lr=sched, momentum=0.5), params, grads, xp, dtype)
    _check(
        result, _leafwise(_sgd_reference(None, 0.5, False, 0.0, sched), params, grads), xp, dtype
    )
    sched = optim.step_schedule(0.1, 2, gamma=0.5)
    result, _ = _run(optim.Adam(lr=sched), params, grads, xp, dtype)
    ref = _adam_reference(None, 0.9, 0.999, 1e-8, 0.0, False, sched)
    _check(result, _leafwise(ref, params, grads), xp, dtype)


def test_cosine_schedule_values():
    s = optim.cosine_schedule(1.0, 10, final_lr=0.1, warmup_steps=2)
    assert [s(0), s(1)] == [0.5, 1.0]
    for t in range(2, 15):
        p = min(t - 2, 8) / 8
        assert s(t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)), rel=1e-15)
    assert s(10) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)


def test_step_schedule_values():
    s = optim.step_schedule(0.8, [3, 5], gamma=0.5)
    assert [s(t) for t in range(7)] == [0.8, 0.8, 0.8, 0.4, 0.4, 0.2, 0.2]
    s = optim.step_schedule(1.0, 2, gamma=0.1)
    assert [s(t) for t in range(5)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    assert optim.constant(0.3)(12345) == 0.3


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_global_norm(xp, dtype):
    params, grads = _problem(3)
    g = grads[0]
    norm = math.sqrt(np.sum(g["w"] ** 2) + np.sum(g["b"][0] ** 2))
    gx = _to(g, xp, dtype)
    assert float(optim.global_norm(gx)) == pytest.approx(norm, rel=RTOL[dtype] * 10)
    clipped = optim.clip_by_global_norm(gx, norm / 4)
    _check(clipped, {"w": g["w"] / 4, "b": [g["b"][0] / 4, None]}, xp, dtype)
    unclipped = optim.clip_by_global_norm(gx, 2 * norm)
    _check(unclipped, g, xp, dtype)
    # The wrapper clips, then steps with the inner optimizer.
    opt = optim.ClipByGlobalNorm(inner=optim.SGD(lr=0.5), max_norm=norm / 4)
    result, _ = _run(opt, params, [g], xp, dtype)
    expected = {
        "w": params["w"] - 0.5 * g["w"] / 4,
        "b": [params["b"][0] - 0.5 * g["b"][0] / 4, None],
    }
    _check(result, expected, xp, dtype)


def test_state_is_a_pytree_of_arrays(xp):
    from implicitnet._tree import tree_leaves

    p = {"a": xp.ones((2,)), "b": xp.zeros((1, 3))}
    for opt in (optim.SGD(lr=0.1, momentum=0.9), optim.Adam(), optim.AdamW()):
        state = opt.init(p)
        leaves = tree_leaves(state)
        assert all(array_api_compat.is_array_api_obj(leaf) for leaf in leaves)
        assert state.step.ndim == 0 and state.step.dtype == xp.int64
        assert len(leaves) == 1 + (len(state) - 1) * 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="`lr`"):
        optim.SGD(lr=0.0)
    with pytest.raises(TypeError, match="`lr`"):
        optim.SGD(lr="fast")
    with pytest.raises(ValueError, match="`momentum`"):
        optim.SGD(lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="`nesterov=True`"):
        optim.SGD(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="`b2`"):
        optim.Adam(b2=1.5)
    with pytest.raises(ValueError, match="`weight_decay`"):
        optim.AdamW(weight_decay=-1.0)
    with pytest.raises(ValueError, match="`max_norm`"):
        optim.ClipByGlobalNorm(inner=optim.SGD(lr=0.1), max_norm=0.0)
    with pytest.raises(TypeError, match="`inner`"):
        optim.ClipByGlobalNorm(inner="sgd", max_norm=1.0)
    with pytest.raises(ValueError, match="`warmup_steps`"):
        optim.cosine_schedule(0.1, 5, warmup_steps=6)
    with pytest.raises(ValueError, match="`milestones`"):
        optim.step_schedule(0.1, [5, 3])
    with pytest.raises(ValueError, match="`params`"):
        optim.SGD(lr=0.1).init({"a": None})
    opt = optim.SGD(lr=0.1)
    p = {"a": np.ones(2)}
    with pytest.raises(ValueError, match="`grads`"):
        opt.update(p, {"b": np.ones(2)}, opt.init(p))
