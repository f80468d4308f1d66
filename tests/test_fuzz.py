"""Fuzzing (hypothesis): hostile files for every loader and hostile arrays for the array entry points.

Every input either gives a correct result or raises an rnnfast exception (a subclass of
rnnfast.RnnfastError and of the matching builtin). A segfault, an abort, a hang, a MemoryError from a
declared size, or any other exception type (KeyError, IndexError, struct.error, a bare ValueError...) is
a failure.

Loads run in a worker process (tests/fuzz_loader_worker.py) so that a crash inside a native library
(libhdf5, protobuf, torch's zip reader) is reported with the input that caused it instead of killing
pytest; each load has a time limit. The array entry points run in this process and are compared with
the float64 NumPy reference (rnnfast.reference).

Budget: the default numbers of examples (400-3000 per test) keep this file at about a minute on 2 cores
(CI). Run longer with
``RNNFAST_FUZZ_EXAMPLES=2000 python -m pytest -q tests/test_fuzz.py`` (examples per fuzz test).
Crashing inputs are kept in ``$RNNFAST_FUZZ_CRASH_DIR`` (default: the system temp dir, rnnfast-fuzz-crashes).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import rnnfast
from rnnfast import errors
from rnnfast import models as M

_EXAMPLES = os.environ.get("RNNFAST_FUZZ_EXAMPLES")
_CRASH_DIR = os.environ.get("RNNFAST_FUZZ_CRASH_DIR", os.path.join(tempfile.gettempdir(), "rnnfast-fuzz-crashes"))
LOAD_TIMEOUT = 30.0  # seconds per load: generous for a loaded 2-core machine (loads take < 1 s); a hang never ends


def fuzz_settings(default_examples: int):
    """The bounded test-suite budget on a fixed sequence of examples (derandomized: the suite gives the same
    verdict on every run, so a new finding cannot turn an unrelated commit red), or, with
    RNNFAST_FUZZ_EXAMPLES set, that many fresh random examples (exploration: run it, then pin what it finds
    in tests/test_fuzz_regressions.py)."""
    n = int(_EXAMPLES) if _EXAMPLES else default_examples
    return settings(
        max_examples=n,
        derandomize=not _EXAMPLES,
        deadline=None,  # hangs are caught by the worker's timeout; a shared machine makes deadlines flaky
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
        database=None if (os.environ.get("CI") or not _EXAMPLES) else settings.default.database,
        print_blob=True,
    )


# ====================================================================================================
# the loader worker
# ====================================================================================================
def _under_asan() -> bool:
    """True in the AddressSanitizer run of the suite (tools/sanitize.sh preloads the runtime)."""
    return "libasan" in os.environ.get("LD_PRELOAD", "")


class LoaderWorker:
    """One long-lived worker process; restarted after a crash or a hang."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="rnnfast-fuzz-")
        self.count = 0

    def _start(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ)
        root = os.path.dirname(here)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("OMP_NUM_THREADS", "1")
        if _under_asan():
            # The worker cannot cap its memory with RLIMIT_DATA under ASan (its shadow and allocator mappings
            # count, and it aborts at start: "Failed to mmap"); ASan's allocator enforces the same cap, and
            # returns NULL (MemoryError) instead of aborting, as malloc would.
            mb = int(os.environ.get("RNNFAST_FUZZ_MEM_LIMIT", str(6 * 1024**3))) // 2**20
            cap = f"allocator_may_return_null=1:max_allocation_size_mb={mb}"
            env["ASAN_OPTIONS"] = f"{env.get('ASAN_OPTIONS', '')}:{cap}"
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", os.path.join(here, "fuzz_loader_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
            env=env,
        )
        ready = self._readline(120.0)
        if ready is None or json.loads(ready).get("outcome") != "ready":
            raise RuntimeError(f"fuzz worker did not start: {self._stop()}")

    def _readline(self, timeout: float) -> str | None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return None
        finally:
            sel.close()
        line = self.proc.stdout.readline()
        return line or None

    def _stop(self) -> str:
        """Kill the worker; its stderr (faulthandler's traceback on a crash) for the report."""
        if self.proc is None:
            return ""
        self.proc.kill()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = ""
        rc = self.proc.returncode
        self.proc = None
        return f"exit status {rc}; stderr:\n{(err or '')[-3000:]}"

    def load(self, data: bytes, suffix: str, architecture=None) -> dict:
        if self.proc is None:
            self._start()
        self.count += 1
        path = os.path.join(self.dir, f"f{self.count % 4}{suffix}")
        with open(path, "wb") as f:
            f.write(data)
        try:
            self.proc.stdin.write(json.dumps({"path": path, "architecture": architecture}) + "\n")
            self.proc.stdin.flush()
            line = self._readline(LOAD_TIMEOUT)
        except (BrokenPipeError, ConnectionResetError):  # the worker is already dead
            line = None
        if line is None:
            hung = self.proc.poll() is None
            detail = self._stop()
            kept = _keep_crash(data, suffix)
            what = f"hung for more than {LOAD_TIMEOUT} s" if hung else "crashed"
            return {"outcome": "crash", "msg": f"the loader {what} on {kept} ({detail})"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._stop()
            self.proc = None


def _keep_crash(data: bytes, suffix: str) -> str:
    import hashlib

    os.makedirs(_CRASH_DIR, exist_ok=True)
    path = os.path.join(_CRASH_DIR, hashlib.sha1(data).hexdigest()[:16] + suffix)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture(scope="module")
def worker():
    w = LoaderWorker()
    yield w
    w.close()


def check_outcome(rep: dict, data: bytes, suffix: str) -> None:
    """The fuzz oracle: a valid model, or an rnnfast exception; nothing else."""
    try:  # outcome counts in --hypothesis-show-statistics (event() refuses to run outside a given test)
        event(f"outcome: {rep.get('note') or rep.get('type') or rep['outcome']}")
    except Exception:  # noqa: BLE001
        pass
    if rep["outcome"] == "ok":
        return
    if rep["outcome"] == "crash":
        pytest.fail(rep["msg"])
    if rep["rnnfast"] and rep["type"] != "OutOfMemoryError" and rep["type"] != "InternalError":
        return
    kept = _keep_crash(data, suffix)
    pytest.fail(f"{rep['type']} (not a clean rnnfast error) on {kept}: {rep['msg']}\n{rep.get('tb', '')}")


# ====================================================================================================
# mutations
# ====================================================================================================
_INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 255, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**53, 2**62,
                     2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**18, -(2**31), -(2**63)]


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    """1-4 of: bit flip, byte set, interesting u16/u32/u64 overwrite, truncation, insertion, deletion."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "int", "truncate", "insert", "delete", "dup"]))
        n = len(buf)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            buf[draw(st.integers(0, n - 1))] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x7B, 0x22]))
        elif op == "int" and n >= 8:
            i = draw(st.integers(0, n - 8))
            width, fmt = draw(st.sampled_from([(2, "<H"), (4, "<I"), (8, "<Q")]))
            v = draw(st.sampled_from(_INTERESTING_INTS)) % (1 << (8 * width))
            buf[i : i + width] = struct.pack(fmt, v)
        elif op == "truncate":
            del buf[draw(st.integers(0, n)) :]
        elif op == "insert":
            i = draw(st.integers(0, n))
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del buf[i : i + draw(st.integers(1, 16))]
        elif op == "dup" and n:
            i = draw(st.integers(0, n - 1))
            buf[i:i] = buf[i : i + draw(st.integers(1, 64))]
    return bytes(buf)


def _json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_paths(v, prefix + (i,))


_json_scalars = st.one_of(
    st.sampled_from(_INTERESTING_INTS),
    st.integers(-5, 70),
    st.sampled_from([0.5, -0.0, 1e308, float("nan"), float("inf"), True, False, None, "", "F32", "F16", "BF16",
                     "I64", "BOOL", "LSTM", "GRU", "RNN", "Linear", "Embedding", "Sequential", "tanh", "relu",
                     "sigmoid", "x" * 300]),
    st.text(max_size=8),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def json_mutation(draw, obj):
    """Replace, delete or duplicate one value somewhere in a JSON document."""
    obj = json.loads(json.dumps(obj))
    paths = [p for p in _json_paths(obj) if p]
    for _ in range(draw(st.integers(1, 3))):
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete"]))
        try:
            if op == "delete":
                if isinstance(parent, list):
                    parent.pop(key)
                else:
                    parent.pop(key)
            else:
                parent[key] = draw(_json_values)
        except (KeyError, IndexError, TypeError):
            pass
        paths = [p for p in _json_paths(obj) if p]
    return obj


def _rezip(raw: bytes, replace: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = replace.get(item.filename, None)
            zout.writestr(item, zin.read(item.filename) if data is None else data)
    return out.getvalue()


# ====================================================================================================
# seeds: one valid file per format
# ====================================================================================================
class Seeds(list):
    """Seed files; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed files>"


