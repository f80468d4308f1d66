"""Small layers around the recurrent core, so that a whole exported model runs in rnnfast.

A typical model is ``Embedding -> LSTM/GRU/RNN (one or more) -> Linear -> Softmax``. The recurrent layers
are the C core's (:class:`rnnfast.LSTM`, :class:`rnnfast.GRU`, :class:`rnnfast.RNN`); the layers here are
small and written in vectorised NumPy float32.

Every layer has the same small interface as the core's layers::

    y = layer(x)
    layer.state_dict() -> dict[str, np.ndarray]      # PyTorch names: "weight", "bias", "0.weight", ...
    layer.load_state_dict(state, strict=True)
    layer.config() -> dict                            # JSON-able architecture, {"type": ..., ...}
    model_from_config(cfg) -> layer                   # inverse of config(), for every layer type

Shape glossary: T=time B=batch I=input H=hidden E=embedding V=vocabulary O=output D=directions.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import errors

RECURRENT_TYPES = ("LSTM", "GRU", "RNN")
_OPTIONAL_PARAM = re.compile(r"(^|\.)weight_peep_l\d+(_reverse)?$")


def is_optional_param(key: str) -> bool:
    """Parameters a layer accepts without declaring them in its config (LSTM peepholes from ONNX)."""
    return bool(_OPTIONAL_PARAM.search(key))


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _core():
    """The lead's layer module (imported lazily: rnnfast/__init__ imports this module)."""
    try:
        from . import layers as core  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - only while the core is not built
        raise errors.UnsupportedError(f"the rnnfast core layers are not available ({exc})") from exc
    return core


def is_recurrent(layer: Any) -> bool:
    """True for the core's LSTM/GRU/RNN and for :class:`Reversed` wrapping one."""
    if isinstance(layer, Reversed):
        return True
    cfg = getattr(layer, "config", None)
    if cfg is None:
        return False
    try:
        return cfg().get("type") in RECURRENT_TYPES
    except Exception:  # noqa: BLE001 - an object whose config() fails is not one of ours
        return False


def _float_param(name: str, value: Any, shape: tuple[int, ...], owner: str) -> np.ndarray:
    """Checks one incoming parameter and returns it as a fresh C-contiguous float32 array."""
    arr = value
    if hasattr(arr, "detach"):  # a torch tensor
        arr = arr.detach().cpu().numpy()
    try:
        arr = np.asarray(arr)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise errors.DTypeError(f"{owner}: parameter {name!r} is not an array ({exc})") from None
    if arr.dtype.kind != "f":
        raise errors.DTypeError(f"{owner}: parameter {name!r} must be a float array, got dtype {arr.dtype}")
    if tuple(arr.shape) != tuple(shape):
        raise errors.StateDictError(
            f"{owner}: parameter {name!r} expected shape {tuple(shape)}, got {tuple(arr.shape)}"
        )
    return np.array(arr, dtype=np.float32, order="C", copy=True)


