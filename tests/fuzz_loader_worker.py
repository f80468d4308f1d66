"""Worker process of tests/test_fuzz.py: loads files handed to it, one per line, and reports the outcome.

A loader that segfaults, aborts or hangs must not take pytest down with it, so the fuzz test runs every
load here. Protocol: each stdin line is a JSON object {"path": ..., "architecture": <config or null>};
each stdout line is a JSON object {"outcome": "ok" | "error", ...}. Memory is capped (RLIMIT_DATA) so a
hostile declared size that the loader would allocate shows up as a MemoryError instead of an OOM kill.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import traceback

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
MEM_LIMIT = int(os.environ.get("RNNFAST_FUZZ_MEM_LIMIT", str(6 * 1024**3)))


def _probe_input(model):
    """A tiny valid input for a loaded model (or None when its first layer is not recognised)."""
    if hasattr(model, "inputs") and hasattr(model, "run"):  # OnnxGraph: fill symbolic dims with 2
        spec = model.inputs[0]
        shape = [d if isinstance(d, int) and 0 < d <= 64 else 2 for d in (spec["shape"] or [2, 2, 2])]
        dt = np.dtype(spec["dtype"])
        if dt.kind in "iu":
            return np.zeros(shape, dt)
        return np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape).astype(dt)
    first = model
    layers = getattr(model, "_layers", None)  # Sequential
    if layers:
        first = list(layers.values())[0] if isinstance(layers, dict) else layers[0]
    cfg = first.config() if hasattr(first, "config") else {}
    kind = cfg.get("type")
    if kind == "Embedding":
        return np.arange(6, dtype=np.int64).reshape(2, 3) % int(cfg["num_embeddings"])
    if "input_size" in cfg:
        return np.linspace(-2, 2, 2 * 3 * int(cfg["input_size"]), dtype=np.float32).reshape(2, 3, -1)
    if kind == "Linear":
        return np.linspace(-2, 2, 2 * int(cfg["in_features"]), dtype=np.float32).reshape(2, -1)
    return None


def _check_loaded(model) -> str:
    """A loaded model holds real arrays and runs (or refuses its probe input with an rnnfast error)."""
    from rnnfast.errors import RnnfastError

    sd = model.state_dict()
    for k, v in sd.items():
        if not isinstance(v, np.ndarray) or v.dtype.kind not in "fiub":
            raise AssertionError(f"loaded tensor {k!r} is {type(v).__name__} {getattr(v, 'dtype', '')}")
    # what `rnnfast info --json` prints, and what `rnnfast convert` writes: it must read back identically
    from rnnfast.commands import describe_model
    from rnnfast.loaders import load, save

    json.dumps(describe_model(model), indent=2)
    with tempfile.TemporaryDirectory(prefix="rnnfast-fuzz-") as d:
        out = os.path.join(d, "converted.safetensors")
        save(model, out)
        back = load(out).state_dict()
    if sorted(back) != sorted(sd):
        raise AssertionError(f"convert lost or renamed tensors: {sorted(set(sd) ^ set(back))}")
    for k, v in sd.items():
        if back[k].shape != v.shape or not np.array_equal(back[k], v, equal_nan=True):
            raise AssertionError(f"convert changed tensor {k!r}")
    x = _probe_input(model)
    if x is None:
        return "loaded"
    try:
        y = model(x)
    except RnnfastError as exc:
        return f"loaded; probe refused: {type(exc).__name__}"
    for a in y if isinstance(y, tuple) else (y,):
        for b in a if isinstance(a, tuple) else (a,):
            if b is not None and not isinstance(b, np.ndarray):
                raise AssertionError(f"model output is {type(b).__name__}")
    return "loaded and ran"


def main() -> None:
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # under ASan its allocator caps (test_fuzz.py)
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (MEM_LIMIT, MEM_LIMIT))
        except (ValueError, OSError):
            pass
    import rnnfast  # noqa: F401  (import once, before the first request)
    from rnnfast.errors import RnnfastError
    from rnnfast.loaders import load

    try:  # warm the lazy imports so the parent's timeout measures the load, not torch's import
        import h5py  # noqa: F401
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pass
    print(json.dumps({"outcome": "ready"}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            model = load(req["path"], architecture=req.get("architecture"))
            note = _check_loaded(model)
            rep = {"outcome": "ok", "note": note}
        except RnnfastError as exc:
            rep = {"outcome": "error", "type": type(exc).__name__, "rnnfast": True, "msg": str(exc)[:500]}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the example
            rep = {
                "outcome": "error",
                "type": type(exc).__name__,
                "rnnfast": False,
                "msg": str(exc)[:500],
                "tb": traceback.format_exc()[-3000:],
            }
        print(json.dumps(rep), flush=True)


if __name__ == "__main__":
    main()
