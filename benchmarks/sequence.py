"""Character-level language modelling on ``pydoc_data.topics``: a transformer DEQ against
the same block unrolled, an explicit transformer and n-gram models.

Rows of the first table (all trained on the same windows, in the same order, with Adam,
``--warmup`` steps of linear warm-up and a cosine decay over the same number of steps,
gradients clipped to the global norm ``--clip-norm``, float32 by default, NumPy; every
epoch cuts the training text into windows at another offset):

* ``DEQ (implicit, jac-reg w)``: ``nn.transformer_deq``, one weight-tied
  ``TransformerCell`` (causal multi-head attention, GELU MLP of ``4 d`` units, two layer
  norms, the embedded tokens plus sinusoidal positions injected into every
  application), the equilibrium found by Anderson (``rtol``, at most ``maxiter``
  iterations), gradients by the implicit function theorem (GMRES on the adjoint), with
  ``w * ||df/dz||_F^2 / size`` (one Hutchinson probe,
  :func:`implicitnet.jacobian_regularization`) added to the loss.
* ``unrolled tied (K)``: the same block, the same initial weights, applied ``K`` times
  from ``z = 0`` and backpropagated through; ``K`` is the DEQ's mean number of forward
  iterations over training, rounded (then it trains after the DEQ), or
  ``--unrolled-depth`` (then it trains beside it; the table says "given").
* ``explicit untied (L x d')``: ``L`` transformer blocks with their own weights, width
  ``d'`` chosen so that the parameter count is as close as possible to the DEQ's.
* ``n-gram (order n)``: counts of the training text with add-alpha smoothing; the order
  (1 to 10) and alpha (0.001 to 1) are chosen on the validation split.
* ``n-gram interp.``: the same counts with interpolated absolute discounting (every
  order down to the uniform distribution, discount ``D``), a much stronger count model;
  order and ``D`` chosen on the validation split.

Reported: test bits per character (every test character once, from at least half a
window of context: the scoring of ``implicitnet train``), parameters, training seconds
(wall clock and process CPU time of the worker, evaluation excluded), mean forward
iterations and unconverged training windows, and the test bits per character of the
same runs at the steps of ``--eval-at``. Then the peak memory (``tracemalloc``: NumPy's
buffers) of one training step (forward + backward) of the DEQ and of the unrolled block
against the forward depth (Picard forced to ``n`` iterations), and the forward
iterations per batch over the first ``--noreg-steps`` steps of the DEQ and of the same
DEQ trained without Jacobian regularisation (``--plot`` draws them).

Run: ``python benchmarks/sequence.py [--steps 2000] [--width 128] [--heads 4]
[--seq-len 64] [--batch-size 32] [--lr 3e-3] [--warmup 100] [--clip-norm 1]
[--jac-reg 0.1] [--noreg-steps 500] [--unrolled-depth K] [--jobs 2] [--threads 1]
[--plot PATH]``. The defaults take about an hour on two cores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import os
import sys
import time
import warnings
from collections import Counter


def _threads(n: int) -> None:
    if n > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)


if __name__ == "__main__":  # before NumPy is imported
    _pre = argparse.ArgumentParser(add_help=False)
    _pre.add_argument("--threads", type=int, default=1)
    _threads(_pre.parse_known_args()[0].threads)

import numpy as np  # noqa: E402
from _common import traced_peak  # noqa: E402

import implicitnet as inet  # noqa: E402
from implicitnet import data, nn, optim  # noqa: E402
from implicitnet._train_seq import evaluate_lm  # noqa: E402  (the CLI's scoring)
from implicitnet.autodiff import value_and_grad  # noqa: E402

LN2 = math.log(2.0)
# Weight of the Jacobian regularisation of the DEQ row (its effect: the last table).
JAC_REG = 0.1


# ----------------------------------------------------------------------------------
# n-gram baseline
# ----------------------------------------------------------------------------------


def ngram_counts(train: str, order: int) -> tuple[Counter, Counter]:
    """Counts of the `order`-grams of `train` and of their contexts (the first ``order - 1``)."""
    k = order - 1
    joint = Counter(train[i - k : i + 1] for i in range(k, len(train)))
    ctx = Counter(train[i - k : i] for i in range(k, len(train)))
    return joint, ctx


def ngram_bpc(counts, text: str, order: int, alpha: float, vocab: int) -> float:
    """Bits per character of `text` under the add-`alpha` n-gram model of `counts`.

    ``p(c | h) = (N(h c) + alpha) / (N(h) + alpha V)``, with ``h`` the ``order - 1``
    preceding characters; every character of `text` from the ``order``-th on is scored.
    """
    joint, ctx = counts
    k = order - 1
    total = 0.0
    for i in range(k, len(text)):
        c = text[i - k : i]
        total -= math.log2((joint[text[i - k : i + 1]] + alpha) / (ctx[c] + alpha * vocab))
    return total / (len(text) - k)


NGRAM_ORDERS = tuple(range(1, 11))
NGRAM_ALPHAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def best_ngram(train: str, valid: str, test: str, vocab: int):
    """The test bpc of the (order, alpha) of the grid that is best on `valid`."""
    best = None
    for order in NGRAM_ORDERS:
        counts = ngram_counts(train, order)
        for alpha in NGRAM_ALPHAS:
            v = ngram_bpc(counts, valid, order, alpha, vocab)
            if best is None or v < best[0]:
                best = (v, order, alpha, counts)
    _, order, alpha, counts = best
    return ngram_bpc(counts, test, order, alpha, vocab), order, alpha


def interpolated_ngram_bpc(tables, text: str, order: int, discount: float, vocab: int):
    """Bits per character of `text` under interpolated absolute discounting.

    With ``N`` the training counts, ``h`` a context and ``h'`` it without its first
    character, ``p_k(c | h) = max(N(h c) - D, 0) / N(h) + D T(h) / N(h) p_{k-1}(c | h')``
    (``T(h)``: the number of distinct characters seen after ``h``), from the uniform
    ``p = 1 / V`` up to order `order`; an unseen context passes the lower order on.
    """
    total = 0.0
    k0 = order - 1
    for i in range(k0, len(text)):
        p = 1.0 / vocab
        for k in range(order):
            joint, ctx, types = tables[k]
            h = text[i - k : i]
            n = ctx[h]
            if n:
                p = (max(joint[h + text[i]] - discount, 0.0) + discount * types[h] * p) / n
        total -= math.log2(p)
    return total / (len(text) - k0)


def best_interpolated_ngram(train: str, valid: str, test: str, vocab: int):
    """The test bpc of the (order, discount) of the grid that is best on `valid`."""
    tables = []
    for order in NGRAM_ORDERS:
        joint, ctx = ngram_counts(train, order)
        types = Counter(g[:-1] for g in joint)
        tables.append((joint, ctx, types))
    best = min(
        (interpolated_ngram_bpc(tables, valid, order, d, vocab), order, d)
        for order in NGRAM_ORDERS
        for d in (0.5, 0.75, 0.9)
    )
    _, order, d = best
    return interpolated_ngram_bpc(tables, test, order, d, vocab), order, d


# ----------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------


def _ce(logits, targets):
    xp = inet.namespace(logits)
    v = int(logits.shape[-1])
    return nn.cross_entropy(xp.reshape(logits, (-1, v)), xp.reshape(targets, (-1,)))


def _cell(z, cell, x):
    return cell(z, x)


def make_loss(jac_reg: float):
    def loss(model, xb, yb, seed):
        x = model.injection(xb)
        z, res = model.body(x)
        ce = _ce(model.head(model.norm(z)), yb)
        if jac_reg <= 0:
            return ce, (ce, res)
        jr = inet.jacobian_regularization(_cell, z, (nn.materialize(model.body.cell), x), seed=seed)
        return ce + jac_reg * jr, (ce, res)

    return loss


def train(model, codes, args, *, jac_reg: float = 0.0, evaluate=None, stop=None):
    """Train for ``args.steps`` batches of windows of the training text `codes`.

    Adam at peak rate ``args.lr``, ``args.warmup`` steps of linear warm-up, then cosine
    decay to 0 at ``args.steps``; gradients clipped to the global norm ``args.clip_norm``
    (0: not clipped). Every epoch cuts the text into windows at another offset (as
    ``implicitnet train`` does), then shuffles them. `stop` ends the run early (the
    schedule still spans ``args.steps``).

    Returns ``(model, seconds, cpu_seconds, iters, unconverged, curve)``: the wall-clock
    and process CPU seconds of training (evaluation excluded), the per-batch mean
    forward iterations, the per-batch numbers of training windows whose forward solve
    did not converge, and ``curve[step] = evaluate(model)`` at the steps of ``args.eval_at`` and
    at the last step.
    """
    stop = args.steps if stop is None else stop
    loss_grad = value_and_grad(make_loss(jac_reg), has_aux=True)
    schedule = optim.cosine_schedule(args.lr, args.steps, warmup_steps=min(args.warmup, args.steps))
    opt = optim.Adam(lr=schedule)
    if args.clip_norm > 0:
        opt = optim.ClipByGlobalNorm(inner=opt, max_norm=args.clip_norm)
    state = opt.init(model)
    eval_at = {s for s in args.eval_at if s < stop} if evaluate is not None else set()
    iters, curve = [], {}
    unconverged = []
    step = epoch = 0
    skip_wall = skip_cpu = 0.0  # time spent evaluating, not training
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", inet.ConvergenceWarning)
        while step < stop:
            offset = (17 * epoch) % args.seq_len
            x, y = data.text_sequences(codes, args.seq_len, offset=offset)
            for xb, yb in data.batches(x, y, args.batch_size, seed=args.seed, epoch=epoch):
                (_, (_, res)), grads = loss_grad(model, xb, yb, step)
                model, state = opt.update(model, grads, state)
                iters.append(float(np.mean(res.nit)))
                unconverged.append(int(np.sum(~np.asarray(res.converged))))
                step += 1
                if step in eval_at:
                    e0, f0 = time.perf_counter(), time.process_time()
                    curve[step] = evaluate(model)
                    skip_wall += time.perf_counter() - e0
                    skip_cpu += time.process_time() - f0
                if step >= stop:
                    break
            epoch += 1
    wall = time.perf_counter() - t0 - skip_wall
    cpu = time.process_time() - c0 - skip_cpu
    if evaluate is not None:
        curve[step] = evaluate(model)
    return model, wall, cpu, iters, unconverged, curve


def test_bpc(model, codes, args) -> float:
    """Bits per character of the test text, scored as ``implicitnet train`` scores it.

    Windows of ``args.seq_len`` overlapping by half; every character is scored once, from
    at least half a window of context (``implicitnet._train_seq.evaluate_lm``).
    """
    config = {"seq_len": args.seq_len, "limit": args.test_windows or None}
    return evaluate_lm(model, codes, config, batch_size=256)["bpc"]


def matched_width(target: int, vocab: int, depth: int, heads: int, args) -> int:
    best = None
    for d in range(heads * 2, 4 * args.width + 1, heads * 2):
        p = nn.transformer_stack(vocab, depth=depth, dim=d, num_heads=heads).num_parameters()
        if best is None or abs(p - target) < abs(best[1] - target):
            best = (d, p)
    return best[0]


def build(kind: str, vocab: int, args, *, depth: int = 1, width: int | None = None):
    """A model of the table: ``"deq"``, ``"tied"`` (`depth` applications of one block)
    or ``"explicit"`` (`depth` untied blocks of width `width`)."""
    kw = {"num_heads": args.heads, "seed": args.seed, "dtype": args.dtype}
    if kind == "deq":
        return nn.transformer_deq(vocab, dim=args.width, **kw, rtol=args.rtol, maxiter=args.maxiter)
    if kind == "tied":
        return nn.transformer_stack(vocab, depth=depth, dim=args.width, tied=True, **kw)
    return nn.transformer_stack(vocab, depth=depth, dim=width, **kw)


def run_row(spec: dict) -> dict:
    """Build, train and test one model of the table (also in a worker process)."""
    args = argparse.Namespace(**spec["args"])
    corpus = data.load_text()
    model = build(spec["kind"], corpus.vocab_size, args, depth=spec["depth"], width=spec["width"])
    model, wall, cpu, iters, unconv, curve = train(
        model,
        corpus.train,
        args,
        jac_reg=spec["jac_reg"],
        stop=spec.get("stop"),
        evaluate=lambda m: test_bpc(m, corpus.test, args),
    )
    return {
        "params": model.num_parameters(),
        "wall": wall,
        "cpu": cpu,
        "iters": iters,
        "unconverged": unconv,
        "curve": curve,
    }


# ----------------------------------------------------------------------------------
# memory against depth
# ----------------------------------------------------------------------------------


def step_peak(model, xb, yb) -> int:
    """tracemalloc peak (bytes) of one forward + backward of the cross-entropy."""
    loss_grad = value_and_grad(make_loss(0.0), has_aux=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", inet.ConvergenceWarning)
        return traced_peak(lambda: loss_grad(model, xb, yb, 0))


def memory_rows(vocab, xb, yb, depths, *, dim, heads, seed=0):
    """Peaks of the DEQ (Picard forced to n iterations) and of the unrolled block, per n."""
    rows = {}
    for n in depths:
        deq = nn.transformer_deq(
            vocab,
            dim=dim,
            num_heads=heads,
            seed=seed,
            method="picard",
            rtol=0.0,
            maxiter=n,
            backward_options={"rtol": 1e-3, "maxiter": 20},
        )
        tied = nn.transformer_stack(vocab, depth=n, dim=dim, num_heads=heads, tied=True, seed=seed)
        rows[n] = (step_peak(deq, xb, yb), step_peak(tied, xb, yb))
    return rows


# ----------------------------------------------------------------------------------


def _run_all(specs: dict, tied_spec, jobs: int) -> dict:
    """Run the rows of `specs` (name -> spec), then ``tied_spec(deq_result)``, on `jobs`
    worker processes (1: in this process, one after the other)."""
    if jobs <= 1:
        out = {name: run_row(spec) for name, spec in specs.items()}
        if "tied" not in out:
            out["tied"] = run_row(tied_spec(out["deq"]))
        return out
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {name: pool.submit(run_row, spec) for name, spec in specs.items()}
        if "tied" not in futures:
            futures["tied"] = pool.submit(run_row, tied_spec(futures["deq"].result()))
        return {name: f.result() for name, f in futures.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="training batches per model")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--clip-norm", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--rtol", type=float, default=1e-2)
    p.add_argument("--maxiter", type=int, default=20)
    p.add_argument("--jac-reg", type=float, default=JAC_REG)
    p.add_argument(
        "--noreg-steps",
        type=int,
        default=500,
        help="steps of the DEQ trained again without Jacobian regularisation (0: skip)",
    )
    p.add_argument("--explicit-depth", type=int, default=2)
    p.add_argument(
        "--unrolled-depth",
        type=int,
        default=0,
        help="depth of the unrolled row; 0: the DEQ's mean forward iterations, rounded "
        "(the unrolled model then trains after the DEQ, not beside it)",
    )
    p.add_argument("--test-windows", type=int, default=0, help="0: every test window")
    p.add_argument(
        "--eval-at",
        default="250,500,1000",
        help="steps at which the test bpc is also measured (the steps -> bpc table)",
    )
    p.add_argument("--depths", default="10,25,50,100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per process")
    p.add_argument("--jobs", type=int, default=2, help="models trained at once (processes)")
    p.add_argument("--plot", default=None, help="PNG of forward iterations per batch")
    args = p.parse_args(argv)
    args.eval_at = [int(s) for s in args.eval_at.split(",") if s.strip()]
    if args.noreg_steps:  # the DEQ's test bpc where its unregularised twin stops
        args.eval_at = sorted({*args.eval_at, min(args.noreg_steps, args.steps)})

    corpus = data.load_text()
    vocab = corpus.vocab_size
    x, y = data.text_sequences(corpus.train, args.seq_len)
    epochs = args.steps * args.batch_size / x.shape[0]
    print(
        f"pydoc_data.topics (Python {sys.version.split()[0]}): {len(corpus.vocab)} symbols; "
        f"train {corpus.train.shape[0]} / valid {corpus.valid.shape[0]} / test "
        f"{corpus.test.shape[0]} characters; windows of {args.seq_len}; {args.steps} steps "
        f"of {args.batch_size} windows per model ({epochs:.1f} epochs); Adam, lr "
        f"{args.lr:g}, {args.warmup} warm-up steps, cosine, clip {args.clip_norm:g}; "
        f"{args.dtype}; test: every character once, with >= {args.seq_len // 2} of context"
    )

    t0, c0 = time.perf_counter(), time.process_time()
    texts = [corpus.decode(np.asarray(a).tolist()) for a in (corpus.train, corpus.valid)]
    test_text = corpus.decode(np.asarray(corpus.test).tolist())
    ng, order, alpha = best_ngram(texts[0], texts[1], test_text, vocab)
    t_ng, c_ng = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    ng2, order2, disc = best_interpolated_ngram(texts[0], texts[1], test_text, vocab)
    t_ng2, c_ng2 = time.perf_counter() - t0, time.process_time() - c0

    d2 = matched_width(
        build("deq", vocab, args).num_parameters(), vocab, args.explicit_depth, args.heads, args
    )
    base = {"args": vars(args), "depth": 1, "width": args.width, "jac_reg": 0.0}
    specs = {
        "deq": {**base, "kind": "deq", "jac_reg": args.jac_reg},
        "explicit": {**base, "kind": "explicit", "depth": args.explicit_depth, "width": d2},
    }
    if args.noreg_steps:
        specs["noreg"] = {**base, "kind": "deq", "stop": min(args.noreg_steps, args.steps)}

    def tied_spec(deq):
        depth = args.unrolled_depth or max(1, round(float(np.mean(deq["iters"]))))
        return {**base, "kind": "tied", "depth": depth}

    if args.unrolled_depth:  # known now: trains beside the DEQ
        specs = {"deq": specs["deq"], "tied": tied_spec(None), **specs}
    w0 = time.perf_counter()
    out = _run_all(specs, tied_spec, args.jobs)
    print(f"(trained in {time.perf_counter() - w0:.0f} s wall on {max(1, args.jobs)} processes)")
    depth = tied_spec(out["deq"])["depth"]
    rows = [
        (f"DEQ (implicit, jac-reg {args.jac_reg:g})", out["deq"]),
        (f"unrolled tied ({depth}{', given' if args.unrolled_depth else ''})", out["tied"]),
        (f"explicit untied ({args.explicit_depth} x {d2})", out["explicit"]),
    ]
    counts = [
        (f"n-gram (order {order}, alpha {alpha:g})", ng, t_ng, c_ng),
        (f"n-gram interp. (order {order2}, D {disc:g})", ng2, t_ng2, c_ng2),
    ]

    print()
    print(
        f"{'model':<34} {'test bpc':>8} {'params':>8} {'train s':>8} {'cpu s':>8} "
        f"{'fwd it':>7} {'unconv':>7}"
    )
    for name, r in rows:
        its = f"{np.mean(r['iters']):.1f}" if name.startswith("DEQ") else "-"
        unc = str(sum(r["unconverged"])) if name.startswith("DEQ") else "-"
        print(
            f"{name:<34} {r['curve'][args.steps]:>8.3f} {r['params']:>8} {r['wall']:>8.1f} "
            f"{r['cpu']:>8.1f} {its:>7} {unc:>7}"
        )
    for name, bpc, secs, cpu in counts:
        print(f"{name:<34} {bpc:>8.3f} {'-':>8} {secs:>8.1f} {cpu:>8.1f} {'-':>7} {'-':>7}")
    deq_bpc = out["deq"]["curve"][args.steps]
    print(
        f"DEQ - explicit: {deq_bpc - out['explicit']['curve'][args.steps]:+.3f} bpc "
        f"(aim: within 0.05); DEQ - n-gram: {deq_bpc - ng:+.3f}, DEQ - interpolated "
        f"n-gram: {deq_bpc - ng2:+.3f} (aim: clearly below 0)"
    )

    print()
    steps = [s for s in args.eval_at if s < args.steps] + [args.steps]
    print("test bpc against training steps (the same runs)")
    print(f"{'steps':<34}" + "".join(f"{s:>8}" for s in steps))
    for name, r in rows:
        print(f"{name:<34}" + "".join(f"{r['curve'][s]:>8.3f}" for s in steps))

    print()
    depths = [int(s) for s in args.depths.split(",")]
    xb, yb = x[:4], y[:4]
    mem = memory_rows(vocab, xb, yb, depths, dim=args.width, heads=args.heads, seed=args.seed)
    print(
        "peak memory of one training step (tracemalloc, MiB; float64; 4 windows; DEQ: Picard "
        "forced to n iterations, implicit backward; unrolled: the block applied n times)"
    )
    print(f"{'forward depth n':<16}" + "".join(f"{n:>9}" for n in depths))
    for k, label in ((0, "DEQ (implicit)"), (1, "unrolled tied")):
        print(f"{label:<16}" + "".join(f"{mem[n][k] / 2**20:>9.2f}" for n in depths))

    if "noreg" in out:
        print()
        n = min(args.noreg_steps, args.steps)
        reg_its, plain_its = out["deq"]["iters"][:n], out["noreg"]["iters"]
        q = max(1, n // 10)
        print(
            f"forward iterations per batch over the first {n} steps, the same DEQ with and "
            "without Jacobian regularisation (mean over the first / last 10%, all; test bpc "
            f"at step {n}; unconverged training windows)"
        )
        for label, its, r in (
            (f"jac-reg {args.jac_reg:g}", reg_its, out["deq"]),
            ("no regularisation", plain_its, out["noreg"]),
        ):
            at = r["curve"].get(n, math.nan)
            unc = sum(r["unconverged"][:n])
            print(
                f"{label:<20} {np.mean(its[:q]):6.1f} {np.mean(its[-q:]):6.1f} "
                f"{np.mean(its):6.1f}   bpc {at:.3f}   unconverged {unc}"
            )
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
            ax.plot(plain_its, label="no regularisation", alpha=0.8)
            ax.plot(reg_its, label=f"Jacobian regularisation {args.jac_reg:g}", alpha=0.8)
            ax.set_xlabel("training batch")
            ax.set_ylabel("forward iterations")
            ax.set_title("transformer DEQ on pydoc_data.topics")
            ax.grid(alpha=0.3)
            ax.legend()
            fig.savefig(args.plot, dpi=100)
            print(f"plot in {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
