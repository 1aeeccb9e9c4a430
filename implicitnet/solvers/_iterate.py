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
from .._xp import to_host
from ._base import row_norms

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


def _scatter_index(ids: list[int], batch: int, *, xp, dev):
    """Index that gathers ``concat([full, part])`` into ``full`` with rows `ids` replaced."""
    perm = list(range(batch))
    for j, i in enumerate(ids):
        perm[i] = batch + j
    return xp.asarray(perm, dtype=xp.int64, device=dev)


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

    Per iteration the driver does one host transfer (the residual norms, and for a
    fixed-point problem the norms of ``f(x)``), a few list operations per active
    system, and array work only for the best iterate (a ``where`` when some but not all
    systems improved). Systems leave the working arrays (or are frozen) only when one
    finishes, so the cost of compaction is paid once per change of the active set.
    """
    batch = problem.batch
    dtype = problem.dtype
    dev = problem.device
    fixed = problem.kind == "fixed_point"
    compact = problem.can_compact
    window = solver.stagnation_window
    factor = solver.divergence_factor
    inf = float("inf")

    ncalls = [0]

    def counted(fn):
        def g(x):
            ncalls[0] += 1
            return fn(x)

        g.inner = fn
        return g

    def host_norms(x, gx, r, g):
        """Residual norms (and norms of f(x) for a fixed-point problem) on the host."""
        if r is None:
            r = row_norms(gx, xp=xp)
        if not fixed:
            return to_host(r), None
        last_gx, last_f = g.inner.last
        fx = last_f if last_gx is gx else x + gx
        both = to_host(xp.stack([r, row_norms(fx, xp=xp)]))
        return both[0], both[1]

    # -- iteration 0 ------------------------------------------------------------------
    ids = list(range(batch))  # systems held in the working arrays, in row order
    g = counted(problem.residual_function(None))
    x = problem.x0
    gx = g(x)
    r_list, s_list = host_norms(x, gx, None, g)

    r0 = [v if v - v == 0.0 else 0.0 for v in r_list]
    best_r = [inf] * batch
    best_it = [0] * batch
    last_r = list(r_list)
    nit = [0] * batch
    nfev = [1] * batch
    status: list[Status | None] = [None] * batch
    history = [list(r_list)]
    for i, r in enumerate(r_list):
        if not r - r == 0.0:
            status[i] = Status.DIVERGED
            continue
        best_r[i] = r
        scale = max(s_list[i], r) if fixed else r
        if r <= atol + rtol * scale:
            status[i] = Status.SUCCESS
    # Root problems: the threshold is fixed per system.
    thresh = [atol + rtol * v for v in r0]

    best_full = x  # best iterate of every system (rows of finished systems are final)
    best = x  # best iterate of the held systems
    x_full = x  # current iterate of every system (kept only for the callback)
    frozen: list[bool] = [False] * batch  # freeze mode: rows held fixed
    any_frozen = False
    state = None
    it = 0
    stopped = False

    def finish_rows(x_work, gx_work, state):
        """Drop (compact) or freeze the rows whose system has finished."""
        nonlocal ids, g, best, best_full, any_frozen
        done = [status[i] is not None for i in ids]
        if not any(done):
            return x_work, gx_work, state
        if compact:
            # Finished rows' best iterates go to `best_full` (one gather for all).
            if len(ids) == batch:
                best_full = best
            else:
                idx = _scatter_index(ids, batch, xp=xp, dev=dev)
                best_full = xp.take(xp.concat([best_full, best], axis=0), idx, axis=0)
            keep = [j for j, d in enumerate(done) if not d]
            ids = [ids[j] for j in keep]
            if not keep:
                return None, None, None
            keep_idx = xp.asarray(keep, dtype=xp.int64, device=dev)

            def take(leaf):
                if _is_array_leaf(leaf):
                    return xp.take(leaf, keep_idx, axis=0)
                return leaf

            index = xp.asarray(ids, dtype=xp.int64, device=dev)
            g = counted(problem.residual_function(index))
            best = take(best)
            return take(x_work), take(gx_work), tree_map(take, state)
        newly = [d and not frozen[i] for i, d in zip(ids, done)]
        if any(newly):
            for i, d in enumerate(done):
                frozen[i] = frozen[i] or d
            any_frozen = True
            m = _mask(frozen, 2, xp=xp, dev=dev)
            x_work = xp.where(m, best, x_work)
            gx_work = xp.where(m, xp.zeros_like(gx_work), gx_work)
        return x_work, gx_work, state

    if any(s is None for s in status):
        state = solver.init(g, x, gx, xp=xp)
        init_calls = ncalls[0] - 1
        nfev = [k + init_calls if s is None else k for k, s in zip(nfev, status)]
        x, gx, state = finish_rows(x, gx, state)
    else:
        x = None

    while x is not None and it < maxiter:
        calls_before = ncalls[0]
        step = solver.step(g, x, gx, state, xp=xp)
        it += 1
        x_new, gx_new, state_new, r_new = step.x, step.fx, step.state, step.fx_norm
        if any_frozen:
            # Hold frozen systems fixed (iterate, residual and solver state).
            m2 = _mask(frozen, 2, xp=xp, dev=dev)
            x_new = xp.where(m2, x, x_new)
            gx_new = xp.where(m2, gx, gx_new)
            r_new = None

            def hold(new, old):
                if _is_array_leaf(new) and new is not old:
                    return xp.where(_mask(frozen, new.ndim, xp=xp, dev=dev), old, new)
                return new

            state_new = tree_map(hold, state_new, state)
        calls = ncalls[0] - calls_before
        r_list, s_list = host_norms(x_new, gx_new, r_new, g)

        improved = [False] * len(ids)
        n_improved = 0
        n_done = 0  # systems that finish at this iteration
        for j, i in enumerate(ids):
            if status[i] is not None:  # frozen
                continue
            r = r_list[j]
            nit[i] += 1
            nfev[i] += calls
            last_r[i] = r
            b = best_r[i]
            if r < b:
                best_r[i] = b = r
                best_it[i] = it
                improved[j] = True
                n_improved += 1
            elif not r - r == 0.0:
                status[i] = Status.DIVERGED
                n_done += 1
                continue
            if fixed:
                s = s_list[j]
                r0i = r0[i]
                thr = atol + rtol * (s if s > r0i else r0i)
            else:
                thr = thresh[i]
            if r <= thr:
                status[i] = Status.SUCCESS
            elif r > factor * b:
                status[i] = Status.DIVERGED
            elif it - best_it[i] >= window:
                status[i] = Status.STAGNATED
            else:
                continue
            n_done += 1
        history.append(list(last_r))

        if n_improved == len(ids):
            best = x_new
        elif n_improved:
            best = xp.where(_mask(improved, 2, xp=xp, dev=dev), x_new, best)

        if callback is not None:
            if len(ids) == batch:
                x_full = x_new
            else:
                idx = _scatter_index(ids, batch, xp=xp, dev=dev)
                x_full = xp.take(xp.concat([x_full, x_new], axis=0), idx, axis=0)
            cb_res = (
                last_r[0]
                if problem.batch_axis is None
                else xp.asarray(last_r, dtype=dtype, device=dev)
            )
            if callback(problem.to_user(x_full), cb_res):
                stopped = True

        if n_done:
            x, gx, state = finish_rows(x_new, gx_new, state_new)
        else:
            x, gx, state = x_new, gx_new, state_new
        if stopped:
            break

    if x is not None:  # systems still held: their best iterates go to `best_full`
        if len(ids) == batch:
            best_full = best
        else:
            idx = _scatter_index(ids, batch, xp=xp, dev=dev)
            best_full = xp.take(xp.concat([best_full, best], axis=0), idx, axis=0)
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


def _mask(flags: list[bool], ndim: int, *, xp, dev):
    """Boolean column ``(len(flags), 1, ...)`` with `ndim` dimensions, on the device."""
    m = xp.asarray(flags, dtype=xp.bool, device=dev)
    return xp.reshape(m, (len(flags),) + (1,) * (ndim - 1))


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
