"""The native format (safetensors written/read by rnnfast's own code) and the small model layers.

Needs only numpy (+ the core); the cross-checks with the `safetensors` package are skipped without it."""

import json
import os
import struct

import numpy as np
import pytest

import rnnfast
from rnnfast import errors, reference
from rnnfast import models as M
from rnnfast.loaders import load, native, save
from tests.conftest import assert_close


def _bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _models():
    yield "embedding", M.Embedding(30, 7, padding_idx=0, seed=1)
    yield "linear", M.Linear(5, 3, seed=2)
    yield "linear_nobias", M.Linear(5, 3, bias=False, seed=2)
    yield "lstm_bi_proj", rnnfast.LSTM(6, 8, num_layers=2, bidirectional=True, proj_size=3, seed=3)
    yield "gru_reset_before", rnnfast.GRU(6, 5, reset_after=False, batch_first=True, seed=4)
    yield "rnn_relu", rnnfast.RNN(6, 5, nonlinearity="relu", bias=False, seed=5)
    yield "reversed", M.Reversed(rnnfast.GRU(6, 5, seed=6))
    yield (
        "lstm_onnx_ext",
        rnnfast.LSTM(
            6,
            4,
            activations=[[("HardSigmoid", 0.3, 0.4), ("Tanh", 0, 0), ("Softsign", 0, 0)]],
            clip=2.5,
            input_forget=True,
            seed=7,
        ),
    )
    yield (
        "sequential",
        M.Sequential(
            {
                "emb": M.Embedding(30, 6, seed=8),
                "rnn": rnnfast.LSTM(6, 5, batch_first=True, bidirectional=True, seed=9),
                "fc": M.Linear(10, 4, seed=10),
                "act": M.LogSoftmax(-1),
            },
            many_to_one=True,
        ),
    )
    yield (
        "nested",
        M.Sequential(
            M.Sequential(M.Linear(4, 4, seed=11), M.Tanh()), M.Sigmoid(), M.ReLU(), M.Softmax(dim=0)
        ),
    )


@pytest.mark.parametrize("name,model", list(_models()), ids=[n for n, _ in _models()])
def test_round_trip_is_bitwise(tmp_path, name, model):
    path = tmp_path / f"{name}.safetensors"
    save(model, path)
    back = load(path)
    assert type(back) is type(model)
    assert json.loads(json.dumps(back.config())) == json.loads(json.dumps(model.config()))
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sorted(sd) == sorted(sd2)
    for k in sd:
        assert _bitwise_equal(sd[k], sd2[k]), k
    # the same model computes the same bits
    rng = np.random.default_rng(0)
    if name in ("embedding", "sequential"):
        x = rng.integers(0, 30, (3, 4))
    elif name == "nested":
        x = rng.standard_normal((2, 4)).astype(np.float32)
    elif name.startswith("linear"):
        x = rng.standard_normal((2, 5)).astype(np.float32)
    else:
        x = rng.standard_normal((4, 2, 6)).astype(np.float32)
    y1, y2 = model(x), back(x)
    y1 = y1[0] if isinstance(y1, tuple) else y1
    y2 = y2[0] if isinstance(y2, tuple) else y2
    assert _bitwise_equal(y1, y2)


def test_nan_and_special_values_round_trip(tmp_path):
    lin = M.Linear(3, 4, seed=0)
    w = lin.state_dict()
    w["weight"][0, 0] = np.nan
    w["weight"][1, 1] = np.inf
    w["weight"][2, 2] = -0.0
    w["bias"][3] = np.float32(1e-45)  # subnormal
    lin.load_state_dict(w)
    save(lin, tmp_path / "s.safetensors")
    back = load(tmp_path / "s.safetensors")
    assert _bitwise_equal(back.state_dict()["weight"], w["weight"])
    assert _bitwise_equal(back.state_dict()["bias"], w["bias"])


