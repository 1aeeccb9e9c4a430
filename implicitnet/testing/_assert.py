"""``assert_close``: compare arrays and check they share namespace, dtype and device."""

from __future__ import annotations

import array_api_compat

from .. import backends
from .._xp import is_tensor
from ..backends.host import allclose_report


def assert_close(
    actual,
    desired,
    *,
    rtol: float = 1e-7,
    atol: float = 0.0,
    xp=None,
    check_dtype: bool = True,
    err_msg: str = "",
) -> None:
    """Assert ``|actual - desired| <= atol + rtol * |desired|`` elementwise.

    Both arrays must come from the same array library (and from `xp` when given), with
    the same dtype (unless ``check_dtype=False``), device and shape. A test that
    accidentally compares two NumPy arrays on another backend fails here.

    Raises
    ------
    AssertionError
        With the worst absolute and relative errors and where they are.
    """
    if is_tensor(actual):
        actual = actual._implicitnet_data
    if is_tensor(desired):
        desired = desired._implicitnet_data
    xa = array_api_compat.array_namespace(actual)
    xd = array_api_compat.array_namespace(desired)
    prefix = f"{err_msg}: " if err_msg else ""
    if xa is not xd:
        msg = f"{prefix}arrays from different namespaces: {xa.__name__} vs {xd.__name__}"
        raise AssertionError(msg)
    if xp is not None and xa is not xp:
        msg = f"{prefix}arrays are from {xa.__name__}, expected {xp.__name__}"
        raise AssertionError(msg)
    if check_dtype and actual.dtype != desired.dtype:
        msg = f"{prefix}dtype mismatch: {actual.dtype} vs {desired.dtype}"
        raise AssertionError(msg)
    if array_api_compat.device(actual) != array_api_compat.device(desired):
        msg = f"{prefix}device mismatch"
        raise AssertionError(msg)
    if tuple(actual.shape) != tuple(desired.shape):
        msg = f"{prefix}shape mismatch: {tuple(actual.shape)} vs {tuple(desired.shape)}"
        raise AssertionError(msg)
    a = backends.backend_of(actual).to_numpy(actual)
    d = backends.backend_of(desired).to_numpy(desired)
    report = allclose_report(a, d, rtol=rtol, atol=atol)
    if report is not None:
        raise AssertionError(prefix + report)
