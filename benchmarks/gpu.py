"""implicitnet on GPU arrays (CuPy, torch-CUDA) beside torchdeq, in one run.

Problem (the one of issue 12): ``z = tanh(z W^T + inj)`` with ``||W||_2 = 3`` (a Gaussian
matrix scaled by its largest singular value, found by power iteration), ``inj = x U^T +
b``, float32, at the sizes ``d x B`` = 512 x 64, 2048 x 1024 and 4096 x 4096. Every
solve stops at a relative residual of ``--rtol`` (default 1e-4) or after 500 iterations.

Tables, each a median of ``--repeats`` warm runs (after one warm-up), timed with
``time.perf_counter`` around a device synchronisation:

1. ``f`` alone: one evaluation of the cell.
2. Forward solves, every method in both modes: ``whole`` (the batch is one system) and
   ``per-sample`` (``batch_axis=0``: every sample its own system; torchdeq's solvers
   are per-sample by construction, and its ``whole`` mode flattens the batch into one
   sample). Columns: status, iterations, f-evaluations (the most any system used, and
   calls of f), the relative residual recomputed on the host in float64 from the
   returned ``z`` (whole: ``||f(z) - z|| / ||f(z)||`` over the batch; per-sample: its
   maximum over the samples), and the median time.
3. Forward + backward by implicit differentiation (Anderson forward, per-sample; the
   default adjoint of implicitnet; torchdeq with ``ift=True`` and an Anderson backward at
   the same tolerance): forward time, forward + backward time and backward / forward.
4. One training step of the conv DEQ of ``implicitnet train --model conv`` (digits,
   the CLI's defaults, float32): implicitnet only (torchdeq has no such model here).

Libraries: on ``--device cuda`` implicitnet on CuPy and on torch-CUDA, and torchdeq on
CUDA; on ``--device cpu`` implicitnet on NumPy and on torch-CPU, and torchdeq on the CPU.
Whatever cannot run (no CuPy, no CUDA, torchdeq not installed, a method torchdeq lacks)
is printed with the reason, and the rest runs.

Usage: ``python benchmarks/gpu.py [--device cuda|cpu] [--quick] [--repeats 3]
[--sizes 512x64,2048x1024]``. ``--quick`` runs Anderson and Broyden only, at 512 x 64 and
4096 x 4096 (CUDA) or 512 x 64 and 1024 x 128 (CPU), with two repeats.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import traceback

import numpy as np
from _common import torchdeq_layer

import implicitnet as inet
from implicitnet import backends

RTOL = 1e-4
MAXITER = 500
NORM_W = 3.0

#: implicitnet method -> torchdeq solver of the same family (None: torchdeq has none).
FAMILIES = {
    "picard": "fixed_point_iter",
    "anderson": "anderson",
    "broyden": "broyden",
    "newton_krylov": None,
}


# ----------------------------------------------------------------------------------
# The problem, on the host
# ----------------------------------------------------------------------------------


def spectral_norm(A, iters=60, seed=0):
    """Largest singular value of `A` by power iteration on ``A^T A`` (float64)."""
    v = np.random.default_rng(seed).standard_normal(A.shape[1])
    s = 0.0
    for _ in range(iters):
        v = A.T @ (A @ v)
        s = np.linalg.norm(v)
        v /= s
    return float(np.sqrt(s))


def make_problem(d, batch, seed=0):
    """``(W^T, inj, ct)`` in float32 on the host; ``ct`` is the backward cotangent."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, d)).astype(np.float32)
    W *= NORM_W / spectral_norm(W.astype(np.float64))
    U = rng.standard_normal((d, d)).astype(np.float32) / np.float32(np.sqrt(d))
    b = 0.1 * rng.standard_normal(d).astype(np.float32)
    x = rng.standard_normal((batch, d)).astype(np.float32)
    inj = (x @ U.T + b).astype(np.float32)
    ct = rng.standard_normal((batch, d)).astype(np.float32)
    return np.ascontiguousarray(W.T), inj, ct


