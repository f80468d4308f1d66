"""Single-head attention layers (additive, dot, scaled dot, general) vs the float64 NumPy reference."""

import numpy as np
import pytest
from conftest import assert_close

from rnnfast import attention as A
from rnnfast import reference_attention as R
from rnnfast.errors import DTypeError, ShapeError, StateDictError

KINDS = {
    "additive": lambda Dq, Dk: A.AdditiveAttention(Dq, Dk, 7, seed=1),
    "additive_nobias": lambda Dq, Dk: A.AdditiveAttention(Dq, Dk, 5, bias=False, seed=2),
    "dot": lambda Dq, Dk: A.DotAttention(),
    "scaled_dot": lambda Dq, Dk: A.ScaledDotAttention(),
    "general": lambda Dq, Dk: A.GeneralAttention(Dq, Dk, seed=3),
    "general_bias": lambda Dq, Dk: A.GeneralAttention(Dq, Dk, bias=True, seed=4),
}


def _ref_kind(name):
    return name.split("_nobias")[0].replace("_bias", "").replace("general_bias", "general")


def _sizes(name):
    return (6, 6) if name in ("dot", "scaled_dot") else (5, 9)


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("query_rank", [2, 3])
@pytest.mark.parametrize("masking", ["none", "lengths", "mask", "both"])
def test_matches_reference(rng, name, query_rank, masking):
    Dq, Dk = _sizes(name)
    layer = KINDS[name](Dq, Dk)
    B, Tq, S, Dv = 4, 3, 11, 13
    q = rng.standard_normal((B, Dq) if query_rank == 2 else (B, Tq, Dq))
    k = rng.standard_normal((B, S, Dk))
    v = rng.standard_normal((B, S, Dv))
    lengths = np.array([11, 4, 1, 0]) if masking in ("lengths", "both") else None
    mask = rng.random((B, S)) > 0.3 if masking in ("mask", "both") else None
    ctx, w = layer(q, k, v, lengths=lengths, mask=mask)
    rctx, rw = R.attention(_ref_kind(name), q, k, v, layer.state_dict(), lengths=lengths, mask=mask)
    assert ctx.dtype == np.float32 and w.dtype == np.float32
    assert_close(w, rw, what=f"{name} weights")
    assert_close(ctx, rctx, what=f"{name} context")


@pytest.mark.parametrize("name", sorted(KINDS))
def test_weights_sum_to_one_and_masked_rows_are_zero(rng, name):
    Dq, Dk = _sizes(name)
    layer = KINDS[name](Dq, Dk)
    B, S = 5, 8
    mask = rng.random((B, S)) > 0.5
    mask[2] = False  # fully masked row
    lengths = np.array([8, 3, 8, 0, 1])
    ctx, w = layer(rng.standard_normal((B, Dq)), rng.standard_normal((B, S, Dk)), lengths=lengths, mask=mask)
    allowed = mask & (np.arange(S)[None] < lengths[:, None])
    assert not np.isnan(w).any() and not np.isnan(ctx).any()
    assert np.all(w[~allowed] == 0.0)
    live = allowed.any(axis=1)
    assert_close(w.sum(axis=1)[live], np.ones(live.sum()))
    assert np.all(w[~live] == 0.0) and np.all(ctx[~live] == 0.0)


def test_values_default_to_keys(rng):
    layer = A.DotAttention()
    q, k = rng.standard_normal((2, 4)), rng.standard_normal((2, 6, 4))
    ctx, w = layer(q, k)
    rctx, rw = R.attention("dot", q, k)
    assert_close(ctx, rctx)
    assert_close(w, rw)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_precompute_is_reused_across_steps(rng, name):
    Dq, Dk = _sizes(name)
    layer = KINDS[name](Dq, Dk)
    k, v = rng.standard_normal((3, 7, Dk)), rng.standard_normal((3, 7, 2))
    mem = layer.precompute(k, v, lengths=[7, 2, 5])
    for _ in range(3):
        q = rng.standard_normal((3, Dq))
        ctx, w = layer.attend(q, mem)
        rctx, rw = R.attention(_ref_kind(name), q, k, v, layer.state_dict(), lengths=[7, 2, 5])
        assert_close(ctx, rctx)
        assert_close(w, rw)


def test_additive_precompute_holds_key_projection(rng):
    layer = A.AdditiveAttention(3, 4, 6, seed=0)
    k = rng.standard_normal((2, 5, 4))
    mem = layer.precompute(k)
    assert_close(mem.keys_proj, k @ layer.state_dict()["key_weight"].T.astype(np.float64))


def test_large_scores_are_stable(rng):
    q = rng.standard_normal((3, 2, 8)) * 1e4
    k = rng.standard_normal((3, 9, 8)) * 1e3
    ctx, w = A.DotAttention()(q, k)
    rctx, rw = R.attention("dot", q, k)
    assert np.isfinite(w).all() and np.isfinite(ctx).all()
    assert_close(w, rw, atol=1e-4)
    assert_close(ctx, rctx, rtol=1e-3, atol=1e-2)


def test_edge_sizes(rng):
    layer = A.AdditiveAttention(1, 1, 1, seed=0)
    ctx, w = layer(rng.standard_normal((1, 1)), rng.standard_normal((1, 1, 1)))
    assert_close(w, [[1.0]])
    # empty batch and empty source
    ctx, w = layer(np.zeros((0, 1)), np.zeros((0, 3, 1)))
    assert ctx.shape == (0, 1) and w.shape == (0, 3)
    ctx, w = A.DotAttention()(np.ones((2, 3)), np.zeros((2, 0, 3)), np.zeros((2, 0, 5)))
    assert ctx.shape == (2, 5) and np.all(ctx == 0) and w.shape == (2, 0)


