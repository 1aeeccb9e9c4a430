"""Embedded digits, IDX files (written here, byte by byte) and seeded batching."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from implicitnet import data
from implicitnet.testing import assert_close

DTYPES = ["float32", "float64"]


def _rows_sorted(a):
    a = np.asarray(a).reshape(a.shape[0], -1)
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_digits_is_a_seeded_partition_of_sklearn_digits(backend, xp, dtype):
    from sklearn.datasets import load_digits

    ds = data.load_digits(seed=0, dtype=dtype, backend=backend.name)
    assert ds.num_classes == 10
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_test.shape == (359, 1, 8, 8)
    assert ds.x_train.dtype == getattr(xp, dtype) and ds.y_train.dtype == xp.int64
    for a in ds[:4]:
        assert backend.is_array(a)
    x = np.concatenate([backend.to_numpy(ds.x_train), backend.to_numpy(ds.x_test)])
    y = np.concatenate([backend.to_numpy(ds.y_train), backend.to_numpy(ds.y_test)])
    assert x.min() == 0.0 and x.max() == 1.0
    ref = load_digits()
    ref_rows = np.concatenate([ref.images.reshape(-1, 64) / 16, ref.target[:, None]], axis=1)
    got_rows = np.concatenate([x.reshape(-1, 64).astype(np.float64), y[:, None]], axis=1)
    np.testing.assert_allclose(_rows_sorted(got_rows), _rows_sorted(ref_rows), rtol=1e-7)
    # Same seed: same split on every backend; another seed: another split.
    np_ds = data.load_digits(seed=0, dtype=dtype)
    np.testing.assert_array_equal(backend.to_numpy(ds.y_test), np_ds.y_test)
    other = data.load_digits(seed=1, dtype=dtype, flatten=True)
    assert other.x_test.shape == (359, 64)
    assert not np.array_equal(other.y_test, np_ds.y_test)


def test_load_digits_bad_arguments():
    with pytest.raises(ValueError, match="`test_fraction`"):
        data.load_digits(test_fraction=1.0)
    with pytest.raises(ValueError, match="`dtype`"):
        data.load_digits(dtype="int32")
    with pytest.raises(ValueError, match="unknown backend"):
        data.load_digits(backend="jax")
    with pytest.raises(TypeError, match="`backend`"):
        data.load_digits(backend=3)


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    """An IDX file, written from the format's definition (independently of the reader)."""
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(big).tobytes()


@pytest.mark.parametrize(
    ("code", "dtype"),
    [
        (0x08, "uint8"),
        (0x09, "int8"),
        (0x0B, "int16"),
        (0x0C, "int32"),
        (0x0D, "float32"),
        (0x0E, "float64"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, backend, code, dtype, compress):
    rng = np.random.default_rng(code)
    arr = (rng.standard_normal((3, 4, 2)) * 50).astype(dtype)
    raw = _idx_bytes(arr, code)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = data.read_idx(path, backend=backend.name)
    assert backend.is_array(out)
    got = backend.to_numpy(out)
    assert got.dtype == np.dtype(dtype) and got.shape == (3, 4, 2)
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_idx_and_mnist_directory(tmp_path, backend, xp, dtype):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 6, 7), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(imgs, 0x08))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels, 0x08)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(imgs[:2], 0x08))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels[:2], 0x08))
    x, y = data.load_idx(
        tmp_path / "train-images-idx3-ubyte",
        tmp_path / "train-labels-idx1-ubyte.gz",
        dtype=dtype,
        backend=backend.name,
    )
    expected = xp.asarray(imgs.reshape(5, 1, 6, 7) / 255.0, dtype=getattr(xp, dtype))
    assert_close(x, expected, rtol=1e-7, xp=xp)
    assert_close(y, xp.asarray(labels.astype(np.int64)), rtol=0, xp=xp)
    ds = data.load_mnist(tmp_path, flatten=True, dtype=dtype, backend=backend.name)
    assert ds.x_train.shape == (5, 42) and ds.x_test.shape == (2, 42)
    assert ds.num_classes == 10  # MNIST's, whatever labels a small file happens to hold
    ds = data.load_mnist(tmp_path, num_classes=6, backend=backend.name)
    assert ds.num_classes == 6


@pytest.mark.parametrize(("label", "num_classes"), [(10, 10), (255, 10), (3, 3), (-1, 10)])
def test_labels_outside_the_classes_name_the_file(tmp_path, label, num_classes):
    imgs = np.zeros((3, 2, 2), dtype=np.uint8)
    labels = np.array([0, label, 1], dtype=np.int8 if label < 0 else np.uint8)
    code = 0x09 if label < 0 else 0x08
    (tmp_path / "images").write_bytes(_idx_bytes(imgs, 0x08))
    (tmp_path / "labels").write_bytes(_idx_bytes(labels, code))
    with pytest.raises(
        ValueError, match=rf"label {label} lies outside 0\.\.{num_classes - 1}"
    ) as info:
        data.load_idx(tmp_path / "images", tmp_path / "labels", num_classes=num_classes)
    assert str(tmp_path / "labels") in str(info.value)
    # The same files in an MNIST directory: the error names the labels file.
    for stem in ("train", "t10k"):
        (tmp_path / f"{stem}-images-idx3-ubyte").write_bytes(_idx_bytes(imgs, 0x08))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels[::-1], code))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8), 0x08))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        data.load_mnist(tmp_path, num_classes=num_classes)


