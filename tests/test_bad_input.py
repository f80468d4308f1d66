"""Every bad input raises an rnnfast exception that names the problem; nothing crashes."""

import numpy as np
import pytest

import rnnfast
from rnnfast.errors import DTypeError, RnnfastError, ShapeError, StateDictError


@pytest.fixture
def lstm():
    return rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)


@pytest.mark.parametrize(
    "x,match",
    [
        (np.zeros((2, 3), np.float32)[None, None], "expected 3-D"),  # 4-D
        (np.zeros(3, np.float32), "expected 3-D"),
        (np.zeros((5, 2, 4), np.float32), "input_size=3"),
    ],
)
def test_wrong_rank_or_feature_size(lstm, x, match):
    with pytest.raises(ShapeError, match=match):
        lstm(x)


@pytest.mark.parametrize(
    "x", [np.array([["a", "b", "c"]]), np.zeros((2, 1, 3), dtype=complex), np.array([[[object()] * 3]]), [[1, 2], [3]]]
)
def test_dtype_that_cannot_be_cast(lstm, x):
    with pytest.raises(DTypeError):
        lstm(x)
    with pytest.raises(TypeError):  # and the builtin a user would catch
        lstm(x)


@pytest.mark.parametrize(
    "hx,match",
    [
        ((np.zeros((4, 2, 4)), np.zeros((4, 3, 4))), "c0: expected shape"),
        ((np.zeros((2, 2, 4)), np.zeros((4, 2, 4))), "h0: expected shape"),
        (np.zeros((4, 2, 4)), "tuple"),
    ],
)
def test_mismatched_state_shapes(lstm, hx, match):
    with pytest.raises(ShapeError, match=match):
        lstm(np.zeros((5, 2, 3)), hx)


@pytest.mark.parametrize(
    "lengths,err,match",
    [
        ([5, 6], ShapeError, r"lengths\[1\]: expected in \[0, 5\]"),
        ([-1, 2], ShapeError, r"lengths\[0\]"),
        ([1, 2, 3], ShapeError, r"expected shape \(2,\)"),
        ([[1, 2]], ShapeError, "expected shape"),
        ([1.5, 2], DTypeError, "integers"),
        (["a", "b"], DTypeError, "integers"),
    ],
)
def test_bad_lengths(lstm, lengths, err, match):
    with pytest.raises(err, match=match):
        lstm(np.zeros((5, 2, 3)), lengths=lengths)


def test_lengths_with_unbatched_input(lstm):
    with pytest.raises(ShapeError, match="unbatched"):
        lstm(np.zeros((5, 3)), lengths=[5])


def test_state_dict_problems_are_listed_together(lstm):
    sd = lstm.state_dict()
    del sd["weight_ih_l0"]
    del sd["bias_hh_l1_reverse"]
    sd["weight_hh_l1"] = np.zeros((3, 3))
    sd["bias_ih_l0"] = np.array(["x"] * 16)
    sd["extra"] = np.zeros(1)
    with pytest.raises(StateDictError) as info:
        lstm.load_state_dict(sd)
    msg = str(info.value)
    for part in (
        "missing: weight_ih_l0, bias_hh_l1_reverse",
        "unexpected: extra",
        "weight_hh_l1: expected shape (16, 4), got (3, 3)",
        "bias_ih_l0: expected a real dtype",
    ):
        assert part in msg, msg
    lstm.load_state_dict({k: v for k, v in lstm.state_dict().items()})  # still usable afterwards


def test_state_dict_not_a_mapping(lstm):
    with pytest.raises(StateDictError):
        lstm.load_state_dict([1, 2, 3])


def test_non_finite_weights_are_allowed_and_flow(rng):
    gru = rnnfast.GRU(2, 3, seed=0)
    sd = gru.state_dict()
    sd["weight_ih_l0"][0, 0] = np.nan
    gru.load_state_dict(sd)
    out, _ = gru(rng.standard_normal((3, 1, 2)))
    assert np.isnan(out).any()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(input_size=0, hidden_size=3),
        dict(input_size=2, hidden_size=-1),
        dict(input_size=2, hidden_size=3, num_layers=0),
        dict(input_size=2, hidden_size=3, dropout=2.0),
        dict(input_size=2.5, hidden_size=3),
    ],
)
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        rnnfast.GRU(**kwargs)
    with pytest.raises(ValueError, match="proj_size"):
        rnnfast.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnfast.RNN(3, 4, nonlinearity="sigmoid")


def test_errors_form_one_tree():
    for cls in (ShapeError, DTypeError, StateDictError):
        assert issubclass(cls, RnnfastError)


def test_one_mapping_from_c_status_to_exceptions():
    from rnnfast.errors import InternalError, OutOfMemoryError, UnsupportedError, from_status

    assert type(from_status(1, "x: expected 3, got 4")) is ShapeError
    assert type(from_status(2, "m")) is OutOfMemoryError and isinstance(from_status(2, "m"), MemoryError)
    assert type(from_status(3, "m")) is UnsupportedError and isinstance(from_status(3, "m"), NotImplementedError)
    assert type(from_status(4, "")) is InternalError and "status 4" in str(from_status(4, ""))
