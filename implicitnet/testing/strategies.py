"""Hypothesis strategies for solver test problems with known answers.

Every strategy takes the array namespace `xp` and a dtype name, draws its data as NumPy
arrays on the host (so one seed gives the same problem on every backend), computes the
answer in float64 with NumPy, and converts everything with ``xp.asarray``. Each draws a
:class:`SolverProblem`; solve it with::

    res = implicitnet.solvers.fixed_point(p.f, p.x0, p.args, batch_axis=p.batch_axis,
                                          arg_batch_axes=p.arg_batch_axes)
    # (root problems: implicitnet.solvers.root)

and compare ``res.x`` with ``p.solution``. The strategies are public: use them to test
your own solver.

Examples
--------
>>> import numpy as np
>>> from hypothesis import given, settings
>>> import implicitnet as inet
>>> from implicitnet.testing.strategies import contractive_affine_maps
>>> @settings(max_examples=5, deadline=None)
... @given(contractive_affine_maps(np, max_n=6, max_rho=0.5))
... def test(p):
...     res = inet.solvers.fixed_point(p.f, p.x0, p.args, rtol=1e-10)
...     assert np.allclose(res.x, p.solution, atol=1e-7)
>>> test()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from hypothesis import strategies as st

from .. import backends
from .._xp import namespace

# Host arrays: NumPy through its backend (only ``backends/`` imports NumPy itself).
_host = backends.get_backend("numpy")
np = _host.namespace()

__all__ = [
    "FailingProblem",
    "SolverProblem",
    "contractive_affine_maps",
    "contractive_tanh_maps",
    "expansive_affine_maps",
    "maps_without_fixed_points",
    "planted_root_problems",
    "poisoned_maps",
]


class SolverProblem(NamedTuple):
    """A drawn problem: call ``f(x0, *args)``; `solution` is the known answer.

    Attributes
    ----------
    kind : {"fixed_point", "root"}
        Solve with :func:`implicitnet.solvers.fixed_point` or ``root``.
    f : callable
        ``f(x, *args)``, written with :func:`implicitnet.namespace` (so it also runs
        on autodiff tensors).
    x0 : array
        Starting point (zeros), shape ``(n,)`` or ``(batch, n)``.
    args : tuple
        The arrays the function needs.
    solution : array
        The answer, in `x0`'s namespace and dtype.
    batch_axis, arg_batch_axes
        Pass through to the solve (None for an unbatched problem).
    rho : float
        The contraction factor (fixed-point problems) or 0.
    """

    kind: str
    f: Callable
    x0: Any
    args: tuple
    solution: Any
    batch_axis: int | None
    arg_batch_axes: tuple | None
    rho: float


def _dtype(xp, dtype):
    return getattr(xp, dtype) if isinstance(dtype, str) else dtype


def _seeds():
    return st.integers(min_value=0, max_value=2**32 - 1)


def _batch_sizes(batch):
    if batch is None or isinstance(batch, int):
        return st.just(batch)
    return batch


class _Rng:
    """Successive host draws from one seed (each draw gets its own derived seed)."""

    def __init__(self, seed):
        self.seed = seed
        self.k = 0

    def _next(self):
        self.k += 1
        return (self.seed * 7919 + self.k) % 2**32

    def standard_normal(self, shape):
        return _host.random_normal(shape, self._next(), dtype="float64")

    def uniform(self, low, high, size):
        return _host.random_uniform(size, self._next(), low=low, high=high, dtype="float64")


def _matrix_with_norm(rng, n, rho):
    """A random n x n matrix with spectral norm exactly `rho`."""
    A = rng.standard_normal((n, n))
    norm = float(np.linalg.matrix_norm(A, ord=2))
    return A * (rho / norm) if norm > 0 else A


def _solve(A, c):
    """Rows of ``(I - A)^{-1} c`` (``c``: (n,) or (batch, n))."""
    n = A.shape[0]
    M = np.eye(n, dtype=np.float64) - A
    return np.matrix_transpose(np.linalg.solve(M, np.reshape(c, (-1, n)).T)).reshape(c.shape)


def _contraction(draw, n_range, rho_range, batch, *, c_bound):
    """Draw ``(rho, batch size, A, c)``: ``||A||_2 = rho``, `c` uniform in ``+-c_bound``.

    `c` has shape ``(n,)``, or ``(b, n)`` when a batch size `b` is drawn.
    """
    n = draw(st.integers(*n_range))
    rho = draw(st.floats(*rho_range, allow_nan=False, allow_subnormal=False))
    b = draw(_batch_sizes(batch))
    rng = _Rng(draw(_seeds()))
    A = _matrix_with_norm(rng, n, rho)
    c = rng.uniform(-c_bound, c_bound, size=(n,) if b is None else (b, n))
    return rho, b, A, c


def _pack(xp, dtype, kind, f, x0, args, solution, batch, arg_axes, rho):
    dt = _dtype(xp, dtype)
    conv = tuple(xp.asarray(a, dtype=dt) for a in args)
    return SolverProblem(
        kind=kind,
        f=f,
        x0=xp.asarray(x0, dtype=dt),
        args=conv,
        solution=xp.asarray(solution, dtype=dt),
        batch_axis=None if batch is None else 0,
        arg_batch_axes=None if batch is None else arg_axes,
        rho=rho,
    )


def _affine(z, A, c):
    # z = z A^T + c, acting on the last axis (unbatched z: (n,), batched: (batch, n))
    xp = namespace(z, A, c)
    return xp.matmul(z, xp.matrix_transpose(A)) + c


@st.composite
def contractive_affine_maps(
    draw, xp, *, dtype="float64", min_n=1, max_n=16, min_rho=0.0, max_rho=0.9, batch=None
):
    """Affine maps ``z -> A z + c`` with ``||A||_2 = rho`` in ``[min_rho, max_rho]``.

    The answer ``(I - A)^{-1} c`` is computed with ``numpy.linalg.solve``. With
    `batch` (an int or a strategy of ints), ``c`` has one row per system and the
    problem is batched along axis 0 (``arg_batch_axes=(None, 0)``).
    """
    rho, b, A, c = _contraction(draw, (min_n, max_n), (min_rho, max_rho), batch, c_bound=1.0)
    x0 = np.zeros_like(c)
    return _pack(xp, dtype, "fixed_point", _affine, x0, (A, c), _solve(A, c), b, (None, 0), rho)


@st.composite
def expansive_affine_maps(
    draw, xp, *, dtype="float64", min_n=2, max_n=6, min_norm=1.2, max_norm=2.0, batch=None
):
    """Affine maps with spectral norm (and radius) above 1 but a well-posed fixed point.

    ``A = Q diag(lam) Q^T`` with eigenvalues ``lam`` in ``[-max_norm, 0.5]``, at
    least one below ``-min_norm``: Picard's iteration diverges, while ``I - A`` is
    well conditioned (eigenvalues in ``[0.5, 1 + max_norm]``), so the fixed point is
    stable for the flow ``dz/dt = A z + c - z``. Keep `n` small: accelerated methods
    need memory comparable to `n` on such maps.
    """
    n = draw(st.integers(min_n, max_n))
    top = draw(st.floats(min_norm, max_norm, allow_nan=False, allow_subnormal=False))
    b = draw(_batch_sizes(batch))
    rng = _Rng(draw(_seeds()))
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = rng.uniform(-top, 0.5, size=(n,))
    lam = np.where(np.arange(n) == 0, -top, lam)
    A = (Q * lam) @ Q.T
    c = rng.uniform(-1.0, 1.0, size=(n,) if b is None else (b, n))
    sol = _solve(A, c)
    x0 = np.zeros_like(c)
    return _pack(xp, dtype, "fixed_point", _affine, x0, (A, c), sol, b, (None, 0), top)


def _tanh_cell(z, W, c):
    xp = namespace(z, W, c)
    return xp.tanh(xp.matmul(z, xp.matrix_transpose(W)) + c)


@st.composite
def contractive_tanh_maps(
    draw, xp, *, dtype="float64", min_n=1, max_n=16, min_rho=0.0, max_rho=0.9, batch=None
):
    """Nonlinear contractions ``z -> tanh(W z + c)`` with ``||W||_2 = rho < 1``.

    tanh is 1-Lipschitz, so the map contracts with factor `rho` and has one fixed
    point, computed in float64 by Picard's iteration run until its a-posteriori error
    bound ``rho^k ||z_1 - z_0|| / (1 - rho)`` is below ``1e-14``.
    """
    rho, b, W, c = _contraction(draw, (min_n, max_n), (min_rho, max_rho), batch, c_bound=1.5)
    z = np.zeros_like(c)
    for _ in range(100_000):
        z_new = np.tanh(z @ W.T + c)
        step = float(np.max(np.abs(z_new - z)))
        z = z_new
        if step * rho / max(1.0 - rho, 1e-12) < 1e-14 or step == 0.0:
            break
    x0 = np.zeros_like(c)
    return _pack(xp, dtype, "fixed_point", _tanh_cell, x0, (W, c), z, b, (None, 0), rho)


def _planted(x, D, W, x_star):
    # F(x) = -D (x - x*) + W tanh(x - x*): zero exactly at x = x*
    xp = namespace(x, D, W, x_star)
    e = x - x_star
    return -D * e + xp.matmul(xp.tanh(e), xp.matrix_transpose(W))


@st.composite
def planted_root_problems(draw, xp, *, dtype="float64", min_n=1, max_n=12, batch=None):
    """Root problems ``F(x) = -D (x - x*) + W tanh(x - x*)`` with the root `x*` planted.

    ``D`` is diagonal in ``[0.5, 2]`` and ``||W||_2 <= 0.25``, so ``x*`` is the only
    root (``||D e|| >= 0.5 ||e|| > ||W tanh(e)||`` for ``e != 0``) and the Jacobian is
    well conditioned; ``x*`` is drawn in ``[-2, 2]`` and the start is zero. Picard's
    iteration ``x + F(x)`` need not converge (``D`` up to 2); use damping 0.5 or more.
    """
    n = draw(st.integers(min_n, max_n))
    b = draw(_batch_sizes(batch))
    rng = _Rng(draw(_seeds()))
    D = rng.uniform(0.5, 2.0, size=(n,))
    W = _matrix_with_norm(rng, n, float(rng.uniform(0.0, 0.25, size=(1,))[0]))
    x_star = rng.uniform(-2.0, 2.0, size=(n,) if b is None else (b, n))
    x0 = np.zeros_like(x_star)
    return _pack(xp, dtype, "root", _planted, x0, (D, W, x_star), x_star, b, (None, None, 0), 0.0)


class FailingProblem(NamedTuple):
    """A drawn problem on which a solve must not report success (for some systems).

    Attributes
    ----------
    kind, f, x0, args, batch_axis, arg_batch_axes
        As in :class:`SolverProblem`, except that `x0` need not be zero, each of `args`
        is shaped like `x0`, and `f` may keep state (:func:`poisoned_maps` counts its
        calls).
    residual_floor : tuple of float
        Per system, a lower bound of the residual norm (``||f(x) - x||``, or ``||F(x)||``
        for a root problem) over every finite `x` at which `f` returns finite values;
        0.0 for a system that may converge. One entry when unbatched.
    scale0 : tuple of float
        Per system, the starting scale of the relative test (``max(||f(x0)||,
        ||f(x0) - x0||)``, or ``||F(x0)||``), in float64. No relative test with
        ``atol + rtol * 100 * scale0 < residual_floor`` can pass on that system.
    residual0 : tuple of float
        Per system, the residual norm at `x0`, in float64.
    description : str
        Which family was drawn (for failure messages).
    """

    kind: str
    f: Callable
    x0: Any
    args: tuple
    batch_axis: int | None
    arg_batch_axes: tuple | None
    residual_floor: tuple
    scale0: tuple
    residual0: tuple
    description: str


def _no_fixed_point(z, a, c, e):
    # Elementwise, with per-element family weights: e = 1 -> exp(z), e = 0 ->
    # z + a sin(z) + c (|a| < |c|: a shift when a = 0); never z itself.
    xp = namespace(z, a, c, e)
    return xp.where(e > 0.5, xp.exp(z), z + a * xp.sin(z) + c)


def _no_root(z, a, c, e):
    # The residual of `_no_fixed_point` written without the cancellation z - z.
    xp = namespace(z, a, c, e)
    return xp.where(e > 0.5, xp.exp(z) - z, a * xp.sin(z) + c)


@st.composite
def maps_without_fixed_points(
    draw, xp, *, dtype="float64", kind="fixed_point", min_n=1, max_n=8, batch=None
):
    """Maps with no fixed point (or, with ``kind="root"``, functions with no root).

    Each system is one family, drawn per system: a shift ``z + c``; ``z + a sin(z) +
    c`` with ``|a| <= |c| / 2`` (the issue's ``z + 0.1 sin z + 1``); exponential growth
    ``exp(z)`` (``exp(z) - z >= 1``, and it overflows for large ``z``). ``|c|`` is in
    ``[0.5, 2]`` and `x0` in ``[-1, 1]``, so that ``residual_floor >= scale0 / 8``:
    with ``atol = 0`` no test with ``rtol < 1e-3`` can pass (see
    :class:`FailingProblem`). Iterates run away: the solver must report ``"diverged"``,
    ``"stagnated"`` or ``"maxiter"``, never success.
    """
    if kind not in ("fixed_point", "root"):
        msg = f"`kind` must be 'fixed_point' or 'root', got {kind!r}"
        raise ValueError(msg)
    n = draw(st.integers(min_n, max_n))
    b = draw(_batch_sizes(batch))
    rows = 1 if b is None else b
    families = draw(
        st.lists(st.sampled_from(["shift", "sine", "exp"]), min_size=rows, max_size=rows)
    )
    rng = _Rng(draw(_seeds()))
    shape = (rows, n)
    sign = np.where(rng.uniform(-1.0, 1.0, size=shape) < 0.0, -1.0, 1.0)
    c = sign * rng.uniform(0.5, 2.0, size=shape)
    a = rng.uniform(-0.5, 0.5, size=shape) * np.abs(c)
    is_sine = np.asarray([[float(k == "sine")] for k in families])
    e = np.broadcast_to(np.asarray([[float(k == "exp")] for k in families]), shape)
    a = a * is_sine
    x0 = rng.uniform(-1.0, 1.0, size=shape)
    # Residual floors: |c| - |a| per element for shift/sine, 1 for exp (exp(z) - z >= 1).
    floor_el = np.where(e > 0.5, 1.0, np.abs(c) - np.abs(a))
    fx0 = np.where(e > 0.5, np.exp(x0), x0 + a * np.sin(x0) + c)
    g0 = fx0 - x0
    floor = np.linalg.vector_norm(floor_el, axis=-1)
    if kind == "fixed_point":
        scale0 = np.maximum(np.linalg.vector_norm(fx0, axis=-1), np.linalg.vector_norm(g0, axis=-1))
        f = _no_fixed_point
    else:
        scale0 = np.linalg.vector_norm(g0, axis=-1)
        f = _no_root
    if b is None:
        a, c, e, x0 = a[0], c[0], e[0], x0[0]
    dt = _dtype(xp, dtype)
    return FailingProblem(
        kind=kind,
        f=f,
        x0=xp.asarray(x0, dtype=dt),
        args=tuple(xp.asarray(v, dtype=dt) for v in (a, c, e)),
        batch_axis=None if b is None else 0,
        arg_batch_axes=None if b is None else (0, 0, 0),
        residual_floor=tuple(float(v) for v in floor),
        scale0=tuple(float(v) for v in scale0),
        residual0=tuple(float(v) for v in np.linalg.vector_norm(g0, axis=-1)),
        description=f"{kind}: {', '.join(families)}",
    )


@st.composite
def poisoned_maps(draw, xp, *, dtype="float64", min_n=1, max_n=8, batch=None):
    """Maps whose value turns non-finite (or overflows) from a random call on.

    A random non-empty subset of the systems (all of it when unbatched) is *poisoned*:
    its map is a shift ``z + c`` (no fixed point) until call ``k`` of `f` (``k`` drawn
    in ``[2, 8]``; the first call, at `x0`, is always finite), after which some of its
    elements return one of ``inf``, ``-inf``, NaN or the largest finite number of the
    dtype (whose square overflows the norm). The other systems are contractions
    ``a tanh(z) + c`` (``|a| <= 0.9``) and may converge. `f` counts its calls: draw a
    fresh problem for every solve. A poisoned system must never be reported converged.
    """
    n = draw(st.integers(min_n, max_n))
    b = draw(_batch_sizes(batch))
    rows = 1 if b is None else b
    poisoned = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
    if not any(poisoned):
        poisoned[draw(st.integers(0, rows - 1))] = True
    k = draw(st.integers(2, 8))
    value = draw(st.sampled_from(["inf", "-inf", "nan", "max"]))
    rng = _Rng(draw(_seeds()))
    shape = (rows, n)
    rows_p = np.reshape(np.asarray(poisoned, dtype=np.float64), (rows, 1))
    c = rng.uniform(-2.0, 2.0, size=shape)
    c = np.where(np.abs(c) < 0.5, 0.5, c)
    a = rng.uniform(-0.9, 0.9, size=shape)
    # Elements that turn bad: at least one per poisoned row.
    first = np.asarray([1.0] + [0.0] * (n - 1))
    bad = np.where(rng.uniform(0.0, 1.0, size=shape) < 0.5, 1.0, first) * rows_p
    x0 = rng.uniform(-1.0, 1.0, size=shape)
    floor = np.where(rows_p[:, 0] > 0.5, np.linalg.vector_norm(c, axis=-1), 0.0)
    fx0 = np.where(rows_p > 0.5, x0 + c, a * np.tanh(x0) + c)
    scale0 = np.maximum(
        np.linalg.vector_norm(fx0, axis=-1), np.linalg.vector_norm(fx0 - x0, axis=-1)
    )
    calls = [0]

    def f(z, a, c, shift, bad):
        xp_ = namespace(z, a, c, shift, bad)
        calls[0] += 1
        out = xp_.where(shift > 0.5, z + c, a * xp_.tanh(z) + c)
        if calls[0] >= k:
            v = float(xp_.finfo(z.dtype).max) if value == "max" else float(value)
            out = xp_.where(bad > 0.5, xp_.full_like(z, v), out)
        return out

    shift = np.broadcast_to(rows_p, shape)
    arrays = (a, c, shift, bad, x0)
    if b is None:
        arrays = tuple(v[0] for v in arrays)
    dt = _dtype(xp, dtype)
    conv = tuple(xp.asarray(v, dtype=dt) for v in arrays)
    return FailingProblem(
        kind="fixed_point",
        f=f,
        x0=conv[4],
        args=conv[:4],
        batch_axis=None if b is None else 0,
        arg_batch_axes=None if b is None else (0, 0, 0, 0),
        residual_floor=tuple(float(v) for v in floor),
        scale0=tuple(float(v) for v in scale0),
        residual0=tuple(float(v) for v in np.linalg.vector_norm(fx0 - x0, axis=-1)),
        description=f"poisoned {poisoned} from call {k} with {value}",
    )