def test_num_classes_is_checked():
    with pytest.raises(ValueError, match="`num_classes`"):
        data.load_mnist(".", num_classes=0)
    with pytest.raises(TypeError, match="`num_classes`"):
        data.load_idx("images", "labels", num_classes=2.5)


def test_load_idx_rejects_mismatches(tmp_path):
    imgs = np.zeros((4, 2, 2), dtype=np.uint8)
    (tmp_path / "i").write_bytes(_idx_bytes(imgs, 0x08))
    (tmp_path / "l").write_bytes(_idx_bytes(np.zeros(3, dtype=np.uint8), 0x08))
    (tmp_path / "f").write_bytes(_idx_bytes(np.zeros(4, dtype=np.float32), 0x0D))
    with pytest.raises(ValueError, match=r"3 labels for 4 images"):
        data.load_idx(tmp_path / "i", tmp_path / "l")
    with pytest.raises(ValueError, match=r"labels must be 1-D integers"):
        data.load_idx(tmp_path / "i", tmp_path / "f")
    with pytest.raises(ValueError, match=r"images must be 3-D"):
        data.load_idx(tmp_path / "l", tmp_path / "l")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(imgs, 0x08))
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(
            _idx_bytes(np.zeros(4, dtype=np.uint8), 0x08)
        )
        data.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.load_mnist(tmp_path / "nowhere")


GOOD = _idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)


# Explicit ids: pytest would otherwise spell the bytes out, and gzip output embeds the
# time (mtime=0 keeps the data fixed as well), so pytest-xdist workers would collect
# different tests.
@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param(b"", "shorter than the 4-byte header", id="empty"),
        pytest.param(b"\x00\x00", "shorter than the 4-byte header", id="two-bytes"),
        pytest.param(b"\x01\x02\x08\x01" + GOOD[4:], "magic number 0x01020801", id="magic"),
        pytest.param(b"\x00\x00\x07\x02" + GOOD[4:], "unknown IDX type code 0x07", id="code"),
        pytest.param(b"\x00\x00\x08\x00", "0 dimensions", id="zero-dims"),
        pytest.param(GOOD[:9], "truncated IDX header", id="short-header"),
        pytest.param(GOOD[:-1], "truncated IDX data", id="short-data"),
        pytest.param(GOOD + b"\x00", "1 bytes after the data", id="trailing-bytes"),
        pytest.param(gzip.compress(GOOD, mtime=0)[:-6], "corrupt gzip data", id="gzip-corrupt"),
        pytest.param(gzip.compress(GOOD[:-3], mtime=0), "truncated IDX data", id="gzip-short"),
    ],
)
def test_read_idx_corrupt_files_name_the_path(tmp_path, raw, match):
    path = tmp_path / "broken-file.idx"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=match) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.idx"):
        data.read_idx(tmp_path / "missing.idx")


def test_batches_in_order(backend, xp):
    x = backend.from_numpy(np.arange(10.0).reshape(5, 2))
    y = backend.from_numpy(np.arange(5))
    out = list(data.batches(x, y, batch_size=2))
    assert [int(yb.shape[0]) for _, yb in out] == [2, 2, 1]
    assert_close(out[2][0], xp.asarray([[8.0, 9.0]]), xp=xp)
    assert len(list(data.batches(x, y, batch_size=2, drop_last=True))) == 2
    assert data.num_batches(5, 2) == 3 and data.num_batches(5, 2, drop_last=True) == 2


def test_batches_seeded_shuffle(backend, xp):
    n = 23
    x = backend.from_numpy(np.arange(2.0 * n).reshape(n, 2))
    y = backend.from_numpy(np.arange(n))

    def epoch(seed, k):
        parts = list(data.batches(x, y, batch_size=4, seed=seed, epoch=k))
        xs = np.concatenate([backend.to_numpy(a) for a, _ in parts])
        ys = np.concatenate([backend.to_numpy(b) for _, b in parts])
        return xs, ys

    xs, ys = epoch(0, 0)
    np.testing.assert_array_equal(np.sort(ys), np.arange(n))  # a permutation
    np.testing.assert_array_equal(xs[:, 0], 2.0 * ys)  # x and y stay paired
    assert not np.array_equal(ys, np.arange(n))
    np.testing.assert_array_equal(epoch(0, 0)[1], ys)  # reproducible
    assert not np.array_equal(epoch(0, 1)[1], ys)  # another epoch, another order
    assert not np.array_equal(epoch(1, 0)[1], ys)  # another seed, another order
    # Same permutation on every backend.
    ref = np.concatenate(
        [
            b
            for _, b in data.batches(
                np.arange(2.0 * n).reshape(n, 2), np.arange(n), batch_size=4, seed=0
            )
        ]
    )
    np.testing.assert_array_equal(ys, ref)


def test_batches_bad_arguments():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="`batch_size`"):
        data.batches(x, batch_size=0)
    with pytest.raises(TypeError, match="`batch_size`"):
        data.batches(x, batch_size=2.0)
    with pytest.raises(ValueError, match="`y`"):
        data.batches(x, np.zeros(3), batch_size=2)
    with pytest.raises(ValueError, match="`epoch`"):
        data.batches(x, batch_size=2, seed=0, epoch=-1)
    with pytest.raises(ValueError, match="`seed`"):
        list(data.batches(x, batch_size=2, seed=-3))
