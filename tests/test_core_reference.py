"""C core vs the float64 NumPy reference, over the whole configuration matrix."""

import itertools

import numpy as np
import pytest

import rnnfast
from rnnfast import reference as R

from conftest import assert_close

# (mode for the reference, layer factory kwargs)
CELLS = {
    "rnn_tanh": ("RNN_TANH", rnnfast.RNN, {}),
    "rnn_relu": ("RNN_RELU", rnnfast.RNN, {"nonlinearity": "relu"}),
    "lstm": ("LSTM", rnnfast.LSTM, {}),
    "lstm_proj": ("LSTM", rnnfast.LSTM, {"proj_size": 2}),
    "gru": ("GRU", rnnfast.GRU, {}),
    "gru_reset_before": ("GRU", rnnfast.GRU, {"reset_after": False}),
}
LENGTHS = {"full": None, "mixed_unsorted": [3, 5, 1, 4], "with_zeros": [0, 5, 0, 2]}


def run_both(cell, num_layers, bidirectional, batch_first, lengths, H, T, B=4, I=3, seed=0, h0=True, bias=True):
    mode, cls, kw = CELLS[cell]
    if kw.get("proj_size", 0) >= H:
        kw = {**kw, "proj_size": max(H - 1, 0)} if H > 1 else {}
    layer = cls(
        I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias, seed=seed, **kw
    )
    rng = np.random.default_rng(seed + 1)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = rng.standard_normal(shape).astype(np.float32)
    D, P = (2 if bidirectional else 1), (kw.get("proj_size") or H)
    hx = None
    if h0:
        hh = rng.standard_normal((num_layers * D, B, P)).astype(np.float32)
        cc = rng.standard_normal((num_layers * D, B, H)).astype(np.float32)
        hx = (hh, cc) if mode == "LSTM" else hh
    out, state = layer(x, hx, lengths=lengths)
    h_n, c_n = state if mode == "LSTM" else (state, None)
    ref_out, ref_h, ref_c = R.recurrent(
        mode,
        x,
        layer.state_dict(),
        num_layers,
        bidirectional,
        h0=None if hx is None else (hx[0] if mode == "LSTM" else hx),
        c0=hx[1] if (hx is not None and mode == "LSTM") else None,
        lengths=lengths,
        reset_after=kw.get("reset_after", True),
        proj_size=kw.get("proj_size", 0),
        batch_first=batch_first,
    )
    assert_close(out, ref_out, what="out")
    assert_close(h_n, ref_h, what="h_n")
    if mode == "LSTM":
        assert_close(c_n, ref_c, what="c_n")
    return out, h_n


MATRIX = list(itertools.product(CELLS, (1, 3), (False, True), (False, True), LENGTHS))


@pytest.mark.parametrize("cell,num_layers,bidirectional,batch_first,lengths", MATRIX)
def test_matrix_h37(cell, num_layers, bidirectional, batch_first, lengths):
    run_both(cell, num_layers, bidirectional, batch_first, LENGTHS[lengths], H=37, T=5)


@pytest.mark.parametrize("cell,bidirectional,lengths", list(itertools.product(CELLS, (False, True), LENGTHS)))
def test_hidden_1(cell, bidirectional, lengths):
    run_both(cell, 2, bidirectional, False, LENGTHS[lengths], H=1, T=5)


@pytest.mark.parametrize("cell,bidirectional", list(itertools.product(CELLS, (False, True))))
def test_single_step(cell, bidirectional):
    run_both(cell, 2, bidirectional, True, [1, 0, 1, 1], H=6, T=1)
    run_both(cell, 1, bidirectional, False, None, H=6, T=1)


@pytest.mark.parametrize("cell", CELLS)
def test_no_bias_no_initial_state(cell):
    run_both(cell, 2, True, False, [5, 2, 3, 1], H=9, T=5, h0=False, bias=False)


@pytest.mark.parametrize("cell,H,lengths", list(itertools.product(CELLS, (64, 160, 256), (None, [7]))))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_batch_one_wide(cell, H, lengths, bidirectional):
    """Batch 1 takes the packed persistent-thread kernel (hidden units split across threads)."""
    run_both(cell, 2, bidirectional, False, lengths, H=H, T=9, B=1, I=20)


