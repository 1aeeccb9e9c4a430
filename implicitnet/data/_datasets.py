"""The embedded digits data set and MNIST-format IDX files."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from .. import backends
from .._validate import check_int, check_real
from ..backends import host

__all__ = ["Dataset", "load_digits", "load_idx", "load_mnist", "read_idx"]


class Dataset(NamedTuple):
    """A train/test split of a classification data set.

    ``x_*`` are float images of shape ``(n, channels, height, width)`` (or ``(n, features)``
    when loaded with ``flatten=True``); ``y_*`` are int64 class labels.
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    num_classes: int


def _images(a, *, flatten: bool):
    # (n, h, w) -> (n, 1, h, w), or (n, h * w) when flattened
    n = a.shape[0]
    if flatten:
        return a.reshape(n, -1)
    return a.reshape(n, 1, *a.shape[1:])


def load_digits(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    flatten: bool = False,
    dtype=None,
    backend="numpy",
    device=None,
) -> Dataset:
    """The handwritten digits embedded in scikit-learn, split into train and test sets.

    1,797 grey-scale 8x8 images of the digits 0-9 (the UCI "optical recognition of
    handwritten digits" test set, as shipped inside scikit-learn: nothing is downloaded).
    Pixel values are scaled from 0..16 to [0, 1].

    Parameters
    ----------
    seed : int, default: 0
        Seed of the random split; the same seed gives the same split everywhere.
    test_fraction : float, default: 0.2
        Fraction of the images in the test set, in ``(0, 1)`` (0.2 gives 1,438/359).
    flatten : bool, default: False
        Return images as ``(n, 64)`` vectors instead of ``(n, 1, 8, 8)``.
    dtype : dtype or str, optional
        float32 or float64 (default) for the images; labels are int64.
    backend : str or backend module, default: "numpy"
        Array library of the returned arrays.
    device : optional
        Device of the returned arrays (backend-specific).

    Returns
    -------
    Dataset
        ``(x_train, y_train, x_test, y_test, num_classes=10)``.

    Raises
    ------
    ValueError
        If `test_fraction` is not in ``(0, 1)`` or `dtype` is not a float type.

    Examples
    --------
    >>> from implicitnet import data
    >>> ds = data.load_digits(dtype="float32")
    >>> ds.x_train.shape, ds.x_test.shape, ds.x_train.dtype.name, ds.num_classes
    ((1438, 1, 8, 8), (359, 1, 8, 8), 'float32', 10)
    """
    be = backends.get_backend(backend)
    check_real(test_fraction, "test_fraction", low=0.0, high=1.0, low_open=True, high_open=True)
    images, labels = host.digits(dtype=host.dtype_name(dtype))
    train, test = host.split_indices(images.shape[0], float(test_fraction), seed)
    images = _images(images, flatten=flatten)
    return Dataset(
        x_train=be.from_numpy(images[train], device=device),
        y_train=be.from_numpy(labels[train], device=device),
        x_test=be.from_numpy(images[test], device=device),
        y_test=be.from_numpy(labels[test], device=device),
        num_classes=10,
    )


def read_idx(path: str | os.PathLike, *, backend="numpy", device=None):
    """Read an IDX file (the MNIST format), optionally gzip-compressed.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip compression is detected from the content, not the name.
    backend : str or backend module, default: "numpy"
        Array library of the returned array.
    device : optional
        Device of the returned array.

    Returns
    -------
    array
        The data, with the file's shape and element type (uint8, int8, int16, int32,
        float32 or float64).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not a valid IDX file (bad magic number, unknown type code,
        truncated or trailing data, corrupt gzip stream); the message names `path`.

    Notes
    -----
    An IDX file is a 4-byte magic number ``00 00 TT DD`` (``TT`` the element type code,
    ``DD`` the number of dimensions), ``DD`` big-endian uint32 sizes, then the elements
    in C order, big-endian.

    Examples
    --------
    >>> import os, struct, tempfile
    >>> from implicitnet import data
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.idx")
    >>> with open(path, "wb") as fh:
    ...     _ = fh.write(struct.pack(">4BI", 0, 0, 0x08, 1, 3) + bytes([7, 2, 1]))
    >>> data.read_idx(path).tolist()
    [7, 2, 1]
    """
    be = backends.get_backend(backend)
    return be.from_numpy(host.read_idx(path), device=device)


