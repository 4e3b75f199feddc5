#!/usr/bin/env bash
# One prepared GPU check for a machine with an NVIDIA GPU, CuPy and PyTorch
# (no network needed): the whole test suite with the cupy backend enabled, a
# short end-to-end `xpcnn train --device cuda`, then the GPU benchmark
# (xpcnn on CuPy vs native PyTorch CUDA). A short summary is printed last.
#
#   bash scripts/gpu_check.sh [OUTDIR]          # default $OUT or /tmp/xpcnn-gpu-check
#
# Pure-Python dependencies that a GPU image may lack (array-api-compat,
# array-api-extra, array-api-strict) are installed from ./.whl/*.whl when that
# folder exists; fetch them where pip has a network with
#   pip download --no-deps -d .whl array-api-compat array-api-extra array-api-strict
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/xpcnn-gpu-check}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/xpcnn-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/xpcnn-site"
fi

"$py" -m xpcnn info | tee "$out/info.txt"
if ! "$py" -c "from xpcnn.backend import resolve_device as r, DeviceError as E
try: r('cuda')
except E as e: raise SystemExit(f'gpu_check: {e}')"; then
  echo "gpu_check: no usable GPU (see above); nothing else was run" >&2
  exit 2
fi

n_cupy=$("$py" -m pytest --collect-only -q -p no:cacheprovider 2>/dev/null | grep -v test_architecture | grep -cE '[[-]cupy[]-]' || true)
"$py" -m pytest -q -p no:cacheprovider -o addopts="" --junitxml="$out/junit.xml" 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}

"$py" -m xpcnn train --device cuda --epochs 2 --out "$out/run" --no-progress 2>&1 | tee "$out/train.log"
train_rc=${PIPESTATUS[0]}

"$py" scripts/bench.py --device cuda --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}

echo
echo "== xpcnn GPU check summary ($(date -u +%Y-%m-%dT%H:%MZ))"
head -n 1 "$out/info.txt"
grep -E "cuda|GPU" "$out/info.txt" | tail -n 1
echo "tests: exit $tests_rc; $(tail -n 1 "$out/tests.log"); $n_cupy tests collected on the cupy backend"
echo "train --device cuda: exit $train_rc; $(tail -n 1 "$out/train.log")"
echo "bench: exit $bench_rc"
grep -iE "ratio|simple|deep" "$out/bench.log" | tail -n 12
[ "$tests_rc" -eq 0 ] && [ "$train_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$n_cupy" -gt 0 ]
