"""Issue 7, hostile input to the training entry points (rnnfast.train, rnnfast.attention_train).

Every bad argument raises an rnnfast exception (which is also the builtin a user would catch) naming the
argument: never numpy's bare ValueError/TypeError from deep inside, a crash or a wrong answer. Each test
pins a defect that a probe of the training API found; each failed before its fix.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnfast
from rnnfast import attention as A
from rnnfast import attention_train as AT
from rnnfast import models as M
from rnnfast import train as T
from rnnfast.errors import ArgumentError, DTypeError, RnnfastError, ShapeError

RAGGED = [[1.0, 2.0], [3.0]]
NAN = float("nan")


def _param(grad=True):
    p = T.Parameter("w", np.ones(3, np.float32))
    if grad:
        p.grad = np.full(3, 2.0, np.float32)
    return p


@pytest.fixture(scope="module")
def lstm():
    return rnnfast.LSTM(4, 3, seed=0)


@pytest.fixture
def net():
    return T.Trainable(M.Sequential({"emb": M.Embedding(5, 4, seed=0), "rnn": rnnfast.LSTM(4, 3, seed=0)}))


# ---------------------------------------------------------------------------------------------- cross_entropy
def test_cross_entropy_zero_classes():
    """logits (..., 0) reached a reshape(-1, 0): numpy's bare 'cannot reshape array of size 0'."""
    with pytest.raises(ShapeError, match=r"logits: expected \(\.\.\., V\) with V >= 1"):
        T.cross_entropy(np.zeros((2, 0), np.float32), np.zeros(2, np.int64))


def test_cross_entropy_zero_d_logits():
    """A 0-d logits became shape (1,) in _f32 and the error blamed the targets."""
    with pytest.raises(ShapeError, match="logits: expected"):
        T.cross_entropy(3.0, 0)


@pytest.mark.parametrize("bad", ["x", 1.5, None])
def test_cross_entropy_ignore_index_not_an_integer(bad):
    """'x' leaked int()'s ValueError; 1.5 was silently truncated to 1."""
    with pytest.raises(DTypeError, match="ignore_index: expected an integer"):
        T.cross_entropy(np.zeros((2, 3)), [0, 1], ignore_index=bad)


def test_cross_entropy_string_mask():
    """A str mask compared != 0 elementwise: every position counted, a silent wrong answer."""
    with pytest.raises(DTypeError, match="mask: expected bool"):
        T.cross_entropy(np.zeros((2, 3)), [0, 1], mask=np.array(["a", "b"]))


def test_cross_entropy_over_zero_tokens_is_zero_not_nan():
    """Documented choice (torch gives NaN): an empty batch or every position ignored -> 0.0, zero gradient."""
    loss, d = T.cross_entropy(np.zeros((0, 4, 3), np.float32), np.zeros((0, 4), np.int64))
    assert loss == 0.0 and d.shape == (0, 4, 3)
    loss, d = T.cross_entropy(np.ones((2, 3), np.float32), [-100, -100])
    assert loss == 0.0 and d.shape == (2, 3) and not d.any()


# ---------------------------------------------------------------------------------------------- ragged input
def _ragged_calls(lstm):
    z, t = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    w = np.zeros((5, 4), np.float32)
    x = np.zeros((2, 1, 4), np.float32)
    _, _, cache = T.forward_train(lstm, x)
    return {
        "cross_entropy logits": (lambda: T.cross_entropy(RAGGED, t), "logits"),
        "cross_entropy targets": (lambda: T.cross_entropy(z, [[0], [0, 1]]), "targets"),
        "cross_entropy mask": (lambda: T.cross_entropy(z, t, mask=[[1], [1, 0]]), "mask"),
        "forward_train x": (lambda: T.forward_train(lstm, RAGGED), "x"),
        "forward_train lengths": (lambda: T.forward_train(lstm, x, lengths=[[1], [1, 2]]), "lengths"),
        "forward_train h0": (lambda: T.forward_train(lstm, x, hx=(RAGGED, np.zeros((1, 1, 3)))), "h0"),
        "backward d_out": (lambda: T.backward(lstm, cache, RAGGED), "d_out"),
        "linear_forward": (lambda: T.linear_forward(RAGGED, w), "x"),
        "linear_backward": (lambda: T.linear_backward(RAGGED, w, np.zeros((2, 5))), "x"),
        "embedding_forward": (lambda: T.embedding_forward(w, [[1], [1, 2]]), "tokens"),
        "mse_loss": (lambda: T.mse_loss(RAGGED, [1.0, 2.0]), "input"),
        "bce_with_logits": (lambda: T.bce_with_logits(RAGGED, [1.0, 2.0]), "input"),
        "sequence_mask": (lambda: T.sequence_mask([[1], [1, 2]], 3), "lengths"),
        "attention query": (
            lambda: AT.attention_forward_train(A.DotAttention(), RAGGED, np.zeros((2, 3, 2))),
            "query",
        ),
    }


