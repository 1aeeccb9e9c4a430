"""Implicit differentiation: forward solve vs backward pass of a DEQ cell.

The cell is ``z = tanh(z W^T + x U^T + b)`` with d = 512, batch 64, float32, the
input injection ``x U^T + b`` computed once per solve (as DEQ implementations do);
``W`` is an orthogonal matrix times 0.9 (every singular value 0.9: the slowest-
converging ``W`` of that spectral norm). The forward solve is Anderson at ``rtol=1e-4``, each sample its
own system (``batch_axis=0``). Prints, measured side by side in one run (medians of
interleaved repeats):

1. forward time, backward time and their ratio for every backward mode (implicit with
   each linear solver, phantom, unrolled), the iterations of the forward and of the
   backward solve, and the gradient's relative difference to a tight float64 implicit
   reference;
2. peak memory (tracemalloc, NumPy buffers) of one forward + backward against the
   number of forward iterations (10, 30, 100; Picard forced with ``rtol=0``) for the
   implicit and the unrolled mode;
3. torchdeq's forward and backward times and peak memory on the same problem (same
   weights, Anderson forward, the matching backward solver, tolerances and iteration
   limits, the same number of threads) and the ratio implicitnet / torchdeq, when
   PyTorch and torchdeq are importable.

BLAS runs on ``--threads`` threads (default 1: on a loaded machine a multi-threaded
BLAS call can be slower by orders of magnitude, which would measure the scheduler, not
the code); PyTorch gets the same number.

Usage: ``python benchmarks/implicit.py [--repeat 11] [--threads 1] [--quick]``
"""

from __future__ import annotations

import os
import sys


def _preparse_threads(argv) -> int:
    """`--threads N` must take effect before NumPy loads its BLAS."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 1


_THREADS = _preparse_threads(sys.argv[1:])
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(_THREADS)

import argparse  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from _common import torchdeq_layer, traced_peak  # noqa: E402

import implicitnet as inet  # noqa: E402

D = 512
BATCH = 64
RTOL = 1e-4
FWD_MAXITER = 100
BWD_MAXITER = 100
LINEAR_SOLVERS = ("gmres", "bicgstab", "broyden", "anderson", "neumann")


# ----------------------------------------------------------------------------------
# The problem
# ----------------------------------------------------------------------------------


def make_problem(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    W = 0.9 * Q
    U = 0.5 * rng.standard_normal((D, D)) / np.sqrt(D)
    b = 0.1 * rng.standard_normal(D)
    x = rng.standard_normal((BATCH, D))
    ct = rng.standard_normal((BATCH, D))  # the cotangent dL/dz* pulled back
    return tuple(a.astype(dtype) for a in (W, U, b, x, ct))


def cell(z, W, inj):
    """The DEQ map; ``inj = x U^T + b``, the input injection, is computed once."""
    xp = inet.namespace(z, W, inj)
    return xp.tanh(z @ xp.matrix_transpose(W) + inj)


def injection(U, b, x):
    xp = inet.namespace(U, b, x)
    return x @ xp.matrix_transpose(U) + b


def solve(params, backward, *, method="anderson", rtol=RTOL, maxiter=FWD_MAXITER, box=None):
    W, U, b, x = params
    z0 = np.zeros((x.shape[0], D), dtype=x.dtype)
    res = inet.fixed_point(
        cell,
        z0,
        (W, injection(U, b, x)),
        method=method,
        rtol=rtol,
        maxiter=maxiter,
        batch_axis=0,
        backward=backward,
    )
    if box is not None:
        box["res"] = res
    return res.x


def forward_backward(params, ct, backward, **kw):
    """One forward (taped) and one backward pass, timed separately."""
    box = {}
    t0 = time.perf_counter()
    _, vjp_fn = inet.vjp(lambda *p: solve(p, backward, box=box, **kw), *params)
    t1 = time.perf_counter()
    grads = vjp_fn(ct)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, grads, box["res"]


def backward_modes():
    modes = {
        f"implicit/{name}": inet.ImplicitAdjoint(linear_solver=name, rtol=RTOL, maxiter=BWD_MAXITER)
        for name in LINEAR_SOLVERS
    }
    modes["phantom (5 steps)"] = inet.PhantomAdjoint()
    modes["unrolled"] = "unrolled"
    return modes


def rel_diff(grads, ref) -> float:
    g = np.concatenate([np.ravel(a).astype(np.float64) for a in grads])
    r = np.concatenate([np.ravel(a) for a in ref])
    return float(np.linalg.norm(g - r) / np.linalg.norm(r))


def reference_gradient(problem):
    """Tight float64 implicit gradient (forward and adjoint to 1e-10)."""
    W, U, b, x, ct = (a.astype(np.float64) for a in problem)
    adj = inet.ImplicitAdjoint(linear_solver="gmres", rtol=1e-10, maxiter=2000)
    _, _, grads, res = forward_backward((W, U, b, x), ct, adj, rtol=1e-10, maxiter=1000)
    assert res.success and res.stats["backward"]["success"]
    return grads


def _max(v):
    return int(np.max(np.asarray(v)))


def interleaved(jobs, repeat):
    """Run every job once per round, in rotating order; collect each job's outputs."""
    for job in jobs.values():  # warm-up
        job()
    out = {name: [] for name in jobs}
    names = list(jobs)
    for k in range(repeat):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            gc.collect()
            out[name].append(jobs[name]())
    return out