def _native_seed_models():
    return [
        M.Sequential(M.Embedding(10, 4, seed=0), rnnfast.LSTM(4, 3, seed=1), M.Linear(3, 2, seed=2)),
        rnnfast.GRU(3, 4, num_layers=2, bidirectional=True, seed=3),
        rnnfast.RNN(2, 3, nonlinearity="relu", batch_first=True, seed=4),
    ]


@pytest.fixture(scope="module")
def native_seeds():
    from rnnfast.loaders.native import dumps

    return Seeds(dumps(m) for m in _native_seed_models())


def _split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join_safetensors(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.fixture(scope="module")
def pt_seed():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=1, bidirectional=True)
    buf = io.BytesIO()
    torch.save(lstm.state_dict(), buf)
    return Seeds([buf.getvalue(), rnnfast.LSTM(3, 4, bidirectional=True).config()])


def _onnx_seed_model():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    I, H = 2, 3
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 4 * H, I)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.standard_normal((1, 8 * H)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((1, 3 * H, H)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.standard_normal((1, 3 * H, H)).astype(np.float32), "R2"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, name="lstm"),
        helper.make_node("Squeeze", ["Y", "one"], ["Ys"], name="sq"),
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("GRU", ["Ys", "W2", "R2"], ["Y2", "Y2_h"], hidden_size=H, linear_before_reset=1,
                         name="gru"),
        helper.make_node("Tanh", ["Y2_h"], ["out"], name="tanh"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 2, I])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    return onnx, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.fixture(scope="module")
def onnx_seed():
    onnx, model = _onnx_seed_model()
    return Seeds([model.SerializeToString()])


@pytest.fixture(scope="module")
def keras_seed(tmp_path_factory):
    keras = pytest.importorskip("keras")
    d = tmp_path_factory.mktemp("keras")
    m = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(10, 4),
            keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True)),
            keras.layers.LSTM(3),
            keras.layers.Dense(2),
        ]
    )
    m.save(d / "k.keras")
    raw = (d / "k.keras").read_bytes()
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        cfg = json.loads(z.read("config.json"))
        weights = z.read("model.weights.h5")
    return Seeds([raw, cfg, weights])


# ====================================================================================================
# loader fuzz tests
# ====================================================================================================
def test_seeds_load_and_run(worker, native_seeds, pt_seed, onnx_seed, keras_seed):
    """The oracle is sound: every unmutated seed loads and runs in the worker."""
    for raw in native_seeds:
        assert worker.load(raw, ".safetensors") == {"outcome": "ok", "note": "loaded and ran"}
    assert worker.load(pt_seed[0], ".pt", pt_seed[1]) == {"outcome": "ok", "note": "loaded and ran"}
    assert worker.load(onnx_seed[0], ".onnx") == {"outcome": "ok", "note": "loaded and ran"}
    assert worker.load(keras_seed[0], ".keras") == {"outcome": "ok", "note": "loaded and ran"}
    assert worker.load(keras_seed[2], ".weights.h5", keras_seed[1]) == {"outcome": "ok", "note": "loaded and ran"}


def test_oracle_reports_crashes_and_foreign_exceptions(worker):
    """The worker reports a crash (not just errors) and the oracle refuses non-rnnfast exceptions."""
    rep = worker.load(b"x", ".safetensors")
    assert rep["outcome"] == "error" and rep["rnnfast"], rep  # a 1-byte file: a clean error
    with pytest.raises(pytest.fail.Exception, match="KeyError"):
        check_outcome({"outcome": "error", "type": "KeyError", "rnnfast": False, "msg": "'x'"}, b"", ".x")
    with pytest.raises(pytest.fail.Exception, match="crashed"):
        check_outcome({"outcome": "crash", "msg": "the loader crashed on ..."}, b"", ".x")
    worker.proc.kill()  # a dead worker is detected and the next load restarts it
    worker.proc.wait()
    rep = worker.load(b"x", ".safetensors")
    assert rep["outcome"] == "crash" and "crashed" in rep["msg"], rep
    assert worker.load(b"x", ".safetensors")["outcome"] == "error"


@fuzz_settings(1200)
@given(data=st.data())
def test_fuzz_native_bytes(worker, native_seeds, data):
    seed = native_seeds[data.draw(st.integers(0, len(native_seeds) - 1))]
    raw = data.draw(byte_mutations(seed))
    check_outcome(worker.load(raw, ".safetensors"), raw, ".safetensors")


@fuzz_settings(1200)
@given(data=st.data())
def test_fuzz_native_header(worker, native_seeds, data):
    """Lying headers and architectures: shapes, dtypes, offsets, sizes, layer types and arguments."""
    seed = native_seeds[data.draw(st.integers(0, len(native_seeds) - 1))]
    header, body = _split_safetensors(seed)
    if data.draw(st.booleans()):  # the architecture JSON inside the metadata
        arch = json.loads(header["__metadata__"]["architecture"])
        header["__metadata__"]["architecture"] = json.dumps(data.draw(json_mutation(arch)))
    else:
        header = data.draw(json_mutation(header))
    if data.draw(st.booleans()):
        body = data.draw(byte_mutations(body)) if body else body
    raw = _join_safetensors(header, body)
    check_outcome(worker.load(raw, ".safetensors"), raw, ".safetensors")


@fuzz_settings(600)
@given(data=st.data(), raw=st.binary(max_size=512), suffix=st.sampled_from(
    [".safetensors", ".pt", ".onnx", ".keras", ".weights.h5", ".bin"]))
