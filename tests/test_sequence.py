"""Sequence models: embedding, causal attention, the transformer cell and DEQ, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest

import implicitnet as inet
from implicitnet import nn
from implicitnet.testing import assert_close, check_grads

RTOL = {"float32": 2e-5, "float64": 1e-12}
DTYPES = ["float32", "float64"]
#: The smallest transformer block the tests build: 4 features, 2 heads, hidden width 4.
TINY = {"dim": 4, "num_heads": 2, "hidden": 4}


def _as(xp, a, dtype="float64"):
    return xp.asarray(a, dtype=getattr(xp, dtype))


def _softmax_np(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _attention_np(x, wqkv, bqkv, wo, bo, heads):
    b, t, d = x.shape
    dh = d // heads
    qkv = x @ wqkv.T + bqkv
    q, k, v = (qkv[..., i * d : (i + 1) * d].reshape(b, t, heads, dh) for i in range(3))
    out = np.zeros((b, t, heads, dh))
    for n in range(b):
        for h in range(heads):
            s = q[n, :, h] @ k[n, :, h].T / math.sqrt(dh)
            s = s + np.triu(np.full((t, t), -np.inf), 1)  # an independent form of the mask
            out[n, :, h] = _softmax_np(s) @ v[n, :, h]
    return out.reshape(b, t, d) @ wo.T + bo


def test_causal_mask_and_positional_encoding(xp):
    m = nn.causal_mask(4, dtype=xp.float64, xp=xp)
    np.testing.assert_array_equal(np.asarray(m) < 0, np.triu(np.ones((4, 4), bool), 1))
    pe = nn.positional_encoding(5, 6, dtype=xp.float64, xp=xp)
    t = np.arange(5.0)[:, None]
    freq = 10000.0 ** (-np.arange(0, 6, 2) / 6)
    expected = np.zeros((5, 6))
    expected[:, 0::2] = np.sin(t * freq)
    expected[:, 1::2] = np.cos(t * freq)
    assert_close(pe, _as(xp, expected), rtol=1e-12, atol=1e-12, xp=xp)
    with pytest.raises(ValueError, match="`dim`"):
        nn.positional_encoding(3, 5, dtype=xp.float64, xp=xp)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(backend, xp, dtype):
    emb = nn.Embedding.create(7, 3, seed=0, dtype=dtype, backend=backend.name)
    tokens = xp.asarray([[6, 0, 2], [1, 1, 5]])
    w = backend.to_numpy(emb.weight)
    expected = w[np.array([[6, 0, 2], [1, 1, 5]])]
    assert_close(emb(tokens), _as(xp, expected, dtype), rtol=RTOL[dtype], xp=xp)
    if dtype == "float64":
        # the gradient of a lookup with repeated tokens adds the rows
        check_grads(lambda m: m(tokens), (emb,), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_matches_numpy_and_is_causal(backend, xp, dtype):
    attn = nn.CausalSelfAttention.create(6, num_heads=2, seed=1, dtype=dtype, backend=backend.name)
    x_np = np.random.default_rng(0).standard_normal((2, 5, 6))
    y = attn(_as(xp, x_np, dtype))
    p = {k: backend.to_numpy(v).astype(np.float64) for k, v in nn.named_leaves(attn).items()}
    expected = _attention_np(
        x_np, p["qkv.weight"], p["qkv.bias"], p["out.weight"], p["out.bias"], 2
    )
    tol = 50 * RTOL[dtype]
    assert_close(y, _as(xp, expected, dtype), rtol=tol, atol=tol, xp=xp)
    # Large scores: the stable softmax gives finite values (no overflow).
    big = attn(_as(xp, 1e3 * x_np, dtype))
    assert bool(xp.all(xp.isfinite(big)))
    x2 = x_np.copy()
    x2[:, 3:] = 7.0
    y2 = attn(_as(xp, x2, dtype))
    assert_close(y2[:, :3, :], y[:, :3, :], rtol=tol, atol=tol, xp=xp)
    with pytest.raises(ValueError, match="`num_heads`"):
        nn.CausalSelfAttention.create(6, num_heads=4)


def test_attention_and_cell_gradients(backend, xp):
    rng = np.random.default_rng(2)
    attn = nn.CausalSelfAttention.create(4, num_heads=2, seed=0, backend=backend.name)
    x = _as(xp, rng.standard_normal((2, 3, 4)))
    check_grads(lambda m, a: m(a), (attn, x), rtol=1e-6)
    cell = nn.TransformerCell.create(4, num_heads=2, hidden=6, seed=0, backend=backend.name)
    z = _as(xp, rng.standard_normal((2, 3, 4)))
    check_grads(lambda m, a, b: m(a, b), (cell, z, x), rtol=1e-6)


def test_lm_gradients_and_parameter_count(backend, xp):
    # the whole explicit model (embedding, positions, two untied blocks, head)
    model = nn.transformer_stack(5, depth=2, **TINY, backend=backend.name)
    tokens = xp.asarray([[0, 4, 2], [3, 3, 1]])
    check_grads(lambda m: m(tokens)[0], (model,), rtol=1e-6)
    deq = nn.transformer_deq(5, **TINY, backend=backend.name)
    # two blocks to one: embedding 5*4, norm 8, head 5*4+5, block 4*12+12+4*4+4+8+4*4+4+4*4+4+8
    block = nn.TransformerCell.create(4, num_heads=2, hidden=4).num_parameters()
    assert model.num_parameters() - deq.num_parameters() == block
    with pytest.raises(ValueError, match="`tokens`"):
        model(xp.asarray([1, 2]))


def test_deq_lm_implicit_gradient_matches_finite_differences(backend, xp):
    # The implicit gradient of the equilibrium (tight tolerances) against central
    # differences of the loss with respect to every parameter.
    model = nn.transformer_deq(
        6, **TINY, backend=backend.name, rtol=1e-12, maxiter=200, backward_options={"rtol": 1e-12}
    )
    tokens = xp.asarray([[0, 5, 2, 2], [3, 1, 1, 4]])
    targets = xp.asarray([5, 2, 2, 0, 1, 1, 4, 3])

    def loss(m):
        logits, res = m(tokens)
        assert bool(res.success)
        lx = inet.namespace(logits)
        return nn.cross_entropy(lx.reshape(logits, (-1, 6)), targets)

    check_grads(loss, (model,), rtol=1e-4, elementwise=0)


def test_deq_lm_is_causal_and_matches_the_unrolled_fixed_point(backend, xp):
    model = nn.transformer_deq(
        6, **TINY, init_scale=0.2, backend=backend.name, rtol=1e-10, maxiter=200
    )
    tokens = xp.asarray([[0, 5, 2, 2, 1]])
    logits, res = model(tokens)
    assert bool(res.success)
    other = xp.asarray([[0, 5, 2, 4, 4]])
    logits2, _ = model(other)
    assert_close(logits2[:, :3, :], logits[:, :3, :], rtol=1e-7, atol=1e-7, xp=xp)
    # the same cell iterated many times reaches the same state
    unrolled = nn.SequenceLM(
        embedding=model.embedding,
        body=nn.Unrolled(cells=(model.body.cell,), repeat=200),
        norm=model.norm,
        head=model.head,
    )
    ref, trace = unrolled(tokens)
    assert_close(ref, logits, rtol=1e-6, atol=1e-6, xp=xp)
    assert int(trace.nit[0]) == 200


def _step_peak(model, tokens, targets) -> int:
    # tracemalloc peak (NumPy buffers and the tape) of one forward + backward
    import gc
    import tracemalloc
    import warnings

    def loss(m):
        logits, _ = m(tokens)
        return nn.cross_entropy(inet.namespace(logits).reshape(logits, (-1, 6)), targets)

    gc.collect()
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", inet.ConvergenceWarning)
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            out = inet.value_and_grad(loss)(model)
            peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del out
    return peak


def test_training_step_memory_is_flat_in_depth_for_the_deq_only():
    # Counted, not timed: the DEQ's training step keeps no iterates, so its peak does not
    # grow with the forward depth; backprop through the unrolled block keeps them all.
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 6, (2, 8))
    targets = rng.integers(0, 6, 16)
    peaks = {}
    for n in (5, 40):
        deq = nn.transformer_deq(
            6,
            dim=8,
            num_heads=2,
            method="picard",
            rtol=0.0,
            maxiter=n,
            backward_options={"rtol": 1e-3, "maxiter": 10},
        )
        tied = nn.transformer_stack(6, depth=n, dim=8, num_heads=2, tied=True)
        peaks[n] = (_step_peak(deq, tokens, targets), _step_peak(tied, tokens, targets))
    assert peaks[40][0] < 1.5 * peaks[5][0]
    assert peaks[40][1] > 4 * peaks[5][1]


@pytest.mark.parametrize(
    ("n", "length", "batch_size"), [(61, 8, 3), (40, 7, 128), (30, 1, 4), (50, 8, 2), (9, 8, 1)]
)
def test_evaluate_lm_scores_every_character_once_with_context(backend, xp, n, length, batch_size):
    from implicitnet._train_seq import evaluate_lm

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 11, size=n)
    model = nn.transformer_stack(11, depth=1, seed=0, dtype="float64", backend=backend.name, **TINY)
    out = evaluate_lm(model, xp.asarray(codes), {"seq_len": length}, batch_size=batch_size)
    # An independent loop: window i starts at i * s (s = length - c, c = length // 2);
    # its positions >= c are scored, and all of the first window's.
    # and a last window, ending with the text, scores what the others left.
    c = length // 2
    s = length - c
    total, scored_targets = 0.0, []
    starts = list(range(0, n - length, s))
    if starts[-1] + length < n - 1:
        starts.append(n - 1 - length)
    for i, start in enumerate(starts):
        logits, _ = model(xp.asarray(codes[None, start : start + length]))
        logits = np.asarray(logits, dtype=np.float64)[0]
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        for t in range(0 if i == 0 else c, length):
            if scored_targets and start + t + 1 <= scored_targets[-1]:
                continue  # the last window: its first positions were scored before
            assert i == 0 or t >= c  # context: at least c characters
            total -= logp[t, codes[start + t + 1]]
            scored_targets.append(start + t + 1)
    # every character but the first scored once, in order
    assert scored_targets == list(range(1, n))
    assert out["characters"] == n - 1 and out["context"] == c
    assert out["loss"] == pytest.approx(total / len(scored_targets), rel=1e-10)
    assert out["bpc"] == pytest.approx(out["loss"] / math.log(2), rel=1e-12)
