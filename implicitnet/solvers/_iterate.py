"""The shared driver: the loop every iterative solver runs under.

The driver owns everything that is not the method itself: the convergence test, the
residual history, non-finite / divergence / stagnation checks, the best iterate, the
active set of a batch and the :class:`~implicitnet.Result`. It reads the residual norms
to the host once per iteration (one small transfer of ``2 x batch`` numbers); every
per-system decision is then taken on the host.

Batches. Rows of the working arrays are systems. When `f` may be evaluated on a subset
of the systems (``problem.can_compact``: no batch, or `arg_batch_axes` declared), a
system that finishes is removed from the working arrays (``take`` on host-known
indices, solver state included) and `f` is evaluated on the remaining ones only.
Otherwise finished systems are *frozen*: `f` still sees the whole batch, but their
iterate and solver state are held fixed with ``where``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._result import Result, Status, status_message
from .._tree import tree_map
from .._xp import to_host, vector_norm

__all__ = ["iterate"]

# Order in which the statuses of unconverged systems decide the overall status.
_SEVERITY = (Status.DIVERGED, Status.BREAKDOWN, Status.STAGNATED, Status.STOPPED, Status.MAXITER)


def overall_status(statuses: list[Status]) -> Status:
    """The status of a batch: success when every system converged, else the worst."""
    failed = {s for s in statuses if s != Status.SUCCESS}
    for s in _SEVERITY:
        if s in failed:
            return s
    return Status.SUCCESS


def _is_array_leaf(leaf: Any) -> bool:
    return not isinstance(leaf, bool | int | float | complex | str | type(None))


class _Rows:
    """The systems currently held in the working arrays, and index arrays for them."""

    def __init__(self, ids: list[int], batch: int, *, xp, dev):
        self.ids = ids
        self.full = len(ids) == batch
        self._xp = xp
        self._dev = dev
        self._batch = batch
        self._perm = None
        self._index = None

    def index(self):
        """Device index array of the held systems (None when all are held)."""
        if self.full:
            return None
        if self._index is None:
            self._index = self._xp.asarray(self.ids, dtype=self._xp.int64, device=self._dev)
        return self._index

    def scatter(self, full, part):
        """`full` with the held systems' rows replaced by `part` (out of place)."""
        if self.full:
            return part
        xp = self._xp
        if self._perm is None:
            perm = list(range(self._batch))
            for j, i in enumerate(self.ids):
                perm[i] = self._batch + j
            self._perm = xp.asarray(perm, dtype=xp.int64, device=self._dev)
        return xp.take(xp.concat([full, part], axis=0), self._perm, axis=0)


