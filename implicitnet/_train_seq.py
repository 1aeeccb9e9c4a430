"""Training and sampling of the character-level transformer DEQ (``--model transformer``).

The sequence counterpart of ``_train.py``: backend-neutral, prints nothing. The command
line builds a configuration, calls these functions and reports what they return.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

from . import backends, nn
from . import data as _data
from ._result import ConvergenceWarning
from ._train import _checked_loss, _mean, _relative_residuals, _Running
from ._xp import device, namespace
from .autodiff import value_and_grad

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
# settings measured (docs/benchmarks.md, "Sequence modelling").
SEQ_DEFAULTS: dict[str, Any] = {
    "width": 32,
    "heads": 2,
    "seq_len": 32,
    "dropout": 0.0,
    "epochs": 6,
    "batch_size": 64,
    "lr": 1e-2,
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


def _windows(codes, config: dict, *, offset: int = 0):
    x, y = _data.text_sequences(codes, int(config["seq_len"]), offset=offset)
    limit = config.get("limit")
    if limit:
        x, y = x[:limit, ...], y[:limit, ...]
    return x, y


def count_windows(corpus: _data.TextCorpus, config: dict, split: str = "train") -> int:
    """Number of windows of a split (of the first epoch, for ``"train"``)."""
    return int(_windows(getattr(corpus, split), config)[0].shape[0])


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
    from .implicit import jacobian_regularization

    x = model.injection(xb)
    z, res = model.body(x)
    logits = model.head(model.norm(z))
    ce = _flat_ce(logits, yb)
    if jac_reg <= 0.0:
        return ce, (ce, res)
    cell = nn.materialize(model.body.cell)
    jr = jacobian_regularization(_apply_cell, z, (cell, x), seed=seed)
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
    loss_grad = value_and_grad(_loss, has_aux=True)
    x, y = _windows(corpus.train, config, offset=_offset(config, epoch))
    be = backends.backend_of(x)
    stats = _Running()
    unconverged = backward_failures = 0
    backward_seen = False
    per_batch: list[float] = []
    jac_reg = float(config.get("jac_reg") or 0.0)
    t0 = time.perf_counter()
    for batch, (xb, yb) in enumerate(
        _data.batches(x, y, int(config["batch_size"]), seed=int(config["seed"]), epoch=epoch)
    ):
        n = int(xb.shape[0])
        seed = int(rng.integers(2**31)) if jac_reg > 0 else 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            (_, (ce, res)), grads = loss_grad(model, xb, yb, jac_reg, seed)
        backward_failures += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        model, opt_state = optimizer.update(model, grads, opt_state)
        loss = _checked_loss(ce, model, epoch, batch)
        bwd = res.stats.get("backward")
        backward_seen = backward_seen or bwd is not None
        xp = namespace(res.converged)
        unconverged += n - int(xp.sum(xp.astype(res.converged, xp.int64)))
        fwd = _mean(res.nit)
        per_batch.append(fwd)
        stats.add(
            n,
            loss=loss,
            fwd=fwd,
            res=_mean(res.residual),
            rel=_mean(_relative_residuals(res)),
            bwd=_mean(bwd["nit"]) if bwd is not None else math.nan,
        )
        if progress is not None:
            progress(n, {"bpc": stats.mean("loss") / LN2})
    be.synchronize()
    return (
        model,
        opt_state,
        {
            "loss": stats.mean("loss"),
            "train_bpc": stats.mean("loss") / LN2,
            "fwd_iter": stats.mean("fwd"),
            "fwd_iter_batches": per_batch,
            "fwd_residual": stats.mean("res"),
            "fwd_rel_residual": stats.mean("rel"),
            "bwd_iter": stats.mean("bwd") if backward_seen else None,
            "unconverged": unconverged,
            "bwd_failures": backward_failures,
            "seconds": time.perf_counter() - t0,
        },
    )


def evaluate_lm(model, codes, config: dict, *, batch_size: int = 128) -> dict:
    """Bits per character of `model` on the windows of `codes`, with solver statistics."""
    x, y = _windows(codes, config)
    stats = _Running()
    unconverged = 0
    t0 = time.perf_counter()
    for xb, yb in _data.batches(x, y, batch_size):
        n = int(xb.shape[0])
        logits, res = model(xb)
        xp = namespace(res.converged)
        unconverged += n - int(xp.sum(xp.astype(res.converged, xp.int64)))
        stats.add(
            n,
            loss=float(_flat_ce(logits, yb)),
            fwd=_mean(res.nit),
            res=_mean(res.residual),
            rel=_mean(_relative_residuals(res)),
        )
    return {
        "bpc": stats.mean("loss") / LN2,
        "loss": stats.mean("loss"),
        "fwd_iter": stats.mean("fwd"),
        "fwd_residual": stats.mean("res"),
        "fwd_rel_residual": stats.mean("rel"),
        "unconverged": unconverged,
        "windows": stats.n,
        "seconds": time.perf_counter() - t0,
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
            for i in range(int(p.shape[0])):
                cdf += float(p[i])
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
    return [int(a[i]) for i in range(int(a.shape[0]))]
