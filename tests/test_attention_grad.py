"""Backward of the single-head attention forms (rnnfast.attention_train, csrc/rf_attention_train.c):
vs central finite differences of the float64 reference (rnnfast.reference_attention, tiny shapes, numpy
only) and vs torch autograd (float32, realistic shapes), with padding lengths, masks and fully masked rows."""

import numpy as np
import pytest
from conftest import assert_close

from rnnfast import attention as A
from rnnfast import attention_train as AT
from rnnfast import errors, train
from rnnfast import reference_attention as R

# name -> (layer factory (Dq, Dk), reference kind)
KINDS = {
    "additive": (lambda Dq, Dk: A.AdditiveAttention(Dq, Dk, 5, seed=1), "additive"),
    "additive_nobias": (lambda Dq, Dk: A.AdditiveAttention(Dq, Dk, 4, bias=False, seed=2), "additive"),
    "dot": (lambda Dq, Dk: A.DotAttention(), "dot"),
    "scaled_dot": (lambda Dq, Dk: A.ScaledDotAttention(), "scaled_dot"),
    "general": (lambda Dq, Dk: A.GeneralAttention(Dq, Dk, seed=3), "general"),
    "general_bias": (lambda Dq, Dk: A.GeneralAttention(Dq, Dk, bias=True, seed=4), "general"),
}
FD_TOL = {"rtol": 1e-4, "atol": 2e-5}


def sizes(name):
    return (4, 4) if "dot" in name else (3, 5)


def masking_case(rng, masking, B, S):
    lengths = mask = None
    if masking in ("lengths", "both"):
        lengths = np.array([S, 2, 0, S - 1][:B])  # unsorted, with an empty (fully masked) row
    if masking in ("mask", "both"):
        mask = rng.random((B, S)) > 0.35
        mask[1 % B] = False  # fully masked row
        mask[0, 0] = True
    return lengths, mask


def allowed_of(B, S, lengths, mask):
    return R.allowed_keys(B, S, lengths, mask)[:, 0, :]


def numerical_grads(kind, q, k, v, params, lengths, mask, wc, ww, shared=False, eps=1e-6):
    """Central differences of L = sum(ctx * wc) + sum(weights * ww) on the float64 reference."""
    base = {"query": q, "keys": k, "values": v, **params}

    def loss(vals):
        vv = vals["keys"] if shared else vals["values"]
        p = {n: vals[n] for n in params}
        ctx, w = R.attention(kind, vals["query"], vals["keys"], vv, p, lengths=lengths, mask=mask)
        return float((ctx * wc).sum() + (w * ww).sum())

    out = {}
    for name, arr in base.items():
        if shared and name == "values":
            continue
        g = np.zeros_like(arr, dtype=np.float64)
        for idx in np.ndindex(arr.shape):
            vals = {n: a.astype(np.float64).copy() for n, a in base.items()}
            vals[name][idx] += eps
            lp = loss(vals)
            vals[name][idx] -= 2 * eps
            lm = loss(vals)
            g[idx] = (lp - lm) / (2 * eps)
        out[name] = g
    return out


