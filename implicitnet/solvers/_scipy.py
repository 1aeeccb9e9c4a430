"""Adapters to :func:`scipy.optimize.root`, returning implicitnet's `Result`.

For comparisons in one line: ``fixed_point(f, x0, method="scipy:anderson")``. SciPy is
imported lazily, and only for NumPy inputs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from .. import backends
from .._result import Status
from .._xp import is_tensor, vector_norm
from ._base import AbstractSolver
from ._iterate import SCALE_GROWTH, _result, raise_nonfinite_start

__all__ = ["SCIPY_METHODS", "SciPyRoot"]

#: The methods of :func:`scipy.optimize.root` that have an adapter.
SCIPY_METHODS = (
    "hybr",
    "lm",
    "broyden1",
    "broyden2",
    "anderson",
    "linearmixing",
    "diagbroyden",
    "excitingmixing",
    "krylov",
    "df-sane",
)
#: Those that scipy.optimize.nonlin implements (the others are MINPACK's and DF-SANE).
_NONLIN = set(SCIPY_METHODS) - {"hybr", "lm", "df-sane"}
_NONLIN_TOP = {
    "nit",
    "disp",
    "maxiter",
    "ftol",
    "fatol",
    "xtol",
    "xatol",
    "tol_norm",
    "line_search",
    "jac_options",
}


@dataclass(frozen=True, kw_only=True)
class SciPyRoot(AbstractSolver):
    """Solve with :func:`scipy.optimize.root` (NumPy inputs only).

    Selected as ``method="scipy:<name>"`` with ``<name>`` one of
    :data:`SCIPY_METHODS`; further keyword options of the solve are passed to SciPy
    (for the ``nonlin`` methods, those that are not top-level options of
    ``scipy.optimize.root`` go to ``jac_options``, e.g. ``M`` or ``alpha``).

    Parameters
    ----------
    method : str
        The SciPy method name.
    options : dict
        Extra SciPy options.

    Notes
    -----
    A fixed-point problem is passed to SciPy as the root problem ``f(x) - x = 0``.
    Tolerances are mapped so that SciPy stops on implicitnet's test (see
    :func:`fixed_point`, :func:`root`) as closely as SciPy allows:

    * ``nonlin`` methods (``broyden1``, ``broyden2``, ``anderson``, ``krylov``, ...):
      Euclidean ``tol_norm``, ``fatol = atol + rtol * s0`` and ``ftol = inf``, with
      ``s0 = ||F(x0)||`` for a root problem (exact) and
      ``s0 = max(||f(x0)||, ||f(x0) - x0||)`` for a fixed point (SciPy's test cannot
      follow ``||f(x)||`` as it changes); ``maxiter`` as is.
    * ``df-sane``: ``fatol`` as above, ``ftol = 0``, ``maxfev = maxiter``.
    * ``hybr`` / ``lm``: MINPACK tests the relative change of ``x``: ``xtol = rtol``;
      ``maxfev = maxiter * (n + 1)`` (one finite-difference Jacobian per iteration).

    Whatever SciPy reports, ``success`` is decided by implicitnet's own test at the
    returned point, which is the best point SciPy evaluated. ``nfev`` counts every
    evaluation of `f` (including one at `x0` for the tolerance), ``nit`` is SciPy's
    iteration count when it reports one (else its ``nfev``), and ``history`` holds the
    residual norm of every evaluation (SciPy does not expose its iterates). With
    `batch_axis`, the systems are solved one after the other; when `arg_batch_axes`
    is not given, each evaluation is on the whole batch with the other systems held at
    `x0`.
    """

    method: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in SCIPY_METHODS:
            msg = f"unknown SciPy method {self.method!r}; known: {', '.join(SCIPY_METHODS)}"
            raise ValueError(msg)

    def run(self, problem, *, rtol, atol, maxiter, callback, xp):
        backend = None if is_tensor(problem.x0) else backends.backend_of(problem.x0)
        if backend is None or backend.name != "numpy":
            msg = (
                f"method 'scipy:{self.method}' needs NumPy arrays; got "
                f"{type(problem.x0).__module__}.{type(problem.x0).__name__}. Use a native "
                "method (picard, anderson, broyden, newton_krylov) on other backends"
            )
            raise TypeError(msg)
        optimize = backend.scipy_module().optimize  # SciPy is imported here, on first use

        fixed = problem.kind == "fixed_point"
        batch, n = problem.batch, problem.n
        dtype = problem.dtype
        x_rows, status, residual, nits, nfevs, histories = [], [], [], [], [], []
        scales = []
        eps = float(xp.finfo(dtype).eps)
        ncalls = 0
        for i in range(batch):
            if problem.batch_axis is None:
                g = problem.residual_function(None)
            elif problem.can_compact:
                g = problem.residual_function(xp.asarray([i], dtype=xp.int64))
            else:
                g = _embedded(problem, i, xp=xp)
            x0_i = problem.x0[i : i + 1, :]
            record = {"best": (math.inf, x0_i, 0.0), "hist": [], "scale": []}

            def fun(v, g=g, record=record):
                x = xp.reshape(xp.asarray(v, dtype=dtype, copy=True), (1, n))  # MINPACK reuses v
                gx = g(x)
                r = float(vector_norm(gx, xp=xp))
                s = float(vector_norm(x + gx, xp=xp)) if fixed else 0.0
                record["hist"].append(r)
                record["scale"].append(s)
                if r < record["best"][0]:
                    record["best"] = (r, x, s)
                return xp.astype(xp.reshape(gx, (n,)), xp.float64)

            g0 = fun(xp.astype(xp.reshape(x0_i, (n,)), xp.float64))
            r0 = record["hist"][0]
            if not (math.isfinite(r0) and math.isfinite(record["scale"][0])):
                raise_nonfinite_start(problem, [i])
            s0 = max(record["scale"][0], r0) if fixed else r0
            cap = SCALE_GROWTH * s0
            threshold = atol + rtol * s0
            opts = self._options(threshold, rtol, atol, maxiter, n, xp=xp)
            outcome = None
            if math.isfinite(r0) and r0 > threshold:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        sol = optimize.root(
                            fun,
                            xp.reshape(xp.astype(x0_i, xp.float64), (n,)),
                            method=self.method,
                            options=opts,
                        )
                    outcome = sol
                except (ValueError, ArithmeticError):
                    outcome = "error"
            del g0
            best = record["best"]
            r_best = best[0]
            # The driver's test (see `iterate`), at the best point SciPy evaluated.
            scale = max(r0, min(best[2], cap)) if fixed else r0
            ok = math.isfinite(r_best) and r_best <= atol + rtol * scale
            if ok and fixed and best[2] > cap:
                ok = eps * best[2] <= atol + rtol * scale
            if ok:
                st = Status.SUCCESS
            elif not math.isfinite(r0) or outcome == "error":
                st = Status.DIVERGED if not math.isfinite(r0) else Status.BREAKDOWN
            elif outcome is not None and not bool(outcome.success):
                st = Status.MAXITER
            else:
                st = Status.STAGNATED
            x_rows.append(best[1])
            status.append(st)
            residual.append(r_best)
            scales.append(scale)
            nfevs.append(len(record["hist"]))
            ncalls += len(record["hist"])
            if outcome is None or outcome == "error":
                nits.append(0)
            else:
                nits.append(int(getattr(outcome, "nit", outcome.get("nfev", 0))))
            histories.append(record["hist"])
            if callback is not None:
                callback(problem.to_user(best[1]) if batch == 1 else best[1], r_best)
        length = max(len(h) for h in histories)
        history = [[h[min(k, len(h) - 1)] for h in histories] for k in range(length)]
        x_best = xp.concat(x_rows, axis=0)
        return _result(
            problem,
            x_best,
            status,
            residual,
            nits,
            nfevs,
            history,
            stats={"ncalls": ncalls, "scipy_method": self.method, "history_per": "evaluation"},
            xp=xp,
            scale=scales,
        )

    def _options(self, threshold, rtol, atol, maxiter, n, *, xp):
        opts: dict[str, Any] = {}
        if self.method in _NONLIN:
            jac = {}
            for k, v in self.options.items():
                (opts if k in _NONLIN_TOP else jac)[k] = v
            if jac:
                opts["jac_options"] = {**opts.get("jac_options", {}), **jac}
            opts.setdefault("fatol", threshold)
            opts.setdefault("ftol", math.inf)
            opts.setdefault("tol_norm", lambda v: float(xp.linalg.vector_norm(v)))
            opts.setdefault("maxiter", maxiter)
        elif self.method == "df-sane":
            opts.update(self.options)
            opts.setdefault("fatol", threshold)
            opts.setdefault("ftol", 0.0)
            opts.setdefault("maxfev", maxiter)
        elif self.method == "hybr":
            opts.update(self.options)
            opts.setdefault("xtol", rtol)
            opts.setdefault("maxfev", maxiter * (n + 1))
        else:  # lm
            opts.update(self.options)
            opts.setdefault("xtol", rtol)
            opts.setdefault("maxiter", maxiter * (n + 1))
        return opts


def _embedded(problem, i, *, xp):
    """Residual of system `i` alone, evaluated on the whole batch (others at `x0`)."""
    g_all = problem.residual_function(None)
    base = problem.x0
    onehot = xp.reshape(xp.arange(problem.batch) == i, (problem.batch, 1))

    def g(x):
        full = xp.where(onehot, x, base)
        return g_all(full)[i : i + 1, :]

    return g


def _factory(name):
    def make(**options):
        return SciPyRoot(method=name, options=options)

    make.__name__ = f"scipy_{name}"
    return make


def register_all(register) -> None:
    """Register ``"scipy:<name>"`` for every method in :data:`SCIPY_METHODS`."""
    for name in SCIPY_METHODS:
        register(f"scipy:{name}", _factory(name))
