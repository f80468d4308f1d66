"""Backward passes of the C core: vs finite differences of the float64 reference (tiny shapes, numpy only)
and vs torch autograd (float32, realistic shapes)."""

import numpy as np
import pytest
from conftest import assert_close

import rnnfast
from rnnfast import errors, models, train
from rnnfast import reference as R
from rnnfast import reference_train as RT

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def make_params(rng, mode, I, H, L, D, proj=0, bias=True, scale=0.6):
    spec = train.RecurrentSpec(mode, I, H, L, D == 2, proj, bias=bias)
    return spec, {k: (rng.uniform(-scale, scale, s)).astype(np.float32) for k, s in spec.param_shapes().items()}


def run_fd_case(rng, mode, L, D, lengths, proj=0, reset_after=True, with_state=True, T=4, B=3, I=3, H=4, bias=True):
    spec, params = make_params(rng, mode, I, H, L, D, proj, bias)
    spec.reset_after = reset_after
    P = proj or H
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((L * D, B, P)).astype(np.float32) * 0.5 if with_state else None
    c0 = rng.standard_normal((L * D, B, H)).astype(np.float32) * 0.5 if (with_state and mode == "LSTM") else None
    w_out = rng.standard_normal((T, B, D * P))
    w_hn = rng.standard_normal((L * D, B, P))
    w_cn = rng.standard_normal((L * D, B, H)) if mode == "LSTM" else None
    hx = (h0, c0) if mode == "LSTM" and with_state else h0
    out, state, cache = train.forward_train(spec, x, hx, lengths, params=params)
    ref_out, ref_hn, _ = R.recurrent(mode, x, params, L, D == 2, h0, c0, lengths, reset_after, proj)
    assert_close(out, ref_out, what="out")
    assert_close(state[0] if mode == "LSTM" else state, ref_hn, what="h_n")
    dx, dh0, dc0, grads = train.backward(None, cache, w_out, w_hn, w_cn)
    num = RT.numerical_grads(mode, x, params, w_out, w_hn, w_cn, h0, c0, lengths, L, D == 2, reset_after, proj)
    for k in params:
        assert_close(grads[k], num[k], rtol=1e-4, atol=2e-5, what=k)
    assert_close(dx, num["x"], rtol=1e-4, atol=2e-5, what="dx")
    if with_state:
        assert_close(dh0, num["h0"], rtol=1e-4, atol=2e-5, what="dh0")
        if mode == "LSTM":
            assert_close(dc0, num["c0"], rtol=1e-4, atol=2e-5, what="dc0")


CELLS = [("RNN_TANH", True), ("RNN_RELU", True), ("LSTM", True), ("GRU", True), ("GRU", False)]


@pytest.mark.parametrize("mode,reset_after", CELLS)
@pytest.mark.parametrize("L,D", [(1, 1), (2, 2), (1, 2), (2, 1)])
def test_fd_full_length(rng, mode, reset_after, L, D):
    run_fd_case(rng, mode, L, D, None, reset_after=reset_after)


@pytest.mark.parametrize("mode,reset_after", CELLS)
def test_fd_variable_lengths(rng, mode, reset_after):
    # unsorted, with a zero-length and a full-length sequence
    run_fd_case(rng, mode, 2, 2, np.array([2, 0, 4]), reset_after=reset_after)


@pytest.mark.parametrize("L,D,lengths", [(1, 1, None), (2, 2, None), (2, 2, np.array([3, 1, 4]))])
def test_fd_lstm_proj(rng, L, D, lengths):
    run_fd_case(rng, "LSTM", L, D, lengths, proj=2)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_fd_no_bias_no_state_edges(rng, mode):
    run_fd_case(rng, mode, 2, 2, None, bias=False, with_state=False)
    run_fd_case(rng, mode, 1, 1, None, T=1, B=1, I=1, H=1)  # T=1, B=1, H=1