def run_fd(rng, name, masking, query_rank, with_dw=True, B=4, Tq=2, S=5, Dv=3):
    factory, kind = KINDS[name]
    Dq, Dk = sizes(name)
    layer = factory(Dq, Dk)
    # float32-representable inputs, so the float64 reference sees exactly what the core sees
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32).astype(np.float64)  # noqa: E731
    q = f(B, Dq) if query_rank == 2 else f(B, Tq, Dq)
    k, v = f(B, S, Dk), f(B, S, Dv)
    lengths, mask = masking_case(rng, masking, B, S)
    params = {n: a.astype(np.float64) for n, a in layer.state_dict().items()}
    ctx, w, cache = AT.attention_forward_train(layer, q, k, v, lengths, mask)
    rctx, rw = R.attention(kind, q, k, v, params, lengths=lengths, mask=mask)
    assert ctx.dtype == np.float32 and w.dtype == np.float32
    assert_close(ctx, rctx, what=f"{name} context")
    assert_close(w, rw, what=f"{name} weights")
    wc = rng.standard_normal(ctx.shape)
    ww = rng.standard_normal(w.shape) if with_dw else np.zeros(w.shape)
    dq, dk, dv, grads = AT.attention_backward(layer, cache, wc, ww if with_dw else None)
    num = numerical_grads(kind, q, k, v, params, lengths, mask, wc, ww)
    assert sorted(grads) == sorted(params)
    for n in params:
        assert grads[n].shape == params[n].shape and grads[n].dtype == np.float32
        assert_close(grads[n], num[n], **FD_TOL, what=f"{name} d{n}")
    assert_close(dq, num["query"], **FD_TOL, what=f"{name} d_query")
    assert_close(dk, num["keys"], **FD_TOL, what=f"{name} d_keys")
    assert_close(dv, num["values"], **FD_TOL, what=f"{name} d_values")
    return layer, (q, k, v, lengths, mask), (dq, dk, dv, grads)


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("masking", ["none", "lengths", "mask", "both"])
@pytest.mark.parametrize("query_rank", [2, 3])
def test_fd_every_gradient(rng, name, masking, query_rank):
    run_fd(rng, name, masking, query_rank)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_fd_context_only_and_edges(rng, name):
    run_fd(rng, name, "both", 3, with_dw=False)
    run_fd(rng, name, "none", 2, B=1, S=1, Dv=1)  # B=1, S=1: weight 1, d_query 0 (softmax of one key)
    run_fd(rng, name, "lengths", 3, Tq=1, S=7, Dv=2)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_fd_values_are_keys(rng, name):
    factory, kind = KINDS[name]
    Dq, Dk = sizes(name)
    layer = factory(Dq, Dk)
    B, S = 3, 4
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32).astype(np.float64)  # noqa: E731
    q, k = f(B, Dq), f(B, S, Dk)
    lengths = np.array([4, 1, 3])
    params = {n: a.astype(np.float64) for n, a in layer.state_dict().items()}
    ctx, w, cache = AT.attention_forward_train(layer, q, k, None, lengths)
    wc, ww = rng.standard_normal(ctx.shape), rng.standard_normal(w.shape)
    dq, dk, dv, grads = AT.attention_backward(layer, cache, wc, ww)
    assert dv is None
    num = numerical_grads(kind, q, k, k, params, lengths, None, wc, ww, shared=True)
    assert_close(dk, num["keys"], **FD_TOL, what="d_keys (both roles)")
    assert_close(dq, num["query"], **FD_TOL, what="d_query")
    for n in params:
        assert_close(grads[n], num[n], **FD_TOL, what=n)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_masked_positions_and_rows_get_exact_zeros(rng, name):
    factory, _ = KINDS[name]
    Dq, Dk = sizes(name)
    layer = factory(Dq, Dk)
    B, Tq, S, Dv = 4, 3, 6, 5
    q = rng.standard_normal((B, Tq, Dq))
    k = rng.standard_normal((B, S, Dk))
    v = rng.standard_normal((B, S, Dv))
    lengths, mask = np.array([6, 3, 0, 5]), rng.random((B, S)) > 0.3
    mask[3] = False
    allowed = allowed_of(B, S, lengths, mask)
    # garbage where nothing may be read: values at masked positions (any form), keys too for dot forms
    v[~allowed] = np.nan
    if "dot" in name:
        k[~allowed] = np.inf
    ctx, w, cache = AT.attention_forward_train(layer, q, k, v, lengths, mask)
    dq, dk, dv, grads = AT.attention_backward(
        layer, cache, rng.standard_normal(ctx.shape), rng.standard_normal(w.shape)
    )
    for arr in (ctx, w, dq, dk, dv, *grads.values()):
        assert np.isfinite(arr).all()
    dead = ~allowed.any(axis=1)
    assert dead[2] and dead[3]
    assert np.all(w[dead] == 0) and np.all(ctx[dead] == 0) and np.all(dq[dead] == 0)
    assert np.all(w.transpose(0, 2, 1)[~allowed] == 0)
    assert np.all(dk[~allowed] == 0) and np.all(dv[~allowed] == 0)
    assert_close(w.sum(-1)[~dead], np.ones((int((~dead).sum()), Tq)), what="weights sum to one")


def test_everything_masked_gives_zero_gradients(rng):
    layer = A.AdditiveAttention(3, 4, 5, seed=0)
    q, k, v = rng.standard_normal((2, 3)), rng.standard_normal((2, 4, 4)), rng.standard_normal((2, 4, 2))
    ctx, w, cache = AT.attention_forward_train(layer, q, k, v, lengths=[0, 0])
    dq, dk, dv, grads = AT.attention_backward(layer, cache, np.ones_like(ctx), np.ones_like(w))
    for arr in (ctx, w, dq, dk, dv, *grads.values()):
        assert not np.any(arr)