# ----------------------------------------------------------------------------------
# 1. Times
# ----------------------------------------------------------------------------------


def time_table(problem, ref, repeat):
    W, U, b, x, ct = problem
    params = (W, U, b, x)
    modes = backward_modes()

    def raw_forward():
        t0 = time.perf_counter()
        res = inet.fixed_point(
            cell,
            np.zeros_like(x),
            (W, injection(U, b, x)),
            method="anderson",
            rtol=RTOL,
            maxiter=FWD_MAXITER,
            batch_axis=0,
        )
        return time.perf_counter() - t0, 0.0, None, res

    jobs = {"forward only (no tape)": raw_forward}
    for name, mode in modes.items():
        jobs[name] = lambda mode=mode: forward_backward(params, ct, mode)
    runs = interleaved(jobs, repeat)

    rows = []
    for name, outs in runs.items():
        tf = statistics.median(o[0] for o in outs)
        tb = statistics.median(o[1] for o in outs)
        _, _, grads, res = outs[-1]
        fnit = _max(res.nit)
        if grads is None:
            rows.append((name, tf, None, None, fnit, "", "", ""))
            continue
        stats = res.stats.get("backward")
        bnit = "-" if stats is None else str(_max(stats["nit"]))
        bmv = "-" if stats is None else str(_max(stats["nmatvec"]))
        rows.append((name, tf, tb, tb / tf, fnit, bnit, bmv, f"{rel_diff(grads, ref):.1e}"))
    print(
        f"{'mode':<24} {'forward ms':>10} {'backward ms':>11} {'bwd/fwd':>7} "
        f"{'fwd it':>6} {'bwd it':>6} {'bwd VJPs':>9} {'grad rel.diff':>13}"
    )
    for name, tf, tb, ratio, fnit, bnit, bmv, err in rows:
        tb_s = "-" if tb is None else f"{1e3 * tb:.1f}"
        ratio_s = "-" if ratio is None else f"{ratio:.2f}"
        print(
            f"{name:<24} {1e3 * tf:>10.1f} {tb_s:>11} {ratio_s:>7} {fnit:>6} {bnit:>6} "
            f"{bmv:>9} {err:>13}"
        )
    return runs


# ----------------------------------------------------------------------------------
# 2. Memory vs depth
# ----------------------------------------------------------------------------------


def memory_table(problem, depths):
    W, U, b, x, ct = problem
    params = (W, U, b, x)
    adj = inet.ImplicitAdjoint(linear_solver="gmres", rtol=RTOL, maxiter=BWD_MAXITER)
    modes = {"implicit/gmres": adj, "unrolled": "unrolled"}
    peaks = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", inet.ConvergenceWarning)
        for name, mode in modes.items():
            for n in depths:
                peaks[name, n] = traced_peak(
                    lambda mode=mode, n=n: forward_backward(
                        params, ct, mode, method="picard", rtol=0.0, maxiter=n
                    )[2]
                )
    state = x.nbytes
    print(
        f"(tracemalloc peak of one forward+backward, Picard forced to n iterations; one "
        f"state z is {state / 2**20:.3f} MiB, W is {W.nbytes / 2**20:.1f} MiB)"
    )
    head = "".join(f"{f'n={n} MiB':>12}" for n in depths)
    print(f"{'mode':<16}{head}{f'n={depths[-1]} / n={depths[0]}':>16}")
    for name in modes:
        cols = "".join(f"{peaks[name, n] / 2**20:>12.2f}" for n in depths)
        ratio = peaks[name, depths[-1]] / peaks[name, depths[0]]
        print(f"{name:<16}{cols}{ratio:>16.2f}")
    return peaks


# ----------------------------------------------------------------------------------
# 3. torchdeq
# ----------------------------------------------------------------------------------

#: Backward solver pairs: implicitnet linear solver <-> torchdeq b_solver.
TORCHDEQ_PAIRS = (("anderson", "anderson"), ("broyden", "broyden"), ("neumann", "fixed_point_iter"))