@pytest.mark.parametrize("cell", CELLS)
def test_many_sequences_sorted_by_length(cell, rng):
    """Many unsorted lengths with ties; the active rows shrink step by step."""
    lengths = list(rng.integers(0, 7, size=70))
    run_both(cell, 1, True, False, lengths, H=12, T=6, B=70)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_threads_give_identical_results(n_threads):
    old = rnnfast.get_num_threads()
    try:
        rnnfast.set_num_threads(n_threads)
        a = run_both("lstm", 2, True, False, None, H=256, T=6, B=1, I=16)
        b = run_both("gru", 1, False, False, [3, 6, 2, 6] * 4, H=300, T=6, B=16, I=16)
    finally:
        rnnfast.set_num_threads(old)
    rnnfast.set_num_threads(1)
    try:
        a1 = run_both("lstm", 2, True, False, None, H=256, T=6, B=1, I=16)
        b1 = run_both("gru", 1, False, False, [3, 6, 2, 6] * 4, H=300, T=6, B=16, I=16)
    finally:
        rnnfast.set_num_threads(old)
    np.testing.assert_array_equal(a[0], a1[0])
    np.testing.assert_array_equal(b[0], b1[0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "B,bidirectional", [(1, False), (1, True), (2, False), (3, True), (5, False), (9, True), (33, False)]
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_fast_path_work_splits(cell, B, bidirectional, n_threads):
    """Each split of the fast kernel's team: by rows (large B, no sync), by hidden units (small B, one
    barrier per step, two for the original GRU), by direction (small B, bidirectional)."""
    lengths = [int(v) for v in np.random.default_rng(B).integers(0, 13, size=B)]
    lengths[0] = 12
    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(n_threads)
    try:
        run_both(cell, 2, bidirectional, B % 2 == 1, lengths, H=136, T=12, B=B, I=24)
    finally:
        rnnfast.set_num_threads(old)


@pytest.mark.parametrize("cell", [c for c in CELLS if c != "lstm_proj"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_result_of_a_sequence_does_not_depend_on_its_batch(cell, n_threads):
    """Fast path: a sequence computed inside any batch gives bit-identical numbers to it computed alone."""
    mode, cls, kw = CELLS[cell]
    layer = cls(24, 144, num_layers=2, bidirectional=True, seed=2, **kw)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 11, 24)).astype(np.float32)
    lengths = [9, 3, 7, 9, 1, 5, 8, 2, 9, 4, 6]
    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(n_threads)
    try:
        together, _ = layer(x, lengths=lengths)
        for b in (0, 4, 10):
            alone, _ = layer(x[: lengths[b], b : b + 1])
            np.testing.assert_array_equal(alone[:, 0], together[: lengths[b], b])
    finally:
        rnnfast.set_num_threads(old)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B,bidirectional,lengths", [(1, False, None), (4, True, [3, 5, 0, 4]), (70, False, "rand")])
def test_generic_path_matches_reference_and_fast_path(cell, B, bidirectional, lengths):
    """The naive kernel (BLAS GEMM per step + fused pointwise) that the fast path is checked against: run
    every cell on it by leaving the weights unpacked, and compare with the reference and the fast path."""
    if lengths == "rand":
        lengths = [int(v) for v in np.random.default_rng(0).integers(0, 6, size=B)]
    mode, cls, kw = CELLS[cell]
    fast = cls(3, 20, num_layers=2, bidirectional=bidirectional, seed=5, **kw)
    generic = cls(3, 20, num_layers=2, bidirectional=bidirectional, **kw)
    generic._set_params(fast._params, pack=False)
    x = np.random.default_rng(1).standard_normal((5, B, 3)).astype(np.float32)
    out_g, st_g = generic(x, lengths=lengths)
    out_f, st_f = fast(x, lengths=lengths)
    ref, ref_h, ref_c = R.recurrent(mode, x, fast.state_dict(), 2, bidirectional, lengths=lengths,
                                    reset_after=kw.get("reset_after", True), proj_size=kw.get("proj_size", 0))
    assert_close(out_g, ref, what="generic out")
    assert_close(out_g, out_f, what="generic vs fast")
    h_g = st_g[0] if mode == "LSTM" else st_g
    assert_close(h_g, ref_h, what="generic h_n")
    if mode == "LSTM":
        assert_close(st_g[1], ref_c, what="generic c_n")
