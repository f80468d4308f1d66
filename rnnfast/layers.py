"""Recurrent layers with torch.nn's interface, computed by the C core.

Inputs may be any array-like of a real dtype; computation is float32 (float64 input is converted).
Non-contiguous input is copied. Outputs are new float32 NumPy arrays.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Sequence

import numpy as np

from . import _threads
from .errors import DTypeError, ShapeError, StateDictError, UnsupportedError

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_ONNX_ACTS = {
    "sigmoid": 0,
    "tanh": 1,
    "relu": 2,
    "affine": 3,
    "leakyrelu": 4,
    "thresholdedrelu": 5,
    "scaledtanh": 6,
    "hardsigmoid": 7,
    "elu": 8,
    "softsign": 9,
    "softplus": 10,
}
# ONNX's default alpha/beta of the activations that take them
_ACT_DEFAULTS = {
    "leakyrelu": (0.01, 0.0),
    "thresholdedrelu": (1.0, 0.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, 0.0),
    "affine": (1.0, 0.0),
    "scaledtanh": (1.0, 1.0),
}
_DEFAULT_ACTS = {
    "RNN_TANH": ("Tanh",),
    "RNN_RELU": ("Relu",),
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
    "GRU": ("Sigmoid", "Tanh"),
}


def as_float32(a: Any, name: str) -> np.ndarray:
    """Array-like -> C-contiguous float32, or DTypeError naming the argument."""
    if type(a) is np.ndarray and a.dtype == np.float32 and a.flags.c_contiguous:
        return a  # the common case, without a copy
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise DTypeError(f"{name}: expected an array of real numbers, got {type(a).__name__} ({exc})") from None
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"{name}: expected a real (float or integer) dtype, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _as_lengths(lengths: Any, B: int, T: int) -> np.ndarray:
    try:
        arr = np.asarray(lengths)
    except Exception as exc:
        raise DTypeError(f"lengths: expected a 1-D array of integers, got {type(lengths).__name__} ({exc})") from None
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            if arr.shape == (B,) and (arr.min() < 0 or arr.max() > T):  # before a wrapping cast to int
                bad = int(np.flatnonzero((arr < 0) | (arr > T))[0])
                raise ShapeError(f"lengths[{bad}]: expected in [0, {T}] (T = {T}), got {arr[bad]:g}")
            arr = arr.astype(np.int64)
        elif arr.dtype.kind == "f" and arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            raise DTypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ShapeError(f"lengths: expected shape ({B},) (one per sequence), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > T):
        bad = int(np.flatnonzero((arr < 0) | (arr > T))[0])
        raise ShapeError(f"lengths[{bad}]: expected in [0, {T}] (T = {T}), got {int(arr[bad])}")
    return np.ascontiguousarray(arr, dtype=np.int32)


class RNNBase:
    """Common machinery of RNN, LSTM and GRU: parameters by PyTorch's names, C plan, forward."""

    mode = "RNN_TANH"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        seed: int | None = None,
        reset_after: bool = True,
        activations: Sequence[Sequence[Any]] | None = None,
        clip: float | None = None,
        input_forget: bool = False,
        peepholes: bool = False,
    ) -> None:
        for name, v, lo in (
            ("input_size", input_size, 1),
            ("hidden_size", hidden_size, 1),
            ("num_layers", num_layers, 1),
            ("proj_size", proj_size, 0),
        ):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
        if proj_size and self.mode != "LSTM":
            raise ValueError("proj_size: only LSTM supports a projection")
        if proj_size >= hidden_size and proj_size:
            raise ValueError(f"proj_size: expected < hidden_size ({hidden_size}), got {proj_size}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout}")
        if peepholes and self.mode != "LSTM":
            raise ValueError("peepholes: only LSTM has peephole connections")
        if input_forget and self.mode != "LSTM":
            raise ValueError("input_forget: only LSTM has an input and a forget gate")
        if proj_size and (activations is not None or clip is not None or input_forget or peepholes):
            raise UnsupportedError("proj_size cannot be combined with ONNX's activations/clip/input_forget/peepholes")
        if clip is not None and not (float(clip) > 0.0):
            raise ValueError(f"clip: expected a positive threshold or None, got {clip}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)  # kept for torch compatibility; inference never drops
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        self.reset_after = bool(reset_after)
        self.clip = None if clip is None else float(clip)
        self.input_forget = bool(input_forget)
        self.peepholes = bool(peepholes)
        self.activations = self._parse_activations(activations)
        self._plan = None
        self._params: dict[str, np.ndarray] = {}
        self.reset_parameters(seed)

    # ---- parameters -------------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _hout(self) -> int:
        return self.proj_size or self.hidden_size

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        G, H, P, D = _GATES[self.mode], self.hidden_size, self._hout, self.num_directions
        shapes = {}
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
                if self.peepholes:
                    shapes[f"weight_peep_l{layer}{sfx}"] = (3 * H,)
        return shapes

    def reset_parameters(self, seed: int | None = None) -> None:
        """Uniform(-1/sqrt(hidden), 1/sqrt(hidden)) for every parameter, like torch."""
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(self.hidden_size)
        params = {n: rng.uniform(-k, k, size=s).astype(np.float32) for n, s in self._expected_shapes().items()}
        for n in params:
            if "peep" in n:  # ONNX's default peepholes are zero
                params[n][:] = 0.0
        self._set_params(params)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, named and shaped like torch.nn's state_dict."""
        return {n: a.copy() for n, a in self._params.items()}

    def named_parameters(self):
        return list(self._params.items())

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Load parameters by PyTorch's names. Every problem is reported in one StateDictError.

        LSTM peephole weights ``weight_peep_l{k}[_reverse]`` (3*H,) in order [i, f, o] (from ONNX) are
        accepted by any LSTM: loading them into a layer built without ``peepholes=True`` turns them on
        (all of them must then be given).
        """
        if not hasattr(state, "items"):
            raise StateDictError(f"state: expected a mapping of names to arrays, got {type(state).__name__}")
        expected = self._expected_shapes()
        peep = {}
        if self.mode == "LSTM" and not self.proj_size and not self.peepholes:
            for layer in range(self.num_layers):
                for sfx in ("", "_reverse")[: self.num_directions]:
                    peep[f"weight_peep_l{layer}{sfx}"] = (3 * self.hidden_size,)
        problems, params = [], {}
        if peep and any(n in state for n in peep):  # peepholes arrive: they become regular parameters
            expected = {**expected, **peep}
            peep = {}
        missing = [n for n in expected if n not in state]
        if missing:
            problems.append("missing: " + ", ".join(missing))
        unexpected = [n for n in state if n not in expected and n not in peep]
        if unexpected and strict:
            problems.append("unexpected: " + ", ".join(map(str, unexpected)))
        for name, value in state.items():
            shape = expected.get(name) or peep.get(name)
            if shape is None:
                continue
            value = _to_numpy(value)
            try:
                arr = np.asarray(value)
            except Exception as exc:
                problems.append(f"{name}: not an array ({exc})")
                continue
            if arr.dtype.kind not in "fiu":
                problems.append(f"{name}: expected a real dtype, got {arr.dtype}")
                continue
            if arr.shape != shape:
                problems.append(f"{name}: expected shape {shape}, got {arr.shape}")
                continue
            params[name] = np.ascontiguousarray(arr, dtype=np.float32)
        if problems:
            raise StateDictError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        if not strict:
            for n in missing:
                params[n] = self._params[n]
        self._set_params(params)
        self.peepholes = any("peep" in n for n in params)

    def _set_params(self, params: dict[str, np.ndarray], pack: bool = True) -> None:
        """Build the C plan. pack=False (tests) keeps the core on its generic path."""
        from ._core import RNNPlan

        H, D = self.hidden_size, self.num_directions
        weights = []
        for layer in range(self.num_layers):
            for sfx in ("", "_reverse")[:D]:
                s = f"l{layer}{sfx}"
                w = {"w_ih": params[f"weight_ih_{s}"], "w_hh": params[f"weight_hh_{s}"]}
                if self.bias:
                    b = params[f"bias_ih_{s}"] + params[f"bias_hh_{s}"]
                    if self.mode == "GRU" and self.reset_after:
                        b[2 * H :] = params[f"bias_ih_{s}"][2 * H :]
                        w["b_hn"] = params[f"bias_hh_{s}"][2 * H :].copy()
                    w["bias"] = b.astype(np.float32)
                if self.proj_size:
                    w["w_hr"] = params[f"weight_hr_{s}"]
                if f"weight_peep_{s}" in params:
                    w["peep"] = params[f"weight_peep_{s}"]
                weights.append(w)
        ext = None
        has_peep = any("peep" in n for n in params)
        if self.activations is not None or self.clip is not None or self.input_forget or has_peep:
            acts = self.activations or [self._parse_act_list(_DEFAULT_ACTS[self.mode])] * D
            ext = {
                "act": [a + [(0, 0.0, 0.0)] * (3 - len(a)) for a in acts] + [[(0, 0.0, 0.0)] * 3] * (2 - D),
                "clip": self.clip or 0.0,
                "input_forget": self.input_forget,
            }
        plan = RNNPlan(
            self.mode, self.reset_after, self.num_layers, D, self.input_size, H, self.proj_size, weights, ext, pack
        )
        self._params = params
        self._plan = plan  # one attribute store: concurrent callers see the old or the new plan

    def _parse_act_list(self, acts):
        out = []
        for a in acts:
            name, alpha, beta = (a, None, None) if isinstance(a, str) else (tuple(a) + (None, None))[:3]
            key = str(name).lower()
            if key not in _ONNX_ACTS:
                raise UnsupportedError(f"activation {name!r}: expected one of {sorted(_ONNX_ACTS)}")
            da, db = _ACT_DEFAULTS.get(key, (0.0, 0.0))
            out.append((_ONNX_ACTS[key], float(da if alpha is None else alpha), float(db if beta is None else beta)))
        return out

    def _parse_activations(self, activations):
        if activations is None:
            return None
        n = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 3, "GRU": 2}[self.mode]
        acts = list(activations)
        if len(acts) != self.num_directions or any(len(a) != n for a in acts):
            raise ValueError(
                f"activations: expected {self.num_directions} list(s) (one per direction) of {n} "
                f"functions, got {activations!r}"
            )
        return [self._parse_act_list(a) for a in acts]

    # ---- architecture -------------------------------------------------------------------------------
    def config(self) -> dict:
        cfg = {
            "type": type(self).__name__,
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "batch_first": self.batch_first,
            "dropout": self.dropout,
            "bidirectional": self.bidirectional,
        }
        cfg.update(self._extra_config())
        if self.activations is not None:
            inv = {v: k for k, v in _ONNX_ACTS.items()}
            cfg["activations"] = [[(inv[k], a, b) for k, a, b in d] for d in self.activations]
        if self.clip is not None:
            cfg["clip"] = self.clip
        if self.input_forget:
            cfg["input_forget"] = True
        if self.peepholes:
            cfg["peepholes"] = True
        return cfg

    def _extra_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"rnnfast.{type(self).__name__}({args})"

    # ---- forward --------------------------------------------------------------------------------------
    def __call__(self, x: Any, hx: Any = None, lengths: Any = None):
        """Run the stack.

        Parameters
        ----------
        x : (T, B, I), (B, T, I) if batch_first, or unbatched (T, I)
        hx : initial state: (L*D, B, Hout) (unbatched: (L*D, Hout)), for LSTM a tuple (h0, c0) with
            c0 (L*D, B, H); None = zeros. Hout = proj_size or hidden_size.
        lengths : (B,) integers in [0, T], or None for full length

        Returns
        -------
        out : (T, B, D*Hout) (batch_first: (B, T, D*Hout)); padded positions are zero
        h_n : (L*D, B, Hout) (for LSTM, (h_n, c_n) with c_n (L*D, B, H))
        """
        plan = self._plan
        x = as_float32(x, "x")
        unbatched = x.ndim == 2
        if x.ndim not in (2, 3):
            raise ShapeError(
                f"x: expected 3-D (T, B, {self.input_size}) or (B, T, {self.input_size}) when "
                f"batch_first, or unbatched 2-D (T, {self.input_size}); got shape {x.shape}"
            )
        if x.shape[-1] != self.input_size:
            raise ShapeError(f"x: expected last dimension input_size={self.input_size}, got shape {x.shape}")
        if unbatched:
            if lengths is not None:
                raise ShapeError("lengths: not allowed with unbatched 2-D input (there is one sequence)")
            x = x[:, None, :] if not self.batch_first else x[None, :, :]
        if self.batch_first:
            B, T = x.shape[0], x.shape[1]
        else:
            T, B = x.shape[0], x.shape[1]
        LD, H, P, D = self.num_layers * self.num_directions, self.hidden_size, self._hout, self.num_directions
        h0 = c0 = None
        if self.mode == "LSTM":
            if hx is not None:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise ShapeError("hx: expected a tuple (h0, c0) for LSTM")
                h0 = self._state(hx[0], "h0", (LD, B, P), unbatched)
                c0 = self._state(hx[1], "c0", (LD, B, H), unbatched)
        elif hx is not None:
            h0 = self._state(hx, "h0", (LD, B, P), unbatched)
        lens = None if lengths is None else _as_lengths(lengths, B, T)
        out = np.empty((B, T, D * P) if self.batch_first else (T, B, D * P), dtype=np.float32)
        h_n = np.empty((LD, B, P), dtype=np.float32)
        c_n = np.empty((LD, B, H), dtype=np.float32) if self.mode == "LSTM" else None
        plan.forward(x, lens, h0, c0, out, h_n, c_n, self.batch_first, _threads.get())
        if unbatched:
            out = out[:, 0] if not self.batch_first else out[0]
            h_n = h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        if self.mode == "LSTM":
            return out, (h_n, c_n)
        return out, h_n

    forward = __call__

    def __reduce__(self):
        from .loaders.native import reduce_model

        return reduce_model(self)

    @staticmethod
    def _state(a: Any, name: str, shape: tuple, unbatched: bool) -> np.ndarray:
        arr = as_float32(a, name)
        want = (shape[0], shape[2]) if unbatched else shape
        if arr.shape != want:
            raise ShapeError(f"{name}: expected shape {want} (layers*directions, batch, size), got {arr.shape}")
        return arr.reshape(shape) if unbatched else arr


def _to_numpy(v: Any) -> Any:
    """torch tensors (without importing torch) and other array-likes -> something np.asarray takes."""
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        return v.detach().cpu().numpy()
    return v


class RNN(RNNBase):
    """Elman RNN: h' = nonlinearity(W_ih x + b_ih + W_hh h + b_hh), nonlinearity "tanh" or "relu"."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        seed: int | None = None,
        **ext,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, seed=seed, **ext
        )

    def _extra_config(self) -> dict:
        return {"nonlinearity": self.nonlinearity}


class LSTM(RNNBase):
    """LSTM with torch.nn.LSTM's gates [i f g o], optional projection (proj_size)."""

    mode = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        seed: int | None = None,
        **ext,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size=proj_size,
            seed=seed,
            **ext,
        )

    def _extra_config(self) -> dict:
        return {"proj_size": self.proj_size}


class GRU(RNNBase):
    """GRU with gates [r z n]. reset_after=True: torch/cuDNN form n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    reset_after=False: the original form n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)."""

    mode = "GRU"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        reset_after: bool = True,
        seed: int | None = None,
        **ext,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            seed=seed,
            reset_after=reset_after,
            **ext,
        )

    def _extra_config(self) -> dict:
        return {"reset_after": self.reset_after}


LAYER_TYPES = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}


def layer_from_config(cfg: dict):
    """Inverse of ``layer.config()`` for the recurrent layers."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in LAYER_TYPES:
        raise UnsupportedError(f"layer type: expected one of {sorted(LAYER_TYPES)}, got {kind!r}")
    return LAYER_TYPES[kind](**cfg)
