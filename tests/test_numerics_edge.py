"""Numerical edge cases: NaN/Inf flow like PyTorch, huge magnitudes saturate without NaN, zero sizes give
well-shaped results, denormals are computed correctly and the caller's floating-point mode is untouched.

Comparisons: the C core against torch.nn.RNN/LSTM/GRU on the same weights (NaN positions must match exactly,
infinities must match, finite values at the float32-vs-float32 tolerance) and against the float64 reference.
"""

from __future__ import annotations

import ctypes
import mmap
import platform

import numpy as np
import pytest
from conftest import assert_close

import rnnfast
from rnnfast import reference as R

CELLS = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def _layer(mode, I=3, H=5, L=2, bidir=True, bf=False, seed=0):
    kw = dict(num_layers=L, bidirectional=bidir, batch_first=bf, seed=seed)
    if mode.startswith("RNN"):
        return rnnfast.RNN(I, H, nonlinearity=mode[4:].lower(), **kw)
    return {"LSTM": rnnfast.LSTM, "GRU": rnnfast.GRU}[mode](I, H, **kw)


def _torch_twin(layer):
    torch = pytest.importorskip("torch")
    cfg = layer.config()
    kw = dict(num_layers=cfg["num_layers"], bidirectional=cfg["bidirectional"], batch_first=cfg["batch_first"])
    cls = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}[cfg["type"]]
    if cfg["type"] == "RNN":
        kw["nonlinearity"] = cfg["nonlinearity"]
    m = cls(cfg["input_size"], cfg["hidden_size"], **kw)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return torch, m.eval()


def _run_both(layer, x, h0=None, c0=None):
    """(rnnfast outputs, torch outputs) as lists [out, h_n(, c_n)] of float arrays."""
    torch, m = _torch_twin(layer)
    lstm = isinstance(layer, rnnfast.LSTM)
    hx = None if h0 is None else ((h0, c0) if lstm else h0)
    out, st = layer(x, hx)
    ours = [out, *(st if lstm else (st,))]
    thx = None
    if h0 is not None:
        thx = (torch.from_numpy(h0), torch.from_numpy(c0)) if lstm else torch.from_numpy(h0)
    with torch.no_grad():
        tout, tst = m(torch.from_numpy(x), thx)
    theirs = [tout.numpy(), *((t.numpy() for t in tst) if lstm else (tst.numpy(),))]
    return ours, theirs


def _assert_like_torch(ours, theirs, what):
    for name, a, b in zip(("out", "h_n", "c_n"), ours, theirs):
        assert np.array_equal(np.isnan(a), np.isnan(b)), (
            f"{what} {name}: NaN at {np.argwhere(np.isnan(a)).tolist()} vs torch {np.argwhere(np.isnan(b)).tolist()}"
        )
        assert_close(a, b, rtol=1e-4, atol=1e-5, what=f"{what} {name}")


# ------------------------------------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize(
    "mode,where",
    [(m, w) for m in CELLS for w in ["x", "h0", "c0", "weight_ih_l0", "weight_hh_l1_reverse", "bias_ih_l1"]
     if w != "c0" or m == "LSTM"],  # only LSTM has a cell state
)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_propagate_like_torch(mode, where, value):
    layer = _layer(mode)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 3)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 5)).astype(np.float32) * 0.5
    c0 = rng.standard_normal((4, 3, 5)).astype(np.float32) * 0.5
    if where == "x":
        x[1, 1, 0] = value
    elif where == "h0":
        h0[2, 1, 3] = value
    elif where == "c0":
        c0[0, 1, 2] = value
    else:
        sd = layer.state_dict()
        sd[where].flat[1] = value
        layer.load_state_dict(sd)
    ours, theirs = _run_both(layer, x, h0, c0)
    _assert_like_torch(ours, theirs, f"{mode} {where}={value}")
    if where in ("x", "h0", "c0"):  # the other sequences of the batch are untouched
        for a in ours:
            assert np.isfinite(np.delete(a, 1, axis=1)).all()


