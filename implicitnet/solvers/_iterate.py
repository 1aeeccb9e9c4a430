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
from .._xp import host_reader, row_norms, untraced

__all__ = ["iterate"]

# The scale of the fixed-point test follows ``||f(x)||`` up to this factor times its
# starting value ``max(||f(x0)||, ||f(x0) - x0||)``, never beyond: an iterate that runs
# away (a map without a fixed point) cannot make the relative test as loose as it likes.
SCALE_GROWTH = 100.0

# Compaction of finished rows is deferred while fewer than 1/_DEFER_FRACTION of the held
# rows have finished, for at most _MAX_DEFERRAL iterations.
_DEFER_FRACTION = 8
_MAX_DEFERRAL = 8


#: The status of a batch (kept for the Dask front end): :meth:`Status.worst`.
overall_status = Status.worst


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
    ``||g(x)|| <= atol + rtol * scale(x)``, with

    * fixed point (``g(x) = f(x) - x``): ``scale(x) = max(r0, min(||f(x)||, C s0))``,
      ``r0 = ||f(x0) - x0||``, ``s0 = max(||f(x0)||, r0)``, ``C = SCALE_GROWTH``;
    * root (``g = F``): ``scale = ||F(x0)||``.

    The scale is bounded, so an iterate that runs away never passes the test. A
    residual that is not finite (any iterate, or for a root problem an iterate that is
    not finite itself) ends its system as ``"diverged"``; a non-finite residual at `x0`
    raises ``ValueError``. A system that converges returns the iterate that passed the
    test, with its residual and ``relative_residual = residual / scale``.

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
    window, factor = solver.stopping_rules(problem.kind)
    inf = float("inf")
    nan = float("nan")
    eps = float(xp.finfo(dtype).eps)

    read = host_reader(problem.x0)

    def host_norms(x, gx, r, g):
        """Residual norms (and norms of f(x) for a fixed-point problem) on the host.

        Computed on the untraced values: under ``backward="unrolled"`` these norms only
        steer the loop, so they are not recorded on the tape.
        """
        if r is None:
            r = row_norms(untraced(gx), xp=xp)
        if not fixed:
            # A non-finite iterate may still have a finite F(x) (F = tanh at x = inf):
            # read one sum per row with the norms; non-finite rows get a NaN residual.
            both = read(xp.stack([r, xp.sum(x, axis=-1)]))
            return [v if t - t == 0.0 else nan for v, t in zip(both[0], both[1])], None
        last_gx, last_f = g.last
        fx = last_f if last_gx is gx else untraced(x) + untraced(gx)
        both = read(xp.stack([untraced(r), row_norms(untraced(fx), xp=xp)]))
        return both[0], both[1]

    # -- iteration 0 ------------------------------------------------------------------
    ids = list(range(batch))  # systems held in the working arrays, in row order
    g = problem.residual_function(None)
    x = problem.x0
    gx = g(x)
    r_list, s_list = host_norms(x, gx, None, g)

    bad = [i for i, r in enumerate(r_list) if not r - r == 0.0]
    if fixed:
        bad += [i for i, v in enumerate(s_list) if not v - v == 0.0 and i not in bad]
    if bad:
        name = "f" if fixed else "F"
        where = "" if problem.batch_axis is None else f" for systems {sorted(bad)[:10]}"
        msg = (
            f"`{name}(x0)` is not finite (it contains NaN or infinity){where}; "
            f"check `{name}` and the starting point `x0`"
        )
        raise ValueError(msg)

    # Per system (full batch): final values, written when the system finishes.
    r0 = list(r_list)
    # Scale of the relative test: fixed for a root problem; for a fixed point it
    # follows ||f(x)|| between r0 and its cap SCALE_GROWTH * s0.
    cap = [SCALE_GROWTH * (v if v > q else q) for v, q in zip(s_list, r0)] if fixed else r0
    best_r = [inf] * batch
    best_s = list(r0)  # scale at the returned iterate
    nit = [0] * batch
    nfev = [1] * batch
    status: list[Status | None] = [None] * batch
    history = [r_list]
    last_r = r_list  # latest residual of every system (replaced, never mutated)
    for i, r in enumerate(r_list):
        best_r[i] = r
        if fixed:
            v = s_list[i]
            best_s[i] = r if not v > r else (v if v < cap[i] else cap[i])
        if r <= atol + rtol * best_s[i]:
            status[i] = Status.SUCCESS
    # Root problems: the threshold is fixed per system.
    thresh = [atol + rtol * v for v in r0]

    # Per held row (aligned with `ids`): best residual, its iteration, r0 / threshold,
    # and whether the row is live (False once its system finished: a frozen row, or one
    # whose removal is deferred, see `finish_rows`).
    h_best = [best_r[i] for i in ids]
    h_best_s = list(best_s)
    h_best_it = [0] * batch
    h_r0 = list(r0)
    h_cap = list(cap)
    h_thr = list(thresh)
    h_act = [True] * batch
    fev = 1  # evaluations charged to every system still iterating

    best_full = x  # best iterate of every system (rows of finished systems are final)
    best = x  # best iterate of the held systems
    x_full = x  # current iterate of every system (kept only for the callback)
    any_frozen = False
    masked = False  # some held rows are not live
    pending_since = 0  # iteration of the oldest deferred removal
    state = None
    it = 0
    stopped = False

    def finish_rows(x_work, gx_work, state, *, force=False):
        """Drop (compact) or freeze the rows whose system has finished.

        Compaction copies every working array, so it is deferred while the finished
        rows are few: when every finished row converged, fewer than an eighth of the
        held rows have finished, and the oldest has waited fewer than
        `_MAX_DEFERRAL` iterations, the finished rows stay in the working arrays for
        now. Their results are final (iterate, residual, counts); the rows are merely
        carried along, masked out of every decision, until the next compaction. A row
        that diverged or stagnated leaves at once.
        """
        nonlocal ids, g, best, best_full, any_frozen, masked, pending_since
        nonlocal h_best, h_best_s, h_best_it, h_r0, h_cap, h_thr, h_act
        done = [status[i] is not None for i in ids]
        if not any(done):
            return x_work, gx_work, state
        if compact:
            n_done = done.count(True)
            newly = [i for i, d, a in zip(ids, done, h_act) if d and a]
            if (
                not force
                and n_done < len(ids)
                and _DEFER_FRACTION * n_done < len(ids)
                and all(status[i] == Status.SUCCESS for i in newly)
            ):
                if not masked:
                    pending_since = it
                h_act = [not d for d in done]
                masked = True
                return x_work, gx_work, state
            masked = False
            # Finished rows' best iterates go to `best_full` (one gather for all).
            if len(ids) == batch:
                best_full = best
            else:
                idx = _scatter_index(ids, batch, xp=xp, dev=dev)
                best_full = xp.take(xp.concat([best_full, best], axis=0), idx, axis=0)
            keep = [j for j, d in enumerate(done) if not d]
            ids = [ids[j] for j in keep]
            h_best = [h_best[j] for j in keep]
            h_best_s = [h_best_s[j] for j in keep]
            h_best_it = [h_best_it[j] for j in keep]
            h_r0 = [h_r0[j] for j in keep]
            h_cap = [h_cap[j] for j in keep]
            h_thr = [h_thr[j] for j in keep]
            h_act = [True] * len(keep)
            if not keep:
                return None, None, None
            keep_idx = xp.asarray(keep, dtype=xp.int64, device=dev)

            def take(leaf):
                if _is_array_leaf(leaf):
                    return xp.take(leaf, keep_idx, axis=0)
                return leaf

            index = xp.asarray(ids, dtype=xp.int64, device=dev)
            g = problem.residual_function(index, calls=g.calls)
            best = take(best)
            return take(x_work), take(gx_work), tree_map(take, state)
        newly = [d and a for d, a in zip(done, h_act)]
        if any(newly):
            h_act = [not d for d in done]
            any_frozen = masked = True
            m = _mask(done, 2, xp=xp, dev=dev)
            x_work = xp.where(m, best, x_work)
            gx_work = xp.where(m, xp.zeros_like(gx_work), gx_work)
        return x_work, gx_work, state

    if any(s is None for s in status):
        state = solver.init(g, x, gx, xp=xp)
        fev = g.calls
        x, gx, state = finish_rows(x, gx, state)
    else:
        x = None

    while x is not None and it < maxiter:
        calls_before = g.calls
        step = solver.step(g, x, gx, state, xp=xp)
        it += 1
        x_new, gx_new, state_new, r_new = step.x, step.fx, step.state, step.fx_norm
        trial = step.trial  # a line-search trial may be rejected: no divergence test
        if any_frozen:
            # Hold frozen systems fixed (iterate, residual and solver state).
            frozen = [not a for a in h_act]
            m2 = _mask(frozen, 2, xp=xp, dev=dev)
            x_new = xp.where(m2, x, x_new)
            gx_new = xp.where(m2, gx, gx_new)
            r_new = None

            def hold(new, old, frozen=frozen):
                if _is_array_leaf(new) and new is not old:
                    return xp.where(_mask(frozen, new.ndim, xp=xp, dev=dev), old, new)
                return new

            state_new = tree_map(hold, state_new, state)
        fev += g.calls - calls_before
        r_list, s_list = host_norms(x_new, gx_new, r_new, g)

        # Per-row decisions as list comprehensions over the held rows; the rare rows
        # that finish are then classified one by one. The scale of the fixed-point
        # test is max(r0, min(||f(x)||, cap)); a NaN ||f(x)|| takes the cap (and its
        # residual is NaN anyway).
        if fixed:
            scl = [q if not v > q else (v if v < c else c) for v, q, c in zip(s_list, h_r0, h_cap)]
            thr = [atol + rtol * v for v in scl]
            if any(v > c for v, c in zip(s_list, h_cap)):
                # Beyond the cap, a residual below the rounding error of f(x) - x
                # (x + 1 == x for large x) says nothing about a fixed point: such an
                # iterate has run away, and its residual counts as not finite.
                r_list = [
                    nan if v > c and eps * v > t else r
                    for r, v, c, t in zip(r_list, s_list, h_cap, thr)
                ]
        else:
            scl = h_r0
            thr = h_thr
        improved = [r < b for r, b in zip(r_list, h_best)]
        if masked:
            improved = [c and a for c, a in zip(improved, h_act)]
        n_improved = improved.count(True)
        if n_improved:
            h_best = [r if c else b for r, b, c in zip(r_list, h_best, improved)]
            h_best_s = [v if c else b for v, b, c in zip(scl, h_best_s, improved)]
            h_best_it = [it if c else t for t, c in zip(h_best_it, improved)]
        # Finished: converged, or residual not below `factor` times the best (this
        # includes a non-finite residual), or no new best for `window` iterations.
        if trial:  # a line-search trial may be rejected: only a non-finite residual ends it
            done = [r <= t or not r - r == 0.0 for r, t in zip(r_list, thr)]
        else:
            done = [r <= t or not r <= factor * b for r, t, b in zip(r_list, thr, h_best)]
        if it - min(h_best_it) >= window:
            done = [d or it - t >= window for d, t in zip(done, h_best_it)]
        if masked:
            done = [d and a for d, a in zip(done, h_act)]
        n_done = done.count(True)
        for j in range(len(ids)) if n_done else ():
            if not done[j]:
                continue
            i = ids[j]
            r = r_list[j]
            if r <= thr[j]:
                status[i] = Status.SUCCESS
                if not improved[j]:
                    # Return the iterate that passed the test: an earlier one with a
                    # lower residual may have had a smaller scale and not passed it.
                    improved[j] = True
                    n_improved += 1
                    h_best[j] = r
                    h_best_s[j] = scl[j]
            elif not r - r == 0.0 or not (trial or r <= factor * h_best[j]):
                status[i] = Status.DIVERGED
            else:
                status[i] = Status.STAGNATED
            best_r[i] = h_best[j]
            best_s[i] = h_best_s[j]
            nit[i] = it
            nfev[i] = fev

        # History: the latest residual of every system.
        if len(ids) == batch and not masked:
            last_r = r_list
        else:
            last_r = list(last_r)
            for j, i in enumerate(ids):
                if h_act[j]:
                    last_r[i] = r_list[j]
        history.append(last_r)

        if n_improved == len(ids):
            best = x_new
        elif n_improved:
            best = xp.where(_mask(improved, 2, xp=xp, dev=dev), x_new, best)

        if callback is not None:
            # Rows of finished systems show their final (best) iterate.
            x_cb = xp.where(_mask(h_act, 2, xp=xp, dev=dev), x_new, best) if masked else x_new
            if len(ids) == batch:
                x_full = x_cb
            else:
                idx = _scatter_index(ids, batch, xp=xp, dev=dev)
                x_full = xp.take(xp.concat([x_full, x_cb], axis=0), idx, axis=0)
            cb_res = (
                last_r[0]
                if problem.batch_axis is None
                else xp.asarray(last_r, dtype=dtype, device=dev)
            )
            if _wants_stop(callback(problem.to_user(x_full), cb_res)):
                stopped = True

        overdue = masked and not any_frozen and it - pending_since >= _MAX_DEFERRAL
        if n_done or overdue:
            x, gx, state = finish_rows(x_new, gx_new, state_new, force=overdue)
        else:
            x, gx, state = x_new, gx_new, state_new
        if stopped or (any_frozen and not any(h_act)):  # stopped, or every system frozen
            break

    if x is not None:  # systems still held: their best iterates go to `best_full`
        if len(ids) == batch:
            best_full = best
        else:
            idx = _scatter_index(ids, batch, xp=xp, dev=dev)
            best_full = xp.take(xp.concat([best_full, best], axis=0), idx, axis=0)
        for j, i in enumerate(ids):
            if h_act[j]:
                best_r[i] = h_best[j]
                best_s[i] = h_best_s[j]
                nit[i] = it
                nfev[i] = fev
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
        stats={"ncalls": g.calls, "iterations": it},
        xp=xp,
        scale=best_s,
    )


