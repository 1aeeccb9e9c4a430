"""``implicitnet train --model transformer``, ``sample`` and ``evaluate`` on tiny runs."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from cli_helpers import json_lines as _json_lines
from cli_helpers import run as _run

# A tiny configuration: 64 windows of 16 characters, a 16-wide block.
TINY = [
    "train",
    "--model",
    "transformer",
    "--limit",
    "64",
    "--seq-len",
    "16",
    "--width",
    "16",
    "--batch-size",
    "32",
    "--no-progress",
]


def test_transformer_trains_and_reports_bits_per_character(capsys, tmp_path):
    ckpt = tmp_path / "lm.npz"
    code, out, err = _run(
        capsys, [*TINY, "--epochs", "3", "--lr", "1e-2", "--json", "--save", str(ckpt)]
    )
    assert code == 0, err
    rows = _json_lines(out)
    epochs, summary = rows[:-1], rows[-1]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert summary["status"] == "done" and summary["model"] == "transformer"
    # 103 symbols: log2(103) = 6.7 bits for a uniform guess; training lowers it
    assert epochs[-1]["train_bpc"] < epochs[0]["train_bpc"]
    assert summary["test_bpc"] == epochs[-1]["test_bpc"] < np.log2(103)
    for r in epochs:
        assert r["fwd_iter"] >= 1 and r["bwd_iter"] >= 1
        assert len(r["fwd_iter_batches"]) == 2  # 64 windows in batches of 32
        assert r["valid_bpc"] > 0 and r["fwd_rel_residual"] < 1.0
    # resume one more epoch: continues from the checkpoint
    code, out, err = _run(capsys, ["train", "--resume", str(ckpt), "--epochs", "4", "--json"])
    assert code == 0, err
    assert [r["epoch"] for r in _json_lines(out)[:-1]] == [4]
    code, out, err = _run(capsys, ["train", "--resume", str(ckpt), "--heads", "4"])
    assert code == 2 and "--heads 4 differs" in err
    # sampling: the prompt, then the requested number of characters
    code, out, err = _run(
        capsys, ["sample", str(ckpt), "--prompt", "def f", "--length", "12", "--seed", "1"]
    )
    assert code == 0, err
    assert out.startswith("def f") and len(out.rstrip("\n")) >= len("def f")
    code, out2, _ = _run(
        capsys,
        ["sample", str(ckpt), "--prompt", "def f", "--length", "12", "--json", "--seed", "1"],
    )
    sample = json.loads(out2)
    assert len(sample["text"]) == 12 and out == "def f" + sample["text"] + "\n"
    code, out, err = _run(capsys, ["sample", str(ckpt), "--prompt", "x", "--temperature", "0"])
    assert code == 0
    code, out, err = _run(capsys, ["sample", str(ckpt), "--prompt", "日本"])
    assert code == 2 and "--prompt holds symbols outside the vocabulary" in err
    code, out, err = _run(capsys, ["evaluate", str(ckpt), "--json"])
    assert code == 0, err
    ev = json.loads(out)
    assert ev["epoch"] == 4 and ev["windows"] == 64 and ev["bpc"] > 0


def test_human_readable_lines_and_text_file(capsys, tmp_path):
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 120, encoding="utf-8")
    code, out, err = _run(capsys, [*TINY, "--epochs", "1", "--data", str(text)])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("training a transformer DEQ language model on " + str(text))
    assert "bpc" in lines[1] and "valid" in lines[1] and "fwd" in lines[1]
    assert lines[-1].startswith("done: test ")


def test_jacobian_regularisation_option(capsys):
    code, out, err = _run(capsys, [*TINY, "--epochs", "1", "--jac-reg", "2.0", "--json"])
    assert code == 0, err
    row = _json_lines(out)[0]
    assert np.isfinite(row["train_bpc"])
    code, out, err = _run(capsys, [*TINY, "--epochs", "1", "--jac-reg", "0"])  # off
    assert code == 0, err
    assert "jac-reg 0," in out.splitlines()[0]
    code, out, err = _run(capsys, [*TINY, "--jac-reg", "-1"])
    assert code == 2 and "--jac-reg" in err
    code, out, err = _run(capsys, [*TINY, "--dropout", "0.2"])
    assert code == 2 and "--dropout" in err
    code, out, err = _run(capsys, [*TINY, "--classes", "5"])
    assert code == 2 and "--classes" in err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_transformer_plot(capsys, tmp_path):
    png = tmp_path / "curves.png"
    code, _, err = _run(capsys, [*TINY, "--epochs", "1", "--plot", str(png)])
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_refuses_a_classifier(capsys, tmp_path):
    ckpt = tmp_path / "mlp.npz"
    code, _, err = _run(
        capsys,
        ["train", "--limit", "64", "--epochs", "1", "--no-progress", "--save", str(ckpt)],
    )
    assert code == 0, err
    code, _, err = _run(capsys, ["sample", str(ckpt), "--prompt", "a"])
    assert code == 1 and "not a language model" in err
