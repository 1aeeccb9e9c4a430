"""Root problems: which methods solve the standard test sets, at default settings.

Problems (defined in ``tests/nonlinear_systems.py``, shared with the tests):

* every square system of Moré, Garbow and Hillstrom (1981), the test set of MINPACK's
  ``hybrd`` (14 functions, 19 systems with Watson at n = 6, 9 and Chebyquad at
  n = 5..9), each from the standard start ``x0`` and from ``10 x0`` and ``100 x0``, as
  the paper prescribes (57 cases; Chebyquad at n = 8 has no zero);
* the problems of SciPy's tests of its nonlinear solvers (``test_nonlin.py``: ``F`` to
  ``F6`` and the dense random 20 x 20 linear system), at the starts used there.

Methods: implicitnet's root-capable methods and SciPy's methods of the same families
(``scipy.optimize.root`` with ``anderson``, ``broyden1``, ``krylov``, ``linearmixing``,
``excitingmixing``) plus MINPACK's ``hybr`` as the reference. Every method runs at its
default settings, asked for ``||F(x)|| <= 1e-8`` (``rtol=0``, ``atol=1e-8``) within
``maxiter=2000`` iterations (``hybr``: ``2000 (n + 1)`` evaluations).

"Solved" is decided here, identically for every method: ``||F(x)||_2 <= 1e-8`` with
``F`` evaluated again at the returned ``x`` (whatever the method reported). Printed per
case and method: ``ok`` or ``--``, the function evaluations used, and the final residual
norm; then, per method, the number solved in each set and the evaluations summed over
the cases that every method solved. A reported success that the re-check refutes is
marked ``!`` (there should be none).

Run: ``python benchmarks/root_problems.py [--methods anderson,scipy:anderson]
[--only SUBSTRING] [--maxiter 2000]``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

import implicitnet as inet

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from nonlinear_systems import SCIPY_SYSTEMS, mgh_cases

TOL = 1e-8

METHODS = [
    "anderson",
    "broyden",
    "newton_krylov",
    "scipy:anderson",
    "scipy:broyden1",
    "scipy:krylov",
    "scipy:linearmixing",
    "scipy:excitingmixing",
    "scipy:hybr",
]


def run(F, x0, method, maxiter):
    """``(solved, reported_success, nfev, final residual)`` of one method on one case."""
    x0 = np.asarray(x0, dtype=np.float64)
    with np.errstate(all="ignore"):
        try:
            res = inet.solvers.root(F, x0, method=method, rtol=0.0, atol=TOL, maxiter=maxiter)
        except Exception:  # a SciPy method may raise on a bad step: not solved
            return False, False, 0, float("nan")
        x = np.asarray(res.x)
        final = float(np.linalg.norm(F(x))) if np.all(np.isfinite(x)) else float("inf")
    solved = final <= TOL
    return solved, bool(res.success), int(res.nfev), final


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--maxiter", type=int, default=2000)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    sets = [("MGH", mgh_cases()), ("SciPy", list(SCIPY_SYSTEMS))]

    width = 22
    header = f"{'problem':38s}" + "".join(f"{m:>{width}s}" for m in methods)
    print(header)
    solved = {s: dict.fromkeys(methods, 0) for s, _ in sets}
    total = dict.fromkeys(methods, 0)
    counts = {s: 0 for s, _ in sets}
    nfev_common = dict.fromkeys(methods, 0)
    false_success = dict.fromkeys(methods, 0)
    start = time.perf_counter()
    for set_name, cases in sets:
        for case in cases:
            if args.only and args.only not in case.name:
                continue
            counts[set_name] += 1
            outcomes = {m: run(case.F, case.x0, m, args.maxiter) for m in methods}
            cells = []
            for m in methods:
                ok, reported, nfev, final = outcomes[m]
                solved[set_name][m] += ok
                total[m] += ok
                false_success[m] += reported and not ok
                mark = ("ok" if ok else "--") + ("!" if reported and not ok else " ")
                cells.append(f"{mark}{nfev:>8d} {final:9.1e}".rjust(width))
            if all(o[0] for o in outcomes.values()):
                for m in methods:
                    nfev_common[m] += outcomes[m][2]
            print(f"{case.name:38s}" + "".join(cells), flush=True)
    print()
    for set_name, _ in sets:
        label = f"solved, {set_name} (of {counts[set_name]})"
        print(f"{label:38s}" + "".join(f"{solved[set_name][m]:>{width}d}" for m in methods))
    label = f"solved, all (of {sum(counts.values())})"
    print(f"{label:38s}" + "".join(f"{total[m]:>{width}d}" for m in methods))
    print(
        f"{'nfev, cases all solve':38s}" + "".join(f"{nfev_common[m]:>{width}d}" for m in methods)
    )
    print(f"{'refuted successes':38s}" + "".join(f"{false_success[m]:>{width}d}" for m in methods))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