def test_fuzz_random_bytes_any_format(worker, data, raw, suffix):
    prefix = data.draw(st.sampled_from([b"", b"\x89HDF\r\n\x1a\n", b"PK\x03\x04", b"\x08\x07\x12", b"{\"",
                                        struct.pack("<Q", len(raw))]))
    raw = prefix + raw
    arch = rnnfast.LSTM(3, 4).config() if suffix in (".pt", ".safetensors") else None
    check_outcome(worker.load(raw, suffix, arch), raw, suffix)


@st.composite
def pt_state_dicts(draw, arch_layer):
    """A torch.save'd state_dict with lying tensors: broadcast views, wrong shapes/dtypes, non-tensors."""
    import torch

    sd = {k: torch.from_numpy(v) for k, v in arch_layer.state_dict().items()}
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(sd) + ["extra"]))
        op = draw(st.sampled_from(["expand", "shape", "dtype", "nontensor", "drop", "nan", "view"]))
        if isinstance(sd.get(key), torch.Tensor) and sd[key].numel() > 10**5 and op in ("dtype", "nan", "view"):
            continue  # (an expanded view: materialising it here would allocate what the file only declares)
        if op == "expand":
            dims = tuple(draw(st.lists(st.sampled_from([1, 3, 16, 2**10, 2**20]), min_size=1, max_size=3)))
            sd[key] = torch.zeros(1).expand(*dims)
        elif op == "shape":
            sd[key] = torch.zeros(tuple(draw(st.lists(st.integers(0, 20), max_size=3))))
        elif op == "dtype":
            dt = draw(st.sampled_from([torch.int64, torch.bool, torch.complex64, torch.bfloat16, torch.float16,
                                       torch.uint8, torch.float64]))
            base = sd.get(key)
            sd[key] = (base if isinstance(base, torch.Tensor) else torch.zeros(2)).to(dt)
        elif op == "nontensor":
            sd[key] = draw(st.sampled_from([1, "x", [1.0, 2.0], None, {"a": torch.zeros(1)}]))
        elif op == "drop":
            sd.pop(key, None)
        elif op == "nan" and isinstance(sd.get(key), torch.Tensor) and sd[key].dtype.is_floating_point:
            sd[key] = torch.full(sd[key].shape, draw(st.sampled_from([float("nan"), float("inf"), 1e38])))
        elif op == "view" and isinstance(sd.get(key), torch.Tensor) and sd[key].numel() < 10**5:
            big = torch.zeros(sd[key].numel() * 2 + 1)
            sd[key] = big[1 : 1 + sd[key].numel()].view(sd[key].shape)  # a view into a larger storage
    buf = io.BytesIO()
    torch.save(draw(st.sampled_from([sd, {"state_dict": sd}, {"model": sd, "epoch": 3}, [sd]])), buf)
    return buf.getvalue()


@fuzz_settings(400)
@given(data=st.data())
def test_fuzz_pt_tensors(worker, pt_seed, data):
    """.pt state_dicts whose tensors lie (stride-0 views declaring terabytes, wrong shapes and dtypes)."""
    arch = pt_seed[1]
    raw = data.draw(pt_state_dicts(rnnfast.LSTM(3, 4, bidirectional=True, seed=0)))
    check_outcome(worker.load(raw, ".pt", arch), raw, ".pt")


@fuzz_settings(600)
@given(data=st.data())
def test_fuzz_pt(worker, pt_seed, data):
    """.pt files: the zip container, and the pickle inside it (read with weights_only=True)."""
    raw, arch = pt_seed
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        names = z.namelist()
    target = data.draw(st.sampled_from(["<zip>"] + names))
    if target == "<zip>":
        out = data.draw(byte_mutations(raw))
    else:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            member = z.read(target)
        out = _rezip(raw, {target: data.draw(byte_mutations(member)) if member else b"\x00"})
    check_outcome(worker.load(out, ".pt", arch), out, ".pt")


@st.composite
def onnx_mutation(draw, raw: bytes) -> bytes:
    """Structured ONNX mutations: initializer dims/dtype/data, attributes, op types, wiring."""
    onnx = pytest.importorskip("onnx")
    model = onnx.ModelProto()
    model.ParseFromString(raw)
    g = model.graph
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["dims", "dtype", "rawdata", "attr", "optype", "input", "opset", "drop_init",
                                   "value_info"]))
        if op == "dims":
            t = draw(st.sampled_from(list(g.initializer)))
            dims = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 9, 12, 24, -1, 2**31, 2**40, 2**62]), max_size=5))
            t.dims[:] = dims
        elif op == "dtype":
            t = draw(st.sampled_from(list(g.initializer)))
            t.data_type = draw(st.integers(0, 25))
        elif op == "rawdata":
            t = draw(st.sampled_from(list(g.initializer)))
            t.raw_data = draw(byte_mutations(t.raw_data)) if t.raw_data else draw(st.binary(max_size=64))
        elif op == "attr":
            nodes = [n for n in g.node if n.attribute]
            a = draw(st.sampled_from([a for n in nodes for a in n.attribute]))
            kind = draw(st.sampled_from(["i", "f", "s", "ints", "strings"]))
            a.ClearField("i"), a.ClearField("f"), a.ClearField("s")
            del a.ints[:], a.floats[:], a.strings[:]
            if kind == "i":
                a.type = onnx.AttributeProto.INT
                a.i = draw(st.sampled_from([0, 1, 2, -1, 3, 2**31, 2**62, -(2**63)]))
            elif kind == "f":
                a.type = onnx.AttributeProto.FLOAT
                a.f = draw(st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e30]))
            elif kind == "s":
                a.type = onnx.AttributeProto.STRING
                a.s = draw(st.sampled_from([b"reverse", b"bidirectional", b"forward", b"", b"\xff\xfe", b"Relu"]))
            elif kind == "ints":
                a.type = onnx.AttributeProto.INTS
                a.ints[:] = draw(st.lists(st.integers(-3, 5), max_size=3))
            else:
                a.type = onnx.AttributeProto.STRINGS
                a.strings[:] = draw(st.lists(st.sampled_from([b"Tanh", b"Sigmoid", b"Relu", b"Elu", b"nope"]),
                                             max_size=4))
            if draw(st.booleans()):
                a.name = draw(st.sampled_from(["hidden_size", "direction", "activations", "clip", "layout",
                                               "input_forget", "linear_before_reset", "activation_alpha", "axes"]))
        elif op == "optype":
            n = draw(st.sampled_from(list(g.node)))
            n.op_type = draw(st.sampled_from(["LSTM", "GRU", "RNN", "Squeeze", "Unsqueeze", "Tanh", "Gemm",
                                              "Reshape", "Gather", "Softmax", "Slice", "Concat", "MatMul", "Nope"]))
        elif op == "input":
            n = draw(st.sampled_from(list(g.node)))
            names = ["", "X", "W", "R", "B", "W2", "R2", "axes", "one", "Y", "Ys", "Y_h", "Y2", "Y2_h", "zzz"]
            ins = draw(st.lists(st.sampled_from(names), max_size=9))
            del n.input[:]
            n.input.extend(ins)
        elif op == "opset":
            model.opset_import[0].version = draw(st.sampled_from([1, 7, 13, 14, 18, 22, 23, 99, -1]))
        elif op == "drop_init" and len(g.initializer):
            del g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        elif op == "value_info":
            vi = g.input[0].type.tensor_type
            vi.elem_type = draw(st.sampled_from([1, 6, 7, 10, 11, 9, 0]))
            dims = vi.shape.dim
            if len(dims):
                d = draw(st.sampled_from(list(dims)))
                d.dim_value = draw(st.sampled_from([0, 1, 2, 2**40]))
    return model.SerializeToString()