def test_all_lengths_zero_passes_gradients_through(rng):
    spec, params = make_params(rng, "LSTM", 3, 5, 2, 2)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    h0 = rng.standard_normal((4, 2, 5)).astype(np.float32)
    c0 = rng.standard_normal((4, 2, 5)).astype(np.float32)
    out, (h_n, c_n), cache = train.forward_train(spec, x, (h0, c0), [0, 0], params=params)
    assert np.all(out == 0) and np.array_equal(h_n, h0) and np.array_equal(c_n, c0)
    d_hn, d_cn = rng.standard_normal(h0.shape), rng.standard_normal(c0.shape)
    dx, dh0, dc0, grads = train.backward(None, cache, np.ones_like(out), d_hn, d_cn)
    assert np.all(dx == 0)
    assert_close(dh0, d_hn)
    assert_close(dc0, d_cn)
    assert all(np.all(g == 0) for g in grads.values())


def test_empty_batch_and_zero_steps(rng):
    spec, params = make_params(rng, "GRU", 3, 4, 1, 2)
    out, h_n, cache = train.forward_train(spec, np.zeros((0, 2, 3), np.float32), params=params)
    assert out.shape == (0, 2, 8) and np.all(h_n == 0)
    dx, dh0, _, grads = train.backward(None, cache, None, np.ones((2, 2, 4)))
    assert dx.shape == (0, 2, 3) and np.all(dh0 == 1) and all(np.all(g == 0) for g in grads.values())
    out, h_n, cache = train.forward_train(spec, np.zeros((5, 0, 3), np.float32), params=params)
    assert out.shape == (5, 0, 8) and h_n.shape == (2, 0, 4)
    dx, dh0, _, grads = train.backward(None, cache, np.zeros((5, 0, 8)))
    assert dx.shape == (5, 0, 3) and all(np.all(g == 0) for g in grads.values())


def test_batch_first_and_unbatched_match_time_major(rng):
    spec, params = make_params(rng, "LSTM", 3, 4, 2, 2)
    spec_bf = train.RecurrentSpec("LSTM", 3, 4, 2, True, batch_first=True)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    dout = rng.standard_normal((5, 2, 8)).astype(np.float32)
    out, _, cache = train.forward_train(spec, x, params=params)
    dx, _, _, g = train.backward(None, cache, dout)
    out_bf, _, cache_bf = train.forward_train(spec_bf, x.transpose(1, 0, 2), params=params)
    dx_bf, _, _, g_bf = train.backward(None, cache_bf, dout.transpose(1, 0, 2))
    assert_close(out_bf, out.transpose(1, 0, 2))
    assert_close(dx_bf, dx.transpose(1, 0, 2))
    for k in g:
        assert_close(g_bf[k], g[k], what=k)
    out_u, _, cache_u = train.forward_train(spec, x[:, 0], params=params)
    dx_u, dh0_u, _, _ = train.backward(None, cache_u, dout[:, 0])
    out1, _, cache1 = train.forward_train(spec, x[:, :1], params=params)
    dx1, _dh01, _, _ = train.backward(None, cache1, dout[:, :1])
    assert_close(out_u, out1[:, 0])
    assert_close(dx_u, dx1[:, 0])
    assert dh0_u.shape == (4, 4)


def test_truncated_bptt_chunks_carry_state(rng):
    """Forward in two chunks with the state carried equals one forward; cutting gradients at the chunk
    boundary equals backward of the second chunk alone."""
    spec, params = make_params(rng, "LSTM", 3, 4, 2, 1)
    x = rng.standard_normal((8, 2, 3)).astype(np.float32)
    out, st, _ = train.forward_train(spec, x, params=params)
    o1, s1, _ = train.forward_train(spec, x[:4], params=params)
    o2, s2, c2 = train.forward_train(spec, x[4:], train.detach_state(s1), params=params)
    assert_close(np.concatenate([o1, o2]), out)
    assert_close(s2[0], st[0])
    assert_close(s2[1], st[1])
    dout = rng.standard_normal((4, 2, 4)).astype(np.float32)
    _, dh0, _dc0, g2 = train.backward(None, c2, dout)  # d_hn = d_cn = None: the cut
    ref = RT.numerical_grads(
        "LSTM", x[4:], params, dout.astype(np.float64), np.zeros((2, 2, 4)), None, s1[0], s1[1], None, 2
    )
    for k in params:
        assert_close(g2[k], ref[k], rtol=1e-4, atol=2e-5, what=k)
    assert_close(dh0, ref["h0"], rtol=1e-4, atol=2e-5)


