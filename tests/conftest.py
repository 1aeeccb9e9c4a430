"""Shared fixtures: the backend matrix (`xp`) and hypothesis profiles.

Backends are chosen with ``IMPLICITNET_TEST_BACKENDS='["numpy", "array_api_strict"]'``;
the default is all of them: numpy, array_api_strict and torch (CPU) run everywhere they
are installed; cupy and torch_cuda (torch tensors on the GPU) run where a CUDA device is
usable. A backend that cannot run here is skipped, saying why.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from hypothesis import HealthCheck, settings

from implicitnet import backends

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# The backend matrix: (test id, backend name, device). Every backend runs on its default
# device; torch runs a second time on CUDA ("torch_cuda"), with torch's default device
# set to the GPU for the test, so that every array the test makes lands there.
# A backend added to implicitnet.backends joins the matrix by its registration alone.
_VARIANTS = {
    **{name: (name, None) for name in backends.BACKEND_NAMES},
    "torch_cuda": ("torch", "cuda"),
}


def _requested_backends() -> list[str]:
    raw = os.environ.get("IMPLICITNET_TEST_BACKENDS")
    if not raw:
        return list(_VARIANTS)
    names = json.loads(raw)
    unknown = [n for n in names if n not in _VARIANTS]
    if unknown:
        raise pytest.UsageError(
            f"IMPLICITNET_TEST_BACKENDS: unknown backends {unknown}; known: {list(_VARIANTS)}"
        )
    return names


BACKENDS = _requested_backends()


def pytest_configure(config):
    config.addinivalue_line("markers", "cupy_only: test needs a CUDA device")
    if {"torch", "torch_cuda"} & set(BACKENDS) and importlib.util.find_spec("torch"):
        # The tests' arrays are small: PyTorch's intra-op threads only spin, and on a
        # loaded machine they made the torch tests ten times slower.
        import torch

        torch.set_num_threads(1)


def _skip_reason(variant: str, mod) -> str | None:
    name, device = _VARIANTS[variant]
    if not mod.available():
        return f"backend {name} unavailable: {mod.unavailable_reason()}"
    if device == "cuda" and not mod.cuda_available():
        return f"{variant}: no CUDA device visible to {name}"
    return None


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The backend module under test (skipped, with the reason, when unavailable).

    ``skip_backend("torch", ...)`` skips torch on every device; ``skip_backend("torch_cuda",
    ...)`` on CUDA only.
    """
    variant = request.param
    name, device = _VARIANTS[variant]
    mod = backends._load(name)
    why = _skip_reason(variant, mod)
    if why is not None:
        pytest.skip(why)
    marker = request.node.get_closest_marker("skip_backend")
    if marker is not None and (name in marker.args or variant in marker.args):
        pytest.skip(marker.kwargs.get("reason", f"not supported on {variant}"))
    if name != "torch":
        yield mod
        return
    # The tests' literals (``xp.asarray([0.3, 1.2])``) mean float64, NumPy's and CuPy's
    # default; torch's default floating dtype is float32 unless set.
    # test_backends.py checks that the library follows torch's own default.
    import torch

    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    if device is not None:
        mod.set_default_device(device)
    try:
        yield mod
    finally:
        torch.set_default_dtype(dtype)
        if device is not None:
            mod.set_default_device(None)


@pytest.fixture
def xp(backend):
    """The array-API namespace of the backend under test."""
    return backend.namespace()
