"""Streaming, edge shapes, input conversion, the original GRU's equations. (Threads and fork: test_hardening.py.)"""

import subprocess
import sys

import numpy as np
import pytest

import rnnfast
from rnnfast import reference as R

from conftest import assert_close


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_gru_reset_before_follows_its_written_equations(rng):
    """Cho et al. 2014: r = s(Wr x + br + Ur h + cr), z likewise, n = tanh(Wn x + bn + Un (r*h) + cn),
    h' = (1-z) n + z h -- written out here, independently of rnnfast.reference."""
    gru = rnnfast.GRU(4, 6, reset_after=False, seed=3)
    sd = {k: v.astype(np.float64) for k, v in gru.state_dict().items()}
    Wr, Wz, Wn = np.split(sd["weight_ih_l0"], 3)
    Ur, Uz, Un = np.split(sd["weight_hh_l0"], 3)
    br, bz, bn = np.split(sd["bias_ih_l0"], 3)
    cr, cz, cn = np.split(sd["bias_hh_l0"], 3)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    h0 = rng.standard_normal((2, 6))
    out, h_n = gru(x, h0[None])
    h = h0
    for t in range(5):
        xt = x[t].astype(np.float64)
        r = _sigmoid(xt @ Wr.T + br + h @ Ur.T + cr)
        z = _sigmoid(xt @ Wz.T + bz + h @ Uz.T + cz)
        n = np.tanh(xt @ Wn.T + bn + (r * h) @ Un.T + cn)
        h = (1 - z) * n + z * h
        assert_close(out[t], h, what=f"step {t}")
    assert_close(h_n[0], h)
    # and the two GRU forms really differ on the same weights
    after = rnnfast.GRU(4, 6, reset_after=True)
    after.load_state_dict(gru.state_dict())
    assert np.abs(after(x, h0[None])[0] - out).max() > 1e-3


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "gru_rb", "lstm_proj"])
@pytest.mark.parametrize("B", [1, 3])
def test_streaming_chunks_equal_whole_sequence(kind, B, rng):
    make = {
        "lstm": lambda: rnnfast.LSTM(5, 40, num_layers=2, seed=1),
        "lstm_proj": lambda: rnnfast.LSTM(5, 40, num_layers=2, proj_size=7, seed=1),
        "gru": lambda: rnnfast.GRU(5, 40, num_layers=2, seed=1),
        "gru_rb": lambda: rnnfast.GRU(5, 40, num_layers=2, reset_after=False, seed=1),
        "rnn": lambda: rnnfast.RNN(5, 40, num_layers=2, seed=1),
    }
    layer = make[kind]()
    x = rng.standard_normal((12, B, 5)).astype(np.float32)
    whole_out, whole_state = layer(x)
    state, outs = None, []
    for a, b in [(0, 1), (1, 2), (2, 7), (7, 7), (7, 12)]:  # includes a one-step and an empty chunk
        o, state = layer(x[a:b], state)
        outs.append(o)
    np.testing.assert_allclose(np.concatenate(outs), whole_out, rtol=1e-6, atol=1e-6)
    for s, w in zip(
        state if isinstance(state, tuple) else (state,),
        whole_state if isinstance(whole_state, tuple) else (whole_state,),
    ):
        np.testing.assert_allclose(s, w, rtol=1e-6, atol=1e-6)


def test_empty_batch_and_empty_sequences():
    lstm = rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, seed=0)
    out, (h, c) = lstm(np.zeros((0, 5, 3), np.float32))
    assert out.shape == (0, 5, 8) and h.shape == (4, 0, 4) and c.shape == (4, 0, 4)
    out, (h, c) = lstm(np.zeros((2, 0, 3), np.float32))
    assert out.shape == (2, 0, 8) and h.shape == (4, 2, 4)
    np.testing.assert_array_equal(h, 0)
    h0 = np.ones((4, 2, 4), np.float32)
    out, (h, c) = lstm(np.zeros((2, 0, 3), np.float32), (h0, 2 * h0))
    np.testing.assert_array_equal(h, h0)  # no step: the initial state comes back
    np.testing.assert_array_equal(c, 2 * h0)
    gru = rnnfast.GRU(3, 4, seed=0)
    out, h = gru(np.zeros((5, 0, 3)), lengths=np.zeros(0, dtype=int))
    assert out.shape == (5, 0, 4) and h.shape == (1, 0, 4)


def test_all_lengths_zero_returns_initial_state_and_zero_output(rng):
    gru = rnnfast.GRU(3, 4, bidirectional=True, seed=0)
    h0 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    out, h = gru(rng.standard_normal((6, 3, 3)), h0, lengths=[0, 0, 0])
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(h, h0)


def test_float64_and_non_contiguous_inputs_are_converted(rng):
    layer = rnnfast.GRU(4, 5, batch_first=True, seed=2)
    base = rng.standard_normal((6, 3, 8))
    x = base[:, :, ::2].transpose(1, 0, 2)  # (3, 6, 4) batch-first, float64, not contiguous
    assert not x.flags.c_contiguous
    out, h = layer(x)
    ref, ref_h, _ = R.recurrent("GRU", x, layer.state_dict(), batch_first=True)
    assert out.dtype == np.float32
    assert_close(out, ref)
    assert_close(h, ref_h)
    out_list, _ = layer(x.tolist())  # nested lists are array-likes too
    np.testing.assert_array_equal(out_list, out)


def test_outputs_do_not_alias_between_calls(rng):
    layer = rnnfast.RNN(3, 4, seed=1)
    x = rng.standard_normal((2, 1, 3))
    o1, h1 = layer(x)
    o2, h2 = layer(x + 1)
    assert not np.shares_memory(o1, o2)
    assert not np.array_equal(o1, o2)


def test_set_num_threads_validates():
    with pytest.raises(ValueError):
        rnnfast.set_num_threads(0)
    assert rnnfast.get_num_threads() >= 1


def test_seeded_init_is_reproducible_and_uniform():
    a, b = rnnfast.LSTM(8, 100, seed=42), rnnfast.LSTM(8, 100, seed=42)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
        assert np.abs(v).max() <= 0.1 + 1e-7  # 1/sqrt(100)
        assert np.abs(v).max() > 0.09
    other = rnnfast.LSTM(8, 100, seed=43).state_dict()["weight_ih_l0"]
    assert not np.array_equal(a.state_dict()["weight_ih_l0"], other)


def test_config_round_trip():
    for layer in (
        rnnfast.LSTM(3, 8, 2, bidirectional=True, proj_size=4, batch_first=True),
        rnnfast.GRU(3, 5, reset_after=False),
        rnnfast.RNN(2, 3, nonlinearity="relu", bias=False),
    ):
        again = rnnfast.layer_from_config(layer.config())
        assert again.config() == layer.config()
        assert repr(again) == repr(layer)


def test_import_needs_no_framework():
    code = (
        "import sys, rnnfast; bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'keras', 'h5py', "
        "'tensorflow') if m in sys.modules]; print(bad); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_layers_pickle_through_the_native_format(rng):
    import copy
    import pickle

    layer = rnnfast.LSTM(3, 5, num_layers=2, bidirectional=True, seed=3)
    data = pickle.dumps(layer)
    assert b"RNNPlan" not in data  # only the native bytes travel, no C object
    again = pickle.loads(data)
    x = rng.standard_normal((4, 2, 3))
    np.testing.assert_array_equal(again(x)[0], layer(x)[0])
    np.testing.assert_array_equal(copy.deepcopy(layer)(x)[0], layer(x)[0])
