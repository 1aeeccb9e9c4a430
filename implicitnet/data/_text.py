"""Character-level text corpora: the pydoc topics of the standard library, or a file."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from .. import backends
from .._validate import check_int
from .._xp import device, namespace

__all__ = ["TextCorpus", "load_text", "pydoc_text", "text_sequences"]

#: Length of the blocks of the fixed split rule (see :func:`load_text`).
SPLIT_BLOCK = 1000
#: Of every 20 consecutive blocks, block 18 goes to validation and block 19 to test.
SPLIT_PERIOD = 20


class TextCorpus(NamedTuple):
    """A character corpus split into train, validation and test token arrays.

    ``train``, ``valid`` and ``test`` are 1-D int64 arrays of symbol codes; ``vocab`` is
    the string of the symbols in code order (code ``i`` is ``vocab[i]``); ``name``
    says where the text came from.
    """

    train: Any
    valid: Any
    test: Any
    vocab: str
    name: str

    @property
    def vocab_size(self) -> int:
        """Number of symbols."""
        return len(self.vocab)

    def encode(self, text: str, *, like=None) -> Any:
        """Codes of `text` (a 1-D int64 array like `like`, default like ``train``).

        Raises
        ------
        ValueError
            If `text` holds a symbol outside the vocabulary (named in the message).
        """
        like = self.train if like is None else like
        return _encode(text, self.vocab, like=like, what="text")

    def decode(self, codes) -> str:
        """The text of a 1-D array (or sequence) of codes."""
        return "".join(self.vocab[int(c)] for c in _tolist(codes))


def _tolist(codes) -> list:
    if isinstance(codes, list | tuple):
        return list(codes)
    xp = namespace(codes)
    return [int(codes[i]) for i in range(int(xp.reshape(codes, (-1,)).shape[0]))]


def _encode(text: str, vocab: str, *, like, what: str):
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in text if ch not in index})
    if unknown:
        msg = f"`{what}` holds symbols outside the vocabulary: {''.join(unknown)!r}"
        raise ValueError(msg)
    xp = namespace(like)
    return xp.asarray([index[ch] for ch in text], dtype=xp.int64, device=device(like))


def pydoc_text() -> str:
    """The text of ``pydoc_data.topics``: every topic, joined in sorted-key order.

    The pydoc topics (the language reference sections that ``help()`` shows) ship with
    every CPython, so this corpus needs no download. It is about 465,000 characters
    and about 100 distinct symbols; the exact text varies slightly between Python
    versions.

    Examples
    --------
    >>> from implicitnet import data
    >>> len(data.pydoc_text()) > 100_000
    True
    """
    from pydoc_data.topics import topics  # deferred: half a megabyte of text, rarely used

    return "".join(topics[key] for key in sorted(topics))


def load_text(
    path: str | os.PathLike | None = None,
    *,
    backend="numpy",
    device=None,
) -> TextCorpus:
    """A character-level corpus, split into train / validation / test by a fixed rule.

    Parameters
    ----------
    path : str or path-like, optional
        A UTF-8 text file. Default: the pydoc topics of the standard library
        (:func:`pydoc_text`).
    backend : str or backend module, default: "numpy"
        Array library of the code arrays.
    device : optional
        Device of the arrays.

    Returns
    -------
    TextCorpus
        The vocabulary is every distinct symbol of the whole text, sorted.

    Raises
    ------
    OSError
        If the file cannot be read.
    ValueError
        If the file is not UTF-8 text or is too short to split (under 2 blocks).

    Notes
    -----
    The split rule: the text is cut into consecutive blocks of 1,000 characters; of
    every 20 blocks, the 19th goes to validation, the 20th to test and the others to
    training (90 / 5 / 5 percent, interleaved through the text, so all three splits
    sample every part of it). A text shorter than 20 blocks gives its last block to
    test and the one before to validation.

    Examples
    --------
    >>> from implicitnet import data
    >>> corpus = data.load_text()
    >>> corpus.vocab_size > 90, corpus.train.shape[0] > 10 * corpus.test.shape[0]
    (True, True)
    >>> corpus.decode(corpus.encode("def f(x):"))
    'def f(x):'
    """
    be = backends.get_backend(backend)
    if path is None:
        text, name = pydoc_text(), "pydoc_data.topics"
    else:
        name = os.fspath(path)
        try:
            with open(name, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError as exc:
            msg = f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            raise ValueError(msg) from None
    blocks = [text[i : i + SPLIT_BLOCK] for i in range(0, len(text), SPLIT_BLOCK)]
    if len(blocks) < 3:
        msg = (
            f"{name}: {len(text)} characters are too few to split into train, validation "
            f"and test (need more than {2 * SPLIT_BLOCK})"
        )
        raise ValueError(msg)
    parts: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    if len(blocks) < SPLIT_PERIOD:
        parts["train"], parts["valid"], parts["test"] = blocks[:-2], [blocks[-2]], [blocks[-1]]
    else:
        for i, block in enumerate(blocks):
            r = i % SPLIT_PERIOD
            key = "valid" if r == SPLIT_PERIOD - 2 else "test" if r == SPLIT_PERIOD - 1 else "train"
            parts[key].append(block)
    vocab = "".join(sorted(set(text)))
    like = be.namespace().zeros((0,), dtype=be.namespace().int64, device=device)
    arrays = {k: _encode("".join(v), vocab, like=like, what="text") for k, v in parts.items()}
    return TextCorpus(vocab=vocab, name=name, **arrays)


def text_sequences(codes, length: int, *, offset: int = 0, stride: int | None = None):
    """Windows of `codes` as ``(inputs, targets)``, each ``(n, length)``.

    ``targets[i, t]`` is the symbol after ``inputs[i, t]`` (the next-character task).
    Window ``i`` starts at ``offset + i * stride``; there are as many windows as fit
    with their targets inside `codes`.

    Parameters
    ----------
    codes : 1-D int array
        The text as codes.
    length : int
        Window length.
    offset : int, default: 0
        Start of the first window (a different offset per epoch shows the model other
        cut points).
    stride : int, optional
        Distance between the starts of consecutive windows. Default: `length`
        (non-overlapping windows); smaller values give overlapping windows, as
        ``implicitnet train`` uses to score every character with context.

    Raises
    ------
    TypeError
        If `length`, `stride` or `offset` is not an integer.
    ValueError
        If `length` or `stride` is below 1, `offset` is negative, or `codes` is too
        short for one window.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import data
    >>> x, y = data.text_sequences(np.arange(7), 3)
    >>> x.tolist(), y.tolist()
    ([[0, 1, 2], [3, 4, 5]], [[1, 2, 3], [4, 5, 6]])
    >>> data.text_sequences(np.arange(7), 4, stride=2)[0].tolist()
    [[0, 1, 2, 3], [2, 3, 4, 5]]
    """
    length = check_int(length, "length", minimum=1)
    offset = check_int(offset, "offset", minimum=0)
    stride = length if stride is None else check_int(stride, "stride", minimum=1)
    xp = namespace(codes)
    total = int(codes.shape[0])
    # Window i needs codes[start : start + length + 1] (its targets run one further).
    n = max(0, (total - 1 - offset - length) // stride + 1)
    if n == 0:
        msg = f"`codes` ({total} symbols) is too short for one window of {length} after {offset}"
        raise ValueError(msg)
    if stride == length:
        stop = offset + n * length
        x = xp.reshape(codes[offset:stop], (n, length))
        y = xp.reshape(codes[offset + 1 : stop + 1], (n, length))
        return x, y
    dev = device(codes)
    starts = xp.reshape(xp.arange(n, device=dev) * stride + offset, (n, 1))
    index = xp.reshape(starts + xp.reshape(xp.arange(length, device=dev), (1, length)), (-1,))
    x = xp.reshape(xp.take(codes, index, axis=0), (n, length))
    y = xp.reshape(xp.take(codes, index + 1, axis=0), (n, length))
    return x, y