def test_file_layout_and_metadata(tmp_path):
    model = M.Sequential(M.Linear(2, 3, seed=0), M.Sigmoid())
    path = tmp_path / "m.safetensors"
    save(model, path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0  # data aligned on 8 bytes
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    assert meta["format"] == "rnnfast" and json.loads(meta["architecture"]) == model.config()
    assert header["0.weight"] == {"dtype": "F32", "shape": [3, 2], "data_offsets": [12, 36]}
    assert len(raw) == 8 + n + 24 + 12
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".rnnfast-")]  # no temp file left


def test_all_dtypes_round_trip_through_our_writer_and_reader(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f64": rng.standard_normal((2, 3)),
        "f32": rng.standard_normal(4).astype(np.float32),
        "f16": rng.standard_normal((3,)).astype(np.float16),
        "i64": np.arange(5, dtype=np.int64) - 2,
        "i32": np.arange(3, dtype=np.int32),
        "i16": np.arange(3, dtype=np.int16),
        "i8": np.arange(3, dtype=np.int8),
        "u8": np.arange(3, dtype=np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "big_endian": np.arange(3, dtype=">f4"),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2)).astype(np.float32)),
    }
    native.write_safetensors(tmp_path / "t.safetensors", tensors, {"k": "v"})
    back, meta = native.read_safetensors(tmp_path / "t.safetensors")
    assert meta == {"k": "v"}
    for k, v in tensors.items():
        assert back[k].shape == v.shape and np.array_equal(back[k], v), k
        assert back[k].dtype == v.dtype.newbyteorder("="), k


