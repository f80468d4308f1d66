"""Keras 3: .keras archives and .weights.h5 files read with h5py, compared with Keras' own predict();
the Keras gate orders (LSTM i,f,c,o; GRU z,r,h) each checked on their own."""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported

import numpy as np
import pytest

from rnnfast import errors, reference
from rnnfast import models as M
from rnnfast.loaders import keras as rkeras
from rnnfast.loaders import load, save
from tests.conftest import assert_close

h5py = pytest.importorskip("h5py")
keras = pytest.importorskip("keras")
L = keras.layers


def _randomize(model, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.uniform(-scale, scale, v.shape).astype("float32"))


def _save_both(model, tmp_path, name):
    model.save(tmp_path / f"{name}.keras")
    model.save_weights(tmp_path / f"{name}.weights.h5")
    return tmp_path / f"{name}.keras", tmp_path / f"{name}.weights.h5"


def _inp():
    return keras.Input((6,), dtype="int32")


MODELS = {
    "odd_activations": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.SimpleRNN(4, activation="sigmoid", return_sequences=True),
        L.GRU(5, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True),
        L.Bidirectional(L.LSTM(3, activation="softsign", recurrent_activation="sigmoid")),
        L.Dense(3),
    ],
    "lstm_seq_softmax": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.LSTM(5, return_sequences=True),
        L.Dense(3, activation="softmax"),
    ],
    "gru_last_sigmoid": lambda: [_inp(), L.Embedding(20, 8), L.GRU(5), L.Dense(3, activation="sigmoid")],
    "gru_reset_before_then_simplernn": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.GRU(5, reset_after=False, return_sequences=True),
        L.SimpleRNN(4),
        L.Dense(3),
    ],
    "bidirectional_stack": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.Bidirectional(L.LSTM(5, return_sequences=True)),
        L.Bidirectional(L.GRU(4, reset_after=False)),
        L.Dense(3),
    ],
    "bidirectional_seq_simplernn": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.Bidirectional(L.SimpleRNN(4, activation="relu", return_sequences=True)),
        L.Dense(2, activation="tanh"),
    ],
    "activations_go_backwards": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.LSTM(5, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True),
        L.GRU(4, go_backwards=True),
        L.Dense(3),
    ],
    "go_backwards_sequences": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.SimpleRNN(4, go_backwards=True, return_sequences=True),
        L.Dense(3),
    ],
    "no_bias_dropout_activation_layers": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.Dropout(0.3),
        L.LSTM(5, use_bias=False),
        L.Dense(4, use_bias=False),
        L.Activation("relu"),
        L.Dense(3),
        L.Softmax(),
    ],
    "time_distributed": lambda: [
        _inp(),
        L.Embedding(20, 8),
        L.GRU(5, return_sequences=True),
        L.TimeDistributed(L.Dense(3)),
        L.Activation("log_softmax"),
    ],
}


@pytest.mark.parametrize("name", list(MODELS))
def test_keras_archive_and_weights_match_predict(tmp_path, name):
    model = keras.Sequential(MODELS[name]())
    _randomize(model, seed=len(name))
    kpath, wpath = _save_both(model, tmp_path, name)
    x = np.random.default_rng(1).integers(0, 20, (4, 6))
    ref = model.predict(x, verbose=0)
    ours = load(kpath)
    assert_close(ours(x), ref, what=".keras")
    # .weights.h5 with the architecture as a .keras path, a config.json path, and a config dict
    (tmp_path / "config.json").write_text(
        json.dumps({"class_name": "Sequential", "config": model.get_config()})
    )
    for arch in (
        kpath,
        tmp_path / "config.json",
        {"class_name": "Sequential", "config": model.get_config()},
        model.get_config(),
    ):
        assert_close(load(wpath, architecture=arch)(x), ref, what=f".weights.h5 with {type(arch).__name__}")
    # and converted to native: the same numbers, exactly
    save(ours, tmp_path / "n.safetensors")
    assert np.array_equal(load(tmp_path / "n.safetensors")(x), ours(x))


def test_functional_chain(tmp_path):
    inp = keras.Input((6,), dtype="int32")
    h = L.Embedding(20, 8, name="emb")(inp)
    h = L.LSTM(6, return_sequences=True, name="a")(h)
    h = L.LSTM(6, return_sequences=True, name="b")(h)
    h = L.GRU(5)(h)
    out = L.Activation("softmax")(L.Dense(3)(h))
    model = keras.Model(inp, out)
    _randomize(model, 3)
    model.save(tmp_path / "f.keras")
    x = np.random.default_rng(2).integers(0, 20, (3, 6))
    assert_close(load(tmp_path / "f.keras")(x), model.predict(x, verbose=0))


