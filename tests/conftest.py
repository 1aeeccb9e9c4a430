"""Shared fixtures: the backend matrix (`xp`) and hypothesis profiles.

Backends are chosen with ``IMPLICITNET_TEST_BACKENDS='["numpy", "array_api_strict"]'``;
the default is every backend installed here. NumPy and array-api-strict always run;
CuPy runs when a CUDA device is usable (otherwise its tests are skipped, saying why).
"""

from __future__ import annotations

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


def _requested_backends() -> list[str]:
    raw = os.environ.get("IMPLICITNET_TEST_BACKENDS")
    if not raw:
        return list(backends.BACKEND_NAMES)
    names = json.loads(raw)
    unknown = [n for n in names if n not in backends.BACKEND_NAMES]
    if unknown:
        raise pytest.UsageError(f"IMPLICITNET_TEST_BACKENDS: unknown backends {unknown}")
    return names


BACKENDS = _requested_backends()


def pytest_configure(config):
    config.addinivalue_line("markers", "cupy_only: test needs a CUDA device")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The backend module under test (skipped, with the reason, when unavailable)."""
    name = request.param
    mod = backends._load(name)
    if not mod.available():
        pytest.skip(f"backend {name} unavailable: {mod.unavailable_reason()}")
    marker = request.node.get_closest_marker("skip_backend")
    if marker is not None and name in marker.args:
        pytest.skip(marker.kwargs.get("reason", f"not supported on {name}"))
    return mod


@pytest.fixture
def xp(backend):
    """The array-API namespace of the backend under test."""
    return backend.namespace()