def load_idx(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    *,
    num_classes: int = 10,
    flatten: bool = False,
    dtype=None,
    backend="numpy",
    device=None,
):
    """Load images and labels from a pair of IDX files (as MNIST is distributed).

    Parameters
    ----------
    images_path : str or path-like
        IDX file of shape ``(n, height, width)``; uint8 pixels are scaled to [0, 1].
    labels_path : str or path-like
        IDX file of ``n`` integer labels, each in ``0 .. num_classes - 1``.
    num_classes : int, default: 10
        Number of classes the labels declare (10 for MNIST and Fashion-MNIST).
    flatten : bool, default: False
        Return images as ``(n, height * width)`` instead of ``(n, 1, height, width)``.
    dtype : dtype or str, optional
        float32 or float64 (default) for the images; labels are int64.
    backend : str or backend module, default: "numpy"
        Array library of the returned arrays.
    device : optional
        Device of the returned arrays.

    Returns
    -------
    x, y : arrays
        Images and int64 labels.

    Raises
    ------
    ValueError
        If a file is malformed, the images are not 3-D, the labels are not 1-D integers,
        a label lies outside ``0 .. num_classes - 1``, or the counts differ. Messages
        name the file.
    """
    be = backends.get_backend(backend)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    images = host.read_idx(images_path)
    labels = host.read_idx(labels_path)
    if images.ndim != 3:
        msg = (
            f"{os.fspath(images_path)}: images must be 3-D (n, height, width), got shape "
            f"{images.shape}"
        )
        raise ValueError(msg)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        msg = (
            f"{os.fspath(labels_path)}: labels must be 1-D integers, got shape "
            f"{labels.shape} of {labels.dtype.name}"
        )
        raise ValueError(msg)
    if labels.shape[0] != images.shape[0]:
        msg = (
            f"{os.fspath(labels_path)}: {labels.shape[0]} labels for {images.shape[0]} "
            f"images in {os.fspath(images_path)}"
        )
        raise ValueError(msg)
    if labels.shape[0] > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            msg = (
                f"{os.fspath(labels_path)}: label {bad} lies outside 0..{num_classes - 1} "
                f"(the {num_classes} classes declared)"
            )
            raise ValueError(msg)
    scale = 255.0 if images.dtype.name == "uint8" else 1.0
    x = _images(host.astype(images, host.dtype_name(dtype), scale), flatten=flatten)
    y = labels.astype("int64")
    return be.from_numpy(x, device=device), be.from_numpy(y, device=device)


_MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(directory: str, stem: str) -> str:
    for suffix in ("", ".gz"):
        for name in (stem, stem.replace("-idx", ".idx")):
            path = os.path.join(directory, name + suffix)
            if os.path.isfile(path):
                return path
    msg = f"{directory}: no file {stem} or {stem}.gz (MNIST naming) in this directory"
    raise FileNotFoundError(msg)


def load_mnist(
    directory: str | os.PathLike,
    *,
    num_classes: int = 10,
    flatten: bool = False,
    dtype=None,
    backend="numpy",
    device=None,
) -> Dataset:
    """Load an MNIST-style directory of IDX files as a :class:`Dataset`.

    Parameters
    ----------
    directory : str or path-like
        Directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally with
        a ``.gz`` suffix), as MNIST and Fashion-MNIST are distributed.
    num_classes : int, default: 10
        Number of classes; every label must lie in ``0 .. num_classes - 1``.
    flatten, dtype, backend, device
        As in :func:`load_idx`.

    Returns
    -------
    Dataset
        The train and test sets, with `num_classes`.

    Raises
    ------
    FileNotFoundError
        If `directory` or one of the four files is missing.
    ValueError
        If a file is malformed or holds a label outside the classes (see
        :func:`load_idx`); the message names the file.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        msg = f"{directory}: not a directory"
        raise FileNotFoundError(msg)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    kw = {
        "num_classes": num_classes,
        "flatten": flatten,
        "dtype": dtype,
        "backend": backend,
        "device": device,
    }
    x_train, y_train = load_idx(*(_find(directory, s) for s in _MNIST_NAMES["train"]), **kw)
    x_test, y_test = load_idx(*(_find(directory, s) for s in _MNIST_NAMES["test"]), **kw)
    return Dataset(x_train, y_train, x_test, y_test, num_classes=num_classes)
