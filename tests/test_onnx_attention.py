"""rnnfast.attention.onnx_attention vs ONNX Runtime (opset 23) on generated cases, and vs the float64
reference; onnx's ReferenceEvaluator stands in when ONNX Runtime lacks the operator."""

import numpy as np
import pytest
from conftest import assert_close

from rnnfast import attention as A
from rnnfast import reference_attention as R
from rnnfast.errors import ShapeError, UnsupportedError

onnx = pytest.importorskip("onnx")


def _model(n_inputs, mask_dtype, attrs, with_past):
    from onnx import TensorProto as TP
    from onnx import helper as h

    names = ["Q", "K", "V"]
    vis = [h.make_tensor_value_info(n, TP.FLOAT, None) for n in names]
    if mask_dtype is not None:
        names.append("M")
        vis.append(h.make_tensor_value_info("M", TP.BOOL if mask_dtype is bool else TP.FLOAT, None))
    elif with_past:
        names.append("")
    if with_past:
        names += ["PK", "PV"]
        vis += [h.make_tensor_value_info(n, TP.FLOAT, None) for n in ("PK", "PV")]
    outs = ["Y", "PKo", "PVo", "QK"]
    node = h.make_node("Attention", names, outs, **attrs)
    g = h.make_graph([node], "g", vis, [h.make_tensor_value_info(n, TP.FLOAT, None) for n in outs])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)], ir_version=10)


def _run_peer(model, feeds, use_ort=True):
    try:
        if not use_ort:
            raise RuntimeError("skip onnxruntime")
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds), "onnxruntime"
    except Exception:  # noqa: BLE001 -- ORT missing, or failing on opset-23 Attention
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds), "reference"


def _cases():
    rng = np.random.default_rng(7)
    cases = []
    for i in range(24):
        B, L, S = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 8))
        Hkv = int(rng.choice([1, 2]))
        Hq = Hkv * int(rng.choice([1, 2, 3]))
        Dk, Dv = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        rank = 3 if i % 2 else 4
        mask = [None, bool, float][i % 3]
        mask_rank = int(rng.integers(2, 5))
        short = i % 5 == 0
        past = int(rng.integers(1, 4)) if i % 4 == 3 else 0
        causal = int(i % 6 in (1, 4))
        scale = None if i % 3 else float(rng.uniform(0.1, 1.0))
        softcap = 0.0 if i % 4 else float(rng.uniform(0.5, 3.0))
        cases.append((B, L, S, Hq, Hkv, Dk, Dv, rank, mask, mask_rank, short, past, causal, scale, softcap, i))
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"case{c[-1]}")
def test_matches_onnx(case):
    B, L, S, Hq, Hkv, Dk, Dv, rank, mask_kind, mask_rank, short, past, causal, scale, softcap, seed = case
    rng = np.random.default_rng(seed)
    Q4 = rng.standard_normal((B, Hq, L, Dk)).astype(np.float32)
    K4 = rng.standard_normal((B, Hkv, S, Dk)).astype(np.float32)
    V4 = rng.standard_normal((B, Hkv, S, Dv)).astype(np.float32)
    if rank == 3:
        Q = Q4.transpose(0, 2, 1, 3).reshape(B, L, Hq * Dk)
        K = K4.transpose(0, 2, 1, 3).reshape(B, S, Hkv * Dk)
        V = V4.transpose(0, 2, 1, 3).reshape(B, S, Hkv * Dv)
    else:
        Q, K, V = Q4, K4, V4
    total = S + past
    feeds = {"Q": Q, "K": K, "V": V}
    mask = None
    if mask_kind is not None:
        full = (B, Hq, L, total - 1 if short and total > 1 else total)
        shape = full[4 - mask_rank :]
        shape = tuple(1 if (j < len(shape) - 2 and rng.random() < 0.4) else d for j, d in enumerate(shape))
        if mask_kind is bool:
            mask = rng.random(shape) < 0.7
            mask[..., 0] = True  # ORT and the spec agree on partly masked rows; full masking has its own test
        else:
            mask = rng.standard_normal(shape).astype(np.float32)
        feeds["M"] = mask
    pk = pv = None
    if past:
        pk = rng.standard_normal((B, Hkv, past, Dk)).astype(np.float32)
        pv = rng.standard_normal((B, Hkv, past, Dv)).astype(np.float32)
        feeds["PK"], feeds["PV"] = pk, pv
    attrs = {"is_causal": causal, "qk_matmul_output_mode": 3}
    if rank == 3:
        attrs.update(q_num_heads=Hq, kv_num_heads=Hkv)
    if scale is not None:
        attrs["scale"] = scale
    if softcap:
        attrs["softcap"] = softcap
    model = _model(3, None if mask is None else mask_kind, attrs, bool(past))
    # ONNX Runtime 1.31 reads a rank-3 mask as (B, L, S); the spec (and onnx's reference evaluator)
    # broadcast it right-aligned as (Hq, L, S). Those cases are checked against the reference evaluator.
    (y_o, pk_o, pv_o, _qk_o), peer = _run_peer(model, feeds, use_ort=not (mask is not None and mask.ndim == 3))
    y, pko, pvo, qk = A.onnx_attention(
        Q,
        K,
        V,
        mask,
        pk,
        pv,
        is_causal=causal,
        scale=scale,
        softcap=softcap,
        q_num_heads=Hq if rank == 3 else None,
        kv_num_heads=Hkv if rank == 3 else None,
        qk_matmul_output_mode=3,
        need_qk_output=True,
    )
    ry, _, _, rw = R.onnx_attention(
        Q,
        K,
        V,
        mask,
        pk,
        pv,
        is_causal=causal,
        scale=scale,
        softcap=softcap,
        q_num_heads=Hq,
        kv_num_heads=Hkv,
    )
    assert_close(y, ry, what="Y vs reference")
    assert_close(qk, rw, what="probs vs reference")
    live = ~np.isnan(y_o)  # a peer may give NaN where every key is masked (the spec says 0)
    assert_close(y[live], y_o[live], rtol=1e-4, atol=2e-5, what=f"Y vs {peer}")
    assert_close(pko, pk_o, what="present_key")
    assert_close(pvo, pv_o, what="present_value")


