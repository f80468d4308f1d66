"""Truncated, corrupt and hostile files: each raises an rnnfast exception naming the file and the
problem; nothing is executed; no declared size makes rnnfast allocate it."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest

import rnnfast
from rnnfast import errors
from rnnfast import models as M
from rnnfast.loaders import load, native, save


def _raw_safetensors(header: dict, data: bytes = b"", header_len: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if header_len is None else header_len) + h + data


def _arch_meta(model):
    return {"format": "rnnfast", "rnnfast_format_version": "1", "architecture": json.dumps(model.config())}


@pytest.fixture
def good(tmp_path):
    model = M.Sequential(M.Embedding(10, 4, seed=0), rnnfast.LSTM(4, 3, seed=1), M.Linear(3, 2, seed=2))
    path = tmp_path / "good.safetensors"
    save(model, path)
    return model, path


def _expect(exc_type, path, match, fn=None):
    with pytest.raises(exc_type) as ei:
        (fn or load)(str(path))
    msg = str(ei.value)
    assert str(path) in msg, msg
    if match:
        assert any(m in msg for m in ([match] if isinstance(match, str) else match)), msg
    assert isinstance(ei.value, errors.RnnfastError)
    return msg


# ------------------------------------------------------------------------------------------ safetensors
@pytest.mark.parametrize("cut", [0, 5, 8, 20, -1, -7])
def test_native_truncated(good, tmp_path, cut):
    _, path = good
    raw = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(raw[:cut])
    _expect(
        errors.FormatError, bad, ["too short", "exceeds the file size", "truncated", "outside", "trailing"]
    )


def test_native_wrong_magic(tmp_path):
    p = tmp_path / "png.safetensors"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    _expect(errors.FormatError, p, ["exceeds the file size", "wrong magic"])
    p2 = tmp_path / "text.safetensors"
    p2.write_bytes(struct.pack("<Q", 4) + b"abcd")
    _expect(errors.FormatError, p2, "wrong magic")


def test_native_header_length_lies(tmp_path):
    for n in (2**63, 2**40, 10**6):
        p = tmp_path / f"lie{n}.safetensors"
        p.write_bytes(_raw_safetensors({}, header_len=n))
        _expect(errors.FormatError, p, "exceeds the file size")


@pytest.mark.parametrize(
    "entry,match",
    [
        ({"dtype": "F32", "shape": [2**40, 2**20], "data_offsets": [0, 16]}, "needs"),
        ({"dtype": "F32", "shape": [2**62], "data_offsets": [0, 2**64]}, "outside the data section"),
        ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "shape must be"),
        ({"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}, "shape must be"),
        ({"dtype": "F32", "shape": [1] * 40, "data_offsets": [0, 4]}, "shape must be"),
        ({"dtype": "Q8", "shape": [4], "data_offsets": [0, 16]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "outside the data section"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [4]}, "exactly"),
        ([1, 2, 3], "exactly"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "trailing bytes"),
    ],
)
def test_native_lying_entries(tmp_path, entry, match):
    p = tmp_path / "lie.safetensors"
    p.write_bytes(_raw_safetensors({"w": entry}, b"\x00" * 16))
    _expect(errors.FormatError, p, match)


def test_native_overlap_hole_duplicate_bad_json(tmp_path):
    e = {"dtype": "F32", "shape": [2]}
    p = tmp_path / "overlap.safetensors"
    p.write_bytes(
        _raw_safetensors(
            {"a": {**e, "data_offsets": [0, 8]}, "b": {**e, "data_offsets": [4, 12]}}, b"\x00" * 12
        )
    )
    _expect(errors.FormatError, p, "overlaps")
    p = tmp_path / "hole.safetensors"
    p.write_bytes(_raw_safetensors({"a": {**e, "data_offsets": [4, 12]}}, b"\x00" * 12))
    _expect(errors.FormatError, p, "hole")
    p = tmp_path / "dup.safetensors"
    h = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    p.write_bytes(struct.pack("<Q", len(h)) + h + b"\x00" * 4)
    _expect(errors.FormatError, p, "duplicate")
    p = tmp_path / "json.safetensors"
    h = b'{"a": nope}'
    p.write_bytes(struct.pack("<Q", len(h)) + h)
    _expect(errors.FormatError, p, "not valid JSON")
    p = tmp_path / "meta.safetensors"
    p.write_bytes(_raw_safetensors({"__metadata__": {"architecture": 3}}))
    _expect(errors.FormatError, p, "__metadata__")


def test_native_lying_architecture_is_refused_before_allocating(good, tmp_path):
    model = good[0]
    tensors = model.state_dict()
    huge = M.Sequential(M.Embedding(10, 4), rnnfast.LSTM(4, 3), M.Linear(3, 2)).config()
    huge["layers"][1][1]["hidden_size"] = 10**9  # 1.6e19 bytes of weights if built
    p = tmp_path / "huge.safetensors"
    native.write_safetensors(p, tensors, {"format": "rnnfast", "architecture": json.dumps(huge)})
    _expect(errors.FormatError, p, "declares")
    huge2 = {"type": "Embedding", "num_embeddings": 10**12, "embedding_dim": 10**6, "padding_idx": None}
    native.write_safetensors(
        p, {"weight": np.zeros((2, 2), np.float32)}, {"format": "rnnfast", "architecture": json.dumps(huge2)}
    )
    _expect(errors.FormatError, p, "declares")


@pytest.mark.parametrize(
    "arch,exc,match",
    [
        ("{not json", errors.FormatError, "not valid JSON"),
        (json.dumps({"type": "Conv9D"}), errors.UnsupportedError, "Conv9D"),
        (
            json.dumps({"type": "Linear", "in_features": "3", "out_features": 2}),
            errors.FormatError,
            "in_features",
        ),
        (json.dumps([1, 2]), errors.FormatError, "dict"),
        ("[" * 100000 + "]" * 100000, errors.FormatError, ["nested", "JSON"]),
    ],
)
def test_native_bad_architecture(tmp_path, arch, exc, match):
    p = tmp_path / "arch.safetensors"
    native.write_safetensors(
        p, {"weight": np.zeros((2, 3), np.float32)}, {"format": "rnnfast", "architecture": arch}
    )
    _expect(exc, p, match)


def test_native_nested_architecture_too_deep(tmp_path):
    n = 5000  # deeper than Python's recursion limit
    arch = '{"type":"Sequential","layers":[["0",' * n + '{"type":"Sigmoid"}' + "]]}" * n
    p = tmp_path / "deep.safetensors"
    native.write_safetensors(p, {}, {"format": "rnnfast", "architecture": arch})
    _expect(errors.FormatError, p, ["nested", "JSON"])


def test_native_missing_and_unexpected_tensors(good, tmp_path):
    model = good[0]
    sd = model.state_dict()
    del sd["1.weight_hh_l0"]
    p = tmp_path / "missing.safetensors"
    native.write_safetensors(p, sd, _arch_meta(model))
    msg = _expect(errors.StateDictError, p, "missing")
    assert "1.weight_hh_l0" in msg
    sd = model.state_dict()
    sd["extra"] = np.zeros(1, np.float32)
    native.write_safetensors(p, sd, _arch_meta(model))
    _expect(errors.StateDictError, p, "unexpected")
    sd = model.state_dict()
    sd["2.weight"] = np.zeros((3, 2), np.float32)  # transposed
    native.write_safetensors(p, sd, _arch_meta(model))
    _expect(errors.StateDictError, p, "expected shape (2, 3), got (3, 2)")


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_native_wrong_dtypes(good, tmp_path, dtype):
    model, _ = good
    sd = model.state_dict()
    sd["2.weight"] = sd["2.weight"].astype(dtype)
    p = tmp_path / "dtype.safetensors"
    native.write_safetensors(p, sd, _arch_meta(model))
    msg = _expect(errors.DTypeError, p, "2.weight")
    assert "float" in msg


def test_native_float16_and_float64_weights_are_accepted(good, tmp_path):
    model, _ = good
    for dt in (np.float16, np.float64):
        sd = {k: v.astype(dt) for k, v in model.state_dict().items()}
        p = tmp_path / f"{np.dtype(dt).name}.safetensors"
        native.write_safetensors(p, sd, _arch_meta(model))
        back = load(p)
        for k, v in sd.items():
            assert np.array_equal(back.state_dict()[k], v.astype(np.float32))


def test_nan_weights_load_and_flow_through(good, tmp_path):
    model, _ = good
    sd = model.state_dict()
    sd["1.weight_hh_l0"][0, 0] = np.nan
    sd["2.bias"][1] = np.nan
    p = tmp_path / "nan.safetensors"
    native.write_safetensors(p, sd, _arch_meta(model))
    back = load(p)
    assert np.isnan(back.state_dict()["1.weight_hh_l0"][0, 0])
    y = back(np.array([[1, 2], [3, 4], [5, 6]]))
    assert np.isnan(y[..., 1]).all()  # NaN bias: every output of that unit
    assert np.isnan(y).any() and y.shape == (3, 2, 2)


def test_not_a_file(tmp_path):
    _expect(errors.FormatError, tmp_path / "nothing.safetensors", "no such file")
    _expect(errors.FormatError, tmp_path, "directory")


# ------------------------------------------------------------------------------------------ .pt
def test_pt_corrupt_files(tmp_path):
    torch = pytest.importorskip("torch")
    good = tmp_path / "g.pt"
    torch.save({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, good)
    raw = good.read_bytes()
    cases = {
        "trunc.pt": raw[: len(raw) // 2],
        "empty.pt": b"",
        "random.pt": bytes(range(256)) * 4,
        "text.pth": b"hello world",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(errors.FormatError) as ei:
            load(tmp_path / name, architecture=M.Linear(3, 2))
        assert name in str(ei.value)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(errors.FormatError, match="expected a state_dict"):
        load(tmp_path / "list.pt", architecture=M.Linear(3, 2))
    torch.save({"weight": torch.zeros(2, 3, dtype=torch.int64), "bias": torch.zeros(2)}, tmp_path / "int.pt")
    with pytest.raises(errors.DTypeError, match="int.pt"):
        load(tmp_path / "int.pt", architecture=M.Linear(3, 2))
    torch.save({"weight": torch.zeros(2, 3)}, tmp_path / "miss.pt")
    with pytest.raises(errors.StateDictError, match="bias"):
        load(tmp_path / "miss.pt", architecture=M.Linear(3, 2))
    huge = {"type": "Linear", "in_features": 10**7, "out_features": 10**7, "bias": True}
    with pytest.raises(errors.FormatError, match="declares"):
        load(good, architecture=huge)


# ------------------------------------------------------------------------------------------ ONNX
def _onnx_model(tmp_path, op="GRU"):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    H, I = 3, 2
    G = {"GRU": 3, "LSTM": 4, "RNN": 1}[op]
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.standard_normal((1, G * H, I)).astype(np.float32), "W")
    R = numpy_helper.from_array(rng.standard_normal((1, G * H, H)).astype(np.float32), "R")
    node = helper.make_node(op, ["X", "W", "R"], ["Y", "Y_h"], hidden_size=H)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 1, I])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        [W, R],
    )
    return onnx, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_onnx_garbage_and_truncated(tmp_path):
    model = _onnx_model(tmp_path)[1]
    raw = model.SerializeToString()
    for name, data in {
        "trunc.onnx": raw[: len(raw) // 2],
        "garbage.onnx": b"\xff\xfe" * 100,
        "empty.onnx": b"",
    }.items():
        (tmp_path / name).write_bytes(data)
        _expect(errors.FormatError, tmp_path / name, None)


def test_onnx_initializer_lies_about_its_size(tmp_path):
    onnx, model = _onnx_model(tmp_path)
    w = model.graph.initializer[0]
    w.dims[:] = [1, 9, 2**40]  # raw_data holds 1*9*2 floats
    p = tmp_path / "lie.onnx"
    onnx.save(model, str(p))
    _expect(errors.FormatError, p, "needs")
    onnx, model = _onnx_model(tmp_path)
    model.graph.initializer[0].dims[:] = [1, 9, -2]
    onnx.save(model, str(p))
    _expect(errors.FormatError, p, "negative")


def test_onnx_wrong_dtype_weights(tmp_path):
    onnx, model = _onnx_model(tmp_path)
    from onnx import numpy_helper

    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((1, 9, 2), np.int32), "W"))
    p = tmp_path / "int.onnx"
    onnx.save(model, str(p))
    _expect(errors.DTypeError, p, "W must be a float tensor")


def test_onnx_unsupported_op_is_named(tmp_path):
    onnx, model = _onnx_model(tmp_path)
    from onnx import helper

    model.graph.node.append(helper.make_node("Conv", ["Y_h", "W"], ["Z"]))
    model.graph.node.append(helper.make_node("MyOp", ["Z"], ["Q"], domain="com.evil"))
    p = tmp_path / "unsup.onnx"
    onnx.save(model, str(p))
    msg = _expect(errors.UnsupportedError, p, "Conv")
    assert "com.evil.MyOp" in msg


def test_onnx_external_data_outside_directory(tmp_path):
    onnx, model = _onnx_model(tmp_path)
    from onnx import TensorProto

    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "72")):
        e = w.external_data.add()
        e.key, e.value = k, v
    p = tmp_path / "ext.onnx"
    onnx.save(model, str(p))
    _expect(errors.FormatError, p, "outside")


def test_onnx_runtime_shape_bomb(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([2**20, 2**20, 2**10], np.int64), "shape")
    node = helper.make_node("ConstantOfShape", ["shape"], ["Y"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["X2"]), node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [shape],
    )
    p = tmp_path / "bomb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(p))
    g = load(p)
    with pytest.raises(errors.ShapeError, match="refusing"):
        g(np.zeros(1, np.float32))


def test_onnx_nan_weights_flow_through(tmp_path):
    onnx, model = _onnx_model(tmp_path)
    from onnx import numpy_helper

    W = numpy_helper.to_array(model.graph.initializer[0]).copy()
    W[0, 0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(W, "W"))
    p = tmp_path / "nan.onnx"
    onnx.save(model, str(p))
    y = load(p)(np.ones((4, 1, 2), np.float32))
    assert np.isnan(y).any()


# ------------------------------------------------------------------------------------------ Keras
def _keras_archive(tmp_path):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("h5py")
    keras = pytest.importorskip("keras")
    m = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(10, 4),
            keras.layers.LSTM(3),
            keras.layers.Dense(2),
        ]
    )
    m.save(tmp_path / "k.keras")
    return tmp_path / "k.keras"


def _rezip(src, dst, replace):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in replace:
                if replace[item.filename] is not None:
                    zout.writestr(item.filename, replace[item.filename])
            else:
                zout.writestr(item, zin.read(item.filename))


def test_keras_corrupt_archives(tmp_path):
    src = _keras_archive(tmp_path)
    raw = src.read_bytes()
    (tmp_path / "trunc.keras").write_bytes(raw[: len(raw) // 2])
    _expect(errors.FormatError, tmp_path / "trunc.keras", None)
    (tmp_path / "notzip.keras").write_bytes(b"hello")
    _expect(errors.FormatError, tmp_path / "notzip.keras", "bad zip")
    _rezip(src, tmp_path / "noconf.keras", {"config.json": None})
    _expect(errors.FormatError, tmp_path / "noconf.keras", "config.json")
    _rezip(src, tmp_path / "badjson.keras", {"config.json": b"{oops"})
    _expect(errors.FormatError, tmp_path / "badjson.keras", "not valid JSON")
    _rezip(src, tmp_path / "badh5.keras", {"model.weights.h5": b"\x89HDF\r\n\x1a\n" + b"\x00" * 100})
    _expect(errors.FormatError, tmp_path / "badh5.keras", "HDF5")


def test_keras_lying_shapes_and_dtypes(tmp_path):
    h5py = pytest.importorskip("h5py")
    src = _keras_archive(tmp_path)
    with zipfile.ZipFile(src) as z:
        cfg = json.loads(z.read("config.json"))
        weights = z.read("model.weights.h5")
    (tmp_path / "w.h5").write_bytes(weights)
    # 1) huge declared units with a huge declared (never written) dataset: refused before reading
    big = json.loads(json.dumps(cfg))
    for layer in big["config"]["layers"]:
        if layer["class_name"] == "LSTM":
            layer["config"]["units"] = 10**8
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        g = f["layers/lstm/cell/vars"]
        del g["0"]
        g.create_dataset("0", shape=(4, 4 * 10**8), dtype="f4", chunks=(4, 1024))
    _rezip(
        src,
        tmp_path / "huge.keras",
        {"config.json": json.dumps(big), "model.weights.h5": (tmp_path / "w.h5").read_bytes()},
    )
    _expect(errors.FormatError, tmp_path / "huge.keras", ["declares", "stores only"])
    # 2) a kernel whose shape does not match the config
    (tmp_path / "w2.h5").write_bytes(weights)
    with h5py.File(tmp_path / "w2.h5", "r+") as f:
        g = f["layers/dense/vars"]
        del g["0"]
        g.create_dataset("0", data=np.zeros((5, 2), np.float32))
    _rezip(src, tmp_path / "shape.keras", {"model.weights.h5": (tmp_path / "w2.h5").read_bytes()})
    _expect(errors.StateDictError, tmp_path / "shape.keras", "expected shape")
    # 3) integer weights, 4) a missing tensor
    (tmp_path / "w3.h5").write_bytes(weights)
    with h5py.File(tmp_path / "w3.h5", "r+") as f:
        g = f["layers/dense/vars"]
        del g["0"]
        g.create_dataset("0", data=np.zeros((3, 2), np.int32))
        del f["layers/lstm/cell/vars/1"]
    _rezip(src, tmp_path / "dtype.keras", {"model.weights.h5": (tmp_path / "w3.h5").read_bytes()})
    _expect((errors.DTypeError, errors.StateDictError), tmp_path / "dtype.keras", ["float dtype", "missing"])


def test_keras_zip_bomb_declared_size(tmp_path):
    src = _keras_archive(tmp_path)
    raw = bytearray(src.read_bytes())
    # patch the declared uncompressed size of config.json in the central directory to 2**31
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("config.json")
    cd = raw.rfind(b"PK\x01\x02", 0, len(raw))
    while cd != -1:
        name_len = struct.unpack("<H", raw[cd + 28 : cd + 30])[0]
        if raw[cd + 46 : cd + 46 + name_len] == b"config.json":
            raw[cd + 24 : cd + 28] = struct.pack("<I", 2**31)
            break
        cd = raw.rfind(b"PK\x01\x02", 0, cd)
    assert info.file_size < 2**31
    (tmp_path / "bomb.keras").write_bytes(bytes(raw))
    _expect(errors.FormatError, tmp_path / "bomb.keras", ["declares", "bad zip", "cannot read"])


def test_keras_nan_weights_flow_through(tmp_path):
    h5py = pytest.importorskip("h5py")
    src = _keras_archive(tmp_path)
    with zipfile.ZipFile(src) as z:
        (tmp_path / "w.h5").write_bytes(z.read("model.weights.h5"))
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        f["layers/dense/vars/1"][0] = np.nan
    _rezip(src, tmp_path / "nan.keras", {"model.weights.h5": (tmp_path / "w.h5").read_bytes()})
    y = load(tmp_path / "nan.keras")(np.array([[1, 2, 3, 4, 5]]))
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all()


def test_keras_weights_legacy_or_foreign_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    src = _keras_archive(tmp_path)
    with zipfile.ZipFile(src) as z:
        cfg = json.loads(z.read("config.json"))
    with h5py.File(tmp_path / "legacy.h5", "w") as f:  # what Keras 2's model.save("m.h5") writes
        f.attrs["keras_version"] = "2.15.0"
        f.create_group("model_weights")
    _expect(
        errors.UnsupportedError, tmp_path / "legacy.h5", "Keras 2", fn=lambda p: load(p, architecture=cfg)
    )
    with h5py.File(tmp_path / "other.weights.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    _expect(
        errors.FormatError,
        tmp_path / "other.weights.h5",
        "not a Keras 3 weights file",
        fn=lambda p: load(p, architecture=cfg),
    )
    # the weights of another model: the missing layer is named
    keras = pytest.importorskip("keras")
    other = keras.Sequential([keras.Input((5, 4)), keras.layers.GRU(3, name="g")])
    other.save_weights(tmp_path / "o.weights.h5")
    _expect(
        errors.StateDictError,
        tmp_path / "o.weights.h5",
        "no weights for layer",
        fn=lambda p: load(p, architecture=cfg),
    )


def test_native_huge_num_layers_is_refused_quickly(good, tmp_path):
    model = good[0]
    cfg = model.config()
    cfg["layers"][1][1]["num_layers"] = 10**15  # computed in closed form: no loop over layers
    p = tmp_path / "layers.safetensors"
    native.write_safetensors(p, model.state_dict(), {"format": "rnnfast", "architecture": json.dumps(cfg)})
    _expect(errors.FormatError, p, "declares")