def test_safetensors_package_reads_our_files_and_we_read_its_files(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = M.Sequential(M.Embedding(10, 4, seed=0), rnnfast.GRU(4, 3, seed=1), M.Linear(3, 2, seed=2))
    save(model, tmp_path / "ours.safetensors")
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    for k, v in model.state_dict().items():
        assert _bitwise_equal(theirs[k], v)
    st.save_file(model.state_dict(), str(tmp_path / "theirs.safetensors"))
    with pytest.raises(errors.FormatError, match="architecture"):
        load(tmp_path / "theirs.safetensors")
    back = load(tmp_path / "theirs.safetensors", architecture=model.config())
    for k, v in model.state_dict().items():
        assert _bitwise_equal(back.state_dict()[k], v)


def test_bf16_is_widened_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    t = torch.tensor([1.5, -2.25, 3.0e38, 1e-3], dtype=torch.bfloat16)
    st.save_file({"w": t}, str(tmp_path / "b.safetensors"))
    back, _ = native.read_safetensors(tmp_path / "b.safetensors")
    assert back["w"].dtype == np.float32
    assert np.array_equal(back["w"], t.float().numpy())


def test_architecture_forms_and_model_not_modified(tmp_path):
    src = M.Sequential(M.Linear(3, 2, seed=0), M.Tanh())
    native.write_safetensors(tmp_path / "w.safetensors", src.state_dict())
    target = M.Sequential(M.Linear(3, 2, seed=99), M.Tanh())
    before = target.state_dict()
    (tmp_path / "arch.json").write_text(json.dumps(src.config()))
    for arch in (target, target.config(), str(tmp_path / "arch.json")):
        m = load(tmp_path / "w.safetensors", architecture=arch)
        assert _bitwise_equal(m.state_dict()["0.weight"], src.state_dict()["0.weight"])
    assert _bitwise_equal(target.state_dict()["0.weight"], before["0.weight"])


def test_plain_state_dict_with_other_layer_names_is_remapped(tmp_path):
    src = M.Sequential(
        {"emb": M.Embedding(10, 4, seed=0), "rnn": rnnfast.LSTM(4, 3, seed=1), "fc": M.Linear(3, 2, seed=2)}
    )
    native.write_safetensors(tmp_path / "w.safetensors", src.state_dict())
    arch = M.Sequential(M.Embedding(10, 4), rnnfast.LSTM(4, 3), M.Linear(3, 2))  # named "0", "1", "2"
    m = load(tmp_path / "w.safetensors", architecture=arch)
    x = np.random.default_rng(0).integers(0, 10, (5, 2))
    assert _bitwise_equal(m(x), src(x))


# ------------------------------------------------------------------------------------------ small layers
def test_embedding_lookup_and_errors():
    emb = M.Embedding(5, 3, padding_idx=-1, seed=0)
    assert emb.padding_idx == 4 and not emb.weight[4].any()
    idx = np.array([[0, 4], [2, 2]])
    assert_close(emb(idx), emb.weight[idx])
    assert_close(emb(idx.astype(np.float32)), emb.weight[idx])  # whole floats (Keras) accepted
    with pytest.raises(errors.ShapeError, match=r"\[0, 5\), got 5"):
        emb(np.array([5]))
    with pytest.raises(errors.ShapeError, match="got -1"):
        emb(np.array([-1]))
    with pytest.raises(errors.DTypeError):
        emb(np.array([0.5]))
    with pytest.raises(errors.DTypeError):
        emb(np.array(["a"]))


def test_linear_and_activations_against_numpy():
    rng = np.random.default_rng(0)
    lin = M.Linear(4, 3, seed=0)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    W, b = lin.weight.astype(np.float64), lin.state_dict()["bias"].astype(np.float64)
    assert_close(lin(x), x @ W.T + b)
    with pytest.raises(errors.ShapeError, match=r"\(\.\.\., 4\)"):
        lin(np.zeros((2, 3)))
    z = rng.standard_normal((3, 6)) * 30
    e = np.exp(z - z.max(-1, keepdims=True))
    assert_close(M.Softmax()(z), e / e.sum(-1, keepdims=True))
    assert_close(M.LogSoftmax()(z), np.log(e / e.sum(-1, keepdims=True)), atol=1e-4)
    e0 = np.exp(z - z.max(0, keepdims=True))
    assert_close(M.Softmax(dim=0)(z), e0 / e0.sum(0, keepdims=True))
    assert_close(M.Sigmoid()(z), reference.sigmoid(z))
    assert_close(M.Tanh()(z), np.tanh(z))
    assert_close(M.ReLU()(z), np.maximum(z, 0))
    assert np.isnan(M.ReLU()(np.array([np.nan]))[0])
    assert np.all(np.isfinite(M.Sigmoid()(np.array([-1e4, 1e4]))))
    with pytest.raises(errors.ShapeError):
        M.Softmax(dim=3)(z)


def test_sequential_many_to_one_uses_top_layer_final_states():
    rng = np.random.default_rng(0)
    emb = M.Embedding(12, 4, seed=0)
    lstm = rnnfast.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=True, seed=1)
    fc = M.Linear(10, 3, seed=2)
    model = M.Sequential(emb, lstm, fc, many_to_one=True)
    x = rng.integers(0, 12, (3, 6))
    lengths = np.array([6, 2, 4])
    _, (h_n, _) = lstm(emb(x), lengths=lengths)
    expected = fc(np.concatenate([h_n[-2], h_n[-1]], axis=1))
    assert_close(model(x, lengths=lengths), expected)
    # many-to-many: per-step outputs (zero past each length) go through the Linear
    seq = M.Sequential(emb, lstm, fc)
    out, _ = lstm(emb(x), lengths=lengths)
    assert_close(seq(x, lengths=lengths), fc(out))
    # and against the float64 reference
    ref_out, _, _ = reference.recurrent(
        "LSTM", emb(x), lstm.state_dict(), num_layers=2, bidirectional=True, lengths=lengths, batch_first=True
    )
    assert_close(seq(x, lengths=lengths), fc(ref_out.astype(np.float32)))


def test_sequential_unbatched_many_to_one():
    gru = rnnfast.GRU(3, 4, bidirectional=True, seed=0)
    model = M.Sequential(gru, many_to_one=True)
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    _, h = gru(x)
    assert_close(model(x), np.concatenate([h[0], h[1]]))


def test_reversed_matches_reference_with_lengths():
    gru = rnnfast.GRU(3, 4, seed=0)
    rev = M.Reversed(gru)
    x = np.random.default_rng(2).standard_normal((6, 3, 3)).astype(np.float32)
    lengths = np.array([6, 1, 3])
    out, h = rev(x, lengths=lengths)
    # a bidirectional reference whose forward half is zero-width: use reverse weights in a bi stack
    p = {k + "_reverse": v for k, v in gru.state_dict().items()}
    p.update(gru.state_dict())
    ref_out, ref_h, _ = reference.recurrent("GRU", x, p, bidirectional=True, lengths=lengths)
    assert_close(out, ref_out[:, :, 4:])
    assert_close(h[0], ref_h[1])


