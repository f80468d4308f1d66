"""Hardening (issue 7): concurrency, fork, OMP_NUM_THREADS, determinism, memory growth, long sequences.

What each test proves is in its docstring; the README's "Guarantees" section names these tests. No test here
asserts a speed: overlap of calls is shown by observing two calls half-way through at the same moment.
"""

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import rnnfast
from rnnfast import reference as R

from conftest import assert_close

HAS_FORK = hasattr(os, "fork")
# Under tools/sanitize.sh, ASan's redzones and quarantine of freed blocks (256 MB) change the resident set:
# the memory measurements skip there (the leak checks are tools/leakcheck.sh's).
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
measures_memory = pytest.mark.skipif(UNDER_ASAN, reason="ASan's quarantine and redzones change the RSS")


# --------------------------------------------------------------------------------------------------
# A fixed mix of calls: every cell, both GRU forms, bidirectional, stacked, the generic (BLAS) path of
# LSTM projections, lengths, initial states, T = 0, batch-first, attention and multi-head attention.
# --------------------------------------------------------------------------------------------------
def _models():
    return {
        "lstm_bi2": rnnfast.LSTM(12, 64, num_layers=2, bidirectional=True, seed=1),
        "gru": rnnfast.GRU(12, 48, seed=2),
        "gru_b1_wide": rnnfast.GRU(12, 160, seed=3),  # batch 1: hidden units split across threads (barrier)
        "gru_rb_bi": rnnfast.GRU(12, 40, bidirectional=True, reset_after=False, seed=4, batch_first=True),
        "rnn_relu": rnnfast.RNN(12, 72, num_layers=2, nonlinearity="relu", seed=5),
        "lstm_proj": rnnfast.LSTM(12, 64, proj_size=24, seed=6),  # generic path: BLAS GEMM per step
        "dot": rnnfast.DotAttention(),
        "additive": rnnfast.AdditiveAttention(24, 16, 32, seed=7),
        "mha": rnnfast.MultiheadAttention(32, 4, seed=8, batch_first=True),
    }


def _flat(result):
    """Nested tuples of arrays (and None) -> list of arrays."""
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _flat(r)]
    return [] if result is None else [np.asarray(result)]


def _jobs(models, n, seed=0):
    """n calls (name, zero-argument function) of mixed shapes."""
    rng = np.random.default_rng(seed)
    jobs = []
    for k in range(n):
        name = list(models)[k % len(models)]
        m = models[name]
        B, T = int(rng.integers(1, 7)), int(rng.integers(0, 26))
        if name == "gru_b1_wide":
            B = 1
        if name in ("dot", "additive", "mha"):
            T = max(T, 1)
            L, S = int(rng.integers(1, 6)), T
            Dq = {"dot": 24, "additive": 24, "mha": 32}[name]
            Dk = {"dot": 24, "additive": 16, "mha": 32}[name]
            q = rng.standard_normal((B, L, Dq)).astype(np.float32)
            k_ = rng.standard_normal((B, S, Dk)).astype(np.float32)
            lens = rng.integers(0, S + 1, size=B)
            if name == "mha":
                mask = np.arange(S)[None, :] >= np.maximum(lens, 1)[:, None]  # True = ignore
                jobs.append((name, lambda m=m, q=q, k_=k_, mask=mask: m(q, k_, k_, key_padding_mask=mask)))
            else:
                jobs.append((name, lambda m=m, q=q, k_=k_, lens=lens: m(q, k_, lengths=lens)))
            continue
        x = rng.standard_normal((B, T, 12) if m.batch_first else (T, B, 12)).astype(np.float32)
        lengths = rng.integers(0, T + 1, size=B) if rng.random() < 0.5 else None
        hx = None
        if rng.random() < 0.5:
            LD, P = m.num_layers * m.num_directions, m.proj_size or m.hidden_size
            h0 = rng.standard_normal((LD, B, P)).astype(np.float32)
            hx = (h0, rng.standard_normal((LD, B, m.hidden_size)).astype(np.float32)) if m.mode == "LSTM" else h0
        jobs.append((name, lambda m=m, x=x, hx=hx, lengths=lengths: m(x, hx, lengths=lengths)))
    return jobs


