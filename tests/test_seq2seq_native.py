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
