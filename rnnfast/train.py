"""Training with rnnfast: backpropagation through time, losses, clipping and optimizers in the C core.

The names mirror PyTorch's::

    from rnnfast import train
    net = train.Trainable(rnnfast.models.Sequential({"emb": emb, "rnn": lstm, "fc": fc}))
    opt = train.Adam(net.parameters(), lr=2e-3)
    logits = net(tokens)                                  # forward with a training cache
    loss, dlogits = train.cross_entropy(logits, targets)  # loss and its gradient
    net.backward(dlogits)                                 # BPTT: accumulates p.grad of every Parameter
    norm = train.clip_grad_norm_(net.parameters(), 1.0)   # returns the norm before clipping
    opt.step(); opt.zero_grad()
    net.sync()                                            # write the trained weights back into the model

There is also a functional layer for one recurrent stack, ``forward_train`` / ``backward``, and ``fit``,
a training loop with progress, loss/throughput reporting and a saved model at the end.

Shapes: T=time B=batch I=input H=hidden P=proj_size or H, D=directions L=layers V=vocabulary.
Everything is float32 (float64 input is converted). Dropout between layers is not implemented for training
(a stack with num_layers > 1 and dropout > 0 raises UnsupportedError). The ONNX extensions (activations, clip,
input_forget, peepholes) are inference-only. Thread-safety: a Trainable keeps its cache, use one per thread.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import errors

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _tr():
    import rnnfast  # noqa: F401  (the core module fills its BLAS table first)

    from . import _train

    return _train


def _threads(n_threads: int | None = None) -> int:
    try:
        from . import _threads as th

        return int(th.resolve(n_threads))  # 1 in a forked child even when n_threads is given
    except ImportError:  # pragma: no cover
        return 0 if n_threads is None else int(n_threads)


def _array(a: Any, name: str) -> np.ndarray:
    """np.asarray with the errors of a ragged sequence (numpy's bare ValueError) named after the argument."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise errors.ShapeError(
            f"{name}: expected a rectangular array, got a ragged {type(a).__name__} ({exc})"
        ) from None


def _f32(a: Any, name: str) -> np.ndarray:
    arr = _array(a, name)
    if arr.dtype.kind not in "fiub":
        raise errors.DTypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(arr.shape)  # a 0-d array stays 0-d


def _real(value: Any, name: str, lo: float | None = None, hi: float | None = None, hi_open: bool = False) -> float:
    """A real scalar argument: DTypeError if not a number, ArgumentError if NaN or outside [lo, hi] / [lo, hi)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise errors.DTypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if v != v:
        raise errors.ArgumentError(f"{name}: expected a number, got NaN")
    if (lo is not None and v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
        rng = f"[{lo}, {hi}{')' if hi_open else ']'}" if hi is not None else f">= {lo}"
        raise errors.ArgumentError(f"{name}: expected {rng}, got {value!r}")
    return v


def _integer(value: Any, name: str, lo: int | None = None) -> int:
    """An integer scalar argument (bool and float refused: DTypeError), >= lo (ArgumentError)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise errors.DTypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    v = int(value)
    if lo is not None and v < lo:
        raise errors.ArgumentError(f"{name}: expected an integer >= {lo}, got {v}")
    return v


# ==================================================================================================
# Parameters
# ==================================================================================================
class Parameter:
    """A float32 array (``data``, updated in place by optimizers) with its gradient ``grad``."""

    __slots__ = ("data", "grad", "name")

    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name = name
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        if not self.data.flags.writeable:
            self.data = self.data.copy()
        self.grad: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def accumulate(self, g: np.ndarray) -> None:
        """grad += g (grad None: grad = g), like autograd's accumulation into .grad."""
        if self.grad is None:
            self.grad = np.ascontiguousarray(g, dtype=np.float32)
        else:
            self.grad += g

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.data.shape})"


def _params_of(params: Any) -> list[Parameter]:
    if isinstance(params, Module):
        params = params.parameters()
    try:
        out = list(params)
    except TypeError:
        raise errors.DTypeError(
            f"parameters: expected an iterable of rnnfast.train.Parameter, got {type(params).__name__}"
        ) from None
    for p in out:
        if not isinstance(p, Parameter):
            raise errors.DTypeError(f"parameters: expected rnnfast.train.Parameter objects, got {type(p).__name__}")
    return out


