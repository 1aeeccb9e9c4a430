"""Training and sampling of the character-level transformer DEQ (``--model transformer``).

The sequence counterpart of ``_train.py``: backend-neutral, prints nothing. The command
line builds a configuration, calls these functions and reports what they return.
"""

from __future__ import annotations

import math
from typing import Any

from . import data as _data
from . import nn
from ._train import Objective, Running, fit_epoch
from ._xp import device, namespace, to_host

__all__ = [
    "SEQ_DEFAULTS",
    "build_lm",
    "count_windows",
    "evaluate_lm",
    "load_corpus",
    "sample_text",
    "train_epoch_lm",
]

LN2 = math.log(2.0)

# Defaults of ``--model transformer``: a small model that trains in minutes on two cores.
# float32 halves the time of a step against float64; batches of 64 windows of 32
# characters at a peak rate of 1e-2 (cosine) learned the fastest per second of the
# settings measured, and Jacobian regularisation 1 keeps the forward solve at about three
# iterations per batch (docs/benchmarks.md, "Sequence modelling"). A width-64 model with
# the benchmark's recipe (warm-up, clipping, jac-reg 0.1) took 2.8 times the CPU time
# for worse bits per character (2.35 against 2.28) in a 4-epoch run.
SEQ_DEFAULTS: dict[str, Any] = {
    "width": 32,
    "heads": 2,
    "seq_len": 32,
    "dropout": 0.0,
    "epochs": 6,
    "batch_size": 64,
    "lr": 1e-2,
    "warmup": 0,
    "clip_norm": 0.0,
    "dtype": "float32",
    "rtol": 1e-2,
    "maxiter": 20,
    "init_scale": 0.5,
    "jac_reg": 1.0,
}


def load_corpus(config: dict, *, backend: Any) -> _data.TextCorpus:
    """The corpus of `config`: the pydoc topics, or the text file ``config["data"]``."""
    return _data.load_text(config.get("data") or None, backend=backend)


def build_lm(config: dict, rng: Any, *, vocab_size: int, backend: Any) -> nn.SequenceLM:
    """The transformer DEQ language model of `config`, initialised from `rng`."""
    return nn.transformer_deq(
        vocab_size,
        dim=int(config["width"]),
        num_heads=int(config["heads"]),
        init_scale=float(config["init_scale"]),
        seed=rng,
        dtype=config["dtype"],
        backend=backend,
        method=config["solver"],
        backward=config["backward"],
        rtol=float(config["rtol"]),
        maxiter=int(config["maxiter"]),
    )


def _windows(codes, config: dict, *, offset: int = 0, stride: int | None = None):
    x, y = _data.text_sequences(codes, int(config["seq_len"]), offset=offset, stride=stride)
    limit = config.get("limit")
    if limit:
        keep = min(int(limit), int(x.shape[0]))  # in bounds: the array API needs it
        x, y = x[:keep, ...], y[:keep, ...]
    return x, y


def _context(config: dict) -> int:
    # The context every scored character has at least (see evaluate_lm).
    return int(config["seq_len"]) // 2


def _eval_windows(codes, config: dict):
    return _windows(codes, config, stride=int(config["seq_len"]) - _context(config))


def count_windows(corpus: _data.TextCorpus, config: dict, split: str = "train") -> int:
    """Number of windows of a split: of the first training epoch for ``"train"``, of the
    evaluation (overlapping, see :func:`evaluate_lm`) for ``"valid"`` and ``"test"``."""
    codes = getattr(corpus, split)
    x = _windows(codes, config)[0] if split == "train" else _eval_windows(codes, config)[0]
    return int(x.shape[0])


def _offset(config: dict, epoch: int) -> int:
    # A different cut of the text into windows every epoch, fixed by the epoch alone
    # (a resumed run sees the same windows as an uninterrupted one).
    return (17 * epoch) % int(config["seq_len"])


def _flat_ce(logits, targets):
    xp = namespace(logits)
    v = int(logits.shape[-1])
    return nn.cross_entropy(xp.reshape(logits, (-1, v)), xp.reshape(targets, (-1,)))


def _apply_cell(z, cell, x):
    return cell(z, x)


def _loss(model, xb, yb, jac_reg: float, seed):
    x = model.injection(xb)
    z, res = model.body(x)
    logits = model.head(model.norm(z))
    ce = _flat_ce(logits, yb)
    if jac_reg <= 0.0:
        return ce, (ce, res)
    cell = nn.materialize(model.body.cell)
    jr = nn.jacobian_regularization(_apply_cell, z, (cell, x), seed=seed)
    return ce + jac_reg * jr, (ce, res)