# ------------------------------------------------------------------------------------------- huge magnitudes
# Not x and W both scaled (products ~1e60, beyond float32): whether +inf and -inf products meet in one sum
# (NaN) depends on FMA contraction and summation order, in torch too. The -O1 sanitizer build (no FMA
# contraction) gave NaN where torch did not; the -O3 build matched. Those are order tests, not saturation.
@pytest.mark.parametrize(
    "mode,x_scale,w_scale",
    [
        (m, xs, ws)
        for m in CELLS
        for xs, ws in [(1e30, 1.0), (1e38, 1.0), (-1e38, 1.0), (1.0, 1e30), (3.4e38, 1.0)]
        # relu does not saturate: sums near float32's limit overflow in an order-dependent way
        if m != "RNN_RELU" or (abs(xs) <= 1e30 and ws <= 1)
    ],
)
def test_huge_magnitudes_saturate_like_torch(mode, x_scale, w_scale):
    """Gates saturate to their exact limits: no NaN where torch is finite, and the same values."""
    layer = _layer(mode)
    if w_scale != 1.0:
        layer.load_state_dict({k: v * np.float32(w_scale) for k, v in layer.state_dict().items()})
    rng = np.random.default_rng(2)
    x = rng.choice([-1.0, 1.0, 0.5], size=(5, 3, 3)).astype(np.float32) * np.float32(x_scale)
    if x_scale < 0:
        x = np.full((5, 3, 3), x_scale, np.float32)  # every input at -1e38
    ours, theirs = _run_both(layer, x)
    what = f"{mode} x*{x_scale:g} W*{w_scale:g}"
    for name, a, b in zip(("out", "h_n", "c_n"), ours, theirs):
        # where torch is finite we are finite and equal. Where every float32 product overflows (1e30 * 1e30)
        # torch's GEMM adds +inf and -inf partial sums (NaN); our FMA chain saturates instead, to a sign
        # that depends on the order of the sum: float32 cannot say more, so only the bound is checked there
        assert not (np.isnan(a) & ~np.isnan(b)).any(), f"{what} {name}: NaN where torch is not"
        fin = ~np.isnan(b)
        assert_close(a[fin], b[fin], what=f"{what} {name} vs torch")
        if name != "c_n":
            assert (np.isnan(a[~fin]) | (np.abs(a[~fin]) <= 1.0)).all(), f"{what} {name}: unbounded"
    if mode != "RNN_RELU" and w_scale == 1.0:  # saturated gates: every output bounded, nothing NaN
        assert all(np.isfinite(a).all() for a in ours[:2])
        assert np.abs(ours[0]).max() <= 1.0


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_huge_inputs_match_the_reference(mode):
    """The float64 reference agrees too (its sums cannot overflow, the core's saturate to the same limit)."""
    layer = _layer(mode)
    x = np.random.default_rng(3).choice([-1.0, 1.0], size=(4, 2, 3)).astype(np.float32) * np.float32(1e38)
    out, st = layer(x)
    ro, rh, rc = R.recurrent(mode, x, layer.state_dict(), num_layers=2, bidirectional=True)
    assert_close(out, ro, what="out")
    assert_close(st[0] if mode == "LSTM" else st, rh, what="h_n")


# ------------------------------------------------------------------------------------------- zero sizes
@pytest.mark.parametrize("mode", CELLS + ["GRU_RB"])
@pytest.mark.parametrize("bf", [False, True])
@pytest.mark.parametrize("T,B", [(0, 3), (4, 0), (0, 0)])
def test_empty_batch_or_sequence_is_well_shaped(mode, bf, T, B):
    layer = _layer(mode if mode != "GRU_RB" else "GRU", bf=bf)
    if mode == "GRU_RB":
        layer = rnnfast.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=bf, reset_after=False, seed=0)
    x = np.zeros((B, T, 3) if bf else (T, B, 3), np.float32)
    rng = np.random.default_rng(4)
    h0 = rng.standard_normal((4, B, 5)).astype(np.float32)
    c0 = rng.standard_normal((4, B, 5)).astype(np.float32)
    out, st = layer(x, (h0, c0) if mode == "LSTM" else h0)
    assert out.shape == ((B, T, 10) if bf else (T, B, 10)) and out.dtype == np.float32
    h_n, c_n = st if mode == "LSTM" else (st, None)
    # no step runs: the final state is the initial one (layer 2 starts from its own h0, its input is empty)
    np.testing.assert_array_equal(h_n, h0)
    if c_n is not None:
        np.testing.assert_array_equal(c_n, c0)
    out2, st2 = layer(x)  # and without an initial state: zeros
    np.testing.assert_array_equal(st2[0] if mode == "LSTM" else st2, np.zeros((4, B, 5), np.float32))


@pytest.mark.parametrize("mode", CELLS)
def test_all_lengths_zero(mode):
    layer = _layer(mode)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 3)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 5)).astype(np.float32)
    c0 = rng.standard_normal((4, 3, 5)).astype(np.float32)
    out, st = layer(x, (h0, c0) if mode == "LSTM" else h0, lengths=[0, 0, 0])
    np.testing.assert_array_equal(out, np.zeros((6, 3, 10), np.float32))
    np.testing.assert_array_equal(st[0] if mode == "LSTM" else st, h0)
    # mixed with a zero-length sequence: the others are as if alone
    lens = np.array([0, 6, 2])
    out, st = layer(x, lengths=lens)
    ro, rh, rc = R.recurrent(mode, x, layer.state_dict(), num_layers=2, bidirectional=True, lengths=lens)
    assert_close(out, ro, what="out")
    assert_close(st[0] if mode == "LSTM" else st, rh, what="h_n")


@pytest.mark.parametrize("mode", CELLS)
@pytest.mark.parametrize("I,H", [(1, 1), (1, 7), (7, 1)])
def test_size_one_dims_match_torch(mode, I, H):
    layer = _layer(mode, I=I, H=H)
    x = np.random.default_rng(6).standard_normal((5, 2, I)).astype(np.float32)
    ours, theirs = _run_both(layer, x)
    _assert_like_torch(ours, theirs, f"{mode} I={I} H={H}")


