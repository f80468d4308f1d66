#!/usr/bin/env bash
# Build the extensions with AddressSanitizer + UBSan in a scratch copy of this tree and run the tests
# there (the in-place build of the working tree is left alone). CI runs it after the normal suite (README).
#   bash tools/sanitize.sh                 # whole suite, tests/test_dask.py included
#   bash tools/sanitize.sh tests/test_x.py # a subset (any pytest arguments)
# Python itself is not instrumented: the runtimes are preloaded (LD_PRELOAD is inherited by the
# subprocesses of the tests: CLI runs, forked children and Dask's spawned workers run instrumented too).
# Leaks are not checked here (the interpreter's own would drown ours): tools/leakcheck.sh does that.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/rnnfast-asan.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar -C "$src" --exclude=./build --exclude='*.so' --exclude=./.git --exclude='*.egg-info' -cf - . | tar -C "$work" -xf -
cd "$work"
start=$(date +%s)
RNNFAST_SANITIZE=1 python setup.py -q build_ext --inplace >build.log 2>&1 || { tail -50 build.log; exit 1; }
echo "sanitize.sh: ASan+UBSan build took $(( $(date +%s) - start )) s"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
python -m pytest -q -p no:cacheprovider "${@:-tests}"
