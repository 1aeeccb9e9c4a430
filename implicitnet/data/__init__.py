"""Data: the embedded digits data set, MNIST-format IDX files, seeded batching."""

from ._batches import batches as batches
from ._batches import num_batches as num_batches
from ._datasets import Dataset as Dataset
from ._datasets import load_digits as load_digits
from ._datasets import load_idx as load_idx
from ._datasets import load_mnist as load_mnist
from ._datasets import read_idx as read_idx

__all__ = ["Dataset", "batches", "load_digits", "load_idx", "load_mnist", "num_batches", "read_idx"]
