"""Differentiable 2-D convolution: primitives over the raw kernels, closed under VJPs.

With ``y = conv2d(x, w)`` and a cotangent ``g`` of ``y``:

* ``conv2d_input_grad(g, w) = J_x^T g`` (the transposed convolution),
* ``conv2d_weight_grad(g, x) = J_w^T g``.

Both are bilinear, and their own VJPs are again these three operations, which makes
the convolution differentiable to any order:

* ``<c, input_grad(g, w)> = <conv2d(c, w), g>``: cotangents ``conv2d(c, w)`` for ``g``
  and ``weight_grad(g, c)`` for ``w``;
* ``<c, weight_grad(g, x)> = <conv2d(x, c), g>``: cotangents ``conv2d(x, c)`` for ``g``
  and ``input_grad(g, c)`` for ``x``.
"""

from __future__ import annotations

from ..autodiff import defvjp, primitive
from ._conv_kernels import conv2d_input_grad_raw, conv2d_raw, conv2d_weight_grad_raw

__all__ = ["conv2d", "conv2d_input_grad", "conv2d_weight_grad"]


@primitive
def conv2d(x, w, /, *, stride: int = 1, padding: int = 0):
    """2-D cross-correlation, NCHW: ``x[N, C, H, W]``, ``w[O, C, kh, kw]`` -> ``y[N, O, Ho, Wo]``.

    Parameters
    ----------
    x : array or Tensor
        Input images.
    w : array or Tensor
        Filters.
    stride : int, default: 1
        Step between output positions, both spatial axes.
    padding : int, default: 0
        Zeros added on each side of both spatial axes.

    Returns
    -------
    array or Tensor
        ``y[n, o, i, j] = sum_{c, a, b} w[o, c, a, b] x_pad[n, c, stride i + a,
        stride j + b]``, with ``Ho = (H + 2 padding - kh) // stride + 1``.

    Notes
    -----
    NumPy and CuPy use an im2col kernel from ``implicitnet.backends`` (strided views and
    one matrix product); other libraries a portable loop over the kernel offsets.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> nn.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))).tolist()
    [[[[4.0, 4.0], [4.0, 4.0]]]]
    """
    return conv2d_raw(x, w, stride, padding)


@primitive
def conv2d_input_grad(g, w, /, *, x_shape, stride: int = 1, padding: int = 0):
    """VJP of :func:`conv2d` in ``x`` (the transposed convolution of `g` by `w`)."""
    return conv2d_input_grad_raw(g, w, x_shape, stride, padding)


@primitive
def conv2d_weight_grad(g, x, /, *, w_shape, stride: int = 1, padding: int = 0):
    """VJP of :func:`conv2d` in ``w``."""
    return conv2d_weight_grad_raw(g, x, w_shape, stride, padding)


@defvjp(conv2d, save_inputs="others", save_output=False)
def _conv2d_vjp(ct, ans, x, w, /, *, xp, needs_grad, stride=1, padding=0):
    dx = dw = None
    if needs_grad[0]:
        dx = conv2d_input_grad(ct, w, x_shape=tuple(x.shape), stride=stride, padding=padding)
    if needs_grad[1]:
        dw = conv2d_weight_grad(ct, x, w_shape=tuple(w.shape), stride=stride, padding=padding)
    return dx, dw


@defvjp(conv2d_input_grad, save_inputs="others", save_output=False)
def _conv2d_input_grad_vjp(ct, ans, g, w, /, *, xp, needs_grad, x_shape, stride=1, padding=0):
    dg = dw = None
    if needs_grad[0]:
        dg = conv2d(ct, w, stride=stride, padding=padding)
    if needs_grad[1]:
        dw = conv2d_weight_grad(g, ct, w_shape=tuple(w.shape), stride=stride, padding=padding)
    return dg, dw


@defvjp(conv2d_weight_grad, save_inputs="others", save_output=False)
def _conv2d_weight_grad_vjp(ct, ans, g, x, /, *, xp, needs_grad, w_shape, stride=1, padding=0):
    dg = dx = None
    if needs_grad[0]:
        dg = conv2d(x, ct, stride=stride, padding=padding)
    if needs_grad[1]:
        dx = conv2d_input_grad(g, ct, x_shape=tuple(x.shape), stride=stride, padding=padding)
    return dg, dx
