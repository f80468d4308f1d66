"""MultiheadAttention vs torch.nn.MultiheadAttention (every mask kind) and vs the float64 reference."""

import numpy as np
import pytest
from conftest import assert_close

from rnnfast import attention as A
from rnnfast import reference_attention as R
from rnnfast.errors import ShapeError, UnsupportedError

torch = pytest.importorskip("torch")

TOL = {"rtol": 1e-4, "atol": 2e-5}


def _pair(E=16, H=4, kdim=None, vdim=None, bias=True, batch_first=False, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first).eval()
    if bias:  # torch initialises biases to zero: make them count
        with torch.no_grad():
            m.in_proj_bias.normal_()
            m.out_proj.bias.normal_()
    return m, A.MultiheadAttention.from_torch(m)


def _inputs(L, S, B, E, kdim, vdim, batch_first, self_attn):
    def t(n, d):
        x = torch.randn(n, B, d)
        return x.transpose(0, 1).contiguous() if batch_first else x

    q = t(L, E)
    if self_attn:
        return q, q, q
    return q, t(S, kdim or E), t(S, vdim or E)


def _compare(m, mm, q, k, v, **kw):
    with torch.no_grad():
        yt, wt = m(q, k, v, **kw)
    kw_np = {n: (a.numpy() if hasattr(a, "numpy") else a) for n, a in kw.items()}
    qn = q.numpy()
    kn = qn if k is q else k.numpy()
    vn = qn if v is q else v.numpy()
    y, w = mm(qn, kn, vn, **kw_np)
    assert_close(y, yt.numpy(), **TOL, what="output")
    if wt is None:
        assert w is None
    else:
        assert_close(w, wt.numpy(), **TOL, what="weights")
    return y, w


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("self_attn", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_plain(batch_first, self_attn, bias):
    m, mm = _pair(bias=bias, batch_first=batch_first)
    q, k, v = _inputs(5, 5 if self_attn else 7, 3, 16, None, None, batch_first, self_attn)
    _compare(m, mm, q, k, v)


@pytest.mark.parametrize("batch_first", [False, True])
def test_kdim_vdim_separate_projections(batch_first):
    m, mm = _pair(E=12, H=3, kdim=5, vdim=7, batch_first=batch_first)
    assert "q_proj_weight" in mm.state_dict() and "in_proj_weight" not in mm.state_dict()
    q, k, v = _inputs(4, 6, 2, 12, 5, 7, batch_first, False)
    _compare(m, mm, q, k, v)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_key_padding_mask(kind):
    m, mm = _pair()
    q, k, v = _inputs(4, 6, 3, 16, None, None, False, False)
    kpm = torch.zeros(3, 6, dtype=torch.bool)
    kpm[0, 4:] = True
    kpm[2, 1:] = True
    if kind == "float":
        kpm = torch.where(kpm, -1e9, 0.0) + torch.randn(3, 6) * 0.1
    _compare(m, mm, q, k, v, key_padding_mask=kpm)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("rank", [2, 3])
def test_attn_mask(kind, rank):
    m, mm = _pair()
    B, H, L, S = 2, 4, 5, 6
    q, k, v = _inputs(L, S, B, 16, None, None, False, False)
    shape = (L, S) if rank == 2 else (B * H, L, S)
    if kind == "bool":
        mask = torch.rand(shape) < 0.4
        mask[..., 0] = False  # keep every row alive (torch gives NaN on fully masked rows)
    else:
        mask = torch.randn(shape)
    _compare(m, mm, q, k, v, attn_mask=mask)


def test_both_masks_need_weights_off_and_per_head():
    m, mm = _pair(batch_first=True)
    B, L, S = 3, 4, 6
    q, k, v = _inputs(L, S, B, 16, None, None, True, False)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, 3:] = True
    kpm = torch.where(kpm, float("-inf"), 0.0)  # same kind as attn_mask (torch deprecates mixing)
    am = torch.randn(L, S)
    _compare(m, mm, q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)
    _compare(m, mm, q, k, v, key_padding_mask=kpm, attn_mask=am, average_attn_weights=False)


@pytest.mark.parametrize("need_weights", [False, True])
def test_is_causal(need_weights):
    m, mm = _pair(batch_first=True)
    q, _, _ = _inputs(6, 6, 2, 16, None, None, True, True)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    y, _ = _compare(m, mm, q, q, q, attn_mask=causal, is_causal=True, need_weights=need_weights)
    # rnnfast also accepts is_causal alone (torch insists on the mask as well)
    y2, _ = mm(q.numpy(), q.numpy(), q.numpy(), is_causal=True, need_weights=need_weights)
    assert_close(y2, y)


