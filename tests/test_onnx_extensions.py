"""The C core's generic cell (ONNX activations, clip, peepholes, input_forget) vs the reference."""

import itertools

import numpy as np
import pytest

import rnnfast
from rnnfast import reference as R

from conftest import assert_close

ACTS = [
    ("Relu", None, None),
    ("Tanh", None, None),
    ("Sigmoid", None, None),
    ("Affine", 0.7, -0.2),
    ("LeakyRelu", 0.05, None),
    ("ThresholdedRelu", 0.3, None),
    ("ScaledTanh", 1.3, 0.6),
    ("HardSigmoid", 0.25, 0.45),
    ("Elu", 0.9, None),
    ("Softsign", None, None),
    ("Softplus", None, None),
]
DEFAULTS = {
    "leakyrelu": (0.01, 0.0),
    "thresholdedrelu": (1.0, 0.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, 0.0),
    "affine": (1.0, 0.0),
    "scaledtanh": (1.0, 1.0),
}


def ref_spec(a):
    name, alpha, beta = a
    da, db = DEFAULTS.get(name.lower(), (0.0, 0.0))
    return (name, da if alpha is None else alpha, db if beta is None else beta)


def check(cls, mode, n_acts, acts_per_dir, bidirectional, lengths, clip=None, input_forget=False, peep=False, **kw):
    D = 2 if bidirectional else 1
    layer = cls(
        3,
        7,
        num_layers=2,
        bidirectional=bidirectional,
        activations=acts_per_dir,
        clip=clip,
        input_forget=input_forget,
        seed=4,
        **kw,
    )
    rng = np.random.default_rng(5)
    if peep:
        sd = layer.state_dict()
        for k in range(2):
            for sfx in ("", "_reverse")[:D]:
                sd[f"weight_peep_l{k}{sfx}"] = rng.uniform(-0.5, 0.5, 21).astype(np.float32)
        layer.load_state_dict(sd)
    x = (rng.standard_normal((5, 3, 3)) * 2).astype(np.float32)
    out, state = layer(x, lengths=lengths)
    h_n = state[0] if mode == "LSTM" else state
    acts = None if acts_per_dir is None else [[ref_spec(a) for a in d] for d in acts_per_dir]
    params = layer.state_dict()
    if peep:
        params.update({k: v for k, v in sd.items() if "peep" in k})
    ref_out, ref_h, ref_c = R.recurrent(
        mode,
        x,
        params,
        2,
        bidirectional,
        lengths=lengths,
        activations=acts,
        clip=clip,
        input_forget=input_forget,
        reset_after=kw.get("reset_after", True),
    )
    assert_close(out, ref_out, what="out")
    assert_close(h_n, ref_h, what="h_n")
    if mode == "LSTM":
        assert_close(state[1], ref_c, what="c_n")


@pytest.mark.parametrize("act", ACTS, ids=[a[0] for a in ACTS])
@pytest.mark.parametrize("cell", ["rnn", "gru", "gru_rb", "lstm"])
def test_each_activation(cell, act):
    if cell == "rnn":
        check(rnnfast.RNN, "RNN_TANH", 1, [[act], [act]], True, [5, 2, 0])
    elif cell.startswith("gru"):
        check(
            rnnfast.GRU,
            "GRU",
            2,
            [[act, ("Tanh", None, None)], [("Sigmoid", None, None), act]],
            True,
            [5, 2, 0],
            reset_after=cell == "gru",
        )
    else:
        check(
            rnnfast.LSTM,
            "LSTM",
            3,
            [[act, ("Tanh", None, None), act], [("Sigmoid", None, None), act, ("Tanh", None, None)]],
            True,
            [5, 2, 0],
        )


@pytest.mark.parametrize("bidirectional,lengths", list(itertools.product((False, True), (None, [3, 5, 1]))))
def test_lstm_clip_peepholes_input_forget(bidirectional, lengths):
    check(rnnfast.LSTM, "LSTM", 3, None, bidirectional, lengths, clip=0.8, peep=True)
    check(rnnfast.LSTM, "LSTM", 3, None, bidirectional, lengths, input_forget=True, peep=True)
    check(rnnfast.LSTM, "LSTM", 3, None, bidirectional, lengths, clip=0.5, input_forget=True)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_and_rnn_clip(reset_after):
    check(rnnfast.GRU, "GRU", 2, None, True, [4, 5, 2], clip=0.6, reset_after=reset_after)
    check(rnnfast.RNN, "RNN_TANH", 1, None, True, None, clip=0.3)


def test_bad_activation_names_and_counts():
    with pytest.raises(NotImplementedError, match="activation 'Swish'"):
        rnnfast.GRU(3, 4, activations=[["Swish", "Tanh"]])
    with pytest.raises(ValueError, match="activations"):
        rnnfast.GRU(3, 4, activations=[["Sigmoid"]])
    with pytest.raises(ValueError, match="clip"):
        rnnfast.GRU(3, 4, clip=-1.0)
    with pytest.raises(ValueError, match="input_forget"):
        rnnfast.GRU(3, 4, input_forget=True)