def _check_keys(owner: str, expected: list[str], state: Mapping[str, Any], strict: bool) -> None:
    if not isinstance(state, Mapping):  # (None or an int leaked TypeError from `k in state`)
        raise errors.StateDictError(
            f"{owner}.load_state_dict: expected a mapping of names to arrays, got {type(state).__name__}"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or (strict and unexpected):
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if strict and unexpected:
            parts.append(f"unexpected {unexpected}")
        raise errors.StateDictError(f"{owner}.load_state_dict: " + "; ".join(parts))


def _as_float32(x: Any, name: str = "x") -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise errors.DTypeError(f"{name}: expected a numeric array, got {type(x).__name__} ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise errors.DTypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _int_arg(owner: str, name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise errors.ShapeError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise errors.ShapeError(f"{owner}: {name} must be an int >= {minimum}, got {value}")
    return int(value)


class Layer:
    """Base of the small layers: parameters live in ``self._params`` (name -> float32 array)."""

    _params: dict[str, np.ndarray]


    def __reduce__(self):
        from .loaders.native import reduce_model

        return reduce_model(self)
    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the parameters, PyTorch names."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Replace the parameters. Shapes must match; float16/32/64 accepted, stored as float32."""
        owner = type(self).__name__
        _check_keys(owner, list(self._params), state, strict)
        new = {k: _float_param(k, state[k], v.shape, owner) for k, v in self._params.items()}
        self._params.update(new)

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self._params.values()))

    def config(self) -> dict:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def __repr__(self) -> str:
        cfg = {k: v for k, v in self.config().items() if k != "type"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"


# --------------------------------------------------------------------------------------------------
# Embedding, Linear
# --------------------------------------------------------------------------------------------------
class Embedding(Layer):
    """A lookup table, like ``torch.nn.Embedding``.

    Parameters
    ----------
    num_embeddings : V, the vocabulary size
    embedding_dim : E
    padding_idx : kept for PyTorch compatibility (only matters for training)
    mask_zero : Keras' masking: token 0 is padding. A :class:`Sequential` starting with such an Embedding
        skips the masked steps in its recurrent layers (lengths come from the mask; see Sequential).

    ``__call__(tokens)``: integer tokens of any shape (...) -> float32 (..., E). Float tokens are accepted
    when they hold whole numbers (Keras feeds floats); anything else raises DTypeError, an index outside
    [0, V) raises ShapeError (a ValueError).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        seed: int | None = None,
        mask_zero: bool = False,
    ) -> None:
        V = _int_arg("Embedding", "num_embeddings", num_embeddings, 0)
        E = _int_arg("Embedding", "embedding_dim", embedding_dim, 0)
        if padding_idx is not None:
            padding_idx = int(padding_idx)
            if padding_idx < 0:
                padding_idx += V
            if not 0 <= padding_idx < max(V, 1):
                raise errors.ShapeError(f"Embedding: padding_idx must be in [-{V}, {V}), got {padding_idx}")
        self.num_embeddings, self.embedding_dim, self.padding_idx = V, E, padding_idx
        self.mask_zero = bool(mask_zero)
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((V, E), dtype=np.float32)
        if padding_idx is not None:
            w[padding_idx] = 0.0
        self._params = {"weight": w}

    @property
    def weight(self) -> np.ndarray:
        return self._params["weight"]

    def __call__(self, tokens: Any) -> np.ndarray:
        if hasattr(tokens, "detach"):
            tokens = tokens.detach().cpu().numpy()
        idx = np.asarray(tokens)
        if idx.dtype.kind == "f":
            if not np.all(np.isfinite(idx)) or not np.all(idx == np.floor(idx)):
                raise errors.DTypeError("Embedding: tokens must be integers, got non-integer float values")
            if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):  # before a wrapping cast
                bad = idx.min() if idx.min() < 0 else idx.max()
                raise errors.ShapeError(f"Embedding: token index must be in [0, {self.num_embeddings}), got {bad:g}")
            idx = idx.astype(np.int64)
        elif idx.dtype.kind == "b" or idx.dtype.kind not in "iu":
            raise errors.DTypeError(f"Embedding: tokens must be an integer array, got dtype {idx.dtype}")
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.num_embeddings:
                bad = lo if lo < 0 else hi
                raise errors.ShapeError(
                    f"Embedding: token index must be in [0, {self.num_embeddings}), got {bad}"
                )
        return self._params["weight"][idx]

    def config(self) -> dict:
        return {
            "type": "Embedding",
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            **({"mask_zero": True} if self.mask_zero else {}),
        }


class Linear(Layer):
    """``y = x W^T + b`` on the last axis, like ``torch.nn.Linear``.

    weight: (O, I), bias: (O,). ``__call__(x)``: (..., I) -> (..., O) float32.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, seed: int | None = None
    ) -> None:
        self.in_features = _int_arg("Linear", "in_features", in_features, 0)
        self.out_features = _int_arg("Linear", "out_features", out_features, 0)
        self.bias = bool(bias)
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(max(self.in_features, 1))
        self._params = {
            "weight": ((rng.random((self.out_features, self.in_features), dtype=np.float32) * 2 - 1) * k)
        }
        if self.bias:
            self._params["bias"] = (rng.random(self.out_features, dtype=np.float32) * 2 - 1) * np.float32(k)

    @property
    def weight(self) -> np.ndarray:
        return self._params["weight"]

    def __call__(self, x: Any) -> np.ndarray:
        x = _as_float32(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise errors.ShapeError(
                f"Linear: x expected shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        y = x @ self._params["weight"].T
        if self.bias:
            y += self._params["bias"]
        return np.ascontiguousarray(y, dtype=np.float32)

    def config(self) -> dict:
        return {
            "type": "Linear",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
        }


# --------------------------------------------------------------------------------------------------
# activations (no parameters)
# --------------------------------------------------------------------------------------------------
class _Activation(Layer):
    def __init__(self) -> None:
        self._params = {}

    def config(self) -> dict:
        return {"type": type(self).__name__}


class _DimActivation(_Activation):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise errors.ShapeError(f"{type(self).__name__}: dim must be an int, got {dim!r}")
        self.dim = int(dim)

    def _axis(self, x: np.ndarray) -> int:
        if not -x.ndim <= self.dim < max(x.ndim, 1):
            raise errors.ShapeError(
                f"{type(self).__name__}: dim {self.dim} out of range for input of shape {tuple(x.shape)}"
            )
        return self.dim

    def config(self) -> dict:
        return {"type": type(self).__name__, "dim": self.dim}


class Softmax(_DimActivation):
    """``exp(x) / sum(exp(x))`` along ``dim`` (default the last), computed stably."""

    def __call__(self, x: Any) -> np.ndarray:
        x = _as_float32(x)
        ax = self._axis(x)
        with np.errstate(invalid="ignore", over="ignore"):
            e = np.exp(x - np.max(x, axis=ax, keepdims=True))
            return (e / np.sum(e, axis=ax, keepdims=True)).astype(np.float32)


class LogSoftmax(_DimActivation):
    """``x - logsumexp(x)`` along ``dim`` (default the last)."""

    def __call__(self, x: Any) -> np.ndarray:
        x = _as_float32(x)
        ax = self._axis(x)
        with np.errstate(invalid="ignore", over="ignore"):
            m = np.max(x, axis=ax, keepdims=True)
            s = x - m
            return (s - np.log(np.sum(np.exp(s), axis=ax, keepdims=True))).astype(np.float32)


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))`` elementwise (no overflow warnings, exact limits)."""

    def __call__(self, x: Any) -> np.ndarray:
        x = _as_float32(x)
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


class Tanh(_Activation):
    def __call__(self, x: Any) -> np.ndarray:
        return np.tanh(_as_float32(x))


class ReLU(_Activation):
    def __call__(self, x: Any) -> np.ndarray:
        x = _as_float32(x)
        return np.where(x > 0, x, np.where(np.isnan(x), x, 0.0)).astype(np.float32)  # NaN propagates


# --------------------------------------------------------------------------------------------------
# Reversed: run a recurrent layer on the time-reversed sequences
# --------------------------------------------------------------------------------------------------
def reverse_padded(x: np.ndarray, lengths: np.ndarray | None, time_axis: int) -> np.ndarray:
    """Reverse each sequence along ``time_axis`` within its own length; padding stays in place.

    x: (T, B, ...) with time_axis=0 or (B, T, ...) with time_axis=1. lengths: (B,) or None (= all T).
    """
    T = x.shape[time_axis]
    if lengths is None:
        return np.flip(x, axis=time_axis).copy()
    B = x.shape[1 - time_axis]
    t = np.arange(T)[:, None]
    L = np.asarray(lengths, dtype=np.int64)[None, :]
    src = np.where(t < L, L - 1 - t, t)  # (T, B)
    b = np.broadcast_to(np.arange(B)[None, :], (T, B))
    if time_axis == 0:
        return x[src, b]
    return x[b.T, src.T]


def _checked_lengths(lengths: Any, B: int, T: int) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" and arr.size:
        raise errors.DTypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise errors.ShapeError(f"lengths: expected shape ({B},) (one per sequence), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > T):
        raise errors.ShapeError(f"lengths: expected values in [0, {T}], got {arr.tolist()}")
    return arr.astype(np.int64)


class Reversed:
    """Runs a one-direction recurrent layer on each sequence reversed in time (within its length).

    This is ONNX's ``direction="reverse"`` and Keras' ``go_backwards=True``. With ``realign=True``
    (ONNX) output step t is the state after having read the input from its end down to step t; with
    ``realign=False`` (Keras go_backwards) the outputs stay in processing order.
    Returns what the inner layer returns: ``(out, h_n)`` or ``(out, (h_n, c_n))``.
    """


    def __reduce__(self):
        from .loaders.native import reduce_model

        return reduce_model(self)
    def __init__(self, layer: Any, realign: bool = True) -> None:
        cfg = layer.config()
        if cfg.get("type") not in RECURRENT_TYPES:
            raise errors.UnsupportedError(f"Reversed: needs an LSTM/GRU/RNN layer, got {cfg.get('type')!r}")
        if cfg.get("bidirectional"):
            raise errors.UnsupportedError("Reversed: the inner layer must not be bidirectional")
        self.layer = layer
        self.realign = bool(realign)

    def __call__(self, x: Any, hx: Any = None, lengths: Any = None):
        x = _as_float32(x)
        batch_first = bool(self.layer.config().get("batch_first", False))
        if x.ndim not in (2, 3):
            raise errors.ShapeError(
                f"Reversed: x expected 3-D (or unbatched 2-D), got shape {tuple(x.shape)}"
            )
        if x.ndim == 2:  # unbatched (T, I): the inner layer refuses lengths, so pass them through
            axis = 0
            lens = None
            xr = x[::-1].copy()
        else:
            axis = 1 if batch_first else 0
            lens = None if lengths is None else _checked_lengths(lengths, x.shape[1 - axis], x.shape[axis])
            xr = reverse_padded(x, lens, axis)
        res = self.layer(xr, hx, lengths=lengths) if hx is not None else self.layer(xr, lengths=lengths)
        out, state = res
        if self.realign:
            if x.ndim == 2:
                out = out[::-1].copy()
            else:
                out = reverse_padded(out, lens, axis)
        return out, state

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.layer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        self.layer.load_state_dict(state, strict=strict)

    def num_parameters(self) -> int:
        return int(sum(np.asarray(v).size for v in self.state_dict().values()))

    def config(self) -> dict:
        return {"type": "Reversed", "realign": self.realign, "layer": self.layer.config()}

    def __repr__(self) -> str:
        return f"Reversed({self.layer!r}, realign={self.realign})"


# --------------------------------------------------------------------------------------------------
# Sequential
# --------------------------------------------------------------------------------------------------
def _num_directions(layer: Any) -> int:
    cfg = layer.config()
    if cfg.get("type") == "Reversed":
        return 1
    return 2 if cfg.get("bidirectional") else 1


class Sequential:
    """A chain of layers, like ``torch.nn.Sequential``, that also knows how to chain recurrent layers.

    ``Sequential(emb, lstm, fc, softmax)`` or ``Sequential({"emb": emb, "lstm": lstm, "fc": fc})`` (names
    are the prefixes of the state_dict keys, so a PyTorch model ``self.emb/self.lstm/self.fc`` loads with
    ``load_state_dict(torch_model.state_dict())``; positional layers are named "0", "1", ...).

    ``model(x, lengths=None)``: each recurrent layer gets ``lengths`` and passes its per-step output
    ``out`` on. With ``many_to_one=True`` the *last* recurrent layer passes its final hidden state
    instead (the top layer's h_n, directions concatenated [forward, backward]: what a PyTorch user writes
    as ``torch.cat([h_n[-2], h_n[-1]], 1)``; Keras' ``return_sequences=False``), shape (B, D*H).
    With ``many_to_one="last"`` it passes its output at each sequence's last valid step instead (PyTorch's
    ``out[:, -1]``, or ``out[arange(B), lengths - 1]``; for a bidirectional layer the backward half is
    then the backward direction's output at that step, not its final state).

    Keras masking: when the first layer is an ``Embedding(mask_zero=True)``, token 0 marks padding
    anywhere in a sequence. The recurrent layers skip the masked steps, as Keras does: the valid steps of
    each sequence are packed to its front, run with ``lengths``, and put back in place after the last
    recurrent layer. The per-step outputs at masked positions are then zero
    (``masked_output="zero"``, Keras' ``zero_output_for_mask=True`` and Bidirectional), or the previous
    valid step's output (``"carry"``, Keras' default for a unidirectional layer).
    """


    def __reduce__(self):
        from .loaders.native import reduce_model

        return reduce_model(self)
    def __init__(self, *layers: Any, many_to_one: bool | str = False, masked_output: str = "zero") -> None:
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            items = list(layers[0].items())
        else:
            items = [(str(i), layer) for i, layer in enumerate(layers)]
        self._layers: OrderedDict[str, Any] = OrderedDict()
        for name, layer in items:
            name = str(name)
            if not name or "." in name:
                raise errors.ShapeError(
                    f"Sequential: layer names must be non-empty without '.', got {name!r}"
                )
            if name in self._layers:
                raise errors.ShapeError(f"Sequential: duplicate layer name {name!r}")
            if not callable(layer) or not hasattr(layer, "state_dict") or not hasattr(layer, "config"):
                raise errors.UnsupportedError(
                    f"Sequential: layer {name!r} is not an rnnfast layer (got {type(layer).__name__})"
                )
            self._layers[name] = layer
        if many_to_one not in (False, True, "h_n", "last", 0, 1):
            raise errors.ShapeError(
                f"Sequential: many_to_one must be False, True (= 'h_n') or 'last', got {many_to_one!r}"
            )
        self.many_to_one: bool | str = "last" if many_to_one == "last" else bool(many_to_one)
        if masked_output not in ("zero", "carry"):
            raise errors.ShapeError(
                f"Sequential: masked_output must be 'zero' or 'carry', got {masked_output!r}"
            )
        self.masked_output = masked_output
        recurrent = [n for n, layer in self._layers.items() if is_recurrent(layer)]
        self._last_recurrent = recurrent[-1] if recurrent else None
        if self.many_to_one and self._last_recurrent is None:
            raise errors.ShapeError("Sequential: many_to_one=True needs a recurrent layer")

    # container protocol
    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers.values())

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._layers[key]
        return list(self._layers.values())[key]

    def named_layers(self) -> list[tuple[str, Any]]:
        return list(self._layers.items())

    def __call__(self, x: Any, lengths: Any = None) -> np.ndarray:
        """Run the chain. x: tokens (if the first layer is an Embedding) or floats, shaped as the first
        recurrent layer expects ((T, B, ...) or (B, T, ...) when batch_first, or unbatched (T, ...)).
        lengths: (B,) valid steps per sequence, given to every recurrent layer."""
        y = x
        first = next(iter(self._layers.values()), None)
        masking = isinstance(first, Embedding) and first.mask_zero and self._last_recurrent is not None
        if masking:
            y, lengths, unpack = self._pack_masked(x, lengths)
        for name, layer in self._layers.items():
            try:
                y = self._step(name, layer, y, lengths)
            except errors.RnnfastError as exc:
                kind = layer.config().get("type", type(layer).__name__)
                raise type(exc)(f"layer {name!r} ({kind}): {exc}") from exc
            if masking and name == self._last_recurrent and not self.many_to_one:
                y = unpack(np.asarray(y))
        return np.asarray(y)

    def _time_axis(self) -> int:
        """1 when the first recurrent layer is batch-first (tokens (B, T)), else 0 (tokens (T, B))."""
        layer = next(candidate for candidate in self._layers.values() if is_recurrent(candidate))
        cfg = layer.config()
        cfg = cfg["layer"] if cfg.get("type") == "Reversed" else cfg
        return 1 if cfg.get("batch_first") else 0

    def _pack_masked(self, tokens: Any, lengths: Any):
        """Keras masking -> (packed tokens, lengths, unpack(per-step output) -> output in place)."""
        if lengths is not None:
            raise errors.ShapeError(
                "lengths: not allowed with Embedding(mask_zero=True): the mask gives them"
            )
        if hasattr(tokens, "detach"):
            tokens = tokens.detach().cpu().numpy()
        tok = np.asarray(tokens)
        if tok.ndim != 2:
            raise errors.ShapeError(f"tokens: masking needs a 2-D batch of token ids, got shape {tok.shape}")
        tax = self._time_axis()
        btok = tok if tax == 1 else tok.T  # (B, T)
        mask = btok != 0
        T = mask.shape[1]
        order = np.argsort(~mask, axis=1, kind="stable")  # valid steps first, in their order
        lens = mask.sum(axis=1).astype(np.int64)
        packed = np.take_along_axis(btok, order, axis=1)
        carry = self.masked_output == "carry"

        def unpack(y: np.ndarray) -> np.ndarray:
            yb = y if tax == 1 else np.swapaxes(y, 0, 1)  # (B, T, F)
            full = np.zeros_like(yb)
            np.put_along_axis(full, order[:, :, None], yb, axis=1)  # packed tail is zero past each length
            if carry:  # a masked step repeats the previous valid step's output (zeros before the first)
                last = np.maximum.accumulate(np.where(mask, np.arange(T)[None, :], -1), axis=1)
                gathered = np.take_along_axis(full, np.maximum(last, 0)[:, :, None], axis=1)
                full = np.where((last >= 0)[:, :, None], gathered, 0.0).astype(yb.dtype)
            return full if tax == 1 else np.ascontiguousarray(np.swapaxes(full, 0, 1))

        return (packed if tax == 1 else np.ascontiguousarray(packed.T)), lens, unpack

    def _step(self, name: str, layer: Any, y: Any, lengths: Any) -> Any:
        if not is_recurrent(layer):
            return layer(y)
        out, state = layer(y, lengths=lengths)
        if not (self.many_to_one and name == self._last_recurrent):
            return out
        if self.many_to_one == "last":
            return self._last_step(layer, np.asarray(out), lengths)
        h_n = np.asarray(state[0] if isinstance(state, tuple) else state)
        last = h_n[-_num_directions(layer) :]  # (D, B, H), or (D, H) unbatched
        return np.concatenate(list(last), axis=-1)

    @staticmethod
    def _last_step(layer: Any, out: np.ndarray, lengths: Any) -> np.ndarray:
        """out at each sequence's last valid step (PyTorch's ``out[:, -1]`` / a gather at lengths - 1).
        A zero-length sequence gives zeros."""
        if out.ndim == 2:  # unbatched (T, F)
            return out[-1]
        cfg = layer.config()
        cfg = cfg["layer"] if cfg.get("type") == "Reversed" else cfg
        ob = out if cfg.get("batch_first") else np.swapaxes(out, 0, 1)  # (B, T, F)
        B, T = ob.shape[0], ob.shape[1]
        idx = np.full(B, T - 1, np.int64) if lengths is None else np.asarray(lengths, np.int64) - 1
        picked = ob[np.arange(B), np.maximum(idx, 0)]
        return np.where((idx >= 0)[:, None], picked, 0.0).astype(out.dtype)

    def state_dict(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, layer in self._layers.items():
            for k, v in layer.state_dict().items():
                out[f"{name}.{k}"] = np.asarray(v)
        return out

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Keys are "<layer name>.<parameter>"; with strict, missing and unexpected keys raise."""
        if not isinstance(state, Mapping):  # (dict() of a list or a string leaked TypeError/ValueError)
            raise errors.StateDictError(
                f"Sequential.load_state_dict: expected a mapping of names to arrays, got {type(state).__name__}"
            )
        state = dict(state)
        expected = list(self.state_dict())
        _check_keys(
            "Sequential", expected, {k: v for k, v in state.items() if not is_optional_param(k)}, strict
        )
        # all or nothing: a layer that refuses its weights puts back those already loaded (the model was
        # left half old, half new behind the exception)
        done: list[tuple[Any, dict]] = []
        for name, layer in self._layers.items():
            prefix = name + "."
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            old = layer.state_dict()
            try:
                layer.load_state_dict(sub, strict=strict)
            except errors.RnnfastError as exc:
                for prev, prev_state in reversed(done):
                    prev.load_state_dict(prev_state)
                raise type(exc)(f"layer {name!r}: {exc}") from exc
            done.append((layer, old))

    def num_parameters(self) -> int:
        return int(sum(np.asarray(v).size for v in self.state_dict().values()))

    def config(self) -> dict:
        return {
            "type": "Sequential",
            "many_to_one": self.many_to_one,
            **({"masked_output": self.masked_output} if self.masked_output != "zero" else {}),
            "layers": [[name, layer.config()] for name, layer in self._layers.items()],
        }

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({n}): {layer!r}" for n, layer in self._layers.items())
        return f"Sequential(many_to_one={self.many_to_one},\n{inner}\n)"