@fuzz_settings(1000)
@given(data=st.data())
def test_fuzz_onnx(worker, onnx_seed, data):
    if data.draw(st.booleans()):
        raw = data.draw(onnx_mutation(onnx_seed[0]))
    else:
        raw = data.draw(byte_mutations(onnx_seed[0]))
    check_outcome(worker.load(raw, ".onnx"), raw, ".onnx")


@st.composite
def h5_mutation(draw, weights: bytes) -> bytes:
    """Rewrite one dataset or attribute of a Keras weights file with h5py (the file stays valid HDF5)."""
    h5py = pytest.importorskip("h5py")
    buf = io.BytesIO(weights)
    with h5py.File(buf, "r+") as f:
        paths: list[str] = []
        f.visititems(lambda name, obj: paths.append(name) if isinstance(obj, h5py.Dataset) else None)
        groups: list[str] = []
        f.visititems(lambda name, obj: groups.append(name) if isinstance(obj, h5py.Group) else None)
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(["shape", "dtype", "huge", "delete", "attr", "group"]))
            if op in ("shape", "dtype", "huge", "delete") and paths:
                p = draw(st.sampled_from(paths))
                if p not in f:
                    continue
                old = f[p]
                shape, dt = old.shape, old.dtype
                if op == "dtype" and np.prod(shape, dtype=float) > 1e6:
                    continue  # (made huge by an earlier step: np.zeros would allocate it here)
                del f[p]
                if op == "shape":
                    f.create_dataset(p, data=np.zeros(tuple(draw(st.lists(st.integers(0, 9), max_size=3))), dt))
                elif op == "dtype":
                    kind = draw(st.sampled_from(["i4", "u1", "f2", "f8", "c8", "S3", "?"]))
                    f.create_dataset(p, data=np.zeros(shape, kind))
                elif op == "huge":  # declared, never written: nothing on disk
                    big = tuple(draw(st.sampled_from([2**20, 2**31, 10**12])) for _ in shape or (1,))
                    f.create_dataset(p, shape=big, dtype="f4", chunks=tuple(1 for _ in big))
            elif op == "attr" and groups:
                gname = draw(st.sampled_from(groups))
                if gname not in f:
                    continue  # (deleted by an earlier step)
                g = f[gname]
                g.attrs["name"] = draw(st.sampled_from([np.int64(3), b"\xff\xfe", "dense", "lstm", "", "x" * 10000,
                                                        np.zeros(3)]))
            elif op == "group" and groups:
                name = draw(st.sampled_from(groups))
                if name in f and draw(st.booleans()):
                    del f[name]
                else:
                    f.require_group(name + "/vars")
    return buf.getvalue()


@fuzz_settings(600)
@given(data=st.data())
def test_fuzz_keras(worker, keras_seed, data):
    """.keras archives: the container, config.json (structured) and model.weights.h5 (bytes)."""
    raw, cfg, weights = keras_seed
    target = data.draw(st.sampled_from(["zip", "config", "weights", "weights_file", "datasets"]))
    if target == "zip":
        out, suffix, arch = data.draw(byte_mutations(raw)), ".keras", None
    elif target == "config":
        out = _rezip(raw, {"config.json": json.dumps(data.draw(json_mutation(cfg))).encode()})
        suffix, arch = ".keras", None
    elif target == "weights":
        out = _rezip(raw, {"model.weights.h5": data.draw(byte_mutations(weights))})
        suffix, arch = ".keras", None
    elif target == "datasets":  # well-formed HDF5 that lies: shapes, dtypes, huge unwritten datasets, names
        out = _rezip(raw, {"model.weights.h5": data.draw(h5_mutation(weights))})
        suffix, arch = ".keras", None
    else:  # a bare .weights.h5 plus a (possibly mutated) architecture
        out, suffix = data.draw(byte_mutations(weights)), ".weights.h5"
        arch = data.draw(json_mutation(cfg)) if data.draw(st.booleans()) else cfg
    check_outcome(worker.load(out, suffix, arch), out, suffix)


# ====================================================================================================
# array entry points
# ====================================================================================================
from conftest import assert_close  # noqa: E402

from rnnfast import reference as R  # noqa: E402
from rnnfast import reference_attention as RA  # noqa: E402

_REAL = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint64", "bool"]
_BAD = ["complex64", "object", "str", "ragged"]


def _values(draw, shape, kind: str, nan: bool) -> np.ndarray:
    """Moderate random values (|v| <= 8) in the given dtype; sometimes a NaN (floats)."""
    n = int(np.prod(shape))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    v = rng.uniform(-8, 8, n)
    if kind.startswith("float"):
        if nan and n:
            v[rng.integers(0, n)] = np.nan
        return v.astype(kind).reshape(shape)
    if kind.startswith("uint"):
        return np.abs(np.round(v)).astype(kind).reshape(shape)
    if kind == "bool":
        return (v > 0).reshape(shape)
    return np.round(v).astype(kind).reshape(shape)


def _layout(draw, a: np.ndarray) -> np.ndarray:
    """The same values, C-contiguous, Fortran-ordered or a strided view."""
    how = draw(st.sampled_from(["c", "f", "strided", "list"]))
    if how == "f":
        return np.asfortranarray(a)
    if how == "strided" and a.ndim:
        big = np.repeat(a, 2, axis=-1)
        view = big[..., ::2]
        assert np.array_equal(view, a, equal_nan=True)
        return view
    if how == "list" and a.dtype.kind == "f" and a.ndim and all(a.shape):  # (nested [] would lose the shape)
        return a.tolist()
    return np.ascontiguousarray(a)


def _bad_array(draw, shape):
    kind = draw(st.sampled_from(_BAD))
    if kind == "complex64":
        return np.zeros(shape, np.complex64)
    if kind == "object":
        a = np.empty(shape, object)
        a[...] = draw(st.sampled_from([None, "a", object()]))
        return a
    if kind == "str":
        return np.full(shape, "x")
    return [[1.0, 2.0], [3.0]]


def _expect_clean_error(fn, *exc_types):
    """fn() must raise an rnnfast error that is also one of exc_types (builtins)."""
    with pytest.raises(errors.RnnfastError) as ei:
        fn()
    assert isinstance(ei.value, exc_types), f"{type(ei.value).__name__} is not a {exc_types}: {ei.value}"
    assert str(ei.value), "an error must say what is wrong"
    return ei.value


@st.composite
def recurrent_case(draw):
    mode = draw(st.sampled_from(["RNN_TANH", "RNN_RELU", "LSTM", "GRU", "GRU_RB"]))
    L = draw(st.integers(1, 2))
    bidir = draw(st.booleans())
    bf = draw(st.booleans())
    I, H = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    proj = draw(st.integers(0, H - 1)) if mode == "LSTM" and H > 1 and draw(st.booleans()) else 0
    T, B = draw(st.integers(0, 5)), draw(st.integers(0, 4))
    return dict(mode=mode, L=L, bidir=bidir, bf=bf, I=I, H=H, proj=proj, T=T, B=B)