def iterate(
    solver,
    problem,
    *,
    rtol: float,
    atol: float,
    maxiter: int,
    callback: Callable | None,
    xp: Any,
) -> Result:
    """Run `solver` (an :class:`AbstractIterativeSolver`) on `problem`.

    Convergence of system ``i`` at iterate ``x`` (Euclidean norms over the system):

    * fixed point: ``||f(x) - x|| <= atol + rtol * max(||f(x)||, ||f(x0) - x0||)``;
    * root: ``||F(x)|| <= atol + rtol * ||F(x0)||``.
    """
    batch = problem.batch
    dtype = problem.dtype
    dev = problem.device
    fixed = problem.kind == "fixed_point"
    compact = problem.can_compact
    window = solver.stagnation_window
    factor = solver.divergence_factor

    ncalls = [0]

    def counted(fn):
        def g(x):
            ncalls[0] += 1
            return fn(x)

        return g

    def host_norms(x, gx):
        r = vector_norm(gx, axis=-1, xp=xp)
        if not fixed:
            return to_host(r), None
        s = vector_norm(x + gx, axis=-1, xp=xp)
        both = to_host(xp.stack([r, s]))
        return both[0], both[1]

    def finite(v: float) -> bool:
        return v - v == 0.0

    def as_mask(flags: list[bool], ndim: int):
        m = xp.asarray(flags, dtype=xp.bool, device=dev)
        return xp.reshape(m, (len(flags),) + (1,) * (ndim - 1))

    # -- iteration 0 ------------------------------------------------------------------
    rows = _Rows(list(range(batch)), batch, xp=xp, dev=dev)
    g = counted(problem.residual_function(None))
    x = problem.x0
    gx = g(x)
    r_list, s_list = host_norms(x, gx)

    r0 = [v if finite(v) else 0.0 for v in r_list]
    best_r = [float("inf")] * batch
    best_it = [0] * batch
    last_r = list(r_list)
    nit = [0] * batch
    nfev = [1] * batch
    status: list[Status | None] = [None] * batch
    history = [list(r_list)]
    for i, r in enumerate(r_list):
        if not finite(r):
            status[i] = Status.DIVERGED
            continue
        best_r[i] = r
        scale = max(s_list[i], r) if fixed else r
        if r <= atol + rtol * scale:
            status[i] = Status.SUCCESS

    x_full = x
    best_full = x
    state = None
    frozen: list[bool] = [False] * batch  # freeze mode: rows held fixed

    def finish_rows(x_work, gx_work, state):
        """Drop (compact) or freeze the rows whose system has finished."""
        nonlocal rows, g
        done = [status[i] is not None for i in rows.ids]
        if not any(done):
            return x_work, gx_work, state
        if compact:
            keep = [j for j, d in enumerate(done) if not d]
            if not keep:
                return None, None, None
            keep_idx = xp.asarray(keep, dtype=xp.int64, device=dev)

            def take(leaf):
                if _is_array_leaf(leaf):
                    return xp.take(leaf, keep_idx, axis=0)
                return leaf

            rows = _Rows([rows.ids[j] for j in keep], batch, xp=xp, dev=dev)
            g = counted(problem.residual_function(rows.index()))
            return take(x_work), take(gx_work), tree_map(take, state)
        newly = [d and not frozen[i] for i, d in zip(rows.ids, done)]
        if any(newly):
            for i, d in enumerate(done):
                frozen[i] = frozen[i] or d
            m = as_mask(frozen, 2)
            x_work = xp.where(m, best_full, x_work)
            gx_work = xp.where(m, xp.zeros_like(gx_work), gx_work)
        return x_work, gx_work, state

    stopped = False
    it = 0
    if any(s is None for s in status):
        state = solver.init(g, x, gx, xp=xp)
        nfev = [k + ncalls[0] - 1 for k in nfev]
        x, gx, state = finish_rows(x, gx, state)

    while x is not None and it < maxiter and not stopped:
        if all(s is not None for s in status):
            break
        calls_before = ncalls[0]
        step = solver.step(g, x, gx, state, xp=xp)
        it += 1
        x_new, gx_new, state_new = step.x, step.fx, step.state
        if not compact and any(frozen):
            # Hold frozen systems fixed (iterate, residual and solver state).
            m2 = as_mask(frozen, 2)
            x_new = xp.where(m2, x, x_new)
            gx_new = xp.where(m2, gx, gx_new)

            def hold(new, old):
                if _is_array_leaf(new):
                    return xp.where(as_mask(frozen, new.ndim), old, new)
                return new

            state_new = tree_map(hold, state_new, state)
        calls = ncalls[0] - calls_before
        r_list, s_list = host_norms(x_new, gx_new)
        x_full = rows.scatter(x_full, x_new)

        improved = [False] * batch
        for j, i in enumerate(rows.ids):
            if status[i] is not None:
                continue
            r = r_list[j]
            nit[i] += 1
            nfev[i] += calls
            last_r[i] = r
            if not finite(r):
                status[i] = Status.DIVERGED
                continue
            if r < best_r[i]:
                best_r[i] = r
                best_it[i] = it
                improved[i] = True
            scale = max(s_list[j], r0[i]) if fixed else r0[i]
            if r <= atol + rtol * scale:
                status[i] = Status.SUCCESS
            elif r > factor * best_r[i]:
                status[i] = Status.DIVERGED
            elif it - best_it[i] >= window:
                status[i] = Status.STAGNATED
        history.append(list(last_r))

        if all(improved):
            best_full = x_full
        elif any(improved):
            best_full = xp.where(as_mask(improved, 2), x_full, best_full)

        if callback is not None:
            cb_res = (
                last_r[0]
                if problem.batch_axis is None
                else xp.asarray(last_r, dtype=dtype, device=dev)
            )
            if callback(problem.to_user(x_full), cb_res):
                stopped = True

        x, gx, state = finish_rows(x_new, gx_new, state_new)

    for i in range(batch):
        if status[i] is None:
            status[i] = Status.STOPPED if stopped else Status.MAXITER

    return _result(
        problem,
        best_full,
        status,
        best_r,
        nit,
        nfev,
        history,
        stats={"ncalls": ncalls[0], "iterations": it},
        xp=xp,
    )


def _result(problem, x_best, status, residual, nit, nfev, history, *, stats, xp) -> Result:
    """Build the :class:`Result` in the user's layout (shared with the SciPy adapters)."""
    dtype = problem.dtype
    dev = problem.device
    overall = overall_status(status)
    converged = [s == Status.SUCCESS for s in status]
    x = problem.to_user(x_best)
    if problem.batch_axis is None:
        hist = xp.asarray([h[0] for h in history], dtype=dtype, device=dev)
        return Result(
            x=x,
            success=converged[0],
            status=overall,
            message=status_message(overall),
            nit=nit[0],
            nfev=nfev[0],
            residual=float(residual[0]),
            history=hist,
            converged=converged[0],
            stats=stats,
        )
    stats = dict(stats)
    stats["statuses"] = tuple(status)
    return Result(
        x=x,
        success=all(converged),
        status=overall,
        message=status_message(overall),
        nit=xp.asarray(nit, dtype=xp.int64, device=dev),
        nfev=xp.asarray(nfev, dtype=xp.int64, device=dev),
        residual=xp.asarray(residual, dtype=dtype, device=dev),
        history=xp.asarray(history, dtype=dtype, device=dev),
        converged=xp.asarray(converged, dtype=xp.bool, device=dev),
        stats=stats,
    )
