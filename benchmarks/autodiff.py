"""Autodiff overhead: MLP 784-512-512-10, batch 256, float32, softmax cross-entropy.

Prints, measured side by side in one run (median of repeated timings):

* forward-only time of raw backend code (no tape),
* implicitnet forward + backward (``value_and_grad``), and its ratio to the raw forward,
* PyTorch forward + backward on the same model and data, and the ratio
  implicitnet / PyTorch, when PyTorch is importable.

A second table shows the per-node Python overhead where arrays are small: a small MLP
(64-128-10, batch 32) ``value_and_grad`` step, and the DEQ adjoint pattern
``vjp(lambda z: tanh(z @ W.T + c), z)`` followed by 30 ``vjp_fn`` calls, each next to
the same arithmetic written by hand on the backend.

A third table counts memory, not time: the bytes a trace keeps between its forward
and its backward pass (:func:`implicitnet.autodiff.tape_summary`) for the unrolled
weight-tied loop ``z <- tanh(z W^T + inj)`` (d=512, batch 64, float32, gradients in
``W`` and ``inj``) at K = 10, 30, 100 steps; the same K iterations of
``fixed_point(..., method="picard", backward="unrolled")``; and PyTorch's saved tensors
on the same loop (counted with ``torch.autograd.graph.saved_tensors_hooks``, views of
one storage once), when PyTorch is importable. On NumPy, the memory the trace really
holds after the forward pass (``tracemalloc``, output excluded) is shown beside the
counts: ``K - 1`` intermediate arrays of 0.13 MB when nothing else is held.

Usage: ``python benchmarks/autodiff.py [--repeat 30] [--backend numpy]``
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
import tracemalloc

import numpy as np

import implicitnet as inet
from implicitnet import backends

WIDTHS = (784, 512, 512, 10)
BATCH = 256


def make_problem(backend, seed=0):
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in itertools.pairwise(WIDTHS):
        W = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        b = np.zeros(n_out, dtype=np.float32)
        params.append((W, b))
    x = rng.standard_normal((BATCH, WIDTHS[0])).astype(np.float32)
    labels = rng.integers(0, WIDTHS[-1], size=BATCH)
    onehot = np.eye(WIDTHS[-1], dtype=np.float32)[labels]
    conv = backend.from_numpy
    return [(conv(W), conv(b)) for W, b in params], conv(x), conv(onehot), (params, x, labels)


def loss_fn(params, x, onehot):
    """Softmax cross-entropy of a tanh MLP, written against the array API only."""
    xp = inet.namespace(x, onehot, *inet.tree_leaves(params))
    h = x
    for i, (W, b) in enumerate(params):
        h = h @ xp.matrix_transpose(W) + b
        if i < len(params) - 1:
            h = xp.tanh(h)
    m = xp.max(h, axis=-1, keepdims=True)
    z = h - m
    logp = z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))
    return -xp.sum(onehot * logp) / h.shape[0]


def timeit_interleaved(fns, repeat, sync):
    """Median time of each function; the functions take turns, so load drifts hit all."""
    for fn in fns:  # warm-up
        fn()
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--backend", default="numpy")
    ns = ap.parse_args(argv)
    backend = backends.get_backend(ns.backend)
    params, x, onehot, (np_params, np_x, labels) = make_problem(backend)
    sync = backend.synchronize
    vg = inet.value_and_grad(loss_fn)

    fns = [lambda: loss_fn(params, x, onehot), lambda: vg(params, x, onehot)]
    torch_line = None
    try:
        import torch
    except ImportError:
        torch_line = "PyTorch not importable: comparison skipped (pip install torch)"
    if torch_line is None and ns.backend == "numpy":
        torch.set_grad_enabled(True)
        tp = [
            (
                torch.from_numpy(W).requires_grad_(),
                torch.from_numpy(b).requires_grad_(),
            )
            for W, b in np_params
        ]
        tx = torch.from_numpy(np_x)
        tl = torch.from_numpy(labels)

        def torch_step():
            h = tx
            for i, (W, b) in enumerate(tp):
                h = h @ W.T + b
                if i < len(tp) - 1:
                    h = torch.tanh(h)
            loss = torch.nn.functional.cross_entropy(h, tl)
            return torch.autograd.grad(loss, [p for wb in tp for p in wb])

        fns.append(torch_step)
        torch_step_ref = torch_step
    elif torch_line is None:
        torch_line = f"PyTorch comparison runs on the numpy backend only (got {ns.backend})"
    times = timeit_interleaved(fns, ns.repeat, sync)
    t_fwd, t_inet = times[:2]
    rows = [
        ("raw forward (no tape)", t_fwd, "1.00x"),
        ("implicitnet fwd+bwd", t_inet, f"{t_inet / t_fwd:.2f}x raw fwd"),
    ]
    if len(times) == 3:
        t_torch = times[2]
        rows.append(("PyTorch fwd+bwd", t_torch, f"implicitnet/PyTorch = {t_inet / t_torch:.2f}"))
        # same loss value and gradients (float32 tolerance)
        ref = torch_step_ref()
        _, g = vg(params, x, onehot)
        got = [backend.to_numpy(a) for wb in g for a in wb]
        err = max(
            float(np.max(np.abs(a - r.numpy())) / (np.max(np.abs(r.numpy())) + 1e-30))
            for a, r in zip(got, ref)
        )
        torch_line = f"max relative gradient difference vs PyTorch: {err:.1e}"
        torch_line += f"  (torch {torch.__version__}, {torch.get_num_threads()} threads)"

    print(
        f"MLP {'-'.join(map(str, WIDTHS))}, batch {BATCH}, float32, backend {ns.backend}, "
        f"median of {ns.repeat}"
    )
    print(f"{'':24s} {'time [ms]':>10s}  ratio")
    for name, t, ratio in rows:
        print(f"{name:24s} {t * 1e3:10.2f}  {ratio}")
    print(torch_line)
    overhead_table(backend, ns.repeat, sync)
    memory_table(backend)


def overhead_table(backend, repeat, sync):
    """Small problems, where Python bookkeeping rather than arithmetic sets the time."""
    xp = backend.namespace()
    rng = np.random.default_rng(1)
    conv = backend.from_numpy
    params = [
        (conv(rng.standard_normal((128, 64)) / 8), conv(np.zeros(128))),
        (conv(rng.standard_normal((10, 128)) / 11), conv(np.zeros(10))),
    ]
    x = conv(rng.standard_normal((32, 64)))
    onehot = conv(np.eye(10)[rng.integers(0, 10, 32)])
    vg = inet.value_and_grad(loss_fn)
    W = conv(rng.standard_normal((128, 128)) / 24)
    c, z, u = (conv(rng.standard_normal((32, 128))) for _ in range(3))
    _, vjp_fn = inet.vjp(lambda z: inet.ops.tanh(z @ xp.matrix_transpose(W) + c), z)

    def deq_reuse():
        for _ in range(30):
            vjp_fn(u)

    def deq_by_hand():  # the same products on raw arrays, the tanh recomputed
        y = xp.tanh(z @ xp.matrix_transpose(W) + c)
        for _ in range(30):
            (u * (1.0 - y * y)) @ W

    fns = [lambda: loss_fn(params, x, onehot), lambda: vg(params, x, onehot)]
    fns += [deq_by_hand, deq_reuse]
    t = timeit_interleaved(fns, repeat, sync)
    print()
    print(f"Small problems (Python overhead), backend {backend.name}, median of {repeat}")
    print(f"{'':36s} {'time [us]':>10s}  ratio")
    print(f"{'MLP 64-128-10 b32: raw forward':36s} {t[0] * 1e6:10.1f}  1.00x")
    print(f"{'MLP 64-128-10 b32: value_and_grad':36s} {t[1] * 1e6:10.1f}  {t[1] / t[0]:.2f}x")
    print(f"{'DEQ 32x128: 30 VJPs by hand':36s} {t[2] * 1e6:10.1f}  1.00x")
    print(f"{'DEQ 32x128: 30 reused vjp_fn calls':36s} {t[3] * 1e6:10.1f}  {t[3] / t[2]:.2f}x")


MEMORY_WIDTH, MEMORY_BATCH, MEMORY_STEPS = 512, 64, (10, 30, 100)
#: Picard forced to exactly `maxiter` iterations (no tolerance can stop it), unrolled.
UNROLLED_PICARD = {"method": "picard", "backward": "unrolled", "rtol": 0.0}


def _memory_problem(seed=2):
    rng = np.random.default_rng(seed)
    d, n = MEMORY_WIDTH, MEMORY_BATCH
    W = (0.9 * rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    inj = (0.1 * rng.standard_normal((n, d))).astype(np.float32)
    return W, inj, np.zeros((n, d), dtype=np.float32)


def _cell(z, W, inj):
    xp = inet.namespace(z, W, inj)
    return xp.tanh(xp.matmul(z, xp.matrix_transpose(W)) + inj)


def torch_saved_bytes(steps, W, inj, z0):
    """Bytes of the distinct storages PyTorch's autograd saves for the unrolled loop."""
    import torch

    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    tW = torch.from_numpy(W).requires_grad_()
    tinj = torch.from_numpy(inj).requires_grad_()
    z = torch.from_numpy(z0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(steps):
            z = torch.tanh(z @ tW.T + tinj)
    nbytes = sum(storages.values())
    z.backward(torch.ones_like(z))  # the graph is complete: its backward runs
    return nbytes, len(storages)


def held_bytes(fn, *args):
    """Bytes that ``vjp(fn, *args)`` leaves allocated, output excluded (``tracemalloc``).

    An independent check of :func:`~implicitnet.autodiff.tape_summary` on NumPy: what
    the trace really holds once the forward pass has returned (the arguments were
    allocated before and are not counted).
    """
    inet.vjp(fn, *args)  # warm caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out, _vjp_fn = inet.vjp(fn, *args)  # (the trace lives while it does)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before - out.nbytes
    finally:
        tracemalloc.stop()


def memory_table(backend):
    """Bytes kept for the backward pass of an unrolled loop, counted (not timed)."""
    W_np, inj_np, z0_np = _memory_problem()
    W, inj, z0 = (backend.from_numpy(a) for a in (W_np, inj_np, z0_np))
    try:
        import torch  # noqa: F401

        have_torch = backend.name == "numpy"
    except ImportError:
        have_torch = False
    print()
    print(
        f"Memory kept for the backward pass: z <- tanh(z W^T + inj), d={MEMORY_WIDTH}, "
        f"batch {MEMORY_BATCH}, float32, grad in W and inj, backend {backend.name}"
    )
    traced = backend.name == "numpy"  # tracemalloc sees NumPy's buffers
    head = f"{'K':>4s} {'loop [MB]':>10s} {'Picard unrolled [MB]':>21s} {'nit':>4s} {'ratio':>6s}"
    if traced:
        head += f" {'held: loop, Picard [MB]':>24s}"
    if have_torch:
        head += f" {'PyTorch [MB]':>13s} {'loop/PyTorch':>13s}"
    print(head)
    for steps in MEMORY_STEPS:

        def loop(W, inj, steps=steps):
            z = z0
            for _ in range(steps):
                z = _cell(z, W, inj)
            return z

        nit = []

        def picard(W, inj, steps=steps, nit=nit):
            res = inet.fixed_point(_cell, z0, (W, inj), maxiter=steps, **UNROLLED_PICARD)
            nit.append(res.nit)
            return res.x

        loop_b = inet.autodiff.tape_summary(inet.vjp(loop, W, inj)[1]).nbytes
        picard_b = inet.autodiff.tape_summary(inet.vjp(picard, W, inj)[1]).nbytes
        row = (
            f"{steps:4d} {loop_b / 1e6:10.2f} {picard_b / 1e6:21.2f} {nit[0]:4d} "
            f"{picard_b / loop_b:6.2f}"
        )
        if traced:
            held = f"{held_bytes(loop, W, inj) / 1e6:.2f}, {held_bytes(picard, W, inj) / 1e6:.2f}"
            row += f" {held:>24s}"
        if have_torch:
            torch_b, _ = torch_saved_bytes(steps, W_np, inj_np, z0_np)
            row += f" {torch_b / 1e6:13.2f} {loop_b / torch_b:13.2f}"
        print(row)


if __name__ == "__main__":
    main()
