"""Data-parallel training over MPI: two ranks with half batches equal one rank, exact
resume, a failing rank ending the job, and the Python loop for a user's own model."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from implicitnet import data, nn, optim, value_and_grad
from implicitnet.cli import main

try:
    from mpi4py import MPI  # noqa: F401  (loads the MPI library)

    NO_MPI = None
except ImportError:
    NO_MPI = "mpi4py is not installed (extra `distributed`)"
except Exception as exc:  # mpi4py without a usable MPI library
    NO_MPI = f"mpi4py cannot load an MPI library: {exc}"
needs_mpi = pytest.mark.skipif(NO_MPI is not None, reason=str(NO_MPI))


def _find_mpiexec() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
needs_mpiexec = pytest.mark.skipif(
    NO_MPI is not None or MPIEXEC is None,
    reason=NO_MPI or "no `mpiexec` found (pip install mpich, or a system MPI)",
)
# Two ranks sum gradients in another order than one rank: equal to float64 rounding.
ROUND = 1e-9


def mpiexec(n, *args, timeout=240):
    return subprocess.run(
        [MPIEXEC, "-n", str(n), sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_same_arrays(path_a, path_b, rtol):
    a, b = np.load(path_a), np.load(path_b)
    names = [k for k in a.files if not k.startswith("__")]
    assert names == [k for k in b.files if not k.startswith("__")]
    for k in names:
        scale = max(float(np.max(np.abs(a[k]))), 1e-300) if a[k].size else 1.0
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=rtol * scale, err_msg=k)


TRAIN = ["train", "--limit", "192", "--epochs", "2", "--no-progress", "--json"]


@needs_mpiexec
def test_two_ranks_of_32_equal_one_rank_of_64_and_resume(tmp_path, capsys):
    ck = str(tmp_path / "dp.npz")
    # Two ranks, 32 samples each per batch of 64, for the first epoch (3 steps); rank 0
    # writes the checkpoint, and the run is stopped as an interruption would.
    first = mpiexec(
        2, "-m", "implicitnet", *TRAIN, "--distributed", "--stop-after", "1", "--save", ck
    )
    assert first.returncode == 0, first.stderr
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert [r["epoch"] for r in rows if not r.get("summary")] == [1]  # rank 0 alone prints
    assert rows[0]["ranks"] == 2 and rows[0]["comm_bytes"] > 0
    # Resumed on a world of one (the checkpoint does not depend on the number of ranks).
    assert main([*TRAIN, "--distributed", "--resume", ck, "--save", ck]) == 0
    rows += [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # One rank, batches of 64, uninterrupted.
    ref = str(tmp_path / "one.npz")
    assert main([*TRAIN, "--save", ref]) == 0
    ref_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert_same_arrays(ck, ref, ROUND)
    epochs = [r for r in rows if not r.get("summary")]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for got, want in zip(epochs, ref_rows):
        assert got["loss"] == pytest.approx(want["loss"], rel=ROUND)
        assert got["train_acc"] == pytest.approx(want["train_acc"], rel=ROUND)
    meta = nn.load_metadata(ck)
    assert meta["epoch"] == 2 and meta["config"] == nn.load_metadata(ref)["config"]


@needs_mpiexec
def test_a_failing_rank_ends_the_job(tmp_path):
    # Rank 0 alone checks --save: it fails, the other rank must not wait for it forever.
    missing = str(tmp_path / "no-such-dir" / "ck.npz")
    proc = mpiexec(2, "-m", "implicitnet", *TRAIN, "--distributed", "--save", missing, timeout=120)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr and "rank 0 of 2" in proc.stderr


USER_LOOP = """
import sys
import numpy as np
from implicitnet import data, nn, optim
from implicitnet.distributed import DataParallel

dp = DataParallel()
rng = np.random.default_rng(0)
x = rng.standard_normal((150, 6))
y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
model = nn.mlp_deq(6, 2, width=8, seed=dp.rank)  # different on every rank...
model = dp.broadcast(model)  # ...until rank 0's is broadcast


def loss_fn(model, xb, yb):
    return nn.cross_entropy(model(xb)[0], yb)