def _wants_stop(answer: Any) -> bool:
    """The callback's answer as a bool; an array of several values is refused."""
    if answer is None or isinstance(answer, bool):
        return bool(answer)
    shape = getattr(answer, "shape", None)
    if shape is not None and tuple(shape) not in ((), (1,)):
        msg = (
            f"`callback` must return True, False or None, got an array of shape "
            f"{tuple(shape)}; when batched, `residual` holds one norm per system: reduce "
            "the test to one answer, e.g. `return bool(xp.all(residual < tol))`"
        )
        raise TypeError(msg)
    return bool(answer)


def _mask(flags: list[bool], ndim: int, *, xp, dev):
    """Boolean column ``(len(flags), 1, ...)`` with `ndim` dimensions, on the device."""
    m = xp.asarray(flags, dtype=xp.bool, device=dev)
    return xp.reshape(m, (len(flags),) + (1,) * (ndim - 1))


def _result(
    problem, x_best, status, residual, nit, nfev, history, *, stats, xp, scale=None
) -> Result:
    """Build the :class:`Result` in the user's layout (shared with the SciPy adapters).

    `scale` holds, per system, the scale of the relative test at the returned iterate
    (``relative_residual = residual / scale``; 0 / 0 is 0 and r / 0 infinite).
    """
    dtype = problem.dtype
    dev = problem.device
    overall = overall_status(status)
    converged = [s == Status.SUCCESS for s in status]
    if scale is None:
        relative = [float("nan")] * len(residual)
    else:
        relative = [_ratio(r, s) for r, s in zip(residual, scale)]
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
            relative_residual=relative[0],
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
        relative_residual=xp.asarray(relative, dtype=dtype, device=dev),
    )


def _ratio(r: float, s: float) -> float:
    """``r / s`` for the relative residual: 0 when both vanish, inf for ``r / 0``."""
    if s > 0.0:
        return r / s
    return 0.0 if r == 0.0 else float("inf")
