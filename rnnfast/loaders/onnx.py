"""ONNX models -> rnnfast: RNN/LSTM/GRU nodes with their full semantics, and a whole-graph runner.

The ``onnx`` package parses the file (imported lazily); the graph is then held in rnnfast's own form
(:class:`OnnxGraph`: nodes as plain dicts, initializers as NumPy arrays), runs without ``onnx`` and can be
saved to the native format. The recurrent nodes run on the rnnfast core; the ops around them (what
``torch.onnx.export`` emits for an Embedding/RNN/Linear model: Gather, Transpose, Squeeze, Unsqueeze,
Slice, Concat, Shape, ConstantOfShape, MatMul, Gemm, Add, Softmax, Reshape, ...) run in NumPy.

Mapping of a recurrent node onto an rnnfast layer (canonical = PyTorch's layout)::

    W (D, G*H, I) -> weight_ih_l0[_reverse]      R (D, G*H, H) -> weight_hh_l0[_reverse]
    B (D, 2*G*H) = [Wb, Rb] -> bias_ih, bias_hh  (absent: bias=False)
    LSTM gates ONNX [i o f c] -> torch [i f g o]  (blocks 0, 2, 3, 1)
    GRU  gates ONNX [z r h]   -> torch [r z n]    (blocks 1, 0, 2)
    LSTM P (D, 3H) = [i o f]  -> weight_peep_l0[_reverse] (3H,) in order [i f o]
    linear_before_reset=1 <=> reset_after=True;  direction="reverse" -> models.Reversed(layer)
    layout=1: X (B, T, I), Y (B, T, D, H), Y_h/Y_c (B, D, H); layout=0: X (T, B, I), Y (T, D, B, H)
    activations / activation_alpha / activation_beta, clip, input_forget -> the core's ONNX extensions
"""

from __future__ import annotations

import math
import os
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import errors
from .. import models as M

RECURRENT_OPS = ("RNN", "LSTM", "GRU")
MAX_ELEMENTS = 1 << 31  # no op may create a tensor larger than this (hostile shapes)

# ONNX TensorProto data types -> numpy
_ONNX_DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}

