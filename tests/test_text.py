"""Character corpora: the pydoc topics, text files, the fixed split, windows."""

from __future__ import annotations

import numpy as np
import pytest

from implicitnet import data


def test_pydoc_corpus_split_rule(backend, xp):
    text = data.pydoc_text()
    corpus = data.load_text(backend=backend.name)
    assert corpus.name == "pydoc_data.topics"
    assert corpus.vocab == "".join(sorted(set(text)))
    n_train, n_valid, n_test = (int(a.shape[0]) for a in (corpus.train, corpus.valid, corpus.test))
    assert n_train + n_valid + n_test == len(text)
    # every 20 blocks of 1000: 18 train, 1 validation, 1 test
    assert abs(n_valid / len(text) - 0.05) < 0.002 and abs(n_test / len(text) - 0.05) < 0.002
    assert corpus.train.dtype == xp.int64
    # the first validation block is text[18000:19000]; the first test block follows it
    assert corpus.decode(corpus.valid[:1000]) == text[18000:19000]
    assert corpus.decode(corpus.test[:1000]) == text[19000:20000]
    assert corpus.decode(corpus.train[:50]) == text[:50]


def test_text_file(tmp_path, backend, xp):
    path = tmp_path / "t.txt"
    text = "".join(f"line {i}: héllo wörld\n" for i in range(400))
    path.write_text(text, encoding="utf-8")
    corpus = data.load_text(path, backend=backend.name)
    assert corpus.name == str(path)
    assert set(corpus.vocab) == set(text)
    assert corpus.decode(corpus.test) == text[-len(corpus.decode(corpus.test)) :]
    assert corpus.decode(corpus.encode("wörld")) == "wörld"
    with pytest.raises(ValueError, match="outside the vocabulary: 'Z'"):
        corpus.encode("Zero")


def test_text_file_errors(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf-8")
    with pytest.raises(ValueError, match="too few"):
        data.load_text(short)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00" * 2000)
    with pytest.raises(ValueError, match="not UTF-8"):
        data.load_text(bad)
    with pytest.raises(OSError):
        data.load_text(tmp_path / "missing.txt")


def test_text_sequences(xp):
    codes = xp.asarray(np.arange(23))
    x, y = data.text_sequences(codes, 5, offset=2)
    np.testing.assert_array_equal(np.asarray(x), np.arange(2, 22).reshape(4, 5))
    np.testing.assert_array_equal(np.asarray(y), np.arange(3, 23).reshape(4, 5))
    with pytest.raises(ValueError, match="`length`"):
        data.text_sequences(codes, 0)
    with pytest.raises(ValueError, match="too short"):
        data.text_sequences(codes, 30)


@pytest.mark.parametrize(
    ("n", "length", "stride", "offset"),
    [(23, 5, 2, 0), (40, 8, 3, 1), (9, 8, 8, 0), (30, 4, 1, 5), (17, 6, 10, 0)],
)
def test_text_sequences_with_stride_match_a_loop(xp, n, length, stride, offset):
    codes = np.arange(100, 100 + n)
    x, y = data.text_sequences(xp.asarray(codes), length, stride=stride, offset=offset)
    starts = range(offset, n - length, stride)  # window + its targets inside the text
    want_x = [codes[s : s + length] for s in starts]
    want_y = [codes[s + 1 : s + length + 1] for s in starts]
    np.testing.assert_array_equal(np.asarray(x), np.asarray(want_x).reshape(-1, length))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want_y).reshape(-1, length))
    assert x.dtype == xp.asarray(codes).dtype


def test_text_sequences_argument_errors():
    codes = np.arange(20)
    with pytest.raises(ValueError, match="`stride` must be at least 1"):
        data.text_sequences(codes, 4, stride=0)
    with pytest.raises(TypeError, match="`stride` must be an integer"):
        data.text_sequences(codes, 4, stride=1.5)
    with pytest.raises(TypeError, match="`length` must be an integer"):
        data.text_sequences(codes, True)
    with pytest.raises(ValueError, match="`offset` must be at least 0"):
        data.text_sequences(codes, 4, offset=-1)
    with pytest.raises(ValueError, match="too short"):
        data.text_sequences(codes, 4, offset=16)
