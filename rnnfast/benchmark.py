"""``rnnfast bench``: rnnfast beside PyTorch and ONNX Runtime, in one process.

For each case the harness

1. draws one set of weights (seeded NumPy, PyTorch's default initialisation U(-1/sqrt(H), 1/sqrt(H)),
   PyTorch's state_dict names) and loads the *same* arrays into every engine: ``rnnfast`` through
   ``load_state_dict``, ``torch.nn.LSTM/GRU/RNN`` through ``load_state_dict``, and ONNX Runtime through
   ``torch.onnx.export(..., dynamo=False)`` of that torch module to a temporary file;
2. sets every engine to the same number of threads (``rnnfast.set_num_threads(n)``,
   ``torch.set_num_threads(n)``, ONNX Runtime ``intra_op_num_threads=n``, ``inter_op_num_threads=1``,
   sequential execution);
3. runs each engine once (that call is timed as the *cold* first call) and checks its outputs
   (``out``, ``h_n``, ``c_n``) against the float64 NumPy specification :mod:`rnnfast.reference`
   (on at most two sequences of the batch) and against PyTorch when PyTorch runs; a disagreement is
   printed loudly, marks the row ``failed`` and makes the command exit with status 1;
4. times it: warm-up calls, then ``repeats`` calls (adaptive: enough to fill a time budget per engine, at
   least ``MIN_REPEATS``), each timed with ``time.perf_counter``; the median is reported;
5. reports GFLOP/s (2*M*N*K of every GEMM: input projection and recurrent product of each layer and
   direction, plus the LSTM projection), the percentage of this machine's SGEMM peak measured in the same
   run (best of a few square ``scipy.linalg.blas.sgemm`` calls on the same number of threads), and for
   rnnfast the ratio ``peer_time / rnnfast_time`` (> 1 means rnnfast is faster) against each peer and
   against the faster one.

A *streaming* case feeds one time step per call at batch 1 and passes the state back in (rnnfast and
PyTorch with their own modules, ONNX Runtime through a model exported with the initial state as inputs);
its time is the median per-call time.

The command needs only NumPy and SciPy: peers that are not installed are skipped with a note.
Everything here is importable: :func:`run_cases` returns the same dictionary that ``--json`` writes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np

SCHEMA = "rnnfast-bench/1"
CELLS = {"lstm": ("LSTM", 4), "gru": ("GRU", 3), "rnn": ("RNN_TANH", 1)}
PEERS = ("torch", "onnxruntime")
ENGINE_ORDER = ("rnnfast",) + PEERS

# Float32 engines vs the float64 specification: the team tolerance, widened with the reduction length
# (sqrt of (I + H) / 512) and the depth of the stack.
RTOL = 1e-4
ATOL = 1e-5

MIN_REPEATS = 5
MAX_REPEATS = 1000
MAX_STREAM_REPEATS = 5000
WARMUP = 2
CAP_FACTOR = 4.0  # adaptive timing stops after CAP_FACTOR * budget (busy machine)
PAUSE_S = 0.05  # between engine blocks, so spinning worker threads of the previous engine go to sleep
PEAK_SIZE = 2048
PEAK_TRIALS = 3


# --------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark configuration.

    ``mode`` is ``"sequence"`` (one call runs all ``seq_len`` steps) or ``"streaming"`` (one call runs
    one step at batch ``batch``; ``seq_len`` steps are used for the agreement check and cycled while
    timing). ``peers`` overrides the run's peer list for this case (``()`` = rnnfast only).
    """

    cell: str = "lstm"
    hidden_size: int = 256
    input_size: int = 0  # 0 = same as hidden_size
    batch: int = 1
    seq_len: int = 100
    layers: int = 1
    bidirectional: bool = False
    threads: int = 2
    mode: str = "sequence"
    proj_size: int = 0
    peers: tuple | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.mode not in ("sequence", "streaming"):
            raise ValueError(f"mode must be 'sequence' or 'streaming', got {self.mode!r}")
        for field in ("hidden_size", "batch", "seq_len", "layers", "threads"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
        if self.input_size < 0 or self.proj_size < 0:
            raise ValueError(f"input_size and proj_size must be >= 0, got {self.input_size}, {self.proj_size}")
        if self.proj_size and self.cell != "lstm":
            raise ValueError(f"proj_size needs cell='lstm', got cell={self.cell!r}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be < hidden_size ({self.hidden_size}), got {self.proj_size}")
        if self.mode == "streaming" and self.bidirectional:
            raise ValueError("a streaming case cannot be bidirectional (it sees one step at a time)")

    @property
    def I(self) -> int:  # noqa: E743  (the glossary letter: I = input size)
        return self.input_size or self.hidden_size

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def H_out(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def ref_mode(self) -> str:
        return CELLS[self.cell][0]

    def label(self) -> str:
        s = f"{self.cell} I={self.I} H={self.hidden_size} B={self.batch}"
        s += " step" if self.mode == "streaming" else f" T={self.seq_len}"
        if self.layers > 1:
            s += f" L={self.layers}"
        if self.bidirectional:
            s += " bi"
        if self.proj_size:
            s += f" P={self.proj_size}"
        return s + f" thr={self.threads}"

    def key(self) -> tuple:
        """Everything but the thread count (rows with equal keys form a speed-up group)."""
        d = dataclasses.asdict(self)
        d.pop("threads")
        d.pop("name")
        d.pop("peers")
        return tuple(sorted(d.items()))

    def gflop(self) -> float:
        """GFLOP of one call: 2*M*N*K summed over every GEMM (one step for streaming cases)."""
        steps = 1 if self.mode == "streaming" else self.seq_len
        rows = steps * self.batch
        G = CELLS[self.cell][1]
        H, P = self.hidden_size, self.H_out
        flops = 0
        for layer in range(self.layers):
            in_l = self.I if layer == 0 else self.D * P
            per_dir = 2 * rows * G * H * (in_l + P)  # input projection + recurrent product
            if self.proj_size:
                per_dir += 2 * rows * H * P
            flops += self.D * per_dir
        return flops / 1e9


def default_suite(threads: int = 2) -> list[Case]:
    """Representative rows of the issue's target table; finishes in about a minute on 2 cores."""
    return [
        Case("lstm", 256, threads=threads, name="batch1"),
        Case("gru", 512, threads=threads, name="batch1"),
        Case("rnn", 1024, threads=threads, name="batch1"),
        Case("lstm", 512, batch=64, threads=threads, name="batch64"),
        Case("lstm", 512, batch=64, threads=1, peers=(), name="batch64-1thread"),
        Case("lstm", 256, mode="streaming", threads=threads, name="streaming"),
    ]


# ------------------------------------------------------------------------------------------- weights
def make_state_dict(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 weights with PyTorch's names, shapes and default initialisation."""
    from rnnfast import reference

    rng = np.random.default_rng(seed)
    G = CELLS[case.cell][1]
    H, P = case.hidden_size, case.H_out
    k = 1.0 / math.sqrt(H)
    shapes = {}
    for layer in range(case.layers):
        in_l = case.I if layer == 0 else case.D * P
        for sfx in ("", "_reverse")[: case.D]:
            shapes[f"weight_ih_l{layer}{sfx}"] = (G * H, in_l)
            shapes[f"weight_hh_l{layer}{sfx}"] = (G * H, P)
            shapes[f"bias_ih_l{layer}{sfx}"] = (G * H,)
            shapes[f"bias_hh_l{layer}{sfx}"] = (G * H,)
            if case.proj_size:
                shapes[f"weight_hr_l{layer}{sfx}"] = (P, H)
    names = reference.param_names(case.ref_mode, case.layers, case.bidirectional, True, case.proj_size)
    assert sorted(names) == sorted(shapes), (names, sorted(shapes))
    return {n: rng.uniform(-k, k, size=shapes[n]).astype(np.float32) for n in names}


def make_input(case: Case, seed: int = 0) -> np.ndarray:
    """(T, B, I) float32 standard normal input."""
    rng = np.random.default_rng(seed + 1)
    return rng.standard_normal((case.seq_len, case.batch, case.I)).astype(np.float32)


# ------------------------------------------------------------------------------------------- engines
class EngineUnavailable(Exception):
    """The engine cannot run this case here (not installed, export unsupported...): skip with a note."""


Outputs = tuple  # (out (T,B,D*P), h_n (L*D,B,P), c_n (L*D,B,H) or None) as float32 NumPy arrays


class Engine:
    """Interface of one engine: build the model, run a sequence, or stream one step at a time."""

    name = "?"

    def version(self) -> str | None:
        return None

    def set_threads(self, n: int) -> None:
        raise NotImplementedError

    def setup(self, case: Case, state: dict[str, np.ndarray], tmpdir: str) -> None:
        raise NotImplementedError

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sequence_fn(self, x: np.ndarray) -> Callable[[], Any]:
        """A no-argument callable that runs the whole sequence ``x`` (what gets timed)."""
        raise NotImplementedError

    def outputs(self, result: Any) -> Outputs:
        """Convert what ``sequence_fn()()`` or a stream step returned to NumPy (not timed)."""
        raise NotImplementedError

    def stream_init(self) -> Any:
        return None

    def stream_step(self, xt: np.ndarray, state: Any) -> tuple[Any, Any]:
        """One step: ``xt`` (1, B, I) -> (raw result, new state)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class RnnfastEngine(Engine):
    name = "rnnfast"

    def __init__(self) -> None:
        import rnnfast

        self.rf = rnnfast
        self.layer = None
        self.cell = "lstm"

    def version(self) -> str | None:
        return _rnnfast_version()

    def set_threads(self, n: int) -> None:
        self.rf.set_num_threads(n)

    def setup(self, case: Case, state: dict[str, np.ndarray], tmpdir: str) -> None:
        cls = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[case.cell]
        kwargs: dict[str, Any] = {"num_layers": case.layers, "bidirectional": case.bidirectional}
        if case.proj_size:
            kwargs["proj_size"] = case.proj_size
        self.layer = getattr(self.rf, cls)(case.I, case.hidden_size, **kwargs)
        self.layer.load_state_dict(state)
        self.cell = case.cell

    def sequence_fn(self, x: np.ndarray) -> Callable[[], Any]:
        layer = self.layer
        return lambda: layer(x)

    def outputs(self, result: Any) -> Outputs:
        out, st = result
        if self.cell == "lstm":
            h, c = st
            return np.asarray(out), np.asarray(h), np.asarray(c)
        return np.asarray(out), np.asarray(st), None

    def stream_step(self, xt: np.ndarray, state: Any) -> tuple[Any, Any]:
        result = self.layer(xt, state)
        return result, result[1]


class TorchEngine(Engine):
    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.module = None
        self.cell = "lstm"

    def version(self) -> str | None:
        return self.torch.__version__

    def set_threads(self, n: int) -> None:
        self.torch.set_num_threads(n)

    def setup(self, case: Case, state: dict[str, np.ndarray], tmpdir: str) -> None:
        torch = self.torch
        kwargs: dict[str, Any] = {"num_layers": case.layers, "bidirectional": case.bidirectional}
        if case.proj_size:
            kwargs["proj_size"] = case.proj_size
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[case.cell]
        self.module = cls(case.I, case.hidden_size, **kwargs).eval()
        self.module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        self.cell = case.cell

    def context(self) -> contextlib.AbstractContextManager:
        return self.torch.inference_mode()

    def sequence_fn(self, x: np.ndarray) -> Callable[[], Any]:
        module, xt = self.module, self.torch.from_numpy(x)
        return lambda: module(xt)

    def outputs(self, result: Any) -> Outputs:
        out, st = result
        if self.cell == "lstm":
            return out.numpy(), st[0].numpy(), st[1].numpy()
        return out.numpy(), st.numpy(), None

    def stream_step(self, xt: np.ndarray, state: Any) -> tuple[Any, Any]:
        result = self.module(self.torch.from_numpy(xt), state)
        return result, result[1]


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self) -> None:
        import onnxruntime

        _require("torch", "onnxruntime runs the model exported from torch: torch is not installed")
        _require("onnx", "torch.onnx.export needs the onnx package, which is not installed")
        self.ort = onnxruntime
        self.torch_engine = TorchEngine()
        self.sess = None
        self.case: Case | None = None
        self.threads = 1
        self.feeds_state = False

    def version(self) -> str | None:
        return self.ort.__version__

    def set_threads(self, n: int) -> None:
        self.threads = n  # fixed per session: setup() builds the session with it

    def setup(self, case: Case, state: dict[str, np.ndarray], tmpdir: str) -> None:
        torch = self.torch_engine.torch
        self.torch_engine.setup(case, state, tmpdir)
        self.case = case
        self.threads = case.threads
        T = 1 if case.mode == "streaming" else case.seq_len
        x = torch.zeros(T, case.batch, case.I)
        h0 = torch.zeros(case.layers * case.D, case.batch, case.H_out)
        c0 = torch.zeros(case.layers * case.D, case.batch, case.hidden_size)
        lstm = case.cell == "lstm"
        self.feeds_state = case.mode == "streaming"
        if self.feeds_state:
            args: tuple = (x, (h0, c0)) if lstm else (x, h0)
            inputs = ["x", "h0", "c0"] if lstm else ["x", "h0"]
        else:
            args, inputs = (x,), ["x"]
        outputs = ["y", "h_n", "c_n"] if lstm else ["y", "h_n"]
        path = os.path.join(tmpdir, f"{case.cell}_{os.getpid()}_{id(self)}.onnx")
        try:
            with warnings.catch_warnings(), _quiet_stdio():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    self.torch_engine.module,
                    args,
                    path,
                    dynamo=False,
                    input_names=inputs,
                    output_names=outputs,
                )
        except Exception as e:  # e.g. LSTM proj_size has no ONNX LSTM equivalent
            raise EngineUnavailable(f"torch.onnx.export failed: {type(e).__name__}: {_first_line(e)}") from e
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.sess = self.ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EngineUnavailable(f"onnxruntime cannot load the export: {_first_line(e)}") from e

    def sequence_fn(self, x: np.ndarray) -> Callable[[], Any]:
        sess, feed = self.sess, {"x": x}
        return lambda: sess.run(None, feed)

    def outputs(self, result: Any) -> Outputs:
        if len(result) == 3:
            return result[0], result[1], result[2]
        return result[0], result[1], None

    def stream_init(self) -> Any:
        c = self.case
        h0 = np.zeros((c.layers * c.D, c.batch, c.H_out), np.float32)
        if c.cell == "lstm":
            return (h0, np.zeros((c.layers * c.D, c.batch, c.hidden_size), np.float32))
        return h0

    def stream_step(self, xt: np.ndarray, state: Any) -> tuple[Any, Any]:
        if self.case.cell == "lstm":
            result = self.sess.run(None, {"x": xt, "h0": state[0], "c0": state[1]})
            return result, (result[1], result[2])
        result = self.sess.run(None, {"x": xt, "h0": state})
        return result, result[1]

    def close(self) -> None:
        self.sess = None


ENGINE_CLASSES: dict[str, Callable[[], Engine]] = {
    "rnnfast": RnnfastEngine,
    "torch": TorchEngine,
    "onnxruntime": OnnxRuntimeEngine,
}


def _require(module: str, message: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise EngineUnavailable(message)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


@contextlib.contextmanager
def _quiet_stdio() -> Iterator[None]:
    """Silence what exporters print on the C-level stdout/stderr."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with open(os.devnull, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


# ----------------------------------------------------------------------------------------- measuring
def measure(
    fn: Callable[[], Any],
    budget_s: float,
    repeats: int | None = None,
    warmup: int = WARMUP,
    min_repeats: int = MIN_REPEATS,
    max_repeats: int = MAX_REPEATS,
) -> list[float]:
    """Per-call times (seconds) of ``repeats`` calls of ``fn`` after ``warmup`` calls.

    Without ``repeats``, the count fills ``budget_s`` at the warm-up speed, within
    [``min_repeats``, ``max_repeats``], and timing stops early (after at least ``min_repeats`` calls)
    once ``CAP_FACTOR * budget_s`` has passed, so a busy machine cannot stretch a run without bound.
    An explicit ``repeats`` is always honoured.
    """
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        est = []
        for _ in range(max(1, warmup)):
            t0 = clock()
            fn()
            est.append(clock() - t0)
        deadline = math.inf
        if repeats is None:
            per_call = max(statistics.median(est), 1e-7)
            repeats = int(min(max_repeats, max(min_repeats, math.ceil(budget_s / per_call))))
            deadline = clock() + CAP_FACTOR * budget_s
        times = []
        for i in range(repeats):
            t0 = clock()
            fn()
            t1 = clock()
            times.append(t1 - t0)
            if t1 > deadline and i + 1 >= min_repeats:
                break
        return times
    finally:
        if gc_was_enabled:
            gc.enable()


def _blas_threads(n: int) -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def sgemm_peak(threads: int, size: int = PEAK_SIZE, trials: int = PEAK_TRIALS) -> dict[str, Any]:
    """Best GFLOP/s of a few (size x size) @ (size x size) ``scipy.linalg.blas.sgemm`` on ``threads``."""
    from scipy.linalg import blas

    _set_rnnfast_threads(threads)  # rnnfast.set_num_threads also sets SciPy's BLAS threads
    rng = np.random.default_rng(123)
    a = np.asfortranarray(rng.standard_normal((size, size), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((size, size), dtype=np.float32))
    c = np.zeros((size, size), np.float32, order="F")
    flop = 2.0 * size**3
    with _blas_threads(threads):
        blas.sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=True)  # warm-up (thread start, page faults)
        times = []
        for _ in range(trials):
            t0 = time.perf_counter()
            blas.sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=True)
            times.append(time.perf_counter() - t0)
    return {
        "threads": threads,
        "size": size,
        "gflops": flop / min(times) / 1e9,
        "trial_gflops": [flop / t / 1e9 for t in times],
        "method": "scipy.linalg.blas.sgemm, square float32, Fortran order, best of trials "
        "(run_cases: best of the start and end measurements)",
    }


def _set_rnnfast_threads(n: int) -> None:
    try:
        import rnnfast

        rnnfast.set_num_threads(n)
    except (ImportError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------- checking
def tolerance(case: Case) -> tuple[float, float]:
    """(rtol, atol) for a float32 engine against the float64 specification on this case."""
    scale = math.sqrt(max(1.0, (case.I + case.hidden_size) / 512.0)) * math.sqrt(case.layers * case.D)
    return RTOL * scale, ATOL * scale


def _compare(got: Outputs, want: Outputs, rtol: float, atol: float) -> tuple[float, float, bool, str]:
    """(max abs diff, max excess over tolerance, passed, where) over out, h_n, c_n."""
    worst, excess, where = 0.0, -np.inf, ""
    for name, g, w in zip(("out", "h_n", "c_n"), got, want):
        if w is None:
            continue
        if g is None:
            return math.inf, math.inf, False, f"{name} missing"
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if g.shape != w.shape:
            return math.inf, math.inf, False, f"{name} shape {g.shape}, expected {w.shape}"
        if g.size == 0:
            continue
        diff = np.abs(g - w)
        bad = ~np.isfinite(g) & np.isfinite(w)
        if bad.any():
            return math.inf, math.inf, False, f"{name} has non-finite values"
        d = float(np.nanmax(diff))
        over = diff - (atol + rtol * np.abs(w))
        i = int(np.nanargmax(over))
        if d > worst or over.flat[i] > excess:
            where = f"{name}[{np.unravel_index(i, g.shape)}] got {g.flat[i]:.7g} expected {w.flat[i]:.7g}"
        worst = max(worst, d)
        excess = max(excess, float(over.flat[i]))
    return worst, excess, bool(excess <= 0), where


def _subset(outputs: Outputs, idx: list[int]) -> Outputs:
    return tuple(None if a is None else np.asarray(a)[:, idx] for a in outputs)


def reference_outputs(case: Case, state: dict[str, np.ndarray], x: np.ndarray, idx: list[int]) -> Outputs:
    """float64 specification on the sequences ``idx`` of the batch (sequences are independent)."""
    from rnnfast import reference

    out, h_n, c_n = reference.recurrent(
        case.ref_mode,
        x[:, idx],
        state,
        num_layers=case.layers,
        bidirectional=case.bidirectional,
        proj_size=case.proj_size,
    )
    return out, h_n, c_n


# ---------------------------------------------------------------------------------------------- rows
def _row(case: Case, engine: str) -> dict[str, Any]:
    return {
        "case": case.label(),
        "name": case.name,
        "mode": case.mode,
        "cell": case.cell,
        "input_size": case.I,
        "hidden_size": case.hidden_size,
        "batch": case.batch,
        "seq_len": case.seq_len,
        "layers": case.layers,
        "bidirectional": case.bidirectional,
        "proj_size": case.proj_size,
        "threads": case.threads,
        "engine": engine,
        "engine_version": None,
        "status": "pending",  # ok | failed (disagreement) | error (raised) | skipped (unavailable)
        "note": None,
        "agree": None,
        "checked_against": [],
        "max_abs_diff_ref": None,
        "max_abs_diff_torch": None,
        "rtol": None,
        "atol": None,
        "setup_s": None,
        "cold_s": None,
        "median_s": None,
        "min_s": None,
        "q1_s": None,
        "q3_s": None,
        "repeats": None,
        "warmup": None,
        "per_call_s": None,
        "gflop": case.gflop(),
        "gflops": None,
        "peak_gflops": None,
        "pct_peak": None,
        "ratio_vs": {},
        "faster_peer": None,
        "ratio_vs_faster_peer": None,
        "loadavg_1min": None,  # when this engine's timing started: > cores means the numbers are suspect
    }


class Progress:
    """One status line on stderr (rewritten in place on a terminal)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.width = 0

    def __call__(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.perf_counter() - self.t0:6.1f}s] {text}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def _loud(message: str) -> None:
    bar = "!" * 100
    sys.stderr.write(f"\n{bar}\n!! {message}\n{bar}\n")
    sys.stderr.flush()


def run_case(
    case: Case,
    peers: Sequence[str],
    budget_s: float = 0.5,
    repeats: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    tmpdir: str | None = None,
    notes: list | None = None,
) -> list[dict[str, Any]]:
    """Check and time one case on rnnfast and ``peers``; one row per engine."""
    progress = progress or (lambda s: None)
    notes = notes if notes is not None else []
    engines = ["rnnfast"] + [p for p in (peers if case.peers is None else case.peers) if p != "rnnfast"]
    state = make_state_dict(case, seed)
    x = make_input(case, seed)
    B = case.batch
    idx = sorted({0, B - 1})
    rtol, atol = tolerance(case)
    progress(f"{case.label()}: float64 reference")
    want_ref = reference_outputs(case, state, x, idx)
    rows = {name: _row(case, name) for name in engines}
    results: dict[str, Outputs] = {}
    own_tmp = None
    if tmpdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="rnnfast-bench-")
        tmpdir = own_tmp.name
    try:
        # 1) build every engine and run it once (cold call); keep its outputs.
        live: dict[str, Engine] = {}
        for name in engines:
            row = rows[name]
            row.update(rtol=rtol, atol=atol)
            progress(f"{case.label()}: {name} setup + first call")
            try:
                eng = ENGINE_CLASSES[name]()
                row["engine_version"] = eng.version()
                eng.set_threads(case.threads)
                t0 = time.perf_counter()
                eng.setup(case, state, tmpdir)
                row["setup_s"] = time.perf_counter() - t0
                eng.set_threads(case.threads)
                with eng.context():
                    cold, outs = _first_run(eng, case, x)
                row["cold_s"] = cold
                results[name] = outs
                live[name] = eng
            except (ImportError, EngineUnavailable) as e:
                if name == "rnnfast":
                    row.update(status="error", note=f"{type(e).__name__}: {_first_line(e)}")
                    _loud(f"rnnfast cannot run {case.label()}: {row['note']}")
                else:
                    row.update(status="skipped", note=_skip_note(name, e))
                    notes.append(f"{case.label()}: {name} skipped: {row['note']}")
            except Exception as e:  # noqa: BLE001  (an engine raising on a valid case: that engine failed)
                row.update(status="error", note=f"{type(e).__name__}: {_first_line(e)}")
                _loud(f"{name} raised on {case.label()}: {row['note']}")
            time.sleep(PAUSE_S)

        # 2) agreement: every engine against float64 spec (subset) and against torch (full batch) when
        #    torch itself agrees with the spec.
        ref_checks = {n: _compare(_subset(o, idx), want_ref, rtol, atol) for n, o in results.items()}
        torch_ok = "torch" in results and ref_checks["torch"][2]
        for name, outs in results.items():
            row = rows[name]
            d_ref, _, ok_ref, where_ref = ref_checks[name]
            row["max_abs_diff_ref"] = d_ref
            row["checked_against"].append("reference_float64")
            ok, why = ok_ref, f"vs float64 reference: {where_ref}"
            if torch_ok and name != "torch":
                d_t, _, ok_t, where_t = _compare(outs, results["torch"], 2 * rtol, 2 * atol)
                row["max_abs_diff_torch"] = d_t
                row["checked_against"].append("torch")
                if not ok_t and ok:
                    ok, why = False, f"vs torch: {where_t}"
            elif name == "torch":
                row["max_abs_diff_torch"] = 0.0
            row["agree"] = ok
            if not ok:
                row.update(status="failed", note=f"outputs disagree {why}")
                _loud(
                    f"OUTPUT MISMATCH: {name} on {case.label()}: max|diff| vs float64 reference {d_ref:.3g} "
                    f"(rtol {rtol:.2g}, atol {atol:.2g}); {why}"
                )

        # 3) timing, one engine block at a time.
        for name, eng in live.items():
            row = rows[name]
            progress(f"{case.label()}: timing {name}")
            try:
                row["loadavg_1min"] = _loadavg1()
                eng.set_threads(case.threads)
                with eng.context():
                    times, warm = _timed_runs(eng, case, x, budget_s, repeats)
                q = np.percentile(times, [25, 50, 75])
                row.update(
                    median_s=float(q[1]),
                    min_s=float(min(times)),
                    q1_s=float(q[0]),
                    q3_s=float(q[2]),
                    repeats=len(times),
                    warmup=warm,
                )
                if case.mode == "streaming":
                    row["per_call_s"] = row["median_s"]
                row["gflops"] = row["gflop"] / row["median_s"]
                if row["status"] == "pending":
                    row["status"] = "ok"
            except Exception as e:  # noqa: BLE001  (reported as this engine's error, the run goes on)
                row.update(status="error", note=f"timing raised {type(e).__name__}: {_first_line(e)}")
                _loud(f"{name} raised while timing {case.label()}: {row['note']}")
            finally:
                eng.close()
            time.sleep(PAUSE_S)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()

    # 4) ratios on the rnnfast row.
    rf = rows["rnnfast"]
    if rf["median_s"]:
        best = None
        for name in engines[1:]:
            r = rows[name]
            if r["status"] == "ok" and r["median_s"]:
                rf["ratio_vs"][name] = r["median_s"] / rf["median_s"]
                if best is None or r["median_s"] < rows[best]["median_s"]:
                    best = name
        if best is not None:
            rf["faster_peer"] = best
            rf["ratio_vs_faster_peer"] = rf["ratio_vs"][best]
    return [rows[name] for name in engines]


def _loadavg1() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover (not on every platform)
        return None


def _skip_note(name: str, e: BaseException) -> str:
    if isinstance(e, ModuleNotFoundError):
        return f"not installed ({e.name})"
    return _first_line(e) or type(e).__name__


def _first_run(eng: Engine, case: Case, x: np.ndarray) -> tuple[float, Outputs]:
    """Time the first call and return (seconds, outputs as NumPy)."""
    if case.mode == "sequence":
        fn = eng.sequence_fn(x)
        t0 = time.perf_counter()
        result = fn()
        cold = time.perf_counter() - t0
        return cold, eng.outputs(result)
    # streaming: T steps of one time step each, state passed back in; the first step is the cold call.
    state = eng.stream_init()
    ys, cold = [], 0.0
    result = None
    for t in range(case.seq_len):
        xt = x[t : t + 1]
        t0 = time.perf_counter()
        result, state = eng.stream_step(xt, state)
        if t == 0:
            cold = time.perf_counter() - t0
        ys.append(np.array(eng.outputs(result)[0]))
    _, h_n, c_n = eng.outputs(result)
    return cold, (np.concatenate(ys, axis=0), np.array(h_n), None if c_n is None else np.array(c_n))


def _timed_runs(
    eng: Engine, case: Case, x: np.ndarray, budget_s: float, repeats: int | None
) -> tuple[list[float], int]:
    if case.mode == "sequence":
        return measure(eng.sequence_fn(x), budget_s, repeats), WARMUP
    steps = [np.ascontiguousarray(x[t : t + 1]) for t in range(case.seq_len)]
    box = {"state": eng.stream_init(), "t": 0}

    def step() -> None:
        t = box["t"]
        _, box["state"] = eng.stream_step(steps[t], box["state"])
        box["t"] = (t + 1) % len(steps)
        if box["t"] == 0:  # keep the state bounded in time like a fresh stream
            box["state"] = eng.stream_init()

    warm = 10
    return measure(step, budget_s, repeats, warmup=warm, max_repeats=MAX_STREAM_REPEATS), warm


def speedups(rows: list[dict[str, Any]], cases: Sequence[Case]) -> list[dict[str, Any]]:
    """For rows of the same case and engine at several thread counts: time(fewest) / time(n)."""
    by_label = {c.label(): c for c in cases}
    groups: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        c = by_label.get(r["case"])
        if c is None or not r["median_s"] or r["status"] != "ok":
            continue
        groups.setdefault((c.key(), r["engine"]), {})[r["threads"]] = r
    out = []
    for (_, engine), per_threads in groups.items():
        if len(per_threads) < 2:
            continue
        base_n = min(per_threads)
        base = per_threads[base_n]
        for n, r in sorted(per_threads.items()):
            if n == base_n:
                continue
            label = r["case"].rsplit(" thr=", 1)[0]
            out.append(
                {
                    "case": label,
                    "engine": engine,
                    "threads_from": base_n,
                    "threads_to": n,
                    "time_from_s": base["median_s"],
                    "time_to_s": r["median_s"],
                    "speedup": base["median_s"] / r["median_s"],
                }
            )
    return out


# -------------------------------------------------------------------------------------------- machine
def _rnnfast_version() -> str | None:
    try:
        import rnnfast

        v = getattr(rnnfast, "__version__", None)
        if v:
            return str(v)
    except ImportError:
        pass
    return _dist_version("rnnfast")


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _optional_version(module: str) -> str | None:
    """Version of an optional package, None when it cannot be imported here (without importing it)."""
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ValueError, ImportError):
        return None
    return _dist_version(module)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(
                        f
                        for f in flags
                        if f
                        in (
                            "avx",
                            "avx2",
                            "fma",
                            "avx512f",
                            "avx512_bf16",
                            "avx512_vnni",
                            "amx_tile",
                            "neon",
                            "asimd",
                        )
                    )
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, versions and thread-related environment of this run."""
    import numpy
    import scipy

    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS)
        available = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover
        load = None
    versions = {
        "rnnfast": _rnnfast_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch": _optional_version("torch"),
        "onnxruntime": _optional_version("onnxruntime"),
        "onnx": _optional_version("onnx"),
        "python": platform.python_version(),
    }
    env = {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("OMP_", "OPENBLAS_", "MKL_", "GOMP_"))}
    blas = None
    try:  # optional: threadpoolctl is not a dependency of rnnfast
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        blas = [
            {k: i.get(k) for k in ("internal_api", "prefix", "version", "architecture", "num_threads")}
            for i in threadpool_info()
        ]
    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "cores_available": available,
        "loadavg_at_start": load,
        "platform": platform.platform(),
        "versions": versions,
        "env": env,
        "threadpools": blas,
    }