def test_fully_masked_rows_are_zero():
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    K = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    mask = np.ones((3, 5), bool)
    mask[1] = False
    y, _, _, w = A.onnx_attention(Q, K, K, mask, qk_matmul_output_mode=3, need_qk_output=True)
    ry = R.onnx_attention(Q, K, K, mask)[0]
    assert not np.isnan(y).any() and np.all(y[:, :, 1] == 0) and np.all(w[:, :, 1] == 0)
    assert_close(y, ry)
    # causal with a query longer than the keys: rows past the diagonal still see key 0; none is empty
    y2, *_ = A.onnx_attention(Q, K[:, :, :2], K[:, :, :2], is_causal=True)
    assert_close(y2, R.onnx_attention(Q, K[:, :, :2], K[:, :, :2], is_causal=True)[0])


def test_raw_scores_output():
    rng = np.random.default_rng(1)
    Q = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    K = rng.standard_normal((2, 1, 5, 4)).astype(np.float32)
    *_, qk = A.onnx_attention(Q, K, K, scale=0.3, need_qk_output=True)
    expect = 0.3 * np.einsum("bhld,bsd->bhls", Q.astype(np.float64), K[:, 0].astype(np.float64))
    assert_close(qk, expect)


def test_errors():
    x4 = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ShapeError, match="num_heads"):
        A.onnx_attention(np.zeros((1, 3, 8)), np.zeros((1, 3, 8)), np.zeros((1, 3, 8)))
    with pytest.raises(ShapeError, match="multiple"):
        A.onnx_attention(np.zeros((1, 3, 3, 4)), x4, x4)
    with pytest.raises(ShapeError, match="broadcastable"):
        A.onnx_attention(x4, x4, x4, np.zeros((5, 3)))
    with pytest.raises(UnsupportedError):
        A.onnx_attention(x4, x4, x4, qk_matmul_output_mode=1)
    with pytest.raises(ShapeError, match="past"):
        A.onnx_attention(x4, x4, x4, past_key=x4)
