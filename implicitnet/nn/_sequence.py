"""Sequence models: embeddings, causal self-attention and a weight-tied transformer DEQ.

Every piece is composed from existing differentiable array-API operations (``take``,
``matmul``, ``reshape``, ``permute_dims``, slicing, ``exp``/``log``), so no new VJP rule
is needed: the gradients come from the rules those operations already have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import backends
from .._tree import static_field
from .._validate import check_divides, check_int
from .._xp import device as _device
from .._xp import namespace, untraced
from ._deq import DEQ
from ._functional import gelu, softmax
from ._init import generator, normal_init
from ._layers import LayerNorm, Linear
from ._models import _deq_config
from ._module import Module

__all__ = [
    "CausalSelfAttention",
    "Embedding",
    "SequenceLM",
    "TransformerCell",
    "Unrolled",
    "causal_mask",
    "positional_encoding",
    "transformer_deq",
    "transformer_stack",
]

# The additive mask of a future position. Finite (so ``0 * mask`` is 0, never NaN);
# after the max-shift of the stable softmax, ``exp(-1e9 + O(1))`` is exactly 0 in float32
# and float64.
_MASKED = -1e9


def causal_mask(length: int, *, dtype, xp, device=None):
    """The additive causal mask of a sequence of `length` positions, shape ``(T, T)``.

    ``mask[i, j]`` is 0 where position ``i`` may attend to ``j`` (``j <= i``) and a large
    negative number otherwise; it is built by arithmetic on two index ranges (no boolean
    indexing), to be added to the attention scores before the softmax.

    Parameters
    ----------
    length : int
        Sequence length ``T``.
    dtype : dtype
        Floating dtype of the mask.
    xp : array namespace
        Where the mask is made.
    device : optional
        Device of the mask.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> (nn.causal_mask(3, dtype=np.float64, xp=np) < 0).astype(int).tolist()
    [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    """
    length = check_int(length, "length", minimum=1)
    i = xp.reshape(xp.arange(length, device=device), (length, 1))
    j = xp.reshape(xp.arange(length, device=device), (1, length))
    # future = 1 where j > i, else 0: clip(j - i, 0, 1) on integers.
    future = xp.astype(xp.clip(j - i, 0, 1), dtype)
    return future * _MASKED


def positional_encoding(length: int, dim: int, *, dtype, xp, device=None):
    """Sinusoidal positional encoding of Vaswani et al. (2017), shape ``(length, dim)``.

    Notes
    -----
    ``PE[t, 2k] = sin(t / 10000^(2k/dim))`` and ``PE[t, 2k+1] = cos(t / 10000^(2k/dim))``;
    built by arithmetic (the even and odd columns are interleaved with a reshape).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> pe = nn.positional_encoding(4, 6, dtype=np.float64, xp=np)
    >>> pe.shape, pe[0].tolist()
    ((4, 6), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    """
    length = check_int(length, "length", minimum=1)
    dim = check_int(dim, "dim", minimum=2)
    if dim % 2:
        msg = f"`dim` must be even, got {dim}"
        raise ValueError(msg)
    half = dim // 2
    t = xp.reshape(xp.astype(xp.arange(length, device=device), dtype), (length, 1))
    k = xp.astype(xp.arange(half, device=device), dtype)
    freq = xp.exp(k * (-2.0 * math.log(10000.0) / dim))
    angle = t * xp.reshape(freq, (1, half))
    pe = xp.stack([xp.sin(angle), xp.cos(angle)], axis=-1)  # (T, half, 2)
    return xp.reshape(pe, (length, dim))


@dataclass(frozen=True)
class Embedding(Module):
    """A lookup table: integer tokens of any shape to vectors, ``weight[tokens]``.

    Parameters
    ----------
    weight : array, shape (num_embeddings, embedding_dim)

    Notes
    -----
    The lookup is ``take(weight, tokens, axis=0)``; its gradient scatters (adds) the
    cotangent rows back into the rows of `weight` that were read.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> emb = nn.Embedding(weight=np.arange(6.0).reshape(3, 2))
    >>> emb(np.array([[2, 0]])).tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    """

    weight: Any

    def __call__(self, tokens):
        xp = namespace(self.weight)
        flat = xp.reshape(tokens, (-1,))
        out = xp.take(self.weight, flat, axis=0)
        return xp.reshape(out, (*tuple(tokens.shape), self.weight.shape[1]))

    @classmethod
    def create(
        cls,
        num_embeddings: int,
        embedding_dim: int,
        *,
        std: float = 1.0,
        seed=0,
        dtype=None,
        backend="numpy",
        device=None,
    ) -> Embedding:
        """A table drawn from ``N(0, std^2)``.

        Parameters
        ----------
        num_embeddings, embedding_dim : int
            Vocabulary size and vector size.
        std : float, default: 1.0
            Standard deviation of the entries.
        seed, dtype, backend, device
            As in :meth:`Linear.create`.
        """
        num_embeddings = check_int(num_embeddings, "num_embeddings", minimum=1)
        embedding_dim = check_int(embedding_dim, "embedding_dim", minimum=1)
        w = normal_init(
            (num_embeddings, embedding_dim),
            float(std),
            generator(seed),
            dtype=dtype,
            backend=backends.get_backend(backend),
            device=device,
        )
        return cls(weight=w)


@dataclass(frozen=True)
class CausalSelfAttention(Module):
    """Multi-head self-attention over ``x[B, T, d]`` in which position ``t`` sees ``<= t``.

    Parameters
    ----------
    qkv : Linear
        ``d -> 3 d``: queries, keys and values, in this order along the last axis.
    out : Linear
        ``d -> d``: the output projection.
    num_heads : int, default: 1
        Number of heads; must divide ``d`` (static).

    Notes
    -----
    Per head ``h``: ``A_h = softmax(Q_h K_h^T / sqrt(d_h) + M) V_h`` with the causal mask
    ``M`` of :func:`causal_mask` and the softmax made stable by subtracting the row
    maximum; the heads are concatenated and projected by `out`.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> attn = nn.CausalSelfAttention.create(8, num_heads=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 8))
    >>> y = attn(x)
    >>> x2 = x.copy(); x2[:, 3:] = 0.0   # changing the future leaves the past alone
    >>> bool(np.allclose(attn(x2)[:, :3], y[:, :3]))
    True
    """

    qkv: Any
    out: Any
    num_heads: int = static_field(default=1)

    def __post_init__(self):
        check_int(self.num_heads, "num_heads", minimum=1)

    def __call__(self, x):
        if x.ndim != 3:
            msg = f"`x` must be 3-D (batch, time, features), got shape {tuple(x.shape)}"
            raise ValueError(msg)
        b, t, d = (int(s) for s in x.shape)
        h = self.num_heads
        if d % h:
            msg = f"`num_heads` ({h}) must divide the {d} features of `x`"
            raise ValueError(msg)
        xp = namespace(x, self.qkv.weight)
        qkv = self.qkv(x)  # (B, T, 3d)

        def heads(part):  # (B, T, d) -> (B, H, T, d_h)
            return xp.permute_dims(xp.reshape(part, (b, t, h, d // h)), (0, 2, 1, 3))

        q = heads(qkv[:, :, :d])
        k = heads(qkv[:, :, d : 2 * d])
        v = heads(qkv[:, :, 2 * d :])
        scores = xp.matmul(q, xp.matrix_transpose(k)) * (1.0 / math.sqrt(d // h))
        mask = causal_mask(t, dtype=x.dtype, xp=namespace(untraced(x)), device=_device(x))
        weights = softmax(scores + mask, axis=-1)  # (B, H, T, T)
        y = xp.matmul(weights, v)  # (B, H, T, d_h)
        y = xp.reshape(xp.permute_dims(y, (0, 2, 1, 3)), (b, t, d))
        return self.out(y)

    @classmethod
    def create(
        cls,
        dim: int,
        *,
        num_heads: int = 1,
        seed=0,
        dtype=None,
        backend="numpy",
        device=None,
    ) -> CausalSelfAttention:
        """Projections with :meth:`Linear.create`'s initialisation."""
        dim = check_int(dim, "dim", minimum=1)
        num_heads = check_int(num_heads, "num_heads", minimum=1)
        check_divides(num_heads, "num_heads", dim, "dim")
        rng = generator(seed)
        kw = {"dtype": dtype, "backend": backend, "device": device}
        return cls(
            qkv=Linear.create(dim, 3 * dim, seed=rng, **kw),
            out=Linear.create(dim, dim, seed=rng, **kw),
            num_heads=num_heads,
        )


@dataclass(frozen=True)
class TransformerCell(Module):
    """One transformer block with input injection: the map ``f(z, x)`` of a sequence DEQ.

    Parameters
    ----------
    attention : CausalSelfAttention
    norm1, norm2 : LayerNorm
    fc1, fc2 : Linear
        The position-wise MLP ``d -> hidden -> d`` (GELU in between).

    Notes
    -----
    With the injection ``x`` (embedded tokens plus positions) added to the state,

    .. math::

        h = z + x, \\quad u = \\mathrm{LN}_1(h + \\mathrm{Attn}(h)), \\quad
        f(z, x) = \\mathrm{LN}_2(u + W_2\\,\\mathrm{gelu}(W_1 u)),

    over the whole sequence ``[B, T, d]`` (Bai, Kolter & Koltun, 2019, inject the
    input into every application of the one weight-tied block, as here). The layer
    norms bound the state, which keeps the fixed-point iteration from blowing up.
    """

    attention: Any
    norm1: Any
    fc1: Any
    fc2: Any
    norm2: Any

    def __call__(self, z, x, mask=None):
        h = namespace(z, x).add(z, x)  # either may be raw, the other traced
        u = self.norm1(h + self.attention(h))
        out = self.norm2(u + self.fc2(gelu(self.fc1(u))))
        return out if mask is None else out * mask

    @classmethod
    def create(
        cls,
        dim: int,
        *,
        num_heads: int = 1,
        hidden: int | None = None,
        init_scale: float = 1.0,
        seed=0,
        dtype=None,
        backend="numpy",
        device=None,
    ) -> TransformerCell:
        """A block of width `dim` with an MLP of `hidden` units (default ``4 dim``).

        `init_scale` multiplies the initial output projections of the attention and
        the MLP (below 1, the block starts closer to a contraction).
        """
        dim = check_int(dim, "dim", minimum=1)
        hidden = 4 * dim if hidden is None else check_int(hidden, "hidden", minimum=1)
        rng = generator(seed)
        kw = {"dtype": dtype, "backend": backend, "device": device}
        attn = CausalSelfAttention.create(dim, num_heads=num_heads, seed=rng, **kw)
        fc1 = Linear.create(dim, hidden, seed=rng, **kw)
        fc2 = Linear.create(hidden, dim, seed=rng, **kw)
        if init_scale != 1.0:
            s = float(init_scale)
            attn = attn.replace(out=attn.out.replace(weight=attn.out.weight * s))
            fc2 = fc2.replace(weight=fc2.weight * s)
        return cls(
            attention=attn,
            norm1=LayerNorm.create(dim, **kw),
            fc1=fc1,
            fc2=fc2,
            norm2=LayerNorm.create(dim, **kw),
        )


class _Trace:
    """The figures an :class:`Unrolled` stack reports, shaped like a solver's result."""

    def __init__(self, z, depth: int, residual):
        xp = namespace(residual)
        n = int(residual.shape[0])
        self.x = z
        self.success = True
        self.nit = xp.full((n,), depth, dtype=xp.int64, device=_device(residual))
        self.nfev = self.nit
        self.residual = residual
        self.converged = xp.ones((n,), dtype=xp.bool, device=_device(residual))
        self.stats: dict = {}


@dataclass(frozen=True)
class Unrolled(Module):
    """A fixed-depth stack ``z_{k+1} = cell_k(z_k, x)``, ``z_0 = 0``, differentiated by backprop.

    Parameters
    ----------
    cells : tuple of modules
        One cell per layer (untied weights: an explicit transformer). To unroll one
        weight-tied cell to depth ``L``, use `repeat`.
    repeat : int, default: 1
        How many times the sequence of `cells` is applied (static).

    Calling it returns ``(z_L, trace)`` like :class:`DEQ`; ``trace`` has per-sample
    ``nit`` (the depth), ``residual`` (``||z_L - z_{L-1}||``, not differentiated),
    ``converged`` (all true) and an empty ``stats``.
    """

    cells: tuple
    repeat: int = static_field(default=1)

    def __call__(self, x, *, z0=None, mask=None, callback=None):
        xp = namespace(x)
        z = xp.zeros(x.shape, dtype=x.dtype, device=_device(x)) if z0 is None else z0
        prev = z
        for _ in range(self.repeat):
            for cell in self.cells:
                prev = z
                z = cell(z, x) if mask is None else cell(z, x, mask)
        n = int(x.shape[0])
        diff = untraced(z) - untraced(prev)
        rx = namespace(diff)
        residual = rx.sqrt(rx.sum(rx.reshape(diff * diff, (n, -1)), axis=1))
        return z, _Trace(z, self.repeat * len(self.cells), residual)


@dataclass(frozen=True)
class SequenceLM(Module):
    """A character-level language model: ``head(body(embed(tokens) + PE))``.

    Parameters
    ----------
    embedding : Embedding
        Token vectors (``vocab -> d``).
    body : DEQ or Unrolled
        The sequence state from the injection: the equilibrium of a
        :class:`TransformerCell` (:func:`transformer_deq`) or an explicit stack.
    norm : LayerNorm
        Normalisation of the final state.
    head : Linear
        The language-model head ``d -> vocab`` (logits of the next token).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> model = nn.transformer_deq(20, dim=8, num_heads=2, seed=0)
    >>> logits, res = model(np.zeros((3, 5), dtype=np.int64))
    >>> logits.shape, res.nit.shape
    ((3, 5, 20), (3,))
    """

    embedding: Any
    body: Any
    norm: Any
    head: Any

    def injection(self, tokens):
        """The input injection ``embed(tokens) + PE``, shape ``(B, T, d)``."""
        if tokens.ndim != 2:
            msg = f"`tokens` must be 2-D (batch, time), got shape {tuple(tokens.shape)}"
            raise ValueError(msg)
        e = self.embedding(tokens)
        d = int(e.shape[-1])
        pe = positional_encoding(
            int(tokens.shape[1]), d, dtype=e.dtype, xp=namespace(untraced(e)), device=_device(e)
        )
        return e + pe

    def __call__(self, tokens, *, z0=None, mask=None):
        """``(logits, result)``: next-token logits ``(B, T, vocab)`` and the body's result."""
        z, res = self.body(self.injection(tokens), z0=z0, mask=mask)
        return self.head(self.norm(z)), res

    def mask(self, n: int, seed, *, like):
        """No dropout: None (the interface of :meth:`DEQClassifier.mask`)."""
        return None

    def replace_solver(self, **config) -> SequenceLM:
        """A copy whose DEQ has some static fields replaced (method, rtol, ...)."""
        return self.replace(body=self.body.replace(**config))


def _lm_parts(vocab_size, dim, rng, kw):
    vocab_size = check_int(vocab_size, "vocab_size", minimum=1)
    emb = Embedding.create(vocab_size, dim, std=1.0, seed=rng, **kw)
    return emb, LayerNorm.create(dim, **kw), Linear.create(dim, vocab_size, seed=rng, **kw)


def transformer_deq(
    vocab_size: int,
    *,
    dim: int = 64,
    num_heads: int = 4,
    hidden: int | None = None,
    init_scale: float = 0.5,
    seed=0,
    dtype=None,
    backend="numpy",
    device=None,
    **deq_config: Any,
) -> SequenceLM:
    """A weight-tied transformer DEQ language model (``implicitnet train --model transformer``).

    ``logits = head(LN(z*))`` with ``z* = f(z*, embed(tokens) + PE)`` and ``f`` one
    :class:`TransformerCell`, solved by a :class:`DEQ` over the whole sequence.

    Parameters
    ----------
    vocab_size : int
        Number of symbols.
    dim : int, default: 64
        Width of the state (and of the embeddings).
    num_heads : int, default: 4
        Attention heads (must divide `dim`).
    hidden : int, optional
        Units of the position-wise MLP. Default: ``4 dim``.
    init_scale : float, default: 0.5
        Factor on the initial output projections of the block.
    seed, dtype, backend, device
        As in :meth:`Linear.create`.
    **deq_config
        Static configuration of the :class:`DEQ` (`method`, `backward`, `rtol`, ...).

    Returns
    -------
    SequenceLM
    """
    dim = check_int(dim, "dim", minimum=2)
    rng = generator(seed)
    kw = {"dtype": dtype, "backend": backend, "device": device}
    emb, norm, head = _lm_parts(vocab_size, dim, rng, kw)
    cell = TransformerCell.create(
        dim, num_heads=num_heads, hidden=hidden, init_scale=init_scale, seed=rng, **kw
    )
    return SequenceLM(
        embedding=emb, body=DEQ(cell, **_deq_config(deq_config)), norm=norm, head=head
    )


def transformer_stack(
    vocab_size: int,
    *,
    depth: int = 2,
    dim: int = 64,
    num_heads: int = 4,
    hidden: int | None = None,
    tied: bool = False,
    init_scale: float = 0.5,
    seed=0,
    dtype=None,
    backend="numpy",
    device=None,
) -> SequenceLM:
    """An explicit transformer language model: `depth` blocks, backpropagated.

    With ``tied=False`` every layer has its own weights (a standard transformer with
    the input injected into each block); with ``tied=True`` one block is applied
    `depth` times (the DEQ's cell unrolled to a fixed depth).

    Parameters
    ----------
    depth : int, default: 2
        Number of block applications.
    tied : bool, default: False
        Share one block between all layers.
    vocab_size, dim, num_heads, hidden, init_scale, seed, dtype, backend, device
        As in :func:`transformer_deq`.

    Returns
    -------
    SequenceLM
    """
    depth = check_int(depth, "depth", minimum=1)
    dim = check_int(dim, "dim", minimum=2)
    rng = generator(seed)
    kw = {"dtype": dtype, "backend": backend, "device": device}
    emb, norm, head = _lm_parts(vocab_size, dim, rng, kw)
    cfg = {"num_heads": num_heads, "hidden": hidden, "init_scale": init_scale}
    if tied:
        body = Unrolled(cells=(TransformerCell.create(dim, seed=rng, **cfg, **kw),), repeat=depth)
    else:
        cells = tuple(TransformerCell.create(dim, seed=rng, **cfg, **kw) for _ in range(depth))
        body = Unrolled(cells=cells, repeat=1)
    return SequenceLM(embedding=emb, body=body, norm=norm, head=head)
