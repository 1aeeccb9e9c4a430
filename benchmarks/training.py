"""Training the default DEQ of ``implicitnet train``: implicitnet against torchdeq and
against an unrolled weight-tied network of the same depth.

All rows train the same classifier on the embedded digits (1,438 training and 359 test
images, the fixed seeded split) with the same hyperparameters as ``implicitnet train``
(Adam, cosine schedule, batch 64, variational dropout, 30 epochs by default):

* ``implicitnet DEQ``: ``nn.mlp_deq``; injection ``Linear(64, 64)``, cell
  ``z -> relu(LayerNorm(W z + inj))`` with ``W`` weight-normalised, head
  ``Linear(64, 10)``. Forward: Anderson (m=6), ``rtol=1e-3`` per sample, at most 30
  iterations, finished samples leave the active set. Backward: implicit, GMRES on the
  adjoint system to ``rtol=1e-3``.
* ``torchdeq DEQ``: the same model in PyTorch (``torch.nn.utils.parametrizations
  .weight_norm``, ``LayerNorm``) with ``torchdeq.get_deq(ift=True)``: Anderson forward,
  and Anderson or Broyden on the adjoint (two rows; torchdeq has no GMRES, and its
  Anderson needs about three times Broyden's iterations on this adjoint), all with
  ``tol=1e-3`` in relative mode (``||f(z) - z|| / ||f(z)||``, the same test) and at most
  30 iterations. It starts from the very same parameters, sees the same batches in the
  same order and the same dropout masks. The ratio line compares with the faster row.
* ``unrolled weight-tied``: the same cell applied ``K`` times from ``z = 0`` and
  backpropagated through (an ordinary deep network with tied weights), ``K`` the
  implicitnet DEQ's mean number of forward iterations rounded up.

Every row runs in a fresh subprocess. Reported: seconds per training epoch (mean over
the epochs, test evaluation excluded), the peak memory of the training steps
(``tracemalloc`` peak during one more epoch, for the NumPy rows: it sees NumPy's
buffers but not PyTorch's allocator; and for every row the growth of the process's
peak resident set size during training), the final test accuracy and the
mean forward / backward iterations per sample. Every row runs with the same number of
BLAS/OpenMP threads (``--threads``, default 1: on a small shared machine, extra threads
mostly contend; ``--threads 0`` keeps the libraries' defaults). The resident-set figure is the peak
(``VmHWM``, reset just before training) minus the size at that moment. Same dtype for every row (float64 by
default, as ``implicitnet train``).

Run: ``python benchmarks/training.py [--epochs 30] [--dtype float64] [--seed 0]
[--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np

import implicitnet as inet
from implicitnet import _train, data, nn

HERE = os.path.abspath(__file__)


def _rss_bytes() -> int:
    """Current resident set size; also resets the peak (``VmHWM``) where Linux allows."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    """Peak resident set size since the last reset (``VmHWM``), else since the start."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _config(args) -> dict:
    config = {**_train.COMMON_DEFAULTS, **_train.DEFAULTS["mlp"], "model": "mlp"}
    config.update(epochs=args.epochs, seed=args.seed, dtype=args.dtype)
    return config


def _setup(args):
    config = _config(args)
    ds = _train.load_data(config, backend="numpy")
    rng = nn.generator(config["seed"])
    model = _train.build_model(
        config, rng, in_shape=tuple(ds.x_train.shape[1:]), num_classes=10, backend="numpy"
    )
    return config, ds, rng, model


# -- implicitnet DEQ -------------------------------------------------------------------


def run_implicitnet(args) -> dict:
    config, ds, rng, model = _setup(args)
    optimizer = _train.build_optimizer(config, ds.x_train.shape[0])
    state = optimizer.init(model)
    rss0 = _rss_bytes()
    times, fwd, bwd = [], [], []
    for epoch in range(args.epochs):
        model, state, m = _train.train_epoch(model, optimizer, state, ds, config, epoch, rng)
        times.append(m["seconds"])
        fwd.append(m["fwd_iter"])
        bwd.append(m["bwd_iter"])
    test = _train.evaluate(model, ds.x_test, ds.y_test)
    rss_growth = _max_rss_bytes() - rss0
    tracemalloc.start()
    _train.train_epoch(model, optimizer, state, ds, config, args.epochs, rng)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "epoch_s": float(np.mean(times)),
        "acc": test["accuracy"],
        "fwd": float(np.mean(fwd)),
        "bwd": float(np.mean(bwd)),
        "tracemalloc": peak,
        "rss": rss_growth,
    }