def test_empty_shapes(rng):
    layer = A.GeneralAttention(3, 2, bias=True, seed=0)
    # empty batch
    ctx, w, cache = AT.attention_forward_train(layer, np.zeros((0, 3)), np.zeros((0, 4, 2)), np.zeros((0, 4, 5)))
    assert ctx.shape == (0, 5) and w.shape == (0, 4)
    dq, dk, dv, g = AT.attention_backward(layer, cache, np.zeros((0, 5)))
    assert dq.shape == (0, 3) and dk.shape == (0, 4, 2) and dv.shape == (0, 4, 5)
    assert not g["weight"].any() and not g["bias"].any()
    # empty source (S = 0): zero context, every gradient zero
    ctx, w, cache = AT.attention_forward_train(
        layer, rng.standard_normal((2, 3)), np.zeros((2, 0, 2)), np.zeros((2, 0, 5))
    )
    assert ctx.shape == (2, 5) and not ctx.any() and w.shape == (2, 0)
    dq, dk, dv, g = AT.attention_backward(layer, cache, np.ones((2, 5)))
    assert not dq.any() and not g["weight"].any()


def test_train_attention_module_accumulates_and_syncs(rng):
    layer = A.AdditiveAttention(4, 6, 5, seed=7)
    m = AT.TrainAttention(layer)
    assert isinstance(m, train.Module)
    assert sorted(n for n, _ in m.named_parameters()) == ["bias", "key_weight", "query_weight", "v"]
    q, k = rng.standard_normal((3, 4)), rng.standard_normal((3, 5, 6))
    ctx, w = m.forward(q, k, lengths=[5, 2, 3])
    ctx2, w2 = layer(q, k, lengths=[5, 2, 3])
    assert_close(ctx, ctx2, what="context vs inference layer")
    assert_close(w, w2, what="weights vs inference layer")
    d = rng.standard_normal(ctx.shape)
    dq, dk, dv = m.backward(d)
    assert dv is None and dk.shape == k.shape
    g1 = {n: p.grad.copy() for n, p in m.named_parameters()}
    m.backward(d)  # accumulates like autograd
    for n, p in m.named_parameters():
        assert_close(p.grad, 2 * g1[n], what=n)
    opt = train.SGD(m.parameters(), lr=0.1)
    before = layer.state_dict()
    opt.step()
    m.sync()
    after = layer.state_dict()
    for n in before:
        assert_close(after[n], before[n] - 0.1 * 2 * g1[n], what=n)


def test_loss_decreases_with_sgd(rng):
    """A few SGD steps on a fixed problem lower an MSE loss on the context (the gradients point downhill)."""
    layer = A.GeneralAttention(6, 6, bias=True, seed=1)
    m = AT.TrainAttention(layer)
    opt = train.SGD(m.parameters(), lr=0.2)
    q, k, v = rng.standard_normal((8, 6)), rng.standard_normal((8, 7, 6)), rng.standard_normal((8, 7, 3))
    target = v[:, 2]  # learn to attend to key 2
    losses = []
    for _ in range(30):
        ctx, _ = m.forward(q, k, v)
        loss, d = train.mse_loss(ctx, target)
        losses.append(loss)
        m.zero_grad()
        m.backward(d)
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_bad_input_raises(rng):
    layer = A.AdditiveAttention(3, 4, 5, seed=0)
    q, k = rng.standard_normal((2, 3)), rng.standard_normal((2, 6, 4))
    with pytest.raises(errors.ShapeError):
        AT.attention_forward_train(layer, rng.standard_normal((2, 7)), k)  # wrong Dq
    with pytest.raises(errors.ShapeError):
        AT.attention_forward_train(layer, q, k, lengths=[7, 1])
    with pytest.raises(errors.ShapeError):
        AT.attention_forward_train(layer, q, k, mask=np.ones((2, 5), bool))
    with pytest.raises(errors.ShapeError):
        AT.attention_forward_train(A.DotAttention(), q, k)  # Dq != Dk
    with pytest.raises(errors.ShapeError):
        AT.attention_forward_train(layer, q, rng.standard_normal((3, 6, 4)))  # batch mismatch
    with pytest.raises(errors.DTypeError):
        AT.attention_forward_train(layer, np.array([["a"]]), k)
    with pytest.raises(errors.StateDictError):
        AT.attention_forward_train(
            "additive", q, k, params={"query_weight": np.zeros((5, 3)), "key_weight": np.zeros((5, 4))}
        )
    with pytest.raises(errors.UnsupportedError):
        AT.attention_forward_train(A.MultiheadAttention(4, 2), q, k)
    ctx, w, cache = AT.attention_forward_train(layer, q, k)
    with pytest.raises(errors.ShapeError):
        AT.attention_backward(layer, cache, np.zeros((2, 5)))
    with pytest.raises(errors.ShapeError):
        AT.attention_backward(A.DotAttention(), cache, np.zeros_like(ctx))