def host_residual(WT64, inj64, z, mode):
    """The relative residual of `z` (host, float64) in the sense of `mode`."""
    z = np.asarray(z, dtype=np.float64)
    fz = np.tanh(z @ WT64 + inj64)
    if mode == "whole":
        return float(np.linalg.norm(fz - z) / np.linalg.norm(fz))
    return float(np.max(np.linalg.norm(fz - z, axis=1) / np.linalg.norm(fz, axis=1)))


# ----------------------------------------------------------------------------------
# Libraries
# ----------------------------------------------------------------------------------


class Lib:
    """One column of the comparison: a library on a backend and device."""

    def __init__(self, label, kind, backend, device):
        self.label = label
        self.kind = kind  # "implicitnet" or "torchdeq"
        self.be = backend
        self.device = device

    def put(self, a):
        return self.be.from_numpy(a, device=self.device)

    def host(self, a):
        return self.be.to_numpy(a)

    def sync(self):
        self.be.synchronize()


def libraries(device):
    """The libraries to compare on `device`, and a list of (label, reason) skipped."""
    libs, skipped = [], []
    first = "cupy" if device == "cuda" else "numpy"
    try:
        libs.append(Lib(f"implicitnet/{first}", "implicitnet", backends.get_backend(first), None))
    except ValueError as exc:
        skipped.append((f"implicitnet/{first}", str(exc)))
    try:
        tb = backends.get_backend("torch")
        if device == "cuda" and not tb.cuda_available():
            raise ValueError("PyTorch sees no CUDA device")
        libs.append(Lib(f"implicitnet/torch-{device}", "implicitnet", tb, device))
        try:
            import torchdeq  # noqa: F401

            libs.append(Lib(f"torchdeq/torch-{device}", "torchdeq", tb, device))
        except ImportError as exc:
            skipped.append(("torchdeq", f"not importable ({exc}; pip install torchdeq)"))
    except ValueError as exc:
        skipped.append((f"implicitnet/torch-{device}", str(exc)))
        skipped.append(("torchdeq", str(exc)))
    return libs, skipped


def timed(lib, fn, repeats):
    """``(median seconds, last result)`` of `fn()` after one warm-up run."""
    out = fn()
    lib.sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        lib.sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


class Counted:
    """``tanh(z W^T + inj)`` counting its calls."""

    def __init__(self, xp):
        self.xp = xp
        self.calls = 0

    def __call__(self, z, WT, inj):
        self.calls += 1
        return self.xp.tanh(z @ WT + inj)


# ----------------------------------------------------------------------------------
# 1.-2. f alone and the forward solves
# ----------------------------------------------------------------------------------


def implicitnet_solve(lib, method, mode, WT, inj, z0):
    xp = lib.be.namespace()
    f = Counted(xp)
    kw = {"batch_axis": 0, "arg_batch_axes": (None, 0)} if mode == "per-sample" else {}
    res = inet.fixed_point(f, z0, (WT, inj), method=method, rtol=RTOL, maxiter=MAXITER, **kw)
    host = backends.backend_of(res.x).to_numpy
    nit = int(np.max(host(res.nit))) if mode == "per-sample" else int(res.nit)
    nfev = int(np.max(host(res.nfev))) if mode == "per-sample" else int(res.nfev)
    ok = bool(res.success)
    return res.x, ("ok" if ok else str(res.status)), nit, nfev, f.calls