# ------------------------------------------------------------------------------------------------ run
def available_peers(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """(peers that can run here, notes on those that cannot)."""
    import importlib.util

    ok, notes = [], []
    for p in requested:
        needs = {"torch": ["torch"], "onnxruntime": ["onnxruntime", "torch", "onnx"]}[p]
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            notes.append(f"peer {p} skipped: {', '.join(missing)} not installed")
        else:
            ok.append(p)
    return ok, notes


def run_cases(
    cases: Sequence[Case],
    peers: Sequence[str] = PEERS,
    budget_s: float = 0.5,
    repeats: int | None = None,
    seed: int = 0,
    progress: bool = True,
    peak: bool = True,
    peak_size: int = PEAK_SIZE,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``cases`` and return the report (what ``--json`` writes; :func:`format_table` prints it)."""
    prog = Progress(progress)
    started = time.perf_counter()
    info = machine_info()
    peers_ok, notes = available_peers(peers)
    for note in notes:
        sys.stderr.write(f"note: {note}\n")
    peaks: dict[int, dict] = {}
    thread_counts = sorted({c.threads for c in cases})

    def measure_peaks(when: str) -> None:
        # Measured at the start and at the end of the run; the best counts. On a shared machine a
        # neighbour's burst during one measurement would otherwise understate the peak.
        for n in thread_counts:
            prog(f"SGEMM peak on {n} thread(s) ({when})")
            p = sgemm_peak(n, size=peak_size)
            if n not in peaks:
                peaks[n] = dict(p, measurements=[p["gflops"]])
            else:
                peaks[n]["measurements"].append(p["gflops"])
                if p["gflops"] > peaks[n]["gflops"]:
                    peaks[n].update(gflops=p["gflops"], trial_gflops=p["trial_gflops"])

    if peak:
        measure_peaks("start")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rnnfast-bench-") as tmpdir:
        for i, case in enumerate(cases, 1):
            tag = f"[{i}/{len(cases)}] "
            case_rows = run_case(
                case,
                peers_ok if case.peers is None else [p for p in case.peers if p in peers_ok],
                budget_s=budget_s,
                repeats=repeats,
                seed=seed,
                progress=lambda s, tag=tag: prog(tag + s),
                tmpdir=tmpdir,
                notes=notes,
            )
            rows.extend(case_rows)
    if peak:
        measure_peaks("end")
    for r in rows:
        if r["threads"] in peaks and r["gflops"] is not None:
            r["peak_gflops"] = peaks[r["threads"]]["gflops"]
            r["pct_peak"] = 100.0 * r["gflops"] / r["peak_gflops"]
    over = sorted({r["threads"] for r in rows if r["pct_peak"] is not None and r["pct_peak"] > 110})
    for n in over:
        notes.append(
            f"an engine ran above 110% of the measured SGEMM peak on {n} thread(s): the peak measurement was "
            "probably disturbed (busy machine), so every % peak on that thread count reads too high"
        )
    prog.done()
    try:
        info["loadavg_at_end"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        info["loadavg_at_end"] = None
    failed = [r for r in rows if r["status"] in ("failed", "error")]
    return {
        "schema": SCHEMA,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "options": options,
        "machine": info,
        "settings": {
            "peers_requested": list(peers),
            "peers_run": peers_ok,
            "budget_s_per_engine": budget_s,
            "repeats": repeats if repeats is not None else "adaptive",
            "min_repeats": MIN_REPEATS,
            "warmup_calls": WARMUP,
            "seed": seed,
            "timer": "time.perf_counter, median of repeats",
            "torch": "torch.inference_mode(), torch.set_num_threads(threads)",
            "onnxruntime": "torch.onnx.export(dynamo=False); intra_op_num_threads=threads, inter_op 1, "
            "ORT_SEQUENTIAL, ORT_ENABLE_ALL, CPUExecutionProvider",
            "rnnfast": "rnnfast.set_num_threads(threads)",
            "gflop": "2*M*N*K of input projection + recurrent product per layer/direction (+ LSTM projection)",
            "tolerance": f"float64 spec: rtol {RTOL} atol {ATOL} x sqrt(max(1,(I+H)/512)) x sqrt(L*D); "
            "vs torch: twice that",
        },
        "sgemm_peak": [peaks[n] for n in sorted(peaks)],
        "rows": rows,
        "speedups": speedups(rows, cases),
        "notes": notes,
        "failed": [f"{r['engine']} on {r['case']}: {r['status']}: {r['note']}" for r in failed],
        "ok": not failed,
        "elapsed_s": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------- output
def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of a report."""
    m = report["machine"]
    lines = [
        f"rnnfast bench on {m['cpu_model']} ({m['cores_available']} cores available), "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v and k != "python"),
    ]
    load, cores = m.get("loadavg_at_start"), m.get("cores_available") or 1
    # The 1-minute load includes this run itself (and a previous run just finished): warn only above the core count.
    if load and max(load[0], (m.get("loadavg_at_end") or [0])[0]) > cores:
        lines.append(
            f"WARNING: busy machine (1-min load average {load[0]:.1f} at start, "
            f"{(m.get('loadavg_at_end') or [float('nan')])[0]:.1f} at end, on {cores} cores): timings are noisy"
        )
    if report["sgemm_peak"]:
        lines.append(
            "SGEMM peak (scipy.linalg.blas.sgemm): "
            + ", ".join(f"{p['gflops']:.1f} GFLOP/s on {p['threads']} thread(s)" for p in report["sgemm_peak"])
        )
    head = [
        "case",
        "engine",
        "median",
        "min",
        "cold",
        "GFLOP/s",
        "% peak",
        "max|diff|",
        "vs faster peer",
        "check",
    ]
    table = [head]
    for r in report["rows"]:
        ratio = "-"
        if r["engine"] == "rnnfast" and r["ratio_vs_faster_peer"] is not None:
            ratio = f"{r['ratio_vs_faster_peer']:.2f}x ({r['faster_peer']})"
        diff = r["max_abs_diff_ref"]
        check = {"ok": "ok", "failed": "MISMATCH", "error": "ERROR", "skipped": "skipped"}.get(r["status"], r["status"])
        median = _fmt_time(r["median_s"]) + ("/call" if r["mode"] == "streaming" and r["median_s"] else "")
        table.append(
            [
                r["case"],
                r["engine"],
                median,
                _fmt_time(r["min_s"]),
                _fmt_time(r["cold_s"]),
                _fmt(r["gflops"], ".2f"),
                _fmt(r["pct_peak"], ".1f"),
                _fmt(diff, ".1e"),
                ratio,
                check,
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    prev_case = None
    for j, row in enumerate(table):
        case_cell = row[0] if row[0] != prev_case or j == 0 else ""
        prev_case = row[0] if j else None
        cells = [case_cell.ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    for s in report["speedups"]:
        lines.append(
            f"speed-up {s['engine']} {s['case']}: {s['threads_from']} -> {s['threads_to']} threads "
            f"{_fmt_time(s['time_from_s'])} -> {_fmt_time(s['time_to_s'])} = {s['speedup']:.2f}x"
        )
    lines.append(
        "ratio = peer median / rnnfast median (> 1: rnnfast faster); GFLOP/s and % peak from the median; "
        "max|diff| vs the float64 reference; "
        f"run took {report['elapsed_s']:.1f} s"
    )
    for n in report["notes"]:
        lines.append(f"note: {n}")
    for f in report["failed"]:
        lines.append(f"FAILED: {f}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, tuple):
            return list(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    def clean(o: Any) -> Any:  # inf/nan are not JSON
        if isinstance(o, float) and not math.isfinite(o):
            return str(o)
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    with open(path, "w", encoding="utf-8") as f:
        json.dump(clean(report), f, indent=2, default=default)
        f.write("\n")


# ------------------------------------------------------------------------------------------------ CLI
CASE_OPTIONS = (
    "cell",
    "input_size",
    "hidden_size",
    "batch",
    "seq_len",
    "layers",
    "bidirectional",
    "proj_size",
    "streaming",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnfast bench`` (without case options: the default suite)."""
    parser.epilog = (
        "Without case options, runs a default suite of representative rows (about a minute on 2 cores). "
        "With any of --cell/--input-size/--hidden-size/--batch/--seq-len/--layers/--bidirectional/"
        "--proj-size/--streaming, runs that single case (defaults: lstm, H=256, I=H, B=1, T=100, 1 layer)."
    )
    g = parser.add_argument_group("case")
    g.add_argument("--cell", choices=sorted(CELLS), default=None, help="recurrent cell (default lstm)")
    g.add_argument("--input-size", type=int, default=None, metavar="I", help="input size (default: H)")
    g.add_argument("--hidden-size", type=int, default=None, metavar="H", help="hidden size (default 256)")
    g.add_argument("--batch", type=int, default=None, metavar="B", help="batch size (default 1)")
    g.add_argument("--seq-len", type=int, default=None, metavar="T", help="sequence length (default 100)")
    g.add_argument("--layers", type=int, default=None, metavar="L", help="stacked layers (default 1)")
    g.add_argument("--bidirectional", action="store_true", default=None, help="bidirectional layers")
    g.add_argument("--proj-size", type=int, default=None, metavar="P", help="LSTM projection size (default 0)")
    g.add_argument(
        "--streaming",
        action="store_true",
        default=None,
        help="one time step per call, state passed back in (per-call time)",
    )
    r = parser.add_argument_group("run")
    r.add_argument(
        "--threads",
        default=None,
        metavar="N[,N...]",
        help="threads for every engine; a comma list runs each and reports the speed-up "
        "(default: min(2, available cores))",
    )
    r.add_argument(
        "--peers",
        default="torch,onnxruntime",
        metavar="LIST",
        help="comma list of peers among torch,onnxruntime, or 'none' (default: both)",
    )
    r.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="timed calls per engine (default: adaptive, to fill --budget)",
    )
    r.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time budget per engine and case for the adaptive repeat count "
        "(default 0.5 for the suite, 1.0 for a single case)",
    )
    r.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    r.add_argument("--no-peak", action="store_true", help="skip the SGEMM peak measurement")
    r.add_argument(
        "--peak-size",
        type=int,
        default=PEAK_SIZE,
        metavar="N",
        help=f"size of the square SGEMM that measures the peak (default {PEAK_SIZE})",
    )
    r.add_argument("--json", default=None, metavar="FILE", help="write the machine-readable report to FILE")
    r.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def _parse_threads(text: str | None) -> list[int]:
    if text is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            n = os.cpu_count() or 1
        return [min(2, n)]
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--threads must be a comma list of integers >= 1, got {text!r}")
    return sorted(set(values))


def _parse_peers(text: str) -> list[str]:
    text = text.strip().lower()
    if text in ("none", ""):
        return []
    peers = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise ValueError(f"--peers takes a comma list of {', '.join(PEERS)} or 'none', got {bad}")
    return list(dict.fromkeys(peers))


def cases_from_args(args: argparse.Namespace) -> list[Case]:
    """The single case of the command line (one per thread count), or the default suite."""
    threads = _parse_threads(args.threads)
    if all(getattr(args, k, None) is None for k in CASE_OPTIONS):
        suite, seen = [], set()
        for n in threads:  # one suite per thread count; a case already in the list is not run twice
            for c in default_suite(n):
                if c.label() not in seen:
                    seen.add(c.label())
                    suite.append(c)
        return suite

    def given(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    base = {
        "cell": given("cell", "lstm"),
        "hidden_size": given("hidden_size", 256),
        "input_size": given("input_size", 0),
        "batch": given("batch", 1),
        "seq_len": given("seq_len", 100),
        "layers": given("layers", 1),
        "bidirectional": bool(args.bidirectional),
        "proj_size": given("proj_size", 0),
        "mode": "streaming" if args.streaming else "sequence",
        "name": "cli",
    }
    if args.input_size is not None and args.input_size < 1:
        raise ValueError(f"--input-size must be >= 1, got {args.input_size}")
    return [Case(threads=n, **base) for n in threads]


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "command"}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``rnnfast bench``; exit status 1 if any engine disagreed or raised, 2 on bad usage."""
    try:
        peers = _parse_peers(args.peers)
        cases = cases_from_args(args)
        if args.repeats is not None and args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        if args.budget is not None and not args.budget > 0:
            raise ValueError(f"--budget must be > 0 seconds, got {args.budget}")
        if args.peak_size < 1:
            raise ValueError(f"--peak-size must be >= 1, got {args.peak_size}")
    except ValueError as e:
        sys.stderr.write(f"rnnfast bench: error: {e}\n")
        return 2
    suite = all(getattr(args, k, None) is None for k in CASE_OPTIONS)
    budget = args.budget if args.budget is not None else (0.5 if suite else 1.0)
    report = run_cases(
        cases,
        peers=peers,
        budget_s=budget,
        repeats=args.repeats,
        seed=args.seed,
        progress=not args.quiet,
        peak=not args.no_peak,
        peak_size=args.peak_size,
        options=_options(args),
    )
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0 if report["ok"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rnnfast bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
