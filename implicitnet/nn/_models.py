"""Ready-made deep equilibrium classifiers: an MLP DEQ and a convolutional DEQ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._tree import static_field
from .._validate import check_divides, check_int
from .._xp import device as _device
from .._xp import namespace
from ._deq import DEQ
from ._dropout import VariationalDropout
from ._functional import relu, tanh
from ._init import generator
from ._layers import Conv2d, GroupNorm, LayerNorm, Linear
from ._module import Module
from ._reparam import weight_norm

__all__ = ["ConvCell", "DEQClassifier", "MLPCell", "ReluCell", "TanhCell", "conv_deq", "mlp_deq"]


@dataclass(frozen=True)
class MLPCell(Module):
    """The cell ``z -> relu(norm(W z + x))`` of :func:`mlp_deq`, with optional dropout.

    Parameters
    ----------
    linear : Module
        The map ``z -> W z`` (usually weight-normalised, without bias).
    norm : Module
        A normalisation of the features (:class:`LayerNorm`).
    """

    linear: Any
    norm: Any

    def __call__(self, z, x, mask=None):
        out = relu(self.norm(self.linear(z) + x))
        return out if mask is None else out * mask


def _plain_cell_class(name: str, activation: Callable[[Any], Any], doc: str) -> type[Module]:
    """The cell class ``z -> activation(W z + x)`` named `name` (one definition serves both)."""

    @dataclass(frozen=True)
    class Cell(Module):
        linear: Any

        def __call__(self, z, x, mask=None):
            out = activation(self.linear(z) + x)
            return out if mask is None else out * mask

        @classmethod
        def create(
            cls,
            width: int,
            *,
            init_scale: float = 0.5,
            seed=0,
            dtype=None,
            backend="numpy",
            device=None,
        ) -> Module:
            """A cell of `width` features: ``W`` as :meth:`Linear.create`, times `init_scale`.

            Parameters
            ----------
            width : int
                Size of the state (and of the injection).
            init_scale : float, default: 0.5
                Factor on the initial ``W``, whose entries are ``U(-1/sqrt(width),
                1/sqrt(width))``; ``||W||_2`` is then about ``1.15 * init_scale``, so the
                default starts as a contraction.
            seed, dtype, backend, device
                As in :meth:`Linear.create`.
            """
            check_int(width, "width", minimum=1)
            kw = {"dtype": dtype, "backend": backend, "device": device}
            lin = Linear.create(width, width, bias=False, seed=seed, **kw)
            return cls(linear=lin.replace(weight=float(init_scale) * lin.weight))

    Cell.__name__ = Cell.__qualname__ = name
    Cell.__doc__ = doc
    Cell.__call__.__doc__ = (
        f"``{activation.__name__}(W z + x)``, times the dropout `mask` when one is given."
    )
    for method in (Cell.__call__, Cell.create.__func__):
        method.__qualname__ = f"{name}.{method.__name__}"
    return Cell


TanhCell = _plain_cell_class(
    "TanhCell",
    tanh,
    """The textbook DEQ cell ``z -> tanh(W z + x)``, `x` the input injection.

    With :class:`DEQ` it makes the smallest equilibrium model, ``z* = tanh(W z* + x)``,
    with no hand-written module. The map is a contraction when ``||W||_2 < 1``
    (``tanh`` is 1-Lipschitz).

    Parameters
    ----------
    linear : Module
        The map ``z -> W z``: a :class:`Linear` (a bias there is a bias of the cell),
        or a reparameterised one (:func:`weight_norm`, :func:`spectral_norm`,
        :class:`MonotoneLinear`).

    See Also
    --------
    ReluCell : the same cell with ``relu``.
    TanhCell.create : initialise from a seed.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> deq = nn.DEQ(nn.TanhCell.create(8, seed=0), rtol=1e-8)
    >>> x = np.ones((3, 8))
    >>> z, res = deq(x)
    >>> bool(res.success), bool(np.allclose(z, deq.cell(z, x)))
    (True, True)
    """,
)

ReluCell = _plain_cell_class(
    "ReluCell",
    relu,
    """The textbook DEQ cell ``z -> relu(W z + x)``, `x` the input injection.

    A contraction when ``||W||_2 < 1`` (``relu`` is 1-Lipschitz).

    Parameters
    ----------
    linear : Module
        The map ``z -> W z``, as in :class:`TanhCell`.

    See Also
    --------
    TanhCell : the same cell with ``tanh``.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> deq = nn.DEQ(nn.ReluCell.create(8, seed=0), rtol=1e-8)
    >>> z, res = deq(np.ones((3, 8)))
    >>> bool(res.success), bool((z >= 0).all())
    (True, True)
    """,
)


@dataclass(frozen=True)
class ConvCell(Module):
    """The cell ``z -> relu(norm(conv(z) + x))`` of :func:`conv_deq`, NCHW.

    Parameters
    ----------
    conv : Module
        A same-size convolution (usually weight-normalised).
    norm : Module
        A per-sample normalisation (:class:`GroupNorm`).
    """

    conv: Any
    norm: Any

    def __call__(self, z, x, mask=None):
        out = relu(self.norm(self.conv(z) + x))
        return out if mask is None else out * mask


@dataclass(frozen=True)
class _Stem(Module):
    """Convolution then normalisation (the input injection of :func:`conv_deq`)."""

    conv: Any
    norm: Any

    def __call__(self, x):
        return self.norm(self.conv(x))


@dataclass(frozen=True)
class _PoolHead(Module):
    """Average-pool ``pool x pool`` windows of NCHW features, flatten, then a linear map."""

    linear: Any
    pool: int = static_field(default=1)

    def __call__(self, z):
        xp = namespace(z)
        n, c, h, w = z.shape
        p = self.pool
        if p > 1:
            z = xp.mean(xp.reshape(z, (n, c, h // p, p, w // p, p)), axis=(3, 5))
        return self.linear(xp.reshape(z, (n, -1)))


@dataclass(frozen=True)
class DEQClassifier(Module):
    """A classifier ``head(z*)`` with ``z* = cell(z*, injection(x))`` (a :class:`DEQ`).

    Parameters
    ----------
    injection : Module
        Maps the input to the injection ``x`` of the cell.
    deq : DEQ
        The equilibrium layer.
    head : Module
        Maps the equilibrium to class logits.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> model = nn.mlp_deq(64, 10, width=16, seed=0)
    >>> logits, res = model(np.ones((3, 64)))
    >>> logits.shape, bool(res.success)
    ((3, 10), True)
    """

    injection: Any
    deq: Any
    head: Any
    dropout: Any = None
    mask_shape: tuple = static_field(default=())

    def mask(self, n: int, seed, *, like):
        """A dropout mask for `n` samples (None without dropout), for ``mask=`` of a call.

        Parameters
        ----------
        n : int
            Number of samples.
        seed : int or numpy.random.Generator
            Source of randomness.
        like : array
            An array whose dtype, backend and device the mask takes.
        """
        if self.dropout is None or self.dropout.rate == 0.0:
            return None
        return self.dropout.mask((n, *self.mask_shape), seed, like=like)

    def __call__(self, x, *, z0=None, mask=None):
        """Return ``(logits, result)``; see :meth:`DEQ.__call__` for `z0`, `mask`."""
        z, res = self.deq(self.injection(x), z0=z0, mask=mask)
        return self.head(z), res

    def replace_solver(self, **config) -> DEQClassifier:
        """A copy whose DEQ has some static fields replaced (method, backward, rtol, ...)."""
        return self.replace(deq=self.deq.replace(**config))


def _small_weight_norm(layer: Module, init_scale: float) -> Module:
    """`weight_norm` of `layer` with every magnitude ``g`` set to `init_scale`."""
    # Small row (filter) norms keep ||W||_2 well below 1 for a random W: the cell starts
    # as a contraction, so the first solves converge quickly.
    wn = weight_norm(layer)
    xp = namespace(wn.g)
    return wn.replace(
        g=xp.full(wn.g.shape, float(init_scale), dtype=wn.g.dtype, device=_device(wn.g))
    )


def _deq_config(config: dict) -> dict:
    known = {"method", "backward", "rtol", "atol", "maxiter", "options", "backward_options"}
    extra = sorted(set(config) - known)
    if extra:
        msg = f"unknown DEQ options {extra}; known: {sorted(known)}"
        raise TypeError(msg)
    return config


def _classifier(injection, cell, head, dropout: float, mask_shape: tuple, config: dict):
    """The :class:`DEQClassifier` of the parts, its DEQ configured by the user's `config`."""
    return DEQClassifier(
        injection=injection,
        deq=DEQ(cell, **_deq_config(config)),
        head=head,
        dropout=VariationalDropout(rate=dropout),
        mask_shape=mask_shape,
    )