def torchdeq_solve(lib, method, mode, WT, inj, z0):
    import torch
    from torchdeq.solver import get_solver

    solver = get_solver(method)
    calls = [0]
    B, d = z0.shape

    if mode == "whole":

        def f(z):
            calls[0] += 1
            return torch.tanh(z.view(B, d) @ WT + inj).view(1, B * d)

        start = z0.reshape(1, B * d)
    else:

        def f(z):
            calls[0] += 1
            return torch.tanh(z @ WT + inj)

        start = z0
    with torch.no_grad():
        z, _, info = solver(f, start, max_iter=MAXITER, tol=RTOL, stop_mode="rel")
    nstep = int(info["nstep"].max())
    ok = bool((info["rel_lowest"] < RTOL).all())
    return z.view(B, d), ("ok" if ok else "unconv."), nstep, calls[0], calls[0]


def forward_table(libs, sizes, methods, repeats, out):
    out(f"\n2. Forward solves (float32, rel. tol {RTOL:g}, maxiter {MAXITER})")
    out(
        f"| {'d x B':<11} | {'library':<24} | {'method':<16} | {'mode':<10} | {'status':<8} | "
        f"{'nit':>4} | {'nfev':>5} | {'calls':>5} | {'rel.res.':>8} | {'ms':>8} |"
    )
    out("|" + "|".join("-" * w for w in (13, 26, 18, 12, 10, 6, 7, 7, 10, 10)) + "|")
    for d, B in sizes:
        size = f"{d}x{B}"
        WT, inj, _ = make_problem(d, B)
        WT64, inj64 = WT.astype(np.float64), inj.astype(np.float64)
        for lib in libs:
            dev = (lib.put(WT), lib.put(inj), lib.put(np.zeros((B, d), np.float32)))
            for method in methods:
                name = method if lib.kind == "implicitnet" else FAMILIES[method]
                if name is None:
                    out(
                        f"| {size:<11} | {lib.label:<24} | {method:<16} | (torchdeq has no "
                        f"{method} solver) |"
                    )
                    continue
                for mode in ("whole", "per-sample"):
                    run = implicitnet_solve if lib.kind == "implicitnet" else torchdeq_solve
                    try:
                        sec, (z, status, nit, nfev, calls) = timed(
                            lib, functools.partial(run, lib, name, mode, *dev), repeats
                        )
                    except Exception as exc:  # report and go on: one failure is one row
                        out(
                            f"| {size:<11} | {lib.label:<24} | {name:<16} | {mode:<10} | "
                            f"FAILED: {type(exc).__name__}: {exc} |"
                        )
                        traceback.print_exc(file=sys.stderr)
                        continue
                    rr = host_residual(WT64, inj64, lib.host(z), mode)
                    out(
                        f"| {size:<11} | {lib.label:<24} | {name:<16} | {mode:<10} | "
                        f"{status:<8} | {nit:>4} | {nfev:>5} | {calls:>5} | {rr:>8.1e} | "
                        f"{1e3 * sec:>8.1f} |"
                    )


def f_table(libs, sizes, repeats, out):
    out("\n1. f alone: one evaluation of tanh(z W^T + inj), float32")
    out(f"| {'d x B':<11} | {'library':<24} | {'ms':>8} |")
    out("|" + "|".join("-" * w for w in (13, 26, 10)) + "|")
    for d, B in sizes:
        size = f"{d}x{B}"
        WT, inj, _ = make_problem(d, B)
        z = 0.5 * np.tanh(inj)
        for lib in libs:
            if lib.kind != "implicitnet":  # the same torch call as implicitnet/torch
                continue
            a, b, c = lib.put(WT), lib.put(inj), lib.put(z)
            sec, _ = timed(lib, functools.partial(_cell, c, a, b), max(5, 4 * repeats))
            out(f"| {size:<11} | {lib.label:<24} | {1e3 * sec:>8.3f} |")


# ----------------------------------------------------------------------------------
# 3. Forward + backward
# ----------------------------------------------------------------------------------


def _cell(z, WT, inj):
    xp = inet.namespace(z, WT, inj)
    return xp.tanh(z @ WT + inj)


