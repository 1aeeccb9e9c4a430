"""2-D convolution kernels on raw arrays: the backend's fast kernel, or a portable one.

NumPy and CuPy provide im2col kernels in ``implicitnet.backends`` (strided views and
one matmul). Any other array-API library gets the portable version here, which loops
over the ``kh * kw`` kernel offsets and accumulates one matmul of a shifted, strided
slice per offset: only standard operations (slicing, ``tensordot``, ``concat``), no
in-place updates.

Conventions (NCHW): ``x[N, C, H, W]``, ``w[O, C, kh, kw]``, output ``y[N, O, Ho, Wo]``
with ``Ho = (H + 2 padding - kh) // stride + 1``, and

    y[n, o, i, j] = sum_{c, a, b} w[o, c, a, b] * x_pad[n, c, stride i + a, stride j + b].
"""

from __future__ import annotations

from .. import backends
from .._xp import device, namespace

__all__ = [
    "conv2d_input_grad_raw",
    "conv2d_raw",
    "conv2d_weight_grad_raw",
    "conv_output_size",
    "portable_conv2d",
    "portable_conv2d_input_grad",
    "portable_conv2d_weight_grad",
]


def conv_output_size(n: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis."""
    return (n + 2 * padding - k) // stride + 1


def _zeros(shape, like, *, xp):
    return xp.zeros(shape, dtype=like.dtype, device=device(like))


def _pad_axis(x, before: int, after: int, axis: int, *, xp):
    """Zero-pad one axis of `x` with `before` and `after` entries (out of place)."""
    if not (before or after):
        return x
    parts = []
    for size in (before, None, after):
        if size is None:
            parts.append(x)
        elif size:
            shape = list(x.shape)
            shape[axis] = size
            parts.append(_zeros(tuple(shape), x, xp=xp))
    return xp.concat(parts, axis=axis)


def _pad(x, top: int, bottom: int, left: int, right: int, *, xp):
    """Zero-pad the two spatial axes of an NCHW array (out of place)."""
    return _pad_axis(_pad_axis(x, top, bottom, 2, xp=xp), left, right, 3, xp=xp)


def _dilate(g, stride: int, *, xp):
    """Insert ``stride - 1`` zeros between the spatial entries of `g`."""
    if stride == 1:
        return g
    n, o, ho, wo = g.shape
    z = _zeros(g.shape, g, xp=xp)
    # Along W: stack [g, 0, ..., 0] on a new last axis, flatten, drop the trailing zeros.
    g = xp.reshape(xp.stack([g] + [z] * (stride - 1), axis=4), (n, o, ho, wo * stride))
    g = g[:, :, :, : stride * (wo - 1) + 1]
    wd = stride * (wo - 1) + 1
    z = _zeros(g.shape, g, xp=xp)
    g = xp.reshape(xp.stack([g] + [z] * (stride - 1), axis=3), (n, o, ho * stride, wd))
    return g[:, :, : stride * (ho - 1) + 1, :]


def _correlate(xpad, w, ho: int, wo: int, stride: int, *, xp):
    # y = sum over offsets (a, b) of  x_pad[:, :, a + s i, b + s j] contracted with w[:, :, a, b]
    kh, kw = w.shape[2:]
    out = None
    for a in range(kh):
        for b in range(kw):
            patch = xpad[
                :, :, a : a + stride * (ho - 1) + 1 : stride, b : b + stride * (wo - 1) + 1 : stride
            ]
            term = xp.tensordot(patch, w[:, :, a, b], axes=((1,), (1,)))  # (N, Ho, Wo, O)
            out = term if out is None else out + term
    return xp.permute_dims(out, (0, 3, 1, 2))


def portable_conv2d(x, w, stride: int = 1, padding: int = 0, *, xp):
    """Portable :func:`conv2d_raw` (any array-API namespace)."""
    kh, kw = w.shape[2:]
    ho = conv_output_size(x.shape[2], kh, stride, padding)
    wo = conv_output_size(x.shape[3], kw, stride, padding)
    xpad = _pad(x, padding, padding, padding, padding, xp=xp)
    return _correlate(xpad, w, ho, wo, stride, xp=xp)


def portable_conv2d_input_grad(g, w, x_shape, stride: int = 1, padding: int = 0, *, xp):
    """Portable :func:`conv2d_input_grad_raw`: the transposed convolution."""
    h, wd = x_shape[2:]
    kh, kw = w.shape[2:]
    hp, wp = h + 2 * padding, wd + 2 * padding
    # dx_pad[y] = sum_{i, a : s i + a = y} g[i] w[a]: a stride-1 correlation of the
    # dilated g, padded by k - 1 (plus the rows the stride never reached), with the
    # flipped kernel transposed to (C, O, kh, kw).
    gd = _dilate(g, stride, xp=xp)
    extra_h = hp - (gd.shape[2] + kh - 1)
    extra_w = wp - (gd.shape[3] + kw - 1)
    gp = _pad(gd, kh - 1, kh - 1 + extra_h, kw - 1, kw - 1 + extra_w, xp=xp)
    wf = xp.flip(xp.permute_dims(w, (1, 0, 2, 3)), axis=(2, 3))
    dxp = _correlate(gp, wf, hp, wp, 1, xp=xp)
    if padding:
        dxp = dxp[:, :, padding : padding + h, padding : padding + wd]
    return dxp


def portable_conv2d_weight_grad(g, x, w_shape, stride: int = 1, padding: int = 0, *, xp):
    """Portable :func:`conv2d_weight_grad_raw`."""
    o, c, kh, kw = w_shape
    ho, wo = g.shape[2:]
    xpad = _pad(x, padding, padding, padding, padding, xp=xp)
    cols = []
    for a in range(kh):
        for b in range(kw):
            patch = xpad[
                :, :, a : a + stride * (ho - 1) + 1 : stride, b : b + stride * (wo - 1) + 1 : stride
            ]
            # dw[:, :, a, b] = sum_{n, i, j} g[n, :, i, j] patch[n, :, i, j]
            cols.append(xp.tensordot(g, patch, axes=((0, 2, 3), (0, 2, 3))))  # (O, C)
    return xp.reshape(xp.stack(cols, axis=2), (o, c, kh, kw))


def _fast(x):
    """The backend module when it has im2col kernels, else ``None``."""
    be = backends.backend_of(x)
    return be if getattr(be, "conv2d", None) is not None else None


def conv2d_raw(x, w, stride: int = 1, padding: int = 0):
    """2-D cross-correlation of raw NCHW arrays (fast backend kernel when there is one)."""
    be = _fast(x)
    if be is not None:
        return be.conv2d(x, w, stride, padding)
    return portable_conv2d(x, w, stride, padding, xp=namespace(x, w))


def conv2d_input_grad_raw(g, w, x_shape, stride: int = 1, padding: int = 0):
    """VJP of :func:`conv2d_raw` in ``x`` (the transposed convolution of `g`)."""
    be = _fast(g)
    if be is not None:
        return be.conv2d_input_grad(g, w, tuple(x_shape), stride, padding)
    return portable_conv2d_input_grad(g, w, tuple(x_shape), stride, padding, xp=namespace(g, w))


def conv2d_weight_grad_raw(g, x, w_shape, stride: int = 1, padding: int = 0):
    """VJP of :func:`conv2d_raw` in ``w``."""
    be = _fast(g)
    if be is not None:
        return be.conv2d_weight_grad(g, x, tuple(w_shape), stride, padding)
    return portable_conv2d_weight_grad(g, x, tuple(w_shape), stride, padding, xp=namespace(g, x))