@pytest.mark.parametrize(
    "which",
    [
        "cross_entropy logits",
        "cross_entropy targets",
        "cross_entropy mask",
        "forward_train x",
        "forward_train lengths",
        "forward_train h0",
        "backward d_out",
        "linear_forward",
        "linear_backward",
        "embedding_forward",
        "mse_loss",
        "bce_with_logits",
        "sequence_mask",
        "attention query",
    ],
)
def test_ragged_sequences(lstm, which):
    """np.asarray of a ragged list raised numpy's bare 'inhomogeneous shape' ValueError."""
    call, name = _ragged_calls(lstm)[which]
    with pytest.raises(ShapeError, match=f"{name}: expected a rectangular array"):
        call()


def test_ragged_gradient_into_trainable(net):
    net(np.zeros((2, 1), np.int64))
    with pytest.raises(ShapeError, match="d_output: expected a rectangular array"):
        net.backward(RAGGED)


# ---------------------------------------------------------------------------------------------- lengths / masks
@pytest.mark.parametrize(
    "lengths,T_,err,match",
    [
        ([1.5, 2], 3, DTypeError, "lengths: expected .* integers"),
        (["a", "b"], 3, DTypeError, "lengths: expected .* integers"),
        ([-1, 2], 3, ShapeError, "lengths: expected values >= 0"),
        ([[1, 2]], 3, ShapeError, r"lengths: expected shape \(B,\)"),
        ([1, 2], "x", DTypeError, "T: expected an integer"),
        ([1, 2], -1, ArgumentError, "T: expected an integer >= 0"),
    ],
)
def test_sequence_mask_bad_lengths(lengths, T_, err, match):
    """str lengths leaked numpy's UFuncTypeError; float/negative/2-D lengths gave a silent wrong mask."""
    with pytest.raises(err, match=match):
        T.sequence_mask(lengths, T_)


def test_float_lengths_are_a_dtype_error(lstm):
    """forward_train and the attention reported float lengths as a ShapeError; test_bad_input's rule is DTypeError."""
    with pytest.raises(DTypeError, match="lengths"):
        T.forward_train(lstm, np.zeros((2, 1, 4)), lengths=[1.5])
    with pytest.raises(DTypeError, match="lengths"):
        AT.attention_forward_train(A.DotAttention(), np.zeros((1, 2)), np.zeros((1, 3, 2)), lengths=[1.5])


# ---------------------------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("max_norm", [-1.0, NAN])
def test_clip_grad_norm_negative_or_nan(max_norm):
    """A plain ValueError: now the rnnfast ArgumentError (still a ValueError) naming max_norm."""
    with pytest.raises(ArgumentError, match="max_norm"):
        T.clip_grad_norm_([_param()], max_norm)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda p: T.clip_grad_norm_(p, "x"), "max_norm"),
        (lambda p: T.clip_grad_norm_(p, None), "max_norm"),
        (lambda p: T.clip_grad_norm_(p, 1.0, "x"), "norm_type"),
        (lambda p: T.clip_grad_value_(p, "x"), "clip_value"),
    ],
)
def test_clip_with_a_string(call, name):
    """float('x') leaked its bare ValueError (None: a bare TypeError)."""
    with pytest.raises(DTypeError, match=f"{name}: expected a real number"):
        call([_param()])


@pytest.mark.parametrize("clip_value", [-1.0, NAN])
def test_clip_grad_value_negative_or_nan(clip_value):
    """Accepted silently: a negative bound clamps every gradient to a constant, NaN to NaN."""
    p = _param()
    with pytest.raises(ArgumentError, match="clip_value"):
        T.clip_grad_value_([p], clip_value)
    assert (p.grad == 2.0).all()


def test_clip_parameters_not_iterable():
    with pytest.raises(DTypeError, match="parameters: expected an iterable"):
        T.clip_grad_norm_(3, 1.0)