@pytest.fixture
def two_threads():
    """The C core and SciPy's BLAS on 2 threads for the test (teams of OpenMP threads really form)."""
    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(2)
    try:
        yield
    finally:
        rnnfast.set_num_threads(old)


@pytest.fixture
def one_thread():
    """One thread: long runs of small per-step BLAS calls are slow with a BLAS team on a busy 2-core CI box."""
    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(1)
    try:
        yield
    finally:
        rnnfast.set_num_threads(old)


def _run_threads(target, n, timeout):
    """Start n daemon threads on target(k); a thread still alive after `timeout` s is a deadlock: fail
    (daemon threads do not keep the test process alive)."""
    errors = []

    def wrap(k):
        try:
            target(k)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    assert alive == 0, f"{alive} of {n} threads still running after {timeout} s: deadlock"
    assert not errors, errors[0]


# --------------------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------------------
def test_sixteen_threads_share_models_bitwise_equal_to_serial(two_threads):
    """16 Python threads share one instance of each model for 3,200 calls of mixed shapes (every cell,
    fast and BLAS paths, attention, MHA) while the core's OpenMP teams and SciPy's BLAS run 2 threads:
    every result is bit-identical to the serial call, and no thread hangs (join with a timeout)."""
    models = _models()
    jobs = _jobs(models, 160)
    serial = [_flat(fn()) for _, fn in jobs]
    calls_per_thread = 200
    got = [[] for _ in range(16)]

    def worker(k):
        order = random.Random(k).choices(range(len(jobs)), k=calls_per_thread)
        for i in order:
            got[k].append((i, _flat(jobs[i][1]())))

    _run_threads(worker, 16, timeout=240)
    assert sum(len(g) for g in got) == 16 * calls_per_thread
    for g in got:
        for i, arrays in g:
            assert len(arrays) == len(serial[i])
            for a, b in zip(arrays, serial[i]):
                np.testing.assert_array_equal(a, b, err_msg=jobs[i][0])


def test_calls_release_the_gil_and_overlap():
    """Two threads each run one long call (T = 100,000) into their own NaN-filled output; the main
    thread -- Python code -- polls both outputs and must see both calls half-way through at the same
    moment: the GIL is released inside C and two calls run inside C at once."""
    layer = rnnfast.LSTM(8, 64, seed=0)
    plan = layer._plan
    T = 100_000
    x = np.random.default_rng(0).standard_normal((T, 1, 8)).astype(np.float32)
    outs = [np.full((T, 1, 64), np.nan, np.float32) for _ in range(2)]
    started = [threading.Event(), threading.Event()]
    finished = [threading.Event(), threading.Event()]

    def worker(k):
        h_n, c_n = np.empty((1, 1, 64), np.float32), np.empty((1, 1, 64), np.float32)
        started[k].set()
        plan.forward(x, None, None, None, outs[k], h_n, c_n, False, 1)
        finished[k].set()

    def half_way(o):
        return not np.isnan(o[0, 0, 0]) and np.isnan(o[-1, 0, 0])

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    both_seen = polls = 0
    while not all(f.is_set() for f in finished):
        polls += 1
        if all(s.is_set() for s in started) and half_way(outs[0]) and half_way(outs[1]):
            both_seen += 1
            if both_seen >= 3:
                break
        time.sleep(0.0005)
    for t in threads:
        t.join(120)
    assert both_seen >= 3, f"never saw both calls inside C at once ({polls} polls)"
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], layer(x)[0])