# ==================================================================================================
# Recurrent stacks: functional forward (with cache) / backward
# ==================================================================================================
class RecurrentSpec:
    """Architecture of a recurrent stack, as the training core needs it."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        proj_size: int = 0,
        reset_after: bool = True,
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        if mode not in _GATES:
            raise errors.UnsupportedError(f"mode: expected one of {sorted(_GATES)}, got {mode!r}")
        self.mode, self.input_size, self.hidden_size = mode, int(input_size), int(hidden_size)
        self.num_layers, self.bidirectional = int(num_layers), bool(bidirectional)
        self.proj_size, self.reset_after, self.bias = int(proj_size), bool(reset_after), bool(bias)
        self.batch_first = bool(batch_first)
        self._desc = None

    @classmethod
    def from_layer(cls, layer: Any) -> RecurrentSpec:
        if isinstance(layer, RecurrentSpec):
            return layer
        mode = getattr(layer, "mode", None)
        if mode not in _GATES:
            raise errors.UnsupportedError(f"layer: expected an rnnfast RNN/LSTM/GRU, got {type(layer).__name__}")
        if (
            getattr(layer, "activations", None) is not None
            or getattr(layer, "clip", None) is not None
            or getattr(layer, "input_forget", False)
        ):
            raise errors.UnsupportedError(
                "training: ONNX extensions (activations, clip, input_forget) are inference-only"
            )
        if any(k.startswith("weight_peep") for k in getattr(layer, "_params", {})):
            raise errors.UnsupportedError("training: LSTM peepholes are inference-only")
        if float(getattr(layer, "dropout", 0.0)) > 0.0 and int(layer.num_layers) > 1:
            raise errors.UnsupportedError(
                f"training: dropout between layers is not implemented, got dropout={layer.dropout}"
            )
        return cls(
            mode,
            layer.input_size,
            layer.hidden_size,
            layer.num_layers,
            layer.bidirectional,
            getattr(layer, "proj_size", 0),
            getattr(layer, "reset_after", True),
            layer.bias,
            layer.batch_first,
        )

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def P(self) -> int:
        return self.proj_size or self.hidden_size

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        G, H, P, D = _GATES[self.mode], self.hidden_size, self.P, self.D
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            for sfx in ("", "_reverse")[:D]:
                i_l = self.input_size if layer == 0 else D * P
                shapes[f"weight_ih_l{layer}{sfx}"] = (G * H, i_l)
                shapes[f"weight_hh_l{layer}{sfx}"] = (G * H, P)
                if self.bias:
                    shapes[f"bias_ih_l{layer}{sfx}"] = (G * H,)
                    shapes[f"bias_hh_l{layer}{sfx}"] = (G * H,)
                if self.proj_size:
                    shapes[f"weight_hr_l{layer}{sfx}"] = (P, H)
        return shapes

    def desc(self):
        if self._desc is None:
            self._desc = _tr().Desc(
                self.mode, self.num_layers, self.D, self.input_size, self.hidden_size, self.proj_size, self.reset_after
            )
        return self._desc

    def weight_list(self, params: Mapping[str, np.ndarray]) -> list[tuple]:
        """(w_ih, w_hh, b_ih, b_hh, w_hr) per (layer, direction), float32 C-contiguous, shapes checked."""
        shapes = self.param_shapes()
        missing = [k for k in shapes if k not in params]
        if missing:
            raise errors.StateDictError(f"params: missing {missing}")
        arrs = {}
        for k, s in shapes.items():
            a = params[k]
            a = a.data if isinstance(a, Parameter) else _f32(a, k)
            if a.shape != s:
                raise errors.StateDictError(f"params[{k!r}]: expected shape {s}, got {a.shape}")
            arrs[k] = a
        out = []
        for layer in range(self.num_layers):
            for sfx in ("", "_reverse")[: self.D]:
                n = f"l{layer}{sfx}"
                out.append(
                    (
                        arrs[f"weight_ih_{n}"],
                        arrs[f"weight_hh_{n}"],
                        arrs.get(f"bias_ih_{n}"),
                        arrs.get(f"bias_hh_{n}"),
                        arrs.get(f"weight_hr_{n}"),
                    )
                )
        return out


class RecurrentCache:
    """What ``backward`` needs from ``forward_train``: inputs, weights and the C core's per-step cache."""

    __slots__ = ("batch_first", "buf", "c0", "h0", "lengths", "spec", "unbatched", "weights", "ws", "x")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


def _state_arg(a: Any, name: str, shape: tuple[int, ...], unbatched: bool) -> np.ndarray | None:
    if a is None:
        return None
    arr = _f32(a, name)
    want = (shape[0], shape[2]) if unbatched else shape
    if arr.shape != want:
        raise errors.ShapeError(f"{name}: expected shape {want}, got {arr.shape}")
    return np.ascontiguousarray(arr.reshape(shape))


def forward_train(
    layer: Any,
    x: Any,
    hx: Any = None,
    lengths: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    n_threads: int | None = None,
    reuse: RecurrentCache | None = None,
):
    """Forward of a recurrent stack that keeps a cache for :func:`backward`.

    Parameters
    ----------
    layer : rnnfast.RNN / LSTM / GRU (or a RecurrentSpec)
    x : (T, B, I), (B, T, I) if batch_first, or unbatched (T, I)
    hx : initial state like the layer's call: h0 (L*D, B, P), for LSTM (h0, c0) with c0 (L*D, B, H)
    lengths : (B,) ints in [0, T] or None
    params : parameters by torch names (default: ``layer.state_dict()``); Parameter objects accepted
    reuse : an earlier cache whose buffers may be re-used (that cache becomes invalid): saves the page
        faults of a fresh ~100 MB allocation per training step

    Returns
    -------
    out : (T, B, D*P) (or batch-first / unbatched like x), state : h_n or (h_n, c_n), cache
    """
    spec = RecurrentSpec.from_layer(layer)
    if params is None:
        params = layer._params if hasattr(layer, "_params") else layer.state_dict()
    weights = spec.weight_list(params)
    xa = _f32(x, "x")
    if xa.ndim not in (2, 3) or xa.shape[-1] != spec.input_size:
        raise errors.ShapeError(
            f"x: expected (T, B, {spec.input_size}) (or batch-first, or unbatched "
            f"(T, {spec.input_size})), got {xa.shape}"
        )
    unbatched = xa.ndim == 2
    if unbatched:
        if lengths is not None:
            raise errors.ShapeError("lengths: not allowed with unbatched 2-D input")
        xa = xa[:, None, :]
    elif spec.batch_first:
        xa = xa.transpose(1, 0, 2)
    xa = np.ascontiguousarray(xa)
    T, B = xa.shape[0], xa.shape[1]
    LD, H, P = spec.num_layers * spec.D, spec.hidden_size, spec.P
    h0 = c0 = None
    if spec.mode == "LSTM":
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise errors.ShapeError("hx: expected a tuple (h0, c0) for LSTM")
            h0 = _state_arg(hx[0], "h0", (LD, B, P), unbatched)
            c0 = _state_arg(hx[1], "c0", (LD, B, H), unbatched)
    else:
        h0 = _state_arg(hx, "h0", (LD, B, P), unbatched)
    lens = None
    if lengths is not None:
        la = _array(lengths, "lengths")
        if la.dtype.kind not in "iu" and la.size:
            raise errors.DTypeError(f"lengths: expected ({B},) integers, got dtype {la.dtype}")
        if la.shape != (B,):
            raise errors.ShapeError(f"lengths: expected ({B},) integers, got {la.dtype} {la.shape}")
        if B and (la.min() < 0 or la.max() > T):
            raise errors.ShapeError(f"lengths: expected values in [0, {T}], got [{la.min()}, {la.max()}]")
        lens = np.ascontiguousarray(la, dtype=np.int32)
    nt = _threads(None if n_threads is None else _integer(n_threads, "n_threads", 0))
    old_buf = old_ws = None
    if reuse is not None:
        old_buf, old_ws = reuse.buf, reuse.ws
        reuse.buf = reuse.ws = None
    out, h_n, c_n, buf = _tr().forward(spec.desc(), weights, xa, lens, h0, c0, nt, old_buf)
    cache = RecurrentCache(
        spec=spec,
        weights=weights,
        x=xa,
        lengths=lens,
        h0=h0,
        c0=c0,
        buf=buf,
        batch_first=spec.batch_first,
        unbatched=unbatched,
        ws=old_ws,
    )
    if unbatched:
        out, h_n = out[:, 0], h_n[:, 0]
        c_n = None if c_n is None else c_n[:, 0]
    elif spec.batch_first:
        out = np.ascontiguousarray(out.transpose(1, 0, 2))
    state = (h_n, c_n) if spec.mode == "LSTM" else h_n
    return out, state, cache


