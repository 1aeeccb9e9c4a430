"""The backend layer: lookup, conversion, random numbers, errors."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

import implicitnet as inet
from implicitnet import backends
from implicitnet.testing import assert_close

ROOT = pathlib.Path(inet.__file__).parent


def test_backend_roundtrip(backend, xp):
    a = np.arange(6.0).reshape(2, 3)
    x = backend.from_numpy(a)
    assert backends.backend_of(x) is backend
    assert backends.get_backend(backend.name) is backend
    assert inet.namespace(x) is xp
    np.testing.assert_array_equal(backend.to_numpy(x), a)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_is_seeded_and_backend_independent(backend, xp, dtype):
    x = backend.random_normal((3, 4), 0, dtype=getattr(xp, dtype))
    y = backend.random_normal((3, 4), 0, dtype=getattr(xp, dtype))
    assert x.dtype == getattr(xp, dtype)
    assert_close(x, y, rtol=0, xp=xp)
    ref = backends.get_backend("numpy").random_normal((3, 4), 0, dtype=dtype)
    np.testing.assert_array_equal(backend.to_numpy(x), ref)
    u = backend.to_numpy(backend.random_uniform((1000,), np.random.default_rng(1), low=-2, high=3))
    assert u.min() >= -2 and u.max() < 3


def test_random_rejects_bad_seed(backend):
    with pytest.raises(TypeError, match="`seed`"):
        backend.random_normal((2,), "zero")
    with pytest.raises(TypeError, match="`seed`"):
        backend.random_normal((2,), 1.5)
    with pytest.raises(ValueError, match="`seed`"):
        backend.random_normal((2,), -1)
    with pytest.raises(ValueError, match="`dtype`"):
        backend.random_normal((2,), 0, dtype="int32")


def test_unknown_backend_name():
    with pytest.raises(ValueError, match=r"unknown backend 'jax'.*numpy"):
        backends.get_backend("jax")


def test_unsupported_array_type():
    with pytest.raises(TypeError, match=r"unsupported array type builtins\.list.*numpy"):
        backends.get_backend([1.0, 2.0])


def test_namespace_errors():
    with pytest.raises(TypeError, match="at least one array"):
        inet.namespace(1.0, None)


def test_sync_and_memory(backend):
    backend.synchronize()
    backend.reset_peak_memory()
    peak = backend.peak_memory()
    assert peak is None or peak >= 0
    assert backend.scipy_module() is not None
    assert backend.devices()


def test_info_cli(capsys):
    from implicitnet.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "implicitnet" in out and "numpy" in out
    assert main(["bogus"]) == 2


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_core_never_imports_numpy_or_cupy():
    """Only ``backends/`` may import NumPy, CuPy or torch; the core stays array-API neutral."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "backends":
            continue
        for mod in _imports(path):
            if mod.split(".")[0] in {"numpy", "cupy", "torch"}:
                offenders.append(f"{rel}: imports {mod}")
    assert not offenders, "\n".join(offenders)


def test_every_package_is_listed_in_pyproject():
    """A subpackage missing from pyproject's package list would be absent from the wheel."""
    import tomllib

    pyproject = ROOT.parent / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not a source checkout (pyproject.toml absent)")
    listed = set(tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"])
    found = {
        "implicitnet." + ".".join(p.parent.relative_to(ROOT).parts)
        if p.parent != ROOT
        else "implicitnet"
        for p in ROOT.rglob("__init__.py")
    }
    found.add("implicitnet.backends")
    assert found <= listed, f"missing from pyproject: {sorted(found - listed)}"


# --- torch: an array library whose arrays have no __array_namespace__ -----------------


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")


def test_torch_tensors_are_recognised_without_array_namespace():
    torch = _torch()
    from implicitnet._xp import is_array

    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    assert not hasattr(x, "__array_namespace__")
    assert is_array(x) and not is_array(1.0) and not is_array([1.0])
    assert backends.backend_of(x).name == "torch"
    assert backends.backend_of(inet.Tensor(x)).name == "torch"
    # differentiable, as a matrix operator, and through the implicit layer
    g = inet.grad(lambda z: inet.ops.sum(inet.ops.sin(z)))(x)
    np.testing.assert_allclose(g.numpy(), np.cos(x.numpy()), rtol=1e-12)
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0], dtype=torch.float64)
    res = inet.linalg.gmres(A, b, rtol=1e-12)
    np.testing.assert_allclose(res.x.numpy(), np.linalg.solve(A.numpy(), b.numpy()), rtol=1e-10)


def test_torch_default_float_dtype_is_followed():
    """Without the test fixture, torch's own default floating dtype (float32) applies."""
    torch = _torch()
    assert torch.get_default_dtype() == torch.float32
    c = torch.tensor([0.5, 1.0])
    res = inet.fixed_point(lambda x, c: 0.5 * torch.cos(x) + c, [0.0, 0.0], (c,), rtol=1e-5)
    assert res.success and res.x.dtype == torch.float32
    x = res.x.numpy().astype(np.float64)
    np.testing.assert_allclose(x, 0.5 * np.cos(x) + [0.5, 1.0], rtol=1e-5)


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (1, 1), (2, 1)])
def test_torch_conv_kernels_match_numpy(stride, padding):
    _torch()
    tb, nb = backends.get_backend("torch"), backends.get_backend("numpy")
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 3))
    y = nb.conv2d(x, w, stride, padding)
    g = rng.standard_normal(y.shape)
    tx, tw, tg = (tb.from_numpy(a) for a in (x, w, g))
    np.testing.assert_allclose(tb.to_numpy(tb.conv2d(tx, tw, stride, padding)), y, rtol=1e-12)
    np.testing.assert_allclose(
        tb.to_numpy(tb.conv2d_input_grad(tg, tw, x.shape, stride, padding)),
        nb.conv2d_input_grad(g, w, x.shape, stride, padding),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        tb.to_numpy(tb.conv2d_weight_grad(tg, tx, w.shape, stride, padding)),
        nb.conv2d_weight_grad(g, x, w.shape, stride, padding),
        rtol=1e-12,
    )


def test_torch_device_choice():
    torch = _torch()
    tb = backends.get_backend("torch")
    assert tb.devices()[0] == "cpu"
    assert tb.from_numpy(np.ones(2), device="cpu").device == torch.device("cpu")
    if not tb.cuda_available():
        with pytest.raises(ValueError, match="`device`"):
            tb.set_default_device("cuda")
    tb.set_default_device(None)
    assert tb.default_device() == torch.device("cpu")
