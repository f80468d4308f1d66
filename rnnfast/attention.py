"""Attention layers: single-head attention over encoder outputs, torch-compatible multi-head attention and
the ONNX ``Attention`` operator (opset 23). The heavy work runs in the C core (csrc/rf_attention.c).

Single-head attention (one query attends over a memory of S encoder states)::

    AdditiveAttention   e[s] = v . tanh(W_q q + b + W_k k[s])          (Bahdanau et al. 2015)
    DotAttention        e[s] = q . k[s]                                 (Luong et al. 2015, "dot")
    ScaledDotAttention  e[s] = q . k[s] / sqrt(Dk)
    GeneralAttention    e[s] = q . (W k[s] + b)                         (Luong "general")
    a = softmax(e) over unmasked s (a fully masked row gives zeros);  context = sum_s a[s] values[s]

The key-side work (W_k k, W k) depends only on the source: :meth:`precompute` does it once per source
sequence and returns an :class:`AttentionMemory` that :meth:`attend` reuses at every decoder step.

Shapes: queries (B, Dq) or (B, Tq, Dq); keys (B, S, Dk) and values (B, S, Dv) batch-first; lengths (B,);
mask (B, S) with True/nonzero = attend. Outputs are float32 NumPy arrays: context (B, [Tq,] Dv),
weights (B, [Tq,] S). Inputs may be float64 (converted to float32) or any array-like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnnfast.errors import DTypeError, ShapeError, StateDictError, UnsupportedError

__all__ = [
    "AdditiveAttention",
    "AttentionMemory",
    "DotAttention",
    "GeneralAttention",
    "MultiheadAttention",
    "ScaledDotAttention",
    "attention_from_config",
    "onnx_attention",
]

_ADDITIVE, _DOT = 0, 1


def _ext():
    from rnnfast import _attention

    return _attention


def _threads(n_threads: int | None) -> int:
    try:
        from rnnfast import _threads as threads_mod
    except ImportError:  # the core package without its thread setting: the OpenMP default
        return 0 if n_threads is None else int(n_threads)
    # 0 = the OpenMP default, as the core's own layers do; 1 in a forked child even when n_threads is given
    return int(threads_mod.resolve(n_threads))


def _f32(x: Any, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """x as a C-contiguous float32 array (float64 and ints are converted; others rejected)."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise DTypeError(f"{name}: expected a numeric array, got {type(x).__name__} ({exc})") from None
    if a.dtype.kind not in "fiub":
        raise DTypeError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if a.ndim not in dims:
            raise ShapeError(f"{name}: expected {' or '.join(map(str, dims))} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, n_threads: int | None) -> np.ndarray:
    """x (..., K) . w^T + b in the C core (SciPy's BLAS pool and the core's OpenMP pool: NumPy's own BLAS
    pool would be a third set of spinning threads)."""
    return _ext().linear(np.ascontiguousarray(x, dtype=np.float32), w, b, _threads(n_threads))


def _lengths(lengths: Any, B: int, S: int) -> np.ndarray | None:
    if lengths is None:
        return None
    try:
        a = np.asarray(lengths)
    except (ValueError, TypeError) as exc:
        raise DTypeError(f"lengths: expected a 1-D array of integers, got {type(lengths).__name__} ({exc})") from None
    # (np.mod on strings or objects raised a bare numpy TypeError)
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0)):
        raise DTypeError(f"lengths: expected integers, got dtype {a.dtype}")
    if a.shape != (B,):
        raise ShapeError(f"lengths: expected shape ({B},), got {a.shape}")
    if a.size and (a.min() < 0 or a.max() > S):
        raise ShapeError(f"lengths: expected values in [0, {S}], got min {a.min()} max {a.max()}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _key_mask(mask: Any, B: int, S: int) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != (B, S):
        raise ShapeError(f"mask: expected shape ({B}, {S}) (True = attend), got {m.shape}")
    if m.dtype.kind not in "biuf":
        raise DTypeError(f"mask: expected bool or numbers, got dtype {m.dtype}")
    return np.ascontiguousarray(m != 0, dtype=np.uint8)


class AttentionMemory:
    """What an attention layer precomputes once per source: projected keys, values, lengths and mask.

    Attributes: keys_proj (B, S, D) float32, values (B, S, Dv) float32, lengths (B,) int32 or None,
    mask (B, S) uint8 or None.
    """

    __slots__ = ("keys_proj", "lengths", "mask", "values")

    def __init__(self, keys_proj: np.ndarray, values: np.ndarray, lengths=None, mask=None):
        self.keys_proj = keys_proj
        self.values = values
        self.lengths = lengths
        self.mask = mask

    @property
    def batch_size(self) -> int:
        return self.keys_proj.shape[0]

    @property
    def source_len(self) -> int:
        return self.keys_proj.shape[1]

    def select(self, index: np.ndarray) -> AttentionMemory:
        """The memory of the batch rows ``index`` (e.g. repeated per beam)."""
        index = np.asarray(index)
        return AttentionMemory(
            np.ascontiguousarray(self.keys_proj[index]),
            np.ascontiguousarray(self.values[index]),
            None if self.lengths is None else np.ascontiguousarray(self.lengths[index]),
            None if self.mask is None else np.ascontiguousarray(self.mask[index]),
        )


class _SingleHeadAttention:
    """Common machinery: precompute / attend / __call__, state_dict, config."""

    _kind = _DOT
    _params: tuple[str, ...] = ()

    def __init__(self, n_threads: int | None = None):
        self.n_threads = n_threads
        self._state: dict[str, np.ndarray] = {}

    # --- parameters ---------------------------------------------------------------------------------
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._state.items()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        if not isinstance(state, Mapping):  # (None or an int leaked TypeError from `k in state`)
            raise StateDictError(
                f"{type(self).__name__}.load_state_dict: expected a mapping of names to arrays, "
                f"got {type(state).__name__}"
            )
        shapes = self._shapes()
        missing = [k for k in shapes if k not in state]
        unexpected = [k for k in state if k not in shapes]
        if strict and (missing or unexpected):
            raise StateDictError(
                f"{type(self).__name__}.load_state_dict: expected keys {sorted(shapes)}, "
                f"missing {missing}, unexpected {unexpected}"
            )
        new = dict(self._state)
        for k, shape in shapes.items():
            if k not in state:
                continue
            try:
                a = np.asarray(state[k])
            except (ValueError, TypeError) as exc:  # ragged nested lists
                raise StateDictError(f"{k}: not an array ({exc})") from None
            if a.dtype.kind not in "fiu":
                raise StateDictError(f"{k}: expected a numeric array, got dtype {a.dtype}")
            if a.shape != shape:
                raise StateDictError(f"{k}: expected shape {shape}, got {a.shape}")
            new[k] = np.ascontiguousarray(a, dtype=np.float32)
        self._state = new

    def _init(self, seed: int | None) -> None:
        rng = np.random.default_rng(seed)
        for k, shape in self._shapes().items():
            fan_in = shape[-1] if len(shape) > 1 else shape[0]
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            self._state[k] = rng.uniform(-bound, bound, size=shape).astype(np.float32)

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__}

    # --- compute ------------------------------------------------------------------------------------
    def _key_proj(self, keys: np.ndarray) -> np.ndarray:
        return keys

    def _query_proj(self, q: np.ndarray) -> np.ndarray:
        return q

    def _scale(self, D: int) -> float:
        return 1.0

    def _check_sizes(self, Dq: int | None, Dk: int | None) -> None:
        pass

    def precompute(self, keys: Any, values: Any = None, lengths: Any = None, mask: Any = None) -> AttentionMemory:
        """Project the keys once per source.

        Parameters
        ----------
        keys : (B, S, Dk)
        values : (B, S, Dv), default: the keys
        lengths : (B,) ints in [0, S]: key s of row b is attended only if s < lengths[b]
        mask : (B, S) bool, True = attend

        Returns
        -------
        AttentionMemory to pass to :meth:`attend` at every decoder step.
        """
        k = _f32(keys, "keys", 3)
        v = k if values is None else _f32(values, "values", 3)
        if v.shape[:2] != k.shape[:2]:
            raise ShapeError(f"values: expected shape ({k.shape[0]}, {k.shape[1]}, Dv), got {v.shape}")
        self._check_sizes(None, k.shape[2])
        B, S = k.shape[:2]
        kp = np.ascontiguousarray(self._key_proj(k), dtype=np.float32)
        return AttentionMemory(kp, v, _lengths(lengths, B, S), _key_mask(mask, B, S))

    def attend(self, query: Any, memory: AttentionMemory) -> tuple[np.ndarray, np.ndarray]:
        """Attend with query (B, Dq) or (B, Tq, Dq) over a precomputed memory.

        Returns context (B, [Tq,] Dv) and weights (B, [Tq,] S), float32.
        """
        q = _f32(query, "query", (2, 3))
        squeeze = q.ndim == 2
        if squeeze:
            q = q[:, None, :]
        if q.shape[0] != memory.batch_size:
            raise ShapeError(f"query: expected batch {memory.batch_size}, got shape {q.shape}")
        self._check_sizes(q.shape[2], None)
        qp = np.ascontiguousarray(self._query_proj(q), dtype=np.float32)
        D = memory.keys_proj.shape[2]
        if qp.shape[2] != D:
            raise ShapeError(f"query: expected last dimension matching the keys ({D}), got {q.shape[2]}")
        ctx, w = _ext().attn_forward(
            self._kind,
            qp,
            memory.keys_proj,
            self._state.get("v"),
            memory.values,
            memory.lengths,
            memory.mask,
            self._scale(D),
            _threads(self.n_threads),
        )
        return (ctx[:, 0], w[:, 0]) if squeeze else (ctx, w)

    def __call__(
        self, query: Any, keys: Any, values: Any = None, lengths: Any = None, mask: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``attend(query, precompute(keys, values, lengths, mask))``."""
        return self.attend(query, self.precompute(keys, values, lengths, mask))


class DotAttention(_SingleHeadAttention):
    """Luong's dot score e[s] = q . k[s] (Dq == Dk). No parameters."""

    def _check_sizes(self, Dq, Dk):
        pass


class ScaledDotAttention(DotAttention):
    """e[s] = q . k[s] / sqrt(Dk). No parameters."""

    def _scale(self, D: int) -> float:
        return 1.0 / math.sqrt(D) if D > 0 else 1.0


class GeneralAttention(_SingleHeadAttention):
    """Luong's general score e[s] = q . (W k[s] + b), W (Dq, Dk); the bias shifts every score of a row by
    q . b (no effect on the weights) and is kept for exact parity with ``nn.Linear``.

    Parameters: ``weight`` (Dq, Dk), ``bias`` (Dq,) when bias=True.
    """

    def __init__(
        self,
        query_size: int,
        key_size: int,
        bias: bool = False,
        seed: int | None = None,
        n_threads: int | None = None,
    ):
        super().__init__(n_threads)
        self.query_size, self.key_size, self.bias = int(query_size), int(key_size), bool(bias)
        self._init(seed)

    def _shapes(self):
        s = {"weight": (self.query_size, self.key_size)}
        if self.bias:
            s["bias"] = (self.query_size,)
        return s

    def _check_sizes(self, Dq, Dk):
        if Dq is not None and Dq != self.query_size:
            raise ShapeError(f"query: expected last dimension {self.query_size}, got {Dq}")
        if Dk is not None and Dk != self.key_size:
            raise ShapeError(f"keys: expected last dimension {self.key_size}, got {Dk}")

    def _key_proj(self, keys):
        return _linear(keys, self._state["weight"], self._state.get("bias"), self.n_threads)

    def config(self):
        return {
            "type": "GeneralAttention",
            "query_size": self.query_size,
            "key_size": self.key_size,
            "bias": self.bias,
        }

    @classmethod
    def from_linear(cls, linear: Any) -> GeneralAttention:
        """From a ``torch.nn.Linear(key_size, query_size)`` used as score = q . linear(k)."""
        w = linear.weight.detach().cpu().numpy()
        b = None if linear.bias is None else linear.bias.detach().cpu().numpy()
        layer = cls(w.shape[0], w.shape[1], bias=b is not None)
        layer.load_state_dict({"weight": w, **({"bias": b} if b is not None else {})})
        return layer


class AdditiveAttention(_SingleHeadAttention):
    """Bahdanau's additive score e[s] = v . tanh(W_q q + b + W_k k[s]).

    Parameters: ``query_weight`` (A, Dq), ``key_weight`` (A, Dk), ``v`` (A,), ``bias`` (A,) when bias=True
    (with torch ``nn.Linear`` layers W_q and W_k both with bias, ``bias`` = b_q + b_k).
    """

    _kind = _ADDITIVE

    def __init__(
        self,
        query_size: int,
        key_size: int,
        attn_size: int,
        bias: bool = True,
        seed: int | None = None,
        n_threads: int | None = None,
    ):
        super().__init__(n_threads)
        self.query_size, self.key_size = int(query_size), int(key_size)
        self.attn_size, self.bias = int(attn_size), bool(bias)
        self._init(seed)

    def _shapes(self):
        s = {
            "query_weight": (self.attn_size, self.query_size),
            "key_weight": (self.attn_size, self.key_size),
            "v": (self.attn_size,),
        }
        if self.bias:
            s["bias"] = (self.attn_size,)
        return s

    def _check_sizes(self, Dq, Dk):
        GeneralAttention._check_sizes(self, Dq, Dk)

    def _key_proj(self, keys):
        return _linear(keys, self._state["key_weight"], None, self.n_threads)

    def _query_proj(self, q):
        return _linear(q, self._state["query_weight"], self._state.get("bias"), self.n_threads)

    def config(self):
        return {
            "type": "AdditiveAttention",
            "query_size": self.query_size,
            "key_size": self.key_size,
            "attn_size": self.attn_size,
            "bias": self.bias,
        }

    @classmethod
    def from_linears(cls, query_linear: Any, key_linear: Any, v_linear: Any) -> AdditiveAttention:
        """From torch ``nn.Linear`` modules as in score = v_linear(tanh(query_linear(q) + key_linear(k))).

        The biases of query_linear and key_linear are summed; v_linear's bias (a constant shift of every
        score) does not change the weights and is dropped. v_linear must have out_features == 1.
        """
        wq = query_linear.weight.detach().cpu().numpy()
        wk = key_linear.weight.detach().cpu().numpy()
        v = v_linear.weight.detach().cpu().numpy()
        if v.shape[0] != 1:
            raise ShapeError(f"v_linear: expected out_features 1, got weight shape {v.shape}")
        bias = np.zeros(wq.shape[0], dtype=np.float64)
        has_bias = False
        for lin in (query_linear, key_linear):
            if lin.bias is not None:
                bias = bias + lin.bias.detach().cpu().numpy().astype(np.float64)
                has_bias = True
        layer = cls(wq.shape[1], wk.shape[1], wq.shape[0], bias=has_bias)
        st = {"query_weight": wq, "key_weight": wk, "v": v[0]}
        if has_bias:
            st["bias"] = bias
        layer.load_state_dict(st)
        return layer


def attention_from_config(cfg: dict[str, Any]) -> _SingleHeadAttention | MultiheadAttention:
    """Inverse of ``layer.config()`` for the attention layers (random weights: load a state_dict after)."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    classes = {
        c.__name__: c
        for c in (AdditiveAttention, DotAttention, ScaledDotAttention, GeneralAttention, MultiheadAttention)
    }
    if kind not in classes:
        raise UnsupportedError(f"config type: expected one of {sorted(classes)}, got {kind!r}")
    return classes[kind](**cfg)


# ----------------------------------------------------------------------------------------------------
# Multi-head attention (torch.nn.MultiheadAttention)
# ----------------------------------------------------------------------------------------------------


def _torch_mask(mask: Any, name: str) -> np.ndarray:
    """torch mask semantics -> additive float32: bool True = masked (-inf), float added."""
    m = np.asarray(mask)
    if m.dtype == bool:
        return np.where(m, np.float32(-np.inf), np.float32(0.0))
    if m.dtype.kind not in "fiu":
        raise DTypeError(f"{name}: expected bool or float, got dtype {m.dtype}")
    return np.ascontiguousarray(m, dtype=np.float32)


class MultiheadAttention:
    """``torch.nn.MultiheadAttention`` for inference (dropout is ignored).

    Parameters and state_dict names are torch's: ``in_proj_weight`` (3E, E) when kdim == vdim == E, else
    ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim); ``in_proj_bias``
    (3E,), ``out_proj.weight`` (E, E), ``out_proj.bias`` (E,) when bias=True.
    ``add_bias_kv`` and ``add_zero_attn`` are not supported.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        seed: int | None = None,
        n_threads: int | None = None,
        dropout: float = 0.0,
    ):
        if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ShapeError(f"embed_dim: expected a positive multiple of num_heads={num_heads}, got {embed_dim}")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        self.n_threads = n_threads
        self.dropout = float(dropout)
        self._same = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        rng = np.random.default_rng(seed)
        E = self.embed_dim
        self._state: dict[str, np.ndarray] = {}
        for k, shape in self._shapes().items():
            bound = 0.0 if "bias" in k else math.sqrt(6.0 / (shape[0] + shape[-1]))
            self._state[k] = (
                rng.uniform(-bound, bound, size=shape).astype(np.float32) if bound else np.zeros(shape, np.float32)
            )
        del E

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        E = self.embed_dim
        s: dict[str, tuple[int, ...]] = {}
        if self._same:
            s["in_proj_weight"] = (3 * E, E)
        else:
            s.update(q_proj_weight=(E, E), k_proj_weight=(E, self.kdim), v_proj_weight=(E, self.vdim))
        if self.bias:
            s["in_proj_bias"] = (3 * E,)
        s["out_proj.weight"] = (E, E)
        if self.bias:
            s["out_proj.bias"] = (E,)
        return s

    state_dict = _SingleHeadAttention.state_dict
    load_state_dict = _SingleHeadAttention.load_state_dict

    def config(self) -> dict[str, Any]:
        return {
            "type": "MultiheadAttention",
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "bias": self.bias,
            "kdim": self.kdim,
            "vdim": self.vdim,
            "batch_first": self.batch_first,
        }

    @classmethod
    def from_torch(cls, module: Any, n_threads: int | None = None) -> MultiheadAttention:
        """From a ``torch.nn.MultiheadAttention``."""
        if getattr(module, "bias_k", None) is not None or getattr(module, "add_zero_attn", False):
            raise UnsupportedError("MultiheadAttention: add_bias_kv / add_zero_attn are not supported")
        bias = module.in_proj_bias is not None
        layer = cls(
            module.embed_dim,
            module.num_heads,
            bias=bias,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
            n_threads=n_threads,
        )
        st = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        layer.load_state_dict(st)
        return layer

    def _packed(self):
        """(in_proj_weight packed or None, out_proj.weight packed) for the core's projection kernel, packed
        once per set of weights: load_state_dict replaces ``_state``, which drops the cache."""
        cache = getattr(self, "_pack_cache", None)
        if cache is not None and cache[0] is self._state:
            return cache[1], cache[2]
        s, ext = self._state, _ext()
        wp_in = ext.pack_linear(np.ascontiguousarray(s["in_proj_weight"], np.float32)) if self._same else None
        wp_o = ext.pack_linear(np.ascontiguousarray(s["out_proj.weight"], np.float32))
        self._pack_cache = (s, wp_in, wp_o)
        return wp_in, wp_o

    def _weights(self):
        E, s = self.embed_dim, self._state
        if self._same:
            w = s["in_proj_weight"]
            wq, wk, wv = w[:E], w[E : 2 * E], w[2 * E :]
        else:
            wq, wk, wv = s["q_proj_weight"], s["k_proj_weight"], s["v_proj_weight"]
        if self.bias:
            b = s["in_proj_bias"]
            bq, bk, bv = b[:E], b[E : 2 * E], b[2 * E :]
        else:
            bq = bk = bv = None
        return wq, wk, wv, bq, bk, bv, s["out_proj.weight"], s.get("out_proj.bias")

    def __call__(
        self,
        query: Any,
        key: Any,
        value: Any,
        key_padding_mask: Any = None,
        need_weights: bool = True,
        attn_mask: Any = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        """Same arguments and results as ``torch.nn.MultiheadAttention.forward``.

        query (L, B, E) / (B, L, E) if batch_first / (L, E) unbatched; key (S, B, kdim), value (S, B, vdim).
        key_padding_mask (B, S): bool True = ignore, or float added. attn_mask (L, S) or (B*H, L, S): bool
        True = not allowed, or float added. is_causal without attn_mask applies the causal mask (torch
        requires the mask itself as well; with attn_mask given, the mask is used as torch does).
        Returns (out like query, weights (B, L, S) averaged over heads / (B, H, L, S), or None).
        A fully masked query row gives zeros (torch gives NaN).
        """
        same_qk = key is query
        same_qv = value is query
        q = _f32(query, "query", (2, 3))
        k = q if same_qk else _f32(key, "key", (2, 3))
        v = q if same_qv else _f32(value, "value", (2, 3))
        if not (q.ndim == k.ndim == v.ndim):
            raise ShapeError(f"query/key/value: expected the same rank, got {q.shape}, {k.shape}, {v.shape}")
        unbatched = q.ndim == 2
        bf = self.batch_first or unbatched
        if unbatched:
            q, k, v = q[None], (q[None] if same_qk else k[None]), (q[None] if same_qv else v[None])
        if bf:
            B, L, E = q.shape
            S = k.shape[1]
        else:
            L, B, E = q.shape
            S = k.shape[0]
        if E != self.embed_dim or k.shape[2] != self.kdim or v.shape[2] != self.vdim:
            raise ShapeError(
                f"query/key/value: expected last dims ({self.embed_dim}, {self.kdim}, {self.vdim}), "
                f"got ({E}, {k.shape[2]}, {v.shape[2]})"
            )
        bk_shape = (B, S) if bf else (S, B)
        if k.shape[:2] != bk_shape or v.shape[:2] != bk_shape:
            raise ShapeError(f"key/value: expected leading dims {bk_shape}, got {k.shape[:2]} and {v.shape[:2]}")
        H = self.num_heads
        kpm = None
        if key_padding_mask is not None:
            kpm = _torch_mask(key_padding_mask, "key_padding_mask")
            if unbatched and kpm.ndim == 1:
                kpm = kpm[None]
            if kpm.shape != (B, S):
                raise ShapeError(f"key_padding_mask: expected shape ({B}, {S}), got {kpm.shape}")
            kpm = np.ascontiguousarray(kpm)
        mask = None
        if attn_mask is not None:
            m = _torch_mask(attn_mask, "attn_mask")
            if m.shape == (L, S):
                mask = m.reshape(1, 1, L, S)
            elif m.ndim == 3 and m.shape == (B * H, L, S):
                mask = np.ascontiguousarray(m).reshape(B, H, L, S)
            else:
                raise ShapeError(f"attn_mask: expected shape ({L}, {S}) or ({B * H}, {L}, {S}), got {m.shape}")
        wq, wk, wv, bq, bk, bv, wo, bo = self._weights()
        wp_in, wp_o = self._packed()
        y, w = _ext().mha(
            q,
            k,
            v,
            H,
            bf,
            wq,
            wk,
            wv,
            bq,
            bk,
            bv,
            wo,
            bo,
            mask,
            kpm,
            bool(is_causal and attn_mask is None),
            bool(need_weights),
            _threads(self.n_threads),
            wp_in,
            wp_o,
        )
        if unbatched:
            y = y[0]
        if not need_weights:
            return y, None
        if average_attn_weights:
            w = w.mean(axis=1)
        return y, (w[0] if unbatched else w)

    forward = __call__


# ----------------------------------------------------------------------------------------------------
# ONNX Attention (opset 23)
# ----------------------------------------------------------------------------------------------------


def onnx_attention(
    Q: Any,
    K: Any,
    V: Any,
    attn_mask: Any = None,
    past_key: Any = None,
    past_value: Any = None,
    *,
    is_causal: bool | int = False,
    q_num_heads: int | None = None,
    kv_num_heads: int | None = None,
    scale: float | None = None,
    softcap: float = 0.0,
    qk_matmul_output_mode: int = 0,
    need_qk_output: bool = False,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The ONNX ``Attention`` operator (opset 23), inference.

    Parameters
    ----------
    Q : (B, Hq, L, Dk) or (B, L, Hq*Dk) with q_num_heads
    K : (B, Hkv, S, Dk) or (B, S, Hkv*Dk) with kv_num_heads
    V : (B, Hkv, S, Dv) or (B, S, Hkv*Dv)
    attn_mask : bool (True = attend) or float (added), broadcastable to (B, Hq, L, P+S); a shorter last axis
        is padded with masked positions
    past_key, past_value : (B, Hkv, P, Dk), (B, Hkv, P, Dv) or None: prepended to K, V
    is_causal : key s allowed for query l iff s <= l + P
    scale : default 1/sqrt(Dk); softcap : > 0 applies softcap * tanh(scores / softcap) before the mask
    qk_matmul_output_mode : which scores the 4th output holds: 0 = scale * Q K^T (before softcap and mask),
        3 = the softmax probabilities; 1 and 2 are not supported. Computed only if need_qk_output
        (the 4th output is None otherwise).

    Returns
    -------
    Y (like Q's layout with Dv), present_key (B, Hkv, P+S, Dk), present_value (B, Hkv, P+S, Dv),
    qk_matmul_output (B, Hq, L, P+S). Grouped-query heads: query head h uses kv head h // (Hq / Hkv).
    """
    q = _f32(Q, "Q", (3, 4))
    k = _f32(K, "K", (3, 4))
    v = _f32(V, "V", (3, 4))
    if not q.ndim == k.ndim == v.ndim:
        raise ShapeError(f"Q/K/V: expected the same rank, got {q.shape}, {k.shape}, {v.shape}")
    three_d = q.ndim == 3
    if three_d:
        if q_num_heads is None or kv_num_heads is None:
            raise ShapeError("q_num_heads/kv_num_heads: expected both for 3-D inputs, got None")
        for nm, n in (("q_num_heads", q_num_heads), ("kv_num_heads", kv_num_heads)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ShapeError(f"{nm}: expected an integer >= 1, got {n!r}")
        B, L, hq_d = q.shape
        if hq_d % q_num_heads or k.shape[2] % kv_num_heads or v.shape[2] % kv_num_heads:
            raise ShapeError(
                f"Q/K/V: expected hidden sizes divisible by the heads ({q_num_heads}, {kv_num_heads}), "
                f"got {q.shape}, {k.shape}, {v.shape}"
            )
        # explicit head sizes: reshape(..., -1) cannot infer a size when B, L or S is 0
        q4 = q.reshape(B, L, q_num_heads, hq_d // q_num_heads).transpose(0, 2, 1, 3)
        k = k.reshape(B, k.shape[1], kv_num_heads, k.shape[2] // kv_num_heads).transpose(0, 2, 1, 3)
        v = v.reshape(B, v.shape[1], kv_num_heads, v.shape[2] // kv_num_heads).transpose(0, 2, 1, 3)
    else:
        q4 = q
    B, Hq, L, Dk = q4.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[3] != Dk or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ShapeError(f"K/V: expected (B={B}, Hkv, S, Dk={Dk}) and (B, Hkv, S, Dv), got {k.shape}, {v.shape}")
    Hkv = k.shape[1]
    if Hq < 1 or Hkv < 1:  # (Hq % 0 raised ZeroDivisionError)
        raise ShapeError(f"heads: expected at least one query and one key/value head, got Q {q.shape}, K {k.shape}")
    if Hq % Hkv:
        raise ShapeError(f"heads: expected q heads ({Hq}) a multiple of kv heads ({Hkv})")
    past = 0
    if (past_key is None) != (past_value is None):
        raise ShapeError("past_key/past_value: expected both or neither")
    if past_key is not None:
        pk = _f32(past_key, "past_key", 4)
        pv = _f32(past_value, "past_value", 4)
        if pk.shape[:2] != (B, Hkv) or pk.shape[3] != Dk or pv.shape[:3] != pk.shape[:3] or pv.shape[3] != v.shape[3]:
            raise ShapeError(
                f"past_key/past_value: expected ({B}, {Hkv}, P, {Dk}) and ({B}, {Hkv}, P, {v.shape[3]}), "
                f"got {pk.shape}, {pv.shape}"
            )
        past = pk.shape[2]
        k = np.concatenate([pk, k], axis=2)
        v = np.concatenate([pv, v], axis=2)
    else:
        k = np.ascontiguousarray(k)
        v = np.ascontiguousarray(v)
    S = k.shape[2]
    Dv = v.shape[3]
    mask = None
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        if m.ndim < 1 or m.ndim > 4:
            raise ShapeError(f"attn_mask: expected 1 to 4 dimensions, got shape {m.shape}")
        if m.dtype == bool:
            m = np.where(m, np.float32(0.0), np.float32(-np.inf))
        elif m.dtype.kind not in "fiu":
            raise DTypeError(f"attn_mask: expected bool or float, got dtype {m.dtype}")
        m = m.astype(np.float32, copy=False)
        if m.shape[-1] > S:
            raise ShapeError(f"attn_mask: expected a last dimension <= {S}, got {m.shape}")
        if m.shape[-1] < S:
            m = np.concatenate([m, np.full(m.shape[:-1] + (S - m.shape[-1],), -np.inf, np.float32)], axis=-1)
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)
        for i, full in enumerate((B, Hq, L)):
            if m.shape[i] not in (1, full):
                raise ShapeError(
                    f"attn_mask: expected a shape broadcastable to ({B}, {Hq}, {L}, {S}), got "
                    f"{np.asarray(attn_mask).shape}"
                )
        mask = np.ascontiguousarray(m)
    if qk_matmul_output_mode not in (0, 3):
        raise UnsupportedError(f"qk_matmul_output_mode: expected 0 or 3, got {qk_matmul_output_mode}")
    if softcap is None:
        softcap = 0.0
    if softcap < 0:
        raise ShapeError(f"softcap: expected >= 0, got {softcap}")
    sc = (1.0 / math.sqrt(Dk) if Dk else 1.0) if scale is None else float(scale)
    if three_d:
        y = np.empty((B, L, Hq, Dv), np.float32)
        y4 = y.transpose(0, 2, 1, 3)
    else:
        y = y4 = np.empty((B, Hq, L, Dv), np.float32)
    w, raw = _ext().sdpa(
        q4,
        k,
        v,
        mask,
        None,
        bool(is_causal),
        past,
        sc,
        float(softcap),
        need_qk_output and qk_matmul_output_mode == 3,
        need_qk_output and qk_matmul_output_mode == 0,
        y4,
        _threads(n_threads),
    )
    qk = w if qk_matmul_output_mode == 3 else raw
    if three_d:
        y = y.reshape(B, L, Hq * Dv)
    return y, k, v, qk