_GATE_ORDER = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2], "RNN": [0]}
_NUM_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_NUM_ACTS = {"LSTM": 3, "GRU": 2, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# canonical ONNX spelling, and how many of (alpha, beta) each activation consumes, with defaults
_ACTS = {
    "relu": ("Relu", ()),
    "tanh": ("Tanh", ()),
    "sigmoid": ("Sigmoid", ()),
    "affine": ("Affine", (1.0, 0.0)),
    "leakyrelu": ("LeakyRelu", (0.01,)),
    "thresholdedrelu": ("ThresholdedRelu", (1.0,)),
    "scaledtanh": ("ScaledTanh", (1.0, 1.0)),
    "hardsigmoid": ("HardSigmoid", (0.2, 0.5)),
    "elu": ("Elu", (1.0,)),
    "softsign": ("Softsign", ()),
    "softplus": ("Softplus", ()),
}


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise errors.UnsupportedError(
            "the onnx package is not installed: it is needed to read .onnx files"
        ) from exc
    return onnx


# --------------------------------------------------------------------------------------------------
# recurrent nodes -> layers
# --------------------------------------------------------------------------------------------------
def _blocks(a: np.ndarray, op: str, axis: int = 0) -> np.ndarray:
    parts = np.split(a, _NUM_GATES[op], axis=axis)
    return np.concatenate([parts[i] for i in _GATE_ORDER[op]], axis=axis)


def parse_activations(op: str, attrs: Mapping[str, Any], D: int, where: str) -> list[list[tuple]] | None:
    """ONNX activations/activation_alpha/activation_beta -> per direction [(name, alpha, beta), ...],
    or None when they are the defaults. alpha/beta values are consumed in order by the functions that
    take them (ONNX Runtime's rule); the others use ONNX's defaults."""
    names = attrs.get("activations")
    alphas = list(attrs.get("activation_alpha", []) or [])
    betas = list(attrs.get("activation_beta", []) or [])
    n = _NUM_ACTS[op]
    if not names:
        if alphas or betas:
            raise errors.UnsupportedError(f"{where}: activation_alpha/beta given without activations")
        return None
    names = list(names)
    if len(names) != n * D:  # the spec (and ONNX Runtime) want one set per direction
        raise errors.ShapeError(
            f"{where}: expected {n * D} activations ({n} per direction), got {len(names)}"
        )
    out = []
    ai = bi = 0
    for name in names:
        key = str(name).lower()
        if key not in _ACTS:
            raise errors.UnsupportedError(
                f"{where}: activation {name!r} (supported: {', '.join(v[0] for v in _ACTS.values())})"
            )
        canon, defaults = _ACTS[key]
        alpha = beta = 0.0
        if len(defaults) >= 1:
            alpha = float(alphas[ai]) if ai < len(alphas) else defaults[0]
            ai += 1
        if len(defaults) >= 2:
            beta = float(betas[bi]) if bi < len(betas) else defaults[1]
            bi += 1
        out.append((canon, alpha, beta))
    per_dir = [out[d * n : (d + 1) * n] for d in range(D)]
    if all([a[0] for a in acts] == _DEFAULT_ACTS[op] for acts in per_dir):
        return None
    return per_dir


def recurrent_layer(
    op: str,
    attrs: Mapping[str, Any],
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None,
    P: np.ndarray | None,
    where: str,
) -> Any:
    """One ONNX RNN/LSTM/GRU node's weights and attributes -> an rnnfast layer (or Reversed(layer)).

    The layer takes batch-first input when the node's layout is 1. An attribute of the wrong type (a
    string hidden_size, an int activations...) raises FormatError naming the node.
    """
    try:
        return _recurrent_layer(op, attrs, W, R, B, P, where)
    except errors.RnnfastError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise errors.FormatError(f"{where}: malformed {op} attributes: {type(exc).__name__}: {exc}") from exc


def _recurrent_layer(op, attrs, W, R, B, P, where):
    core = M._core()
    direction = attrs.get("direction", "forward")
    if isinstance(direction, bytes):
        direction = direction.decode()
    if direction not in ("forward", "reverse", "bidirectional"):
        raise errors.UnsupportedError(f"{where}: direction {direction!r}")
    D = 2 if direction == "bidirectional" else 1
    G = _NUM_GATES[op]
    for role, a in (("W", W), ("R", R), ("B", B), ("P", P)):
        if a is not None and np.asarray(a).dtype.kind != "f":
            raise errors.DTypeError(f"{where}: {role} must be a float tensor, got {np.asarray(a).dtype}")
    W = np.asarray(W, dtype=np.float32)
    R = np.asarray(R, dtype=np.float32)
    if W.ndim != 3 or R.ndim != 3:
        raise errors.ShapeError(f"{where}: W and R must be 3-D, got {W.shape} and {R.shape}")
    H = R.shape[-1]
    if W.shape[0] != D or R.shape != (D, G * H, H) or W.shape[1] != G * H or H < 1:
        raise errors.ShapeError(
            f"{where}: expected W ({D}, {G}*H, I) and R ({D}, {G}*H, H) for direction "
            f"{direction!r}, got {W.shape} and {R.shape}"
        )
    hs = attrs.get("hidden_size")
    if hs is not None and int(hs) != H:
        raise errors.ShapeError(f"{where}: hidden_size={hs} but R has H={H}")
    I = W.shape[2]
    if B is not None:
        B = np.asarray(B, dtype=np.float32)
        if B.shape != (D, 2 * G * H):
            raise errors.ShapeError(f"{where}: B expected shape ({D}, {2 * G * H}), got {B.shape}")
    if P is not None:
        if op != "LSTM":
            raise errors.ShapeError(f"{where}: peepholes only exist for LSTM")
        P = np.asarray(P, dtype=np.float32)
        if P.shape != (D, 3 * H):
            raise errors.ShapeError(f"{where}: P expected shape ({D}, {3 * H}), got {P.shape}")
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise errors.UnsupportedError(f"{where}: layout {layout}")
    kw: dict[str, Any] = {"bias": B is not None, "batch_first": layout == 1, "bidirectional": D == 2}
    acts = parse_activations(op, attrs, D, where)
    if op == "RNN":
        names = None if acts is None else {tuple(a) for d in acts for a in d}
        if acts is None:
            kw["nonlinearity"] = "tanh"
        elif names in ({("Relu", 0.0, 0.0)}, {("Tanh", 0.0, 0.0)}):
            kw["nonlinearity"] = "relu" if names == {("Relu", 0.0, 0.0)} else "tanh"
        else:
            kw["activations"] = acts
    elif acts is not None:
        kw["activations"] = acts
    clip = attrs.get("clip")
    if clip is not None:
        kw["clip"] = float(clip)
    if op == "LSTM" and int(attrs.get("input_forget", 0)):
        kw["input_forget"] = True
    if op == "GRU":
        kw["reset_after"] = bool(int(attrs.get("linear_before_reset", 0)))
    if P is not None and "activations" not in kw:
        # peepholes run in the core's ONNX-extended cell; naming the default activations selects it
        kw["activations"] = [[(a, *_ACTS[a.lower()][1], 0.0, 0.0)[:3] for a in _DEFAULT_ACTS[op]]] * D
    ctor = {"LSTM": core.LSTM, "GRU": core.GRU, "RNN": core.RNN}[op]
    try:
        layer = ctor(I, H, **kw)
    except errors.RnnfastError:
        raise
    except (TypeError, ValueError) as exc:
        raise errors.UnsupportedError(f"{where}: the rnnfast core cannot build this {op}: {exc}") from exc
    sd = {}
    for d in range(D):
        sfx = "l0" + ("_reverse" if d else "")
        sd[f"weight_ih_{sfx}"] = _blocks(W[d], op)
        sd[f"weight_hh_{sfx}"] = _blocks(R[d], op)
        if B is not None:
            sd[f"bias_ih_{sfx}"] = _blocks(B[d, : G * H], op)
            sd[f"bias_hh_{sfx}"] = _blocks(B[d, G * H :], op)
        if P is not None:
            p = P[d]
            sd[f"weight_peep_{sfx}"] = np.concatenate([p[:H], p[2 * H :], p[H : 2 * H]])  # [i o f] -> [i f o]
    layer.load_state_dict(sd)
    if direction == "reverse":
        return M.Reversed(layer, realign=True)
    return layer


def _run_recurrent(node: Mapping, args: list, layer: Any, where: str) -> list:
    op, attrs = node["op"], node["attrs"]
    X = args[0]
    if X is None or X.ndim != 3:
        raise errors.ShapeError(f"{where}: X must be 3-D, got {None if X is None else X.shape}")
    layout = int(attrs.get("layout", 0))
    X = np.asarray(X, dtype=np.float32)
    if layout == 1:
        Bsz, T = X.shape[0], X.shape[1]
    else:
        T, Bsz = X.shape[0], X.shape[1]
    cfg = layer.config()
    inner = cfg["layer"] if cfg["type"] == "Reversed" else cfg
    D = 2 if inner.get("bidirectional") else 1
    H = inner["hidden_size"]
    if X.shape[2] != inner["input_size"]:
        raise errors.ShapeError(f"{where}: X expected input size {inner['input_size']}, got shape {X.shape}")
    seq = args[4] if len(args) > 4 else None
    lengths = None
    if seq is not None:
        seq = np.asarray(seq)
        if seq.dtype.kind not in "iu" or seq.shape != (Bsz,):
            raise errors.ShapeError(
                f"{where}: sequence_lens expected int ({Bsz},), got {seq.dtype} {seq.shape}"
            )
        if seq.size and (seq.min() < 0 or seq.max() > T):
            raise errors.ShapeError(f"{where}: sequence_lens must be in [0, {T}], got {seq.tolist()}")
        if not (seq.size and np.all(seq == T)):
            lengths = seq.astype(np.int64)

    def state(a, name):
        if a is None:
            return np.zeros((D, Bsz, H), np.float32)
        a = np.asarray(a, dtype=np.float32)
        want = (Bsz, D, H) if layout == 1 else (D, Bsz, H)
        if a.shape != want:
            raise errors.ShapeError(f"{where}: {name} expected shape {want}, got {a.shape}")
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if layout == 1 else a

    h0 = args[5] if len(args) > 5 else None
    c0 = args[6] if len(args) > 6 and op == "LSTM" else None
    hx: Any = None
    if op == "LSTM":
        if h0 is not None or c0 is not None:
            hx = (state(h0, "initial_h"), state(c0, "initial_c"))
    elif h0 is not None:
        hx = state(h0, "initial_h")
    out, st = layer(X, hx, lengths=lengths) if hx is not None else layer(X, lengths=lengths)
    h_n, c_n = st if op == "LSTM" else (st, None)
    out = np.asarray(out, dtype=np.float32)
    if lengths is not None and np.any(lengths == 0):
        # ONNX Runtime's rule: a zero-length sequence has zero final states (PyTorch: the initial state)
        empty = lengths == 0
        h_n = np.array(h_n)
        h_n[:, empty] = 0.0
        if c_n is not None:
            c_n = np.array(c_n)
            c_n[:, empty] = 0.0
    if layout == 1:  # out (B, T, D*H)
        Y = out.reshape(Bsz, T, D, H)
        Y_h = np.ascontiguousarray(np.asarray(h_n).transpose(1, 0, 2))
        Y_c = None if c_n is None else np.ascontiguousarray(np.asarray(c_n).transpose(1, 0, 2))
    else:  # out (T, B, D*H)
        Y = np.ascontiguousarray(out.reshape(T, Bsz, D, H).transpose(0, 2, 1, 3))
        Y_h, Y_c = np.asarray(h_n), None if c_n is None else np.asarray(c_n)
    return [Y, Y_h, Y_c] if op == "LSTM" else [Y, Y_h]


# --------------------------------------------------------------------------------------------------
# the NumPy op set
# --------------------------------------------------------------------------------------------------
def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _guard_size(shape, where: str) -> None:
    n = math.prod(int(s) for s in shape)
    if any(int(s) < 0 for s in shape) or n > MAX_ELEMENTS:
        raise errors.ShapeError(f"{where}: refusing to create a tensor of shape {tuple(shape)}")


def _axes_arg(node, args, opset):
    if opset >= 13 or "axes" not in node["attrs"]:
        return None if len(args) < 2 or args[1] is None else _ints(args[1])
    return list(node["attrs"]["axes"])


def _softmax(x, axis, opset, log=False):
    x = np.asarray(x)
    if opset < 13:
        ax = axis % x.ndim if x.ndim else 0
        shp = x.shape
        x2 = x.reshape(int(np.prod(shp[:ax], dtype=np.int64)), -1)
        return _softmax(x2, 1, 13, log).reshape(shp)
    with np.errstate(over="ignore", invalid="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        s = x - m
        if log:
            return (s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))).astype(x.dtype)
        e = np.exp(s)
        return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def _slice(x, starts, ends, axes, steps):
    x = np.asarray(x)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    sl = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise ValueError("Slice step 0")
        dim = x.shape[a]
        s = max(min(s, dim), -dim - 1) if st > 0 else max(min(s, dim - 1), -dim - 1)
        e = max(min(e, dim), -dim - 1)
        sl[a % x.ndim] = slice(s, None if (st < 0 and e < -dim) else e, st)
    return x[tuple(sl)]