def test_functional_kind_strings_match_layers(rng):
    layer = A.ScaledDotAttention()
    q, k, v = rng.standard_normal((3, 2, 8)), rng.standard_normal((3, 5, 8)), rng.standard_normal((3, 5, 4))
    a = AT.attention_forward_train(layer, q, k, v)
    b = AT.attention_forward_train("scaled_dot", q, k, v)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    ga = AT.attention_backward(layer, a[2], np.ones((3, 2, 4)))
    gb = AT.attention_backward(None, b[2], np.ones((3, 2, 4)))
    for x, y in zip(ga[:3], gb[:3]):
        assert np.array_equal(x, y)


# ---- vs torch autograd, float32, realistic shapes ----------------------------------------------------
def torch_attention(torch, kind, q, k, v, params, allowed):
    """Straightforward autograd formulation; a fully masked row gives zero weights (and zero gradients)."""
    if kind == "additive":
        qp = q @ params["query_weight"].T
        if "bias" in params:
            qp = qp + params["bias"]
        kp = k @ params["key_weight"].T
        e = torch.tanh(qp[:, :, None, :] + kp[:, None, :, :]) @ params["v"]
    elif kind in ("dot", "scaled_dot"):
        e = q @ k.transpose(1, 2)
        if kind == "scaled_dot":
            e = e / float(np.sqrt(k.shape[2]))
    else:
        kp = k @ params["weight"].T
        if "bias" in params:
            kp = kp + params["bias"]
        e = q @ kp.transpose(1, 2)
    al = allowed[:, None, :].expand_as(e)
    dead = ~al.any(dim=-1, keepdim=True)
    e = torch.where(al, e, torch.tensor(float("-inf")))
    e = torch.where(dead, torch.zeros_like(e), e)
    w = torch.softmax(e, dim=-1) * al.to(e.dtype)
    return w @ v, w


def grad_tol(ref):
    return {"rtol": 1e-3, "atol": 1e-5 * max(1.0, float(np.abs(ref).max()))}


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("Tq", [1, 6])
def test_vs_torch_autograd(rng, name, Tq):
    torch = pytest.importorskip("torch")
    factory, kind = KINDS[name]
    B, S, Dv = 16, 37, 40
    Dq, Dk = (48, 48) if "dot" in name else (64, 48)
    layer = (
        factory(Dq, Dk) if "additive" not in name else A.AdditiveAttention(Dq, Dk, 32, bias=name == "additive", seed=5)
    )
    q = rng.standard_normal((B, Tq, Dq)).astype(np.float32)
    k = rng.standard_normal((B, S, Dk)).astype(np.float32)
    v = rng.standard_normal((B, S, Dv)).astype(np.float32)
    lengths = rng.integers(1, S + 1, size=B)
    lengths[3], lengths[5] = 0, S
    mask = rng.random((B, S)) > 0.2
    mask[7] = False
    allowed = allowed_of(B, S, lengths, mask)
    params = layer.state_dict()
    ctx, w, cache = AT.attention_forward_train(layer, q, k, v, lengths, mask)
    wc = rng.standard_normal(ctx.shape).astype(np.float32)
    ww = rng.standard_normal(w.shape).astype(np.float32)
    dq, dk, dv, grads = AT.attention_backward(layer, cache, wc, ww)

    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tp = {n: torch.tensor(a, requires_grad=True) for n, a in params.items()}
    tctx, tw = torch_attention(torch, kind, tq, tk, tv, tp, torch.from_numpy(allowed))
    ((tctx * torch.from_numpy(wc)).sum() + (tw * torch.from_numpy(ww)).sum()).backward()
    assert_close(ctx, tctx.detach().numpy(), rtol=1e-4, atol=1e-5, what="context")
    assert_close(w, tw.detach().numpy(), rtol=1e-4, atol=1e-5, what="weights")
    for mine, t, what in ((dq, tq, "d_query"), (dk, tk, "d_keys"), (dv, tv, "d_values")):
        ref = t.grad.numpy()
        assert_close(mine, ref, **grad_tol(ref), what=what)
    for n in params:
        ref = tp[n].grad.numpy()
        if kind == "general" and n == "bias":
            # q . b shifts every score of a row equally: its exact gradient is 0 and both sides hold only
            # rounding noise, so compare on the scale of the weight's gradient
            scale = float(np.abs(tp["weight"].grad.numpy()).max())
            assert np.abs(grads[n]).max() < 1e-5 * scale and np.abs(ref).max() < 1e-5 * scale
            continue
        assert_close(grads[n], ref, **grad_tol(ref), what=n)


