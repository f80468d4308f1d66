#!/usr/bin/env bash
# Leak check of rnnfast's extensions under valgrind memcheck, on a representative subset of the tests
# (layers of every cell, fast and BLAS paths, streaming, lengths, attention, MHA, seq2seq decoding, BPTT
# training with optimizers, the native format, rejected input).
#   bash tools/leakcheck.sh                  # the subset below, with the in-place build of this tree
#   bash tools/leakcheck.sh tests/test_x.py  # any pytest arguments instead
#   LEAKCHECK_LOGS=dir bash tools/leakcheck.sh  # keep valgrind's logs in dir
# Python's allocator is switched to malloc (PYTHONMALLOC=malloc) so valgrind sees every block. The
# interpreter, NumPy and SciPy keep memory until exit on purpose; only records whose allocation stack passes
# through one of rnnfast's own extension modules (rnnfast/_*.so) count: "definitely lost" / "indirectly
# lost" leaks, and any memcheck error (invalid read/write, uninitialised value) inside them. Exit status 1
# if there is one, and the records are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "leakcheck.sh: valgrind not found (apt-get install valgrind)"; exit 2; }
ls rnnfast/_core*.so >/dev/null 2>&1 || { echo "leakcheck.sh: build first: python setup.py build_ext --inplace"; exit 2; }
if [ -n "${LEAKCHECK_LOGS:-}" ]; then  # keep valgrind's logs there
    logdir=$LEAKCHECK_LOGS && mkdir -p "$logdir"
else
    logdir=$(mktemp -d /tmp/rnnfast-valgrind.XXXXXX) && trap 'rm -rf "$logdir"' EXIT
fi
subset=(
    tests/test_behaviour.py
    "tests/test_core_reference.py::test_generic_path_matches_reference_and_fast_path"
    "tests/test_core_reference.py::test_batch_one_wide"
    tests/test_attention.py
    tests/test_mha.py
    tests/test_seq2seq_native.py
    tests/test_optim.py
    "tests/test_train_loop.py::test_fit_regression_saves_native"
    "tests/test_train_loop.py::test_many_to_one_classifier_bce"
    tests/test_bad_input.py
    "tests/test_hardening.py::test_long_sequence_workspace_does_not_grow_with_T"
)
py=$(python -c 'import sys; print(sys.executable)')  # the interpreter itself, not a shim script
# CPython reads memory valgrind believes uninitialised all the time (thousands of reports per run): those
# whose innermost frame is in libpython are suppressed, so that --error-limit=no keeps the log readable.
# (A bad read inside rnnfast's code has its innermost frame there: it is never suppressed.)
cat > "$logdir/python.supp" <<'SUPP'
{
   interpreter-value8
   Memcheck:Value8
   obj:*/libpython3*
}
{
   interpreter-cond
   Memcheck:Cond
   obj:*/libpython3*
}
SUPP
start=$(date +%s)
# OMP_NUM_THREADS=2: OpenMP teams form (valgrind runs them one at a time); -p no:cacheprovider: no writes.
status=0
PYTHONMALLOC=malloc OMP_NUM_THREADS=2 valgrind --tool=memcheck --leak-check=full \
    --show-leak-kinds=definite,indirect --num-callers=40 --error-limit=no --suppressions="$logdir/python.supp" \
    --log-file="$logdir/vg.%p" \
    "$py" -m pytest -q -p no:cacheprovider -x "${@:-${subset[@]}}" || status=$?
echo "leakcheck.sh: pytest under valgrind exited $status after $(( $(date +%s) - start )) s"
"$py" - "$logdir" <<'PY' || status=1
import glob, os, re, sys

# frames of rnnfast's own code: Cython functions (__pyx_..._7rnnfast_...), the generated and C sources, the .so
ours = re.compile(r"7rnnfast_|\((_core|_attention|_attention_train|_train)\.c:\d+\)|\(rf_\w+\.[ch]:\d+\)|/rnnfast/_\w+\.cpython")
LEAK, ERRS = ("definitely lost", "indirectly lost"), ("Invalid ", "uninitialised", "Mismatched free", "overlap")
bad, totals = [], []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "vg.*"))):
    records, cur = [], []
    for line in open(path, errors="replace"):
        body = re.sub(r"^==\d+== ?", "", line.rstrip("\n"))
        if body.strip():
            cur.append(body)
        elif cur:
            records.append(cur)
            cur = []
    records.append(cur)
    for r in records:
        if not r:
            continue
        frames = [l for l in r[1:] if l.lstrip().startswith(("at ", "by "))]
        # a leak counts when rnnfast's code is among the 12 innermost frames of the allocation (the
        # interpreter's own long stacks pass through the import of rnnfast); an error when within 4
        if any(k in r[0] for k in LEAK) and any(ours.search(f) for f in frames[:12]):
            bad.append(r)
        elif any(k in r[0] for k in ERRS) and any(ours.search(f) for f in frames[:4]):
            bad.append(r)
        totals += [f"{os.path.basename(path)}: {l.strip()}" for l in r if l.strip().startswith("definitely lost:")]
print("\n".join("  whole process (interpreter included): " + t for t in totals))
for r in bad:
    print("\n".join(r) + "\n")
print(f"leakcheck.sh: {len(bad)} leak/error record(s) in rnnfast's code")
sys.exit(1 if bad else 0)
PY
exit $status
