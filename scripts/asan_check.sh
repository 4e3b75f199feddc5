#!/usr/bin/env bash
# The compiled convolution's tests under AddressSanitizer: the extension is rebuilt in
# place with -fsanitize=address, so that a read or write outside any buffer aborts the
# run, then the normal build is put back. Used by .ci/run; needs gcc.
#   bash scripts/asan_check.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
so=$(python -c "from xpcnn._fast import _conv; print(_conv.__file__)")
cp "$so" "$so.normal"
trap 'mv -f "$so.normal" "$so"' EXIT
inc=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
gcc -O1 -g -fsanitize=address -fno-omit-frame-pointer -std=gnu11 -fPIC -shared \
    -DPy_LIMITED_API=0x030B0000 -I"$inc" xpcnn/_fast/_conv.c -o "$so"
# Python itself is not instrumented: preload the runtime into the interpreter itself
# (not a shell shim such as pyenv's), and leave leaks aside. -s: a report must reach the
# terminal (pytest's capture would lose it with the process). JAX's plugin discovery
# throws C++ exceptions that ASan's interceptor cannot pass: its CPU platform only.
py=$(python -c "import sys; print(sys.executable)")
JAX_PLATFORMS=cpu LD_PRELOAD="$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
    "$py" -m pytest -q -s -p no:cacheprovider tests/test_compiled.py "$@"