def mlp_deq(
    in_features: int = 64,
    num_classes: int = 10,
    *,
    width: int = 64,
    dropout: float = 0.0,
    init_scale: float = 0.2,
    seed=0,
    dtype=None,
    backend="numpy",
    device=None,
    **deq_config: Any,
) -> DEQClassifier:
    """A fully connected DEQ classifier (the default model of ``implicitnet train``).

    ``logits = head(z*)``, ``z* = relu(LayerNorm(W z* + U x + b))`` with ``W``
    weight-normalised (:func:`weight_norm`) and initialised small, so the cell starts
    as a contraction.

    Parameters
    ----------
    in_features, num_classes : int
        Input size (64 for the 8x8 digits) and number of classes.
    width : int, default: 64
        Size of the equilibrium state.
    dropout : float, default: 0.0
        Rate of the variational dropout applied to the cell's output during training
        (one mask per solve; draw it with :meth:`DEQClassifier.mask`).
    init_scale : float, default: 0.2
        Initial norm of every row of ``W`` (the weight-norm magnitudes ``g``).
    seed : int or numpy.random.Generator, default: 0
        Source of the initial parameters.
    dtype, backend, device
        As in :meth:`Linear.create`.
    **deq_config
        Static configuration of the :class:`DEQ` (`method`, `backward`, `rtol`,
        `atol`, `maxiter`, `options`, `backward_options`).

    Returns
    -------
    DEQClassifier
    """
    check_int(width, "width", minimum=1)
    rng = generator(seed)
    kw = {"dtype": dtype, "backend": backend, "device": device}
    injection = Linear.create(in_features, width, seed=rng, **kw)
    lin = _small_weight_norm(Linear.create(width, width, bias=False, seed=rng, **kw), init_scale)
    cell = MLPCell(linear=lin, norm=LayerNorm.create(width, **kw))
    head = Linear.create(width, num_classes, seed=rng, **kw)
    return _classifier(injection, cell, head, dropout, (width,), deq_config)


