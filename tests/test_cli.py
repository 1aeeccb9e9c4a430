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
from cli_helpers import json_lines as _json_lines
from cli_helpers import run as _run

from implicitnet import nn
from implicitnet.cli import main

# A tiny, fast configuration: 160 training samples, batches of 32.
QUICK = ["--limit", "160", "--batch-size", "32", "--no-progress"]


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
    # --resume alone goes on saving to the checkpoint it continues.
    code, out_b, err = _run(capsys, ["train", "--resume", str(part), "--json", "--no-progress"])
    assert code == 0, err
    assert nn.load_metadata(part)["epoch"] == 2
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
    code, _, err = _run(capsys, ["train", "--resume", str(path), "--epochs", "2", "--no-progress"])
    assert code == 1 and "interrupted in epoch 2 of 2" in err
    assert f"{path} holds epoch 1" in err and f"implicitnet train --resume {path}" in err
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
            "--classes",
            "3",
            "--no-progress",
            "--json",
        ],
    )
    assert code == 0, err
    assert _json_lines(out)[-1]["test_acc"] > 0.6


def test_idx_label_outside_the_classes_is_one_line_naming_the_file(capsys, tmp_path):
    images = np.zeros((4, 6, 6), dtype=np.uint8)
    for stem, labels in (("train", [0, 1, 12, 2]), ("t10k", [0, 1, 2, 3])):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte", images, 0x08)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.array(labels, np.uint8), 0x08)
    err = _one_error_line(*_run(capsys, ["train", "--data", str(tmp_path)]), 1)
    assert str(tmp_path / "train-labels-idx1-ubyte") in err and "label 12" in err
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 2], np.uint8), 0x08)
    err = _one_error_line(*_run(capsys, ["train", "--data", str(tmp_path), "--classes", "3"]), 1)
    assert "t10k-labels-idx1-ubyte" in err and "label 3 lies outside 0..2" in err
    # The digits have ten classes; --classes is for --data.
    err = _one_error_line(*_run(capsys, ["train", "--classes", "5"]), 2)
    assert "--classes 5" in err and "--data" in err


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
        (["train", "--warmup", "-1"], 2, "--warmup"),
        (["train", "--warmup", "2.5"], 2, "--warmup"),
        (["train", "--clip-norm", "-1"], 2, "--clip-norm"),
        (["train", "--clip-norm", "nan"], 2, "--clip-norm"),
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
    err = _one_error_line(*_run(capsys, ["train", "--resume", str(path), "--clip-norm", "2"]), 2)
    assert "--clip-norm 2 differs from the checkpoint's 0" in err
    err = _one_error_line(*_run(capsys, ["train", "--resume", str(path), "--warmup", "3"]), 2)
    assert "--warmup 3 differs from the checkpoint's 0" in err
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


# -- Nothing saved is lost ---------------------------------------------------------------


def test_save_refuses_to_replace_an_existing_checkpoint(capsys, tmp_path):
    path, other = tmp_path / "ck.npz", tmp_path / "other.npz"
    assert main(["train", *QUICK, "--epochs", "1", "--save", str(path)]) == 0
    assert main(["train", *QUICK, "--epochs", "1", "--save", str(other), "--seed", "1"]) == 0
    capsys.readouterr()
    before = path.read_bytes()
    # A new run onto the finished one is refused, before any training, saying how to go on.
    code, out, err = _run(capsys, ["train", *QUICK, "--epochs", "2", "--save", str(path)])
    err = _one_error_line(code, out, err, 2)
    assert out == "" and path.read_bytes() == before
    assert f"implicitnet train --resume {path}" in err and "--overwrite" in err
    # So is a resumed run saving onto another existing checkpoint.
    argv = ["train", "--resume", str(other), "--epochs", "2", "--save", str(path)]
    _one_error_line(*_run(capsys, argv), 2)
    assert path.read_bytes() == before
    # --overwrite replaces it; --overwrite without --save is a usage error.
    argv = ["train", *QUICK, "--epochs", "1", "--seed", "3", "--save", str(path), "--overwrite"]
    assert _run(capsys, argv)[0] == 0
    assert nn.load_metadata(path)["config"]["seed"] == 3
    err = _one_error_line(*_run(capsys, ["train", *QUICK, "--overwrite"]), 2)
    assert "--save" in err


