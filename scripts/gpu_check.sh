#!/usr/bin/env bash
# One prepared GPU check for a machine with an NVIDIA GPU, CuPy and PyTorch
# (no network needed), each phase under its own time limit:
#   1. the whole test suite with the cupy backend enabled (parallel with
#      pytest-xdist when it is installed);
#   2. a short end-to-end `xpcnn train --device cuda` on the bundled sample, then the
#      same on PyTorch CUDA tensors (`--backend torch --device cuda`, when torch sees the GPU);
#   3. the GPU benchmark: xpcnn on CuPy vs native PyTorch CUDA (scripts/bench.py);
#   4. a per-op profile of the CuPy training step (scripts/profile_step.py).
# A short summary is printed last and saved as summary.txt.
#
#   bash scripts/gpu_check.sh [OUTDIR]          # default $OUT or /tmp/xpcnn-gpu-check
#
# OUTDIR receives eight files: info.txt tests.log train.log train_torch.log bench.log
# bench_gpu.json profile.log summary.txt. BENCH_ARGS overrides the benchmark's
# options (default: batch 100, 5 interleaved rounds of 0.3 s).
#
# Pure-Python dependencies that a GPU image may lack (array-api-compat,
# array-api-extra, array-api-strict) are installed from ./.whl/*.whl when that
# folder exists; fetch them where pip has a network with
#   pip download --no-deps --only-binary=:all: -d .whl array-api-compat array-api-extra array-api-strict
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/xpcnn-gpu-check}}
work=$(mktemp -d /tmp/xpcnn-gpu-check-work.XXXX)
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}
bench_args=${BENCH_ARGS:---batches 100 --rounds 5 --block-seconds 0.3}

if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$work/site"
fi

"$py" -m xpcnn info 2>&1 | tee "$out/info.txt"
if ! "$py" -c "from xpcnn.backend import resolve_device as r, DeviceError as E
try: r('cuda')
except E as e: raise SystemExit(f'gpu_check: {e}')"; then
  echo "gpu_check: no usable GPU (see above); nothing else was run" >&2
  exit 2
fi

# 1. tests. Parallel workers each hold their own CUDA context; a per-test limit
# keeps one hung kernel from eating the phase.
extra=()
# pytest-benchmark (in some GPU images) warns once per worker that xdist disables it
"$py" -c "import xdist" 2>/dev/null && extra+=(-n "${GPU_CHECK_WORKERS:-8}" -p no:benchmark)
"$py" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 120)
# test ids with "cupy" in them, less test_architecture's (its ids name imports, not backends)
n_cupy=$("$py" -m pytest --collect-only -q -p no:cacheprovider 2>/dev/null | grep -v test_architecture | grep -cE '[[-]cupy[]-]' || true)
timeout 240 "$py" -m pytest -q -p no:cacheprovider -o addopts="" -rfE --durations=10 "${extra[@]}" 2>&1 \
  | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}

# 2. end-to-end training on the GPU
timeout 90 "$py" -m xpcnn train --device cuda --epochs 2 --out "$work/run" --no-progress 2>&1 \
  | tee "$out/train.log"
train_rc=${PIPESTATUS[0]}
torch_rc=skipped
if "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  timeout 90 "$py" -m xpcnn train --backend torch --device cuda --epochs 2 --out "$work/run-torch" \
    --no-progress 2>&1 | tee "$out/train_torch.log"
  torch_rc=${PIPESTATUS[0]}
fi

# 3. benchmark
# shellcheck disable=SC2086  # bench_args is a list of options
timeout 180 "$py" scripts/bench.py --device cuda $bench_args --json "$out/bench_gpu.json" 2>&1 \
  | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}

# 4. where the CuPy step's time goes
timeout 90 "$py" scripts/profile_step.py --backend cupy --compare --rounds 2 --steps 20 2>&1 \
  | tee "$out/profile.log"
profile_rc=${PIPESTATUS[0]}

{
  echo
  echo "== xpcnn GPU check summary ($(date -u +%Y-%m-%dT%H:%MZ))"
  head -n 1 "$out/info.txt"
  grep -iE "cuda|gpu" "$out/info.txt" | tail -n 2
  echo "tests: exit $tests_rc; $(tail -n 1 "$out/tests.log"); $n_cupy tests collected on the cupy backend"
  echo "train --device cuda: exit $train_rc; $(tail -n 1 "$out/train.log")"
  echo "train --backend torch --device cuda: exit $torch_rc; $(tail -n 1 "$out/train_torch.log" 2>/dev/null)"
  echo "bench: exit $bench_rc; profile: exit $profile_rc"
  grep -iE "ratio|simple|deep" "$out/bench.log" | tail -n 16
  grep -E "step total|unprofiled" "$out/profile.log"
} | tee "$out/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$train_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$n_cupy" -gt 0 ] \
  && { [ "$torch_rc" = skipped ] || [ "$torch_rc" -eq 0 ]; }