def test_layer_object_and_errors(rng):
    lstm = rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, seed=1)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out, (h_n, _c_n), cache = train.forward_train(lstm, x, lengths=[5, 3])
    ref, (rh, _rc) = lstm(x, lengths=[5, 3])
    assert_close(out, ref)
    assert_close(h_n, rh)
    with pytest.raises(errors.ShapeError):
        train.forward_train(lstm, x[..., :2])
    with pytest.raises(errors.ShapeError):
        train.forward_train(lstm, x, lengths=[6, 1])
    with pytest.raises(errors.ShapeError):
        train.backward(lstm, cache, np.zeros((5, 2, 7)))
    with pytest.raises(errors.ShapeError):
        train.forward_train(lstm, x, hx=np.zeros((4, 2, 4)))  # LSTM wants (h0, c0)
    with pytest.raises(errors.UnsupportedError):
        train.forward_train(rnnfast.LSTM(3, 4, num_layers=2, dropout=0.5), x)
    with pytest.raises(errors.StateDictError):
        train.forward_train(train.RecurrentSpec("GRU", 3, 4), x, params={})


# ---- Embedding, Linear, losses vs float64 references (numpy only) ----
def test_linear_embedding_losses_reference(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y = train.linear_forward(x, w, b)
    assert_close(y, x.astype(np.float64) @ w.T.astype(np.float64) + b)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = train.linear_backward(x, w, dy)
    assert_close(dx, dy.astype(np.float64) @ w)
    assert_close(dw, np.einsum("tbo,tbi->oi", dy.astype(np.float64), x))
    assert_close(db, dy.astype(np.float64).sum((0, 1)))

    table = rng.standard_normal((7, 3)).astype(np.float32)
    tok = np.array([[1, 0, 6], [1, 1, 2]])
    assert_close(train.embedding_forward(table, tok), table[tok])
    d = rng.standard_normal((2, 3, 3)).astype(np.float32)
    dt = train.embedding_backward(table.shape, tok, d, padding_idx=0)
    ref = np.zeros((7, 3))
    np.add.at(ref, tok.reshape(-1), d.reshape(-1, 3))
    ref[0] = 0
    assert_close(dt, ref)

    logits = rng.standard_normal((5, 3, 11)).astype(np.float32) * 3
    tg = rng.integers(0, 11, (5, 3))
    tg[4, 1] = -100
    mask = rng.random((5, 3)) > 0.3
    for m in (None, mask):
        loss, dl = train.cross_entropy(logits, tg, mask=m)
        rl, rd = RT.cross_entropy(logits, tg, mask=m)
        assert abs(loss - rl) <= 1e-6 * abs(rl) + 1e-7
        assert_close(dl, rd)
    p, t = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)
    loss, dp = train.mse_loss(p, t)
    rl, rd = RT.mse(p, t)
    assert abs(loss - rl) < 1e-6 and np.allclose(dp, rd, atol=1e-7)
    z = (rng.standard_normal((4, 6)) * 30).astype(np.float32)  # saturating logits: no overflow, no NaN
    tt = (rng.random((4, 6)) > 0.5).astype(np.float32)
    loss, dz = train.bce_with_logits(z, tt)
    rl, rd = RT.bce_with_logits(z, tt)
    assert np.isfinite(loss) and abs(loss - rl) <= 1e-6 * abs(rl)
    assert_close(dz, rd)