def test_functional_branching_is_unsupported(tmp_path):
    inp = keras.Input((6, 4))
    a = L.LSTM(3)(inp)
    b = L.GRU(3)(inp)
    model = keras.Model(inp, L.Concatenate()([a, b]))
    model.save(tmp_path / "branch.keras")
    with pytest.raises(errors.UnsupportedError, match="branch.keras"):
        load(tmp_path / "branch.keras")


def test_unsupported_layers_are_named(tmp_path):
    model = keras.Sequential(
        [keras.Input((6, 4)), L.Conv1D(3, 2), L.LSTM(3), L.Dense(2), L.BatchNormalization()]
    )
    model.save(tmp_path / "c.keras")
    with pytest.raises(errors.UnsupportedError) as ei:
        load(tmp_path / "c.keras")
    assert "Conv1D" in str(ei.value) and "BatchNormalization" in str(ei.value)
    m2 = keras.Sequential([keras.Input((6, 4)), L.Dense(4), L.Masking(), L.LSTM(3)])
    m2.save(tmp_path / "mask.keras")
    with pytest.raises(errors.UnsupportedError, match="Masking"):
        load(tmp_path / "mask.keras")
    m3 = keras.Sequential([keras.Input((6, 4)), L.Bidirectional(L.GRU(3), merge_mode="sum")])
    m3.save(tmp_path / "sum.keras")
    with pytest.raises(errors.UnsupportedError, match="merge_mode"):
        load(tmp_path / "sum.keras")


def test_float_input_without_embedding(tmp_path):
    model = keras.Sequential([keras.Input((5, 3)), L.GRU(4, return_sequences=True), L.Dense(2)])
    _randomize(model, 4)
    model.save(tmp_path / "f.keras")
    x = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    assert_close(load(tmp_path / "f.keras")(x), model.predict(x, verbose=0))


def test_weights_without_architecture(tmp_path):
    model = keras.Sequential([keras.Input((5, 3)), L.GRU(4)])
    model.save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(errors.FormatError, match="architecture"):
        load(tmp_path / "w.weights.h5")


# ------------------------------------------------------------------------------------------ gate orders
def _blocks(n, rows, H):
    """(rows, n*H) with column block k filled with k+1: the layout of a Keras kernel."""
    return np.concatenate([np.full((rows, H), k + 1, np.float32) for k in range(n)], axis=1)


def test_keras_lstm_gate_order_ifco_is_torch_ifgo():
    H, I = 2, 3
    p = rkeras._convert_cell("LSTM", {}, _blocks(4, I, H), _blocks(4, H, H), _blocks(4, 1, H)[0], H)
    assert p["weight_ih"].shape == (4 * H, I)  # transposed
    assert [p["weight_ih"][k * H, 0] for k in range(4)] == [1, 2, 3, 4]  # i f c o = i f g o
    assert [p["weight_hh"][k * H, 0] for k in range(4)] == [1, 2, 3, 4]
    assert [p["bias_ih"][k * H] for k in range(4)] == [1, 2, 3, 4]
    assert not p["bias_hh"].any()


def test_keras_lstm_gate_order_numeric():
    rng = np.random.default_rng(0)
    layer = L.LSTM(3, return_sequences=True)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    layer.build(x.shape)
    for v in layer.weights:
        v.assign(rng.uniform(-0.5, 0.5, v.shape).astype("float32"))
    kernel, rec, bias = (np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights)
    p = rkeras._convert_cell("LSTM", {}, kernel, rec, bias, 3)
    out, _, _ = reference.recurrent("LSTM", x, {f"{k}_l0": v for k, v in p.items()}, batch_first=True)
    assert_close(out, keras.ops.convert_to_numpy(layer(x)))


