"""Data: the embedded digits, MNIST-format IDX files, character text corpora, batching."""

from ._batches import batches as batches
from ._batches import num_batches as num_batches
from ._datasets import Dataset as Dataset
from ._datasets import load_digits as load_digits
from ._datasets import load_idx as load_idx
from ._datasets import load_mnist as load_mnist
from ._datasets import read_idx as read_idx
from ._text import TextCorpus as TextCorpus
from ._text import load_text as load_text
from ._text import pydoc_text as pydoc_text
from ._text import text_sequences as text_sequences

__all__ = [
    "Dataset",
    "TextCorpus",
    "batches",
    "load_digits",
    "load_idx",
    "load_mnist",
    "load_text",
    "num_batches",
    "pydoc_text",
    "read_idx",
    "text_sequences",
]
