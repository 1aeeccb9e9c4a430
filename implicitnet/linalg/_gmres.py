"""Restarted GMRES, batched: many independent systems advance with array operations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._batch import BatchLayout
from .._validate import check_int
from .._xp import device, is_tensor, set_index, small_solve, vector_norm
from ._base import (
    CODE_BREAKDOWN,
    CODE_DIVERGED,
    CODE_STAGNATED,
    AbstractBatchedLinearSolver,
    _Outcome,
    _Problem,
    initial_residual,
    int_zeros,
)
from ._forms import function_form

__all__ = ["GMRES", "gmres"]


@dataclass(frozen=True, kw_only=True)
class GMRES(AbstractBatchedLinearSolver):
    """Restarted GMRES(`restart`), right-preconditioned, batched.

    The most robust of the linear solvers: within a cycle the residual never grows, at
    the cost of `restart` stored basis vectors per system.

    Parameters
    ----------
    restart : int, default: 20
        Krylov subspace dimension between restarts (capped at the number of unknowns).
    maxiter : int, optional
        Maximum total number of inner (Arnoldi) iterations, summed over restart cycles.
        Each inner iteration costs one product with ``A``; every restart cycle costs one
        more, to recompute the true residual. Default: ``10 * restart``.
    M : callable, array or object with ``matvec``, optional
        Right preconditioner, ``M(r)`` approximating ``A^{-1} r``: GMRES solves
        ``A M u = b`` and returns ``x = M u``, so the residual it monitors is the true
        one.

    See Also
    --------
    gmres : The function form.
    BiCGSTAB : Short recurrences, constant memory per iteration.

    Notes
    -----
    One cycle builds an orthonormal basis ``V`` of the Krylov space
    ``K_m(A, r0) = span{r0, A r0, ..., A^{m-1} r0}`` by Arnoldi, giving
    ``A V_m = V_{m+1} Hbar_m`` with ``Hbar_m`` upper Hessenberg, and picks
    ``x = x0 + V_m y`` minimising ``norm(beta e1 - Hbar_m y)``, ``beta = norm(r0)``
    [1]_. The basis is orthogonalised by classical Gram-Schmidt with selective
    re-orthogonalisation: per system, a running estimate of the loss of orthogonality
    (``(loss + eps) * norm(A v) / h_{j+1,j}`` after one pass) triggers a second pass
    when it would exceed ``sqrt(eps)`` [2]_, so the basis stays orthogonal to about
    ``sqrt(eps)`` at the cost of one pass on most iterations. A pass is two batched
    matrix products: ``w = A v`` is written into the next slot of the basis, so the
    first product gives both the projections ``h = V^T w`` and ``norm(w)``; then
    ``h_{j+1,j}^2 = norm(w)^2 - norm(h)^2`` (Pythagoras), trusted while
    ``(loss + eps) * norm(w)^2 < sqrt(eps) * h_{j+1,j}^2`` (which also rules out a
    second pass), and the second product forms the next basis vector
    ``(w - V h) / h_{j+1,j}`` directly. Otherwise (also for a zero or non-finite
    product) ``w - V h`` and its norm are computed explicitly. Givens rotations reduce
    ``Hbar_m`` to triangular form one column at a time; the last rotated right-hand side
    entry is the residual norm, so convergence is checked after every product with ``A``
    without forming ``x``. At the end of a cycle the small least-squares problem is
    solved by one batched QR factorisation and the true residual ``b - A x`` is
    recomputed; a cycle that does not lower it stops the system (``"stagnated"``, or
    ``"breakdown"`` when the Krylov space became singular).

    With `batch_axis`, all systems advance together (one batched product with ``A``
    per iteration); each keeps its own rotations and its own iteration count, and a
    converged system stops contributing: its solution uses only the Krylov vectors
    built before it converged.

    References
    ----------
    .. [1] Y. Saad and M. H. Schultz, "GMRES: A generalized minimal residual algorithm
       for solving nonsymmetric linear systems", SIAM J. Sci. Stat. Comput. 7 (1986).
    .. [2] J. W. Daniel, W. B. Gragg, L. Kaufman and G. W. Stewart, "Reorthogonalization
       and stable algorithms for updating the Gram-Schmidt QR factorization", Math.
       Comp. 30 (1976); L. Giraud, J. Langou and M. Rozloznik, "The loss of
       orthogonality in the Gram-Schmidt orthogonalization process", Comput. Math.
       Appl. 50 (2005).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> solver = inet.linalg.GMRES(rtol=1e-10, restart=10)
    >>> res = solver.solve(np.array([[3.0, 1.0], [1.0, 2.0]]), np.array([1.0, 0.0]))
    >>> np.round(res.x, 6)
    array([ 0.4, -0.2])
    """

    rtol: float = 1e-6
    atol: float = 0.0
    restart: int = 20
    maxiter: int | None = None
    M: Any = None
    callback: Callable[[Any], None] | None = None

    def __post_init__(self):
        super().__post_init__()
        check_int(self.restart, "restart", minimum=1)

    def run(self, problem: _Problem, tol: Any, *, xp: Any) -> _Outcome:
        """Restarted GMRES on `problem` (internal layout); see :func:`_gmres`."""
        maxiter = 10 * self.restart if self.maxiter is None else self.maxiter
        return _gmres(
            problem,
            tol=tol,
            restart=self.restart,
            maxiter=maxiter,
            callback=self.callback,
            xp=xp,
        )


gmres = function_form(
    GMRES,
    summary="Solve ``A x = b`` by restarted GMRES, given only ``v -> A v``.",
    returns="""