def test_sequential_many_to_one_matches_model(rng):
    emb, gru, fc = models.Embedding(10, 4, seed=0), rnnfast.GRU(4, 6, bidirectional=True, seed=1), models.Linear(12, 3)
    seq = models.Sequential(emb, gru, fc, many_to_one=True)
    net = train.Trainable(seq)
    tok = rng.integers(0, 10, (7, 5))
    lengths = np.array([7, 2, 5, 1, 3])
    assert_close(net.forward(tok, lengths=lengths), seq(tok, lengths=lengths))


# ---- vs torch autograd, float32, realistic shapes ----
def torch_stack(torch, mode, I, H, L, bid, proj, bias=True):
    if mode == "LSTM":
        return torch.nn.LSTM(I, H, L, bias=bias, bidirectional=bid, proj_size=proj)
    if mode == "GRU":
        return torch.nn.GRU(I, H, L, bias=bias, bidirectional=bid)
    return torch.nn.RNN(I, H, L, nonlinearity=mode[4:].lower(), bias=bias, bidirectional=bid)


def grad_tol(ref):
    return {"rtol": 1e-3, "atol": 1e-5 * max(1.0, float(np.abs(ref).max()))}


TORCH_CASES = [
    (mode, *case)
    for mode in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
    for case in ((1, False, False, 0), (2, True, False, 0), (2, True, True, 0), (3, False, True, 0))
]
TORCH_CASES += [("LSTM", 1, False, False, 8), ("LSTM", 2, True, True, 8)]


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("mode,L,bid,lengths,proj", TORCH_CASES)
def test_vs_torch_autograd(mode, L, bid, lengths, proj):
    torch = pytest.importorskip("torch")
    torch.manual_seed(hash((mode, L, bid, lengths, proj)) % 1000)
    T, B, I, H = 25, 8, 16, 32
    D, P = (2 if bid else 1), (proj or H)
    m = torch_stack(torch, mode, I, H, L, bid, proj)
    x = torch.randn(T, B, I, requires_grad=True)
    h0 = (torch.randn(L * D, B, P) * 0.5).requires_grad_()
    c0 = (torch.randn(L * D, B, H) * 0.5).requires_grad_()
    hx = (h0, c0) if mode == "LSTM" else h0
    lens = np.array([25, 3, 17, 1, 25, 9, 12, 20]) if lengths else None
    if lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lens), enforce_sorted=False)
        o, st = m(packed, hx)
        o, _ = torch.nn.utils.rnn.pad_packed_sequence(o, total_length=T)
    else:
        o, st = m(x, hx)
    hn = st[0] if mode == "LSTM" else st
    wo, wh = torch.randn_like(o), torch.randn_like(hn)
    loss = (o * wo).sum() + (hn * wh).sum()
    wc = None
    if mode == "LSTM":
        wc = torch.randn_like(st[1])
        loss = loss + (st[1] * wc).sum()
    loss.backward()

    spec = train.RecurrentSpec(mode, I, H, L, bid, proj)
    params = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    hx_np = (h0.detach().numpy(), c0.detach().numpy()) if mode == "LSTM" else h0.detach().numpy()
    out, _state, cache = train.forward_train(spec, x.detach().numpy(), hx_np, lens, params=params)
    assert_close(out, o.detach().numpy(), rtol=1e-4, atol=1e-5, what="out")
    dx, dh0, dc0, grads = train.backward(None, cache, wo.numpy(), wh.numpy(), None if wc is None else wc.numpy())
    assert_close(dx, x.grad.numpy(), **grad_tol(x.grad.numpy()), what="dx")
    assert_close(dh0, h0.grad.numpy(), **grad_tol(h0.grad.numpy()), what="dh0")
    if mode == "LSTM":
        assert_close(dc0, c0.grad.numpy(), **grad_tol(c0.grad.numpy()), what="dc0")
    for name, p in m.named_parameters():
        ref = p.grad.numpy()
        assert_close(grads[name], ref, **grad_tol(ref), what=name)