# -- unrolled weight-tied network --------------------------------------------------------


def run_unrolled(args) -> dict:
    config, ds, rng, model = _setup(args)
    optimizer = _train.build_optimizer(config, ds.x_train.shape[0])
    state = optimizer.init(model)
    depth = args.depth

    def forward(model, xb, mask):
        inj = model.injection(xb)
        cell = nn.materialize(model.deq.cell)
        xp = inet.namespace(inj)
        z = xp.zeros(inj.shape, dtype=inj.dtype)
        for _ in range(depth):
            z = cell(z, inj, mask)
        return model.head(z)

    def loss(model, xb, yb, mask):
        return nn.cross_entropy(forward(model, xb, mask), yb)

    loss_grad = inet.value_and_grad(loss)

    def epoch_pass(model, state, epoch):
        t = time.perf_counter()
        for xb, yb in data.batches(
            ds.x_train, ds.y_train, config["batch_size"], seed=config["seed"], epoch=epoch
        ):
            mask = model.mask(xb.shape[0], rng, like=xb)
            _, grads = loss_grad(model, xb, yb, mask)
            model, state = optimizer.update(model, grads, state)
        return model, state, time.perf_counter() - t

    rss0 = _rss_bytes()
    times = []
    for epoch in range(args.epochs):
        model, state, seconds = epoch_pass(model, state, epoch)
        times.append(seconds)
    acc = nn.accuracy(forward(model, ds.x_test, None), ds.y_test)
    rss_growth = _max_rss_bytes() - rss0
    tracemalloc.start()
    epoch_pass(model, state, args.epochs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "epoch_s": float(np.mean(times)),
        "acc": acc,
        "fwd": float(depth),
        "bwd": None,
        "tracemalloc": peak,
        "rss": rss_growth,
    }


# -- torchdeq DEQ ----------------------------------------------------------------------


