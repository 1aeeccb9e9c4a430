"""The optimizer ``implicitnet train`` builds: schedule, warm-up and gradient clipping."""

from __future__ import annotations

import numpy as np
import pytest

from implicitnet import _train, optim


def _config(**kw):
    return {"lr": 0.1, "schedule": "cosine", "epochs": 2, "batch_size": 10, **kw}


def _rates(opt, steps):
    inner = opt.inner if isinstance(opt, optim.ClipByGlobalNorm) else opt
    return [inner.lr(t) if callable(inner.lr) else inner.lr for t in range(steps)]


def test_cosine_with_warmup_and_clipping():
    # 2 epochs of 50 samples in batches of 10: 10 steps; 4 of them warm-up
    opt = _train.build_optimizer(_config(warmup=4, clip_norm=0.5), 50)
    assert isinstance(opt, optim.ClipByGlobalNorm) and opt.max_norm == 0.5
    rates = _rates(opt, 12)
    np.testing.assert_allclose(rates[:4], [0.025, 0.05, 0.075, 0.1])
    # then cosine from the peak to 0 over the remaining 6 steps (closed form)
    np.testing.assert_allclose(
        rates[4:10], [0.05 * (1 + np.cos(np.pi * k / 6)) for k in range(6)], atol=1e-15
    )
    assert rates[10] == rates[11] == 0.0
    # the clipped step: a gradient of norm 5 moves the parameter by lr * Adam's unit step
    # whatever its size, so compare against the unclipped inner optimizer fed g / 10
    params = {"w": np.zeros(3)}
    g = {"w": np.array([3.0, 4.0, 0.0])}
    clipped, _ = opt.update(params, g, opt.init(params))
    manual, _ = opt.inner.update(params, {"w": g["w"] * 0.1}, opt.inner.init(params))
    np.testing.assert_allclose(clipped["w"], manual["w"], rtol=1e-15)


def test_constant_schedule_with_warmup_and_old_configurations():
    opt = _train.build_optimizer(_config(schedule="constant", warmup=2), 50)
    assert not isinstance(opt, optim.ClipByGlobalNorm)
    assert _rates(opt, 5) == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1])
    # a configuration saved before warm-up and clipping existed: neither
    old = _train.build_optimizer(_config(), 50)
    assert not isinstance(old, optim.ClipByGlobalNorm) and old.lr(0) == pytest.approx(0.1)
    const = _train.build_optimizer(_config(schedule="constant"), 50)
    assert const.lr == 0.1
    # more warm-up steps than the run has: the warm-up is cut to the run
    short = _train.build_optimizer(_config(warmup=1000), 50)
    assert _rates(short, 10)[-1] == pytest.approx(0.1)