# ---------------------------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("cls", [T.SGD, T.Adam, T.AdamW])
@pytest.mark.parametrize(
    "kw,name",
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": NAN}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"weight_decay": NAN}, "weight_decay"),
    ],
)
def test_optimizer_bad_common_hyperparameters(cls, kw, name):
    """Plain ValueError naming no argument, and NaN was accepted (it poisons every weight at the first step)."""
    with pytest.raises(ArgumentError, match=f"^{name}: expected"):
        cls([_param()], **kw)
    with pytest.raises(ValueError):  # torch's exception type stays catchable
        cls([_param()], **kw)


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"momentum": -0.5}, "momentum"),
        ({"momentum": NAN}, "momentum"),
        ({"dampening": NAN}, "dampening"),
        ({"nesterov": True}, "nesterov"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov"),
    ],
)
def test_sgd_bad_hyperparameters(kw, name):
    with pytest.raises(ArgumentError, match=f"^{name}: "):
        T.SGD([_param()], **kw)


@pytest.mark.parametrize("cls", [T.Adam, T.AdamW])
@pytest.mark.parametrize(
    "kw,name",
    [
        ({"betas": (1.0, 0.9)}, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
        ({"betas": (0.9, NAN)}, r"betas\[1\]"),
        ({"betas": (0.9,)}, "betas"),
        ({"betas": "ab"}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"eps": NAN}, "eps"),
    ],
)
def test_adam_bad_hyperparameters(cls, kw, name):
    """betas=(0.9,) leaked IndexError and 'ab' a TypeError; the rest named no argument."""
    with pytest.raises(ArgumentError, match=f"^{name}: "):
        cls([_param()], **kw)


@pytest.mark.parametrize("cls", [T.SGD, T.Adam])
def test_optimizer_string_learning_rate(cls):
    """'<' between str and int: a bare TypeError."""
    with pytest.raises(DTypeError, match="lr: expected a real number"):
        cls([_param()], lr="0.1")


def test_optimizer_empty_parameter_list_and_lr_setter():
    with pytest.raises(ArgumentError, match="params: SGD got an empty parameter list"):
        T.SGD([])
    opt = T.SGD([_param()], lr=0.1)
    with pytest.raises(ArgumentError, match="lr"):
        opt.lr = -1.0
    assert opt.lr == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- embedding / linear
def test_embedding_forward_one_d_weight():
    """A 1-D table reached the Cython layer's w.shape[1]: a segmentation fault."""
    with pytest.raises(ShapeError, match=r"weight: expected a 2-D array, got shape \(5,\)"):
        T.embedding_forward(np.zeros(5, np.float32), [1])


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_linear_one_d_weight(which):
    w = np.zeros(4, np.float32)
    with pytest.raises(ShapeError, match="weight: expected a 2-D array"):
        if which == "forward":
            T.linear_forward(np.zeros((2, 4)), w)
        else:
            T.linear_backward(np.zeros((2, 4)), w, np.zeros((2, 4)))


def test_linear_backward_wrong_feature_size():
    """x (..., I') with I' != I leaked numpy's 'cannot reshape'."""
    with pytest.raises(ShapeError, match=r"x: expected \(\.\.\., 4\)"):
        T.linear_backward(np.zeros((2, 3)), np.zeros((5, 4)), np.zeros((2, 5)))


@pytest.mark.parametrize(
    "shape,match",
    [((5,), "weight_shape: expected"), ("ab", "weight_shape: expected"), ((-5, 4), r"weight_shape\[0\]")],
)
def test_embedding_backward_bad_weight_shape(shape, match):
    """(5,) leaked IndexError, 'ab' int()'s ValueError, (-5, 4) numpy's 'negative dimensions'."""
    with pytest.raises(RnnfastError, match=match):
        T.embedding_backward(shape, [1], np.zeros((1, 4)))


def test_embedding_backward_d_out_misshapen():
    """d_out was reshaped to (-1, E): a (4, 2) gradient for 2 tokens of E=4 was silently misread."""
    with pytest.raises(ShapeError, match=r"d_out: expected shape \(2, 4\), got \(4, 2\)"):
        T.embedding_backward((5, 4), [1, 2], np.ones((4, 2)))
    with pytest.raises(ShapeError, match="d_out: expected shape"):
        T.embedding_backward((5, 4), [1], np.zeros((1, 3)))


def test_embedding_backward_padding_idx_string():
    with pytest.raises(DTypeError, match="padding_idx: expected an integer"):
        T.embedding_backward((5, 4), [1], np.zeros((1, 4)), padding_idx="x")


# ---------------------------------------------------------------------------------------------- recurrent / modules
def test_forward_train_n_threads_string(lstm):
    with pytest.raises(DTypeError, match="n_threads: expected an integer"):
        T.forward_train(lstm, np.zeros((2, 1, 4)), n_threads="x")