# --------------------------------------------------------------------------------------------------
# config -> layer, and parameter shapes implied by a config (checked against files before allocating)
# --------------------------------------------------------------------------------------------------
_SIMPLE = {"Softmax": Softmax, "LogSoftmax": LogSoftmax, "Sigmoid": Sigmoid, "Tanh": Tanh, "ReLU": ReLU}


def _cfg_int(cfg: Mapping, key: str, default: Any = None, minimum: int = 0) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise errors.FormatError(
            f"config of {cfg.get('type')!r}: {key!r} must be an int >= {minimum}, got {v!r}"
        )
    return v


def model_from_config(cfg: Mapping[str, Any]) -> Any:
    """Build any rnnfast layer or model from its ``config()`` (weights freshly initialised).

    Recurrent types are built by the core (``rnnfast.layer_from_config``)."""
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("type"), str):
        raise errors.FormatError(f"a layer config must be a dict with a 'type' string, got {str(cfg)[:80]!r}")
    t = cfg["type"]
    if t in RECURRENT_TYPES:
        core = _core()
        try:
            return core.layer_from_config(dict(cfg))
        except errors.RnnfastError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise errors.FormatError(f"invalid {t} config {dict(cfg)!r}: {exc}") from exc
    if t == "Embedding":
        pad = cfg.get("padding_idx")
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
            raise errors.FormatError(
                f"config of 'Embedding': padding_idx must be an int or null, got {pad!r}"
            )
        return Embedding(
            _cfg_int(cfg, "num_embeddings"),
            _cfg_int(cfg, "embedding_dim"),
            pad,
            mask_zero=bool(cfg.get("mask_zero", False)),
        )
    if t == "Linear":
        return Linear(
            _cfg_int(cfg, "in_features"), _cfg_int(cfg, "out_features"), bool(cfg.get("bias", True))
        )
    if t in ("Softmax", "LogSoftmax"):
        dim = cfg.get("dim", -1)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise errors.FormatError(f"config of {t!r}: dim must be an int, got {dim!r}")
        return _SIMPLE[t](dim)
    if t in _SIMPLE:
        return _SIMPLE[t]()
    if t == "Reversed":
        return Reversed(model_from_config(cfg.get("layer")), realign=bool(cfg.get("realign", True)))
    if t == "Seq2Seq":
        from .seq2seq import Seq2Seq

        try:
            return Seq2Seq.from_config(cfg)
        except errors.RnnfastError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise errors.FormatError(f"invalid Seq2Seq config: {exc}") from exc
    if t == "Sequential":
        layers = cfg.get("layers")
        if not isinstance(layers, list) or not all(
            isinstance(e, (list, tuple)) and len(e) == 2 for e in layers
        ):
            raise errors.FormatError(
                "config of 'Sequential': 'layers' must be a list of [name, config] pairs"
            )
        return Sequential(
            OrderedDict((str(n), model_from_config(c)) for n, c in layers),
            many_to_one=cfg.get("many_to_one", False)
            if cfg.get("many_to_one") == "last"
            else bool(cfg.get("many_to_one", False)),
            masked_output=cfg.get("masked_output", "zero"),
        )
    if t == "OnnxGraph":
        from .loaders.onnx import OnnxGraph

        return OnnxGraph.from_config(cfg)
    raise errors.UnsupportedError(f"unknown layer type {t!r} in config")


