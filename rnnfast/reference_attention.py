"""The executable specification of rnnfast's attention: plain float64 NumPy written from the equations.

Single-head attention over a memory of S keys (B, S, Dk) and values (B, S, Dv), for a query q (B, Tq, Dq)::

    additive (Bahdanau)   e[b,t,s] = v . tanh(W_q q[b,t] + b + W_k k[b,s])
    dot                   e[b,t,s] = q[b,t] . k[b,s]
    scaled dot            e[b,t,s] = q[b,t] . k[b,s] / sqrt(Dk)
    general (Luong)       e[b,t,s] = q[b,t] . (W k[b,s] + b)
    weights               a[b,t,:] = softmax over allowed s (s < lengths[b] and mask[b,s]); 0 elsewhere;
                          a row with no allowed key is all zeros
    context               c[b,t]   = sum_s a[b,t,s] v[b,s]

Multi-head attention follows torch.nn.MultiheadAttention, the ONNX ``Attention`` operator (opset 23)
follows the ONNX specification; both with "a fully masked row gives zeros" (torch gives NaN there).

Shape glossary: B=batch Tq=query steps S=source length L=query length E=embed H=heads Dh=head size.
"""

from __future__ import annotations

import numpy as np


def masked_softmax(e, allowed=None):
    """Softmax over the last axis of ``e`` restricted to ``allowed`` (bool, broadcastable); -inf entries of
    ``e`` are masked too. Rows with nothing allowed give zeros."""
    e = np.asarray(e, dtype=np.float64)
    if allowed is not None:
        e = np.where(allowed, e, -np.inf)
    m = np.max(e, axis=-1, keepdims=True) if e.shape[-1] else np.zeros(e.shape[:-1] + (1,))
    dead = np.isneginf(m)
    with np.errstate(invalid="ignore"):
        p = np.exp(e - np.where(dead, 0.0, m))
    s = p.sum(axis=-1, keepdims=True)
    return np.where(dead, 0.0, p / np.where(s == 0, 1.0, s))


def allowed_keys(B, S, lengths=None, mask=None):
    """(B, 1, S) bool: key s of batch b may be attended."""
    ok = np.ones((B, S), dtype=bool)
    if lengths is not None:
        ok &= np.arange(S)[None, :] < np.asarray(lengths)[:, None]
    if mask is not None:
        ok &= np.asarray(mask).astype(bool)
    return ok[:, None, :]


def attention(kind, query, keys, values=None, params=None, lengths=None, mask=None, scale=None):
    """Single-head attention. kind in {"additive", "dot", "scaled_dot", "general"}.

    query (B, Dq) or (B, Tq, Dq); keys (B, S, Dk); values (B, S, Dv) (default: keys).
    params: additive {"query_weight" (A, Dq), "key_weight" (A, Dk), "v" (A,), optional "bias" (A,)};
            general {"weight" (Dq, Dk), optional "bias" (Dq,)}.
    Returns context (B, [Tq,] Dv) and weights (B, [Tq,] S).
    """
    q = np.asarray(query, dtype=np.float64)
    squeeze = q.ndim == 2
    if squeeze:
        q = q[:, None, :]
    k = np.asarray(keys, dtype=np.float64)
    v = k if values is None else np.asarray(values, dtype=np.float64)
    p = {n: np.asarray(a, dtype=np.float64) for n, a in (params or {}).items()}
    if kind == "additive":
        qp = q @ p["query_weight"].T + p.get("bias", 0.0)
        kp = k @ p["key_weight"].T
        e = np.tanh(qp[:, :, None, :] + kp[:, None, :, :]) @ p["v"]
    elif kind in ("dot", "scaled_dot"):
        e = q @ k.transpose(0, 2, 1)
        if kind == "scaled_dot":
            e = e / np.sqrt(k.shape[2])
        if scale is not None:
            e = e * scale
    elif kind == "general":
        kp = k @ p["weight"].T + p.get("bias", 0.0)
        e = q @ kp.transpose(0, 2, 1)
    else:
        raise ValueError(f"kind: unknown {kind!r}")
    w = masked_softmax(e, allowed_keys(k.shape[0], k.shape[1], lengths, mask))
    ctx = w @ v
    return (ctx[:, 0], w[:, 0]) if squeeze else (ctx, w)


def _additive_mask(mask, dtype_bool_means_masked):
    m = np.asarray(mask)
    if m.dtype == bool:
        return np.where(m if dtype_bool_means_masked else ~m, -np.inf, 0.0)
    return m.astype(np.float64)