def test_keras_gru_gate_order_zrh_to_torch_rzn():
    H, I = 2, 3
    bias = np.stack([_blocks(3, 1, H)[0], 10 * _blocks(3, 1, H)[0]])  # reset_after: (2, 3H)
    p = rkeras._convert_cell("GRU", {"reset_after": True}, _blocks(3, I, H), _blocks(3, H, H), bias, H)
    assert [p["weight_ih"][k * H, 0] for k in range(3)] == [2, 1, 3]  # r, z, n from z=1, r=2, h=3
    assert [p["weight_hh"][k * H, 0] for k in range(3)] == [2, 1, 3]
    assert [p["bias_ih"][k * H] for k in range(3)] == [2, 1, 3]
    assert [p["bias_hh"][k * H] for k in range(3)] == [20, 10, 30]
    p0 = rkeras._convert_cell(
        "GRU", {"reset_after": False}, _blocks(3, I, H), _blocks(3, H, H), _blocks(3, 1, H)[0], H
    )
    assert [p0["bias_ih"][k * H] for k in range(3)] == [2, 1, 3] and not p0["bias_hh"].any()


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_gru_gate_order_numeric(reset_after):
    rng = np.random.default_rng(1)
    layer = L.GRU(3, return_sequences=True, reset_after=reset_after)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    layer.build(x.shape)
    for v in layer.weights:
        v.assign(rng.uniform(-0.5, 0.5, v.shape).astype("float32"))
    kernel, rec, bias = (np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights)
    p = rkeras._convert_cell("GRU", {"reset_after": reset_after}, kernel, rec, bias, 3)
    out, _, _ = reference.recurrent(
        "GRU", x, {f"{k}_l0": v for k, v in p.items()}, batch_first=True, reset_after=reset_after
    )
    assert_close(out, keras.ops.convert_to_numpy(layer(x)))


def test_loaded_model_structure(tmp_path):
    model = keras.Sequential(MODELS["bidirectional_stack"]())
    kpath, _ = _save_both(model, tmp_path, "s")
    ours = load(kpath)
    assert isinstance(ours, M.Sequential) and ours.many_to_one
    types = [layer.config()["type"] for layer in ours]
    assert types == ["Embedding", "LSTM", "GRU", "Linear"]
    assert ours[1].bidirectional and ours[1].batch_first and not ours[2].reset_after


# ------------------------------------------------------------------------------------------ masking
MASKED = {
    "lstm_last": lambda: [L.LSTM(5)],
    "stacked_gru_last": lambda: [L.LSTM(5, return_sequences=True), L.GRU(4)],
    "lstm_sequences_carry": lambda: [L.LSTM(5, return_sequences=True)],
    "gru_sequences_zero_output": lambda: [L.GRU(5, return_sequences=True, zero_output_for_mask=True)],
    "bidirectional_sequences": lambda: [L.Bidirectional(L.GRU(4, return_sequences=True))],
    "bidirectional_last": lambda: [
        L.Bidirectional(L.LSTM(4, return_sequences=True)),
        L.Bidirectional(L.SimpleRNN(3)),
    ],
    "go_backwards_last": lambda: [L.GRU(4, go_backwards=True)],
}


@pytest.mark.parametrize("name", list(MASKED))
def test_mask_zero_matches_predict(tmp_path, name):
    """Token 0 is skipped by the recurrent layers: post-padding, pre-padding, zeros inside, all-zero rows."""
    model = keras.Sequential(
        [
            keras.Input((7,), dtype="int32"),
            L.Embedding(20, 6, mask_zero=True),
            *MASKED[name](),
            L.Dense(3, activation="softmax"),
        ]
    )
    _randomize(model, seed=len(name))
    model.save(tmp_path / "m.keras")
    x = np.array(
        [
            [3, 4, 5, 6, 7, 8, 9],  # full
            [3, 4, 5, 0, 0, 0, 0],  # post-padded
            [0, 0, 0, 0, 5, 6, 7],  # pre-padded (Keras pad_sequences' default)
            [1, 0, 2, 0, 0, 3, 0],  # zeros inside
            [0, 0, 0, 0, 0, 0, 0],
        ]
    )  # nothing
    ours = load(tmp_path / "m.keras")
    assert_close(ours(x), model.predict(x, verbose=0))
    save(ours, tmp_path / "m.safetensors")
    assert np.array_equal(load(tmp_path / "m.safetensors")(x), ours(x))


def test_mask_zero_refuses_explicit_lengths(tmp_path):
    model = keras.Sequential([keras.Input((4,), dtype="int32"), L.Embedding(9, 3, mask_zero=True), L.GRU(2)])
    model.save(tmp_path / "m.keras")
    with pytest.raises(errors.ShapeError, match="mask"):
        load(tmp_path / "m.keras")(np.ones((2, 4), np.int64), lengths=np.array([4, 2]))