def test_results_do_not_depend_on_thread_count():
    """Every model of the mix, fast and BLAS paths, attention and MHA: 1 and 2 threads give the same bits;
    also GEMMs large enough for SciPy's OpenBLAS to split them across its threads (LSTM projections at
    batch 64, multi-head attention with E=256): it splits rows and columns, never a dot product."""
    models = _models()
    jobs = _jobs(models, 45, seed=11)
    rng = np.random.default_rng(12)
    big = rnnfast.LSTM(96, 512, proj_size=128, bidirectional=True, seed=0)
    xb, lb = rng.standard_normal((20, 64, 96)).astype(np.float32), rng.integers(0, 21, size=64)
    mha = rnnfast.MultiheadAttention(256, 8, seed=1)
    qb = rng.standard_normal((50, 16, 256)).astype(np.float32)
    jobs += [("lstm_proj_b64", lambda: big(xb, lengths=lb)), ("mha_e256", lambda: mha(qb, qb, qb))]
    old = rnnfast.get_num_threads()
    try:
        rnnfast.set_num_threads(1)
        one = [_flat(fn()) for _, fn in jobs]
        rnnfast.set_num_threads(2)
        two = [_flat(fn()) for _, fn in jobs]
    finally:
        rnnfast.set_num_threads(old)
    for (name, _), a, b in zip(jobs, one, two):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v, err_msg=name)


# Run in a fresh interpreter: threads, a forked child (raw os.fork and a multiprocessing 'fork' pool), all
# with whatever OMP_NUM_THREADS the test sets; writes every result to an .npz the test compares.
CHILD_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys, threading
    import numpy as np
    sys.path.insert(0, {tests!r})
    import rnnfast
    from test_hardening import _flat, _jobs, _models

    models = _models()
    jobs = _jobs(models, 36, seed=5)
    serial = [_flat(fn()) for _, fn in jobs]
    res = {{"threads": np.array(rnnfast.get_num_threads())}}
    for i, arrays in enumerate(serial):
        for j, a in enumerate(arrays):
            res[f"{{i}}_{{j}}"] = a

    # 8 threads at once agree with the serial calls
    bad = []
    def worker(k):
        for i in range(k, len(jobs), 8):
            for a, b in zip(_flat(jobs[i][1]()), serial[i]):
                if not np.array_equal(a, b):
                    bad.append(i)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not bad, bad

    # a raw fork() taken while 3 other threads keep calling the core (and OpenMP teams exist)
    busy = threading.Event()
    def spin():
        while not busy.is_set():
            for _, fn in jobs[:9]:
                fn()
    spinners = [threading.Thread(target=spin) for _ in range(3)]
    [t.start() for t in spinners]
    pid = os.fork()
    if pid == 0:
        ok = rnnfast.get_num_threads() == 1 and all(
            all(np.array_equal(a, b) for a, b in zip(_flat(fn()), serial[i])) for i, (_, fn) in enumerate(jobs))
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    busy.set()
    [t.join() for t in spinners]
    assert os.waitstatus_to_exitcode(status) == 0, status

    # a multiprocessing pool with the 'fork' start method (what pre-fork servers do)
    def call(i):
        return _flat(jobs[i][1]())
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for i, arrays in zip(range(len(jobs)), pool.map(call, range(len(jobs)))):
            assert all(np.array_equal(a, b) for a, b in zip(arrays, serial[i])), i
    np.savez(sys.argv[1], **res)
    print("ok")
    """
)


@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
@pytest.mark.parametrize("omp", [None, "1", "2"])
def test_fresh_process_threads_fork_and_omp_num_threads(omp, tmp_path):
    """In a new process with OMP_NUM_THREADS unset, 1 or 2: the default thread count follows it, 8 threads
    agree with serial calls, a raw fork() taken while 3 threads keep calling the core computes the same bits in the
    child (on 1 thread), a multiprocessing 'fork' pool does too; and every result equals this process's
    bit for bit (run to run and across thread counts). A hang fails by the subprocess timeout."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(rnnfast.__file__)), env.get("PYTHONPATH", "")])
    out = tmp_path / "res.npz"
    script = CHILD_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    res = np.load(out)
    expected_threads = int(omp) if omp else len(os.sched_getaffinity(0))
    assert int(res["threads"]) == expected_threads
    jobs = _jobs(_models(), 36, seed=5)
    for i, (name, fn) in enumerate(jobs):
        for j, a in enumerate(_flat(fn())):
            np.testing.assert_array_equal(res[f"{i}_{j}"], a, err_msg=name)