def torch_peak(torch, fn) -> int | None:
    """Peak bytes of tensors allocated during `fn` (PyTorch's memory profiler, CPU)."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    stderr = os.dup(2)  # the profiler logs its start and stop on stderr
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
    # Every allocation and free is one "[memory]" record with a signed byte count: the
    # running sum in time order is the memory in use, its maximum the peak.
    try:
        records = prof.profiler.kineto_results.events()
    except AttributeError:  # the profiler's internals moved: no figure rather than a wrong one
        return None
    deltas = sorted((e.start_ns(), e.nbytes()) for e in records if e.name() == "[memory]")
    current = peak = 0
    for _, delta in deltas:
        current += delta
        peak = max(peak, current)
    return peak


def torchdeq_table(problem, ref, repeat, threads):
    try:
        import torch
        import torchdeq  # noqa: F401 (is it importable?)
    except ImportError as exc:
        print(f"skipped: PyTorch and torchdeq are not both importable ({exc})")
        return None
    torch.set_num_threads(threads)
    W, U, b, x, ct = problem
    tW, tU, tb, tx, tct = (torch.from_numpy(a.copy()) for a in problem)
    params = (W, U, b, x)

    def make_torch_job(b_solver):
        deq = torchdeq_layer(b_solver, f_max_iter=FWD_MAXITER, b_max_iter=BWD_MAXITER, tol=RTOL)
        leaves = [t.clone().requires_grad_() for t in (tW, tU, tb, tx)]
        Wt, Ut, bt, xt = leaves

        def job():
            info_b = {}
            t0 = time.perf_counter()
            inj = xt @ Ut.T + bt

            def f(z):
                return torch.tanh(z @ Wt.T + inj)

            z_out, info = deq(f, torch.zeros_like(xt), backward_writer=info_b.update)
            t1 = time.perf_counter()
            grads = torch.autograd.grad(z_out[-1], leaves, tct)
            t2 = time.perf_counter()
            return t1 - t0, t2 - t1, [g.numpy() for g in grads], (info, info_b)

        return job

    jobs = {}
    for ours, theirs in TORCHDEQ_PAIRS:
        adj = inet.ImplicitAdjoint(linear_solver=ours, rtol=RTOL, maxiter=BWD_MAXITER)
        jobs["implicitnet", ours] = lambda adj=adj: forward_backward(params, ct, adj)
        jobs["torchdeq", theirs] = make_torch_job(theirs)
    runs = interleaved(jobs, repeat)
    # Peak memory of one forward + backward: tracemalloc for implicitnet (NumPy
    # buffers), PyTorch's memory profiler for torchdeq (tensor storage).
    mem = {
        key: (traced_peak(job) if key[0] == "implicitnet" else torch_peak(torch, job))
        for key, job in jobs.items()
    }

    print(
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}; forward "
        f"Anderson (m=6) at rel. tol {RTOL:g} in both; backward solver below, same tol"
    )
    print(
        f"{'library':<12} {'bwd solver':<17} {'fwd ms':>7} {'bwd ms':>7} {'bwd/fwd':>7} "
        f"{'fwd it':>6} {'bwd it':>6} {'peak MiB':>8} {'grad rel.diff':>13}"
    )
    summary = {}
    for (lib, solver), outs in runs.items():
        tf = statistics.median(o[0] for o in outs)
        tb = statistics.median(o[1] for o in outs)
        summary[lib, solver] = (tf, tb)
        _, _, grads, extra = outs[-1]
        if lib == "implicitnet":
            fnit = _max(extra.nit)
            bnit = _max(extra.stats["backward"]["nit"])
        else:
            info, info_b = extra
            fnit = _max(info["nstep"].numpy())
            bnit = _max(info_b["nstep"].numpy()) if "nstep" in info_b else -1
        m_s = "n/a" if mem[lib, solver] is None else f"{mem[lib, solver] / 2**20:.2f}"
        print(
            f"{lib:<12} {solver:<17} {1e3 * tf:>7.1f} {1e3 * tb:>7.1f} {tb / tf:>7.2f} "
            f"{fnit:>6} {bnit:>6} {m_s:>8} {rel_diff(grads, ref):>13.1e}"
        )
    print("ratio implicitnet / torchdeq (time; lower is better for implicitnet):")
    for ours, theirs in TORCHDEQ_PAIRS:
        (f1, b1), (f2, b2) = summary["implicitnet", ours], summary["torchdeq", theirs]
        print(
            f"  {ours:>8} vs {theirs:<16} forward {f1 / f2:.2f}   backward {b1 / b2:.2f}   "
            f"total {(f1 + b1) / (f2 + b2):.2f}"
        )
    return runs


# ----------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11, help="timed rounds (median)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads")
    ap.add_argument("--quick", action="store_true", help="3 rounds, depths 10 and 30")
    ns = ap.parse_args(argv)
    repeat = 3 if ns.quick else ns.repeat
    depths = (10, 30) if ns.quick else (10, 30, 100)

    problem = make_problem()
    print(
        f"implicitnet {inet.__version__}, numpy {np.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"BLAS threads {_THREADS}"
    )
    print(
        f"z = tanh(z W^T + x U^T + b), d={D}, batch {BATCH}, float32, ||W||_2 = 0.9 "
        f"(orthogonal x 0.9); forward Anderson rtol={RTOL:g}; backward rtol={RTOL:g}, "
        f"maxiter={BWD_MAXITER}; medians of {repeat} interleaved rounds"
    )
    ref = reference_gradient(problem)
    print("\n1. Forward vs backward time per backward mode")
    time_table(problem, ref, repeat)
    print("\n2. Peak memory vs forward iterations")
    memory_table(problem, depths)
    print("\n3. torchdeq on the same problem")
    torchdeq_table(problem, ref, repeat, _THREADS)


if __name__ == "__main__":
    main()