def test_resume_with_save_elsewhere_leaves_the_original(capsys, tmp_path):
    part, branch = tmp_path / "part.npz", tmp_path / "branch.npz"
    assert main(["train", *QUICK, "--epochs", "2", "--stop-after", "1", "--save", str(part)]) == 0
    capsys.readouterr()
    before = part.read_bytes()
    argv = ["train", "--resume", str(part), "--save", str(branch), "--no-progress", "--json"]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    summary = _json_lines(out)[-1]
    assert summary["status"] == "done" and summary["saved"] == str(branch)
    assert part.read_bytes() == before
    assert nn.load_metadata(branch)["epoch"] == 2


def _unwritable_dir(tmp_path):
    """A directory this process cannot create files in (root ignores permission bits)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        if os.path.isdir("/sys") and not os.access("/sys", os.W_OK | os.X_OK):
            return "/sys"
        try:
            with open("/sys/.implicitnet-probe", "wb"):
                pass
        except OSError:
            return "/sys"
        pytest.skip("running as root without a read-only file system to write to")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return str(locked)


def test_unwritable_save_location_fails_before_training(capsys, tmp_path):
    directory = _unwritable_dir(tmp_path)
    path = os.path.join(directory, "ck.npz")
    code, out, err = _run(capsys, ["train", *QUICK, "--epochs", "1", "--save", path])
    err = _one_error_line(code, out, err, 1)
    assert out == ""  # not a single epoch was run
    assert f"--save {path}: cannot write in {directory}" in err


def test_a_partial_file_left_by_a_killed_save_is_removed(capsys, tmp_path):
    import subprocess
    import sys

    from implicitnet.backends import _io

    path = tmp_path / "ck.npz"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)  # that process has exited
    stale = _io.partial_path(path, pid=dead_pid)
    live = _io.partial_path(path, pid=os.getppid())  # a running process: left alone
    for p in (stale, live):
        with open(p, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
    assert main(["train", *QUICK, "--epochs", "1", "--save", str(path)]) == 0
    capsys.readouterr()
    assert not os.path.exists(stale) and os.path.exists(live)
    assert nn.load_metadata(path)["epoch"] == 1


def test_json_output_is_json_lines_in_every_case(capsys, tmp_path):
    path = tmp_path / "ck.npz"
    common = ["train", *QUICK, "--json"]
    runs = [
        ([*common, "--epochs", "2", "--stop-after", "1", "--save", str(path)], 0, "stopped"),
        (["train", "--resume", str(path), "--json", "--no-progress"], 0, "done"),
        (["train", "--resume", str(path), "--json", "--no-progress"], 0, "nothing_to_do"),
    ]
    for argv, expected, status in runs:
        code, out, err = _run(capsys, argv)
        assert code == expected, err
        rows = _json_lines(out)  # every line parses
        assert rows[-1]["summary"] and rows[-1]["status"] == status
    assert rows[-1]["epochs"] == 2 and rows[-1]["ran"] == 0
    assert "nothing to do" in rows[-1]["message"]
    # The stopped run says how to continue, in the summary and in text mode.
    code, out, _ = _run(capsys, [*common, "--epochs", "2", "--stop-after", "1"])
    assert "resume" not in _json_lines(out)[-1]  # nothing saved, nothing to resume
    other = tmp_path / "other.npz"
    argv = ["train", *QUICK, "--epochs", "2", "--stop-after", "1", "--save", str(other)]
    code, out, _ = _run(capsys, argv)
    assert code == 0 and f"continue with: implicitnet train --resume {other}" in out


class _PoisonAfter:
    """Adam whose update makes the head's bias NaN after `after` steps."""

    def __init__(self, inner, after):
        self.inner, self.after, self.steps = inner, after, 0

    def init(self, model):
        return self.inner.init(model)

    def update(self, model, grads, state):
        model, state = self.inner.update(model, grads, state)
        self.steps += 1
        if self.steps > self.after:
            head = model.head.replace(bias=np.full_like(model.head.bias, np.nan))
            model = model.replace(head=head)
        return model, state


