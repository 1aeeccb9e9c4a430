"""Matrix-free linear solvers: implicitnet vs SciPy, side by side.

Run ``python benchmarks/linalg.py`` (about two minutes on a laptop CPU). Prints:

(a) one system, n in {1000, 4000}, given as a dense matrix and as a callable:
    ``implicitnet.linalg.gmres`` vs ``scipy.sparse.linalg.gmres`` with the same restart
    and tolerance: inner iterations, products with A, relative residual, median time;
(b) 64 independent systems of 512 unknowns, the shape of a DEQ adjoint
    ``u - (u * d_i) @ W = g_i`` (a shared weight matrix, a per-sample diagonal):
    implicitnet batched vs a Python loop over SciPy GMRES, and the same with one dense
    matrix per system;
(c) every implicitnet solver on the batched DEQ adjoint.

BLAS runs single-threaded by default (``--threads``), on both sides alike: timings on
a shared machine are then stable, and neither side gains from threads the other lacks.

Tolerances: SciPy stops at ``max(atol, rtol ||b||)`` and counts `maxiter` in restart
cycles; implicitnet stops at ``atol + rtol ||b||`` and counts inner iterations. With
``atol=0`` the tests are the same; both are given enough iterations to converge.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
import scipy.sparse.linalg as spla

import implicitnet as inet

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from problems import scipy_gmres


def _median_times(funs, repeats):
    """Median time of each function, the runs interleaved (fair under varying load)."""
    times = [[] for _ in funs]
    outs = [None] * len(funs)
    for _ in range(repeats):
        for i, fun in enumerate(funs):
            t0 = time.perf_counter()
            outs[i] = fun()
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), out) for t, out in zip(times, outs)]


class _Counted:
    """A SciPy LinearOperator that counts its products."""

    def __init__(self, fun, n):
        self.count = 0

        def matvec(v):
            self.count += 1
            return fun(v)

        self.op = spla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)


def _one_system(A, b, kind, *, repeats, rtol, restart):
    n = A.shape[0]
    bn = np.linalg.norm(b)
    counted = _Counted(lambda v: A @ v, n)
    scipy_op = A if kind == "dense" else counted.op
    ours_op = A if kind == "dense" else (lambda v: A @ v)
    (t_s, (x, info, nit_s)), (t_i, res) = _median_times(
        [
            lambda: scipy_gmres(scipy_op, b, rtol=rtol, restart=restart),
            lambda: inet.linalg.gmres(ours_op, b, rtol=rtol, restart=restart, maxiter=10_000),
        ],
        repeats,
    )
    res_s = np.linalg.norm(A @ x - b) / bn
    cycles = -(-nit_s // restart)
    nmv_s = counted.count // repeats if kind == "callable" else nit_s + cycles
    res_i = np.linalg.norm(A @ res.x - b) / bn
    return [
        (f"n={n} {kind}", "scipy gmres", nit_s, nmv_s, res_s, t_s, info == 0),
        (f"n={n} {kind}", "implicitnet gmres", res.nit, res.nmatvec, res_i, t_i, res.success),
    ]


def single_systems(sizes, repeats, rtol, restart):
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        A = np.eye(n) + 0.7 * rng.standard_normal((n, n)) / np.sqrt(n)
        b = rng.standard_normal(n)
        for kind in ("dense", "callable"):
            rows += _one_system(A, b, kind, repeats=repeats, rtol=rtol, restart=restart)
    return rows


def deq_adjoint(batch=64, n=512, seed=0, rho=0.9):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W *= rho / np.linalg.norm(W, 2)
    d = 1.0 - np.tanh(rng.standard_normal((batch, n))) ** 2  # tanh' at the fixed point
    g = rng.standard_normal((batch, n))
    return W, d, g


def batched(repeats, rtol, restart, batch=64, n=512):
    W, d, g = deq_adjoint(batch, n)
    gn = np.linalg.norm(g, axis=1)

    def op_batched(U):  # (batch, n): u - (u * d) @ W for every row
        return U - (U * d) @ W

    def true_res(X):
        return np.max(np.linalg.norm(op_batched(X) - g, axis=1) / gn)

    def scipy_loop(make_op):
        xs, nits, infos = [], [], []
        for i in range(batch):
            x, info, nit = scipy_gmres(make_op(i), g[i], rtol=rtol, restart=restart)
            xs.append(x)
            nits.append(nit)
            infos.append(info)
        return np.stack(xs), nits, infos

    def vjp_op(i):
        di = d[i]
        return spla.LinearOperator((n, n), matvec=lambda u: u - (u * di) @ W, dtype=np.float64)

    def ours(op):
        return inet.linalg.gmres(op, g, rtol=rtol, restart=restart, batch_axis=0, maxiter=10_000)

    # One dense matrix per system: then the product itself is 64 matrix-vector products.
    mats = np.eye(n)[None] - np.transpose(d[:, :, None] * W[None], (0, 2, 1))
    rows, speedups = [], []
    for label, loop_op, batch_op in (
        ("64x512 vjp", vjp_op, op_batched),
        ("64x512 dense", lambda i: mats[i], mats),
    ):
        (t_s, (X, nits, infos)), (t_i, res) = _median_times(
            [lambda o=loop_op: scipy_loop(o), lambda o=batch_op: ours(o)], repeats
        )
        ok = all(i == 0 for i in infos)
        rows.append((label, "scipy gmres, loop", max(nits), sum(nits), true_res(X), t_s, ok))
        rows.append(
            (
                label,
                "implicitnet gmres, batched",
                int(res.nit.max()),
                int(res.nit.sum()),
                true_res(res.x),
                t_i,
                res.success,
            )
        )
        speedups.append(t_s / t_i)

    solvers = [
        ("bicgstab", inet.linalg.BiCGSTAB(rtol=rtol, maxiter=1000)),
        ("neumann", inet.linalg.Neumann(rtol=rtol, maxiter=1000)),
        ("broyden", inet.linalg.Broyden(rtol=rtol, maxiter=1000)),
        ("anderson", inet.linalg.Anderson(rtol=rtol, maxiter=1000)),
    ]
    timed = _median_times(
        [lambda s=solver: s.solve(op_batched, g, batch_axis=0) for _, solver in solvers],
        repeats,
    )
    others = [
        (
            "64x512 vjp",
            f"implicitnet {name}, batched",
            int(res.nit.max()),
            int(res.nfev.max()),
            true_res(res.x),
            t,
            res.success,
        )
        for (name, _), (t, res) in zip(solvers, timed)
    ]
    return rows, others, speedups[0], speedups[1]


def _table(title, rows, second="nmatvec"):
    print(f"\n{title}")
    head = f"{'problem':<16} {'solver':<29} {'nit':>5} {second:>8} {'rel. residual':>13} {'median ms':>10} {'ok':>3}"
    print(head)
    print("-" * len(head))
    for prob, solver, nit, nmv, rr, t, ok in rows:
        print(
            f"{prob:<16} {solver:<29} {nit:>5} {nmv:>8} {rr:>13.2e} {1e3 * t:>10.1f} {'yes' if ok else 'NO':>3}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="n=1000 only, 3 repeats")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads for both sides (default 1: stable timings; 0: library default)",
    )
    ns = parser.parse_args(argv)
    if ns.threads > 0:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=ns.threads):
            _run(ns)
    else:
        _run(ns)


def _run(ns):
    repeats = 3 if ns.quick else ns.repeats
    sizes = (1000,) if ns.quick else (1000, 4000)
    rtol, restart = 1e-8, 20

    rows = single_systems(sizes, repeats, rtol, restart)
    _table(f"(a) one system, GMRES({restart}), rtol={rtol:g}", rows)
    print("\nratio implicitnet / scipy time (aim <= 1.2):")
    for i in range(0, len(rows), 2):
        print(f"  {rows[i][0]:<16} {rows[i + 1][5] / rows[i][5]:.2f}")

    b_rtol = 1e-6
    brows, others, s_vjp, s_dense = batched(repeats, b_rtol, restart)
    _table(
        f"(b) 64 systems of 512, GMRES({restart}), rtol={b_rtol:g}  "
        "(nit: max over systems; total: sum)",
        brows,
        second="total",
    )
    print(
        f"\nspeedup batched vs loop (aim >= 5): vjp operator {s_vjp:.1f}x, "
        f"dense per-system matrices {s_dense:.1f}x"
    )
    _table(f"(c) other solvers, 64x512 DEQ adjoint, rtol={b_rtol:g}  (nmatvec: max)", others)


if __name__ == "__main__":
    main()