def backward(
    layer: Any,
    cache: RecurrentCache,
    d_out: Any = None,
    d_hn: Any = None,
    d_cn: Any = None,
    *,
    need_dx: bool = True,
    n_threads: int | None = None,
):
    """Backpropagation through time for the cache of :func:`forward_train`.

    Parameters
    ----------
    layer : the layer (or spec) given to forward_train (only checked for consistency; may be None)
    d_out : gradient of the loss w.r.t. ``out`` (same shape), or None (zero)
    d_hn, d_cn : gradients w.r.t. the final states (L*D, B, P) / (L*D, B, H), or None (zero: truncated BPTT)

    Returns
    -------
    dx (shaped like x, or None without need_dx), dh0 (L*D, B, P), dc0 (L*D, B, H) or None,
    grads : dict of parameter gradients by torch names
    """
    if not isinstance(cache, RecurrentCache):
        raise errors.DTypeError(f"cache: expected the RecurrentCache of forward_train, got {type(cache).__name__}")
    spec = cache.spec
    if layer is not None and not isinstance(layer, RecurrentSpec):
        other = RecurrentSpec.from_layer(layer)
        if other.param_shapes() != spec.param_shapes() or other.mode != spec.mode:
            raise errors.ShapeError("backward: layer does not match the cache's layer")
    T, B = cache.x.shape[0], cache.x.shape[1]
    LD, H, P, D = spec.num_layers * spec.D, spec.hidden_size, spec.P, spec.D
    u = cache.unbatched

    def prep(a, name, shape_tm):
        if a is None:
            return None
        arr = _f32(a, name)
        if u:
            want = (shape_tm[0], shape_tm[2])
        elif spec.batch_first and name == "d_out":
            want = (shape_tm[1], shape_tm[0], shape_tm[2])
        else:
            want = shape_tm
        if arr.shape != want:
            raise errors.ShapeError(f"{name}: expected shape {want}, got {arr.shape}")
        if u:
            arr = arr.reshape(shape_tm)
        elif spec.batch_first and name == "d_out":
            arr = arr.transpose(1, 0, 2)
        return np.ascontiguousarray(arr)

    dout = prep(d_out, "d_out", (T, B, D * P))
    dhn = prep(d_hn, "d_hn", (LD, B, P))
    dcn = prep(d_cn, "d_cn", (LD, B, H)) if spec.mode == "LSTM" else None
    nt = _threads(None if n_threads is None else _integer(n_threads, "n_threads", 0))
    if cache.buf is None:
        raise errors.ShapeError("backward: this cache was re-used by a later forward_train")
    dx, dh0, dc0, glist, cache.ws = _tr().backward(
        spec.desc(),
        cache.weights,
        cache.x,
        cache.lengths,
        cache.h0,
        cache.c0,
        cache.buf,
        dout,
        dhn,
        dcn,
        need_dx,
        True,
        nt,
        cache.ws,
    )
    grads: dict[str, np.ndarray] = {}
    k = 0
    for layer_i in range(spec.num_layers):
        for sfx in ("", "_reverse")[:D]:
            n = f"l{layer_i}{sfx}"
            gw_ih, gw_hh, gb_ih, gb_hh, gw_hr = glist[k]
            grads[f"weight_ih_{n}"], grads[f"weight_hh_{n}"] = gw_ih, gw_hh
            if spec.bias:
                grads[f"bias_ih_{n}"], grads[f"bias_hh_{n}"] = gb_ih, gb_hh
            if spec.proj_size:
                grads[f"weight_hr_{n}"] = gw_hr
            k += 1
    if dx is not None:
        if u:
            dx = dx[:, 0]
        elif spec.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    if u:
        dh0 = dh0[:, 0]
        dc0 = None if dc0 is None else dc0[:, 0]
    return dx, dh0, dc0, grads


# ==================================================================================================
# Embedding / Linear (functional)
# ==================================================================================================
def _tokens(tokens: Any, name: str = "tokens") -> np.ndarray:
    idx = _array(tokens, name)
    if idx.dtype.kind not in "iu":
        raise errors.DTypeError(f"{name}: expected an integer array, got dtype {idx.dtype}")
    if idx.dtype.kind == "u" and idx.size and idx.max() > np.iinfo(np.int64).max:
        raise errors.ShapeError(f"{name}: expected values that fit int64, got {idx.max()}")
    return np.ascontiguousarray(idx, dtype=np.int64).reshape(idx.shape)


def _weight2d(weight: Any, name: str = "weight") -> np.ndarray:
    w = _f32(weight, name)
    if w.ndim != 2:
        raise errors.ShapeError(f"{name}: expected a 2-D array, got shape {w.shape}")
    return w