def conv_deq(
    in_channels: int = 1,
    num_classes: int = 10,
    *,
    channels: int = 16,
    groups: int = 4,
    image_size: int = 8,
    pool: int = 2,
    dropout: float = 0.0,
    init_scale: float = 0.2,
    seed=0,
    dtype=None,
    backend="numpy",
    device=None,
    **deq_config: Any,
) -> DEQClassifier:
    """A convolutional DEQ classifier for small images (``--model conv``).

    Stem ``GroupNorm(conv3x3(x))``; cell ``z -> relu(GroupNorm(conv3x3(z) + stem))``
    with a weight-normalised convolution; head: ``pool x pool`` average pooling,
    flatten, linear.

    Parameters
    ----------
    in_channels, num_classes : int
        Input channels and number of classes.
    channels : int, default: 16
        Channels of the equilibrium state.
    groups : int, default: 4
        Groups of the GroupNorms (must divide `channels`).
    image_size : int, default: 8
        Height and width of the (square) input images.
    pool : int, default: 2
        Pooling window of the head (must divide `image_size`).
    dropout : float, default: 0.0
        Rate of the variational dropout of whole channels of the cell's output.
    init_scale : float, default: 0.2
        Initial norm of every filter of the cell's convolution.
    seed, dtype, backend, device, **deq_config
        As in :func:`mlp_deq`.

    Returns
    -------
    DEQClassifier
    """
    check_int(channels, "channels", minimum=1)
    check_int(image_size, "image_size", minimum=1)
    check_int(pool, "pool", minimum=1)
    check_divides(pool, "pool", image_size, "image_size")
    rng = generator(seed)
    kw = {"dtype": dtype, "backend": backend, "device": device}
    stem = _Stem(
        conv=Conv2d.create(in_channels, channels, 3, padding=1, seed=rng, **kw),
        norm=GroupNorm.create(groups, channels, **kw),
    )
    conv = Conv2d.create(channels, channels, 3, padding=1, bias=False, seed=rng, **kw)
    cell = ConvCell(
        conv=_small_weight_norm(conv, init_scale), norm=GroupNorm.create(groups, channels, **kw)
    )
    features = channels * (image_size // pool) ** 2
    head = _PoolHead(linear=Linear.create(features, num_classes, seed=rng, **kw), pool=pool)
    return _classifier(stem, cell, head, dropout, (channels, 1, 1), deq_config)