# ---- teacher-forced Bahdanau decoder (rnnfast.attention_train.TrainBahdanauDecoder) -------------------
def make_decoder(mode, L, E, Dm, H, A_, V, seed=0, attn="additive"):
    import rnnfast

    cls = {"GRU": rnnfast.GRU, "LSTM": rnnfast.LSTM, "RNN_TANH": rnnfast.RNN}[mode]
    dec = cls(E + Dm, H, num_layers=L, seed=seed)
    att = A.AdditiveAttention(H, Dm, A_, seed=seed + 1) if attn == "additive" else A.GeneralAttention(H, Dm, seed=2)
    r = np.random.default_rng(seed + 2)
    emb = r.uniform(-0.8, 0.8, (V, E)).astype(np.float32)
    wo = r.uniform(-0.5, 0.5, (V, H)).astype(np.float32)
    bo = r.uniform(-0.2, 0.2, V).astype(np.float32)
    return dec, att, emb, wo, bo


def reference_decoder(mode, L, params, memory, tokens, h0, c0, src_lengths, attn_kind):
    """float64: the Bahdanau equations with rnnfast.reference.recurrent (T=1 per step) and the attention
    reference. Returns logits (B, T, V)."""
    from rnnfast import reference as RR

    dec = {n[8:]: a for n, a in params.items() if n.startswith("decoder.")}
    att = {n[10:]: a for n, a in params.items() if n.startswith("attention.")}
    h, c = h0, c0
    out = []
    for t in range(tokens.shape[1]):
        ctx, _ = R.attention(attn_kind, h[-1], memory, memory, att, lengths=src_lengths)
        x = np.concatenate([params["embedding"][tokens[:, t]], ctx], axis=1)[None]
        _, h, c2 = RR.recurrent(mode, x, dec, L, False, h, c)
        c = c2 if mode == "LSTM" else None
        out.append(h[-1] @ params["out_weight"].T + params["out_bias"])
    return np.stack(out, axis=1)


@pytest.mark.parametrize("mode,L,attn", [("GRU", 1, "additive"), ("LSTM", 2, "additive"), ("GRU", 2, "general")])
def test_decoder_fd(rng, mode, L, attn):
    B, T, S, E, Dm, H, A_, V = 2, 3, 4, 2, 3, 3, 2, 4
    dec, att, emb, wo, bo = make_decoder(mode, L, E, Dm, H, A_, V, attn=attn)
    m = AT.TrainBahdanauDecoder(dec, att, emb, wo, bo)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32).astype(np.float64)  # noqa: E731
    memory = f(B, S, Dm)
    tokens = rng.integers(0, V, (B, T))
    src_lengths = np.array([4, 2])
    h0 = f(L, B, H) * 0.5
    c0 = f(L, B, H) * 0.5 if mode == "LSTM" else None
    logits = m.forward(memory, tokens, (h0, c0) if mode == "LSTM" else h0, src_lengths)
    params = {n: p.data.astype(np.float64) for n, p in m.named_parameters()}
    ref = reference_decoder(mode, L, params, memory, tokens, h0, c0, src_lengths, attn)
    assert_close(logits, ref, what="logits")
    wl = rng.standard_normal(logits.shape)
    d_mem, dh0, dc0 = m.backward(wl)

    inputs = {"memory": memory, "h0": h0, **({"c0": c0} if mode == "LSTM" else {}), **params}

    def loss(vals):
        p = {n: vals[n] for n in params}
        lg = reference_decoder(mode, L, p, vals["memory"], tokens, vals["h0"], vals.get("c0"), src_lengths, attn)
        return float((lg * wl).sum())

    eps = 1e-6
    mine = {"memory": d_mem, "h0": dh0, "c0": dc0, **{n: p.grad for n, p in m.named_parameters()}}
    for name, arr in inputs.items():
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            vals = {n: a.copy() for n, a in inputs.items()}
            vals[name][idx] += eps
            lp = loss(vals)
            vals[name][idx] -= 2 * eps
            num[idx] = (lp - loss(vals)) / (2 * eps)
        assert_close(mine[name], num, **FD_TOL, what=f"d {name}")