def embedding_forward(weight: np.ndarray, tokens: Any) -> np.ndarray:
    """weight (V, E), tokens (...) ints in [0, V) -> (..., E)."""
    w = _weight2d(weight)
    idx = _tokens(tokens)
    y = _tr().embedding_forward(idx.reshape(-1), w)
    return y.reshape(idx.shape + (w.shape[1],))


def embedding_backward(
    weight_shape: Sequence[int], tokens: Any, d_out: Any, padding_idx: int | None = None
) -> np.ndarray:
    """Gradient of the table (V, E): d_out (..., E) rows scatter-added at tokens (padding_idx skipped)."""
    try:
        ws = tuple(weight_shape)
    except TypeError:
        ws = None
    if ws is None or len(ws) != 2 or isinstance(weight_shape, str):
        raise errors.ShapeError(f"weight_shape: expected (V, E), got {weight_shape!r}")
    V, E = _integer(ws[0], "weight_shape[0]", 0), _integer(ws[1], "weight_shape[1]", 0)
    pad = -1 if padding_idx is None else _integer(padding_idx, "padding_idx")
    t = _tokens(tokens)
    dy = _f32(d_out, "d_out")
    if dy.shape != t.shape + (E,):
        raise errors.ShapeError(f"d_out: expected shape {t.shape + (E,)}, got {dy.shape}")
    return _tr().embedding_backward(t.reshape(-1), dy.reshape(-1, E), V, pad)