def test_non_contiguous_and_float64_inputs(rng):
    layer = A.GeneralAttention(4, 6, seed=0)
    q = rng.standard_normal((3, 8))[:, ::2]
    k = rng.standard_normal((5, 3, 6)).transpose(1, 0, 2)
    ctx, w = layer(q, k)
    rctx, rw = R.attention("general", q, k, None, layer.state_dict())
    assert_close(ctx, rctx)
    assert_close(w, rw)


def test_additive_matches_torch_bahdanau(rng):
    torch = pytest.importorskip("torch")
    Wa, Ua, Va = torch.nn.Linear(6, 5), torch.nn.Linear(4, 5), torch.nn.Linear(5, 1)
    layer = A.AdditiveAttention.from_linears(Wa, Ua, Va)
    q, k = torch.randn(3, 6), torch.randn(3, 7, 4)
    with torch.no_grad():
        scores = Va(torch.tanh(Wa(q)[:, None] + Ua(k))).squeeze(-1)
        w_t = torch.softmax(scores, -1)
        ctx_t = torch.bmm(w_t[:, None], k)[:, 0]
    ctx, w = layer(q.numpy(), k.numpy())
    assert_close(w, w_t.numpy())
    assert_close(ctx, ctx_t.numpy())


def test_general_matches_torch_luong(rng):
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(4, 6)
    layer = A.GeneralAttention.from_linear(lin)
    q, k = torch.randn(2, 6), torch.randn(2, 5, 4)
    with torch.no_grad():
        w_t = torch.softmax(torch.bmm(lin(k), q[:, :, None])[:, :, 0], -1)
    assert_close(layer(q.numpy(), k.numpy())[1], w_t.numpy())


def test_bad_inputs_raise(rng):
    layer = A.AdditiveAttention(3, 4, 5, seed=0)
    k = rng.standard_normal((2, 5, 4))
    with pytest.raises(ShapeError, match="query"):
        layer(np.zeros((2, 7)), k)
    with pytest.raises(ShapeError, match="keys"):
        layer(np.zeros((2, 3)), np.zeros((2, 5, 9)))
    with pytest.raises(ShapeError, match="batch"):
        layer(np.zeros((3, 3)), k)
    with pytest.raises(ShapeError, match="lengths"):
        layer(np.zeros((2, 3)), k, lengths=[6, 1])
    with pytest.raises(ShapeError, match="lengths"):
        layer(np.zeros((2, 3)), k, lengths=[1])
    with pytest.raises(ShapeError, match="mask"):
        layer(np.zeros((2, 3)), k, mask=np.ones((2, 4), bool))
    with pytest.raises(DTypeError):
        layer(np.array([["a", "b", "c"]] * 2), k)
    with pytest.raises(ShapeError, match="values"):
        layer(np.zeros((2, 3)), k, values=np.zeros((2, 4, 1)))
    with pytest.raises(ShapeError):
        A.DotAttention()(np.zeros((2, 3)), np.zeros((2, 5, 4)))


def test_state_dict_and_config_round_trip(rng):
    layer = A.AdditiveAttention(3, 4, 5, seed=0)
    clone = A.attention_from_config(layer.config())
    clone.load_state_dict(layer.state_dict())
    q, k = rng.standard_normal((2, 3)), rng.standard_normal((2, 6, 4))
    np.testing.assert_array_equal(clone(q, k)[0], layer(q, k)[0])
    with pytest.raises(StateDictError, match="missing"):
        clone.load_state_dict({"v": np.zeros(5)})
    with pytest.raises(StateDictError, match="shape"):
        clone.load_state_dict({**layer.state_dict(), "v": np.zeros(4)})


@pytest.mark.parametrize("B", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("NK", [(5, 37), (67, 16), (1, 1), (9, 0)])
@pytest.mark.parametrize("bias", [True, False])
def test_core_linear_kernel(rng, B, NK, bias):
    """The C core's linear (own small-batch kernel for B <= 16, BLAS above) vs float64 NumPy."""
    from rnnfast import _attention

    N, K = NK
    x = rng.standard_normal((B, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    y = _attention.linear(x, w, b, 2)
    expect = x.astype(np.float64) @ w.T.astype(np.float64) + (0.0 if b is None else b)
    assert_close(y, expect)
    y3 = _attention.linear(x.reshape(1, B, K), w, b, 1)
    assert y3.shape == (1, B, N)
    assert_close(y3[0], expect)


def test_nan_propagates_not_hidden(rng):
    """A NaN score poisons its row (as in torch and the reference), it is never silently dropped."""
    q = rng.standard_normal((2, 3, 20))
    k = rng.standard_normal((2, 37, 20))
    k[0, 30, 5] = np.nan  # row 0, key 30: past the first 16-lane block
    ctx, w = A.DotAttention()(q, k)
    rctx, rw = R.attention("dot", q, k)
    assert np.isnan(w[0]).all() and not np.isnan(w[1]).any()
    assert_close(w, rw)
    assert_close(ctx, rctx)
    # ... unless the NaN key is masked out
    ctx, w = A.DotAttention()(q, k, lengths=[30, 37])
    assert not np.isnan(w).any() and not np.isnan(ctx).any()