def _make_layer(c, seed=0):
    kw = dict(num_layers=c["L"], bidirectional=c["bidir"], batch_first=c["bf"], seed=seed)
    if c["mode"].startswith("RNN"):
        return rnnfast.RNN(c["I"], c["H"], nonlinearity=c["mode"][4:].lower(), **kw)
    if c["mode"] == "LSTM":
        return rnnfast.LSTM(c["I"], c["H"], proj_size=c["proj"], **kw)
    return rnnfast.GRU(c["I"], c["H"], reset_after=c["mode"] == "GRU", **kw)


@fuzz_settings(3000)
@given(c=recurrent_case(), data=st.data())
def test_fuzz_recurrent_layers(c, data):
    """RNN/LSTM/GRU __call__: random shapes (zeros included), dtypes, layouts, states and lengths.

    Valid inputs must match the float64 reference; invalid ones raise ShapeError/DTypeError."""
    layer = _make_layer(c, seed=data.draw(st.integers(0, 3)))
    T, B, I = c["T"], c["B"], c["I"]
    LD, Hout, H = c["L"] * (2 if c["bidir"] else 1), c["proj"] or c["H"], c["H"]
    valid = True
    unbatched = data.draw(st.integers(0, 5)) == 0
    shape = ((B, T, I) if c["bf"] else (T, B, I)) if not unbatched else (T, I)
    fault = data.draw(st.sampled_from(["none"] * 6 + ["x_shape", "x_dtype", "h_shape", "h_dtype", "lengths"]))
    kind = data.draw(st.sampled_from(_REAL))
    x32 = _values(data.draw, shape, kind, nan=data.draw(st.integers(0, 4)) == 0)
    x = _layout(data.draw, x32)
    if fault == "x_shape":
        bad_shape = data.draw(st.sampled_from([shape[:-1] + (I + 1,), (2,) + shape if len(shape) == 3 else (3,),
                                               (), (1, 1, 1, I)]))
        x = np.zeros(bad_shape, np.float32)
        valid = False
    elif fault == "x_dtype":
        x = _bad_array(data.draw, shape)
        valid = False
    # initial state
    hx = None
    h0 = c0 = None
    if data.draw(st.booleans()) or fault in ("h_shape", "h_dtype"):
        hshape, cshape = ((LD, B, Hout), (LD, B, H)) if not unbatched else ((LD, Hout), (LD, H))
        h0 = _values(data.draw, hshape, data.draw(st.sampled_from(["float32", "float64", "int32"])), False)
        c0 = _values(data.draw, cshape, "float32", False)
        if fault == "h_shape":
            which = data.draw(st.sampled_from(["h", "c"] if c["mode"] == "LSTM" else ["h"]))
            wrong = data.draw(st.sampled_from(["plus", "drop", "swap"]))
            tgt = h0 if which == "h" else c0
            if wrong == "plus":
                tgt = np.zeros(tgt.shape[:-1] + (tgt.shape[-1] + 1,), np.float32)
            elif wrong == "drop":
                tgt = tgt[0]
            else:
                tgt = np.zeros(tgt.shape[::-1], np.float32) if tgt.shape != tgt.shape[::-1] else tgt[..., None]
            if which == "h":
                h0 = tgt
            else:
                c0 = tgt
            valid = False
        elif fault == "h_dtype":
            h0 = _bad_array(data.draw, h0.shape)
            valid = False
        hx = (h0, c0) if c["mode"] == "LSTM" else h0
        if c["mode"] == "LSTM" and data.draw(st.integers(0, 9)) == 0:
            hx, valid = h0, False  # LSTM needs a tuple
    # lengths
    lengths = None
    if not unbatched and (data.draw(st.booleans()) or fault == "lengths"):
        lens = np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, T + 1, B)
        lengths = lens.astype(data.draw(st.sampled_from(["int64", "int32", "uint16", "float64"])))
        if fault == "lengths":
            valid = False
            bad = data.draw(st.sampled_from(["neg", "big", "huge", "shape", "frac", "nan", "bool", "str", "obj",
                                             "scalar", "inf"]))
            if bad in ("neg", "big", "huge", "frac", "nan", "inf") and B == 0:
                bad = "shape"
            lengths = lens.astype(np.float64)
            if bad == "neg":
                lengths[0] = -1
            elif bad == "big":
                lengths[0] = T + 1
            elif bad == "huge":
                lengths[0] = data.draw(st.sampled_from([2**31, 2**40, 1e20, -(2**63)]))
            elif bad == "shape":
                lengths = np.zeros((B + 1,), np.int64)
            elif bad == "frac":
                lengths[0] = 0.5
            elif bad == "nan":
                lengths[0] = np.nan
            elif bad == "inf":
                lengths[0] = np.inf
            elif bad == "bool":
                lengths = np.ones(B, bool)
                valid = None  # bools are not integers: either refused or read as 0/1
            elif bad == "str":
                lengths = np.full(B, "1")
            elif bad == "obj":
                lengths = np.array([None] * B, dtype=object)
            else:
                lengths = np.int64(T)
    elif unbatched and fault == "lengths":
        lengths, valid = [T], False
    if fault == "none" and kind == "bool":
        valid = None

    def call():
        return layer(x, hx, lengths=lengths)

    if valid is False:
        exc = _expect_clean_error(call, ValueError, TypeError)
        assert isinstance(exc, (errors.ShapeError, errors.DTypeError)), type(exc)
        return
    if valid is None:  # either refused cleanly or computed correctly
        try:
            out, state = call()
        except errors.RnnfastError as exc:
            assert isinstance(exc, (errors.ShapeError, errors.DTypeError)), type(exc)
            return
    else:
        out, state = call()
    h_n, c_n = state if c["mode"] == "LSTM" else (state, None)
    # the reference, on the float32 values the layer computes with
    xr = np.asarray(x32, np.float32).astype(np.float64)
    if unbatched:
        xr = xr[None] if c["bf"] else xr[:, None]
    ref_mode = "GRU" if c["mode"].startswith("GRU") else c["mode"]
    sq = (lambda a: a[:, 0]) if unbatched else (lambda a: a)
    h0r = None if h0 is None else np.asarray(h0, np.float32).astype(np.float64).reshape(LD, -1, Hout)
    c0r = None if c0 is None or c["mode"] != "LSTM" else np.asarray(c0, np.float32).reshape(LD, -1, H)
    ref_len = None if lengths is None else np.asarray(lengths).astype(np.int64)
    with np.errstate(all="ignore"):
        ro, rh, rc = R.recurrent(
            ref_mode, xr, layer.state_dict(), num_layers=c["L"], bidirectional=c["bidir"], h0=h0r, c0=c0r,
            lengths=ref_len, reset_after=c["mode"] != "GRU_RB", proj_size=c["proj"], batch_first=c["bf"],
        )
    ro = (ro[0] if c["bf"] else ro[:, 0]) if unbatched else ro
    assert out.dtype == np.float32 and h_n.dtype == np.float32
    assert_close(out, ro, what="out")
    assert_close(h_n, sq(rh), what="h_n")
    if c_n is not None:
        assert_close(c_n, sq(rc), what="c_n")
    if lengths is None and not c["bidir"] and T >= 1:  # streaming: two chunks carrying the state = one call
        cut = data.draw(st.integers(0, T))
        xs = np.asarray(x32, np.float32)
        if unbatched:
            parts = (xs[:cut], xs[cut:])
        else:
            parts = (xs[:, :cut], xs[:, cut:]) if c["bf"] else (xs[:cut], xs[cut:])
        o1, s1 = layer(parts[0], hx)
        o2, s2 = layer(parts[1], s1)
        taxis = 1 if (c["bf"] and not unbatched) else 0
        assert_close(np.concatenate([o1, o2], axis=taxis), out, what="streamed out")
        assert_close(s2[0] if c["mode"] == "LSTM" else s2, h_n, what="streamed h_n")


