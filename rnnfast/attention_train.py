"""Training of the single-head attention forms: forward with a cache and backward, in the C core
(csrc/rf_attention_train.c). Companion of :mod:`rnnfast.train` (same conventions)::

    from rnnfast import attention, attention_train as AT
    attn = attention.AdditiveAttention(query_size=256, key_size=512, attn_size=128)
    ctx, w, cache = AT.attention_forward_train(attn, query, keys, values, lengths=src_lengths)
    d_query, d_keys, d_values, grads = AT.attention_backward(attn, cache, d_ctx)   # grads by state_dict names

    m = AT.TrainAttention(attn)            # a rnnfast.train.Module: Parameters with .grad, optimizers work
    ctx, w = m.forward(query, keys, values, lengths=src_lengths)
    d_query, d_keys, d_values = m.backward(d_ctx)   # accumulates p.grad; m.sync() writes the weights back

Forms (the layers of :mod:`rnnfast.attention`; equations in rnnfast/reference_attention.py)::

    AdditiveAttention   e[s] = v . tanh(W_q q + b + W_k k[s])   params query_weight (A, Dq), key_weight (A, Dk),
                                                                v (A,), bias (A,) when bias=True
    DotAttention        e[s] = q . k[s]                          no parameters (Dq == Dk)
    ScaledDotAttention  e[s] = q . k[s] / sqrt(Dk)               no parameters (Dq == Dk)
    GeneralAttention    e[s] = q . (W k[s] + b)                  params weight (Dq, Dk), bias (Dq,) when bias=True
    a = softmax(e) over the allowed keys (s < lengths[b] and mask[b, s]); a fully masked row gives zero
    weights, a zero context and zero gradients;  context = sum_s a[s] values[s]

Shapes: query (B, Dq) or (B, Tq, Dq) (Tq queries attend independently over the same memory, e.g. every
step of a Luong decoder at once); keys (B, S, Dk); values (B, S, Dv) (default: the keys); lengths (B,);
mask (B, S) True/nonzero = attend. context (B, [Tq,] Dv), weights (B, [Tq,] S), float32.
Masked positions get exactly zero d_keys and d_values. With values=None (values are the keys) the returned
d_keys is the total gradient of the keys (both roles) and d_values is None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import errors
from .train import Module, Parameter, _array, _integer

__all__ = [
    "AttentionCache",
    "TrainAttention",
    "TrainBahdanauDecoder",
    "TrainMemory",
    "attend_forward_train",
    "attention_backward",
    "attention_forward_train",
    "memory_backward",
    "memory_forward_train",
]

# form name -> (C form, {C gradient slot: state_dict name})
_FORMS = {
    "AdditiveAttention": ("additive", {"w_q": "query_weight", "w_k": "key_weight", "v": "v", "bias": "bias"}),
    "DotAttention": ("dot", {}),
    "ScaledDotAttention": ("dot", {}),
    "GeneralAttention": ("general", {"w_k": "weight", "bias": "bias"}),
}
_ALIASES = {
    "additive": "AdditiveAttention",
    "dot": "DotAttention",
    "scaled_dot": "ScaledDotAttention",
    "general": "GeneralAttention",
}


def _ext():
    import rnnfast  # noqa: F401  (the core module fills its BLAS table first)

    from . import _attention_train

    return _attention_train


def _threads(n_threads: int | None) -> int:
    if n_threads is not None:
        n_threads = _integer(n_threads, "n_threads", 0)
    try:
        from . import _threads as th

        return int(th.resolve(n_threads))  # 1 in a forked child even when n_threads is given
    except ImportError:  # pragma: no cover
        return 0 if n_threads is None else int(n_threads)


def _f32(a: Any, name: str) -> np.ndarray:
    if isinstance(a, Parameter):
        a = a.data
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().numpy()
    arr = _array(a, name)
    if arr.dtype.kind not in "fiub":
        raise errors.DTypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _kind_of(layer: Any) -> str:
    """The layer's class name among _FORMS (a layer object, or a kind string such as "additive")."""
    if isinstance(layer, str):
        kind = _ALIASES.get(layer, layer)
    elif isinstance(layer, TrainAttention):
        kind = layer.kind
    else:
        kind = layer.config().get("type") if hasattr(layer, "config") else type(layer).__name__
    if kind not in _FORMS:
        raise errors.UnsupportedError(
            f"layer: expected an AdditiveAttention, DotAttention, ScaledDotAttention or GeneralAttention "
            f"(or one of {sorted(_ALIASES)}), got {kind!r}"
        )
    return kind