@pytest.mark.torch
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_char_model_step_vs_torch(cell):
    """Embedding -> RNN -> Linear with per-step cross-entropy and a padding mask: every gradient."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    V, E, H, T, B = 20, 8, 16, 12, 5
    temb, tfc = torch.nn.Embedding(V, E), torch.nn.Linear(H, V)
    trnn = getattr(torch.nn, cell)(E, H, batch_first=True)
    rnn = getattr(rnnfast, cell)(E, H, batch_first=True)
    seq = models.Sequential({"emb": models.Embedding(V, E), "rnn": rnn, "fc": models.Linear(H, V)})
    sd = {f"emb.{k}": v for k, v in temb.state_dict().items()}
    sd.update({f"rnn.{k}": v for k, v in trnn.state_dict().items()})
    sd.update({f"fc.{k}": v for k, v in tfc.state_dict().items()})
    seq.load_state_dict({k: v.numpy() for k, v in sd.items()})
    rng = np.random.default_rng(0)
    tok, tgt = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    lengths = np.array([12, 4, 9, 1, 7])
    mask = train.sequence_mask(lengths, T, batch_first=True)
    tgt_t = torch.from_numpy(np.where(mask, tgt, -100))
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        temb(torch.from_numpy(tok)), torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    y, _ = trnn(packed)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=T)
    logits = tfc(y)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt_t.reshape(-1))
    loss.backward()

    net = train.Trainable(seq)
    out = net.forward(tok, lengths=lengths)
    value, d = train.cross_entropy(out, tgt, mask=mask)
    assert abs(value - loss.item()) <= 1e-5 * abs(loss.item())
    net.backward(d)
    ref = {f"emb.{k}": p.grad for k, p in temb.named_parameters()}
    ref.update({f"rnn.{k}": p.grad for k, p in trnn.named_parameters()})
    ref.update({f"fc.{k}": p.grad for k, p in tfc.named_parameters()})
    got = {n: p.grad for n, p in net.named_parameters()}
    assert set(got) == set(ref)
    for k, t in ref.items():
        r = t.numpy()
        assert_close(got[k], r, **grad_tol(r), what=k)


def test_bad_inputs_raise_rnnfast_errors():
    z = np.zeros((4, 5), np.float32)
    with pytest.raises(errors.ShapeError):
        train.cross_entropy(z, np.array([0, 1, 5, 2]))  # target out of range
    with pytest.raises(errors.DTypeError):
        train.cross_entropy(z, np.array([0.5, 1, 2, 3]))
    with pytest.raises(errors.ShapeError):
        train.cross_entropy(z, np.array([0, 1, 2]))
    with pytest.raises(errors.ShapeError):
        train.mse_loss(z, np.zeros((4, 4)))
    with pytest.raises(errors.ShapeError):
        train.embedding_forward(np.zeros((3, 2)), np.array([0, 3]))
    with pytest.raises(errors.ShapeError):
        train.linear_forward(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(errors.UnsupportedError):
        train.RecurrentSpec("LSTMX", 1, 1)
    with pytest.raises(errors.UnsupportedError):
        train.Trainable(models.Sequential(models.Linear(3, 3), models.Softmax()))


@pytest.mark.parametrize(
    "mode,reset_after,proj",
    [("LSTM", True, 0), ("LSTM", True, 19), ("GRU", True, 0), ("GRU", False, 0), ("RNN_TANH", True, 0)],
)
def test_directional_fd_odd_sizes(rng, mode, reset_after, proj):
    """H=37, B=5 (not multiples of the kernels' blocks): <grad, v> vs a central difference along v."""
    T, B, I, H, L = 6, 5, 7, 37, 2
    spec, params = make_params(rng, mode, I, H, L, 2, proj, scale=0.15)  # relu stays bounded at H=96
    spec.reset_after = reset_after
    P = proj or H
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([6, 2, 5, 0, 3])
    w_out = rng.standard_normal((T, B, 2 * P))
    w_hn = rng.standard_normal((2 * L, B, P))
    out, _, cache = train.forward_train(spec, x, None, lengths, params=params)
    ref_out, _, _ = R.recurrent(mode, x, params, L, True, None, None, lengths, reset_after, proj)
    assert_close(out, ref_out, what="out")
    dx, _, _, grads = train.backward(None, cache, w_out, w_hn)
    v = {k: rng.standard_normal(a.shape) for k, a in params.items()}
    vx = rng.standard_normal(x.shape)
    eps = 1e-4

    def J(s):
        p = {k: a.astype(np.float64) + s * v[k] for k, a in params.items()}
        return RT.stack_objective(
            mode, x + s * vx, p, w_out, w_hn, None, None, None, lengths, L, True, reset_after, proj
        )

    fd = (J(eps) - J(-eps)) / (2 * eps)
    an = sum(float(np.sum(grads[k] * v[k])) for k in params) + float(np.sum(dx * vx))
    assert abs(an - fd) <= 1e-4 * abs(fd) + 1e-4, (an, fd)


# ---- the threaded step loops: batch rows split over a team (rf_train.c team_size/team_rows) ----
TEAM_CASES = [
    ("LSTM", True, 0),
    ("LSTM", True, 24),
    ("GRU", True, 0),
    ("GRU", False, 0),
    ("RNN_TANH", True, 0),
    ("RNN_RELU", True, 0),
]


@pytest.mark.parametrize("mode,reset_after,proj", TEAM_CASES)
@pytest.mark.parametrize("nt", [2, 3])
def test_threaded_steps_equal_one_thread_bitwise(rng, mode, reset_after, proj, nt):
    # Big enough for a team (2*T*B*G*H*P >= 2e6 flops, RNN: 4.8e6); B = 13 splits into uneven row blocks
    # (4, 4, 5 / 8, 5); unsorted lengths with a zero, two layers both directions. Rows are computed
    # independently, so the result must not depend on the thread count at all; one thread is checked
    # against torch above.
    T, B, I, H, L = 20, 13, 20, 96, 2
    spec, params = make_params(rng, mode, I, H, L, 2, proj, scale=0.15)  # relu stays bounded at H=96
    spec.reset_after = reset_after
    P = proj or H
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([20, 3, 0, 20, 17, 1, 5, 19, 2, 8, 14, 6, 20])
    h0 = rng.standard_normal((2 * L, B, P)).astype(np.float32) * 0.5
    c0 = rng.standard_normal((2 * L, B, H)).astype(np.float32) * 0.5
    hx = (h0, c0) if mode == "LSTM" else h0
    d_out = rng.standard_normal((T, B, 2 * P)).astype(np.float32)
    d_hn = rng.standard_normal((2 * L, B, P)).astype(np.float32)
    d_cn = rng.standard_normal((2 * L, B, H)).astype(np.float32) if mode == "LSTM" else None
    runs = []
    for n in (1, nt):
        out, state, cache = train.forward_train(spec, x, hx, lengths, params=params, n_threads=n)
        dx, dh0, dc0, grads = train.backward(None, cache, d_out, d_hn, d_cn, n_threads=n)
        runs.append((out, state, dx, dh0, dc0, grads))
    (o1, s1, dx1, dh1, dc1, g1), (o2, s2, dx2, dh2, dc2, g2) = runs
    ref_out, ref_hn, _ = R.recurrent(mode, x, params, L, True, h0, c0 if mode == "LSTM" else None, lengths,
                                     reset_after, proj)
    assert_close(o1, ref_out, what="out")
    np.testing.assert_array_equal(o2, o1)
    for a, b in zip(s2 if mode == "LSTM" else (s2,), s1 if mode == "LSTM" else (s1,)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dx2, dx1)
    np.testing.assert_array_equal(dh2, dh1)
    if mode == "LSTM":
        np.testing.assert_array_equal(dc2, dc1)
    assert set(g1) == set(g2)
    for k in g1:  # parameter gradients: the same BLAS calls on the same (bitwise equal) inputs
        np.testing.assert_array_equal(g2[k], g1[k], err_msg=k)