def _real_or_bad(data, shape, nan_ok=True):
    """(array to pass, float64 values it stands for or None when it must be refused)."""
    if data.draw(st.integers(0, 11)) == 0:
        return _bad_array(data.draw, shape), None
    kind = data.draw(st.sampled_from(["float16", "float32", "float64", "int32", "bool"]))
    a = _values(data.draw, shape, kind, nan=nan_ok and data.draw(st.integers(0, 5)) == 0)
    return _layout(data.draw, a), np.asarray(a).astype(np.float32).astype(np.float64)


_ATT_KINDS = ["dot", "scaled_dot", "general", "additive"]


@fuzz_settings(1600)
@given(data=st.data(), kind=st.sampled_from(_ATT_KINDS), B=st.integers(0, 3), S=st.integers(0, 4),
       Tq=st.sampled_from([None, 0, 1, 3]), Dq=st.integers(1, 4), Dk=st.integers(1, 4), Dv=st.integers(1, 3))
def test_fuzz_single_head_attention(data, kind, B, S, Tq, Dq, Dk, Dv):
    """Dot/ScaledDot/General/Additive attention: shapes with zeros, dtypes, lengths, masks vs the reference."""
    from rnnfast.attention import AdditiveAttention, DotAttention, GeneralAttention, ScaledDotAttention

    if kind in ("dot", "scaled_dot"):
        Dk = Dq
        layer = (DotAttention if kind == "dot" else ScaledDotAttention)()
        params = {}
    elif kind == "general":
        layer = GeneralAttention(Dq, Dk, bias=data.draw(st.booleans()), seed=1)
        params = layer.state_dict()
    else:
        layer = AdditiveAttention(Dq, Dk, data.draw(st.integers(1, 4)), bias=data.draw(st.booleans()), seed=2)
        params = layer.state_dict()
    valid = True
    qshape = (B, Dq) if Tq is None else (B, Tq, Dq)
    q, qr = _real_or_bad(data, qshape)
    k, kr = _real_or_bad(data, (B, S, Dk))
    use_v = data.draw(st.booleans())
    v, vr = _real_or_bad(data, (B, S, Dv)) if use_v else (None, kr)
    valid = qr is not None and kr is not None and vr is not None
    fault = data.draw(st.sampled_from(["none"] * 5 + ["q_dim", "k_batch", "lengths", "mask", "v_len"]))
    if fault == "q_dim":
        q, valid = np.zeros(qshape[:-1] + (Dq + 1,), np.float32), False
    elif fault == "k_batch":
        k, valid = np.zeros((B + 1, S, Dk), np.float32), False
    elif fault == "v_len" and use_v:
        v, valid = np.zeros((B, S + 1, Dv), np.float32), False
    lengths = mask = None
    if data.draw(st.booleans()) or fault == "lengths":
        lengths = np.random.default_rng(data.draw(st.integers(0, 9))).integers(0, S + 1, B)
        if fault == "lengths":
            valid = False
            lengths = data.draw(st.sampled_from([
                np.append(lengths, 1), np.full(B, S + 1), np.full(B, -1), np.full(B, 0.5), np.full(B, np.nan),
                np.full(B, "a"), np.array([None] * B, object), np.full(B, 1 + 1j)]))
            if lengths.size == 0 or (lengths.dtype.kind in "f" and B == 0):
                valid = None
    if data.draw(st.booleans()) or fault == "mask":
        mask = np.random.default_rng(data.draw(st.integers(0, 9))).random((B, S)) < 0.6
        if fault == "mask":
            mask, valid = data.draw(st.sampled_from([np.ones((B, S + 1), bool), np.full((B, S), "x"),
                                                     np.ones((S,), bool)])), False
            if mask.shape == (S,) and B == 1:
                valid = None  # (S,) vs (1, S): a refusal or a broadcast are both fine

    def call():
        return layer(q, k, v, lengths=lengths, mask=mask)

    if valid is False:
        _expect_clean_error(call, ValueError, TypeError)
        return
    try:
        ctx, w = call()
    except errors.RnnfastError as exc:
        assert valid is None, f"refused a valid input: {type(exc).__name__}: {exc}"
        return
    if valid is None:
        return
    rk = {"dot": "dot", "scaled_dot": "scaled_dot", "general": "general", "additive": "additive"}[kind]
    # a masked key contributes nothing, not even a NaN of its value (the reference would compute 0 * NaN)
    allowed = RA.allowed_keys(B, S, lengths, mask)[:, 0, :, None]
    with np.errstate(all="ignore"):
        rc, rw = RA.attention(rk, qr, kr, np.where(allowed, vr, 0.0), params, lengths=lengths, mask=mask)
    assert_close(w, rw, what="weights")
    assert_close(ctx, rc, what="context")


@fuzz_settings(1000)
@given(data=st.data(), E_heads=st.sampled_from([(2, 1), (4, 2), (6, 3), (3, 3)]), B=st.integers(0, 3),
       L=st.integers(0, 3), S=st.integers(0, 4), bf=st.booleans(), unbatched=st.booleans())
def test_fuzz_multihead_attention(data, E_heads, B, L, S, bf, unbatched):
    E, H = E_heads
    kdim = data.draw(st.sampled_from([None, 2, 5]))
    layer = rnnfast.MultiheadAttention(E, H, bias=data.draw(st.booleans()), kdim=kdim, vdim=kdim,
                                       batch_first=bf, seed=3)
    kd = kdim or E

    def shape(n, d):
        if unbatched:
            return (n, d)
        return (B, n, d) if bf else (n, B, d)

    q, qr = _real_or_bad(data, shape(L, E))
    k, kr = _real_or_bad(data, shape(S, kd))
    v, vr = _real_or_bad(data, shape(S, kd))
    valid = qr is not None and kr is not None and vr is not None
    Bx = 1 if unbatched else B
    kpm = attn = None
    if data.draw(st.booleans()):
        kpm = np.random.default_rng(data.draw(st.integers(0, 9))).random((Bx, S)) < 0.3
        if unbatched:
            kpm = kpm[0]
        if data.draw(st.integers(0, 4)) == 0:
            kpm, valid = np.zeros((Bx + 1, S + 1), bool), False
    if data.draw(st.booleans()):
        attn = np.random.default_rng(data.draw(st.integers(0, 9))).random((L, S)) < 0.3
        if data.draw(st.booleans()):  # additive float mask (-1e9 would erase float32 score differences)
            attn = np.where(attn, data.draw(st.sampled_from([-np.inf, -1.5])), 0.25).astype(np.float32)
        if data.draw(st.integers(0, 4)) == 0:
            attn, valid = np.zeros((L + 1, S), bool), False
    causal = data.draw(st.booleans()) and attn is None and L == S
    need = data.draw(st.booleans())
    avg = data.draw(st.booleans())

    def call():
        return layer(q, k, v, key_padding_mask=kpm, need_weights=need, attn_mask=attn,
                     average_attn_weights=avg, is_causal=causal)

    if not valid:
        _expect_clean_error(call, ValueError, TypeError)
        return
    y, w = call()
    with np.errstate(all="ignore"):
        ry, rw = RA.multihead_attention(qr, kr, vr, layer.state_dict(), H, batch_first=bf, key_padding_mask=kpm,
                                        attn_mask=attn, need_weights=need, average_attn_weights=avg,
                                        is_causal=causal)
    assert_close(y, ry, what="out")
    if need:
        assert_close(w, rw, what="weights")
    else:
        assert w is None