def test_state_dict_errors_name_the_problem():
    model = M.Sequential({"a": M.Linear(2, 2), "b": M.Linear(2, 1)})
    sd = model.state_dict()
    del sd["b.bias"]
    with pytest.raises(errors.StateDictError, match="b.bias"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["c.weight"] = np.zeros(1)
    with pytest.raises(errors.StateDictError, match="unexpected.*c.weight"):
        model.load_state_dict(sd)
    model.load_state_dict(sd, strict=False)
    sd = model.state_dict()
    sd["a.weight"] = np.zeros((3, 2))
    with pytest.raises(errors.StateDictError, match=r"expected shape \(2, 2\), got \(3, 2\)"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["a.weight"] = np.zeros((2, 2), np.int64)
    with pytest.raises(errors.DTypeError, match="a.weight|weight"):
        model.load_state_dict(sd)


def test_model_from_config_rejects_unknown_and_bad_configs():
    with pytest.raises(errors.UnsupportedError, match="Conv9D"):
        M.model_from_config({"type": "Conv9D"})
    with pytest.raises(errors.FormatError):
        M.model_from_config({"type": "Linear", "in_features": -1, "out_features": 2})
    with pytest.raises(errors.FormatError):
        M.model_from_config(["not", "a", "dict"])
    assert (
        M.param_count_bound(
            M.Sequential(
                rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2), M.Linear(4, 2)
            ).config()
        )
        == M.Sequential(
            rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2), M.Linear(4, 2)
        ).num_parameters()
    )


def test_loaders_do_not_import_frameworks():
    import subprocess
    import sys

    code = (
        "import sys, rnnfast.models, rnnfast.loaders, rnnfast.loaders.native, rnnfast.loaders.onnx, "
        "rnnfast.loaders.keras, rnnfast.loaders.torch_models, rnnfast.commands; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'h5py', 'keras', 'safetensors') if m in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=False, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_reversed_validates_lengths_and_unbatched():
    rev = M.Reversed(rnnfast.RNN(3, 2, seed=0))
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    for bad in ([5, 1], [-1, 2], [1, 2, 3]):
        with pytest.raises(errors.ShapeError, match="lengths"):
            rev(x, lengths=np.array(bad))
    with pytest.raises(errors.DTypeError):
        rev(x, lengths=np.array([0.5, 1.0]))
    out, h = rev(x[:, 0])  # unbatched: the whole sequence reversed
    ref_out, ref_h = rev(x[:, :1])
    assert_close(out, ref_out[:, 0])
    assert_close(h, ref_h[:, 0])


@pytest.mark.parametrize("masked_output", ["zero", "carry"])
def test_mask_zero_time_major_equals_running_each_sequence_without_its_zeros(masked_output):
    emb = M.Embedding(10, 3, seed=0, mask_zero=True)
    gru = rnnfast.GRU(3, 4, seed=1)  # time-major: tokens (T, B)
    model = M.Sequential(emb, gru, masked_output=masked_output)
    tokens = np.array([[1, 0, 0], [2, 5, 0], [0, 6, 0], [3, 7, 0]])  # (T=4, B=3); column 2 all masked
    y = model(tokens)
    assert y.shape == (4, 3, 4)
    for b in range(3):
        valid = np.flatnonzero(tokens[:, b])
        expected = np.zeros((4, 4), np.float32)
        if valid.size:
            out, _ = gru(emb(tokens[valid, b]))  # unbatched (len, 3)
            expected[valid] = out
            if masked_output == "carry":
                for t in range(4):
                    before = valid[valid <= t]
                    expected[t] = expected[before[-1]] if before.size else 0.0
        assert_close(y[:, b], expected, what=f"sequence {b}")
    back = M.model_from_config(json.loads(json.dumps(model.config())))
    assert back.masked_output == masked_output and back[0].mask_zero