def implicitnet_fwd_bwd(lib, WT, inj, z0, ct):
    def loss(WT, inj):
        res = inet.fixed_point(
            _cell, z0, (WT, inj), method="anderson", rtol=RTOL, maxiter=MAXITER, batch_axis=0
        )
        ns = inet.namespace(res.x)
        return ns.sum(res.x * ct)

    return inet.value_and_grad(loss, argnums=(0, 1))(WT, inj)


def implicitnet_fwd(lib, WT, inj, z0, ct):
    return inet.fixed_point(
        _cell, z0, (WT, inj), method="anderson", rtol=RTOL, maxiter=MAXITER, batch_axis=0
    ).x


def torchdeq_jobs(lib, WT, inj, z0, ct):
    import torch

    deq = torchdeq_layer("anderson", f_max_iter=MAXITER, b_max_iter=MAXITER, tol=RTOL)
    leaves = [WT.clone().requires_grad_(), inj.clone().requires_grad_()]

    def forward():
        Wt, it = leaves

        def f(z):
            return torch.tanh(z @ Wt + it)

        z_out, _ = deq(f, torch.zeros_like(z0))
        return z_out[-1]

    def fwd():
        with torch.no_grad():
            return forward()

    def fwd_bwd():
        z = forward()
        return torch.autograd.grad(z, leaves, ct)

    return fwd, fwd_bwd


def backward_table(libs, sizes, repeats, out):
    out(
        "\n3. Forward + backward by implicit differentiation (Anderson forward per sample; "
        "implicitnet: default adjoint; torchdeq: ift=True, Anderson backward, same tol)"
    )
    out(
        f"| {'d x B':<11} | {'library':<24} | {'fwd ms':>8} | {'fwd+bwd ms':>10} | {'bwd/fwd':>7} |"
    )
    out("|" + "|".join("-" * w for w in (13, 26, 10, 12, 9)) + "|")
    for d, B in sizes:
        size = f"{d}x{B}"
        WT, inj, ct = make_problem(d, B)
        for lib in libs:
            args = (lib.put(WT), lib.put(inj), lib.put(np.zeros((B, d), np.float32)), lib.put(ct))
            try:
                if lib.kind == "implicitnet":
                    t_f, _ = timed(lib, functools.partial(implicitnet_fwd, lib, *args), repeats)
                    t_fb, _ = timed(
                        lib, functools.partial(implicitnet_fwd_bwd, lib, *args), repeats
                    )
                else:
                    fwd, fwd_bwd = torchdeq_jobs(lib, *args)
                    t_f, _ = timed(lib, fwd, repeats)
                    t_fb, _ = timed(lib, fwd_bwd, repeats)
            except Exception as exc:
                out(f"| {size:<11} | {lib.label:<24} | FAILED: {type(exc).__name__}: {exc} |")
                traceback.print_exc(file=sys.stderr)
                continue
            ratio = (t_fb - t_f) / t_f
            out(
                f"| {size:<11} | {lib.label:<24} | {1e3 * t_f:>8.1f} | {1e3 * t_fb:>10.1f} | "
                f"{ratio:>7.2f} |"
            )


# ----------------------------------------------------------------------------------
# 4. The conv DEQ's training step
# ----------------------------------------------------------------------------------


def conv_step(lib, config, repeats):
    """``(batch size, median seconds, mean forward iterations)`` of one training step."""
    from implicitnet import _train, nn

    ds = _train.load_data(config, backend=lib.be)
    model = _train.build_model(
        config,
        nn.generator(0),
        in_shape=tuple(ds.x_train.shape[1:]),
        num_classes=ds.num_classes,
        backend=lib.be,
    )
    opt = _train.build_optimizer(config, int(ds.x_train.shape[0]))
    state = opt.init(model)
    n = int(config["batch_size"])
    xb, yb = ds.x_train[:n], ds.y_train[:n]
    loss_grad = inet.value_and_grad(_train._loss, has_aux=True)
    rng = nn.generator(1)

    def step():
        mask = model.mask(n, rng, like=xb)
        (_, (_, res)), grads = loss_grad(model, xb, yb, mask)
        opt.update(model, grads, state)
        return res

    sec, res = timed(lib, step, repeats)
    return n, sec, float(np.mean(lib.be.to_numpy(res.nit)))