@fuzz_settings(1000)
@given(data=st.data(), B=st.integers(0, 2), L=st.integers(0, 3), S=st.integers(0, 3), P=st.integers(0, 2),
       heads=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (3, 2), (2, 0), (0, 1)]), Dk=st.integers(1, 3),
       Dv=st.integers(1, 3), three_d=st.booleans())
def test_fuzz_onnx_attention(data, B, L, S, P, heads, Dk, Dv, three_d):
    """rnnfast.attention.onnx_attention: head counts (including 0 and non-divisible), past, masks, causal."""
    from rnnfast.attention import onnx_attention

    Hq, Hkv = heads
    valid = Hkv > 0 and Hq > 0 and Hq % Hkv == 0
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    Q = rng.standard_normal((B, max(Hq, 1), L, Dk)).astype(np.float32)
    K = rng.standard_normal((B, max(Hkv, 1), S, Dk)).astype(np.float32)
    V = rng.standard_normal((B, max(Hkv, 1), S, Dv)).astype(np.float32)
    if Hq == 0:
        Q = Q[:, :0]
    if Hkv == 0:
        K, V = K[:, :0], V[:, :0]
    past_k = past_v = None
    if P:
        past_k = rng.standard_normal((B, K.shape[1], P, Dk)).astype(np.float32)
        past_v = rng.standard_normal((B, K.shape[1], P, Dv)).astype(np.float32)
    kw = {}
    args = (Q, K, V)
    if three_d:
        args = tuple(a.transpose(0, 2, 1, 3).reshape(B, a.shape[2], a.shape[1] * a.shape[3]) for a in (Q, K, V))
        kw = dict(q_num_heads=Hq, kv_num_heads=Hkv)
    mask = None
    if data.draw(st.booleans()):
        mask = rng.random((L, S + P)) < 0.7
        if data.draw(st.booleans()):
            mask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    causal = data.draw(st.booleans())
    scale = data.draw(st.sampled_from([None, 0.5]))
    softcap = data.draw(st.sampled_from([0.0, 2.0]))

    def call():
        return onnx_attention(*args, attn_mask=mask, past_key=past_k, past_value=past_v, is_causal=causal,
                              scale=scale, softcap=softcap, need_qk_output=True, qk_matmul_output_mode=3, **kw)

    if not valid:
        _expect_clean_error(call, ValueError, TypeError)
        return
    y, pk, pv, qk = call()
    with np.errstate(all="ignore"):
        ry, rk, rv, rw = RA.onnx_attention(*args, attn_mask=mask, past_key=past_k, past_value=past_v,
                                           is_causal=causal, scale=scale, softcap=softcap, **kw)
    assert_close(y, ry, what="Y")
    assert_close(pk, rk, what="present_key")
    assert_close(qk, rw, what="probs")


def _seq2seq(wiring: str, src_tokens: bool):
    from rnnfast.seq2seq import Seq2Seq

    rng = np.random.default_rng(5)
    V, E, H = 7, 3, 4
    kw, attn, dec_in = {}, None, E
    if wiring == "bahdanau":
        attn, dec_in = rnnfast.AdditiveAttention(H, H, 3, seed=0), E + H
    elif wiring == "luong":
        attn = rnnfast.DotAttention()
        kw = dict(attention_type="luong", combine_weight=rng.standard_normal((H, 2 * H)).astype(np.float32))
    return Seq2Seq(
        rnnfast.GRU(E, H, batch_first=True, seed=0),
        rnnfast.GRU(dec_in, H, seed=1),
        rng.standard_normal((V, E)).astype(np.float32),
        rng.standard_normal((V, H)).astype(np.float32),
        rng.standard_normal(V).astype(np.float32),
        attention=attn,
        src_embedding=rng.standard_normal((V, E)).astype(np.float32) if src_tokens else None,
        **kw,
    )


@fuzz_settings(800)
@given(data=st.data(), wiring=st.sampled_from(["none", "bahdanau", "luong"]), src_tokens=st.booleans(),
       B=st.integers(0, 3), S=st.integers(0, 4))
def test_fuzz_seq2seq_decoding(data, wiring, src_tokens, B, S):
    """Greedy (C loop vs Python loop) and beam search: hostile sources, lengths, tokens and max_len."""
    model = _seq2seq(wiring, src_tokens)
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    src = rng.integers(0, 7, (B, S)) if src_tokens else rng.standard_normal((B, S, 3)).astype(np.float32)
    lengths = None if data.draw(st.booleans()) else rng.integers(0, S + 1, B)
    kw = dict(max_len=data.draw(st.integers(0, 4)), start_token=data.draw(st.integers(0, 6)),
              end_token=data.draw(st.sampled_from([None, 0, 3])))
    valid = True
    fault = data.draw(st.sampled_from(["none"] * 5 + ["src", "lengths", "max_len", "start", "end"]))
    if fault == "src":
        how = data.draw(st.sampled_from(["rank", "str", "complex", "size"]))
        valid = False
        if how == "rank":
            src = src[..., None]
        elif how == "str":
            src = np.full(src.shape, "a")
        elif how == "complex":
            src = src.astype(np.complex64)
        elif src_tokens:
            src, valid = src + 7, src.size == 0  # ids out of range
        else:
            src = np.zeros((B, S, 5), np.float32)
    elif fault == "lengths":
        how = data.draw(st.sampled_from(["shape", "big", "neg", "str"]))
        lengths = {"shape": np.full(B + 1, 0), "big": np.full(B, S + 1), "neg": np.full(B, -1),
                   "str": np.full(B, "a")}[how]
        valid = False if how in ("shape", "str") else B == 0
    elif fault == "max_len":
        kw["max_len"], valid = data.draw(st.sampled_from([-1, "x", None, 2.5, 10**15, 2**31])), False
    elif fault == "start":
        kw["start_token"] = data.draw(st.sampled_from([-1, 7, 10**30, -1e30, "a", None, np.zeros(B + 2, int)]))
        valid = False if isinstance(kw["start_token"], (str, type(None), np.ndarray)) or B else None
    elif fault == "end":
        kw["end_token"], valid = data.draw(st.sampled_from([-1, 7, "a", 1.5, 10**30])), False

    def c():
        return model.greedy(src, lengths, **kw)

    if valid is False:
        _expect_clean_error(c, ValueError, TypeError)
        return
    if valid is None:  # (an empty batch: a refusal or an empty result are both fine)
        try:
            got = c()
        except errors.RnnfastError as exc:
            assert isinstance(exc, (ValueError, TypeError)), exc
            return
    else:
        got = c()
    py = model.greedy(src, lengths, use_c=False, **kw)
    np.testing.assert_array_equal(got.tokens, py.tokens)
    np.testing.assert_array_equal(got.lengths, py.lengths)
    assert_close(got.scores, py.scores, what="scores")
    assert got.tokens.shape[0] == B and got.tokens.shape[1] <= kw["max_len"]
    if kw["max_len"] >= 1:
        bs = model.beam_search(src, lengths, beam_size=2, **kw)
        assert bs.tokens.shape[0] == B