def test_unbatched():
    m, mm = _pair()
    q, k, v = torch.randn(5, 16), torch.randn(7, 16), torch.randn(7, 16)
    kpm = torch.tensor([False] * 5 + [True] * 2)
    _compare(m, mm, q, k, v, key_padding_mask=kpm)


def test_larger_sizes_odd_shapes():
    m, mm = _pair(E=40, H=5, seed=3)
    q, k, v = _inputs(17, 33, 3, 40, None, None, False, False)
    _compare(m, mm, q, k, v)


def test_fully_masked_row_gives_zeros_not_nan(rng):
    mm = A.MultiheadAttention(8, 2, seed=0)
    for k_, v_ in mm.state_dict().items():
        if "bias" in k_:
            mm.load_state_dict({**mm.state_dict(), k_: rng.standard_normal(v_.shape)})
    q = rng.standard_normal((3, 2, 8)).astype(np.float32)
    kv = rng.standard_normal((4, 2, 8)).astype(np.float32)
    am = np.zeros((3, 4), bool)
    am[1] = True  # query 1 may attend nothing
    y, w = mm(q, kv, kv, attn_mask=am)
    ry, rw = R.multihead_attention(q, kv, kv, mm.state_dict(), 2, attn_mask=am)
    assert not np.isnan(y).any()
    assert np.all(w[:, 1] == 0)
    assert_close(y, ry)
    assert_close(w, rw)


def test_reference_matches_torch():
    m, mm = _pair(kdim=6, vdim=3)
    q, k, v = _inputs(4, 5, 2, 16, 6, 3, False, False)
    kpm = torch.tensor([[False] * 5, [False, False, True, True, True]])
    with torch.no_grad():
        yt, wt = m(q, k, v, key_padding_mask=kpm, average_attn_weights=False)
    ry, rw = R.multihead_attention(
        q.numpy(),
        k.numpy(),
        v.numpy(),
        mm.state_dict(),
        4,
        key_padding_mask=kpm.numpy(),
        average_attn_weights=False,
    )
    assert_close(ry, yt.numpy(), **TOL)
    assert_close(rw, wt.numpy(), **TOL)


def test_errors():
    mm = A.MultiheadAttention(8, 2, seed=0)
    x = np.zeros((3, 2, 8), np.float32)
    with pytest.raises(ShapeError, match="embed_dim"):
        A.MultiheadAttention(10, 3)
    with pytest.raises(ShapeError, match="last dims"):
        mm(np.zeros((3, 2, 7)), x, x)
    with pytest.raises(ShapeError, match="key_padding_mask"):
        mm(x, x, x, key_padding_mask=np.zeros((3, 3), bool))
    with pytest.raises(ShapeError, match="attn_mask"):
        mm(x, x, x, attn_mask=np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="leading"):
        mm(x, np.zeros((4, 3, 8)), np.zeros((4, 3, 8)))
    m = torch.nn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(UnsupportedError):
        A.MultiheadAttention.from_torch(m)


def test_config_round_trip():
    _m, mm = _pair(kdim=5, vdim=7, batch_first=True)
    clone = A.attention_from_config(mm.config())
    clone.load_state_dict(mm.state_dict())
    q, k, v = _inputs(3, 4, 2, 16, 5, 7, True, False)
    np.testing.assert_array_equal(clone(q.numpy(), k.numpy(), v.numpy())[0], mm(q.numpy(), k.numpy(), v.numpy())[0])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B,L", [(2, 5), (3, 200)])  # 10 projection rows: packed kernel; 600 (> 512): BLAS
@pytest.mark.parametrize("batch_first", [True, False])
def test_packed_and_blas_projections_match_torch(bias, B, L, batch_first):
    # E = 40: 3E = 120 is not a multiple of the packed kernel's 32-column panels
    m, mm = _pair(E=40, H=5, bias=bias, batch_first=batch_first, seed=B)
    q, k, v = _inputs(L, L, B, 40, None, None, batch_first, True)
    _compare(m, mm, q, k, v, need_weights=True)


def test_load_state_dict_replaces_the_packed_weights():
    # The packed copies are cached per set of weights: new weights must be used at once.
    m1, mm = _pair(E=32, H=4, seed=1)
    m2, _ = _pair(E=32, H=4, seed=2)
    q, k, v = _inputs(6, 6, 2, 32, None, None, False, True)
    _compare(m1, mm, q, k, v)
    mm.load_state_dict({n: t.detach().numpy() for n, t in m2.state_dict().items()})
    _compare(m2, mm, q, k, v)