def param_count_bound(cfg: Mapping[str, Any]) -> int:
    """Number of float parameters a config declares, computed without allocating anything.

    Used by the loaders to refuse a hostile architecture (huge hidden_size, ...) before building it.
    Exact for every layer PyTorch has; ONNX extensions (peepholes) are small and not counted.
    """
    if not isinstance(cfg, Mapping):
        raise errors.FormatError(f"a layer config must be a dict, got {type(cfg).__name__}")
    t = cfg.get("type")
    if not isinstance(t, str):  # (an unhashable type such as a list would leak a TypeError below)
        raise errors.FormatError(f"a layer config must have a 'type' string, got {str(t)[:80]!r}")
    if t in RECURRENT_TYPES:
        I = _cfg_int(cfg, "input_size")
        H = _cfg_int(cfg, "hidden_size", minimum=1)
        L = _cfg_int(cfg, "num_layers", 1, minimum=1)
        P = _cfg_int(cfg, "proj_size", 0) if t == "LSTM" else 0
        G = {"LSTM": 4, "GRU": 3, "RNN": 1}[t]
        D = 2 if cfg.get("bidirectional") else 1
        bias = bool(cfg.get("bias", True))
        Hout = P or H

        def per_layer(In: int) -> int:
            return D * (G * H * (In + Hout) + (2 * G * H if bias else 0) + (P * H if P else 0))

        # closed form: a hostile num_layers must not make this loop
        return per_layer(I) + (L - 1) * per_layer(D * Hout)
    if t == "Embedding":
        return _cfg_int(cfg, "num_embeddings") * _cfg_int(cfg, "embedding_dim")
    if t == "Linear":
        O = _cfg_int(cfg, "out_features")
        return O * _cfg_int(cfg, "in_features") + (O if cfg.get("bias", True) else 0)
    if t in _SIMPLE:
        return 0
    if t == "Reversed":
        return param_count_bound(cfg.get("layer"))
    if t == "Seq2Seq":
        total = param_count_bound(cfg.get("encoder")) + param_count_bound(cfg.get("decoder"))
        for shape in (cfg.get("arrays") or {}).values():
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise errors.FormatError("config of 'Seq2Seq': each array shape must be a list of sizes")
            total += math.prod(shape)
        return total  # the attention layer's few weights are not counted (like peepholes)
    if t == "Sequential":
        layers = cfg.get("layers")
        if not isinstance(layers, list):
            raise errors.FormatError("config of 'Sequential': 'layers' must be a list")
        total = 0
        for entry in layers:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise errors.FormatError("config of 'Sequential': each layer must be a [name, config] pair")
            total += param_count_bound(entry[1])
        return total
    if t == "OnnxGraph":
        total = 0
        for spec in cfg.get("initializers", []):
            shape = spec[2] if isinstance(spec, (list, tuple)) and len(spec) == 3 else None
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise errors.FormatError(f"config of 'OnnxGraph': bad initializer spec {str(spec)[:80]}")
            total += math.prod(shape)
        return total
    raise errors.UnsupportedError(f"unknown layer type {t!r} in config")