def train_epoch_lm(
    model,
    optimizer,
    opt_state,
    corpus: _data.TextCorpus,
    config: dict,
    epoch: int,
    rng: Any,
    *,
    progress=None,
):
    """One pass over the training windows: ``(model, opt_state, metrics)``.

    `metrics` holds the training loss (nats per character) and bits per character, the
    mean forward iterations and residuals (absolute and relative), the per-batch
    forward iterations (``fwd_iter_batches``), the mean backward iterations, the counts
    of unconverged forward and adjoint solves, and the seconds taken. `progress` is
    called with the number of windows done after every batch.

    Raises
    ------
    FloatingPointError
        If the loss or a parameter becomes infinite or NaN.
    """
    x, y = _windows(corpus.train, config, offset=_offset(config, epoch))
    jac_reg = float(config.get("jac_reg") or 0.0)
    objective = Objective(
        loss=_loss,
        draw=lambda model, xb, rng: (jac_reg, int(rng.integers(2**31)) if jac_reg > 0 else 0),
        read=lambda value, aux, yb: (aux[0], aux[1], {}),
        shown=lambda stats: {"bpc": stats.mean("loss") / LN2},
    )
    model, opt_state, stats = fit_epoch(
        model,
        optimizer,
        opt_state,
        x,
        y,
        config,
        epoch,
        rng,
        objective=objective,
        progress=progress,
    )
    solver = stats.solver_metrics()
    metrics = {
        "loss": stats.mean("loss"),
        "train_bpc": stats.mean("loss") / LN2,
        "fwd_iter": solver.pop("fwd_iter"),
        "fwd_iter_batches": stats.fwd_per_batch,
    }
    return model, opt_state, {**metrics, **solver, "seconds": stats.seconds()}


def evaluate_lm(model, codes, config: dict, *, batch_size: int = 128) -> dict:
    """Bits per character of `model` on `codes`, every character scored once with context.

    The text is cut into windows of ``L = config["seq_len"]`` characters that overlap by
    ``c = L // 2`` (one starts every ``L - c`` characters). Of each window only the last
    ``L - c`` positions are scored, so every character is predicted from at least ``c``
    characters before it; the first window also scores its first ``c`` positions (the
    start of the text has no more context), and one more window ending at the end of the
    text scores the characters the others left over. So every character but the first
    (which nothing precedes) is scored exactly once. Scoring every position of
    non-overlapping windows instead would predict a window's first characters from
    almost nothing.

    With ``config["limit"]``, only the first ``limit`` windows are scored (no last
    window). Returns the bits per character and the loss (nats per character) over the
    scored characters (``characters``), ``context`` (``c``), and the forward-solve
    statistics of the windows (``windows``).
    """
    length = int(config["seq_len"])
    context = _context(config)
    x, y = _eval_windows(codes, config)
    n = int(x.shape[0])
    parts = []  # (inputs, targets, first scored position) of each batch
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)  # in bounds: the array API needs it
        parts.append((x[start:stop, ...], y[start:stop, ...], context))
    total = int(codes.shape[0])
    left = total - 1 - ((n - 1) * (length - context) + length)  # targets after the last
    if left > 0 and not config.get("limit"):
        xp = namespace(codes)
        tail = codes[total - 1 - length :]
        parts.append(
            (
                xp.reshape(tail[:length], (1, length)),
                xp.reshape(tail[1:], (1, length)),
                length - left,
            )
        )
    stats, nll, scored = Running(), 0.0, 0
    for i, (xb, yb, first) in enumerate(parts):
        logits, res = model(xb)
        b = int(xb.shape[0])
        nll += float(_flat_ce(logits[:, first:, :], yb[:, first:])) * b * (length - first)
        scored += b * (length - first)
        if i == 0 and context:
            nll += float(_flat_ce(logits[:1, :context, :], yb[:1, :context])) * context
            scored += context
        stats.add_solve(b, res)
    loss = nll / scored
    return {
        "bpc": loss / LN2,
        "loss": loss,
        "fwd_iter": stats.mean("fwd"),
        "fwd_residual": stats.mean("res"),
        "fwd_rel_residual": stats.mean("rel"),
        "unconverged": stats.unconverged,
        "windows": stats.n,
        "characters": scored,
        "context": context,
        "seconds": stats.seconds(),
    }


def sample_text(
    model,
    vocab: str,
    prompt: str,
    length: int,
    *,
    context: int,
    temperature: float = 1.0,
    seed=0,
    like=None,
) -> str:
    """Continue `prompt` by `length` characters drawn from `model`, one at a time.

    Each step runs the model on the last `context` characters and draws the next from
    ``softmax(logits / temperature)`` of the last position (``temperature == 0``: the
    most likely character).

    Raises
    ------
    ValueError
        If `prompt` is empty or holds a symbol outside `vocab`.
    """
    if not prompt:
        msg = "`prompt` must hold at least one character"
        raise ValueError(msg)
    if like is None:
        like = model.embedding.weight
    xp = namespace(like)
    codes = list(_tolist(_data._text._encode(prompt, vocab, like=_int_like(like), what="prompt")))
    rng = nn.generator(seed)
    out = []
    for _ in range(int(length)):
        window = codes[-int(context) :]
        tokens = xp.asarray([window], dtype=xp.int64, device=device(like))
        logits, _ = model(tokens)
        last = logits[0, -1, :]
        if temperature == 0:
            nxt = int(xp.argmax(last))
        else:
            p = nn.softmax(xp.astype(last, xp.float64) / float(temperature))
            cdf, u, nxt = 0.0, float(rng.random()), int(p.shape[0]) - 1
            for i, pi in enumerate(to_host(p)):  # one device read per character
                cdf += pi
                if u < cdf:
                    nxt = i
                    break
        codes.append(nxt)
        out.append(vocab[nxt])
    return "".join(out)


def _int_like(like):
    xp = namespace(like)
    return xp.zeros((0,), dtype=xp.int64, device=device(like))


def _tolist(a) -> list:
    return [int(v) for v in to_host(a)]