FORK_EXPLICIT_THREADS = """
import os, sys, numpy as np, rnnfast
rng = np.random.default_rng(0)
att = rnnfast.DotAttention(n_threads=2)          # an explicit thread count on the object
q, k = rng.standard_normal((64, 20, 64)).astype(np.float32), rng.standard_normal((64, 30, 64)).astype(np.float32)
ref = att(q, k)[0]                               # the parent's OpenMP team exists now
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(att(q, k)[0], ref) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
def test_forked_child_ignores_explicit_n_threads_instead_of_hanging():
    """Regression: an explicit n_threads=2 (attention, training) bypassed the fork rule, and the child's
    parallel region waited forever for the parent's OpenMP threads."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(rnnfast.__file__)))
    proc = subprocess.run([sys.executable, "-c", FORK_EXPLICIT_THREADS], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _c_heap_in_use():
    """Bytes malloc has handed out and not got back (glibc's mallinfo2: uordblks + hblkhd), or None.
    Unlike the RSS, a C leak cannot hide in free heap space left by earlier tests."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        ]

    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = Mallinfo2
    m = fn()
    return m.uordblks + m.hblkhd


@measures_memory
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_memory_growth_over_100k_calls():
    """100,000 small calls: streaming LSTM/GRU steps carrying state, an RNN with lengths, calls rejected
    with ShapeError, and every 10th call attention (every 50th multi-head attention, every 100th a training
    forward + backward; these cost ~0.1-0.6 ms each under tracemalloc). After a warm-up, Python allocations
    (tracemalloc, which also sees NumPy's buffers) may grow by at most 256 KiB, the C heap in use (glibc's
    mallinfo2; the core's workspace is malloc'd and tracemalloc does not see it) by at most 1 MiB and the
    resident set by at most 8 MiB: a leak of >= 3 bytes per call (Python) or >= 11 bytes per call (C heap)
    would exceed that. The slack is for allocator and interpreter caches, which stop growing after the
    warm-up."""
    from rnnfast import train

    rng = np.random.default_rng(0)
    lstm, gru, rnn = rnnfast.LSTM(4, 8, seed=0), rnnfast.GRU(4, 8, bidirectional=True, seed=1), rnnfast.RNN(4, 8)
    dot, mha = rnnfast.DotAttention(), rnnfast.MultiheadAttention(8, 2, seed=2)
    x1 = rng.standard_normal((1, 1, 4)).astype(np.float32)
    x3 = rng.standard_normal((3, 2, 4)).astype(np.float32)
    q, k = rng.standard_normal((2, 1, 8)).astype(np.float32), rng.standard_normal((2, 3, 8)).astype(np.float32)
    qt, kt = q.transpose(1, 0, 2).copy(), k.transpose(1, 0, 2).copy()
    bad = rng.standard_normal((3, 2, 5)).astype(np.float32)
    state = {"lstm": None, "gru": None}

    def one(i):
        if i % 100 == 0:
            out, _, cache = train.forward_train(lstm, x3)
            train.backward(lstm, cache, np.ones_like(out))
        elif i % 50 == 0:
            mha(qt, kt, kt)
        elif i % 10 == 0:
            dot(q, k, lengths=[3, 2])
        elif i % 4 == 0:
            _, state["lstm"] = lstm(x1, state["lstm"])
        elif i % 4 == 1:
            _, state["gru"] = gru(x1, state["gru"])
        elif i % 4 == 2:
            rnn(x3, lengths=[3, 1])
        else:
            try:
                lstm(bad)
            except rnnfast.errors.ShapeError:
                pass

    for i in range(2000):
        one(i)
    tracemalloc.start()
    try:
        for i in range(2000):  # warm up tracemalloc's own tables too
            one(i)
        before, rss0, heap0 = tracemalloc.take_snapshot(), _rss_bytes(), _c_heap_in_use()
        for i in range(100_000):
            one(i)
        heap1, rss1 = _c_heap_in_use(), _rss_bytes()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    grown = sum(s.size_diff for s in stats if s.size_diff > 0)
    top = "\n".join(str(s) for s in stats[:5])
    assert grown < 256 * 1024, f"Python allocations grew by {grown} bytes over 100k calls:\n{top}"
    assert rss1 - rss0 < 8 * 1024 * 1024, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB over 100k calls"
    if heap0 is not None:
        assert heap1 - heap0 < 1024 * 1024, f"malloc'd memory in use grew by {heap1 - heap0} bytes over 100k calls"
    assert np.all(np.isfinite(state["lstm"][0])) and np.all(np.isfinite(state["gru"]))


# --------------------------------------------------------------------------------------------------
# Long sequences
# --------------------------------------------------------------------------------------------------
def _peak_rss_reset():
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


LONG_CASES = {
    "lstm": lambda: rnnfast.LSTM(8, 64, seed=0),
    "gru_bi": lambda: rnnfast.GRU(8, 48, bidirectional=True, seed=1),
    "lstm_proj": lambda: rnnfast.LSTM(8, 64, proj_size=16, seed=2),  # generic (BLAS) path
}


@pytest.mark.parametrize("case", sorted(LONG_CASES))
def test_long_sequence_workspace_does_not_grow_with_T(case):
    """The workspace the C core allocates for one call at batch 1 (single layer) is the same for
    T = 100,000 and T = 1,000,000, and at most ~1 MB per direction (fast path) or 8 MB (BLAS path: chunks
    of the input projection): nothing but the outputs grows with T. Regression: the BLAS path kept the
    input projections of all T steps (G*H floats per step: 100 MB here)."""
    plan = LONG_CASES[case]()._plan
    ws = plan.workspace_size(100_000, 1)
    assert ws == plan.workspace_size(1_000_000, 1)
    assert ws <= (8 if case == "lstm_proj" else 2) * 2**20 + 2**16, ws


@measures_memory
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.parametrize("case", sorted(LONG_CASES))
def test_long_sequence_streams_in_bounded_memory(case):
    """T = 100,000 at batch 1, in one call and streamed in chunks of 1,000 steps carrying the state:
    same bits (fast path) or within float32 tolerance (BLAS path) for unidirectional layers; the one call's
    peak resident memory grows by at most its outputs + 6 MiB and the streamed run's by at most 6 MiB,
    whatever T (the peak is the kernel's VmHWM, reset before each run: it also sees the C core's malloc'd
    workspace). Regression: the BLAS path (LSTM projections) held G*H floats per step for all T steps."""
    layer = LONG_CASES[case]()
    T = 100_000
    x = np.random.default_rng(0).standard_normal((T, 1, 8)).astype(np.float32)
    layer(x[:10])  # load the kernels, BLAS and its threads before measuring
    if not _peak_rss_reset():
        pytest.skip("cannot reset the peak RSS here")
    base = _rss_bytes()
    out, state = layer(x)
    whole_peak = _peak_rss() - base
    out_bytes = out.nbytes + sum(a.nbytes for a in _flat(state))
    assert whole_peak < out_bytes + 6 * 2**20, f"peak {whole_peak / 2**20:.1f} MiB, outputs {out_bytes / 2**20:.1f} MiB"

    st, last = None, None
    _peak_rss_reset()
    base = _rss_bytes()
    for t0 in range(0, T, 1000):
        last, st = layer(x[t0 : t0 + 1000], st)
    stream_peak = _peak_rss() - base
    assert stream_peak < 6 * 2**20, f"streaming peak {stream_peak / 2**20:.1f} MiB"
    if layer.bidirectional:
        pass  # chunks of a bidirectional layer are separate sequences for its reverse direction
    elif case == "lstm_proj":
        assert_close(last, out[-1000:])
        for a, b in zip(_flat(st), _flat(state)):
            assert_close(a, b)
    else:
        np.testing.assert_array_equal(last, out[-1000:])
        for a, b in zip(_flat(st), _flat(state)):
            np.testing.assert_array_equal(a, b)
    # and the long run is right: the first steps (forward direction) against the float64 reference
    ref, _, _ = R.recurrent(layer.mode, x[:50], layer.state_dict(), proj_size=layer.proj_size)
    fwd = layer.state_dict()
    if layer.bidirectional:
        ref, _, _ = R.recurrent(layer.mode, x[:50], {k: v for k, v in fwd.items() if "reverse" not in k})
    assert_close(out[:50, :, : ref.shape[-1]], ref)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "lstm_proj", "gru", "gru_reset_before"])
@pytest.mark.parametrize("layout", ["batch_first_lengths", "time_major_full"])
def test_generic_path_projects_long_inputs_in_chunks(cell, layout, one_thread):
    """The BLAS path computes the input projection of long inputs in chunks of Tc steps (forward: the
    times [s0, s1); reverse: each sequence's own [len - s1, len - s0)). T is ~2.5 chunks, 2 layers,
    bidirectional, initial states: unsorted lengths with zeros and batch-first input (one GEMM per sequence
    and chunk), and full-length time-major input (one GEMM per chunk). Checked against the fast path on the
    same weights (itself checked against the reference everywhere), and LSTM projections (BLAS only) against
    the float64 reference."""
    from test_core_reference import CELLS

    mode, cls, kw = CELLS[cell]
    proj = "proj_size" in kw
    B, H, I = (4, 512, 7) if proj else (32, 128, 7)
    kw = {**kw, "proj_size": 24} if proj else kw
    batch_first = layout == "batch_first_lengths"
    layer = cls(I, H, num_layers=2, bidirectional=True, batch_first=batch_first, seed=3, **kw)
    fast = cls(I, H, num_layers=2, bidirectional=True, batch_first=batch_first, seed=3, **kw)
    layer._set_params(layer._params, pack=False)  # every cell on the generic path
    G = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    Tc = (1 << 21) // (B * G * H)
    T = int(2.5 * Tc) + 3
    P = kw.get("proj_size") or H
    # chunked: less than all T steps of gx (G*H floats per row) beside layer 0's outputs (2*P per row)
    assert layer._plan.workspace_size(T, B) < T * B * (G * H + 2 * P) * 4
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    lengths = ([T - 5, 0, T, Tc + 1, 17, Tc, 2 * Tc + 1, 1] * 4)[:B] if batch_first else None
    h0 = rng.standard_normal((4, B, P)).astype(np.float32)
    c0 = rng.standard_normal((4, B, H)).astype(np.float32)
    hx = (h0, c0) if mode == "LSTM" else h0
    out, state = layer(x, hx, lengths=lengths)
    if proj:
        ref_out, ref_h, ref_c = R.recurrent(
            mode, x, layer.state_dict(), 2, True, h0=h0, c0=c0, lengths=lengths, proj_size=24, batch_first=batch_first
        )
        ref_state = (ref_h, ref_c)
    else:
        ref_out, ref_state = fast(x, hx, lengths=lengths)
    assert_close(out, ref_out, what="out")
    for a, b in zip(_flat(state), _flat(ref_state)):
        assert_close(a, b, what="state")


@pytest.mark.parametrize("user_value", [None, "30"])
def test_import_shortens_openblas_spin_unless_the_user_set_it(user_value):
    # rnnfast/__init__.py: SciPy's OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when it is loaded; rnnfast sets
    # it (before loading it) so idle BLAS workers do not spin beside the core's OpenMP team, and keeps a
    # value the user chose. The speed effect is measured in bench/bench_train.py, not here.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if user_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = user_value
    script = "import os, rnnfast; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (user_value or "4")