def _binary(fn):
    def run(node, args, g):
        a, b = args[0], args[1]
        return [np.asarray(fn(a, b)).astype(np.result_type(a, b), copy=False)]

    return run


def _div(a, b):
    if np.asarray(a).dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        return np.trunc(np.asarray(a) / np.asarray(b)).astype(np.result_type(a, b))
    return np.divide(a, b)


def _op_gather(node, args, g):
    data, idx = np.asarray(args[0]), np.asarray(args[1])
    axis = int(node["attrs"].get("axis", 0))
    dim = data.shape[axis]
    if idx.dtype.kind not in "iu":
        raise errors.DTypeError(f"Gather indices must be integers, got {idx.dtype}")
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        bad = int(idx.min()) if idx.min() < -dim else int(idx.max())
        raise errors.ShapeError(f"Gather index {bad} out of range [-{dim}, {dim})")
    return [np.take(data, np.where(idx < 0, idx + dim, idx), axis=axis)]


def _op_unsqueeze(node, args, g):
    x = np.asarray(args[0])
    axes = _axes_arg(node, args, g.opset)
    out_rank = x.ndim + len(axes)
    for a in sorted(ax % out_rank for ax in axes):
        x = np.expand_dims(x, a)
    return [x]


def _op_squeeze(node, args, g):
    x = np.asarray(args[0])
    axes = _axes_arg(node, args, g.opset)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


