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

from typing import Any

from .._result import Result, Status, status_message
from .._tree import tree_map
from .._validate import NonFiniteError
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


def _is_array_leaf(leaf: Any) -> bool:
    return not isinstance(leaf, bool | int | float | complex | str | type(None))


def _scatter_index(ids: list[int], batch: int, *, xp, dev):
    """Index that gathers ``concat([full, part])`` into ``full`` with rows `ids` replaced."""
    perm = list(range(batch))
    for j, i in enumerate(ids):
        perm[i] = batch + j
    return xp.asarray(perm, dtype=xp.int64, device=dev)


def iterate(solver, problem, *, rtol, atol, maxiter, callback, xp) -> Result:
    """Run `solver` (an :class:`AbstractIterativeSolver`) on `problem`.

    The keywords are those of :meth:`AbstractSolver.run`.

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
    window, factor = solver.stopping_rules(problem.kind)
    norms = _HostNorms(problem, xp=xp)
    g = problem.residual_function(None)
    x = problem.x0
    gx = g(x)
    r_list, s_list = norms(x, gx, None, g)
    systems = _Systems(problem, x, r_list, s_list, rtol=rtol, atol=atol, xp=xp)
    state = None
    fev = 1  # evaluations charged to every system still iterating
    it = 0
    stopped = False
    if systems.running():
        state = solver.init(g, x, gx, xp=xp)
        fev = g.calls
        x, gx, state, g = systems.finish(x, gx, state, g, it=it)
    else:
        x = None

    while x is not None and it < maxiter:
        calls_before = g.calls
        step = solver.step(g, x, gx, state, xp=xp)
        it += 1
        x_new, gx_new, state_new, r_new = step.x, step.fx, step.state, step.fx_norm
        if systems.any_frozen:
            x_new, gx_new, state_new = systems.hold(x, gx, state, x_new, gx_new, state_new)
            r_new = None
        fev += g.calls - calls_before
        r_list, s_list = norms(x_new, gx_new, r_new, g)
        n_done = systems.record(
            x_new, r_list, s_list, it=it, fev=fev, trial=step.trial, window=window, factor=factor
        )
        if callback is not None and _wants_stop(systems.call(callback, x_new)):
            stopped = True
        overdue = systems.overdue(it)
        if n_done or overdue:
            x, gx, state, g = systems.finish(x_new, gx_new, state_new, g, it=it, force=overdue)
        else:
            x, gx, state = x_new, gx_new, state_new
        if stopped or (systems.any_frozen and not any(systems.live)):  # every system frozen
            break

    systems.close(held=x is not None, it=it, fev=fev, stopped=stopped)
    return _result(
        problem,
        systems.best_full,
        systems.status,
        systems.best_r,
        systems.nit,
        systems.nfev,
        systems.history,
        stats={"ncalls": g.calls, "iterations": it},
        xp=xp,
        scale=systems.best_s,
    )


class _HostNorms:
    """Residual norms (and norms of f(x) for a fixed-point problem) read to the host.

    Computed on the untraced values: under ``backward="unrolled"`` these norms only
    steer the loop, so they are not recorded on the tape. One transfer per call.
    """

    def __init__(self, problem, *, xp):
        self.fixed = problem.kind == "fixed_point"
        self.read = host_reader(problem.x0)
        self.xp = xp

    def __call__(self, x, gx, r, g):
        xp = self.xp
        if r is None:
            r = row_norms(untraced(gx), xp=xp)
        if not self.fixed:
            # A non-finite iterate may still have a finite F(x) (F = tanh at x = inf):
            # read one sum per row with the norms; non-finite rows get a NaN residual.
            both = self.read(xp.stack([untraced(r), xp.sum(untraced(x), axis=-1)]))
            return [v if t - t == 0.0 else _NAN for v, t in zip(both[0], both[1])], None
        last_gx, last_f = g.last
        fx = last_f if last_gx is gx else untraced(x) + untraced(gx)
        both = self.read(xp.stack([untraced(r), row_norms(untraced(fx), xp=xp)]))
        return both[0], both[1]


_NAN = float("nan")


class _Systems:
    """The driver's record of every system: its best iterate, residual, status, counts.

    Per system (full batch, index ``i``): the final values, written when the system
    finishes (`status`, `best_r`, `best_s` the scale at the returned iterate, `nit`,
    `nfev`), and the residual `history`. Per held row (index ``j``, aligned with `ids`,
    the systems in the working arrays): the best residual, its scale and iteration,
    ``r0``, the cap and threshold of the test, and whether the row is `live` (False
    once its system finished: a frozen row, or one whose removal is deferred). The best
    iterates: `best` of the held rows, `best_full` of every system (rows of finished
    systems final).

    :meth:`record` takes one iteration's norms and decides, :meth:`finish` drops (or
    freezes) the rows of finished systems, :meth:`close` writes the final values.
    """

    def __init__(self, problem, x, r_list, s_list, *, rtol, atol, xp):
        batch = problem.batch
        fixed = problem.kind == "fixed_point"
        self.problem, self.xp, self.dev = problem, xp, problem.device
        self.batch, self.fixed, self.rtol, self.atol = batch, fixed, rtol, atol
        self.compact = problem.can_compact
        self.eps = float(xp.finfo(problem.dtype).eps)
        _check_first(problem, r_list, s_list)
        r0 = list(r_list)
        # Scale of the relative test: fixed for a root problem; for a fixed point it
        # follows ||f(x)|| between r0 and its cap SCALE_GROWTH * s0.
        cap = [SCALE_GROWTH * (v if v > q else q) for v, q in zip(s_list, r0)] if fixed else r0
        self.best_r = list(r_list)
        self.best_s = list(r0)  # scale at the returned iterate
        self.nit = [0] * batch
        self.nfev = [1] * batch
        self.status: list[Status | None] = [None] * batch
        self.history = [r_list]
        self.last_r = r_list  # latest residual of every system (replaced, never mutated)
        for i, r in enumerate(r_list):
            if fixed:
                v = s_list[i]
                self.best_s[i] = r if not v > r else (v if v < cap[i] else cap[i])
            if r <= atol + rtol * self.best_s[i]:
                self.status[i] = Status.SUCCESS
        self.ids = list(range(batch))  # systems held in the working arrays, in row order
        self.h_best = list(r_list)
        self.h_best_s = list(self.best_s)
        self.h_best_it = [0] * batch
        self.h_r0 = r0
        self.h_cap = cap
        self.h_thr = [atol + rtol * v for v in r0]  # root problems: fixed per system
        self.live = [True] * batch
        self.best = self.best_full = self.x_full = x
        self.any_frozen = False
        self.masked = False  # some held rows are not live
        self.pending_since = 0  # iteration of the oldest deferred removal

    def running(self) -> bool:
        """Whether some system has not finished."""
        return any(s is None for s in self.status)

    def record(self, x_new, r_list, s_list, *, it, fev, trial, window, factor) -> int:
        """Take one iteration's norms of the held rows; return how many rows finished.

        Per-row decisions are list comprehensions over the held rows; the rare rows that
        finish are then classified one by one. The scale of the fixed-point test is
        ``max(r0, min(||f(x)||, cap))``; a NaN ``||f(x)||`` takes the cap (and its
        residual is NaN anyway).
        """
        xp, masked = self.xp, self.masked
        if self.fixed:
            scl = [
                q if not v > q else (v if v < c else c)
                for v, q, c in zip(s_list, self.h_r0, self.h_cap)
            ]
            thr = [self.atol + self.rtol * v for v in scl]
            if any(v > c for v, c in zip(s_list, self.h_cap)):
                # Beyond the cap, a residual below the rounding error of f(x) - x
                # (x + 1 == x for large x) says nothing about a fixed point: such an
                # iterate has run away, and its residual counts as not finite.
                eps = self.eps
                r_list = [
                    _NAN if v > c and eps * v > t else r
                    for r, v, c, t in zip(r_list, s_list, self.h_cap, thr)
                ]
        else:
            scl, thr = self.h_r0, self.h_thr
        improved = [r < b for r, b in zip(r_list, self.h_best)]
        if masked:
            improved = [c and a for c, a in zip(improved, self.live)]
        n_improved = improved.count(True)
        if n_improved:
            self.h_best = [r if c else b for r, b, c in zip(r_list, self.h_best, improved)]
            self.h_best_s = [v if c else b for v, b, c in zip(scl, self.h_best_s, improved)]
            self.h_best_it = [it if c else t for t, c in zip(self.h_best_it, improved)]
        # Finished: converged, or residual not below `factor` times the best (this
        # includes a non-finite residual), or no new best for `window` iterations.
        if trial:  # a line-search trial may be rejected: only a non-finite residual ends it
            done = [r <= t or not r - r == 0.0 for r, t in zip(r_list, thr)]
        else:
            done = [r <= t or not r <= factor * b for r, t, b in zip(r_list, thr, self.h_best)]
        if it - min(self.h_best_it) >= window:
            done = [d or it - t >= window for d, t in zip(done, self.h_best_it)]
        if masked:
            done = [d and a for d, a in zip(done, self.live)]
        n_done = done.count(True)
        for j in range(len(self.ids)) if n_done else ():
            if done[j]:
                n_improved += self._classify(j, r_list[j], thr[j], scl[j], improved, trial, factor)
                i = self.ids[j]
                self.best_r[i] = self.h_best[j]
                self.best_s[i] = self.h_best_s[j]
                self.nit[i] = it
                self.nfev[i] = fev

        # History: the latest residual of every system.
        if len(self.ids) == self.batch and not masked:
            self.last_r = r_list
        else:
            self.last_r = list(self.last_r)
            for j, i in enumerate(self.ids):
                if self.live[j]:
                    self.last_r[i] = r_list[j]
        self.history.append(self.last_r)

        if n_improved == len(self.ids):
            self.best = x_new
        elif n_improved:
            self.best = xp.where(_mask(improved, 2, xp=xp, dev=self.dev), x_new, self.best)
        return n_done

    def _classify(self, j, r, thr, scl, improved, trial, factor) -> int:
        """Set the status of the finished row `j`; 1 if its best iterate becomes this one."""
        i = self.ids[j]
        if r <= thr:
            self.status[i] = Status.SUCCESS
            if not improved[j]:
                # Return the iterate that passed the test: an earlier one with a lower
                # residual may have had a smaller scale and not passed it.
                improved[j] = True
                self.h_best[j] = r
                self.h_best_s[j] = scl
                return 1
        elif not r - r == 0.0 or not (trial or r <= factor * self.h_best[j]):
            self.status[i] = Status.DIVERGED
        else:
            self.status[i] = Status.STAGNATED
        return 0

    def hold(self, x, gx, state, x_new, gx_new, state_new):
        """Hold frozen systems fixed (iterate, residual and solver state)."""
        xp, dev = self.xp, self.dev
        frozen = [not a for a in self.live]
        m2 = _mask(frozen, 2, xp=xp, dev=dev)

        def keep_old(new, old):
            if _is_array_leaf(new) and new is not old:
                return xp.where(_mask(frozen, new.ndim, xp=xp, dev=dev), old, new)
            return new

        return (
            xp.where(m2, x, x_new),
            xp.where(m2, gx, gx_new),
            tree_map(keep_old, state_new, state),
        )

    def call(self, callback, x_new):
        """Call ``callback(x, residual)``; rows of finished systems show their best iterate."""
        xp, dev, problem = self.xp, self.dev, self.problem
        x_cb = x_new
        if self.masked:
            x_cb = xp.where(_mask(self.live, 2, xp=xp, dev=dev), x_new, self.best)
        self.x_full = self._scatter(self.x_full, x_cb)
        if problem.batch_axis is None:
            residual = self.last_r[0]
        else:
            residual = xp.asarray(self.last_r, dtype=problem.dtype, device=dev)
        return callback(problem.to_user(self.x_full), residual)

    def overdue(self, it) -> bool:
        """Whether a deferred removal has waited `_MAX_DEFERRAL` iterations."""
        return self.masked and not self.any_frozen and it - self.pending_since >= _MAX_DEFERRAL

    def _scatter(self, full, part):
        """`full` with the rows of the held systems replaced by `part`."""
        if len(self.ids) == self.batch:
            return part
        xp = self.xp
        idx = _scatter_index(self.ids, self.batch, xp=xp, dev=self.dev)
        return xp.take(xp.concat([full, part], axis=0), idx, axis=0)

    def finish(self, x_work, gx_work, state, g, *, it, force=False):
        """Drop (compact) or freeze the rows whose system has finished.

        Compaction copies every working array, so it is deferred while the finished
        rows are few: when every finished row converged, fewer than an eighth of the
        held rows have finished, and the oldest has waited fewer than
        `_MAX_DEFERRAL` iterations, the finished rows stay in the working arrays for
        now. Their results are final (iterate, residual, counts); the rows are merely
        carried along, masked out of every decision, until the next compaction. A row
        that diverged or stagnated leaves at once. Returns the working arrays, the
        solver state and the residual function (None for all once every system left).
        """
        xp, dev, status = self.xp, self.dev, self.status
        done = [status[i] is not None for i in self.ids]
        if not any(done):
            return x_work, gx_work, state, g
        if not self.compact:
            if any(d and a for d, a in zip(done, self.live)):
                self.live = [not d for d in done]
                self.any_frozen = self.masked = True
                m = _mask(done, 2, xp=xp, dev=dev)
                x_work = xp.where(m, self.best, x_work)
                gx_work = xp.where(m, xp.zeros_like(gx_work), gx_work)
            return x_work, gx_work, state, g
        n_done = done.count(True)
        newly = [i for i, d, a in zip(self.ids, done, self.live) if d and a]
        if (
            not force
            and n_done < len(self.ids)
            and _DEFER_FRACTION * n_done < len(self.ids)
            and all(status[i] == Status.SUCCESS for i in newly)
        ):
            if not self.masked:
                self.pending_since = it
            self.live = [not d for d in done]
            self.masked = True
            return x_work, gx_work, state, g
        self.masked = False
        # Finished rows' best iterates go to `best_full` (one gather for all).
        self.best_full = self._scatter(self.best_full, self.best)
        keep = [j for j, d in enumerate(done) if not d]
        self.ids = [self.ids[j] for j in keep]
        self.h_best = [self.h_best[j] for j in keep]
        self.h_best_s = [self.h_best_s[j] for j in keep]
        self.h_best_it = [self.h_best_it[j] for j in keep]
        self.h_r0 = [self.h_r0[j] for j in keep]
        self.h_cap = [self.h_cap[j] for j in keep]
        self.h_thr = [self.h_thr[j] for j in keep]
        self.live = [True] * len(keep)
        if not keep:
            return None, None, None, g
        keep_idx = xp.asarray(keep, dtype=xp.int64, device=dev)

        def take(leaf):
            if _is_array_leaf(leaf):
                return xp.take(leaf, keep_idx, axis=0)
            return leaf

        index = xp.asarray(self.ids, dtype=xp.int64, device=dev)
        g = self.problem.residual_function(index, calls=g.calls)
        self.best = take(self.best)
        return take(x_work), take(gx_work), tree_map(take, state), g

    def close(self, *, held, it, fev, stopped):
        """Write the final values of the systems still held; name the unfinished ones."""
        if held:  # systems still held: their best iterates go to `best_full`
            self.best_full = self._scatter(self.best_full, self.best)
            for j, i in enumerate(self.ids):
                if self.live[j]:
                    self.best_r[i] = self.h_best[j]
                    self.best_s[i] = self.h_best_s[j]
                    self.nit[i] = it
                    self.nfev[i] = fev
        for i in range(self.batch):
            if self.status[i] is None:
                self.status[i] = Status.STOPPED if stopped else Status.MAXITER


def _check_first(problem, r_list, s_list) -> None:
    """Refuse a starting point whose residual (or value of f) is not finite."""
    bad = [i for i, r in enumerate(r_list) if not r - r == 0.0]
    if problem.kind == "fixed_point":
        bad += [i for i, v in enumerate(s_list) if not v - v == 0.0 and i not in bad]
    if bad:
        raise_nonfinite_start(problem, bad)


def raise_nonfinite_start(problem, bad: list[int]) -> None:
    """Raise :class:`~implicitnet._validate.NonFiniteError` (a ``ValueError``) for the
    systems `bad` whose ``f(x0)`` is not finite."""
    name = "f" if problem.kind == "fixed_point" else "F"
    where = "" if problem.batch_axis is None else f" for systems {sorted(bad)[:10]}"
    msg = (
        f"`{name}(x0)` is not finite (it contains NaN or infinity){where}; "
        f"check `{name}` and the starting point `x0`"
    )
    raise NonFiniteError(msg)


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
    overall = Status.worst(status)
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
