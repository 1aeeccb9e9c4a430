"""How low can solver overhead go in NumPy? An idealised Anderson loop on the DEQ cell.

The problem of ``benchmarks/solvers.py`` (``z = tanh(z W^T + inj)``, d=512, batch 64,
float64, the hard case), solved by a hand-written type-II Anderson iteration (m=6) that
does only what the method needs: preallocated ring buffers, ``out=`` arguments (which
the array API does not offer), no safeguards, no best-iterate tracking, no active set,
one host read of the residual norms per iteration. Its share of time outside ``f`` is
a floor for any NumPy implementation of the method at this size; a bare Picard loop
(``f``, ``f - z``, two norms) is printed for reference. Compare with the ``ovh.``
column of ``benchmarks/solvers.py``.

Run: ``OPENBLAS_NUM_THREADS=1 python benchmarks/overhead_floor.py [--repeats 9]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from solvers import make_problem


def picard(WT, inj, iters):
    z = np.zeros_like(inj)
    tf = 0.0
    t0 = time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        fz = np.tanh(z @ WT + inj)
        tf += time.perf_counter() - t
        g = fz - z
        np.stack([np.sqrt(np.vecdot(g, g)), np.sqrt(np.vecdot(fz, fz))]).tolist()
        z = fz
    return time.perf_counter() - t0, tf


def anderson(WT, inj, iters, *, per_sample, m=6, lam=1e-8):
    batch, d = inj.shape
    rows, n = (batch, d) if per_sample else (1, batch * d)
    z = np.zeros((rows, n))
    Y = np.zeros((rows, m, n))
    G = np.zeros((rows, m, n))
    H = np.zeros((rows, m, m))
    S = np.zeros((rows, m))
    g = np.empty((rows, n))
    shift = lam * np.eye(m)
    slots = np.arange(m)
    tf = 0.0
    t0 = time.perf_counter()
    for k in range(iters):
        t = time.perf_counter()
        fz = np.reshape(np.tanh(np.reshape(z, (batch, d)) @ WT + inj), (rows, n))
        tf += time.perf_counter() - t
        np.subtract(fz, z, out=g)
        r = np.sqrt(np.vecdot(g, g))
        np.stack([r, np.sqrt(np.vecdot(fz, fz))]).tolist()  # the convergence read
        p = k % m
        Y[:, p] = fz
        G[:, p] = g
        h = np.matmul(G, g[:, :, None])[:, :, 0]
        H[:, p, :] = h
        H[:, :, p] = h
        S[:, p] = 1.0 / np.where(r > 0, r, 1.0)
        s = S if k >= m - 1 else np.where(slots <= k, S, 0.0)
        C = H * (s[:, :, None] * s[:, None, :]) + shift
        y = s * np.linalg.solve(C, s[:, :, None])[:, :, 0]
        alpha = y / y.sum(axis=1, keepdims=True)
        np.matmul(alpha[:, None, :], Y, out=z[:, None, :])
    return time.perf_counter() - t0, tf


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--iters", type=int, default=58, help="iterations per run")
    ns = parser.parse_args(argv)
    WT, inj = make_problem(-1.5, 0.9)  # the hard case
    runs = {
        "bare Picard loop": lambda: picard(WT, inj, ns.iters),
        "ideal Anderson, whole batch": lambda: anderson(WT, inj, ns.iters, per_sample=False),
        "ideal Anderson, per sample": lambda: anderson(WT, inj, ns.iters, per_sample=True),
    }
    print(f"{'loop':30s} {'wall ms':>8s} {'f ms':>8s} {'outside f':>10s}")
    for name, run in runs.items():
        results = [run() for _ in range(ns.repeats)]
        wall = statistics.median(w for w, _ in results)
        share = statistics.median(1 - f / w for w, f in results)
        f_ms = statistics.median(f for _, f in results)
        print(f"{name:30s} {wall * 1e3:8.1f} {f_ms * 1e3:8.1f} {share:10.0%}")


if __name__ == "__main__":
    main()