def describe(model: Any, prefix: str = "") -> list[tuple[str, str, dict[str, tuple[int, ...]], int]]:
    """One row per leaf layer: (name, type, {param: shape}, n_params). Used by ``rnnfast info``."""
    rows = []
    if isinstance(model, Sequential):
        for name, layer in model.named_layers():
            rows += describe(layer, f"{prefix}{name}.")
        return rows
    cfg = model.config()
    t = cfg.get("type", type(model).__name__)
    if t == "OnnxGraph":
        return model.describe()
    label = _summary(cfg)
    sd = model.state_dict()
    shapes = {k: tuple(np.asarray(v).shape) for k, v in sd.items()}
    rows.append((prefix.rstrip(".") or t, label, shapes, int(sum(np.asarray(v).size for v in sd.values()))))
    return rows


def _summary(cfg: Mapping[str, Any]) -> str:
    """A short description of a layer config, e.g. "LSTM 8->16 x2 bidirectional batch_first"."""
    t = cfg.get("type", "?")
    if t == "Reversed":
        return f"Reversed({_summary(cfg.get('layer', {}))})"
    if t in RECURRENT_TYPES:
        parts = [t, f"{cfg.get('input_size')}->{cfg.get('hidden_size')}"]
        if cfg.get("num_layers", 1) != 1:
            parts.append(f"x{cfg['num_layers']}")
        if cfg.get("proj_size"):
            parts.append(f"proj {cfg['proj_size']}")
        if t == "GRU" and not cfg.get("reset_after", True):
            parts.append("reset_before")
        if t == "RNN" and cfg.get("nonlinearity", "tanh") != "tanh":
            parts.append(cfg["nonlinearity"])
        for flag in ("bidirectional", "batch_first"):
            if cfg.get(flag):
                parts.append(flag)
        if cfg.get("activations") or cfg.get("clip") or cfg.get("input_forget"):
            parts.append("onnx-ext")
        return " ".join(parts)
    if t == "Embedding":
        return f"Embedding {cfg.get('num_embeddings')}x{cfg.get('embedding_dim')}" + (
            " mask_zero" if cfg.get("mask_zero") else ""
        )
    if t == "Linear":
        return f"Linear {cfg.get('in_features')}->{cfg.get('out_features')}"
    return t