def test_streaming_empty_chunk_keeps_the_state():
    gru = rnnfast.GRU(3, 4, seed=0)
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((3, 2, 3)).astype(np.float32), rng.standard_normal((2, 2, 3)).astype(np.float32)
    _, s = gru(a)
    out, s2 = gru(np.zeros((0, 2, 3), np.float32), s)
    assert out.shape == (0, 2, 4)
    np.testing.assert_array_equal(s2, s)
    whole, _ = gru(np.concatenate([a, b]))
    part, _ = gru(b, s2)
    assert_close(part, whole[3:], what="continued")


# ------------------------------------------------------------------------------------------- denormals
TINY = np.finfo(np.float32).tiny  # 1.18e-38, the smallest normal float32


def _subnormal(a):
    a = np.abs(np.asarray(a, np.float32))
    return (a > 0) & (a < TINY)


@pytest.mark.parametrize("mode", CELLS)
@pytest.mark.parametrize("what", ["x", "weights", "state"])
def test_denormal_data_matches_the_reference(mode, what):
    """Subnormal inputs, weights or states: results match the float64 reference (and nothing is NaN)."""
    layer = _layer(mode)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 3, 3)).astype(np.float32)
    h0 = c0 = None
    if what == "x":
        x = (x * np.float32(1e-39)).astype(np.float32)
        assert _subnormal(x).mean() > 0.9
    elif what == "weights":
        sd = {k: (v * np.float32(1e-39) if k.startswith("weight") else v) for k, v in layer.state_dict().items()}
        layer.load_state_dict(sd)
        assert _subnormal(sd["weight_hh_l0"]).mean() > 0.9
    else:
        h0 = (rng.standard_normal((4, 3, 5)) * 1e-39).astype(np.float32)
        c0 = (rng.standard_normal((4, 3, 5)) * 1e-39).astype(np.float32)
        assert _subnormal(h0).mean() > 0.9
        x[:] = 0
    hx = None if h0 is None else ((h0, c0) if mode == "LSTM" else h0)
    out, st = layer(x, hx)
    ro, rh, rc = R.recurrent(mode, x, layer.state_dict(), num_layers=2, bidirectional=True, h0=h0, c0=c0)
    assert_close(out, ro, what="out")
    assert_close(st[0] if mode == "LSTM" else st, rh, what="h_n")


def test_subnormal_results_are_kept_not_flushed():
    """A state that is subnormal stays subnormal (tanh(z) = z for tiny z): the core does not flush to zero
    (bit-exact parity with torch, which does not flush by default either)."""
    rnn = rnnfast.RNN(1, 1, bias=False, seed=0)
    rnn.load_state_dict({"weight_ih_l0": np.zeros((1, 1), np.float32), "weight_hh_l0": np.ones((1, 1), np.float32)})
    h0 = np.full((1, 1, 1), 3e-39, np.float32)
    out, h_n = rnn(np.zeros((4, 1, 1), np.float32), h0)
    assert _subnormal(out).all() and h_n.item() == np.float32(3e-39)


def _mxcsr_reader():
    """stmxcsr through 4 bytes of machine code (x86-64 Linux); None where that is not possible."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    buf.write(bytes([0x0F, 0xAE, 0x1F, 0xC3]))  # stmxcsr [rdi]; ret
    fn = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint32))(ctypes.addressof(ctypes.c_char.from_buffer(buf)))

    def read() -> int:
        v = ctypes.c_uint32(0)
        fn(ctypes.byref(v))
        return v.value

    read.keep = buf
    return read


def test_floating_point_mode_is_untouched_after_calls():
    """No entry point leaves flush-to-zero / denormals-are-zero (or another rounding mode) behind in the
    calling thread: NumPy still produces subnormals afterwards, and MXCSR's control bits are unchanged."""
    read = _mxcsr_reader()
    before = read() if read else None
    rng = np.random.default_rng(9)
    for mode in CELLS:
        layer = _layer(mode)
        layer((rng.standard_normal((3, 2, 3)) * 1e-39).astype(np.float32))
    q = (rng.standard_normal((2, 3, 4)) * 1e-39).astype(np.float32)
    rnnfast.MultiheadAttention(4, 2, seed=0)(q, q, q)
    rnnfast.AdditiveAttention(4, 4, 3, seed=0)(q[:, 0], q)
    tiny = np.array([TINY], np.float32)
    assert _subnormal(tiny * np.float32(0.25)).all(), "flush-to-zero leaked into the caller's thread"
    assert (tiny * np.float32(0.25))[0] != 0 and np.float32(3e-39) * np.float32(1.0) != 0
    if before is not None:
        control = 0xFFC0  # FTZ (15), rounding (13-14), exception masks (7-12), DAZ (6); not the sticky flags
        assert read() & control == before & control, f"MXCSR {before:#06x} -> {read():#06x}"