``nit`` counts inner iterations; ``nfev`` includes one product per restart cycle
(the true residual). Unlike
:func:`scipy.sparse.linalg.gmres`, `maxiter` counts inner iterations, not cycles.
""",
    see_also="bicgstab, neumann, broyden, anderson : The other matrix-free solvers.",
    notes="""
A right-hand side of zero gives ``x = 0`` at once. A system that does not converge
returns ``success=False`` with the iterate of smallest true residual and status
``"maxiter"`` (or ``"stagnated"`` when a restart cycle made no progress,
``"breakdown"`` when the Krylov space became singular). See :class:`GMRES`.
""",
    examples="""
>>> A = np.array([[3.0, 1.0], [1.0, 2.0]])
>>> res = inet.linalg.gmres(lambda v: A @ v, np.array([1.0, 0.0]))
>>> bool(res.success)
True
>>> np.allclose(A @ res.x, [1.0, 0.0])
True
""",
)


def _gmres(
    p: _Problem,
    *,
    tol,
    restart: int,
    maxiter: int,
    callback,
    xp,
    exact_residual: bool = True,
    greedy: bool = False,
) -> _Outcome:
    """Restarted GMRES on the internal ``(B, n)`` layout.

    Internal options (for :class:`~implicitnet.solvers.NewtonKrylov`):

    exact_residual
        True: every cycle ends with the true residual ``b - A x`` (one product with
        ``A``), which decides convergence and stagnation. False: the residual is taken
        from the Arnoldi relation, ``r = V_{m+1} (beta e1 - Hbar y)``, at no product;
        the returned `residual` is that estimate.
    greedy
        True: a system that reaches its tolerance keeps iterating (its residual only
        decreases) as long as some other system of the batch still needs products with
        ``A``, which are computed on the whole batch anyway.
    """
    b = p.b
    B, n = b.shape
    dtype, dev = b.dtype, device(b)
    eps = float(xp.finfo(dtype).eps)
    restart = min(restart, n)
    matvec, precond = p.matvec, p.precond

    x, r, nfev = initial_residual(p, xp=xp)
    zeros = xp.zeros_like(b)
    rnorm = vector_norm(r, axis=-1, xp=xp)
    converged = rnorm <= tol
    code = int_zeros(B, like=b, xp=xp)
    nit = int_zeros(B, like=b, xp=xp)
    history = [rnorm]
    total = 0
    # Every slot of the basis buffer is written before it is read: no need to fill it
    # (except for autodiff tensors, whose `set_index` is a `where` over the whole buffer).
    alloc = xp.zeros if is_tensor(b) else xp.empty
    Vbuf = alloc((B, restart + 1, n), dtype=dtype, device=dev)
    ones = xp.ones((B,), dtype=dtype, device=dev)
    fzeros = xp.zeros((B,), dtype=dtype, device=dev)
    finf = xp.full((B,), float("inf"), dtype=dtype, device=dev)
    no = xp.zeros((B,), dtype=xp.bool, device=dev)
    tiny = float(xp.finfo(dtype).smallest_normal)
    sqrt_eps = eps**0.5
    every = slice(None)

    while total < maxiter:
        running = ~(converged | (code != 0))
        if not bool(xp.any(running)):
            break
        beta = rnorm
        v = r / xp.where(running, beta, ones)[:, None]
        if not bool(xp.all(running)):
            v = xp.where(running[:, None], v, zeros)
        # The basis lives in one preallocated (B, restart + 1, n) buffer, written one
        # vector at a time with `set_index` (in place on raw arrays, out of place on
        # autodiff tensors); the projections onto all previous vectors are batched
        # matrix products over its leading rows. Nothing returned aliases it: the
        # update ``y V`` is a fresh array.
        V = set_index(Vbuf, (every, 0), v, xp=xp)
        # Givens rotations G_{j-1} ... G_0 =: Q turn Hbar triangular. Only the last row u
        # of Q is needed while iterating (the pivot of the next rotation is u . h), and it
        # obeys u <- [-s u, c]: O(j) work per iteration, no Python loop over rotations.
        u = xp.ones((B, 1), dtype=dtype, device=dev)
        h_cols, hn_cols = [], []
        # Per-iteration flags, reduced once per cycle (fewer small operations per step).
        live_log, singular_log = [], []
        bad_any = no
        est = rnorm  # residual estimate |g_j|, the rotated right-hand side entry
        live = running
        # Rows that are not live get zero basis vectors (`livef`) and never ask for the
        # careful path (`dead`).
        livef = xp.astype(live, dtype)
        dead = xp.where(live, fzeros, finf)
        orth = fzeros
        steps = min(restart, maxiter - total)
        for j in range(steps):
            z = V[:, j, :]
            w = matvec(z if precond is None else precond(z))
            # Arnoldi by classical Gram-Schmidt. The product goes into the next slot of
            # the basis, so one batched product over slots 0..j+1 gives both the
            # projections h = V_j^T w and ||w||^2.
            V = set_index(V, (every, j + 1), w, xp=xp)
            Vk = V[:, : j + 2, :]
            hh = xp.vecdot(Vk, w[:, None, :])
            h = hh[:, : j + 1]
            h0sq = hh[:, j + 1]
            # ||w - V_j h||^2 by Pythagoras. Its error is about (orth + eps) h0^2, with
            # `orth` the estimated loss of orthogonality of the basis so far (per
            # system), so it is trusted while (orth + eps) h0^2 < sqrt(eps) hn^2: then
            # also the loss after one pass, (orth + eps) h0 / hn, is below sqrt(eps) and
            # no re-orthogonalisation is due. Otherwise (or for a non-finite or zero
            # product) the careful path below forms w - V_j h explicitly.
            hnsq = h0sq - xp.vecdot(h, h)
            err = orth + eps
            fast = bool(xp.all(err * h0sq - sqrt_eps * hnsq - dead < 0))
            if fast:
                # The next basis vector (w - V_j h) / hn as one batched product over
                # slots 0..j+1, with coefficients [-h, 1] / hn (zero for rows not live).
                hn = xp.sqrt(xp.maximum(hnsq, tiny))
                inv = livef / hn
                coef = xp.concat([-h, ones[:, None]], axis=1) * inv[:, None]
                v_next = (coef[:, None, :] @ Vk)[:, 0, :]
                orth = xp.maximum(orth, err * xp.sqrt(h0sq) * inv)
                # New rotation from the pivot a = (Q h)_j = u . h and h_{j+1,j}:
                # c = a / rho, s = h_{j+1,j} / rho, rho = sqrt(a^2 + h_{j+1,j}^2); the
                # residual estimate becomes s |g_j|. Here rho >= hn > eps^(1/4) h0.
                a = xp.vecdot(u, h)
                irho = (a * a + hn * hn) ** -0.5
                s = hn * irho
                c = a * irho
                est = xp.where(live, est * s, est)
                singular = no
            else:
                v_next, h, hn, s, c, est, orth, singular, bad, happy = _careful_step(
                    V, w, h, h0sq, u, j, est, orth, err, live, livef, xp=xp
                )
                bad_any = bad_any | (live & bad)
            u = xp.concat([u * -s[:, None], c[:, None]], axis=1)
            h_cols.append(h)
            hn_cols.append(hn)
            live_log.append(live)
            singular_log.append(singular)
            changed = not fast
            if not fast:
                # A non-finite product zeroed w, so it counts as a happy breakdown here.
                live = live & ~(happy | singular)
            if not greedy:
                live = live & (est > tol)
                changed = True
            if changed:
                livef = xp.astype(live, dtype)
                dead = xp.where(live, fzeros, finf)
            history.append(est)
            total += 1
            if callback is not None:
                callback(est if p.batched else est[0])
            # The next vector is stored even at the end of the cycle: the residual from
            # the Arnoldi relation needs all m + 1 of them.
            V = set_index(V, (every, j + 1), v_next, xp=xp)
            needed = live & (est > tol) if greedy else live
            if j + 1 == steps or not bool(xp.any(needed)):
                break

        # Least squares on the cycle, min ||beta e1 - Hbar y|| over each system's own k
        # useful columns, by one batched QR. Columns past k are replaced by the unit
        # vectors e_{i+1}: they are orthogonal to the first k columns (rows > k of
        # those are zero, Hbar being Hessenberg) and to e1, so their coefficients vanish
        # and the first k solve the truncated problem.
        m = len(h_cols)
        was_live = xp.stack(live_log, axis=0)  # (m, B)
        steps_taken = xp.sum(xp.astype(was_live, nit.dtype), axis=0)
        nit = nit + steps_taken
        nfev = nfev + steps_taken
        # Krylov vectors used by each system: its live, non-singular iterations (a
        # prefix of the cycle, since a system that stops stays stopped).
        sing = xp.stack(singular_log, axis=0)
        k = xp.sum(xp.astype(was_live & ~sing, nit.dtype), axis=0)
        code = xp.where(bad_any, CODE_DIVERGED, code)
        singular_seen = xp.any(was_live & sing, axis=0) & ~bad_any
        Hbar = xp.stack(
            [
                xp.concat(
                    [hc, hn[:, None], xp.zeros((B, m - i - 1), dtype=dtype, device=dev)],
                    axis=1,
                )
                for i, (hc, hn) in enumerate(zip(h_cols, hn_cols))
            ],
            axis=2,
        )
        outside = xp.arange(m, device=dev)[None, :] >= k[:, None]
        shift = xp.eye(m + 1, m, k=-1, dtype=dtype, device=dev)
        Hbar = xp.where(outside[:, None, :], shift, Hbar)
        Qh, Rh = xp.linalg.qr(Hbar)
        y = small_solve(Rh, beta[:, None] * Qh[:, 0, :], xp=xp)
        dx = (y[:, None, :] @ V[:, :m, :])[:, 0, :]
        if precond is not None:
            dx = precond(dx)
        x_new = x + dx
        if exact_residual:
            r_new = b - matvec(x_new)
            nfev = nfev + xp.astype(running, nfev.dtype)
            rnorm_new = vector_norm(r_new, axis=-1, xp=xp)
            # Keep the better iterate (GMRES is monotone in exact arithmetic; rounding
            # or a non-finite operator value may break that).
            improved = running & (rnorm_new < rnorm)
            code = xp.where(running & ~xp.isfinite(rnorm_new), CODE_DIVERGED, code)
        else:
            # The residual of the Arnoldi relation, r = V_{m+1} t with
            # t = beta e1 - Hbar y (no product with A). Its norm is the rotated
            # estimate; it is formed only when another cycle follows.
            improved = running & ~bad_any & (est < rnorm)
            if total < maxiter and bool(xp.any(improved & (est > tol))):
                e1 = xp.reshape(xp.eye(m + 1, 1, dtype=dtype, device=dev), (1, m + 1))
                t = beta[:, None] * e1 - (Hbar @ y[:, :, None])[:, :, 0]
                r_new = (t[:, None, :] @ V[:, : m + 1, :])[:, 0, :]
                rnorm_new = vector_norm(r_new, axis=-1, xp=xp)
            else:
                r_new, rnorm_new = r, est
        if bool(xp.all(improved)):
            x, r, rnorm = x_new, r_new, rnorm_new
        else:
            x = xp.where(improved[:, None], x_new, x)
            r = xp.where(improved[:, None], r_new, r)
            rnorm = xp.where(improved, rnorm_new, rnorm)
        history[-1] = xp.where(running, rnorm, history[-1])
        converged = rnorm <= tol
        # A cycle that did not lower the true residual will not do better when repeated.
        stuck = running & ~improved & ~converged & (code == 0)
        code = xp.where(stuck, CODE_STAGNATED, code)
        code = xp.where(stuck & singular_seen, CODE_BREAKDOWN, code)

    return _Outcome(
        x=x,
        residual=rnorm,
        converged=converged,
        nit=nit,
        nfev=nfev,
        history=history,
        code=code,
        stats={"iterations": total},
    )


def _careful_step(V, w, h, h0sq, u, j, est, orth, err, live, livef, *, xp):
    """One Arnoldi step the careful way (see :func:`_gmres`): w - V_j h formed
    explicitly, a second Gram-Schmidt pass where the loss of orthogonality calls for it
    [2]_, and the breakdown cases (non-finite, invariant subspace, singular rotation).

    Returns ``(v_next, h, hn, s, c, est, orth, singular, bad, happy)``.
    """
    eps = float(xp.finfo(h0sq.dtype).eps)
    ones = xp.ones_like(h0sq)
    zeros = xp.zeros_like(h0sq)
    Vj = V[:, : j + 1, :]
    bad = ~xp.isfinite(h0sq)
    if bool(xp.any(bad)):
        # A non-finite product: that system stops (status "diverged") and its row is
        # zeroed so the others are unaffected.
        w = xp.where(bad[:, None], xp.zeros_like(w), w)
        h0sq = xp.where(bad, zeros, h0sq)
        h = xp.vecdot(Vj, w[:, None, :])
    w = w - (h[:, None, :] @ Vj)[:, 0, :]
    hnsq = xp.vecdot(w, w)
    h0 = xp.sqrt(h0sq)
    hn = xp.sqrt(hnsq)
    # Selective second pass: the loss of orthogonality of the new vector after one pass
    # is about (orth + eps) h0 / hn; a second pass when it would exceed sqrt(eps) for a
    # system still iterating ("twice is enough").
    need = live & (err * err * h0sq > eps * hnsq)
    if bool(xp.any(need)):
        h2 = xp.vecdot(Vj, w[:, None, :])
        w = w - (h2[:, None, :] @ Vj)[:, 0, :]
        h = h + h2
        hn1 = hn
        hnsq = xp.vecdot(w, w)
        hn = xp.sqrt(hnsq)
        # What is left after two passes: err^2 h0 / hn, plus the rounding of the second
        # pass, eps hn1 / hn.
        loss = (err * err * h0 + eps * hn1) / xp.where(hn > 0, hn, ones)
    else:
        loss = err * h0 / xp.where(hn > 0, hn, ones)
    orth = xp.where(live & (hn > 0), xp.maximum(orth, loss), orth)
    # Happy breakdown: A v_j lies in the Krylov space, which is then invariant and the
    # least-squares solution exact (SciPy's test: h_{j+1,j} <= eps ||A v||).
    happy = hn <= eps * h0
    hn = xp.where(happy, zeros, hn)
    v_next = w * (livef / xp.where(happy, ones, hn))[:, None]
    # The rotation as in the fast path; rho ~ 0 means the triangular factor is
    # singular: column j cannot reduce the residual. "~ 0" must allow for the rounding
    # error of the pivot a = u . h, which is not one eps h0: `a` sums j + 1 products of
    # projections (dot products of n terms) with rotation factors that carry the
    # rounding of every earlier rotation, and its last bits depend on the summation
    # order of the dot products (BLAS kernel, CPU). A pivot of a few eps h0 taken as
    # non-singular makes the least-squares solve divide by it, and the cycle returns
    # garbage. So: singular below (j + 2 + sqrt(n)) eps h0 and, at a happy breakdown
    # (hn = 0, the pivot is a alone and claims an exact solution), below sqrt(eps) h0:
    # an invariant Krylov space on which A is that ill-conditioned is numerically
    # singular, and the rounding of `a` is amplified by the earlier rotations.
    a = xp.vecdot(u, h)
    rho = xp.sqrt(a * a + hnsq)
    floor = xp.where(happy, eps**0.5 * h0, (j + 2 + Vj.shape[-1] ** 0.5) * eps * h0)
    singular = rho <= floor
    safe_rho = xp.where(singular, ones, rho)
    c = xp.where(singular, ones, a / safe_rho)
    s = xp.where(singular, zeros, hn / safe_rho)
    est = xp.where(live & ~singular, est * s, est)
    return v_next, h, hn, s, c, est, orth, singular, bad, happy


def _gmres_operator(matvec, b, bnorm, *, tol, restart: int, maxiter: int, xp, **options):
    """GMRES on a ``(B, n)`` operator, no validation: :func:`gmres_rows` with the whole
    per-system outcome (residuals, convergence, status codes), as the tests read it.

    `matvec` maps ``(B, n)`` to ``(B, n)`` arrays, `b` is finite with row norms
    `bnorm`, `tol` the per-system threshold ``(B,)``; `options` are those of
    :func:`_gmres`. Returns the :class:`_Outcome` (internal layout).
    """
    p = _Problem(b, None, matvec, None, BatchLayout(tuple(b.shape), 0), True, bnorm)
    return _gmres(p, tol=tol, restart=restart, maxiter=maxiter, callback=None, xp=xp, **options)


def gmres_rows(
    matvec: Callable[[Any], Any],
    b: Any,
    bnorm: Any,
    *,
    tol: Any,
    restart: int,
    maxiter: int,
    xp: Any,
    exact_residual: bool = True,
    greedy: bool = False,
) -> tuple[Any, Any]:
    """GMRES on ``B`` systems stored as rows, without argument checks: a building block.

    The inner linear solver of Newton–Krylov methods (:class:`implicitnet.solvers
    .NewtonKrylov` uses it): each row of `b` is one system ``A_i x_i = b_i``, solved to
    its own threshold. Nothing is validated or reshaped, so the caller owns the layout.

    Parameters
    ----------
    matvec : callable
        Maps a ``(B, n)`` array of row vectors ``v_i`` to the ``(B, n)`` array of
        ``A_i v_i``.
    b : array, shape (B, n)
        Right-hand sides, finite.
    bnorm : array, shape (B,)
        Their Euclidean row norms.
    tol : array, shape (B,)
        Per-system residual thresholds (absolute).
    restart, maxiter : int
        As in :class:`GMRES`.
    xp : namespace
        The array namespace of `b`.
    exact_residual, greedy : bool
        As in :class:`GMRES`.

    Returns
    -------
    x : array, shape (B, n)
        The approximate solutions.
    iterations : int
        The inner iterations run (the largest over the systems).
    """
    out = _gmres_operator(
        matvec,
        b,
        bnorm,
        tol=tol,
        restart=restart,
        maxiter=maxiter,
        exact_residual=exact_residual,
        greedy=greedy,
        xp=xp,
    )
    return out.x, out.stats["iterations"]