def test_backward_with_something_else_than_a_cache(lstm):
    """AttributeError: 'str' object has no attribute 'spec'."""
    with pytest.raises(DTypeError, match="cache: expected the RecurrentCache"):
        T.backward(lstm, "x")


def test_trainable_state_list_too_short(net):
    """IndexError from state[ri]."""
    with pytest.raises(ShapeError, match="state: expected a list of 1 states"):
        net(np.zeros((2, 1), np.int64), state=[])


# ---------------------------------------------------------------------------------------------- fit
def _fit(**kw):
    model = M.Sequential({"emb": M.Embedding(5, 4, seed=0), "rnn": rnnfast.LSTM(4, 3, seed=0), "fc": M.Linear(3, 5)})
    batch = (np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64))
    kw.setdefault("batches", [batch])
    return T.fit(model, progress=False, **kw)


@pytest.mark.parametrize(
    "kw,err,match",
    [
        ({"loss": "nope"}, ArgumentError, "loss: expected one of"),
        ({"epochs": "x"}, DTypeError, "epochs: expected an integer"),
        ({"max_steps": "x"}, DTypeError, "max_steps: expected an integer"),
        ({"log_every": "x"}, DTypeError, "log_every: expected an integer"),
        ({"clip_norm": -1.0}, ArgumentError, "clip_norm"),
        ({"batches": [3]}, ShapeError, r"batches: expected items \(x, y\)"),
        ({"batches": [(np.zeros((2, 1), np.int64),)]}, ShapeError, r"batches: expected items \(x, y\)"),
    ],
)
def test_fit_bad_arguments(kw, err, match):
    """Bare ValueError/TypeError/IndexError from int(), comparisons and batch[1]."""
    with pytest.raises(err, match=match):
        _fit(**kw)


@pytest.mark.parametrize(
    "call",
    [
        lambda tr: tr.embedding_forward(np.array([1], np.int64), np.zeros(5, np.float32)),
        lambda tr: tr.embedding_forward(np.array([1], np.int64), np.zeros((5, 4, 1), np.float32)),
        lambda tr: tr.embedding_backward(np.array([1], np.int64), np.zeros(4, np.float32), 5),
        lambda tr: tr.linear_forward(np.zeros((2, 4), np.float32), np.zeros(4, np.float32), None),
        lambda tr: tr.linear_backward(np.zeros((2, 4), np.float32), np.zeros(4, np.float32), np.zeros((2, 4))),
        lambda tr: tr.softmax_xent(np.zeros(3, np.float32), np.zeros(1, np.int64)),
    ],
)
def test_core_glue_checks_ranks(call):
    """The Cython glue read a.shape[1] of a 1-D array (no bounds check): garbage sizes, a segfault or a
    silently misread 3-D table. A bug above it must raise instead."""
    from rnnfast import _train
    from rnnfast.errors import InternalError

    with pytest.raises(InternalError, match="expected a [12]-D array"):
        call(_train)


# ---------------------------------------------------------------------------------------------- attention_train
def test_attention_n_threads_string():
    """int('x') leaked its bare ValueError."""
    with pytest.raises(DTypeError, match="n_threads: expected an integer"):
        AT.attention_forward_train(A.DotAttention(), np.zeros((1, 2)), np.zeros((1, 3, 2)), n_threads="x")


def _decoder_parts():
    dec = rnnfast.GRU(2 + 3, 3, seed=0)  # input = embedding E=2 + memory 3
    att = A.AdditiveAttention(3, 3, 2, seed=1)
    return dec, att, np.zeros((4, 2), np.float32), np.zeros((4, 3), np.float32)


def test_decoder_one_d_embedding():
    """embedding.shape[1] of a 1-D table: a bare IndexError."""
    dec, att, _, wo = _decoder_parts()
    with pytest.raises(ShapeError, match=r"embedding: expected \(V, E\)"):
        AT.TrainBahdanauDecoder(dec, att, np.zeros(4, np.float32), wo)


def test_decoder_out_bias_shape_checked_at_construction():
    """A misshapen out_bias was accepted and only failed at the first forward, blaming 'bias'."""
    dec, att, emb, wo = _decoder_parts()
    with pytest.raises(ShapeError, match=r"out_bias: expected \(4,\), got \(3,\)"):
        AT.TrainBahdanauDecoder(dec, att, emb, wo, np.zeros(3, np.float32))
