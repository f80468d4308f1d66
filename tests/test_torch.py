"""Reference and C core vs PyTorch 2.13: from_torch, load_state_dict, lengths, initial states."""

import itertools

import numpy as np
import pytest

import rnnfast
from rnnfast import reference as R

from conftest import assert_close

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

KINDS = {
    "rnn_tanh": lambda **k: torch.nn.RNN(**k),
    "rnn_relu": lambda **k: torch.nn.RNN(nonlinearity="relu", **k),
    "lstm": lambda **k: torch.nn.LSTM(**k),
    "lstm_proj": lambda **k: torch.nn.LSTM(proj_size=5, **k),
    "gru": lambda **k: torch.nn.GRU(**k),
}


def torch_run(module, x, hx, lengths, batch_first):
    xt = torch.from_numpy(x)
    if hx is not None:
        hx = tuple(torch.from_numpy(h) for h in hx) if isinstance(hx, tuple) else torch.from_numpy(hx)
    with torch.inference_mode():
        if lengths is None:
            out, state = module(xt, hx)
            out = out.numpy()
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
            )
            out, state = module(packed, hx)
            T = x.shape[1] if batch_first else x.shape[0]
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
            out = out.numpy()
    if isinstance(state, tuple):
        return out, tuple(s.numpy() for s in state)
    return out, state.numpy()


def make_inputs(module, T, B, batch_first, rng):
    D = 2 if module.bidirectional else 1
    LD, H = module.num_layers * D, module.hidden_size
    P = getattr(module, "proj_size", 0) or H
    x = rng.standard_normal((B, T, module.input_size) if batch_first else (T, B, module.input_size)).astype(np.float32)
    h0 = rng.standard_normal((LD, B, P)).astype(np.float32)
    if isinstance(module, torch.nn.LSTM):
        return x, (h0, rng.standard_normal((LD, B, H)).astype(np.float32))
    return x, h0


@pytest.mark.parametrize(
    "kind,num_layers,bidirectional,batch_first,lengths",
    list(itertools.product(KINDS, (1, 3), (False, True), (False, True), (None, [4, 7, 1]))),
)
def test_from_torch_matches_torch(kind, num_layers, bidirectional, batch_first, lengths, rng):
    torch.manual_seed(0)
    module = KINDS[kind](
        input_size=6, hidden_size=11, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first
    ).eval()
    x, hx = make_inputs(module, 7, 3, batch_first, rng)
    ref_out, ref_state = torch_run(module, x, hx, lengths, batch_first)
    layer = rnnfast.from_torch(module)
    out, state = layer(x, hx, lengths=lengths)
    assert_close(out, ref_out, what="out vs torch")
    if isinstance(ref_state, tuple):
        assert_close(state[0], ref_state[0], what="h_n vs torch")
        assert_close(state[1], ref_state[1], what="c_n vs torch")
    else:
        assert_close(state, ref_state, what="h_n vs torch")


@pytest.mark.parametrize("kind", KINDS)
def test_reference_matches_torch(kind, rng):
    """The specification itself agrees with PyTorch (first link of the chain of trust)."""
    torch.manual_seed(1)
    module = KINDS[kind](input_size=4, hidden_size=8, num_layers=2, bidirectional=True).eval()
    x, hx = make_inputs(module, 6, 3, False, rng)
    lengths = [6, 2, 4]
    ref_out, ref_state = torch_run(module, x, hx, lengths, False)
    params = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    mode = {"rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}.get(kind, type(module).__name__)
    out, h_n, c_n = R.recurrent(
        mode,
        x,
        params,
        2,
        True,
        h0=hx[0] if isinstance(hx, tuple) else hx,
        c0=hx[1] if isinstance(hx, tuple) else None,
        lengths=lengths,
        proj_size=getattr(module, "proj_size", 0),
    )
    assert_close(out, ref_out, rtol=1e-5, atol=1e-6, what="reference out vs torch")
    assert_close(h_n, ref_state[0] if isinstance(ref_state, tuple) else ref_state, rtol=1e-5, atol=1e-6)
    if c_n is not None:
        assert_close(c_n, ref_state[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_and_state_dict_round_trip(kind, rng):
    torch.manual_seed(2)
    module = KINDS[kind](input_size=5, hidden_size=9, num_layers=2, bidirectional=True).eval()
    cls = {
        "rnn_tanh": rnnfast.RNN,
        "rnn_relu": rnnfast.RNN,
        "lstm": rnnfast.LSTM,
        "lstm_proj": rnnfast.LSTM,
        "gru": rnnfast.GRU,
    }[kind]
    kw = {"nonlinearity": "relu"} if kind == "rnn_relu" else {"proj_size": 5} if kind == "lstm_proj" else {}
    layer = cls(5, 9, num_layers=2, bidirectional=True, **kw)
    layer.load_state_dict(module.state_dict())  # torch tensors accepted directly
    sd = layer.state_dict()
    assert list(sd) == list(module.state_dict())
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(sd[k], v.numpy())
    x, hx = make_inputs(module, 5, 2, False, rng)
    ref_out, _ = torch_run(module, x, hx, None, False)
    assert_close(layer(x, hx)[0], ref_out)


def test_unbatched_input_matches_torch(rng):
    torch.manual_seed(3)
    module = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True).eval()
    x = rng.standard_normal((5, 4)).astype(np.float32)
    h0 = rng.standard_normal((4, 6)).astype(np.float32)
    c0 = rng.standard_normal((4, 6)).astype(np.float32)
    with torch.inference_mode():
        ref_out, (ref_h, ref_c) = module(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    out, (h, c) = rnnfast.from_torch(module)(x, (h0, c0))
    assert out.shape == tuple(ref_out.shape) and h.shape == tuple(ref_h.shape)
    assert_close(out, ref_out.numpy())
    assert_close(h, ref_h.numpy())
    assert_close(c, ref_c.numpy())


def test_nan_and_inf_flow_like_torch(rng):
    torch.manual_seed(4)
    module = torch.nn.GRU(3, 5).eval()
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    x[1, 0, 1] = np.nan
    x[2, 1, 0] = np.inf
    with torch.inference_mode():
        ref_out, ref_h = module(torch.from_numpy(x))
    out, h = rnnfast.from_torch(module)(x)
    assert_close(out, ref_out.numpy())  # assert_close requires NaN exactly where torch has NaN
    assert np.isnan(out).any()
    assert_close(h, ref_h.numpy())


def test_saturation_without_nan(rng):
    torch.manual_seed(5)
    module = torch.nn.LSTM(3, 8).eval()
    x = (rng.standard_normal((6, 2, 3)) * 1e6).astype(np.float32)
    with torch.inference_mode():
        ref_out, _ = module(torch.from_numpy(x))
    out, _ = rnnfast.from_torch(module)(x)
    assert np.isfinite(out).all()
    assert_close(out, ref_out.numpy())
