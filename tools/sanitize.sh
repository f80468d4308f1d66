#!/usr/bin/env bash
# Build the extensions with AddressSanitizer + UBSan in a scratch copy of this tree and run the tests
# there (the in-place build of the working tree is left alone).
#   bash tools/sanitize.sh                 # whole suite
#   bash tools/sanitize.sh tests/test_x.py # a subset (any pytest arguments)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/rnnfast-asan.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar -C "$src" --exclude=./build --exclude='*.so' --exclude=./.git --exclude='*.egg-info' -cf - . | tar -C "$work" -xf -
cd "$work"
RNNFAST_SANITIZE=1 python setup.py -q build_ext --inplace -j 2 >/dev/null
# Python itself is not instrumented: preload the runtimes; leaks of the interpreter are not ours.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
python -m pytest -q -p no:cacheprovider "${@:-tests}"