def linear_forward(x: Any, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x (..., I), weight (O, I), bias (O) -> (..., O)."""
    xa = _f32(x, "x")
    w = _weight2d(weight)
    if xa.ndim == 0 or xa.shape[-1] != w.shape[1]:
        raise errors.ShapeError(f"x: expected (..., {w.shape[1]}), got {xa.shape}")
    b = None if bias is None else _f32(bias, "bias")
    if b is not None and b.shape != (w.shape[0],):
        raise errors.ShapeError(f"bias: expected shape ({w.shape[0]},), got {b.shape}")
    y = _tr().linear_forward(xa.reshape(-1, w.shape[1]), w, b)
    return y.reshape(xa.shape[:-1] + (w.shape[0],))


def linear_backward(x: Any, weight: np.ndarray, d_out: Any, has_bias: bool = True, need_dx: bool = True):
    """-> (dx (..., I) or None, dweight (O, I), dbias (O) or None)."""
    xa = _f32(x, "x")
    w = _weight2d(weight)
    if xa.ndim == 0 or xa.shape[-1] != w.shape[1]:
        raise errors.ShapeError(f"x: expected (..., {w.shape[1]}), got {xa.shape}")
    dy = _f32(d_out, "d_out")
    if dy.shape != xa.shape[:-1] + (w.shape[0],):
        raise errors.ShapeError(f"d_out: expected {xa.shape[:-1] + (w.shape[0],)}, got {dy.shape}")
    dx, dw, db = _tr().linear_backward(xa.reshape(-1, w.shape[1]), w, dy.reshape(-1, w.shape[0]), has_bias, need_dx)
    return (None if dx is None else dx.reshape(xa.shape)), dw, db


# ==================================================================================================
# Losses: each returns (loss: float, gradient of the loss w.r.t. its first argument)
# ==================================================================================================
def cross_entropy(
    logits: Any, targets: Any, mask: Any = None, ignore_index: int = -100, need_grad: bool = True
) -> tuple[float, np.ndarray | None]:
    """Softmax cross-entropy over the last axis, mean over the counted positions (torch's 'mean').

    logits (..., V) (e.g. (T, B, V) per step) with V >= 1, targets (...) ints; positions where targets ==
    ignore_index (an integer) or mask == 0 (mask (...) bool/0-1, e.g. a padding mask) are not counted.

    Zero counted positions (an empty batch, or every position ignored/masked) give loss 0.0 and a zero
    gradient of the logits' shape, not torch's NaN of a mean over nothing: one empty batch in a training
    loop must not turn the running loss into NaN.
    """
    z = _f32(logits, "logits")
    if z.ndim < 1:
        raise errors.ShapeError(f"logits: expected (..., V), got shape {z.shape}")
    V = z.shape[-1]
    if V == 0:
        raise errors.ShapeError(f"logits: expected (..., V) with V >= 1 classes, got shape {z.shape}")
    t = _tokens(targets, "targets")
    if t.shape != z.shape[:-1]:
        raise errors.ShapeError(f"targets: expected shape {z.shape[:-1]}, got {t.shape}")
    ign = _integer(ignore_index, "ignore_index")
    m = None
    if mask is not None:
        m = _array(mask, "mask")
        if m.dtype.kind not in "biuf":
            raise errors.DTypeError(f"mask: expected bool or 0/1 numbers, got dtype {m.dtype}")
        if m.shape != t.shape:
            raise errors.ShapeError(f"mask: expected shape {t.shape}, got {m.shape}")
        m = np.ascontiguousarray(m != 0, dtype=np.uint8).reshape(-1)
    loss, d, _ = _tr().softmax_xent(z.reshape(-1, V), t.reshape(-1), m, ign, need_grad, _threads())
    return float(loss), (None if d is None else d.reshape(z.shape))


def sequence_mask(lengths: Any, T: int, batch_first: bool = False) -> np.ndarray:
    """Padding mask from lengths (B,) ints >= 0: (T, B) (or (B, T)) bool, True where t < lengths[b]."""
    la = _array(lengths, "lengths")
    if la.dtype.kind not in "iu" and la.size:
        raise errors.DTypeError(f"lengths: expected (B,) integers, got dtype {la.dtype}")
    if la.ndim != 1:
        raise errors.ShapeError(f"lengths: expected shape (B,), got {la.shape}")
    la = la.astype(np.int64)
    if la.size and la.min() < 0:
        raise errors.ShapeError(f"lengths: expected values >= 0, got {la.min()}")
    T = _integer(T, "T", 0)
    m = np.arange(T)[:, None] < la[None, :]
    return m.T.copy() if batch_first else m


def mse_loss(pred: Any, target: Any, need_grad: bool = True) -> tuple[float, np.ndarray | None]:
    """Mean squared error over all elements (zero elements: loss 0.0 and an empty gradient, not torch's NaN)."""
    p = _f32(pred, "input")
    t = _f32(target, "target")
    if p.shape != t.shape:
        raise errors.ShapeError(f"target: expected shape {p.shape}, got {t.shape}")
    loss, d = _tr().mse(p, t, need_grad)
    return float(loss), d


def bce_with_logits(logits: Any, target: Any, need_grad: bool = True) -> tuple[float, np.ndarray | None]:
    """Binary cross-entropy of sigmoid(logits) against targets in [0, 1], mean over all elements.

    Zero elements give loss 0.0 and an empty gradient (torch's mean over nothing is NaN)."""
    p = _f32(logits, "input")
    t = _f32(target, "target")
    if p.shape != t.shape:
        raise errors.ShapeError(f"target: expected shape {p.shape}, got {t.shape}")
    loss, d = _tr().bce_with_logits(p, t, need_grad)
    return float(loss), d


# ==================================================================================================
# Clipping
# ==================================================================================================
def clip_grad_norm_(parameters: Any, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale all gradients in place so that their global norm is at most max_norm (torch's rule:
    factor max_norm / (norm + 1e-6) when < 1). Returns the total norm before clipping."""
    mn = _real(max_norm, "max_norm", 0.0)
    nt = _real(norm_type, "norm_type")
    grads = [p.grad for p in _params_of(parameters) if p.grad is not None]
    return float(_tr().clip_grad_norm(grads, mn, nt))


def clip_grad_value_(parameters: Any, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] (clip_value >= 0), in place."""
    cv = _real(clip_value, "clip_value", 0.0)
    grads = [p.grad for p in _params_of(parameters) if p.grad is not None]
    _tr().clip_grad_value(grads, cv)


clip_grad_norm = clip_grad_norm_
clip_grad_value = clip_grad_value_


# ==================================================================================================
# Optimizers (update Parameter.data in place, in C)
# ==================================================================================================
class Optimizer:
    def __init__(self, params: Any, defaults: dict) -> None:
        self.params = _params_of(params)
        if not self.params:
            raise errors.ArgumentError(f"params: {type(self).__name__} got an empty parameter list")
        self.defaults = dict(defaults)
        self.state: dict[int, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0.0

    @property
    def lr(self) -> float:
        return float(self.defaults["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        self.defaults["lr"] = _real(value, "lr", 0.0)


class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, Nesterov, weight decay (L2 added to the gradient)."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        _real(lr, "lr", 0.0)
        _real(momentum, "momentum", 0.0)
        _real(dampening, "dampening")
        _real(weight_decay, "weight_decay", 0.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise errors.ArgumentError(
                f"nesterov: Nesterov momentum requires momentum > 0 and dampening = 0, "
                f"got momentum={momentum}, dampening={dampening}"
            )
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
                "maximize": maximize,
            },
        )

    def step(self) -> None:
        d, tr = self.defaults, _tr()
        for p in self.params:
            if p.grad is None:
                continue
            st = self.state.setdefault(id(p), {})
            first = "momentum_buffer" not in st
            buf = None
            if d["momentum"] != 0:
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = np.zeros_like(p.data)
            tr.sgd_step(
                p.data,
                p.grad,
                buf,
                d["lr"],
                d["momentum"],
                d["dampening"],
                d["weight_decay"],
                d["nesterov"],
                d["maximize"],
                first,
            )


class Adam(Optimizer):
    """torch.optim.Adam (weight_decay is L2 added to the gradient); AdamW decouples it."""

    _decoupled = False

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
    ) -> None:
        _real(lr, "lr", 0.0)
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise errors.ArgumentError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        _real(betas[0], "betas[0]", 0.0, 1.0, hi_open=True)
        _real(betas[1], "betas[1]", 0.0, 1.0, hi_open=True)
        _real(eps, "eps", 0.0)
        _real(weight_decay, "weight_decay", 0.0)
        super().__init__(
            params,
            {
                "lr": lr,
                "betas": tuple(betas),
                "eps": eps,
                "weight_decay": weight_decay,
                "amsgrad": amsgrad,
                "maximize": maximize,
            },
        )

    def step(self) -> None:
        d, tr = self.defaults, _tr()
        for p in self.params:
            if p.grad is None:
                continue
            st = self.state.get(id(p))
            if st is None:
                st = self.state[id(p)] = {
                    "step": 0,
                    "exp_avg": np.zeros_like(p.data),
                    "exp_avg_sq": np.zeros_like(p.data),
                    "max_exp_avg_sq": np.zeros_like(p.data) if d["amsgrad"] else None,
                }
            st["step"] += 1
            tr.adam_step(
                p.data,
                p.grad,
                st["exp_avg"],
                st["exp_avg_sq"],
                st["max_exp_avg_sq"],
                d["lr"],
                d["betas"][0],
                d["betas"][1],
                d["eps"],
                d["weight_decay"],
                self._decoupled,
                d["amsgrad"],
                d["maximize"],
                st["step"],
            )


class AdamW(Adam):
    """torch.optim.AdamW: p *= 1 - lr * weight_decay, then the Adam step."""

    _decoupled = True

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)


# ==================================================================================================
# Trainable modules
# ==================================================================================================
class Module:
    """Base of the trainable wrappers: named Parameters, forward (keeps a cache), backward (accumulates
    Parameter.grad and returns the gradient w.r.t. the input)."""

    def __init__(self) -> None:
        self._params: dict[str, Parameter] = {}

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        return [(prefix + n, p) for n, p in self._params.items()]

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> dict[str, np.ndarray]:
        return {n: p.data.copy() for n, p in self.named_parameters()}

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.forward(*args, **kw)


class TrainRecurrent(Module):
    """Trainable RNN/LSTM/GRU. ``forward(x, hx=None, lengths=None) -> (out, state)``;
    ``backward(d_out, d_hn=None, d_cn=None) -> dx``; the gradients of the initial states are left in
    ``self.dh0`` / ``self.dc0``."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer
        self.spec = RecurrentSpec.from_layer(layer)
        for n, a in layer.state_dict().items():
            self._params[n] = Parameter(n, a)
        self._cache: RecurrentCache | None = None
        self.dh0 = self.dc0 = None

    def forward(self, x: Any, hx: Any = None, lengths: Any = None):
        out, state, self._cache = forward_train(self.spec, x, hx, lengths, params=self._params, reuse=self._cache)
        return out, state

    def backward(self, d_out: Any = None, d_hn: Any = None, d_cn: Any = None, need_dx: bool = True):
        if self._cache is None:
            raise errors.ShapeError("backward: call forward first")
        dx, self.dh0, self.dc0, grads = backward(None, self._cache, d_out, d_hn, d_cn, need_dx=need_dx)
        for n, g in grads.items():
            self._params[n].accumulate(g)
        return dx


class TrainEmbedding(Module):
    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer
        self._params["weight"] = Parameter("weight", layer.state_dict()["weight"])
        self.padding_idx = getattr(layer, "padding_idx", None)
        self._tokens = None

    def forward(self, tokens: Any) -> np.ndarray:
        self._tokens = _tokens(tokens)
        return embedding_forward(self._params["weight"].data, self._tokens)

    def backward(self, d_out: Any, need_dx: bool = False):
        w = self._params["weight"]
        w.accumulate(embedding_backward(w.shape, self._tokens, d_out, self.padding_idx))


class TrainLinear(Module):
    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer
        for n, a in layer.state_dict().items():
            self._params[n] = Parameter(n, a)
        self._x = None

    def forward(self, x: Any) -> np.ndarray:
        self._x = _f32(x, "x")
        b = self._params.get("bias")
        return linear_forward(self._x, self._params["weight"].data, None if b is None else b.data)

    def backward(self, d_out: Any, need_dx: bool = True):
        dx, dw, db = linear_backward(self._x, self._params["weight"].data, d_out, "bias" in self._params, need_dx)
        self._params["weight"].accumulate(dw)
        if db is not None:
            self._params["bias"].accumulate(db)
        return dx


class TrainActivation(Module):
    """Tanh / ReLU / Sigmoid between layers."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer
        self.kind = layer.config()["type"]
        if self.kind not in ("Tanh", "ReLU", "Sigmoid"):
            raise errors.UnsupportedError(
                f"training: {self.kind} is not trainable here; use the losses on "
                "logits (cross_entropy, bce_with_logits) instead of Softmax/Sigmoid heads"
            )
        self._y = None

    def forward(self, x: Any) -> np.ndarray:
        x = _f32(x, "x")
        if self.kind == "Tanh":
            self._y = np.tanh(x)
        elif self.kind == "ReLU":
            self._y = np.maximum(x, 0.0)
        else:
            self._y = (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
        return self._y

    def backward(self, d_out: Any, need_dx: bool = True):
        y, d = self._y, _f32(d_out, "d_out")
        if self.kind == "Tanh":
            return d * (1.0 - y * y)
        if self.kind == "ReLU":
            return d * (y > 0)
        return d * y * (1.0 - y)


def _wrap(layer: Any) -> Module:
    if isinstance(layer, Module):
        return layer
    if getattr(layer, "mode", None) in _GATES:
        return TrainRecurrent(layer)
    kind = layer.config().get("type") if hasattr(layer, "config") else None
    if kind == "Embedding":
        return TrainEmbedding(layer)
    if kind == "Linear":
        return TrainLinear(layer)
    if kind in ("Tanh", "ReLU", "Sigmoid", "Softmax", "LogSoftmax"):
        return TrainActivation(layer)
    raise errors.UnsupportedError(f"training: cannot train a {type(layer).__name__} ({kind})")


class Trainable(Module):
    """Trainable view of an rnnfast layer or ``rnnfast.models.Sequential``.

    The parameters are float32 copies owned here (Parameter.data, updated in place by the optimizers);
    :meth:`sync` writes them back into the wrapped model (``fit`` does it at the end).

    ``forward(x, lengths=None, state=None)`` runs the chain like ``Sequential.__call__`` (a recurrent layer
    passes ``out`` on, or its final hidden state when the Sequential is many_to_one) and returns the
    output; the final state of every recurrent layer is in ``self.final_state`` (a list), which can be
    given back as ``state=`` to continue a sequence (truncated BPTT: gradients stop at the chunk).
    ``backward(d_output)`` accumulates every Parameter.grad and returns the gradient w.r.t. a float input
    (None for token input).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        if hasattr(model, "named_layers"):
            items = list(model.named_layers())
            self.many_to_one = bool(getattr(model, "many_to_one", False))
            self.prefixed = True
        else:
            items = [("", model)]
            self.many_to_one = False
            self.prefixed = False
        self.children = [(n, _wrap(layer)) for n, layer in items]
        rec = [i for i, (_, m) in enumerate(self.children) if isinstance(m, TrainRecurrent)]
        self._last_rec = rec[-1] if rec else None
        self.final_state: list[Any] = []
        self._m2o: tuple | None = None

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        out = []
        for n, m in self.children:
            out += m.named_parameters(prefix + (n + "." if self.prefixed else ""))
        return out

    def forward(self, x: Any, lengths: Any = None, state: Sequence[Any] | None = None) -> np.ndarray:
        y = x
        self.final_state = []
        ri = 0
        for i, (_, m) in enumerate(self.children):
            if isinstance(m, TrainRecurrent):
                if state is not None and (not isinstance(state, Sequence) or len(state) <= ri):
                    n_rec = sum(isinstance(c, TrainRecurrent) for _, c in self.children)
                    raise errors.ShapeError(
                        f"state: expected a list of {n_rec} states (one per recurrent layer, like final_state), "
                        f"got {type(state).__name__} of length {len(state) if isinstance(state, Sequence) else '?'}"
                    )
                hx = None if state is None else state[ri]
                out, st = m.forward(y, hx, lengths)
                self.final_state.append(st)
                ri += 1
                if self.many_to_one and i == self._last_rec:
                    h_n = st[0] if isinstance(st, tuple) else st
                    D = m.spec.D
                    self._m2o = (h_n.shape, out.shape, D)
                    y = np.concatenate(list(h_n[-D:]), axis=-1)
                else:
                    y = out
            else:
                y = m.forward(y)
        return y

    def backward(self, d_output: Any) -> np.ndarray | None:
        d = _f32(d_output, "d_output")
        for i in range(len(self.children) - 1, -1, -1):
            m = self.children[i][1]
            need_dx = i > 0 or not isinstance(m, TrainEmbedding)
            if isinstance(m, TrainRecurrent):
                if self.many_to_one and i == self._last_rec:
                    hshape, _oshape, D = self._m2o
                    d_hn = np.zeros(hshape, np.float32)
                    parts = np.split(d, D, axis=-1)
                    for k in range(D):
                        d_hn[hshape[0] - D + k] = parts[k]
                    d = m.backward(None, d_hn, None, need_dx=True)
                else:
                    d = m.backward(d, None, None, need_dx=True)
            else:
                d = m.backward(d, need_dx=need_dx)
        return d

    def sync(self) -> Any:
        """Write the trained parameters into the wrapped model (load_state_dict) and return it."""
        self.model.load_state_dict(self.state_dict())
        return self.model


# ==================================================================================================
# Truncated BPTT helper and the training loop
# ==================================================================================================
def detach_state(state: Any) -> Any:
    """Copies of carried states (the next chunk starts from their values; gradients stop here)."""
    if state is None:
        return None
    if isinstance(state, (list, tuple)) and not isinstance(state, np.ndarray):
        return type(state)(detach_state(s) for s in state)
    return np.array(state, dtype=np.float32, copy=True)


def _loss_fn(loss: Any) -> Callable:
    if callable(loss):
        return loss
    table = {"cross_entropy": cross_entropy, "mse": mse_loss, "bce_with_logits": bce_with_logits}
    if loss not in table:
        raise errors.ArgumentError(f"loss: expected one of {sorted(table)} or a callable, got {loss!r}")
    return table[loss]


def fit(
    model: Any,
    batches: Any,
    loss: Any = "cross_entropy",
    optimizer: Optimizer | None = None,
    epochs: int = 1,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    stateful: bool = False,
    max_steps: int | None = None,
    log_every: int = 50,
    save_path: str | None = None,
    progress: bool = True,
    file: Any = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, list]:
    """Train ``model`` (a Trainable, or an rnnfast layer/Sequential which gets wrapped).

    Parameters
    ----------
    batches : an iterable of (x, y) or (x, y, lengths) (a list is re-used every epoch), or a callable
        epoch -> iterable. With lengths, cross_entropy masks the padded steps.
    loss : "cross_entropy" (per-step, logits (..., V) vs tokens (...)), "mse", "bce_with_logits", or a
        callable (output, y) -> (loss, d_output)
    optimizer : default Adam(lr=1e-3)
    clip_norm / clip_value : gradient clipping each step (clip_norm also reports the norm)
    stateful : carry the recurrent states from batch to batch (truncated BPTT over a long stream)
    save_path : save the trained model in the native format (rnnfast.loaders.native) at the end

    Returns
    -------
    history : {"loss": [...], "grad_norm": [...], "tokens_per_s": [...]} per step
    """
    epochs = _integer(epochs, "epochs", 0)
    log_every = _integer(log_every, "log_every", 0)
    if max_steps is not None:
        max_steps = _integer(max_steps, "max_steps", 0)
    if clip_norm is not None:
        _real(clip_norm, "clip_norm", 0.0)
    if clip_value is not None:
        _real(clip_value, "clip_value", 0.0)
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise errors.DTypeError(f"optimizer: expected an rnnfast.train Optimizer, got {type(optimizer).__name__}")
    lossf = _loss_fn(loss)
    net = model if isinstance(model, Trainable) else Trainable(model)
    opt = optimizer or Adam(net.parameters(), lr=1e-3)
    out = file or sys.stderr
    hist: dict[str, list] = {"loss": [], "grad_norm": [], "tokens_per_s": []}
    step, t_start, seen = 0, time.perf_counter(), 0
    for epoch in range(epochs):
        it = batches(epoch) if callable(batches) else batches
        state = None
        run_loss, run_n, t_log, tok_log = 0.0, 0, time.perf_counter(), 0
        for batch in it:
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                raise errors.ShapeError(
                    f"batches: expected items (x, y) or (x, y, lengths), got {type(batch).__name__}"
                    + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                )
            x, y = batch[0], batch[1]
            lengths = batch[2] if len(batch) > 2 else None
            t0 = time.perf_counter()
            output = net.forward(x, lengths=lengths, state=state if stateful else None)
            if lengths is not None and lossf is cross_entropy and np.ndim(y) >= 2:  # per-step targets
                rec = [m for _, m in net.children if isinstance(m, TrainRecurrent)]
                bf = rec[0].spec.batch_first if rec else False
                mask = sequence_mask(lengths, np.asarray(y).shape[1 if bf else 0], bf)
                value, dout = cross_entropy(output, y, mask=mask)
            else:
                value, dout = lossf(output, y)
            net.zero_grad()
            net.backward(dout)
            gn = clip_grad_norm_(net.parameters(), clip_norm) if clip_norm else float("nan")
            if clip_value:
                clip_grad_value_(net.parameters(), clip_value)
            opt.step()
            if stateful:
                state = detach_state(net.final_state)
            dt = time.perf_counter() - t0
            ntok = int(np.asarray(x).shape[0] * (np.asarray(x).shape[1] if np.asarray(x).ndim > 1 else 1))
            seen += ntok
            tok_log += ntok
            step += 1
            hist["loss"].append(value)
            hist["grad_norm"].append(gn)
            hist["tokens_per_s"].append(ntok / dt if dt > 0 else float("inf"))
            run_loss += value
            run_n += 1
            if on_step is not None:
                on_step(step, value)
            if progress and (step % max(1, log_every) == 0):
                el = time.perf_counter() - t_log
                print(
                    f"epoch {epoch + 1} step {step:6d}  loss {run_loss / run_n:.4f}  "
                    f"grad_norm {gn:.3f}  {tok_log / max(el, 1e-9):,.0f} tok/s  "
                    f"elapsed {time.perf_counter() - t_start:.1f}s",
                    file=out,
                    flush=True,
                )
                run_loss, run_n, t_log, tok_log = 0.0, 0, time.perf_counter(), 0
            if max_steps is not None and step >= max_steps:
                break
        if max_steps is not None and step >= max_steps:
            break
    if progress:
        el = time.perf_counter() - t_start
        print(f"done: {step} steps in {el:.1f}s ({seen / max(el, 1e-9):,.0f} tok/s)", file=out, flush=True)
    trained = net.sync()
    if save_path:
        from .loaders import native

        native.save(trained, save_path)
    return hist


# ==================================================================================================
# Text generation with the shipped character-level model
# ==================================================================================================
CHAR_LM_PATH = os.path.join(os.path.dirname(__file__), "data", "char_lm.safetensors")


def save_char_lm(model: Any, vocab: str, path: str = CHAR_LM_PATH, info: dict | None = None) -> None:
    """Save a Sequential(emb, rnn, fc) char model in the native format with its vocabulary."""
    from .loaders import native

    meta = {
        "format": native.FORMAT_NAME,
        "rnnfast_format_version": native.FORMAT_VERSION,
        "architecture": json.dumps(model.config(), separators=(",", ":")),
        "vocab": json.dumps(vocab),
        "training": json.dumps(info or {}),
    }
    native.write_safetensors(path, model.state_dict(), meta)


def load_char_lm(path: str = CHAR_LM_PATH) -> tuple[Any, str]:
    """-> (Sequential model, vocabulary string)."""
    from .loaders import native

    if not os.path.exists(path):
        raise errors.FormatError(f"{path}: the character model is missing; train it with examples/char_lm.py")
    model = native.load(path)
    meta = native.SafetensorsFile(path).metadata
    if "vocab" not in meta:
        raise errors.FormatError(f"{path}: no 'vocab' in the metadata: not a character model")
    return model, json.loads(meta["vocab"])


def generate(
    prompt: str = "",
    n_chars: int = 200,
    temperature: float = 0.8,
    seed: int | None = None,
    path: str = CHAR_LM_PATH,
    model: Any = None,
    vocab: str | None = None,
) -> str:
    """Continue ``prompt`` by n_chars characters sampled from the shipped character-level model.

    temperature > 0 scales the logits (lower: more conservative); 0 picks the most likely character.
    Characters of the prompt outside the vocabulary are skipped. Returns only the generated text.
    """
    if n_chars < 0:
        raise ValueError(f"n_chars: expected >= 0, got {n_chars}")
    if not (temperature >= 0):
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if model is None:
        model, vocab = load_char_lm(path)
    assert vocab is not None
    index = {c: i for i, c in enumerate(vocab)}
    layers = list(model.named_layers())
    emb, fc = layers[0][1], layers[-1][1]
    rnns = [layer for _, layer in layers[1:-1]]
    rng = np.random.default_rng(seed)
    ids = [index[c] for c in prompt if c in index]
    if not ids:
        ids = [index.get("\n", index.get(" ", 0))]
    states: list[Any] = [None] * len(rnns)

    def step(tokens: list[int]) -> np.ndarray:
        h = emb.weight[np.asarray(tokens)][:, None, :]  # (T, 1, E)
        for k, rnn in enumerate(rnns):
            h, states[k] = rnn(h, states[k])
        return fc(h[-1, 0])

    logits = step(ids)
    out = []
    for _ in range(int(n_chars)):
        z = logits.astype(np.float64)
        if temperature == 0:
            nxt = int(np.argmax(z))
        else:
            z = z / temperature
            z -= z.max()
            p = np.exp(z)
            p /= p.sum()
            nxt = int(rng.choice(len(p), p=p))
        out.append(vocab[nxt])
        logits = step([nxt])
    return "".join(out)


def add_generate_arguments(parser: Any) -> None:
    """Arguments of ``rnnfast generate`` (for rnnfast/commands.py)."""
    parser.add_argument("--prompt", default="", help="text to continue (characters outside the vocabulary skipped)")
    parser.add_argument("--n-chars", type=int, default=300, help="characters to generate (default 300)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    parser.add_argument("--model", default=CHAR_LM_PATH, help="character model (default: the shipped one)")


def run_generate(args: Any) -> int:
    """``rnnfast generate``: print the prompt and its continuation. Returns the exit status."""
    try:
        text = generate(args.prompt, args.n_chars, args.temperature, args.seed, path=args.model)
    except (errors.RnnfastError, ValueError) as exc:
        print(f"rnnfast generate: error: {exc}", file=sys.stderr)
        return 1
    print(args.prompt + text)
    return 0


def unigram_entropy(text: str) -> float:
    """Entropy (nats/char) of the character frequencies of text: the loss of the best context-free model."""
    _, counts = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Module",
    "Optimizer",
    "Parameter",
    "RecurrentSpec",
    "TrainEmbedding",
    "TrainLinear",
    "TrainRecurrent",
    "Trainable",
    "backward",
    "bce_with_logits",
    "clip_grad_norm",
    "clip_grad_norm_",
    "clip_grad_value",
    "clip_grad_value_",
    "cross_entropy",
    "detach_state",
    "embedding_backward",
    "embedding_forward",
    "fit",
    "forward_train",
    "generate",
    "linear_backward",
    "linear_forward",
    "load_char_lm",
    "mse_loss",
    "save_char_lm",
    "sequence_mask",
    "unigram_entropy",
]