@fuzz_settings(1000)
@given(data=st.data(), shape=st.lists(st.integers(0, 3), min_size=0, max_size=3))
def test_fuzz_embedding_linear_sequential(data, shape):
    """Embedding tokens (out of range, negative, float, bool, huge), Linear inputs, a Sequential with lengths."""
    emb = M.Embedding(5, 3, seed=0)
    kind = data.draw(st.sampled_from(["int", "float_int", "float_frac", "neg", "big", "huge", "bool", "str", "nan"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    tok = rng.integers(0, 5, shape)
    n = tok.size
    valid = True
    if kind == "float_int":
        tok = tok.astype(np.float64)
    elif kind == "float_frac":
        tok, valid = tok + 0.5, n == 0
    elif kind == "neg":
        tok, valid = tok - 6, n == 0
    elif kind == "big":
        tok, valid = tok + 5, n == 0
    elif kind == "huge":
        tok, valid = np.full(shape, data.draw(st.sampled_from([2**63 - 1, 1e20, -1e30, 2**40]))), n == 0
    elif kind == "bool":
        tok, valid = tok.astype(bool), False
    elif kind == "str":
        tok, valid = np.full(shape, "1"), False
    elif kind == "nan":
        tok, valid = np.full(shape, np.nan), n == 0
    if valid:
        out = emb(tok)
        assert out.shape == tuple(shape) + (3,)
        np.testing.assert_array_equal(out, emb.weight[np.asarray(tok).astype(np.int64)])
    else:
        exc = _expect_clean_error(lambda: emb(tok), ValueError, TypeError)
        if kind in ("neg", "big", "huge"):
            assert "[0, 5)" in str(exc)
            bad = np.asarray(tok).ravel()[0]
            if kind == "huge" and np.asarray(tok).dtype.kind == "f":
                assert f"{bad:g}" in str(exc) or str(int(bad)) in str(exc), str(exc)
    lin = M.Linear(3, 2, seed=1)
    x, xr = _real_or_bad(data, tuple(shape) + (3,))
    if xr is None:
        _expect_clean_error(lambda: lin(x), TypeError, ValueError)
    else:
        y = lin(x)
        with np.errstate(all="ignore"):
            ref = xr @ lin.weight.astype(np.float64).T + lin.state_dict()["bias"]
        assert_close(y, ref, what="Linear")
    if len(shape) == 2:  # (B, T) tokens through Embedding -> LSTM -> Linear with lengths
        model = M.Sequential(M.Embedding(5, 3, seed=0), rnnfast.LSTM(3, 2, batch_first=True, seed=1),
                             M.Linear(2, 2, seed=2))
        B, T = shape
        toks = rng.integers(0, 5, (B, T))
        lens = rng.integers(0, T + 1, B)
        y = model(toks, lengths=lens)
        assert y.shape == (B, T, 2)
        with pytest.raises(errors.ShapeError):
            model(toks, lengths=np.full(B + 1, T))


def _sd_owners():
    return [
        rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0),
        rnnfast.LSTM(3, 4, proj_size=2, seed=0),
        rnnfast.GRU(2, 3, seed=0),
        rnnfast.RNN(2, 3, nonlinearity="relu", bias=False, seed=0),
        M.Linear(3, 2, seed=0),
        M.Embedding(5, 2, seed=0),
        M.Sequential(M.Embedding(5, 3, seed=0), rnnfast.GRU(3, 2, seed=1), M.Linear(2, 2, seed=2)),
        rnnfast.MultiheadAttention(4, 2, seed=0),
        rnnfast.AdditiveAttention(3, 4, 2, seed=0),
        rnnfast.GeneralAttention(3, 4, bias=True, seed=0),
        _seq2seq("bahdanau", True),
    ]


@fuzz_settings(1000)
@given(data=st.data(), which=st.integers(0, 10))
def test_fuzz_load_state_dict(data, which):
    """load_state_dict with hostile mappings: missing/extra keys, wrong shapes, every dtype, lists, None,
    strings. Either the values load exactly (as float32) or an rnnfast error is raised and the layer is
    left as it was."""
    owner = _sd_owners()[which]
    before = owner.state_dict()
    sd = dict(before)
    keys = sorted(sd)
    valid = True
    touched: set[str] = set()
    for _ in range(data.draw(st.integers(0, 3))):
        op = data.draw(st.sampled_from(["drop", "extra", "shape", "dtype", "list", "junk", "nan", "f64", "int"]))
        k = data.draw(st.sampled_from(keys))
        if k in touched:
            continue  # one change per key (a later valid value would undo an earlier fault)
        touched.add(k)
        if op == "drop":
            sd.pop(k, None)
            valid = False
        elif op == "extra":
            sd[data.draw(st.sampled_from(["extra", "0.weight.x", "weight_ih_l9", k + "_"]))] = np.zeros(2)
            valid = False
        elif op == "shape":
            sd[k] = np.zeros(tuple(s + 1 for s in before[k].shape) or (2,), np.float32)
            valid = False
        elif op == "dtype":
            sd[k] = before[k].astype(data.draw(st.sampled_from(["complex64", "U1", "O"])))
            valid = False
        elif op == "list":
            sd[k] = before[k].tolist()  # a nested list of floats holds the same values
        elif op == "junk":
            sd[k] = data.draw(st.sampled_from([None, "abc", object(), [[1.0], [1.0, 2.0]], {"a": 1}]))
            valid = False
        elif op == "nan" and before[k].size:
            a = before[k].copy()
            a.flat[0] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38]))
            sd[k] = a
        elif op == "f64":
            sd[k] = before[k].astype(np.float64)
        elif op == "int":
            sd[k] = np.round(before[k]).astype(np.int32)
            valid = valid and None  # integer weights: converted (recurrent layers) or refused (DTypeError)
    if data.draw(st.integers(0, 9)) == 0:
        sd, valid = data.draw(st.sampled_from([[1, 2], "state", None, 3])), False
    def unchanged():
        after = owner.state_dict()
        assert sorted(after) == sorted(before)
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} changed by a refused load")

    if valid is False:
        exc = _expect_clean_error(lambda: owner.load_state_dict(sd), ValueError, TypeError)
        assert isinstance(exc, (errors.StateDictError, errors.DTypeError, errors.ShapeError)), type(exc)
        unchanged()
        return
    try:
        owner.load_state_dict(sd)
    except errors.RnnfastError as exc:
        assert valid is None, f"refused a valid state_dict: {type(exc).__name__}: {exc}"
        assert isinstance(exc, (errors.StateDictError, errors.DTypeError)), type(exc)
        unchanged()
        return
    after = owner.state_dict()
    assert sorted(after) == sorted(before)
    for k in before:
        want = np.asarray(sd[k], dtype=np.float64).astype(before[k].dtype)
        np.testing.assert_array_equal(after[k], want, err_msg=k)