def _op_slice(node, args, g):
    if g.opset < 10:
        at = node["attrs"]
        return [_slice(args[0], list(at["starts"]), list(at["ends"]), at.get("axes"), None)]
    return [
        _slice(
            args[0],
            _ints(args[1]),
            _ints(args[2]),
            None if len(args) < 4 or args[3] is None else _ints(args[3]),
            None if len(args) < 5 or args[4] is None else _ints(args[4]),
        )
    ]


def _op_shape(node, args, g):
    shp = np.array(np.asarray(args[0]).shape, dtype=np.int64)
    at = node["attrs"]
    start, end = at.get("start", 0), at.get("end")
    return [shp[start:end] if end is not None else shp[start:]]


def _op_constant_of_shape(node, args, g):
    shape = _ints(args[0])
    _guard_size(shape, "ConstantOfShape")
    value = node["attrs"].get("value")
    val = g.tensor_attr(value) if value is not None else np.zeros(1, np.float32)
    return [np.full(shape, val.reshape(-1)[0], dtype=val.dtype)]


def _op_reshape(node, args, g):
    x = np.asarray(args[0])
    shape = _ints(args[1]) if g.opset >= 5 else list(node["attrs"]["shape"])
    if not int(node["attrs"].get("allowzero", 0)):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _op_expand(node, args, g):
    x = np.asarray(args[0])
    shape = _ints(args[1])
    out = np.broadcast_shapes(x.shape, tuple(shape))
    _guard_size(out, "Expand")
    return [np.array(np.broadcast_to(x, out))]


def _op_gemm(node, args, g):
    at = node["attrs"]
    a, b = np.asarray(args[0]), np.asarray(args[1])
    if int(at.get("transA", 0)):
        a = a.T
    if int(at.get("transB", 0)):
        b = b.T
    y = float(at.get("alpha", 1.0)) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        y = y + float(at.get("beta", 1.0)) * np.asarray(args[2])
    return [y.astype(np.result_type(a, b), copy=False)]


def _op_split(node, args, g):
    x = np.asarray(args[0])
    axis = int(node["attrs"].get("axis", 0))
    n_out = len(node["outputs"])
    split = None
    if g.opset >= 13 and len(args) > 1 and args[1] is not None:
        split = _ints(args[1])
    elif "split" in node["attrs"]:
        split = list(node["attrs"]["split"])
    if split is None:
        dim = x.shape[axis]
        size = -(-dim // n_out)
        split = [min(size, dim - i * size) for i in range(n_out)]
    idx = np.cumsum(split)[:-1]
    return list(np.split(x, idx, axis=axis))


def _op_cast(node, args, g):
    to = int(node["attrs"]["to"])
    if to not in _ONNX_DTYPES:
        raise errors.UnsupportedError(f"Cast to ONNX data type {to}")
    return [np.asarray(args[0]).astype(_ONNX_DTYPES[to])]


def _op_flatten(node, args, g):
    x = np.asarray(args[0])
    axis = int(node["attrs"].get("axis", 1)) % (x.ndim + 1) if x.ndim else 0
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


def _op_range(node, args, g):
    start, limit, delta = (np.asarray(a).reshape(()) for a in args[:3])
    n = max(int(np.ceil((limit - start) / delta)), 0)
    _guard_size([n], "Range")
    return [np.arange(n, dtype=np.result_type(start, limit, delta)) * delta + start]


def _unary(fn):
    def run(node, args, g):
        x = np.asarray(args[0])
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return [np.asarray(fn(x)).astype(x.dtype, copy=False)]

    return run


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _relu(x):
    return np.where(x > 0, x, np.where(np.isnan(x), x, 0)).astype(x.dtype)


def _reduce(fn, axes_input_since: int):
    """ReduceMean/Sum/Max/Min: axes as an attribute before ``axes_input_since``, an input from then on."""

    def run(node, args, g):
        x = np.asarray(args[0])
        at = node["attrs"]
        if g.opset >= axes_input_since:
            axes = None if len(args) < 2 or args[1] is None else _ints(args[1])
        else:
            axes = at.get("axes")
        if not axes:
            if int(at.get("noop_with_empty_axes", 0)):
                return [x]
            axes = list(range(x.ndim))
        keep = bool(int(at.get("keepdims", 1)))
        return [
            np.asarray(fn(x, axis=tuple(a % max(x.ndim, 1) for a in axes), keepdims=keep)).astype(x.dtype)
        ]

    return run


OPS = {
    "Gather": _op_gather,
    "Transpose": lambda n, a, g: [np.ascontiguousarray(np.transpose(a[0], n["attrs"].get("perm")))],
    "Unsqueeze": _op_unsqueeze,
    "Squeeze": _op_squeeze,
    "Slice": _op_slice,
    "Concat": lambda n, a, g: [np.concatenate([x for x in a if x is not None], axis=int(n["attrs"]["axis"]))],
    "Shape": _op_shape,
    "Size": lambda n, a, g: [np.array(np.asarray(a[0]).size, dtype=np.int64)],
    "ConstantOfShape": _op_constant_of_shape,
    "Identity": lambda n, a, g: [a[0]],
    "Dropout": lambda n, a, g: [a[0], np.ones(np.shape(a[0]), dtype=bool)][: len(n["outputs"])],
    "MatMul": lambda n, a, g: [np.matmul(a[0], a[1])],
    "Gemm": _op_gemm,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_div),
    "Pow": _binary(np.power),
    "Equal": lambda n, a, g: [np.equal(a[0], a[1])],
    "Less": lambda n, a, g: [np.less(a[0], a[1])],
    "Greater": lambda n, a, g: [np.greater(a[0], a[1])],
    "Not": lambda n, a, g: [np.logical_not(a[0])],
    "Where": lambda n, a, g: [np.where(a[0], a[1], a[2])],
    "Neg": _unary(np.negative),
    "Exp": _unary(np.exp),
    "Log": _unary(np.log),
    "Sqrt": _unary(np.sqrt),
    "Abs": _unary(np.abs),
    "Softmax": lambda n, a, g: [
        _softmax(a[0], int(n["attrs"].get("axis", -1 if g.opset >= 13 else 1)), g.opset)
    ],
    "LogSoftmax": lambda n, a, g: [
        _softmax(a[0], int(n["attrs"].get("axis", -1 if g.opset >= 13 else 1)), g.opset, log=True)
    ],
    "Sigmoid": _unary(_sigmoid),
    "Tanh": _unary(np.tanh),
    "Relu": _unary(_relu),
    "LeakyRelu": lambda n, a, g: [
        np.where(a[0] >= 0, a[0], a[0] * np.float32(n["attrs"].get("alpha", 0.01))).astype(
            np.asarray(a[0]).dtype
        )
    ],
    "Reshape": _op_reshape,
    "Expand": _op_expand,
    "Cast": _op_cast,
    "Flatten": _op_flatten,
    "Split": _op_split,
    "Range": _op_range,
    "ArgMax": lambda n, a, g: [_argmax(n, a[0])],
    "ReduceMean": _reduce(np.mean, 18),
    "ReduceSum": _reduce(np.sum, 13),
    "ReduceMax": _reduce(np.max, 18),
    "ReduceMin": _reduce(np.min, 18),
}


