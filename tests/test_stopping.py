"""The stopping test: `success` only when the returned `x` passes it when re-evaluated.

Properties on maps without fixed points (shifts, ``x + a sin x + c``, exponential
growth) and on maps that turn non-finite at a random call, for every method, batched
and not: `success` is never reported on them, and re-checking the returned `x` against
the documented test always agrees with each system's reported status.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import implicitnet as inet
from implicitnet import backends
from implicitnet.solvers import fixed_point, root
from implicitnet.testing.strategies import maps_without_fixed_points, poisoned_maps

METHODS = ["picard", "anderson", "broyden", "newton_krylov"]
SCIPY_METHODS = ["scipy:anderson", "scipy:broyden1", "scipy:krylov"]
# Growth allowed to the scale of the fixed-point test (documented on the theory page).
GROWTH = 100.0
# Relative band around the threshold where a recomputed residual may round either way.
BAND = {"float32": 1e-3, "float64": 1e-9}
DTYPES = ["float32", "float64"]

# The drawn maps overflow and produce NaN on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def to_np(x):
    return backends.backend_of(x).to_numpy(x).astype(np.float64)


def solve(p, **kw):
    call = fixed_point if p.kind == "fixed_point" else root
    return call(p.f, p.x0, p.args, batch_axis=p.batch_axis, arg_batch_axes=p.arg_batch_axes, **kw)


def converged_flags(res, batched):
    return to_np(res.converged).astype(bool).tolist() if batched else [bool(res.success)]


def recheck(p, res, *, rtol, atol, dtype):
    """Per system: does the returned `x` pass the documented test, re-evaluated?

    None where the recomputed residual lies within rounding of the threshold.
    """
    fx = p.f(res.x, *p.args)
    g = fx - res.x if p.kind == "fixed_point" else fx
    rows = 1 if p.batch_axis is None else p.x0.shape[0]
    x_np = np.reshape(to_np(res.x), (rows, -1))
    g_np = np.reshape(to_np(g), (rows, -1))
    f_np = np.reshape(to_np(fx), (rows, -1))
    eps = float(np.finfo(dtype).eps)
    out = []
    for i in range(rows):
        with np.errstate(all="ignore"):
            r = float(np.linalg.norm(g_np[i]))
            s = float(np.linalg.norm(f_np[i]))
        r0, s0 = p.residual0[i], p.scale0[i]
        if p.kind == "fixed_point":
            cap = GROWTH * s0
            scale = max(r0, min(s, cap)) if s == s else cap
        else:
            scale = r0
        thr = atol + rtol * scale
        if not (np.all(np.isfinite(x_np[i])) and math.isfinite(r)):
            out.append(False)
        elif abs(r - thr) <= BAND[dtype] * thr + 10 * eps * max(s, r0):
            out.append(None)
        else:
            ok = r <= thr
            if ok and p.kind == "fixed_point" and s > cap:
                ok = eps * s <= thr
            out.append(ok)
    return out


def assert_agrees(p, res, *, rtol, atol, dtype):
    batched = p.batch_axis is not None
    flags = converged_flags(res, batched)
    checks = recheck(p, res, rtol=rtol, atol=atol, dtype=dtype)
    for i, (flag, ok) in enumerate(zip(flags, checks)):
        if ok is not None:
            assert flag == ok, (i, flag, ok, p.description, res)
    assert bool(res.success) == all(flags)
    # The returned x is finite wherever f was finite at x0 (it always is here).
    assert bool(np.all(np.isfinite(to_np(res.x))))


tolerances = st.tuples(
    st.sampled_from([1e-12, 1e-9, 1e-6, 1e-4]), st.sampled_from([0.0, 1e-12, 1e-3])
)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("kind", ["fixed_point", "root"])
@pytest.mark.parametrize("method", METHODS)
@settings(deadline=None, max_examples=6)
@given(data=st.data(), tol=tolerances, dtype=st.sampled_from(DTYPES))
def test_no_success_without_a_fixed_point(xp, batched, kind, method, data, tol, dtype):
    rtol, atol = tol
    batch = st.integers(1, 4) if batched else None
    p = data.draw(maps_without_fixed_points(xp, dtype=dtype, kind=kind, max_n=6, batch=batch))
    for floor, s0 in zip(p.residual_floor, p.scale0):
        assert atol + rtol * GROWTH * s0 < floor  # no point can pass the test
    res = solve(p, method=method, rtol=rtol, atol=atol, maxiter=40)
    assert not res.success, (p.description, res)
    assert res.status in ("diverged", "stagnated", "maxiter", "breakdown")
    assert not any(converged_flags(res, batched))
    assert_agrees(p, res, rtol=rtol, atol=atol, dtype=dtype)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("compact", [False, True], ids=["frozen", "compacted"])
@pytest.mark.parametrize("method", METHODS)
@settings(deadline=None, max_examples=8)
@given(data=st.data(), tol=tolerances, dtype=st.sampled_from(DTYPES))
def test_non_finite_values_never_converge(xp, batched, compact, method, data, tol, dtype):
    if compact and not batched:
        pytest.skip("an unbatched solve has nothing to compact")
    rtol, atol = tol
    batch = st.integers(1, 5) if batched else None
    p = data.draw(poisoned_maps(xp, dtype=dtype, max_n=6, batch=batch))
    if batched and not compact:
        p = p._replace(arg_batch_axes=None)
    res = solve(p, method=method, rtol=rtol, atol=atol, maxiter=60)
    flags = converged_flags(res, batched)
    for i, floor in enumerate(p.residual_floor):
        if floor > 0.0:  # a poisoned system
            assert not flags[i], (i, p.description, res)
    assert not res.success
    assert_agrees(p, res, rtol=rtol, atol=atol, dtype=dtype)


@pytest.mark.skip_backend(
    "array_api_strict", "torch", "cupy", reason="the SciPy adapters take NumPy arrays"
)
@pytest.mark.parametrize("method", SCIPY_METHODS)
@settings(deadline=None, max_examples=5)
@given(data=st.data())
def test_scipy_adapters_agree_with_the_test(xp, method, data):
    p = data.draw(maps_without_fixed_points(xp, max_n=4, batch=st.integers(1, 2)))
    res = solve(p, method=method, rtol=1e-6, maxiter=30)
    assert not res.success
    assert_agrees(p, res, rtol=1e-6, atol=0.0, dtype="float64")
    # Unbatched: the adapters solve the systems of a batch one after the other, so a
    # later system's x0 would meet the poison.
    q = data.draw(poisoned_maps(xp, max_n=4))
    res = solve(q, method=method, rtol=1e-6, maxiter=30)
    assert not res.success
    assert_agrees(q, res, rtol=1e-6, atol=0.0, dtype="float64")


# --- the reports of issue 13, as examples -------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_overflow_partway_is_not_success(xp, method):
    def f(x):
        return xp.exp(x) * 0.1 + 0.5 * x

    # From x0 = 30 the next iterates overflow; success only where the test really holds
    # (relative to the starting residual ~1.07e12, as the documented test says).
    x0 = xp.asarray([30.0], dtype=xp.float64)
    res = fixed_point(f, x0, method=method, rtol=1e-10)
    r0 = float(xp.linalg.vector_norm(f(x0) - x0))
    if res.success:
        assert float(xp.linalg.vector_norm(f(res.x) - res.x)) <= 1e-10 * r0
    else:
        assert res.x[0] == 30.0 or bool(xp.all(xp.isfinite(res.x)))
        with pytest.raises(inet.ConvergenceError):
            res.raise_for_status()

    # f returns inf on its second call only.
    calls = [0]

    def g(x):
        calls[0] += 1
        return xp.full_like(x, float("inf")) if calls[0] == 2 else 0.5 * x + 1.0

    res = fixed_point(g, xp.zeros(3, dtype=xp.float64), method=method, rtol=1e-12)
    if res.success:  # only when the step recovered on its own (the call was internal)
        assert float(xp.linalg.vector_norm(g(res.x) - res.x)) <= 1e-12 * 2.0 * 3**0.5
    else:
        assert res.status == "diverged"


@pytest.mark.parametrize("method", METHODS)
def test_runaway_iterate_is_not_success(xp, method):
    # x + 0.1 sin x + 1 has no fixed point; the iterate runs away.
    res = fixed_point(
        lambda x: x + 0.1 * xp.sin(x) + 1.0, xp.zeros(2, dtype=xp.float64), method=method
    )
    assert not res.success and res.status != "success"
    assert bool(xp.all(xp.isfinite(res.x)))
    assert res.residual >= 0.9 * 2**0.5


@pytest.mark.parametrize("kind", ["fixed_point", "root"])
def test_non_finite_value_at_x0_is_an_error(xp, kind):
    call = fixed_point if kind == "fixed_point" else root
    name = "f" if kind == "fixed_point" else "F"
    x0 = xp.asarray([1.0, 2.0], dtype=xp.float64)
    with pytest.raises(ValueError, match=rf"`{name}\(x0\)`.*`x0`"):
        call(lambda x: x / 0.0 if kind == "root" else xp.full_like(x, float("nan")), x0)
    x0b = xp.zeros((3, 2), dtype=xp.float64)
    bad = xp.asarray([[0.0], [1.0], [0.0]], dtype=xp.float64)

    def f(x, bad):
        return xp.where(bad > 0.5, xp.full_like(x, float("inf")), 0.5 * x + 1.0)

    with pytest.raises(ValueError, match=r"systems \[1\]"):
        call(f, x0b, (bad,), batch_axis=0)


@pytest.mark.parametrize("method", [*METHODS, "scipy:anderson"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_relative_residual_matches_the_test(xp, backend, method, batched):
    if method.startswith("scipy:") and backend.name != "numpy":
        pytest.skip("the SciPy adapters take NumPy arrays")
    rtol = 1e-8
    c = xp.asarray([[0.5, -1.0, 2.0], [3.0, 0.0, 1.0]], dtype=xp.float64)
    x0 = xp.zeros_like(c) if batched else xp.zeros_like(c[0, :])
    args = (c,) if batched else (c[0, :],)
    kw = {"batch_axis": 0, "arg_batch_axes": 0} if batched else {}
    res = fixed_point(lambda x, c: 0.5 * xp.cos(x) + c, x0, args, method=method, rtol=rtol, **kw)
    assert res.success
    rel = to_np(res.relative_residual) if batched else np.asarray([res.relative_residual])
    resid = to_np(res.residual) if batched else np.asarray([res.residual])
    assert np.all(rel <= rtol)
    # relative_residual = residual / scale, the scale being max(||f(x)||, r0) here.
    fx = to_np(0.5 * xp.cos(res.x) + args[0]).reshape(rel.shape[0], -1)
    r0 = to_np(0.5 + args[0] * 1.0).reshape(rel.shape[0], -1)
    scale = np.maximum(np.linalg.norm(fx, axis=1), np.linalg.norm(r0, axis=1))
    np.testing.assert_allclose(rel, resid / scale, rtol=1e-12)


def test_relative_residual_of_a_root_and_a_linear_solve(xp):
    res = root(lambda x: x**3 - 8.0, xp.asarray([1.0], dtype=xp.float64), rtol=1e-10)
    assert res.success
    assert res.relative_residual == pytest.approx(res.residual / 7.0, rel=1e-12)
    A = xp.asarray([[3.0, 1.0], [1.0, 2.0]], dtype=xp.float64)
    b = xp.asarray([1.0, 2.0], dtype=xp.float64)
    lin = inet.linalg.gmres(A, b, rtol=1e-10)
    assert lin.relative_residual == pytest.approx(lin.residual / math.sqrt(5.0), rel=1e-12)
