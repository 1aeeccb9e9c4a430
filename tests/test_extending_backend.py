"""Adding a backend, as ``docs/contributing.md`` describes it: one new module
(``tests/toy_backend.py``), one registration line, the conformance test, and then the
backend works through implicitnet's public calls.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import toy_backend
from test_backend_protocol import assert_conforms

import implicitnet as inet
from implicitnet import backends, nn


@pytest.fixture
def toy(monkeypatch):
    """The toy backend, registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.register_backend(toy_backend)  # the registration line
    return toy_backend


def test_toy_backend_conforms(toy):
    assert_conforms(toy, pathlib.Path(toy_backend.__file__))


def test_toy_backend_is_found_by_name_and_module(toy):
    assert backends.get_backend("toy") is toy
    assert backends.get_backend(toy) is toy
    assert backends.load_backend("toy") is toy
    assert backends.available_backends()[-1] == "toy"
    # NumPy arrays stay with the numpy backend, registered before it.
    assert backends.backend_of(toy.from_numpy(np.ones(2))).name == "numpy"


def test_toy_backend_solves_and_differentiates(toy):
    """A DEQ-style fixed point z = tanh(W z + x) made on the toy backend, and the
    gradient of a loss through it, against the implicit function theorem by hand."""
    n = 4
    layer = nn.Linear.create(n, n, seed=0, backend="toy")  # drawn by toy.random_uniform
    bound = 1.0 / np.sqrt(n)
    expected = toy.random_uniform((n, n), nn.generator(0), low=-bound, high=bound)
    np.testing.assert_array_equal(layer.weight, expected)
    W = 0.5 * toy.random_normal((n, n), 1) / np.sqrt(n)
    x = toy.random_normal((n,), 2)

    def f(z, W, x):
        xp = inet.namespace(z, W, x)
        return xp.tanh(W @ z + x)

    res = inet.fixed_point(f, toy.from_numpy(np.zeros(n)), args=(W, x), rtol=1e-12)
    assert res.success
    z = res.x
    np.testing.assert_allclose(z, np.tanh(W @ z + x), rtol=1e-10)

    def loss(W, x):
        return inet.ops.sum(inet.fixed_point(f, np.zeros(n), args=(W, x), rtol=1e-12).x ** 2)

    gW, gx = inet.grad(loss, argnums=(0, 1))(W, x)
    # IFT: with D = diag(1 - z^2), dz* = (I - D W)^{-1} D (dW z + dx), so for L = |z|^2
    # u = (I - D W)^{-T} 2 z, dL/dx = D u, dL/dW = (D u) z^T.
    D = np.diag(1.0 - z**2)
    u = np.linalg.solve((np.eye(n) - D @ W).T, 2.0 * z)
    np.testing.assert_allclose(gx, D @ u, rtol=1e-8)
    np.testing.assert_allclose(gW, np.outer(D @ u, z), rtol=1e-8)