def _argmax(node, x):
    at = node["attrs"]
    axis = int(at.get("axis", 0))
    if int(at.get("select_last_index", 0)):
        x = np.flip(x, axis)
        r = x.shape[axis] - 1 - np.argmax(x, axis=axis)
    else:
        r = np.argmax(x, axis=axis)
    r = r.astype(np.int64)
    return np.expand_dims(r, axis) if int(at.get("keepdims", 1)) else r


SUPPORTED_OPS = frozenset(OPS) | frozenset(RECURRENT_OPS)


# --------------------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------------------
class OnnxGraph:
    """An ONNX graph in rnnfast's own form, runnable without ``onnx`` (NumPy + the rnnfast core).

    ``graph.run({"x": x})`` -> dict of outputs; ``graph(x, lengths=None)`` feeds the first input (and the
    second one with ``lengths``) and returns the first output (a tuple when the graph has several).
    ``state_dict()`` are the initializers; ``config()`` the nodes: save it with ``rnnfast.save``.
    """

    def __init__(
        self,
        nodes: list[dict],
        inputs: list[dict],
        outputs: list[str],
        initializers: Mapping[str, np.ndarray],
        opset: int,
        source: str = "<onnx>",
        check: bool = True,
    ) -> None:
        self.nodes = nodes
        self.inputs = inputs
        self.outputs = list(outputs)
        self.opset = int(opset)
        self.source = source
        self._init = dict(initializers)
        if check:
            bad = Counter(n["op"] for n in nodes if n["op"] not in SUPPORTED_OPS or n.get("domain"))
            if bad:
                listing = ", ".join(f"{op} (x{c})" if c > 1 else op for op, c in sorted(bad.items()))
                raise errors.UnsupportedError(f"{source}: the graph uses ops rnnfast does not run: {listing}")
        self._prepare()

    # ---- recurrent layers prepared once from initializer weights
    def _prepare(self) -> None:
        self._layers: dict[int, Any] = {}
        for i, node in enumerate(self.nodes):
            if node["op"] not in RECURRENT_OPS:
                continue
            ins = node["inputs"] + [""] * 8
            names = [ins[1], ins[2], ins[3], ins[7] if node["op"] == "LSTM" else ""]
            if all((not n) or n in self._init for n in names):
                self._layers[i] = self._build(node, [self._init.get(n) if n else None for n in names])

    def _build(self, node, wrbp):
        W, R, B, P = wrbp
        if W is None or R is None:
            raise errors.ShapeError(f"{self.source}: node {node['name']!r} ({node['op']}) has no W or R")
        return recurrent_layer(node["op"], node["attrs"], W, R, B, P, f"{self.source}: node {node['name']!r}")

    def tensor_attr(self, value: Any) -> np.ndarray:
        if isinstance(value, Mapping) and "__tensor__" in value:
            return self._init[value["__tensor__"]]
        return np.asarray(value)

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    def run(self, feeds: Mapping[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph. feeds: input name -> array (converted to the declared dtype)."""
        env: dict[str, Any] = dict(self._init)
        for spec in self.inputs:
            name = spec["name"]
            if name not in feeds:
                raise errors.ShapeError(f"{self.source}: missing input {name!r} (inputs: {self.input_names})")
            env[name] = self._feed(spec, feeds[name])
        unknown = [k for k in feeds if k not in self.input_names]
        if unknown:
            raise errors.ShapeError(f"{self.source}: unknown inputs {unknown} (inputs: {self.input_names})")
        for i, node in enumerate(self.nodes):
            where = f"{self.source}: node {node['name']!r} ({node['op']})"
            try:
                args = [env[n] if n else None for n in node["inputs"]]
            except KeyError as exc:
                raise errors.FormatError(f"{where}: input {exc.args[0]!r} is never produced") from None
            try:
                if node["op"] in RECURRENT_OPS:
                    layer = self._layers.get(i)
                    if layer is None:
                        layer = self._build(
                            node,
                            [
                                args[1],
                                args[2],
                                args[3] if len(args) > 3 else None,
                                args[7] if node["op"] == "LSTM" and len(args) > 7 else None,
                            ],
                        )
                    res = _run_recurrent(node, args, layer, where)
                else:
                    res = OPS[node["op"]](node, args, self)
            except errors.RnnfastError as exc:
                msg = str(exc)
                raise type(exc)(msg if msg.startswith(self.source) else f"{where}: {msg}") from exc
            # (AxisError is a ValueError; ArithmeticError: e.g. Squeeze of a 0-d tensor took an axis % 0)
            except (ValueError, IndexError, TypeError, KeyError, ArithmeticError) as exc:
                raise errors.ShapeError(f"{where}: {type(exc).__name__}: {exc}") from exc
            for name, val in zip(node["outputs"], res):
                if name:
                    env[name] = val
        want = outputs or self.outputs
        missing = [o for o in want if o not in env]
        if missing:
            raise errors.FormatError(f"{self.source}: outputs {missing} are never produced")
        return {o: np.asarray(env[o]) for o in want}

    def _feed(self, spec: Mapping, value: Any) -> np.ndarray:
        name = spec["name"]
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
        dt = np.dtype(spec["dtype"])
        if arr.dtype.kind not in "fiub":
            raise errors.DTypeError(f"{self.source}: input {name!r} expected {dt}, got dtype {arr.dtype}")
        if (
            dt.kind in "iu"
            and arr.dtype.kind == "f"
            and (not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)))
        ):
            raise errors.DTypeError(f"{self.source}: input {name!r} expected integers ({dt}), got floats")
        shape = spec.get("shape")
        if shape is not None and (
            arr.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, arr.shape))
        ):
            raise errors.ShapeError(
                f"{self.source}: input {name!r} expected shape "
                f"{tuple(d if isinstance(d, int) else '?' for d in shape)}, "
                f"got {tuple(arr.shape)}"
            )
        return np.ascontiguousarray(arr, dtype=dt)

    def __call__(self, x: Any, lengths: Any = None):
        if not self.inputs:
            raise errors.ShapeError(f"{self.source}: the graph has no inputs")
        feeds = {self.inputs[0]["name"]: x}
        if lengths is not None:
            if len(self.inputs) < 2:
                raise errors.UnsupportedError(
                    f"{self.source}: lengths given but the graph has no second input for sequence lengths"
                )
            feeds[self.inputs[1]["name"]] = lengths
        elif len(self.inputs) > 1:
            raise errors.ShapeError(
                f"{self.source}: the graph has inputs {self.input_names}: feed them by name with "
                "graph.run({name: array}) (command line: rnnfast run --feed NAME=X.npy)"
            )
        res = self.run(feeds)
        outs = [res[o] for o in self.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    # ---- rnnfast model interface
    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self._init.items()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        missing = [k for k in self._init if k not in state]
        unexpected = [k for k in state if k not in self._init]
        if missing or (strict and unexpected):
            raise errors.StateDictError(
                f"OnnxGraph.load_state_dict: missing {missing}; unexpected {unexpected}"
            )
        new = {}
        for k, ref in self._init.items():
            a = np.asarray(state[k])
            if a.shape != ref.shape:
                raise errors.StateDictError(
                    f"OnnxGraph: tensor {k!r} expected shape {ref.shape}, got {a.shape}"
                )
            if a.dtype.kind != ref.dtype.kind:
                raise errors.DTypeError(f"OnnxGraph: tensor {k!r} expected dtype {ref.dtype}, got {a.dtype}")
            new[k] = np.array(a, dtype=ref.dtype)
        self._init = new
        self._prepare()

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self._init.values() if v.dtype.kind == "f"))

    def config(self) -> dict:
        return {
            "type": "OnnxGraph",
            "opset": self.opset,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "nodes": self.nodes,
            "initializers": [[k, str(v.dtype), list(v.shape)] for k, v in self._init.items()],
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> OnnxGraph:
        try:
            inits = {}
            for name, dtype, shape in cfg["initializers"]:
                dt = np.dtype(dtype)
                if dt.kind not in "fiub" or not isinstance(name, str):
                    raise errors.FormatError(f"OnnxGraph config: bad initializer {name!r} {dtype}")
                inits[name] = np.zeros(shape, dt)
            nodes = [dict(n) for n in cfg["nodes"]]
            for n in nodes:
                if (
                    not isinstance(n.get("op"), str)
                    or not isinstance(n.get("inputs"), list)
                    or not isinstance(n.get("outputs"), list)
                    or not isinstance(n.get("attrs"), dict)
                ):
                    raise errors.FormatError("OnnxGraph config: malformed node")
            g = cls.__new__(cls)
            g.nodes, g.inputs, g.outputs = nodes, list(cfg["inputs"]), list(cfg["outputs"])
            g.opset, g.source, g._init = int(cfg["opset"]), "<onnx graph>", inits
            bad = sorted({n["op"] for n in nodes if n["op"] not in SUPPORTED_OPS})
            if bad:
                raise errors.UnsupportedError(f"the graph uses ops rnnfast does not run: {', '.join(bad)}")
            g._layers = {}  # built by load_state_dict once the weights are there
            return g
        except errors.RnnfastError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.FormatError(f"malformed OnnxGraph config: {type(exc).__name__}: {exc}") from exc

    def describe(self) -> list[tuple[str, str, dict, int]]:
        rows = []
        rec_names = set()
        for node in self.nodes:
            if node["op"] in RECURRENT_OPS:
                shapes = {}
                for role, n in zip(("", "W", "R", "B", "", "", "", "P"), node["inputs"]):
                    if role and n in self._init:
                        shapes[role] = tuple(self._init[n].shape)
                        rec_names.add(n)
                d = node["attrs"].get("direction", "forward")
                rows.append(
                    (
                        node["name"],
                        f"{node['op']} ({d})",
                        shapes,
                        int(sum(math.prod(s) for s in shapes.values())),
                    )
                )
        counts = Counter(n["op"] for n in self.nodes if n["op"] not in RECURRENT_OPS)
        others = {
            k: tuple(v.shape) for k, v in self._init.items() if k not in rec_names and v.dtype.kind == "f"
        }
        if others or counts:
            rows.append(
                ("(rest of graph)", "NumPy ops", others, int(sum(math.prod(s) for s in others.values())))
            )
        return rows

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(n["op"] for n in self.nodes).items()))

    def __repr__(self) -> str:
        ops = Counter(n["op"] for n in self.nodes)
        return f"OnnxGraph(opset={self.opset}, inputs={self.input_names}, outputs={self.outputs}, ops={dict(ops)})"


# --------------------------------------------------------------------------------------------------
# reading .onnx files
# --------------------------------------------------------------------------------------------------
def _text(v: Any) -> str:
    """A protobuf string field as str: protobuf hands back bytes when a (hostile) field is not valid UTF-8,
    which then broke joins, comparisons and JSON. backslashreplace keeps distinct names distinct."""
    return v if isinstance(v, str) else bytes(v).decode("utf-8", "backslashreplace")


def _tensor_to_numpy(t: Any, path: str, file_size: int) -> np.ndarray:
    onnx = _onnx()
    from onnx import numpy_helper

    where = f"{path}: tensor {_text(t.name)!r}"
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise errors.FormatError(f"{where}: negative dimension in {dims}")
    if t.data_type not in _ONNX_DTYPES:
        raise errors.DTypeError(
            f"{where}: unsupported data type {onnx.TensorProto.DataType.Name(t.data_type)}"
            if t.data_type in onnx.TensorProto.DataType.values()
            else f"{where}: unknown data type {t.data_type}"
        )
    n = math.prod(dims)
    itemsize = np.dtype(_ONNX_DTYPES[t.data_type]).itemsize
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise errors.FormatError(f"{where}: external data was not loaded")
    if t.HasField("raw_data"):
        if len(t.raw_data) != n * itemsize:
            raise errors.FormatError(
                f"{where}: shape {dims} needs {n * itemsize} bytes, raw_data has {len(t.raw_data)}"
            )
    else:
        field = {1: t.float_data, 11: t.double_data, 7: t.int64_data, 13: t.uint64_data}.get(
            t.data_type, t.int32_data
        )
        if len(field) != n:
            raise errors.FormatError(f"{where}: shape {dims} needs {n} values, the tensor holds {len(field)}")
    try:
        return np.array(numpy_helper.to_array(t))
    except Exception as exc:
        raise errors.FormatError(f"{where}: cannot decode: {exc}") from exc


def _attr_value(a: Any, node_out: str, extra: dict, path: str, file_size: int) -> Any:
    onnx = _onnx()
    A = onnx.AttributeProto
    if a.type == A.INT:
        return int(a.i)
    if a.type == A.FLOAT:
        return float(a.f)
    if a.type == A.STRING:
        return a.s.decode("utf-8", "replace")
    if a.type == A.INTS:
        return [int(v) for v in a.ints]
    if a.type == A.FLOATS:
        return [float(v) for v in a.floats]
    if a.type == A.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if a.type == A.TENSOR:
        name = f"{node_out}::{_text(a.name)}"
        extra[name] = _tensor_to_numpy(a.t, path, file_size)
        return {"__tensor__": name}
    raise errors.UnsupportedError(f"{path}: attribute {a.name!r} of type {A.AttributeType.Name(a.type)}")


def _value_info(vi: Any) -> dict:
    tt = vi.type.tensor_type
    dt = _ONNX_DTYPES.get(tt.elem_type)
    if dt is None:
        raise errors.UnsupportedError(
            f"graph input {_text(vi.name)!r} has an unsupported element type {tt.elem_type}"
        )
    shape = None
    if tt.HasField("shape"):
        shape = [
            int(d.dim_value) if d.HasField("dim_value") else (_text(d.dim_param) or None) for d in tt.shape.dim
        ]
    return {"name": _text(vi.name), "dtype": np.dtype(dt).name, "shape": shape}


def read_model(path: str | os.PathLike) -> Any:
    """Parse an .onnx file (external data only from files beside it, sizes checked)."""
    onnx = _onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise errors.FormatError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise errors.FormatError(f"{path}: not a valid ONNX protobuf: {type(exc).__name__}: {exc}") from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise errors.FormatError(f"{path}: not an ONNX model (no graph)")
    base = os.path.dirname(os.path.abspath(path))
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for t in external:
        info = {_text(e.key): _text(e.value) for e in t.external_data}
        loc = info.get("location", "")
        full = os.path.realpath(os.path.join(base, loc))
        if not loc or os.path.isabs(loc) or not full.startswith(os.path.realpath(base) + os.sep):
            raise errors.FormatError(
                f"{path}: tensor {t.name!r}: external data location {loc!r} is outside the model's directory"
            )
        if not os.path.isfile(full):
            raise errors.FormatError(f"{path}: tensor {t.name!r}: external data file {loc!r} not found")
        try:
            need = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        except ValueError:
            raise errors.FormatError(
                f"{path}: tensor {_text(t.name)!r}: external data offset/length are not integers"
            ) from None
        if need > os.path.getsize(full):
            raise errors.FormatError(
                f"{path}: tensor {t.name!r}: external data {loc!r} is shorter than declared"
            )
    if external:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, base)
        except Exception as exc:
            raise errors.FormatError(f"{path}: cannot load external data: {exc}") from exc
    return model


def graph_from_model(model: Any, path: str, check: bool = True) -> OnnxGraph:
    """ONNX ModelProto -> OnnxGraph (Constant nodes folded into initializers, attributes as plain values)."""
    file_size = os.path.getsize(path) if os.path.isfile(path) else 0
    opset = 0
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    g = model.graph
    inits: dict[str, np.ndarray] = OrderedDict()
    for t in g.initializer:
        inits[_text(t.name)] = _tensor_to_numpy(t, path, file_size)
    nodes = []
    unsupported = Counter()
    for i, n in enumerate(g.node):
        op, domain = _text(n.op_type), _text(n.domain)
        ins, outs = [_text(v) for v in n.input], [_text(v) for v in n.output]
        name = _text(n.name) or f"{op}_{i}"
        out0 = outs[0] if outs else name
        if domain not in ("", "ai.onnx"):
            unsupported[f"{domain}.{op}"] += 1
            continue
        if op == "Constant":
            if not n.attribute:
                raise errors.FormatError(f"{path}: Constant node {name!r} without a value")
            a = n.attribute[0]
            extra: dict = {}
            v = _attr_value(a, out0, extra, path, file_size)
            A = _onnx().AttributeProto
            aname = _text(a.name)
            want = {"value": A.TENSOR, "value_float": A.FLOAT, "value_floats": A.FLOATS, "value_int": A.INT,
                    "value_ints": A.INTS}.get(aname)
            if want is not None and a.type != want:  # (a mistyped value leaked TypeError/ValueError)
                raise errors.FormatError(
                    f"{path}: Constant node {name!r}: attribute {aname!r} has type "
                    f"{A.AttributeType.Name(a.type) if a.type in A.AttributeType.values() else a.type}"
                )
            if aname == "value":
                val = extra[v["__tensor__"]]
            elif aname in ("value_float", "value_floats"):
                val = np.array(v, dtype=np.float32)
            elif aname in ("value_int", "value_ints"):
                val = np.array(v, dtype=np.int64)
            else:
                raise errors.UnsupportedError(f"{path}: Constant node {name!r} with {aname}")
            inits[out0] = val
            continue
        attrs = {}
        try:
            for a in n.attribute:
                attrs[_text(a.name)] = _attr_value(a, out0, inits, path, file_size)
        except errors.UnsupportedError:
            unsupported[op] += 1
            continue
        if op not in SUPPORTED_OPS:
            unsupported[op] += 1
        nodes.append({"op": op, "name": name, "inputs": ins, "outputs": outs, "attrs": attrs})
    if check and unsupported:
        listing = ", ".join(f"{op} (x{c})" if c > 1 else op for op, c in sorted(unsupported.items()))
        raise errors.UnsupportedError(f"{path}: the graph uses ops rnnfast does not run: {listing}")
    inputs = [_value_info(vi) for vi in g.input if _text(vi.name) not in inits]
    outputs = [_text(o.name) for o in g.output]
    return OnnxGraph(nodes, inputs, outputs, inits, opset, source=path, check=check)


def load_onnx(path: str | os.PathLike) -> OnnxGraph:
    """Load an .onnx file as a runnable :class:`OnnxGraph`. Every unsupported op is listed in one error."""
    path = os.fspath(path)
    return graph_from_model(read_model(path), path)


def onnx_layers(path: str | os.PathLike) -> OrderedDict[str, Any]:
    """The RNN/LSTM/GRU nodes of an ONNX file as rnnfast layers, node name -> layer, in graph order.

    Other ops may be anything (they are not run). Each layer carries the node's initializer weights and
    attributes: ``batch_first`` when layout=1, ``Reversed(layer)`` for direction="reverse", the ONNX
    extensions (activations, clip, input_forget, peepholes) when used. A node whose W/R/B/P are computed
    at run time (not initializers or Constants) raises UnsupportedError naming it.
    """
    path = os.fspath(path)
    graph = graph_from_model(read_model(path), path, check=False)
    out: OrderedDict[str, Any] = OrderedDict()
    for node in graph.nodes:
        if node["op"] not in RECURRENT_OPS:
            continue
        ins = node["inputs"] + [""] * 8
        roles = [ins[1], ins[2], ins[3], ins[7] if node["op"] == "LSTM" else ""]
        dynamic = [r for r in roles if r and r not in graph._init]
        if dynamic:
            raise errors.UnsupportedError(
                f"{path}: node {node['name']!r} ({node['op']}): weights {dynamic} are "
                "computed at run time, not stored in the file"
            )
        out[node["name"]] = recurrent_layer(
            node["op"],
            node["attrs"],
            *[graph._init.get(r) if r else None for r in roles],
            where=f"{path}: node {node['name']!r}",
        )
    if not out:
        raise errors.FormatError(f"{path}: the graph has no RNN, LSTM or GRU node")
    return out
