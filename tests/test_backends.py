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
    """Only ``backends/`` may import NumPy or CuPy; the core stays array-API neutral."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "backends":
            continue
        for mod in _imports(path):
            if mod.split(".")[0] in {"numpy", "cupy"}:
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