def multihead_attention(
    query,
    key,
    value,
    params,
    num_heads,
    batch_first=False,
    key_padding_mask=None,
    attn_mask=None,
    need_weights=True,
    average_attn_weights=True,
    is_causal=False,
):
    """torch.nn.MultiheadAttention.forward (inference) in float64. params: torch's state_dict names.

    Masks as torch: bool True = not allowed, float = added. Fully masked rows give zeros.
    Returns (out like query, weights (B, L, S) / (B, H, L, S) or None); unbatched (L, E) input supported.
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (query, key, value))
    unbatched = q.ndim == 2
    if unbatched:
        q, k, v = q[:, None], k[:, None], v[:, None]
        if key_padding_mask is not None:
            key_padding_mask = np.asarray(key_padding_mask)[None]
    elif batch_first:
        q, k, v = (a.transpose(1, 0, 2) for a in (q, k, v))
    L, B, E = q.shape
    S = k.shape[0]
    H = num_heads
    Dh = E // H
    p = {n: np.asarray(a, dtype=np.float64) for n, a in params.items()}
    if "in_proj_weight" in p:
        wq, wk, wv = np.split(p["in_proj_weight"], 3)
    else:
        wq, wk, wv = p["q_proj_weight"], p["k_proj_weight"], p["v_proj_weight"]
    bq, bk, bv = np.split(p["in_proj_bias"], 3) if "in_proj_bias" in p else (0.0, 0.0, 0.0)
    Q = (q @ wq.T + bq).reshape(L, B, H, Dh).transpose(1, 2, 0, 3)
    K = (k @ wk.T + bk).reshape(S, B, H, Dh).transpose(1, 2, 0, 3)
    V = (v @ wv.T + bv).reshape(S, B, H, Dh).transpose(1, 2, 0, 3)
    e = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(Dh)  # (B, H, L, S)
    bias = np.zeros((B, H, L, S))
    if attn_mask is not None:
        am = _additive_mask(attn_mask, True)
        bias = bias + (am if am.ndim == 2 else am.reshape(B, H, L, S))
    elif is_causal:
        # a causally hidden key is excluded, not added to: its score (even NaN) never reaches the softmax
        # (torch's fused causal path; rnnfast's core does the same whatever need_weights)
        e = np.where(np.arange(S)[None, :] > np.arange(L)[:, None], -np.inf, e)
    if key_padding_mask is not None:
        bias = bias + _additive_mask(key_padding_mask, True)[:, None, None, :]
    w = masked_softmax(e + bias)
    out = (w @ V).transpose(2, 0, 1, 3).reshape(L, B, E)
    out = out @ p["out_proj.weight"].T + p.get("out_proj.bias", 0.0)
    if unbatched:
        out = out[:, 0]
    elif batch_first:
        out = out.transpose(1, 0, 2)
    if not need_weights:
        return out, None
    if average_attn_weights:
        w = w.mean(axis=1)
    return out, (w[0] if unbatched else w)


def onnx_attention(
    Q,
    K,
    V,
    attn_mask=None,
    past_key=None,
    past_value=None,
    is_causal=False,
    q_num_heads=None,
    kv_num_heads=None,
    scale=None,
    softcap=0.0,
):
    """ONNX Attention (opset 23) from its equations. Returns (Y, present_key, present_value, probs).

    4-D Q (B, Hq, L, Dk), K (B, Hkv, S, Dk), V (B, Hkv, S, Dv); 3-D (B, L, H*D) with q/kv_num_heads.
    attn_mask: bool (True = attend) or float (added), broadcastable to (B, Hq, L, S_total); a last axis
    shorter than S_total is padded with False / -inf. Causal: key s allowed for query l iff
    s <= l + past_length. softcap > 0: e = softcap * tanh(e / softcap) before the mask.
    GQA: query head h uses kv head h // (Hq / Hkv).
    """
    Q, K, V = (np.asarray(a, dtype=np.float64) for a in (Q, K, V))
    three_d = Q.ndim == 3
    if three_d:
        B, L, _ = Q.shape
        Q = Q.reshape(B, L, q_num_heads, Q.shape[2] // q_num_heads).transpose(0, 2, 1, 3)
        K = K.reshape(B, K.shape[1], kv_num_heads, K.shape[2] // kv_num_heads).transpose(0, 2, 1, 3)
        V = V.reshape(B, V.shape[1], kv_num_heads, V.shape[2] // kv_num_heads).transpose(0, 2, 1, 3)
    past = 0
    if past_key is not None:
        past = past_key.shape[2]
        K = np.concatenate([np.asarray(past_key, dtype=np.float64), K], axis=2)
        V = np.concatenate([np.asarray(past_value, dtype=np.float64), V], axis=2)
    B, Hq, L, Dk = Q.shape
    Hkv, S = K.shape[1], K.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(Dk)
    rep = Hq // Hkv
    Kr, Vr = np.repeat(K, rep, axis=1), np.repeat(V, rep, axis=1)
    e = scale * (Q @ Kr.transpose(0, 1, 3, 2))
    if softcap and softcap > 0:
        e = softcap * np.tanh(e / softcap)
    bias = np.zeros((L, S))
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        pad = S - m.shape[-1]
        if pad > 0:
            m = np.concatenate([m, np.full(m.shape[:-1] + (pad,), False if m.dtype == bool else -np.inf)], -1)
        bias = bias + (np.where(m, 0.0, -np.inf) if m.dtype == bool else m.astype(np.float64))
    if is_causal:
        bias = bias + np.where(np.arange(S)[None, :] > np.arange(L)[:, None] + past, -np.inf, 0.0)
    w = masked_softmax(e + bias)
    Y = w @ Vr
    if three_d:
        Y = Y.transpose(0, 2, 1, 3).reshape(B, L, Y.shape[1] * Y.shape[3])
    return Y, K, V, w
