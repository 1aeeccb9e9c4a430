#!/usr/bin/env bash
# One-command GPU check: on a machine with an NVIDIA GPU, run the CuPy and torch-CUDA
# parametrisations of the test suite, a short `implicitnet train` on each GPU backend
# beside NumPy, and `benchmarks/gpu.py --quick`, in under five minutes.
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out DIR]
#
# What it needs and how it finds it:
#   * CuPy and/or PyTorch with CUDA, NumPy, SciPy: already installed (it never installs
#     these; a missing one is reported and its part skipped).
#   * array-api-compat, array-api-strict, pytest, hypothesis, scikit-learn, tqdm
#     (and torchdeq and pytest-xdist, optional): used where importable; the missing ones
#     are installed with pip, from the wheels in DIR when given (--wheels, or the
#     IMPLICITNET_WHEELS variable; offline: `pip install --no-index --find-links DIR`),
#     else (the required ones only) from the package index, failing fast without
#     network access. To prepare DIR on a machine with network access:
#       pip download -d wheels array-api-compat array-api-strict hypothesis pytest \
#           pytest-xdist tqdm scikit-learn
#       pip download -d wheels --no-deps torchdeq
#   * implicitnet itself: installed from this checkout (no dependencies) into a
#     virtual environment that sees the system's packages, under the output folder.
#
# Everything it prints also goes to OUT/check.log (default: gpu-check-out/); the exit
# status is that of the test run (0: no failures).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

wheels=${IMPLICITNET_WHEELS:-}
out=gpu-check-out
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec > >(tee "$out/check.log") 2>&1
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start )) s] $*"; }

python=${PYTHON:-python3}
stamp "python: $($python --version 2>&1) at $(command -v "$python")"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader

# --- a virtual environment with the system's packages and implicitnet from here -------
venv="$out/venv"
if [ ! -x "$venv/bin/python" ]; then
    $python -m venv --system-site-packages "$venv" || { echo "cannot create a venv"; exit 1; }
fi
py="$venv/bin/python"

pip_install() {  # pip_install NAME...: from the wheel folder when given, else the index
    if [ -n "$wheels" ]; then
        "$py" -m pip install --quiet --no-index --find-links "$wheels" "$@"
    else  # fail fast on a machine without network access
        "$py" -m pip install --quiet --retries 1 --timeout 10 "$@"
    fi
}

missing=()
for spec in array_api_compat:array-api-compat array_api_strict:array-api-strict \
            pytest:pytest hypothesis:hypothesis sklearn:scikit-learn tqdm:tqdm; do
    mod=${spec%%:*}; pkg=${spec#*:}
    "$py" -c "import $mod" 2>/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    stamp "installing missing packages: ${missing[*]} (${wheels:-from the package index})"
    pip_install "${missing[@]}" || { echo "could not install ${missing[*]}; see above"; exit 1; }
fi
# Optional (parallel tests, the torchdeq comparison): only from the wheel folder.
if [ -n "$wheels" ]; then
    "$py" -c "import xdist" 2>/dev/null || pip_install pytest-xdist 2>/dev/null \
        || echo "optional pytest-xdist not in $wheels: tests run serially"
    "$py" -c "import torchdeq" 2>/dev/null || pip_install --no-deps torchdeq 2>/dev/null \
        || echo "optional torchdeq not in $wheels: the benchmark runs without it"
fi
stamp "installing implicitnet from $root (no dependencies)"
"$py" -m pip install --quiet --no-deps --no-build-isolation -e "$root" \
    || "$py" -m pip install --quiet --no-deps --no-build-isolation "$root" \
    || { echo "could not install implicitnet from $root"; exit 1; }
(cd "$out" && "$py" -m implicitnet info)

# --- 1. the CuPy and torch-CUDA parametrisations --------------------------------------
stamp "tests: cupy and torch_cuda parametrisations"
xdist=()
"$py" -c "import xdist" 2>/dev/null && xdist=(-n 4)
IMPLICITNET_TEST_BACKENDS='["cupy", "torch_cuda"]' timeout 140 "$py" -m pytest -q \
    -p no:cacheprovider "${xdist[@]}" -k "cupy or torch_cuda" -rfE --junitxml "$out/tests.xml" \
    "$root/tests" 2>&1 | tail -60
rc=${PIPESTATUS[0]}
[ "$rc" -eq 124 ] && echo "tests: stopped at the 140 s limit"

# --- 2. training on the GPU backends, beside NumPy ------------------------------------
stamp "training: mlp and conv, 2 epochs on 400 digits, float32, numpy vs GPU backends"
for model in mlp conv; do
    for be in numpy cupy "torch --device cuda"; do
        line=$(cd "$out" && timeout 25 "$py" -m implicitnet train --model "$model" \
            --backend $be --dtype float32 --epochs 2 --limit 400 --no-progress --json \
            2>&1 | tail -1)
        echo "$model on $be: $line"
    done
done

# --- 3. the benchmark ------------------------------------------------------------------
stamp "benchmarks/gpu.py --quick"
timeout 110 "$py" "$root/benchmarks/gpu.py" --quick 2>"$out/gpu-bench.err" \
    | tee "$out/gpu-bench.txt"
[ "${PIPESTATUS[0]}" -eq 124 ] && echo "benchmark: stopped at the 110 s limit"

stamp "done; test exit status $rc; logs in $out"
exit "$rc"