def run_torchdeq(args) -> dict:
    import torch
    from torch import nn as tnn
    from torch.nn.utils.parametrizations import weight_norm
    from torchdeq import get_deq

    config, ds, rng, model = _setup(args)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(config["seed"])

    def t(a):
        return torch.from_numpy(np.asarray(a)).to(dtype)

    class Cell(tnn.Module):
        def __init__(self, d):
            super().__init__()
            self.linear = weight_norm(tnn.Linear(d, d, bias=False))
            self.norm = tnn.LayerNorm(d, eps=1e-5)

        def forward(self, z, inj, mask):
            out = torch.relu(self.norm(self.linear(z) + inj))
            return out if mask is None else out * mask

    class Classifier(tnn.Module):
        def __init__(self, d):
            super().__init__()
            self.injection = tnn.Linear(64, d)
            self.cell = Cell(d)
            self.head = tnn.Linear(d, 10)
            self.deq = get_deq(
                core="sliced",
                ift=True,
                f_solver="anderson",
                f_max_iter=config["maxiter"],
                f_tol=config["rtol"],
                f_stop_mode="rel",
                b_solver=args.b_solver,
                b_max_iter=config["maxiter"],
                b_tol=config["rtol"],
                b_stop_mode="rel",
            )

        def forward(self, x, mask=None, stats=None):
            inj = self.injection(x)
            z0 = torch.zeros_like(inj)
            writer = None if stats is None else (lambda info: stats.append(info))
            zs, info = self.deq(lambda z: self.cell(z, inj, mask), z0, backward_writer=writer)
            return self.head(zs[-1]), info

    d = config["width"]
    tm = Classifier(d).to(dtype)
    # The same initial parameters as the implicitnet model.
    with torch.no_grad():
        tm.injection.weight.copy_(t(model.injection.weight))
        tm.injection.bias.copy_(t(model.injection.bias))
        lin = model.deq.cell.linear
        tm.cell.linear.parametrizations.weight.original0.copy_(t(lin.g).reshape(d, 1))
        tm.cell.linear.parametrizations.weight.original1.copy_(t(lin.v))
        tm.head.weight.copy_(t(model.head.weight))
        tm.head.bias.copy_(t(model.head.bias))
    n_train = ds.x_train.shape[0]
    steps = config["epochs"] * data.num_batches(n_train, config["batch_size"])
    opt = torch.optim.Adam(tm.parameters(), lr=config["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.0)

    rss0 = _rss_bytes()
    times, fwd, bwd = [], [], []
    for epoch in range(args.epochs):
        tm.train()
        t0 = time.perf_counter()
        f_it, b_it = [], []
        for xb, yb in data.batches(
            ds.x_train, ds.y_train, config["batch_size"], seed=config["seed"], epoch=epoch
        ):
            mask = model.mask(xb.shape[0], rng, like=xb)
            stats = []
            logits, info = tm(t(xb), None if mask is None else t(mask), stats)
            loss = tnn.functional.cross_entropy(logits, torch.from_numpy(yb))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            f_it.append(float(info["nstep"].float().mean()))
            b_it.extend(float(s["nstep"].float().mean()) for s in stats)
        times.append(time.perf_counter() - t0)
        fwd.append(float(np.mean(f_it)))
        bwd.append(float(np.mean(b_it)) if b_it else math.nan)
    tm.eval()
    with torch.no_grad():
        logits, _ = tm(t(ds.x_test))
    acc = float((logits.argmax(-1).numpy() == ds.y_test).mean())
    rss_growth = _max_rss_bytes() - rss0
    return {
        "epoch_s": float(np.mean(times)),
        "acc": acc,
        "fwd": float(np.mean(fwd)),
        "bwd": float(np.mean(bwd)),
        "tracemalloc": None,
        "rss": rss_growth,
        "threads": torch.get_num_threads(),
    }


WORKERS = {"implicitnet": run_implicitnet, "torchdeq": run_torchdeq, "unrolled": run_unrolled}


def _spawn(name: str, args, extra=()) -> dict | None:
    cmd = [sys.executable, HERE, "--worker", name, "--epochs", str(args.epochs)]
    cmd += ["--dtype", args.dtype, "--seed", str(args.seed), *extra]
    env = dict(os.environ)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"[{name} failed]\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--depth", type=int, default=None, help="unrolled depth (default: auto)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/OpenMP threads of every row (0: the libraries' defaults)",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--b-solver", default="anderson", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        warnings.simplefilter("ignore")
        print(json.dumps(WORKERS[args.worker](args)))
        return

    rows = {}
    rows["implicitnet DEQ"] = _spawn("implicitnet", args)
    try:
        import torch
        import torchdeq  # noqa: F401

        have_torchdeq = True
    except ImportError:
        have_torchdeq = False
    if have_torchdeq:
        for b_solver in ("anderson", "broyden"):
            rows[f"torchdeq DEQ ({b_solver} adj.)"] = _spawn(
                "torchdeq", args, ("--b-solver", b_solver)
            )
    depth = args.depth
    if depth is None:
        fwd = rows["implicitnet DEQ"]["fwd"] if rows["implicitnet DEQ"] else 6.0
        depth = math.ceil(fwd)
    rows[f"unrolled weight-tied (K={depth})"] = _spawn("unrolled", args, ("--depth", str(depth)))

    base = rows["implicitnet DEQ"]
    print(
        f"digits, MLP DEQ (width 64), {args.epochs} epochs, batch 64, {args.dtype}, "
        f"seed {args.seed}; {os.cpu_count()} CPUs, "
        + (f"{args.threads} BLAS/OpenMP thread(s) per run" if args.threads else "default threads")
    )
    torch_rows = [r for name, r in rows.items() if name.startswith("torchdeq") and r]
    if torch_rows:
        print(f"torch {torch.__version__} ({torch_rows[0]['threads']} threads)")
    elif not have_torchdeq:
        print("torchdeq not installed: its row is skipped (pip install --no-deps torchdeq)")
    header = (
        f"{'model':<28} {'s/epoch':>8} {'vs implicitnet':>15} {'tracemalloc MiB':>16} "
        f"{'RSS growth MiB':>15} {'test acc':>9} {'fwd it':>7} {'bwd it':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        if r is None:
            print(f"{name:<28} failed (see stderr)")
            continue
        ratio = r["epoch_s"] / base["epoch_s"] if base else math.nan
        bwd = "-" if r["bwd"] is None else f"{r['bwd']:.1f}"
        print(
            f"{name:<28} {r['epoch_s']:>8.2f} {ratio:>14.2f}x {_mib(r['tracemalloc']):>16} "
            f"{_mib(r['rss']):>15} {100 * r['acc']:>8.2f}% {r['fwd']:>7.1f} {bwd:>7}"
        )
    if base and torch_rows:
        r = min(torch_rows, key=lambda row: row["epoch_s"])  # the faster torchdeq setting
        print(
            f"implicitnet / fastest torchdeq time per epoch: {base['epoch_s'] / r['epoch_s']:.2f} "
            f"(aim: <= 0.5); accuracy {100 * base['acc']:.2f}% vs {100 * r['acc']:.2f}%"
        )


if __name__ == "__main__":
    main()