def test_decoder_matches_seq2seq_steps_and_syncs(rng):
    """Teacher-forced logits equal Seq2Seq's own inference step fed the same tokens; sync writes back."""
    import rnnfast
    from rnnfast.seq2seq import Seq2Seq

    E, Dm, H, V = 5, 6, 7, 9
    enc = rnnfast.GRU(4, Dm, seed=3, batch_first=True)
    dec, att, emb, wo, bo = make_decoder("GRU", 1, E, Dm, H, 8, V)
    model = Seq2Seq(enc, dec, emb, wo, bo, attention=att, attention_type="bahdanau", init_state="zeros")
    src = rng.standard_normal((3, 5, 4)).astype(np.float32)
    lengths = np.array([5, 3, 1])
    mem, state, B, S = model.encode(src, lengths)
    memory, _ = enc(src, lengths=lengths)
    tokens = rng.integers(0, V, (3, 4))
    m = AT.TrainBahdanauDecoder.from_seq2seq(model)
    logits = m.forward(memory, tokens, state[0], lengths)
    feed = None
    for t in range(tokens.shape[1]):
        lg, state, feed, _ = model._step(tokens[:, t], state, feed, mem)
        assert_close(logits[:, t], lg, what=f"step {t}")
    loss, d = train.cross_entropy(logits, rng.integers(0, V, (3, 4)))
    m.backward(d)
    opt = train.SGD(m.parameters(), lr=0.5)
    opt.step()
    m.sync()
    assert_close(model.out_weight, m._params["out_weight"].data, what="out_weight synced")
    assert_close(att.state_dict()["v"], m._params["attention.v"].data, what="attention synced")
    assert_close(dec.state_dict()["weight_hh_l0"], m._params["decoder.weight_hh_l0"].data, what="decoder synced")


