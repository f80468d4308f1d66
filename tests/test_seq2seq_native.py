"""A Seq2Seq saved in the native format (and pickled through it) decodes the same tokens."""

import numpy as np
import pytest

import rnnfast
from rnnfast.seq2seq import Seq2Seq


@pytest.mark.parametrize("wiring", ["none", "bahdanau", "luong"])
def test_native_format_and_pickle_round_trip(wiring, tmp_path):
    import pickle

    rng = np.random.default_rng(11)
    V, E, H = 12, 5, 8
    kw, attn, dec_in = {}, None, E
    if wiring == "bahdanau":
        attn, dec_in = rnnfast.AdditiveAttention(H, H, 7, seed=0), E + H
    elif wiring == "luong":
        attn = rnnfast.GeneralAttention(H, H, seed=0)
        kw = dict(
            attention_type="luong",
            combine_weight=rng.standard_normal((H, 2 * H)).astype(np.float32),
            combine_bias=rng.standard_normal(H).astype(np.float32),
        )
    model = Seq2Seq(
        rnnfast.LSTM(E, H, batch_first=True, seed=0),
        rnnfast.LSTM(dec_in, H, seed=1),
        rng.standard_normal((V, E)).astype(np.float32),
        rng.standard_normal((V, H)).astype(np.float32),
        rng.standard_normal(V).astype(np.float32),
        attention=attn,
        src_embedding=rng.standard_normal((V, E)).astype(np.float32),
        **kw,
    )
    src, lens = rng.integers(0, V, (3, 6)), [6, 3, 4]
    ref = model.greedy(src, lens, max_len=5, start_token=1, end_token=2)
    rnnfast.save(model, tmp_path / "m.safetensors")
    for again in (rnnfast.load(tmp_path / "m.safetensors"), pickle.loads(pickle.dumps(model))):
        got = again.greedy(src, lens, max_len=5, start_token=1, end_token=2)
        np.testing.assert_array_equal(got.tokens, ref.tokens)
        np.testing.assert_array_equal(got.scores, ref.scores)
        assert again.config() == model.config()
    sd = model.state_dict()
    sd["out_weight"] = sd["out_weight"][:, :3]
    with pytest.raises(rnnfast.errors.StateDictError, match="out_weight"):
        model.load_state_dict(sd)


def _wide_model(V, E, H, wiring, seed=3):
    rng = np.random.default_rng(seed)
    kw, attn, dec_in = {}, None, E
    if wiring == "bahdanau":
        attn, dec_in = rnnfast.AdditiveAttention(H, H, 16, seed=0), E + H
    elif wiring == "luong":
        attn = rnnfast.GeneralAttention(H, H, seed=0)
        kw = dict(
            attention_type="luong",
            combine_weight=(rng.standard_normal((40, 2 * H)) * 0.2).astype(np.float32),
            combine_bias=rng.standard_normal(40).astype(np.float32),
        )
    h_out = 40 if wiring == "luong" else H
    return Seq2Seq(
        rnnfast.GRU(E, H, batch_first=True, seed=0),
        rnnfast.LSTM(dec_in, H, seed=1),
        rng.standard_normal((V, E)).astype(np.float32),
        (rng.standard_normal((V, h_out)) * 0.3).astype(np.float32),
        rng.standard_normal(V).astype(np.float32),
        attention=attn,
        src_embedding=rng.standard_normal((V, E)).astype(np.float32),
        **kw,
    )


@pytest.mark.parametrize("wiring", ["none", "bahdanau", "luong"])
@pytest.mark.parametrize("B", [4, 7])
@pytest.mark.parametrize("threads", [1, 2])
def test_c_greedy_packed_output_layer_equals_python_loop(wiring, B, threads):
    # From B >= 4 and 4 steps the C loop packs the output weight and splits its columns over threads;
    # V = 1001 is not a multiple of the 32-column panels, H = 72 not of the 16-lane vectors.
    model = _wide_model(1001, 24, 72, wiring)
    rng = np.random.default_rng(B)
    src, lens = rng.integers(0, 1001, (B, 9)), rng.integers(1, 10, B)
    before = rnnfast.get_num_threads()
    rnnfast.set_num_threads(threads)
    try:
        c = model.greedy(src, lens, max_len=7, start_token=1, end_token=2, use_c=True)
    finally:
        rnnfast.set_num_threads(before)
    p = model.greedy(src, lens, max_len=7, start_token=1, end_token=2, use_c=False)
    np.testing.assert_array_equal(c.tokens, p.tokens)
    np.testing.assert_array_equal(c.lengths, p.lengths)
    np.testing.assert_allclose(c.scores, p.scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("B", [1, 5])
def test_c_greedy_nan_logit_is_the_argmax_like_numpy(B):
    # A NaN logit wins the argmax (first NaN, as torch.argmax / np.argmax) and makes the score NaN.
    model = _wide_model(300, 8, 16, "none")
    model.out_bias[[37, 200]] = np.nan
    src = np.random.default_rng(0).integers(0, 300, (B, 4))
    for use_c in (True, False):
        r = model.greedy(src, None, max_len=5, start_token=1, use_c=use_c)
        assert np.all(r.tokens == 37), use_c
        assert np.all(np.isnan(r.scores)), use_c