def _layer_params(layer: Any) -> Mapping[str, Any]:
    if isinstance(layer, str):
        return {}
    if isinstance(layer, TrainAttention):
        return layer._params
    state = getattr(layer, "_state", None)
    return state if isinstance(state, dict) else layer.state_dict()


def _lengths_mask(lengths: Any, mask: Any, B: int, S: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """lengths (B,) -> int32 in [0, S]; mask (B, S) -> uint8 (1 = attend)."""
    lens = None
    if lengths is not None:
        la = _array(lengths, "lengths")
        if la.dtype.kind not in "iu" and la.size:
            raise errors.DTypeError(f"lengths: expected ({B},) integers, got dtype {la.dtype}")
        if la.shape != (B,):
            raise errors.ShapeError(f"lengths: expected ({B},) integers, got {la.dtype} {la.shape}")
        if B and (la.min() < 0 or la.max() > S):
            raise errors.ShapeError(f"lengths: expected values in [0, {S}], got [{la.min()}, {la.max()}]")
        lens = np.ascontiguousarray(la, dtype=np.int32)
    km = None
    if mask is not None:
        m = _array(mask, "mask")
        if m.shape != (B, S):
            raise errors.ShapeError(f"mask: expected shape ({B}, {S}) (True = attend), got {m.shape}")
        if m.dtype.kind not in "biuf":
            raise errors.DTypeError(f"mask: expected bool or numbers, got dtype {m.dtype}")
        km = np.ascontiguousarray(m != 0, dtype=np.uint8)
    return lens, km


def _param_getters(params: Mapping[str, Any]):
    """(param(name, shape, required) -> float32 array or None, sizes_from(name, what) -> 2-D shape)."""

    def param(name: str, shape: tuple[int, ...], required: bool = True) -> np.ndarray | None:
        if name not in params:
            if required:
                raise errors.StateDictError(f"params: missing {name!r} (expected shape {shape})")
            return None
        a = _f32(params[name], name)
        if a.shape != shape:
            raise errors.StateDictError(f"params[{name!r}]: expected shape {shape}, got {a.shape}")
        return a

    def sizes_from(name: str, what: str) -> tuple[int, int]:
        """(rows, cols) of a 2-D parameter; the query/keys must match its sizes (ShapeError naming them)."""
        if name not in params:
            raise errors.StateDictError(f"params: missing {name!r} ({what})")
        shape = np.shape(params[name].data if isinstance(params[name], Parameter) else params[name])
        if len(shape) != 2:
            raise errors.StateDictError(f"params[{name!r}]: expected {what}, got shape {shape}")
        return int(shape[0]), int(shape[1])

    return param, sizes_from


class AttentionCache:
    """What :func:`attention_backward` needs from :func:`attention_forward_train`: the C problem (which
    keeps the float32 inputs and weights alive) and the C core's cache buffer."""

    __slots__ = ("buf", "kind", "memory", "names", "problem", "shared_kv", "squeeze")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


def attention_forward_train(
    layer: Any,
    query: Any,
    keys: Any,
    values: Any = None,
    lengths: Any = None,
    mask: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, AttentionCache]:
    """Attention forward that keeps a cache for :func:`attention_backward`.

    Parameters
    ----------
    layer : AdditiveAttention / DotAttention / ScaledDotAttention / GeneralAttention (or a TrainAttention,
        or a kind string "additive", "dot", "scaled_dot", "general" together with ``params``)
    query : (B, Dq) or (B, Tq, Dq)
    keys : (B, S, Dk)
    values : (B, S, Dv) or None (the keys)
    lengths : (B,) ints in [0, S] or None
    mask : (B, S) bool / 0-1, True = attend, or None
    params : parameters by state_dict names (default: the layer's); Parameter objects accepted

    Returns
    -------
    context (B, [Tq,] Dv), weights (B, [Tq,] S), cache
    """
    kind = _kind_of(layer)
    form, names = _FORMS[kind]
    if params is None:
        params = _layer_params(layer)
    q = _f32(query, "query")
    if q.ndim not in (2, 3):
        raise errors.ShapeError(f"query: expected (B, Dq) or (B, Tq, Dq), got shape {q.shape}")
    squeeze = q.ndim == 2
    if squeeze:
        q = q[:, None, :]
    k = _f32(keys, "keys")
    if k.ndim != 3:
        raise errors.ShapeError(f"keys: expected (B, S, Dk), got shape {k.shape}")
    shared = values is None
    v = k if shared else _f32(values, "values")
    if v.ndim != 3 or v.shape[:2] != k.shape[:2]:
        raise errors.ShapeError(f"values: expected ({k.shape[0]}, {k.shape[1]}, Dv), got shape {v.shape}")
    B, Tq, Dq = q.shape
    S, Dk = k.shape[1], k.shape[2]
    if k.shape[0] != B:
        raise errors.ShapeError(f"keys: expected batch {B} (the query's), got shape {k.shape}")
    lens, km = _lengths_mask(lengths, mask, B, S)
    param, sizes_from = _param_getters(params)

    w_q = w_k = vv = bias = None
    scale = 1.0
    if form == "additive":
        A, dq_want = sizes_from("query_weight", "(A, Dq)")
        dk_want = sizes_from("key_weight", "(A, Dk)")[1]
    elif form == "general":
        dq_want, dk_want = sizes_from("weight", "(Dq, Dk)")
    if form != "dot":
        if Dq != dq_want:
            raise errors.ShapeError(f"query: expected last dimension {dq_want}, got {Dq}")
        if Dk != dk_want:
            raise errors.ShapeError(f"keys: expected last dimension {dk_want}, got {Dk}")
    if form == "additive":
        w_q = param("query_weight", (A, Dq))
        w_k = param("key_weight", (A, Dk))
        vv = param("v", (A,))
        bias = param("bias", (A,), required=False)
    elif form == "general":
        w_k = param("weight", (Dq, Dk))
        bias = param("bias", (Dq,), required=False)
    else:
        if Dq != Dk:
            raise errors.ShapeError(f"query: expected last dimension {Dk} (the keys') for {kind}, got {Dq}")
        if kind == "ScaledDotAttention" and Dk > 0:
            scale = 1.0 / math.sqrt(Dk)
    problem = _ext().Problem(form, np.ascontiguousarray(q), k, v, lens, km, w_q, w_k, vv, bias, scale)
    ctx, w, buf = problem.forward(_threads(n_threads))
    cache = AttentionCache(
        buf=buf, kind=kind, names=names, problem=problem, shared_kv=shared, squeeze=squeeze, memory=None
    )
    if squeeze:
        ctx, w = ctx[:, 0], w[:, 0]
    return ctx, w, cache


def attention_backward(
    layer: Any,
    cache: AttentionCache,
    d_context: Any = None,
    d_weights: Any = None,
    *,
    need_inputs: bool = True,
    n_threads: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    """Backward for the cache of :func:`attention_forward_train`.

    Parameters
    ----------
    layer : the layer given to forward (only checked for consistency; may be None)
    d_context : gradient of the loss w.r.t. the context (same shape), or None (zero)
    d_weights : gradient w.r.t. the attention weights (same shape), or None (zero)
    need_inputs : False skips d_query / d_keys / d_values (returned as None)

    Returns
    -------
    d_query (like query), d_keys (B, S, Dk), d_values (B, S, Dv) (None when values were the keys: d_keys
    then holds the total gradient of the keys), grads : dict of parameter gradients by state_dict names
    """
    if not isinstance(cache, AttentionCache):
        raise errors.DTypeError(f"cache: expected an AttentionCache, got {type(cache).__name__}")
    if layer is not None and _kind_of(layer) != cache.kind:
        raise errors.ShapeError(f"backward: layer is a {_kind_of(layer)}, the cache is of a {cache.kind}")
    pr = cache.problem
    query, values = pr.arrays[0], pr.arrays[2]
    B, Tq = query.shape[0], query.shape[1]
    S, Dv = values.shape[1], values.shape[2]

    def prep(a: Any, name: str, last: int) -> np.ndarray | None:
        if a is None:
            return None
        arr = _f32(a, name)
        want = (B, last) if cache.squeeze else (B, Tq, last)
        if arr.shape != want:
            raise errors.ShapeError(f"{name}: expected shape {want}, got {arr.shape}")
        return np.ascontiguousarray(arr.reshape(B, Tq, last))

    dc = prep(d_context, "d_context", Dv)
    dw = prep(d_weights, "d_weights", S)
    dq, dk, dv, gp = pr.backward(cache.buf, dc, dw, need_inputs, True, _threads(n_threads))
    grads = {cache.names[slot]: g for slot, g in gp.items()}
    if dq is not None and cache.squeeze:
        dq = dq[:, 0]
    mem = cache.memory
    if mem is not None:  # attended a TrainMemory: its key side is differentiated by memory_backward
        if dk is not None:
            mem.d_kp = dk if mem.d_kp is None else mem.d_kp + dk
            if not mem.shared_kv:
                mem.d_values = dv if mem.d_values is None else mem.d_values + dv
            else:
                mem.d_kp_values = dv if mem.d_kp_values is None else mem.d_kp_values + dv
        return dq, None, None, grads
    if cache.shared_kv and dk is not None:
        dk += dv
        dv = None
    return dq, dk, dv, grads


class TrainMemory:
    """Keys projected once per source for attending many times (:func:`attend_forward_train`), e.g. at every
    step of a decoder. Backward of each attend accumulates ``d_kp`` (the gradient of the projection) and
    ``d_values`` here; :func:`memory_backward` turns them into d_keys / d_values and the key-side parameter
    gradients. Attributes: keys (B, S, Dk), values (B, S, Dv) (the keys when shared_kv), kp (B, S, A)
    additive, (B, S, Dq) general, the keys for dot forms; lengths int32 (B,) or None; mask uint8 (B, S)."""

    __slots__ = ("d_kp", "d_kp_values", "d_values", "keys", "kind", "kp", "lengths", "mask", "shared_kv", "values")

    def __init__(self, **kw: Any) -> None:
        self.d_kp = self.d_values = self.d_kp_values = None
        for k, v in kw.items():
            setattr(self, k, v)

    def zero_grad(self) -> None:
        self.d_kp = self.d_values = self.d_kp_values = None


def memory_forward_train(
    layer: Any,
    keys: Any,
    values: Any = None,
    lengths: Any = None,
    mask: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
) -> TrainMemory:
    """The key side of attention, once per source: kp = keys W_k^T (additive), keys W^T + b (general), the
    keys themselves (dot forms). Shapes as :func:`attention_forward_train`."""
    from . import train as T

    kind = _kind_of(layer)
    form = _FORMS[kind][0]
    if params is None:
        params = _layer_params(layer)
    k = _f32(keys, "keys")
    if k.ndim != 3:
        raise errors.ShapeError(f"keys: expected (B, S, Dk), got shape {k.shape}")
    shared = values is None
    v = k if shared else _f32(values, "values")
    if v.ndim != 3 or v.shape[:2] != k.shape[:2]:
        raise errors.ShapeError(f"values: expected ({k.shape[0]}, {k.shape[1]}, Dv), got shape {v.shape}")
    B, S, Dk = k.shape
    lens, km = _lengths_mask(lengths, mask, B, S)
    param, sizes_from = _param_getters(params)
    if form == "additive":
        A, _ = sizes_from("query_weight", "(A, Dq)")
        if sizes_from("key_weight", "(A, Dk)")[1] != Dk:
            raise errors.ShapeError(f"keys: expected last dimension {sizes_from('key_weight', '')[1]}, got {Dk}")
        kp = T.linear_forward(k, param("key_weight", (A, Dk)))
    elif form == "general":
        Dq, dk_want = sizes_from("weight", "(Dq, Dk)")
        if Dk != dk_want:
            raise errors.ShapeError(f"keys: expected last dimension {dk_want}, got {Dk}")
        kp = T.linear_forward(k, param("weight", (Dq, Dk)), param("bias", (Dq,), required=False))
    else:
        kp = k
    return TrainMemory(kind=kind, keys=k, values=v, kp=kp, lengths=lens, mask=km, shared_kv=shared)


def attend_forward_train(
    layer: Any,
    query: Any,
    memory: TrainMemory,
    *,
    params: Mapping[str, Any] | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, AttentionCache]:
    """Attention of query (B, Dq) or (B, Tq, Dq) over a :class:`TrainMemory`. Returns context, weights and a
    cache for :func:`attention_backward`, which then returns (d_query, None, None, query-side grads) and
    accumulates the key/value gradients into the memory (see :func:`memory_backward`)."""
    kind = _kind_of(layer)
    if not isinstance(memory, TrainMemory):
        raise errors.DTypeError(f"memory: expected a TrainMemory, got {type(memory).__name__}")
    if kind != memory.kind:
        raise errors.ShapeError(f"memory: built for a {memory.kind}, attended with a {kind}")
    form, names = _FORMS[kind]
    if params is None:
        params = _layer_params(layer)
    q = _f32(query, "query")
    if q.ndim not in (2, 3):
        raise errors.ShapeError(f"query: expected (B, Dq) or (B, Tq, Dq), got shape {q.shape}")
    squeeze = q.ndim == 2
    if squeeze:
        q = q[:, None, :]
    B, Tq, Dq = q.shape
    if B != memory.kp.shape[0]:
        raise errors.ShapeError(f"query: expected batch {memory.kp.shape[0]} (the memory's), got shape {q.shape}")
    param, sizes_from = _param_getters(params)
    w_q = vv = bias = None
    scale = 1.0
    if form == "additive":
        A, dq_want = sizes_from("query_weight", "(A, Dq)")
        if Dq != dq_want:
            raise errors.ShapeError(f"query: expected last dimension {dq_want}, got {Dq}")
        w_q, vv, bias = param("query_weight", (A, Dq)), param("v", (A,)), param("bias", (A,), required=False)
    elif Dq != memory.kp.shape[2]:
        raise errors.ShapeError(f"query: expected last dimension {memory.kp.shape[2]}, got {Dq}")
    elif kind == "ScaledDotAttention" and Dq > 0:
        scale = 1.0 / math.sqrt(Dq)
    q = np.ascontiguousarray(q)
    if form == "dot":
        problem = _ext().Problem(form, q, memory.kp, memory.values, memory.lengths, memory.mask, scale=scale)
    else:
        problem = _ext().Problem(
            form, q, None, memory.values, memory.lengths, memory.mask, w_q, None, vv, bias, scale, kp=memory.kp
        )
    ctx, w, buf = problem.forward(_threads(n_threads))
    cache = AttentionCache(
        buf=buf, kind=kind, names=names, problem=problem, shared_kv=False, squeeze=squeeze, memory=memory
    )
    if squeeze:
        ctx, w = ctx[:, 0], w[:, 0]
    return ctx, w, cache


def memory_backward(
    layer: Any, memory: TrainMemory, *, params: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """Gradients of the memory from what the attends accumulated. Returns d_keys (B, S, Dk) (the total
    gradient of the keys when values were the keys), d_values (B, S, Dv) or None (shared), and the key-side
    parameter gradients ({"key_weight"} additive, {"weight", "bias"} general, {} dot)."""
    from . import train as T

    kind = _kind_of(layer)
    if kind != memory.kind:
        raise errors.ShapeError(f"memory: built for a {memory.kind}, got a {kind}")
    if params is None:
        params = _layer_params(layer)
    k, kp = memory.keys, memory.kp
    d_kp = memory.d_kp if memory.d_kp is not None else np.zeros(kp.shape, np.float32)
    grads: dict[str, np.ndarray] = {}
    form = _FORMS[kind][0]
    if form == "additive":
        d_keys, grads["key_weight"], _ = T.linear_backward(k, _f32(params["key_weight"], "key_weight"), d_kp, False)
    elif form == "general":
        has_bias = "bias" in params
        d_keys, grads["weight"], db = T.linear_backward(k, _f32(params["weight"], "weight"), d_kp, has_bias)
        if has_bias:
            grads["bias"] = db
    else:
        d_keys = d_kp.copy()
    d_values = memory.d_values
    if memory.shared_kv:
        if memory.d_kp_values is not None:
            d_keys = d_keys + memory.d_kp_values
        d_values = None
    elif d_values is None:
        d_values = np.zeros(memory.values.shape, np.float32)
    return d_keys, d_values, grads


class TrainAttention(Module):
    """Trainable view of an attention layer (a :class:`rnnfast.train.Module`).

    ``forward(query, keys, values=None, lengths=None, mask=None) -> (context, weights)`` keeps the cache of
    the last call; ``backward(d_context, d_weights=None) -> (d_query, d_keys, d_values)`` accumulates every
    Parameter.grad (named as the layer's state_dict). :meth:`sync` writes the parameters back into the
    layer. To attend several times per training step (a decoder loop), use the functional
    :func:`attention_forward_train` / :func:`attention_backward` with ``params=m._params`` and
    accumulate with ``m._params[name].accumulate(g)``, or one TrainAttention per step.
    """

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer
        self.kind = _kind_of(layer)
        for n, a in layer.state_dict().items():
            self._params[n] = Parameter(n, a)
        self._cache: AttentionCache | None = None

    def forward(
        self, query: Any, keys: Any, values: Any = None, lengths: Any = None, mask: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        ctx, w, self._cache = attention_forward_train(
            self.kind,
            query,
            keys,
            values,
            lengths,
            mask,
            params=self._params,
            n_threads=getattr(self.layer, "n_threads", None),
        )
        return ctx, w

    def backward(self, d_context: Any = None, d_weights: Any = None, need_dx: bool = True):
        if self._cache is None:
            raise errors.ShapeError("backward: call forward first")
        dq, dk, dv, grads = attention_backward(None, self._cache, d_context, d_weights, need_inputs=need_dx)
        for n, g in grads.items():
            self._params[n].accumulate(g)
        return dq, dk, dv

    def sync(self) -> Any:
        """Write the trained parameters into the wrapped layer (load_state_dict) and return it."""
        self.layer.load_state_dict(self.state_dict())
        return self.layer


# ==================================================================================================
# Teacher-forced Bahdanau decoder (composed from rnnfast.train's pieces and the attention above)
# ==================================================================================================
class TrainBahdanauDecoder(Module):
    """Teacher-forced training of a Bahdanau-style attention decoder over a given memory::

        c_t = attn(h_{t-1}[top], memory)     x_t = [emb(y_{t-1}); c_t]     s_t = dec(x_t, s_{t-1})
        logits_t = W_o h_t[top] + b_o

    (the ``"bahdanau"`` wiring of :class:`rnnfast.seq2seq.Seq2Seq`, keys = values = memory). Each step is
    one call of :func:`rnnfast.train.forward_train` with T=1 and one :func:`attention_forward_train`;
    backward runs the steps in reverse, carrying the state gradient through ``dh0`` and the query.

    Parameters are named ``decoder.<torch name>``, ``attention.<name>``, ``embedding``, ``out_weight``,
    ``out_bias``. ``forward(memory (B, S, Dm), tokens (B, T) ints, state0=None, src_lengths=None)`` returns
    logits (B, T, V) (batch-first, like Seq2Seq); state0 is h0 (L, B, H) or (h0, c0) for an LSTM decoder
    (None: zeros). ``backward(d_logits) -> (d_memory (B, S, Dm), dh0 (L, B, H), dc0 (L, B, H) or None)``
    accumulates every Parameter.grad; chain d_memory / dh0 into the encoder's :func:`rnnfast.train.backward`.
    The attention's key projection is computed once per forward (:func:`memory_forward_train`) and its
    gradient once per backward (:func:`memory_backward`), not per step.
    """

    def __init__(self, decoder: Any, attention: Any, embedding: Any, out_weight: Any, out_bias: Any = None) -> None:
        super().__init__()
        from .train import RecurrentSpec

        self.decoder, self.attention = decoder, attention
        self.spec = RecurrentSpec.from_layer(decoder)
        self.spec.batch_first = False  # steps are run time-major, (1, B, I)
        if self.spec.bidirectional or self.spec.proj_size:
            raise errors.UnsupportedError("decoder: expected a unidirectional stack without proj_size")
        self.kind = _kind_of(attention)
        for n, a in decoder.state_dict().items():
            self._params["decoder." + n] = Parameter("decoder." + n, a)
        for n, a in attention.state_dict().items():
            self._params["attention." + n] = Parameter("attention." + n, a)
        self._params["embedding"] = Parameter("embedding", _f32(embedding, "embedding"))
        self._params["out_weight"] = Parameter("out_weight", _f32(out_weight, "out_weight"))
        if out_bias is not None:
            self._params["out_bias"] = Parameter("out_bias", _f32(out_bias, "out_bias"))
        if self._params["embedding"].data.ndim != 2:
            raise errors.ShapeError(f"embedding: expected (V, E), got {self._params['embedding'].shape}")
        E = self._params["embedding"].shape[1]
        if self._params["out_weight"].data.ndim != 2 or self._params["out_weight"].shape[1] != self.spec.hidden_size:
            raise errors.ShapeError(
                f"out_weight: expected (V, {self.spec.hidden_size}), got {self._params['out_weight'].shape}"
            )
        V = self._params["out_weight"].shape[0]
        if out_bias is not None and self._params["out_bias"].shape != (V,):
            raise errors.ShapeError(f"out_bias: expected ({V},), got {self._params['out_bias'].shape}")
        self.memory_size = self.spec.input_size - E
        if self.memory_size < 0:
            raise errors.ShapeError(
                f"decoder.input_size: expected embedding size {E} + memory size, got {self.spec.input_size}"
            )
        self._model = None
        self._cache: dict[str, Any] | None = None
        self.final_state: Any = None

    @classmethod
    def from_seq2seq(cls, model: Any) -> TrainBahdanauDecoder:
        """The decoder side of an :class:`rnnfast.seq2seq.Seq2Seq` with the ``"bahdanau"`` wiring;
        :meth:`sync` writes back into that model."""
        if getattr(model, "attention_type", None) != "bahdanau":
            raise errors.UnsupportedError(
                "model: expected a Seq2Seq with attention_type='bahdanau', "
                f"got {getattr(model, 'attention_type', None)!r}"
            )
        m = cls(model.decoder, model.attention, model.embedding, model.out_weight, model.out_bias)
        m._model = model
        return m

    def _prefixed(self, prefix: str) -> dict[str, Parameter]:
        return {n[len(prefix) :]: p for n, p in self._params.items() if n.startswith(prefix)}

    def forward(self, memory: Any, tokens: Any, state0: Any = None, src_lengths: Any = None) -> np.ndarray:
        from . import train as T

        mem = _f32(memory, "memory")
        if mem.ndim != 3 or mem.shape[2] != self.memory_size:
            raise errors.ShapeError(f"memory: expected (B, S, {self.memory_size}), got {mem.shape}")
        tok = T._tokens(tokens)
        B = mem.shape[0]
        if tok.ndim != 2 or tok.shape[0] != B:
            raise errors.ShapeError(f"tokens: expected (B={B}, T) integers, got shape {tok.shape}")
        L, H, lstm = self.spec.num_layers, self.spec.hidden_size, self.spec.mode == "LSTM"
        h = c = None
        if state0 is not None:
            if lstm:
                if not isinstance(state0, (tuple, list)) or len(state0) != 2:
                    raise errors.ShapeError("state0: expected (h0, c0) for an LSTM decoder")
                h, c = _f32(state0[0], "h0"), _f32(state0[1], "c0")
            else:
                h = _f32(state0, "h0")
            for a, name in ((h, "h0"), (c, "c0")):
                if a is not None and a.shape != (L, B, H):
                    raise errors.ShapeError(f"{name}: expected ({L}, {B}, {H}), got {a.shape}")
        if h is None:
            h = np.zeros((L, B, H), np.float32)
        if lstm and c is None:
            c = np.zeros((L, B, H), np.float32)
        dec_p, att_p = self._prefixed("decoder."), self._prefixed("attention.")
        emb_x = T.embedding_forward(self._params["embedding"].data, tok)  # (B, T, E)
        memory = memory_forward_train(self.kind, mem, None, src_lengths, params=att_p)  # keys projected once
        steps, tops = [], []
        for t in range(tok.shape[1]):
            ctx, _, acache = attend_forward_train(self.kind, h[-1], memory, params=att_p)
            x = np.concatenate([emb_x[:, t], ctx], axis=1)[None]
            _, st, rcache = T.forward_train(self.spec, x, (h, c) if lstm else h, params=dec_p)
            h, c = st if lstm else (st, None)
            tops.append(h[-1])
            steps.append((acache, rcache))
        top = np.stack(tops, axis=1) if tops else np.zeros((B, 0, H), np.float32)
        b = self._params.get("out_bias")
        logits = T.linear_forward(top, self._params["out_weight"].data, None if b is None else b.data)
        self._cache = {"tokens": tok, "steps": steps, "top": top, "memory": memory, "E": emb_x.shape[-1]}
        self.final_state = (h, c) if lstm else h
        return logits

    def backward(self, d_logits: Any):
        from . import train as T

        if self._cache is None:
            raise errors.ShapeError("backward: call forward first")
        cc = self._cache
        top, tok, E = cc["top"], cc["tokens"], cc["E"]
        dl = _f32(d_logits, "d_logits")
        want = top.shape[:2] + (self._params["out_weight"].shape[0],)
        if dl.shape != want:
            raise errors.ShapeError(f"d_logits: expected shape {want}, got {dl.shape}")
        d_top, dwo, dbo = T.linear_backward(top, self._params["out_weight"].data, dl, "out_bias" in self._params)
        self._params["out_weight"].accumulate(dwo)
        if dbo is not None:
            self._params["out_bias"].accumulate(dbo)
        L, H, lstm = self.spec.num_layers, self.spec.hidden_size, self.spec.mode == "LSTM"
        B = top.shape[0]
        dh = np.zeros((L, B, H), np.float32)
        dc = np.zeros((L, B, H), np.float32) if lstm else None
        d_emb_x = np.zeros((B, tok.shape[1], E), np.float32)
        dec_g: dict[str, np.ndarray] = {}
        att_g: dict[str, np.ndarray] = {}

        def add(acc: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
            for n, g in grads.items():
                if n in acc:
                    acc[n] += g
                else:
                    acc[n] = g

        cc["memory"].zero_grad()  # the steps below accumulate into it (a repeated backward must not double-count)
        for t in range(tok.shape[1] - 1, -1, -1):
            acache, rcache = cc["steps"][t]
            dh[-1] += d_top[:, t]
            dx, dh0, dc0, g = T.backward(None, rcache, None, dh, dc)
            add(dec_g, g)
            d_emb_x[:, t] = dx[0, :, :E]
            dq, _, _, ga = attention_backward(None, acache, dx[0, :, E:])  # accumulates into the memory
            add(att_g, ga)
            dh = dh0
            dh[-1] += dq
            dc = dc0
        memory = cc["memory"]
        d_mem, _, gk = memory_backward(self.kind, memory, params=self._prefixed("attention."))
        add(att_g, gk)
        for n, g in dec_g.items():
            self._params["decoder." + n].accumulate(g)
        for n, g in att_g.items():
            self._params["attention." + n].accumulate(g)
        emb = self._params["embedding"]
        emb.accumulate(T.embedding_backward(emb.shape, tok, d_emb_x))
        return d_mem, dh, dc

    def sync(self) -> Any:
        """Write the trained parameters back into the decoder and attention layers (and the Seq2Seq model's
        embedding / output layer when built with :meth:`from_seq2seq`)."""
        self.decoder.load_state_dict({n: p.data.copy() for n, p in self._prefixed("decoder.").items()})
        self.attention.load_state_dict({n: p.data.copy() for n, p in self._prefixed("attention.").items()})
        if self._model is not None:
            self._model.embedding = self._params["embedding"].data.copy()
            self._model.out_weight = self._params["out_weight"].data.copy()
            if "out_bias" in self._params:
                self._model.out_bias = self._params["out_bias"].data.copy()
            return self._model
        return self.decoder
