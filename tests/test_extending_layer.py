"""Adding an nn layer the way ``docs/contributing.md`` says: one file, one export line.

``ScaleShift`` below stands for the new file ``implicitnet/nn/_scale_shift.py``: a
frozen dataclass subclassing :class:`implicitnet.nn.Module` (which registers it as a
pytree) with a ``create`` classmethod that draws its initial values on the host.
Its "registration line" is the export in ``implicitnet/nn/__init__.py``; nothing else
(gradients, optimizers, ``nn.save``/``nn.load``) needs to know about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import implicitnet as inet
from implicitnet import nn, optim
from implicitnet.testing import assert_close, check_grads

RTOL = {"float32": 2e-6, "float64": 1e-12}
DTYPES = ["float32", "float64"]


@dataclass(frozen=True)
class ScaleShift(nn.Module):
    """Per-feature affine map ``y = x * scale + shift`` on the last axis."""

    scale: Any
    shift: Any

    def __call__(self, x):
        return x * self.scale + self.shift

    @classmethod
    def create(cls, features: int, *, seed=0, dtype=None, backend="numpy", device=None):
        rng = nn.generator(seed)
        kw = {"dtype": dtype, "backend": backend, "device": device}
        return cls(
            scale=nn.uniform_init((features,), 1.0, rng, **kw) + 1.5,
            shift=nn.zeros_init((features,), **kw),
        )


def _model(backend, dtype):
    rng = nn.generator(0)
    layers = (
        nn.Linear.create(3, 4, seed=rng, dtype=dtype, backend=backend),
        ScaleShift.create(4, seed=rng, dtype=dtype, backend=backend),
    )
    return nn.Sequential(layers)


def _loss(model, x, y):
    d = model(x) - y
    xp = inet.namespace(d)
    return xp.sum(d * d) / d.shape[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_new_layer_is_a_pytree_with_named_parameters(backend, xp, dtype):
    model = _model(backend, dtype)
    names = list(nn.named_leaves(model))
    assert names == ["layers.0.weight", "layers.0.bias", "layers.1.scale", "layers.1.shift"]
    layer = model.layers[1]
    assert layer.num_parameters() == 8 and layer.scale.dtype == getattr(xp, dtype)
    x_np = np.arange(8.0).reshape(2, 4)
    expected = x_np * backend.to_numpy(layer.scale) + backend.to_numpy(layer.shift)
    assert_close(
        layer(xp.asarray(x_np, dtype=getattr(xp, dtype))),
        xp.asarray(expected, dtype=getattr(xp, dtype)),
        rtol=RTOL[dtype],
    )


def test_new_layer_gradient_matches_finite_differences(backend, xp):
    model = _model(backend, "float64")
    rng = np.random.default_rng(1)
    x = xp.asarray(rng.standard_normal((5, 3)))
    y = xp.asarray(rng.standard_normal((5, 4)))
    check_grads(_loss, (model, x, y), argnums=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_new_layer_trains_one_step_and_survives_save_and_load(tmp_path, backend, xp, dtype):
    model = _model(backend, dtype)
    rng = np.random.default_rng(2)
    x = xp.asarray(rng.standard_normal((16, 3)), dtype=getattr(xp, dtype))
    y = xp.asarray(rng.standard_normal((16, 4)), dtype=getattr(xp, dtype))
    opt = optim.Adam(lr=1e-2)
    state = opt.init(model)
    before, grads = inet.value_and_grad(_loss)(model, x, y)
    assert type(grads) is nn.Sequential and type(grads.layers[1]) is ScaleShift
    model, state = opt.update(model, grads, state)
    after = _loss(model, x, y)
    assert float(after) < float(before)  # a small step along the gradient descends

    path = tmp_path / "toy.npz"
    nn.save(path, {"model": model, "optimizer": state}, metadata={"step": 1})
    fresh = _model(backend, dtype)
    back = nn.load(path, like={"model": fresh, "optimizer": opt.init(fresh)})
    assert nn.load_metadata(path) == {"step": 1}
    assert type(back["model"].layers[1]) is ScaleShift
    for name, leaf in nn.named_leaves(model).items():
        assert_close(nn.named_leaves(back["model"])[name], leaf, rtol=0, err_msg=name)
    assert_close(back["model"](x), model(x), rtol=0)
