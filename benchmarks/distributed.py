"""Beyond one machine: batched solves on Dask, data-parallel training over MPI.

Table 1 (Dask). 100,000 independent systems ``x = tanh(W x + b_i)`` of size 4 (``W``
shared, spectral norm 0.6; ``b_i`` per system), Anderson to ``rtol=1e-8``, solved

* in memory, all at once (``implicitnet.solvers.fixed_point``): the reference;
* with ``implicitnet.distributed.fixed_point`` on a Dask array cut into chunks along
  the batch axis, on the threaded scheduler and on a ``dask.distributed``
  ``LocalCluster`` of 1 and 2 worker processes (one thread each).

Reported: the median wall time of ``--repeats`` solves (inputs already in the
workers' memory, cluster start-up excluded; the time includes gathering ``x`` and the
per-system fields on the client), the largest difference from the reference ``x``,
whether every system's ``nit`` equals the reference's, and the overhead per chunk:
the slope of wall time against the number of chunks (least squares over the chunk
sizes of that scheduler), i.e. what each extra chunk costs in scheduling, transfer
and per-solve set-up.

Table 2 (MPI). The default models of ``implicitnet train`` (MLP DEQ of width 64 and
convolutional DEQ of width 16, batch 64, float64, digits) trained by
:class:`implicitnet.distributed.DataParallel` under ``mpiexec -n 1`` and ``-n 2``
(global batch 64: 32 per rank on two). Per step: the compute time (forward, backward
and optimizer), the payload of the one all-reduce (bytes), its time inside the
training loop (which includes waiting for the slower rank), and the time of the same
all-reduce alone in a tight loop. Then a fitted latency/bandwidth model of the
all-reduce (``alpha + beta * bytes`` from 8 B to 8 MB) and an estimate of the step
time on 8 and 64 ranks, written out below the table.

Run: ``python benchmarks/distributed.py [--systems 100000] [--repeats 3] [--steps 10]
[--skip-dask] [--skip-mpi]``. Needs the ``distributed`` extra (dask, distributed,
mpi4py) and an ``mpiexec`` (the ``mpich`` wheel provides one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
# This script's name would shadow the `distributed` package (dask.distributed): take
# its directory off the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(HERE)]

import numpy as np  # noqa: E402

# ----------------------------------------------------------------------------------
# Dask
# ----------------------------------------------------------------------------------


def tanh_map(x, b, W):
    return np.tanh(x @ W.T + b)


def _problem(n_sys, n=4, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W *= 0.6 / np.linalg.norm(W, 2)
    b = rng.standard_normal((n_sys, n))
    return W, b


def _median_time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_dask(args):
    import dask
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    from implicitnet import distributed, solvers

    W, b = _problem(args.systems)
    x0 = np.zeros_like(b)
    t_ref, ref = _median_time(
        lambda: solvers.fixed_point(
            tanh_map, x0, (b, W), batch_axis=0, arg_batch_axes=(0, None), rtol=1e-8
        ),
        args.repeats,
    )
    rows = [("in memory (1 process)", "-", 1, t_ref, 0.0, True)]
    b100 = b[:100]
    t_mem_100, _ = _median_time(
        lambda: solvers.fixed_point(
            tanh_map,
            np.zeros_like(b100),
            (b100, W),
            batch_axis=0,
            arg_batch_axes=(0, None),
            rtol=1e-8,
        ),
        5 * args.repeats,
    )
    chunk_sizes = [s for s in (50_000, 10_000, 2_000, 500) if s <= args.systems]

    def solve_with(chunk, compute, systems=None):
        b_d = da.from_array(b if systems is None else b[:systems], chunks=(chunk, 4))
        x0_d = da.zeros_like(b_d)
        b_d, x0_d = compute.persist(b_d, x0_d)
        res = distributed.fixed_point(tanh_map, x0_d, (b_d, W), arg_batch_axes=(0, None), rtol=1e-8)
        return _median_time(lambda: compute.gather(res), args.repeats)

    class Threads:
        name = "threaded scheduler"

        @staticmethod
        def persist(*a):
            return dask.persist(*a, scheduler="threads")

        @staticmethod
        def gather(res):
            return res.compute(scheduler="threads")

    class Cluster:
        def __init__(self, client, name):
            self.client = client
            self.name = name

        def persist(self, *a):
            return self.client.persist(list(a))

        def gather(self, res):
            return res.compute()

    overheads = {}

    def measure(compute, nproc):
        pts = []
        for chunk in chunk_sizes:
            t, out = solve_with(chunk, compute)
            err = float(np.max(np.abs(out.x - ref.x)))
            same_nit = bool(np.all(out.nit == ref.nit))
            rows.append((compute.name, chunk, -(-args.systems // chunk), t, err, same_nit))
            pts.append((-(-args.systems // chunk), t))
        k = np.array([p[0] for p in pts], dtype=float)
        t = np.array([p[1] for p in pts])
        slope = float(np.polyfit(k, t, 1)[0]) if len(pts) > 1 else math.nan
        # Directly: 100 chunks of 100 systems, less 100 in-memory solves of 100.
        t_small, _ = solve_with(100, compute, systems=100 * 100)
        overheads[compute.name] = (slope, t_small / 100 - t_mem_100)

    measure(Threads(), 1)
    fork = {"distributed.worker.multiprocessing-method": "fork"}
    for nproc in (1, 2):
        with (
            dask.config.set(fork),
            LocalCluster(
                n_workers=nproc,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=50,
            ) as cluster,
            Client(cluster) as client,
        ):
            name = f"LocalCluster {nproc} process{'es' if nproc > 1 else ''}"
            measure(Cluster(client, name), nproc)

    print(
        f"\nTable 1. {args.systems:,} systems of size 4 on Dask (Anderson, rtol 1e-8); "
        f"median of {args.repeats}"
    )
    print(
        f"{'engine':<26} {'chunk':>7} {'chunks':>6} {'wall s':>8} {'vs memory':>9} "
        f"{'max |x - ref|':>13} {'nit equal':>9}"
    )
    for name, chunk, nchunks, t, err, same in rows:
        print(
            f"{name:<26} {chunk!s:>7} {nchunks:>6} {t:>8.3f} {t / t_ref:>8.2f}x "
            f"{err:>13.1e} {'yes' if same else 'NO':>9}"
        )
    print(
        "\noverhead per chunk: (a) slope of wall time over the number of chunks above; "
        "(b) 100 chunks of 100 systems,\nwall / 100 less one in-memory solve of 100 "
        f"systems ({1e3 * t_mem_100:.2f} ms)"
    )
    for name, (slope, direct) in overheads.items():
        print(f"  {name:<26} (a) {1e3 * slope:8.2f} ms   (b) {1e3 * direct:8.2f} ms per chunk")


# ----------------------------------------------------------------------------------
# MPI
# ----------------------------------------------------------------------------------


def _training_setup(model_name, **changes):
    """The default training of `model_name` on NumPy, `changes` applied to its config.

    Returns ``(config, data, rng, model, optimizer, optimizer state)``.
    """
    from implicitnet import _train, backends, nn

    be = backends.get_backend("numpy")
    config = {**_train.COMMON_DEFAULTS, **_train.DEFAULTS[model_name], "model": model_name}
    config.update(changes)
    ds = _train.load_data(config, backend=be)
    rng = nn.generator(0)
    in_shape = tuple(int(s) for s in ds.x_train.shape[1:])
    model = _train.build_model(
        config, rng, in_shape=in_shape, num_classes=ds.num_classes, backend=be
    )
    opt = _train.build_optimizer(config, int(ds.x_train.shape[0]))
    return config, ds, rng, model, opt, opt.init(model)


def _mpi_worker(steps):
    """Runs on every rank under mpiexec; rank 0 prints one JSON line."""
    from implicitnet.distributed import DataParallel, data_parallel_epoch

    dp = DataParallel()
    out = {"ranks": dp.size, "models": {}}
    for model_name in ("mlp", "conv"):
        config, ds, rng, model, opt, state = _training_setup(model_name, limit=64 * steps)
        # Warm-up epoch, then the measured one.
        model, state, _ = data_parallel_epoch(model, opt, state, ds, config, 0, rng, dp=dp)
        s0 = (dp.stats.allreduces, dp.stats.bytes, dp.stats.seconds, dp.stats.pack_seconds)
        dp.barrier()
        model, state, m = data_parallel_epoch(model, opt, state, ds, config, 1, rng, dp=dp)
        n_steps = dp.stats.allreduces - s0[0]
        payload = (dp.stats.bytes - s0[1]) // n_steps
        comm = (dp.stats.seconds - s0[2]) / n_steps
        pack = (dp.stats.pack_seconds - s0[3]) / n_steps
        compute = m["seconds"] / n_steps - comm - pack
        # The same all-reduce alone.
        alone = _allreduce_time(dp, payload // 8, 20)
        out["models"][model_name] = {
            "parameters": model.num_parameters(),
            "payload": int(payload),
            "compute": compute,
            "pack": pack,
            "comm_in_loop": comm,
            "comm_alone": alone,
            "steps": n_steps,
        }
    # Latency / bandwidth of the all-reduce from 8 B to 8 MB.
    sizes = [1, 16, 256, 4096, 65536, 1 << 20]
    fit = []
    for n in sizes:
        fit.append((8 * n, _allreduce_time(dp, n, 50 if n < 65536 else 5)))
    out["allreduce"] = fit
    if dp.rank == 0:
        print(json.dumps(out), flush=True)


def _allreduce_time(dp, n, reps):
    """Seconds per all-reduce of `n` float64: the best of 7 batches of `reps` calls
    (the least disturbed by other work on a shared machine)."""
    buf = np.ones(n)
    recv = np.empty_like(buf)
    best = math.inf
    for _ in range(7):
        dp.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            dp.comm.Allreduce(buf, recv)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def _mpiexec() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def run_mpi(args):
    mpiexec = _mpiexec()
    if mpiexec is None:
        print("\nTable 2 skipped: no mpiexec (pip install mpich)")
        return
    results = {}
    for n in (1, 2):
        proc = subprocess.run(
            [
                mpiexec,
                "-n",
                str(n),
                sys.executable,
                HERE,
                "--mpi-worker",
                "--steps",
                str(args.steps),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"mpiexec -n {n} failed")
        results[n] = json.loads(proc.stdout.strip().splitlines()[-1])

    print(
        f"\nTable 2. Data-parallel training over MPI, global batch 64, float64; per step, "
        f"mean of {args.steps} steps"
    )
    print(
        f"{'model':<6} {'params':>7} {'ranks':>5} {'payload':>9} {'compute ms':>10} "
        f"{'pack ms':>8} {'allreduce ms':>12} {'alone ms':>9} {'comm share':>10}"
    )
    for name in ("mlp", "conv"):
        for n in (1, 2):
            r = results[n]["models"][name]
            total = r["compute"] + r["pack"] + r["comm_in_loop"]
            print(
                f"{name:<6} {r['parameters']:>7} {n:>5} {r['payload'] / 1024:>7.1f}KB "
                f"{1e3 * r['compute']:>10.2f} {1e3 * r['pack']:>8.3f} "
                f"{1e3 * r['comm_in_loop']:>12.3f} {1e3 * r['comm_alone']:>9.3f} "
                f"{100 * (r['pack'] + r['comm_in_loop']) / total:>9.1f}%"
            )
    pts = results[2]["allreduce"]
    alpha = pts[0][1]
    beta = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    print(
        "\nall-reduce alone on 2 ranks of this machine (shared memory): "
        + ", ".join(f"{int(b)} B {1e6 * s:.1f} us" for b, s in pts)
    )
    print(
        f"model: alpha = {1e6 * alpha:.1f} us (8 B), beta = {1e9 * beta:.3f} ns/B "
        f"({1 / beta / 1e9:.2f} GB/s, from 8 B to 8 MB)"
    )

    # Estimate for p ranks. Compute: one rank's step at its share of the batch,
    # measured in this process. Communication: a ring all-reduce of B bytes costs
    # 2 (p - 1) alpha + 2 (p - 1) / p * B * beta, plus the packing measured above.
    per_rank = {64: None, 32: None, 8: None, 1: None}
    compute = {
        name: {b: _compute_per_step(name, b, args.steps) for b in per_rank}
        for name in ("mlp", "conv")
    }
    links = {
        "this machine": (alpha, beta),
        "InfiniBand (2 us, 12 GB/s)": (2e-6, 1 / 12e9),
        "10 GbE (30 us, 1.2 GB/s)": (30e-6, 1 / 1.2e9),
    }
    ranks = (2, 8, 64)
    print("\nCompute per step (ms, one process) at the per-rank batch of p ranks:")
    for name in ("mlp", "conv"):
        print(
            f"  {name:<5}"
            + "  ".join(f"batch {b:>2}: {1e3 * compute[name][b]:8.2f}" for b in per_rank)
        )
    for title, batch_of in (
        ("global batch 64 split over p ranks (strong scaling)", lambda p: 64 // p),
        ("64 per rank, global batch 64 p (weak scaling)", lambda p: 64),
    ):
        print(f"\nEstimated step time in ms (speed-up over 1 rank in samples/s), {title}:")
        print(f"{'model':<6} {'link':<27} " + " ".join(f"{'p=' + str(p):>15}" for p in ranks))
        for name in ("mlp", "conv"):
            r1 = results[1]["models"][name]
            payload, pack = r1["payload"], r1["pack"]
            t1 = compute[name][64]
            for link, (a, b) in links.items():
                cells = []
                for p in ranks:
                    comm = 2 * (p - 1) * a + 2 * (p - 1) / p * payload * b + pack
                    step = compute[name][batch_of(p)] + comm
                    speedup = (batch_of(p) * p / step) / (64 / t1)
                    cells.append(f"{1e3 * step:7.2f} ({speedup:4.1f}x)")
                print(f"{name:<6} {link:<27} " + " ".join(f"{c:>15}" for c in cells))


def _compute_per_step(model_name, batch, steps):
    """Seconds per training step of the default `model_name` at `batch` on one process."""
    from implicitnet import _train

    config, ds, rng, model, opt, state = _training_setup(
        model_name, batch_size=batch, limit=batch * steps
    )
    model, state, _ = _train.train_epoch(model, opt, state, ds, config, 0, rng)  # warm-up
    _, _, m = _train.train_epoch(model, opt, state, ds, config, 1, rng)
    return m["seconds"] / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--skip-mpi", action="store_true")
    ap.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mpi_worker:
        _mpi_worker(args.steps)
        return
    if not args.skip_dask:
        run_dask(args)
    if not args.skip_mpi:
        run_mpi(args)


if __name__ == "__main__":
    main()