def test_non_finite_parameters_stop_training(capsys, tmp_path, monkeypatch):
    from implicitnet import _train

    real = _train.build_optimizer
    # QUICK has 5 batches per epoch: the first update of epoch 2 turns a parameter NaN.
    monkeypatch.setattr(_train, "build_optimizer", lambda c, n: _PoisonAfter(real(c, n), 5))
    path = tmp_path / "ck.npz"
    argv = ["train", *QUICK, "--epochs", "3", "--save", str(path), "--json"]
    code, out, err = _run(capsys, argv)
    err = _one_error_line(code, out, err, 1)
    assert "parameter 'head.bias' became inf or NaN in epoch 2, batch 1" in err
    assert f"{path} holds epoch 1, the last finite state" in err and "--lr" in err
    rows = _json_lines(out)
    assert [r.get("epoch") for r in rows[:-1]] == [1]
    assert rows[-1]["status"] == "diverged" and rows[-1]["saved_epoch"] == 1
    assert "resume" not in rows[-1]
    assert nn.load_metadata(path)["epoch"] == 1
    assert all(np.isfinite(a).all() for a in _arrays(path).values())


def test_a_diverging_learning_rate_stops_with_a_clear_message(tmp_path):
    import subprocess
    import sys

    # A subprocess: the overflow inside Adam is a RuntimeWarning, an error under pytest.
    data = _tiny_idx_data(tmp_path / "data")
    argv = ["train", *data, "--epochs", "3", "--lr", "1e300", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "implicitnet", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "inf or NaN" in proc.stderr or "loss became" in proc.stderr
    assert "try a smaller --lr" in proc.stderr
    assert _json_lines(proc.stdout)[-1]["status"] == "diverged"


def test_epoch_line_shows_the_relative_residual_beside_rtol(capsys):
    code, out, err = _run(capsys, ["train", *QUICK, "--epochs", "1", "--rtol", "1e-4"])
    assert code == 0, err
    line = out.strip().splitlines()[1]
    assert "rel res " in line and "rtol 1.0e-04" in line
    code, out, err = _run(capsys, ["train", *QUICK, "--epochs", "1", "--json"])
    row = _json_lines(out)[0]
    # Converged samples pass a relative test: their relative residual is below rtol.
    assert row["unconverged"] == 0 and 0 < row["fwd_rel_residual"] <= 1e-3
    assert row["fwd_rel_residual"] < row["fwd_residual"]


# -- Killed runs (real subprocesses) -------------------------------------------------------

# The runs are signalled after their second epoch line: enough epochs remain that the
# signal always lands during training.
EPOCHS_KILLED = 12


def _tiny_idx_data(directory):
    """A 3-class IDX data set small enough that a subprocess trains in a blink (and
    does not import scikit-learn for the digits)."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    for stem, n in (("train", 48), ("t10k", 16)):
        labels = rng.integers(0, 3, n).astype(np.uint8)
        images = np.zeros((n, 6, 6), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c, :] = 255
        _write_idx(directory / f"{stem}-images-idx3-ubyte", images, 0x08)
        _write_idx(directory / f"{stem}-labels-idx1-ubyte", labels, 0x08)
    return ["--data", str(directory), "--classes", "3", "--batch-size", "16", "--no-progress"]


def _start_training(tmp_path, path, epochs):
    import subprocess
    import sys

    data = _tiny_idx_data(tmp_path / "data")
    argv = [sys.executable, "-m", "implicitnet", "train", *data, "--epochs", str(epochs)]
    argv += ["--save", str(path), "--json"]
    # The child gets SIGINT's default disposition (Python then raises KeyboardInterrupt
    # on it) even when this test runs in a background job, which ignores SIGINT.
    restore = None
    if os.name == "posix":
        import signal

        def restore():
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=restore,
    )
    return proc, data


def _wait_for_epochs(proc, n):
    """Read `n` epoch lines of a running `--json` training (the checkpoint of epoch
    ``n - 1`` is then complete: each epoch's save precedes the next epoch)."""
    lines = []
    for _ in range(n):
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        lines.append(json.loads(line))
    return lines


def _resume(argv_text, cwd):
    import shlex
    import subprocess
    import sys

    words = shlex.split(argv_text)
    assert words[:2] == ["implicitnet", "train"]
    return subprocess.run(
        [sys.executable, "-m", "implicitnet", *words[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.skipif(os.name != "posix", reason="sends POSIX signals to a subprocess")
def test_sigint_prints_the_command_that_resumes(tmp_path):
    import signal

    path, full = tmp_path / "ck.npz", tmp_path / "full.npz"
    proc, data = _start_training(tmp_path, path, epochs=EPOCHS_KILLED)
    try:
        _wait_for_epochs(proc, 2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "interrupted in epoch" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "interrupted" and summary["saved_epoch"] >= 1
    command = f"implicitnet train --resume {path} --json --no-progress"
    assert summary["resume"] == command and f"resume with `{command}`" in err
    resumed = _resume(summary["resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _json_lines(resumed.stdout)[-1]["epochs"] == EPOCHS_KILLED
    # The interrupted-and-resumed run ends where an uninterrupted one does.
    assert main(["train", *data, "--epochs", str(EPOCHS_KILLED), "--save", str(full)]) == 0
    a, b = _arrays(full), _arrays(path)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.skipif(os.name != "posix", reason="sends POSIX signals to a subprocess")
def test_sigkill_leaves_a_checkpoint_that_resumes(tmp_path):
    import signal

    path = tmp_path / "ck.npz"
    proc, _ = _start_training(tmp_path, path, epochs=EPOCHS_KILLED)
    try:
        _wait_for_epochs(proc, 2)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert nn.load_metadata(path)["epoch"] >= 1  # a complete checkpoint, maybe of epoch 2
    resumed = _resume(f"implicitnet train --resume {path} --json --no-progress", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _json_lines(resumed.stdout)[-1]["epochs"] == EPOCHS_KILLED
    assert nn.load_metadata(path)["epoch"] == EPOCHS_KILLED
    # A save cut short by the kill left a temporary file; the next save removed it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "data"]


def test_a_failing_save_ends_the_json_output_with_a_summary(capsys, tmp_path, monkeypatch):
    import errno

    from implicitnet.backends import _io

    def disk_full(fh, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io, "_write_npz", disk_full)
    path = tmp_path / "ck.npz"
    argv = ["train", *QUICK, "--epochs", "2", "--save", str(path), "--json"]
    code, out, err = _run(capsys, argv)
    err = _one_error_line(code, out, err, 1)
    assert f"--save {path}: No space left on device" in err
    rows = _json_lines(out)
    assert rows[0]["epoch"] == 1 and rows[-1]["status"] == "failed"
    assert rows[-1]["saved"] is None and "No space left" in rows[-1]["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial file left


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


def test_a_checkpoint_saved_before_warmup_and_clipping_resumes_without_them(capsys, tmp_path):
    path = tmp_path / "ck.npz"
    assert main(["train", *QUICK, "--epochs", "1", "--save", str(path)]) == 0
    capsys.readouterr()
    # the same checkpoint as an older version wrote it: no warmup / clip_norm keys
    meta = nn.load_metadata(path)
    del meta["config"]["warmup"], meta["config"]["clip_norm"]
    old = tmp_path / "old.npz"
    nn.save(old, nn.load(path), metadata=meta)
    argv = ["train", "--resume", str(old), "--epochs", "2", "--warmup", "0", "--clip-norm", "0"]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    assert "resuming after epoch 1" in out
    err = _one_error_line(*_run(capsys, ["train", "--resume", str(old), "--clip-norm", "1"]), 2)
    assert "--clip-norm 1 differs from the checkpoint's 0" in err
