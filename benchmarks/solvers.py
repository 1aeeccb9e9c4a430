"""Fixed-point solvers on a DEQ cell: implicitnet's methods against SciPy's, side by side.

Problem: ``z = tanh(z W^T + s (x U^T + b))`` with ``d = 512`` features and a batch of 64
(float64). ``W = Q diag(lam) Q^T`` is symmetric, so its spectral norm is its spectral
radius and Picard's rate really is ``max |lam|``; the injection scale ``s`` is small so
that tanh stays near its linear regime (saturation would make every case easy). Cases:

* ``rho=0.9``: ``lam`` spread over ``[-0.9, 0.9]``;
* ``rho=0.99``: ``[-0.99, 0.99]`` (Picard needs hundreds of iterations);
* ``hard``: ``[-1.5, 0.9]``: spectral norm 1.5, Picard oscillates and fails, while the
  fixed point is stable for the flow ``dz/dt = f(z) - z`` (eigenvalues of ``W`` < 1).

Modes: ``whole`` treats the batch as one system of 32768 unknowns (SciPy's view);
``per-sample`` uses ``batch_axis=0, arg_batch_axes=0`` (64 systems, each with its own
convergence test; finished samples leave the active set). Tolerance: ``rtol=1e-6`` in
implicitnet's sense; SciPy's ``fatol`` is set to the same threshold, computed at a
reference solution. Reported: outer iterations (max over samples), f-evaluations
(``nfev``: per-sample mode, the most any sample used; ``calls``: calls of f),
the final relative residual ``max_i ||f(z_i) - z_i|| / ||f(z_i)||`` computed here,
the median wall time and the share of it spent outside f (solver overhead).

Run: ``python benchmarks/solvers.py [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from functools import partial

import numpy as np

import implicitnet.solvers as solvers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from problems import deq_newton


def make_problem(lo, hi, *, d=512, batch=64, scale=0.01, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    W = (Q * np.linspace(lo, hi, d)) @ Q.T
    U = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((batch, d))
    b = rng.standard_normal(d)
    return np.ascontiguousarray(W.T), scale * (x @ U.T + b)


class Timed:
    """The cell ``tanh(z W^T + inj)``, accumulating the time spent inside it."""

    def __init__(self, WT):
        self.WT = WT
        self.seconds = 0.0

    def __call__(self, z, inj):
        t = time.perf_counter()
        out = np.tanh(z @ self.WT + inj)
        self.seconds += time.perf_counter() - t
        return out


def rel_residual(WT, inj, z):
    fz = np.tanh(z @ WT + inj)
    return float(np.max(np.linalg.norm(fz - z, axis=1) / np.linalg.norm(fz, axis=1)))


#: The native methods, each with SciPy's method of the same family.
FAMILIES = {
    "picard": "scipy:linearmixing",
    "anderson": "scipy:anderson",
    "broyden": "scipy:broyden1",
    "newton_krylov": "scipy:krylov",
}
#: ``(family, method, mode)``: every native method in both modes, then SciPy's (whole).
RUNS = [(m, m, mode) for m in FAMILIES for mode in ("whole", "per-sample")] + [
    (family, scipy_method, "whole") for family, scipy_method in FAMILIES.items()
]


def run_case(name, lo, hi, *, repeats, rtol, maxiter, out=None, methods=None):
    out = partial(print, flush=True) if out is None else out
    WT, inj = make_problem(lo, hi)
    z_ref = deq_newton(WT, inj)  # z* to near machine precision
    z0 = np.zeros_like(inj)
    g0 = np.linalg.norm(np.tanh(inj))
    # SciPy's fatol, set to implicitnet's threshold for the whole batch at z*.
    fatol = rtol * max(np.linalg.norm(np.tanh(z_ref @ WT + inj)), g0)
    for family, method, mode in RUNS:
        if methods is not None and family not in methods and method not in methods:
            continue
        kw = {"batch_axis": 0, "arg_batch_axes": 0} if mode == "per-sample" else {}
        opts = {}
        if method.startswith("scipy:"):
            opts["fatol"] = fatol
            if method == "scipy:linearmixing":
                opts["alpha"] = 1.0  # x <- x + (f(x) - x): Picard
        times, ftimes = [], []
        res = None
        for _ in range(repeats):
            f = Timed(WT)
            t = time.perf_counter()
            res = solvers.fixed_point(
                f, z0, (inj,), method=method, rtol=rtol, maxiter=maxiter, **kw, **opts
            )
            times.append(time.perf_counter() - t)
            ftimes.append(f.seconds)
        wall = statistics.median(times)
        share = 1.0 - statistics.median(ft / t for ft, t in zip(ftimes, times))
        nit = int(np.max(res.nit))
        nfev = int(np.max(res.nfev))
        err = float(np.max(np.abs(res.x - z_ref)))
        row = (
            f"| {name:8s} | {method:18s} | {mode:10s} | {res.status!s:9s} | {nit:5d} | "
            f"{nfev:5d} | {res.stats['ncalls']:5d} | {rel_residual(WT, inj, res.x):8.1e} | "
            f"{err:8.1e} | {wall * 1e3:8.1f} | {share:5.0%} |"
        )
        out(row)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--maxiter", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="only the hard case")
    parser.add_argument(
        "--methods",
        help="comma-separated families or methods to run (e.g. anderson,scipy:krylov); "
        "a family name selects implicitnet's method and SciPy's of that family",
    )
    parser.add_argument("--cases", help="comma-separated cases: rho=0.9, rho=0.99, hard")
    ns = parser.parse_args(argv)
    cases = [("rho=0.9", -0.9, 0.9), ("rho=0.99", -0.99, 0.99), ("hard", -1.5, 0.9)]
    if ns.quick:
        cases = cases[2:]
    if ns.cases:
        wanted = ns.cases.split(",")
        unknown = [c for c in wanted if c not in {name for name, _, _ in cases}]
        if unknown:
            parser.error(f"unknown case(s) {unknown}; known: rho=0.9, rho=0.99, hard")
        cases = [c for c in cases if c[0] in wanted]
    methods = set(ns.methods.split(",")) if ns.methods else None
    solvers.fixed_point(np.cos, np.ones(1))  # warm up imports
    print(
        "| case     | method             | mode       | status    |   nit |  nfev | calls | "
        "rel.res. | max err  | wall ms  | ovh.  |"
    )
    print("|" + "|".join("-" * w for w in (10, 20, 12, 11, 7, 7, 7, 10, 10, 10, 7)) + "|")
    for case in cases:
        run_case(*case, repeats=ns.repeats, rtol=ns.rtol, maxiter=ns.maxiter, methods=methods)


if __name__ == "__main__":
    main()