opt = optim.Adam(lr=1e-2)
state = opt.init(model)
loss_grad = dp.value_and_grad(loss_fn)
for epoch in range(2):
    for xb, yb in data.batches(x, y, 64, seed=0, epoch=epoch):
        loss, grads = loss_grad(model, xb, yb)
        model, state = opt.update(model, grads, state)
dp.check_replicas(model)
if dp.rank == 0:
    nn.save(sys.argv[1], model)
    print(float(loss), dp.stats.allreduces)
"""


@needs_mpiexec
def test_user_loop_two_ranks_equal_one(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(USER_LOOP))
    out = str(tmp_path / "two.npz")
    proc = mpiexec(2, str(script), out)
    assert proc.returncode == 0, proc.stderr
    loss2, steps = proc.stdout.split()
    assert int(steps) == 2 * 3  # one all-reduce per step: 3 batches (the last of 22) x 2

    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 6))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = nn.mlp_deq(6, 2, width=8, seed=0)

    def loss_fn(model, xb, yb):
        return nn.cross_entropy(model(xb)[0], yb)

    opt = optim.Adam(lr=1e-2)
    state = opt.init(model)
    loss_grad = value_and_grad(loss_fn)
    for epoch in range(2):
        for xb, yb in data.batches(x, y, 64, seed=0, epoch=epoch):
            loss, grads = loss_grad(model, xb, yb)
            model, state = opt.update(model, grads, state)
    ref = str(tmp_path / "one.npz")
    nn.save(ref, model)
    assert_same_arrays(out, ref, ROUND)
    assert float(loss2) == pytest.approx(float(loss), rel=ROUND)


@needs_mpi
def test_world_of_one_in_process():
    from implicitnet.distributed import DataParallel, ReplicaMismatchError

    dp = DataParallel()
    if dp.size != 1:
        pytest.skip("this test runs as a single process")
    assert dp.bounds(10) == (0, 10)
    x = np.arange(12.0).reshape(6, 2)
    assert dp.shard(x) is not None and dp.shard(x).shape == (6, 2)
    assert dp.shard(None) is None
    grads = {"a": np.ones((2, 3)), "b": np.full(4, 2.0, dtype=np.float64)}
    mean, (v,) = dp.allreduce_mean(grads, 5, 0.25)
    np.testing.assert_array_equal(mean["a"], grads["a"])
    np.testing.assert_array_equal(mean["b"], grads["b"])
    assert v == 0.25
    assert dp.stats.allreduces == 1 and dp.stats.bytes == 8 * (6 + 4 + 2)
    with pytest.raises(ValueError, match="no rank had samples"):
        dp.allreduce_mean(grads, 0)
    dp.check_replicas(grads)
    assert dp.fingerprint(grads) != dp.fingerprint({"a": grads["a"], "b": grads["b"] + 1})
    assert issubclass(ReplicaMismatchError, RuntimeError)


@needs_mpi
def test_data_parallel_text_output_matches_one_process(capsys):
    # The epoch line shows the relative forward residual: the data-parallel epoch
    # reports it too (it once lacked it, and the text output failed with a KeyError).
    argv = ["train", "--limit", "64", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--distributed"]) == 0
    got = capsys.readouterr().out.splitlines()
    assert main(argv) == 0
    want = capsys.readouterr().out.splitlines()
    strip = [line.rsplit("  ", 1)[0] for line in (got[1], want[1])]  # but the seconds
    assert strip[0].startswith("epoch 1/1") and "rel res" in strip[0]
    assert strip[0] == strip[1]


def test_without_mpi4py_the_command_fails_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    assert main([*TRAIN, "--distributed"]) == 1
    err = capsys.readouterr().err
    assert "needs mpi4py" in err and "Traceback" not in err


def test_bounds_cover_the_batch_once():
    from implicitnet.distributed import DataParallel

    class FakeComm:  # only sizes and ranks are asked for
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return self.size

    for n in (1, 5, 64, 65):
        for size in (1, 2, 3, 8):
            parts = [DataParallel(FakeComm(r, size)).bounds(n) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1
