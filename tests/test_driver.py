"""The shared solver driver: the active set of a batch (which rows `f` still sees)."""

from __future__ import annotations

import numpy as np
import problems
from hypothesis import given, settings
from hypothesis import strategies as st

from implicitnet import Status
from implicitnet.solvers import fixed_point

# The driver's deferral bound: a finished row waits at most this many iterations.
MAX_DEFERRAL = 8


def _to_np(backend, x):
    return np.asarray(backend.to_numpy(x), dtype=np.float64)


def test_finished_systems_leave_the_working_arrays(backend, xp):
    # 16 independent scalar contractions x = s x + 1 with rates from 0.05 to 0.9: by
    # Picard iteration they finish at many different iterations. (The active set is the
    # driver's, the same for every method; the batched-equals-alone tests check that
    # each method's state is compacted with it.)
    batch = 16
    s = backend.from_numpy(np.linspace(0.05, 0.9, batch)[:, None])
    rows = []

    def f(x, s):
        rows.append(int(x.shape[0]))
        return s * x + 1.0

    res = problems.solve_rows(f, s, xp=xp, rtol=1e-10, maxiter=500)
    assert res.success
    nfev = _to_np(backend, res.nfev)
    # Every system costs at most MAX_DEFERRAL evaluations beyond its own count.
    assert sum(rows) <= nfev.sum() + MAX_DEFERRAL * batch
    # ... and the batch really shrinks: the last calls see only the slowest systems.
    assert rows[0] == batch and rows[-1] < batch // 2
    # Results are those of each system alone (closed form 1 / (1 - s)).
    x = _to_np(backend, res.x)[:, 0]
    np.testing.assert_allclose(x, 1.0 / (1.0 - np.linspace(0.05, 0.9, batch)), rtol=1e-8)


def test_a_diverging_system_leaves_at_once(backend, xp):
    scale = backend.from_numpy(np.array([[0.9], [0.9], [3.0], [0.9]]))
    rows = []

    def f(x, s):
        rows.append(int(x.shape[0]))
        return s * x + 1.0

    res = problems.solve_rows(f, scale, xp=xp, rtol=1e-12, maxiter=400)
    assert res.stats["statuses"][2] == Status.DIVERGED
    k = int(_to_np(backend, res.nit)[2])  # iteration at which system 2 was stopped
    # Call k + 1 (iteration k's evaluation is call k; call 0 is the start) and later see
    # the three others only.
    assert rows[: k + 1] == [4] * (k + 1)
    assert set(rows[k + 1 :]) == {3}


def test_callback_sees_finished_systems_frozen(backend, xp):
    batch = 4
    s = backend.from_numpy(np.array([[0.1], [0.2], [0.8], [0.9]]))
    seen = []
    res = problems.solve_rows(
        lambda x, s: s * x + 1.0,
        s,
        xp=xp,
        rtol=1e-10,
        maxiter=500,
        callback=lambda x, r: seen.append(_to_np(backend, x)[:, 0].copy()),
    )
    nit = _to_np(backend, res.nit).astype(int)
    final = _to_np(backend, res.x)[:, 0]
    for i in range(batch):
        # From the iteration a system finished on, the callback shows its final value.
        for x in seen[nit[i] - 1 :]:
            assert x[i] == final[i]


@settings(deadline=None)
@given(seed=st.integers(0, 2**31 - 1), maxiter=st.integers(1, 12))
def test_the_best_iterate_is_returned_per_system(backend, xp, seed, maxiter):
    # Broyden on an expansive map: per-system residuals rise and fall, and no system
    # converges within `maxiter`. Each system's result must be its own iterate of
    # smallest residual (iteration 0, the starting point, included), recorded
    # independently through the callback and the residual history.
    rng = np.random.default_rng(seed)
    n, batch = 8, 6
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.linspace(-2.5, 0.9, n)) @ Q.T
    c = 2.0 * rng.standard_normal((batch, n))
    A_x, c_x = backend.from_numpy(A), backend.from_numpy(c)
    x0 = rng.standard_normal((batch, n))
    seen = [x0]
    res = fixed_point(
        lambda z, c: xp.tanh(z @ A_x + c),
        backend.from_numpy(x0),
        (c_x,),
        method="broyden",
        rtol=1e-14,
        maxiter=maxiter,
        batch_axis=0,
        arg_batch_axes=0,
        callback=lambda x, r: seen.append(_to_np(backend, x).copy()),
    )
    history = _to_np(backend, res.history)  # (iterations + 1, batch)
    x = _to_np(backend, res.x)
    statuses = res.stats["statuses"]
    for i in range(batch):
        if statuses[i] == Status.SUCCESS:
            continue
        k = int(np.argmin(history[:, i]))
        np.testing.assert_array_equal(x[i], seen[k][i])
        assert float(_to_np(backend, res.residual)[i]) == history[k, i]


def test_without_arg_batch_axes_the_solve_ends_when_every_system_has(backend, xp):
    # Without `arg_batch_axes` finished systems are frozen, not removed; once the last
    # one has finished the solve must end (not run on to `maxiter`).
    s = backend.from_numpy(np.linspace(0.1, 0.8, 5)[:, None])
    calls = []

    def f(x):
        calls.append(1)
        return s * x + 1.0

    res = fixed_point(f, xp.zeros((5, 1), dtype=xp.float64), rtol=1e-10, maxiter=500, batch_axis=0)
    assert res.success
    nfev = _to_np(backend, res.nfev)
    assert len(calls) == res.stats["ncalls"] == int(nfev.max())
    assert res.stats["iterations"] == int(_to_np(backend, res.nit).max())