@pytest.mark.torch
@pytest.mark.parametrize("mode,L", [("GRU", 1), ("LSTM", 2)])
def test_decoder_vs_torch_autograd(rng, mode, L):
    torch = pytest.importorskip("torch")
    B, T, S, E, Dm, H, A_, V = 8, 7, 11, 16, 24, 32, 20, 30
    dec, att, emb, wo, bo = make_decoder(mode, L, E, Dm, H, A_, V, seed=5)
    m = AT.TrainBahdanauDecoder(dec, att, emb, wo, bo)
    memory = rng.standard_normal((B, S, Dm)).astype(np.float32)
    tokens = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    src_lengths = rng.integers(1, S + 1, B)
    tgt_mask = np.arange(T)[None] < rng.integers(1, T + 1, B)[:, None]
    h0 = rng.standard_normal((L, B, H)).astype(np.float32) * 0.5
    c0 = rng.standard_normal((L, B, H)).astype(np.float32) * 0.5
    logits = m.forward(memory, tokens, (h0, c0) if mode == "LSTM" else h0, src_lengths)
    loss, d = train.cross_entropy(logits, targets, mask=tgt_mask)
    d_mem, dh0, dc0 = m.backward(d)

    tp = {n: torch.tensor(p.data, requires_grad=True) for n, p in m.named_parameters()}
    tmem, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (memory, h0, c0))
    cell = getattr(torch.nn, mode)(E + Dm, H, num_layers=L)
    cell.load_state_dict({n: torch.from_numpy(a) for n, a in dec.state_dict().items()})
    for n, prm in cell.named_parameters():
        tp["decoder." + n] = prm  # torch's own parameters carry the decoder's gradients
    allowed = torch.from_numpy(np.arange(S)[None] < src_lengths[:, None])
    att_p = {n[10:]: t for n, t in tp.items() if n.startswith("attention.")}
    h, c = th0, tc0
    outs = []
    for t in range(T):
        ctx, _ = torch_attention(torch, "additive", h[-1][:, None], tmem, tmem, att_p, allowed)
        x = torch.cat([tp["embedding"][torch.from_numpy(tokens[:, t])], ctx[:, 0]], dim=1)[None]
        if mode == "LSTM":
            y, (h, c) = cell(x, (h, c))
        else:
            y, h = cell(x, h)
        outs.append(y[0] @ tp["out_weight"].T + tp["out_bias"])
    tl = torch.stack(outs, dim=1)
    tloss = torch.nn.functional.cross_entropy(
        tl.reshape(-1, V), torch.from_numpy(np.where(tgt_mask, targets, -100)).reshape(-1)
    )
    tloss.backward()
    assert_close(logits, tl.detach().numpy(), rtol=1e-4, atol=1e-5, what="logits")
    assert abs(loss - float(tloss.detach())) < 1e-5 * max(1.0, abs(loss))
    pairs = [(d_mem, tmem, "memory"), (dh0, th0, "h0")] + ([(dc0, tc0, "c0")] if mode == "LSTM" else [])
    pairs += [(p.grad, tp[n], n) for n, p in m.named_parameters()]
    for mine, t, what in pairs:
        ref = t.grad.numpy()
        assert_close(mine, ref, **grad_tol(ref), what=what)


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("shared", [False, True])
def test_memory_path_equals_direct_path(rng, name, shared):
    """Keys projected once (memory_forward_train), attended twice, memory_backward: the same numbers as two
    direct attention_forward_train / attention_backward calls whose gradients are summed."""
    factory, _ = KINDS[name]
    Dq, Dk = sizes(name)
    layer = factory(Dq, Dk)
    B, S, Dv = 4, 6, (Dk if shared else 3)
    k = rng.standard_normal((B, S, Dk)).astype(np.float32)
    v = None if shared else rng.standard_normal((B, S, Dv)).astype(np.float32)
    lengths, mask = np.array([6, 0, 3, 5]), rng.random((B, S)) > 0.2
    qs = [rng.standard_normal((B, Dq)).astype(np.float32), rng.standard_normal((B, 2, Dq)).astype(np.float32)]
    mem = AT.memory_forward_train(layer, k, v, lengths, mask)
    tot_direct = {"keys": 0, "values": 0}
    grads_direct: dict = {}
    grads_mem: dict = {}
    for q in qs:
        ctx, w, cache = AT.attention_forward_train(layer, q, k, v, lengths, mask)
        ctx2, w2, cache2 = AT.attend_forward_train(layer, q, mem)
        assert_close(ctx2, ctx, what="context")
        assert_close(w2, w, what="weights")
        dc, dw = rng.standard_normal(ctx.shape), rng.standard_normal(w.shape)
        dq, dk, dv, g = AT.attention_backward(layer, cache, dc, dw)
        dq2, dk2, dv2, g2 = AT.attention_backward(layer, cache2, dc, dw)
        assert dk2 is None and dv2 is None
        assert_close(dq2, dq, what="d_query")
        tot_direct["keys"] = tot_direct["keys"] + dk
        if not shared:
            tot_direct["values"] = tot_direct["values"] + dv
        for n, a in g.items():
            grads_direct[n] = grads_direct.get(n, 0) + a
        for n, a in g2.items():
            grads_mem[n] = grads_mem.get(n, 0) + a
    d_keys, d_values, gk = AT.memory_backward(layer, mem)
    for n, a in gk.items():
        grads_mem[n] = grads_mem.get(n, 0) + a
    assert_close(d_keys, tot_direct["keys"], rtol=1e-4, atol=1e-5, what="d_keys")
    if shared:
        assert d_values is None
    else:
        assert_close(d_values, tot_direct["values"], rtol=1e-4, atol=1e-5, what="d_values")
    assert sorted(grads_mem) == sorted(grads_direct)
    for n in grads_direct:
        assert_close(grads_mem[n], grads_direct[n], rtol=1e-4, atol=1e-5, what=n)
