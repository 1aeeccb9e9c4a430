"""The command line: ``implicitnet train`` / ``evaluate`` through ``main(argv)``.

Short runs on subsets (``--limit``) keep this file fast; the full default run is
measured by hand and reported (README, CHANGELOG).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct

import numpy as np
import pytest

from implicitnet import nn
from implicitnet.cli import main

# A tiny, fast configuration: 160 training samples, batches of 32.
QUICK = ["--limit", "160", "--batch-size", "32", "--no-progress"]


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _json_lines(out):
    return [json.loads(line) for line in out.strip().splitlines()]


def _arrays(path):
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files if not k.startswith("__")}


def test_short_training_run_learns(capsys, tmp_path):
    code, out, err = _run(
        capsys, ["train", *QUICK, "--limit", "400", "--epochs", "4", "--lr", "1e-2", "--json"]
    )
    assert code == 0, err
    rows = _json_lines(out)
    epochs, summary = rows[:-1], rows[-1]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert summary["summary"] and summary["epochs"] == 4 and summary["seed"] == 0
    # The loss falls, and the test accuracy beats chance (10%) by a wide margin.
    assert epochs[-1]["loss"] < 0.6 * epochs[0]["loss"]
    assert summary["test_acc"] > 0.6
    for r in epochs:
        assert r["fwd_iter"] > 1 and r["bwd_iter"] > 1 and r["seconds"] > 0
        assert r["fwd_residual"] < 1.0
    assert "Traceback" not in err


def test_human_readable_output(capsys):
    code, out, err = _run(capsys, ["train", *QUICK, "--epochs", "1"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("training an MLP DEQ on digits")
    assert lines[1].startswith("epoch 1/1  loss ")
    for word in ("train", "test", "fwd", "res", "bwd", " s"):
        assert word in lines[1]
    assert lines[-1].startswith("done: test accuracy ")


@pytest.mark.parametrize(
    ("model", "solver", "backward"),
    [
        ("mlp", "broyden", "phantom"),
        ("mlp", "picard", "unrolled"),
        ("conv", "anderson", "implicit"),
    ],
)
def test_models_solvers_and_backward_modes(capsys, model, solver, backward):
    argv = ["train", *QUICK, "--limit", "64", "--epochs", "1", "--json"]
    argv += ["--model", model, "--solver", solver, "--backward", backward, "--width", "8"]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    row = _json_lines(out)[0]
    assert row["fwd_iter"] > 0 and np.isfinite(row["loss"])
    assert (row["bwd_iter"] is None) == (backward == "unrolled")


def test_save_then_resume_continues_exactly(capsys, tmp_path):
    full, part = tmp_path / "full.npz", tmp_path / "part.npz"
    common = ["train", *QUICK, "--epochs", "2", "--json"]
    code, out_full, err = _run(capsys, [*common, "--save", str(full)])
    assert code == 0, err
    code, out_a, err = _run(capsys, [*common, "--save", str(part), "--stop-after", "1"])
    assert code == 0, err
    assert nn.load_metadata(part)["epoch"] == 1
    code, out_b, err = _run(
        capsys, ["train", "--resume", str(part), "--save", str(part), "--json", "--no-progress"]
    )
    assert code == 0, err
    # Same parameters and optimizer state, bit for bit, and the same reported numbers.
    a, b = _arrays(full), _arrays(part)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    rows_full = _json_lines(out_full)[:-1]
    rows_resumed = _json_lines(out_a)[:-1] + _json_lines(out_b)[:-1]
    for r, s in zip(rows_full, rows_resumed, strict=True):
        for key in ("loss", "train_acc", "test_acc", "fwd_iter", "bwd_iter", "fwd_residual"):
            assert r[key] == s[key], key
    assert nn.load_metadata(part)["history"][0]["loss"] == rows_full[0]["loss"]


def test_resume_with_constant_schedule_matches_a_longer_run(capsys, tmp_path):
    """With a constant learning rate, `--epochs 1` then `--resume --epochs 2` == 2 epochs."""
    full, part = tmp_path / "full.npz", tmp_path / "part.npz"
    common = ["train", *QUICK, "--schedule", "constant", "--limit", "96"]
    assert main([*common, "--epochs", "2", "--save", str(full)]) == 0
    assert main([*common, "--epochs", "1", "--save", str(part)]) == 0
    assert (
        main(
            ["train", "--resume", str(part), "--epochs", "2", "--save", str(part), "--no-progress"]
        )
        == 0
    )
    capsys.readouterr()
    a, b = _arrays(full), _arrays(part)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_interrupted_save_leaves_the_previous_checkpoint(capsys, tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    assert main(["train", *QUICK, "--epochs", "1", "--save", str(path)]) == 0
    before = path.read_bytes()
    from implicitnet.backends import _io

    def dying_write(fh, arrays):
        fh.write(b"PK\x03\x04 partial")  # a partial archive, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(_io, "_write_npz", dying_write)
    code, _, err = _run(capsys, ["train", *QUICK, "--epochs", "1", "--save", str(path)])
    assert code == 1 and "interrupted" in err
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temporary file left
    monkeypatch.undo()
    code, out, err = _run(capsys, ["evaluate", str(path), "--json"])
    assert code == 0, err
    assert _json_lines(out)[0]["epoch"] == 1


def test_evaluate_reports_accuracy_and_solver_statistics(capsys, tmp_path):
    path = tmp_path / "model.npz"
    code, out, _ = _run(capsys, ["train", *QUICK, "--epochs", "2", "--save", str(path), "--json"])
    assert code == 0
    last = _json_lines(out)[-2]
    code, out, err = _run(capsys, ["evaluate", str(path), "--json"])
    assert code == 0, err
    report = _json_lines(out)[0]
    assert report["accuracy"] == pytest.approx(last["test_acc"], abs=1e-12)
    assert report["epoch"] == 2 and report["samples"] == 160
    assert report["fwd_iter"] > 1 and report["unconverged"] >= 0
    code, out, err = _run(capsys, ["evaluate", str(path)])
    assert code == 0 and "test accuracy" in out and "fwd" in out


def test_plot_writes_a_png(capsys, tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (the optional `plot` extra)")
    png = tmp_path / "curves.png"
    code, _, err = _run(capsys, ["train", *QUICK, "--epochs", "2", "--plot", str(png)])
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_one_clear_line(capsys, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, out, err = _run(capsys, ["train", *QUICK, "--plot", str(tmp_path / "p.png")])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "matplotlib" in err and "pip install" in err


def _write_idx(path, array, code):
    dims = struct.pack(">" + "I" * array.ndim, *array.shape)
    with open(path, "wb") as fh:
        fh.write(struct.pack(">4B", 0, 0, code, array.ndim) + dims + array.astype(">u1").tobytes())


def test_data_directory_of_idx_files(capsys, tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 48), ("t10k", 16)):
        labels = rng.integers(0, 3, n).astype(np.uint8)
        images = np.zeros((n, 6, 6), dtype=np.uint8)
        for i, c in enumerate(labels):  # class c lights up row 2c: learnable
            images[i, 2 * c, :] = 255
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte", images, 0x08)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", labels, 0x08)
    code, out, err = _run(
        capsys,
        [
            "train",
            "--data",
            str(tmp_path),
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "2e-2",
            "--no-progress",
            "--json",
        ],
    )
    assert code == 0, err
    assert _json_lines(out)[-1]["test_acc"] > 0.6


def _one_error_line(code, out, err, expected_code):
    assert code == expected_code, err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["train", "--epochs", "0"], 2, "--epochs"),
        (["train", "--lr", "-1"], 2, "--lr"),
        (["train", "--model", "resnet"], 2, "--model"),
        (["train", "--solver", "newton"], 2, "--solver"),
        (["train", "--backward", "magic"], 2, "--backward"),
        (["train", "--dropout", "1.5"], 2, "--dropout"),
        (["train", "--bogus"], 2, "--bogus"),
        (["evaluate"], 2, "PATH"),
        (["frobnicate"], 2, "frobnicate"),
        (["train", "--resume", "{tmp}/missing.npz"], 1, "no such file"),
        (["evaluate", "{tmp}/missing.npz"], 1, "no such file"),
        (["train", "--data", "{tmp}/nowhere"], 1, "not a directory"),
        (["train", "--data", "{tmp}"], 1, "train-images-idx3-ubyte"),
        (["train", "--save", "{tmp}/no/such/dir/ck.npz"], 1, "does not exist"),
        (["train", "--backend", "cupy"], 1, "cupy"),
        (["train", "--device", "cuda"], 2, "--device"),
    ],
)
def test_errors_are_one_clear_line(capsys, tmp_path, argv, code, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[-1] == "cupy" and importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is importable here: --backend cupy is not an error")
    got, out, err = _run(capsys, argv)
    err = _one_error_line(got, out, err, code)
    assert needle in err


def test_corrupt_and_foreign_checkpoints(capsys, tmp_path):
    good = tmp_path / "good.npz"
    assert main(["train", *QUICK, "--epochs", "1", "--save", str(good)]) == 0
    capsys.readouterr()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.npz"
    nn.save(foreign, {"w": np.ones(3)})
    for path in (truncated, garbage, foreign):
        for argv in (["evaluate", str(path)], ["train", "--resume", str(path)]):
            err = _one_error_line(*_run(capsys, argv), 1)
            assert str(path) in err
    # Arrays that do not fit the model the configuration describes.
    meta = nn.load_metadata(good)
    wrong = tmp_path / "wrong.npz"
    nn.save(wrong, {"model": {"w": np.ones(2)}, "optimizer": {"w": np.ones(2)}}, metadata=meta)
    err = _one_error_line(*_run(capsys, ["evaluate", str(wrong)]), 1)
    assert "corrupt checkpoint" in err


def test_resume_refuses_conflicting_options(capsys, tmp_path):
    path = tmp_path / "ck.npz"
    assert main(["train", *QUICK, "--epochs", "1", "--save", str(path)]) == 0
    capsys.readouterr()
    err = _one_error_line(*_run(capsys, ["train", "--resume", str(path), "--model", "conv"]), 2)
    assert "--model conv" in err
    err = _one_error_line(*_run(capsys, ["train", "--resume", str(path), "--lr", "0.5"]), 2)
    assert "--lr" in err
    # Nothing left to do is not an error.
    code, out, _ = _run(capsys, ["train", "--resume", str(path)])
    assert code == 0 and "nothing to do" in out


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--model",
        "--solver",
        "--backward",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--backend",
        "--save",
        "--resume",
        "--plot",
        "--data",
        "--limit",
        "--json",
        "--stop-after",
    ):
        assert flag in out


def test_python_dash_m_entry_point(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "implicitnet", "train", "--epochs", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--epochs" in proc.stderr


def test_unexpected_errors_are_one_line_unless_debug(capsys, monkeypatch):
    from implicitnet import _train

    def broken(*args, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(_train, "train_epoch", broken)
    err = _one_error_line(*_run(capsys, ["train", *QUICK, "--epochs", "1"]), 1)
    assert "RuntimeError: something broke" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="something broke"):
        main(["--debug", "train", *QUICK, "--epochs", "1"])


@pytest.mark.parametrize(("model", "epochs", "limit"), [("mlp", 1, 160), ("conv", 1, 64)])
def test_torch_backend_trains_like_numpy(capsys, tmp_path, model, epochs, limit):
    """Same seed, same host-drawn initialisation: the same run on torch tensors."""
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    common = ["train", *QUICK, "--limit", str(limit), "--model", model, "--epochs", str(epochs)]
    common += ["--json"]
    code, out, err = _run(capsys, [*common, "--backend", "numpy"])
    assert code == 0, err
    ref = _json_lines(out)
    path = tmp_path / "torch.npz"
    code, out, err = _run(
        capsys, [*common, "--backend", "torch", "--device", "cpu", "--save", str(path)]
    )
    assert code == 0, err
    got = _json_lines(out)
    for r, g in zip(ref[:-1], got[:-1]):
        assert g["loss"] == pytest.approx(r["loss"], rel=1e-6)
    assert got[-1]["test_acc"] == pytest.approx(ref[-1]["test_acc"], abs=0.02)
    code, out, err = _run(capsys, ["evaluate", str(path), "--backend", "torch", "--json"])
    assert code == 0, err
    assert _json_lines(out)[0]["accuracy"] == pytest.approx(got[-1]["test_acc"], abs=1e-12)
