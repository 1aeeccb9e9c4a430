"""Batched solves on Dask: equality with the in-memory solve, failure as a value,
argument checks, a cluster of processes and a worker killed mid-solve."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import numpy as np
import problems
import pytest

import implicitnet as inet
from implicitnet import distributed
from implicitnet.testing import assert_close

dask = pytest.importorskip("dask", reason="Dask is not installed (extra `distributed`)")
da = pytest.importorskip("dask.array", reason="Dask is not installed (extra `distributed`)")

# Solve tolerance per dtype; a chunk's answer equals the whole batch's up to rounding.
RTOL = {"float32": 1e-4, "float64": 1e-10}
ROUND = {"float32": 1e-6, "float64": 1e-14}
DTYPES = ["float32", "float64"]

NOT_IN_DASK = (
    "Dask chunks are NumPy or CuPy arrays: dask.array reads NumPy dtypes from its chunks, "
    "which torch and array-api-strict arrays do not have"
)


def kepler_data(n, *, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
    e = rng.uniform(0.0, 0.7, size=(n, 1))
    return M, e


def as_dask(backend, a, dtype, chunks):
    arr = backend.from_numpy(a.astype(dtype))
    return da.from_array(arr, chunks=chunks, asarray=False)


@pytest.mark.skip_backend("array_api_strict", "torch", reason=NOT_IN_DASK)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunks_equal_in_memory_solve(backend, xp, dtype):
    M, e = kepler_data(1000)
    chunks = (128, 1)  # uneven: the last chunk is smaller
    x0 = as_dask(backend, M, dtype, chunks)
    Md, ed = as_dask(backend, M, dtype, chunks), as_dask(backend, e, dtype, chunks)
    res = distributed.fixed_point(
        problems.kepler_map, x0, (Md, ed), arg_batch_axes=0, rtol=RTOL[dtype]
    )
    assert res.x.chunks == ((128,) * 7 + (104,), (1,))
    out = res.compute(scheduler="threads")
    Mx, ex = (xp.asarray(backend.from_numpy(a.astype(dtype))) for a in (M, e))
    ref = inet.solvers.fixed_point(
        problems.kepler_map, Mx, (Mx, ex), batch_axis=0, arg_batch_axes=0, rtol=RTOL[dtype]
    )
    assert out.success and ref.success
    assert_close(out.x, ref.x, rtol=ROUND[dtype], xp=xp)
    assert_close(out.residual, ref.residual, rtol=1e-3, atol=ROUND[dtype], xp=xp)
    assert bool(xp.all(out.nit == ref.nit))
    assert bool(xp.all(out.nfev == ref.nfev))
    expected = problems.kepler_reference(M, e)
    assert_close(out.x, xp.asarray(backend.from_numpy(expected.astype(dtype))), rtol=1e-3, xp=xp)


@pytest.mark.skip_backend("array_api_strict", "torch", reason=NOT_IN_DASK)
def test_root_and_shared_arguments(backend, xp):
    # Root of A z + c = 0 per system: c batched along axis 1, A shared by all.
    rng = np.random.default_rng(1)
    A = np.eye(3) + 0.2 * rng.standard_normal((3, 3))
    c = rng.standard_normal((40, 3))
    c_d = da.from_array(backend.from_numpy(c).T, chunks=(3, 10), asarray=False)
    x0 = da.zeros((3, 40), chunks=(1, 10), meta=c_d._meta)  # split along both axes

    def F(z, c, A):
        return problems.affine(z.T, A, c.T).T

    res = distributed.root(
        F, x0, (c_d, backend.from_numpy(A)), batch_axis=1, arg_batch_axes=(1, None), rtol=1e-12
    )
    assert res.x.chunks == ((3,), (10, 10, 10, 10))
    out = res.compute(scheduler="threads")
    expected = np.linalg.solve(A, -c.T)
    assert out.success
    assert_close(out.x, xp.asarray(backend.from_numpy(expected)), rtol=1e-9, xp=xp)


@pytest.mark.skip_backend("array_api_strict", "torch", reason=NOT_IN_DASK)
def test_failure_stays_a_value_per_system(backend, xp):
    # x = a x + 1: contractive for |a| < 1, diverges for a = 3: one bad system per chunk.
    a = np.full((12, 1), 0.5)
    a[::4] = 3.0
    ad = as_dask(backend, a, "float64", (4, 1))
    x0 = da.zeros((12, 1), chunks=(4, 1), meta=ad._meta)
    res = distributed.fixed_point(
        lambda x, a: a * x + 1.0,
        x0,
        (ad,),
        arg_batch_axes=0,
        method="picard",
        rtol=1e-10,
        maxiter=60,
    )
    res = res.persist(scheduler="threads")
    conv = res.converged.compute()
    expected = [bool(v) for v in (a[:, 0] < 1)]
    assert [bool(v) for v in backend.to_numpy(conv)] == expected
    codes = [int(v) for v in backend.to_numpy(res.status.compute())]
    statuses = [distributed.STATUSES[c] for c in codes]
    assert all((s == "success") == ok for s, ok in zip(statuses, expected))
    assert {s for s, ok in zip(statuses, expected) if not ok} == {inet.Status.DIVERGED}
    x = backend.to_numpy(res.x.compute())
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x[a[:, 0] < 1], 2.0, rtol=1e-6)
    s = res.summary(scheduler="threads")
    assert s["systems"] == 12 and s["converged"] == 9 and not s["success"]
    assert s["statuses"] == {"success": 9, "diverged": 3}
    assert s["status"] == "diverged"
    out = res.compute(scheduler="threads")
    assert not out.success and out.status == "diverged"
    assert out.stats["statuses"] == tuple(statuses)


def test_integer_start_becomes_float():
    c = da.from_array(np.arange(4.0).reshape(4, 1), chunks=(2, 1))
    res = distributed.fixed_point(
        lambda x, c: 0.5 * x + c,
        da.zeros((4, 1), dtype="int64", chunks=(2, 1)),
        (c,),
        arg_batch_axes=0,
        rtol=1e-12,
    )
    assert res.x.dtype == np.float64
    out = res.compute(scheduler="sync")
    np.testing.assert_allclose(out.x[:, 0], 2 * np.arange(4.0), rtol=1e-10)


def test_input_errors():
    x0 = da.zeros((4, 2), chunks=(2, 2))
    f = problems.cos_map
    with pytest.raises(TypeError, match="`x0` must be a Dask array"):
        distributed.fixed_point(f, np.zeros((4, 2)))
    with pytest.raises(TypeError, match="`f` must be callable"):
        distributed.fixed_point(None, x0)
    with pytest.raises(ValueError, match="`batch_axis` 2 is out of range"):
        distributed.fixed_point(f, x0, batch_axis=2)
    with pytest.raises(ValueError, match="unknown"):
        distributed.fixed_point(f, x0, method="nope")
    with pytest.raises(ValueError, match="`rtol`"):
        distributed.fixed_point(f, x0, rtol=-1.0)
    with pytest.raises(TypeError, match=r"`args\[0\]` holds a Dask array but is shared"):
        distributed.fixed_point(lambda x, c: x, x0, (x0,))
    with pytest.raises(ValueError, match=r"`args\[0\]` has size 3 along its batch axis"):
        distributed.fixed_point(lambda x, c: x, x0, (da.zeros((3, 2)),), arg_batch_axes=0)
    with pytest.raises(ValueError, match="`arg_batch_axes` has 2 entries"):
        distributed.fixed_point(lambda x, c: x, x0, (x0,), arg_batch_axes=(0, 0))
    with pytest.raises(ValueError, match="no systems"):
        distributed.fixed_point(f, da.zeros((0, 2)))


def _slow_kepler(E, M, e):
    time.sleep(0.01)  # long enough for the test to kill a worker mid-task
    return problems.kepler_map(E, M, e)


def test_local_cluster_survives_a_killed_worker():
    distributed_pkg = pytest.importorskip(
        "distributed", reason="dask.distributed is not installed (extra `distributed`)"
    )
    import cloudpickle

    # The workers cannot import the test modules: send their functions by value.
    cloudpickle.register_pickle_by_value(problems)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    M, e = kepler_data(120, seed=3)
    Md, ed = da.from_array(M, chunks=(20, 1)), da.from_array(e, chunks=(20, 1))
    ref = inet.solvers.fixed_point(
        problems.kepler_map,
        M,
        (M, e),
        batch_axis=0,
        arg_batch_axes=0,
        rtol=1e-8,
        method="picard",
    )
    # Forked workers start in a second rather than re-importing everything.
    fork = "fork" in multiprocessing.get_all_start_methods()
    method = {"distributed.worker.multiprocessing-method": "fork"} if fork else {}
    with (
        dask.config.set(method),
        distributed_pkg.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=50,
        ) as cluster,
        distributed_pkg.Client(cluster) as client,
    ):
        res = distributed.fixed_point(
            _slow_kepler, Md, (Md, ed), arg_batch_axes=0, rtol=1e-8, method="picard"
        )
        futures = client.compute(list(res._arrays()))
        pids = client.run(os.getpid)
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:
            for addr, keys in client.processing().items():
                if any("implicitnet-fixed_point" in str(k) for k in keys):
                    victim = addr
                    break
            time.sleep(0.01)
        assert victim is not None, "no solve task started within a minute"
        os.kill(pids[victim], signal.SIGKILL)
        x, conv, codes, nit, nfev, _ = client.gather(futures)
    assert x.shape == (120, 1) and nit.shape == (120,)
    assert bool(np.all(conv)) and set(codes.tolist()) == {0}
    np.testing.assert_array_equal(x, ref.x)
    np.testing.assert_array_equal(nit, ref.nit)
    np.testing.assert_array_equal(nfev, ref.nfev)