def training_table(libs, repeats, out):
    from implicitnet import _train

    out("\n4. One training step of the conv DEQ (`implicitnet train --model conv`, float32)")
    out(f"| {'library':<24} | {'batch':>5} | {'step ms':>8} | {'fwd it':>6} |")
    out("|" + "|".join("-" * w for w in (26, 7, 10, 8)) + "|")
    for lib in libs:
        if lib.kind != "implicitnet":
            continue
        config = {
            **_train.COMMON_DEFAULTS,
            **_train.DEFAULTS["conv"],
            "model": "conv",
            "dtype": "float32",
            "backend": lib.be.name,
        }
        if lib.device is not None:
            lib.be.set_default_device(lib.device)
        try:
            n, sec, nit = conv_step(lib, config, repeats)
            out(f"| {lib.label:<24} | {n:>5} | {1e3 * sec:>8.1f} | {nit:>6.1f} |")
        except Exception as exc:
            out(f"| {lib.label:<24} | FAILED: {type(exc).__name__}: {exc} |")
            traceback.print_exc(file=sys.stderr)
        finally:
            if lib.device is not None:
                lib.be.set_default_device(None)


# ----------------------------------------------------------------------------------


def parse_sizes(text):
    sizes = []
    for part in text.split(","):
        d, _, B = part.partition("x")
        sizes.append((int(d), int(B)))
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="two sizes, two repeats")
    parser.add_argument("--repeats", type=int, default=None, help="default: 3 (quick: 2)")
    parser.add_argument("--sizes", help="comma-separated d x B, e.g. 512x64,2048x1024")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="PyTorch's CPU threads on --device cpu (default 1; set NumPy's BLAS threads "
        "with OPENBLAS_NUM_THREADS to the same number)",
    )
    parser.add_argument(
        "--methods", help=f"default: {','.join(FAMILIES)} (quick: anderson,broyden)"
    )
    parser.add_argument(
        "--tables", default="1,2,3,4", help="which tables to print (default: 1,2,3,4)"
    )
    ns = parser.parse_args(argv)
    repeats = ns.repeats or (2 if ns.quick else 3)
    if ns.sizes:
        sizes = parse_sizes(ns.sizes)
    elif ns.quick:
        sizes = [(512, 64), (4096, 4096)] if ns.device == "cuda" else [(512, 64), (1024, 128)]
    else:
        sizes = [(512, 64), (2048, 1024), (4096, 4096)]
    if ns.methods is None:
        ns.methods = "anderson,broyden" if ns.quick else ",".join(FAMILIES)
    methods = [m for m in ns.methods.split(",") if m]
    unknown = [m for m in methods if m not in FAMILIES]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(FAMILIES)}")
    tables = set(ns.tables.split(","))

    def out(line):
        print(line, flush=True)

    libs, skipped = libraries(ns.device)
    if ns.device == "cpu" and any(lib.be.name == "torch" for lib in libs):
        import torch

        torch.set_num_threads(ns.threads)
    out(f"implicitnet {inet.__version__}; device {ns.device}; sizes {sizes}; repeats {repeats}")
    for lib in libs:
        out(f"  running: {lib.label} (devices: {', '.join(lib.be.devices())})")
    for label, why in skipped:
        out(f"  cannot run: {label}: {why}")
    if not libs:
        return 1
    if "1" in tables:
        f_table(libs, sizes, repeats, out)
    if "2" in tables:
        forward_table(libs, sizes, methods, repeats, out)
    if "3" in tables:
        backward_table(libs, sizes, repeats, out)
    if "4" in tables:
        training_table(libs, repeats, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
