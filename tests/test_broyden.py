"""The limited-memory Broyden solver step by step against a dense NumPy reference.

The reference keeps the inverse Jacobian estimate ``H`` as a dense matrix per system and
applies the textbook good Broyden update; `Broyden` stores only its directions. Both
follow the same conventions (first model ``-beta I``, restart every `m` steps, per-system
reset on a rejected trial, lazy backtracking), so their iterates agree to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nonlinear_systems import _linear_tables, dense_linear

import implicitnet as inet
from implicitnet import backends
from implicitnet.solvers import Broyden, fixed_point
from implicitnet.testing import assert_close

# Per dtype: agreement of iterates with the float64 reference (relative to their size).
AGREE = {"float32": 1e-4, "float64": 1e-10}
# Residual below which the reference counts as converged (iterates then are noise).
LIVE = {"float32": 1e-3, "float64": 1e-8}
DTYPES = ["float32", "float64"]


def to_np(x):
    return backends.backend_of(x).to_numpy(x).astype(np.float64)


def reference_broyden(gfun, x0, *, m, beta, steps, line_search, safeguard):
    """Iterates of dense good Broyden on one system (float64), and its event counts.

    ``gfun`` maps an ``(n,)`` array to the residual. Conventions of `Broyden`: a trial is
    accepted by the line search test (or the safeguard test); steps ``0, m, 2m, ...``
    restart from ``H = -beta I`` with the plain step; a rejected trial halves the step
    (line search) or resets ``H`` and takes the plain step from the anchor.
    """
    n = x0.size
    eye = np.eye(n)
    x = x0.copy()
    gx = gfun(x)
    x_a, g_a, r_a = x, gx, np.linalg.norm(gx)
    H = -beta * eye
    d = None
    t = 1.0
    xs = []
    events = {"rejected": 0, "updates": 0}
    for s in range(steps):
        r = np.linalg.norm(gx)
        if s == 0:
            accept = True
        elif line_search:
            accept = r <= (1.0 - 1e-4 * t) * r_a or t < 2.0 / 64
        else:
            accept = r <= safeguard * r_a
        events["rejected"] += not accept
        if accept and s % m:
            sv, y = x - x_a, gx - g_a
            Hy = H @ y
            den = sv @ Hy
            # skipped when d . (z + d) < 1e-3 (d . d + |d . z|), z = H g
            dz = d @ (H @ gx)
            if abs(d @ d + dz) > 1e-3 * (d @ d + abs(dz)):
                H = H + np.outer(sv - Hy, sv @ H) / den
                events["updates"] += 1
        if accept:
            x_a, g_a, r_a = x, gx, r
        if s % m == 0 or not (accept or line_search):
            H = -beta * eye
            d, t = -H @ g_a, 1.0
        elif accept:
            d, t = -H @ g_a, 1.0
        else:
            t = 0.5 * t
        x = x_a + t * d
        gx = gfun(x)
        xs.append(x)
    return np.stack(xs), events


def tanh_problem(rng, batch, n, lo, hi):
    """Per system ``g(x) = tanh(W_i x + b_i) - x`` with eigenvalues of W_i in [lo, hi]."""
    Ws = []
    for _ in range(batch):
        Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        Ws.append((Q * rng.uniform(lo, hi, n)) @ Q.T)
    W = np.stack(Ws)
    b = 0.3 * rng.standard_normal((batch, n))
    return W, b


def run_steps(solver, W, b, *, xp, dtype, steps):
    """Drive `solver` by hand: init + `steps` steps on the batch; iterates (steps, batch, n)."""
    W_x = xp.asarray(W, dtype=getattr(xp, dtype))
    b_x = xp.asarray(b, dtype=getattr(xp, dtype))

    def g(x):
        return xp.tanh(xp.matmul(W_x, x[:, :, None])[:, :, 0] + b_x) - x

    x = xp.zeros(b_x.shape, dtype=getattr(xp, dtype))
    gx = g(x)
    state = solver.init(g, x, gx, xp=xp)
    xs = []
    for _ in range(steps):
        st_ = solver.step(g, x, gx, state, xp=xp)
        x, gx, state = st_.x, st_.fx, st_.state
        assert x.dtype == getattr(xp, dtype)
        xs.append(to_np(x))
    return np.stack(xs)


CASES = [
    {"m": 4},
    {"m": 3, "beta": 0.5},
    {"m": 4, "safeguard": 1.05},  # frequent rejections: per-system resets
    {"m": 5, "line_search": True},
]
CASE_IDS = ["plain", "beta", "resets", "line-search"]


def compare_with_reference(W, b, options, *, xp, dtype, steps=11):
    """Max relative deviation from the reference over the live steps; reference events."""
    solver = Broyden(**options)
    got = run_steps(solver, W, b, xp=xp, dtype=dtype, steps=steps)
    worst = 0.0
    events = {"rejected": 0, "updates": 0}
    m, safeguard = solver.settings("fixed_point")  # defaults resolved for the kind
    for i in range(W.shape[0]):

        def gfun(x, i=i):
            return np.tanh(W[i] @ x + b[i]) - x

        want, ev = reference_broyden(
            gfun,
            np.zeros(W.shape[1]),
            m=m,
            # A fixed-point problem: the automatic `beta` (None) is 1.
            beta=1.0 if solver.beta is None else solver.beta,
            steps=steps,
            line_search=solver.line_search,
            safeguard=safeguard,
        )
        for key in events:
            events[key] += ev[key]
        # Compare until the reference has converged (later both iterate on round-off).
        r_ref = np.array([np.linalg.norm(gfun(w)) for w in want])
        done = np.nonzero(r_ref <= LIVE[dtype])[0]
        upto = int(done[0]) + 1 if done.size else steps
        err = np.abs(got[:upto, i] - want[:upto]) / (1.0 + np.max(np.abs(want)))
        worst = max(worst, float(np.max(err)))
    return worst, events


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", CASES, ids=CASE_IDS)
@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 6))
def test_steps_match_dense_good_broyden(xp, dtype, options, seed, n):
    W, b = tanh_problem(np.random.default_rng(seed), 3, n, -1.6, 0.8)  # Picard diverges
    worst, _ = compare_with_reference(W, b, options, xp=xp, dtype=dtype)
    assert worst <= AGREE[dtype]


# A few rejections among many accepted steps: after one, later steps in which every
# system accepts still have to honour the reset system's memory.
RARE_RESETS = {"m": 6, "safeguard": 1.5}


@pytest.mark.parametrize("options", [*CASES[2:], RARE_RESETS], ids=[*CASE_IDS[2:], "rare-resets"])
def test_rejections_and_resets_are_exercised(xp, options):
    # Fixed problems on which the reference rejects trials in some systems but not all
    # (so slots are shared by systems in different states) and still updates; with
    # m=4 some rejections fall on a memory restart.
    W, b = tanh_problem(np.random.default_rng(1), 6, 5, -1.6, 0.8)
    worst, events = compare_with_reference(W, b, options, xp=xp, dtype="float64", steps=20)
    assert worst <= AGREE["float64"]
    assert events["rejected"] >= 3
    assert events["updates"] >= 20


# --- through the driver ---------------------------------------------------------------


def _cell(z, W, b):
    ns = inet.namespace(z, W, b)
    return ns.tanh(z @ ns.matrix_transpose(W) + b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_sample_batch_equals_each_system_alone(xp, dtype):
    # m=3: memory restarts every 3 steps while finished systems leave the batch, and
    # eigenvalues down to -1.5 (Picard diverges) make the safeguard matter.
    rng = np.random.default_rng(2)
    n, batch = 8, 5
    W, _ = tanh_problem(rng, 1, n, -1.5, 0.8)
    b = 0.3 * rng.standard_normal((batch, n))
    dt = getattr(xp, dtype)
    W_x, b_x = xp.asarray(W[0], dtype=dt), xp.asarray(b, dtype=dt)
    tol = {"float32": 1e-5, "float64": 1e-11}[dtype]
    kw = {"method": "broyden", "m": 3, "rtol": tol, "maxiter": 300}
    z0 = xp.zeros(b_x.shape, dtype=dt)
    res = fixed_point(_cell, z0, (W_x, b_x), batch_axis=0, arg_batch_axes=(None, 0), **kw)
    assert res.success
    assert res.x.dtype == dt
    for i in range(batch):
        one = fixed_point(_cell, z0[i, :], (W_x, b_x[i, :]), **kw)
        assert one.success
        assert int(res.nit[i]) == one.nit
        err = np.max(np.abs(to_np(res.x[i, :]) - to_np(one.x)))
        assert err <= {"float32": 1e-4, "float64": 1e-9}[dtype]
        # and the fixed point itself, checked independently of the solver
        z = to_np(one.x)
        assert np.linalg.norm(np.tanh(W[0] @ z + b[i]) - z) <= 2 * tol * np.linalg.norm(z)


def test_unrolled_gradient_through_broyden_matches_implicit(xp, backend):
    # Broyden runs on autodiff tensors (out-of-place slot writes): backprop through its
    # iterations, to convergence, gives the implicit-function-theorem gradient.
    rng = np.random.default_rng(4)
    n, batch = 5, 3
    W0, _ = tanh_problem(rng, 1, n, -0.9, 0.7)
    W = backend.from_numpy(W0[0])
    b = backend.from_numpy(0.3 * rng.standard_normal((batch, n)))

    def loss(W, b, backward):
        ns = inet.namespace(W, b)
        res = inet.fixed_point(
            _cell,
            ns.zeros(b.shape, dtype=b.dtype),
            (W, b),
            method="broyden",
            m=4,
            rtol=1e-13,
            maxiter=200,
            batch_axis=0,
            backward=backward,
        )
        return ns.sum(res.x * res.x)

    implicit = inet.grad(lambda W, b: loss(W, b, "implicit"), argnums=(0, 1))(W, b)
    unrolled = inet.grad(lambda W, b: loss(W, b, "unrolled"), argnums=(0, 1))(W, b)
    for g, h in zip(unrolled, implicit):
        assert_close(g, h, rtol=1e-7, atol=1e-10, xp=xp)


# --- root problems at default settings (issue 13) ---------------------------------------

#: Root tolerance per dtype (relative to ||F(x0)||) for the default-settings tests.
ROOT_RTOL = {"float32": 1e-4, "float64": 1e-10}


def test_root_defaults_follow_the_problem_kind():
    b = Broyden()
    assert b.settings("fixed_point") == (10, 10.0)
    assert b.settings("root") == (100, float("inf"))
    assert b.stopping_rules("fixed_point") == (150, 1e4)
    assert b.stopping_rules("root") == (300, 1e8)
    given_ = Broyden(m=7, safeguard=3.0, stagnation_window=20, divergence_factor=50.0)
    assert given_.settings("root") == (7, 3.0)
    assert given_.stopping_rules("root") == (20, 50.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_good_broyden_finishes_a_non_monotone_linear_solve(xp, dtype):
    # SciPy's TestLinear system (dense random 20 x 20): good Broyden's residual rises by
    # about 1e5 before it falls, and the solve finishes in about 2 n steps when nothing
    # restarts it. A memory restart at m=10, a reset on a 10x rise or a divergence
    # stop at 1e4 ended this run before.
    _assert_broyden_solves(dense_linear, *_linear_tables(), xp=xp, dtype=dtype)


def _assert_broyden_solves(F, A, b, *, xp, dtype):
    """Broyden from zero solves the linear system ``F(x) = 0``, the solution of ``A x = b``."""
    x0 = xp.zeros((b.shape[0],), dtype=getattr(xp, dtype))
    res = inet.solvers.root(F, x0, method="broyden", rtol=ROOT_RTOL[dtype])
    assert res.success, res.status
    want = np.linalg.solve(A, b)
    err = np.max(np.abs(to_np(res.x) - want)) / np.max(np.abs(want))
    assert err <= (1e-2 if dtype == "float32" else 1e-7)


def _rotation_system(x):
    # A x - c with A block-diagonal 2 x 2 blocks [[0.02, 1], [-1, 0.02]]: F0 . J F0 > 0
    # but the cosine between F0 and J F0 is 0.02.
    ns = inet.namespace(x)
    pairs = ns.reshape(x, (-1, 2))
    y = ns.stack([0.02 * pairs[:, 0] + pairs[:, 1], -pairs[:, 0] + 0.02 * pairs[:, 1]], axis=1)
    c = ns.linspace(-1.0, 1.0, x.shape[0], dtype=x.dtype)
    return ns.reshape(y, (-1,)) - c


@pytest.mark.parametrize("dtype", DTYPES)
def test_nearly_orthogonal_uphill_start_keeps_scipys_step(xp, dtype):
    # The automatic beta used to switch to the linearised-optimal step (here ~0.02, a
    # tenth of SciPy's) whenever F0 . J F0 > 0; the inverse-Jacobian guess stayed that
    # small through every memory restart and Broyden hit `maxiter`.
    A = np.kron(np.eye(5), np.array([[0.02, 1.0], [-1.0, 0.02]]))
    _assert_broyden_solves(_rotation_system, A, np.linspace(-1.0, 1.0, 10), xp=xp, dtype=dtype)
