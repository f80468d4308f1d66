"""ONNX loader: recurrent nodes with every attribute vs ONNX Runtime (hand-built graphs), whole graphs
exported by torch.onnx.export (dynamo=False, opsets 14..22), gate permutations, onnx_layers, native
round trip of a graph, unsupported-op errors."""

import warnings

import numpy as np
import pytest

import rnnfast
from rnnfast import errors
from rnnfast.loaders import load
from rnnfast.loaders import onnx as ronnx
from tests.conftest import assert_close

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402 -- after importorskip

G = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _ort_run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def build_rnn_model(
    op,
    *,
    I=3,
    H=4,
    T=5,
    B=3,
    direction="forward",
    bias=True,
    seq_lens=None,
    h0=False,
    c0=False,
    peep=False,
    attrs=None,
    seed=0,
    opset=14,
    scale=0.6,
):
    """A one-node ONNX graph: X [+ sequence_lens, initial_h, initial_c as graph inputs], W/R/B/P initializers.
    Returns (model, feeds)."""
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    g = G[op]
    W = rng.uniform(-scale, scale, (D, g * H, I)).astype(np.float32)
    R = rng.uniform(-scale, scale, (D, g * H, H)).astype(np.float32)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    xshape = [T, B, I]
    feeds = {"X": rng.standard_normal(xshape).astype(np.float32)}
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xshape)]
    names = ["X", "W", "R"]
    if bias:
        inits.append(
            numpy_helper.from_array(rng.uniform(-scale, scale, (D, 2 * g * H)).astype(np.float32), "B")
        )
        names.append("B")
    else:
        names.append("")
    if seq_lens is not None:
        feeds["seq"] = np.asarray(seq_lens, np.int32)
        inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT32, [B]))
        names.append("seq")
    else:
        names.append("")
    sshape = [D, B, H]
    for flag, nm in ((h0, "h0"), (c0, "c0")):
        if flag:
            feeds[nm] = rng.standard_normal(sshape).astype(np.float32)
            inputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, sshape))
            names.append(nm)
        elif op == "LSTM" or nm == "h0":
            names.append("")
    if op != "LSTM":
        names = names[:6]
    if peep:
        inits.append(numpy_helper.from_array(rng.uniform(-scale, scale, (D, 3 * H)).astype(np.float32), "P"))
        names.append("P")
    while names and names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, hidden_size=H, direction=direction, **(attrs or {}))
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    graph = helper.make_graph([node], "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, feeds


def _to_layout1(model, feeds):
    """The same node with layout=1 (batch-major X, initial states, Y, Y_h, Y_c), and its feeds.
    ONNX Runtime's CPU kernels reject layout=1, so layout-1 graphs are checked against the layout-0 run."""
    m1 = onnx.ModelProto()
    m1.CopyFrom(model)
    node = m1.graph.node[0]
    node.attribute.append(helper.make_attribute("layout", 1))
    for vi in m1.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in ("X", "h0", "c0"):
            d0, d1 = dims[0].dim_value, dims[1].dim_value
            dims[0].dim_value, dims[1].dim_value = d1, d0
    f1 = {
        k: (np.ascontiguousarray(v.swapaxes(0, 1)) if k in ("X", "h0", "c0") else v) for k, v in feeds.items()
    }
    return m1, f1


def check_against_ort(tmp_path, model, feeds, rtol=1e-4, atol=1e-5, layout=0):
    """Run the graph in rnnfast and in ONNX Runtime; with layout=1 rnnfast runs the layout-1 twin."""
    ref = _ort_run(model, feeds)
    if layout:
        model, feeds = _to_layout1(model, feeds)
        # Y (T, D, B, H) -> (B, T, D, H); Y_h, Y_c (D, B, H) -> (B, D, H)
        ref = [ref[0].transpose(2, 0, 1, 3)] + [r.transpose(1, 0, 2) for r in ref[1:]]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    graph = load(str(path))
    got = graph.run(feeds)
    for name, r in zip(graph.outputs, ref):
        assert_close(got[name], r, rtol=rtol, atol=atol, what=name)
    return graph


# ---------------------------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_direction_layout_seqlens_initial_states(tmp_path, op, direction, layout):
    model, feeds = build_rnn_model(
        op, direction=direction, seq_lens=[5, 2, 4], h0=True, c0=op == "LSTM", opset=14
    )
    check_against_ort(tmp_path, model, feeds, layout=layout)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_defaults_no_bias_no_states(tmp_path, op, direction):
    model, feeds = build_rnn_model(op, direction=direction, bias=False, opset=7)
    check_against_ort(tmp_path, model, feeds)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_gru_linear_before_reset(tmp_path, lbr, direction):
    model, feeds = build_rnn_model(
        "GRU", direction=direction, attrs={"linear_before_reset": lbr}, seq_lens=[5, 5, 3], h0=True
    )
    graph = check_against_ort(tmp_path, model, feeds)
    layer = graph._layers[0]
    layer = layer.layer if isinstance(layer, rnnfast.models.Reversed) else layer
    assert layer.reset_after == bool(lbr)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_clip(tmp_path, op, direction):
    # big weights so that pre-activations exceed the clip threshold
    model, feeds = build_rnn_model(op, direction=direction, attrs={"clip": 0.7}, scale=2.0, h0=True)
    check_against_ort(tmp_path, model, feeds)


ACT_CASES = {
    "LSTM": [
        (["HardSigmoid", "LeakyRelu", "ScaledTanh"], [0.3, 0.05, 1.5], [0.4, 0.7]),
        (["Sigmoid", "Affine", "Softsign"], [0.8], [0.1]),
        (["Sigmoid", "Elu", "Softplus"], [0.9], []),
        (["HardSigmoid", "Tanh", "Tanh", "Sigmoid", "ThresholdedRelu", "Relu"], [0.25, 0.1], [0.45]),
    ],
    "GRU": [
        (["HardSigmoid", "ScaledTanh"], [0.3, 1.2], [0.6, 0.8]),
        (["Sigmoid", "LeakyRelu", "HardSigmoid", "Softsign"], [0.2, 0.15], [0.55]),
    ],
    "RNN": [
        (["Relu"], [], []),
        (["Affine"], [0.5], [0.2]),
        (["Elu", "ScaledTanh"], [0.7, 1.3], [0.9]),
        (["LeakyRelu"], [], []),  # default alpha 0.01
    ],
}


@pytest.mark.parametrize("op,case", [(op, i) for op, cases in ACT_CASES.items() for i in range(len(cases))])
def test_activations_alpha_beta(tmp_path, op, case):
    names, alphas, betas = ACT_CASES[op][case]
    D = len(names) // {"LSTM": 3, "GRU": 2, "RNN": 1}[op]
    attrs = {"activations": names}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    model, feeds = build_rnn_model(
        op, direction="bidirectional" if D == 2 else "forward", attrs=attrs, seq_lens=[5, 3, 1], h0=True
    )
    check_against_ort(tmp_path, model, feeds)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_peepholes(tmp_path, direction):
    model, feeds = build_rnn_model(
        "LSTM", direction=direction, peep=True, h0=True, c0=True, seq_lens=[5, 4, 2]
    )
    check_against_ort(tmp_path, model, feeds)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_input_forget(tmp_path, direction):
    model, feeds = build_rnn_model("LSTM", direction=direction, attrs={"input_forget": 1}, h0=True, c0=True)
    check_against_ort(tmp_path, model, feeds)


def test_lstm_everything_at_once(tmp_path):
    model, feeds = build_rnn_model(
        "LSTM",
        direction="bidirectional",
        peep=True,
        h0=True,
        c0=True,
        seq_lens=[2, 5, 3],
        scale=1.5,
        attrs={
            "clip": 1.1,
            "input_forget": 1,
            "activations": ["HardSigmoid", "Tanh", "Softsign"] * 2,
            "activation_alpha": [0.3, 0.25],
            "activation_beta": [0.45, 0.5],
        },
    )
    check_against_ort(tmp_path, model, feeds, layout=1)


def test_sequence_lens_full_and_unbatched_sizes(tmp_path):
    model, feeds = build_rnn_model(
        "GRU", T=1, B=1, H=1, I=1, seq_lens=[1], h0=True, attrs={"linear_before_reset": 1}
    )
    check_against_ort(tmp_path, model, feeds)


# ---------------------------------------------------------------------------------------------- gate orders
def _blocks_const(op, n_blocks, H, I):
    return np.concatenate([np.full((H, I), k + 1, np.float32) for k in range(n_blocks)])


def test_gate_permutation_lstm_iofc_to_ifgo():
    H, I = 2, 3
    W = _blocks_const("LSTM", 4, H, I)[None]  # ONNX blocks i=1, o=2, f=3, c=4
    R = _blocks_const("LSTM", 4, H, H)[None]
    B = np.concatenate(
        [
            np.repeat(np.arange(1, 5, dtype=np.float32), H),
            10 * np.repeat(np.arange(1, 5, dtype=np.float32), H),
        ]
    )[None]
    P = np.repeat(np.array([1, 2, 3], np.float32), H)[None]  # ONNX peepholes i=1, o=2, f=3
    layer = ronnx.recurrent_layer("LSTM", {"hidden_size": H}, W, R, B, P, "test")
    sd = layer.state_dict()
    # torch order i, f, g(=c), o  <-  ONNX i, o, f, c
    assert [sd["weight_ih_l0"][k * H, 0] for k in range(4)] == [1, 3, 4, 2]
    assert [sd["weight_hh_l0"][k * H, 0] for k in range(4)] == [1, 3, 4, 2]
    assert [sd["bias_ih_l0"][k * H] for k in range(4)] == [1, 3, 4, 2]
    assert [sd["bias_hh_l0"][k * H] for k in range(4)] == [10, 30, 40, 20]
    assert [sd["weight_peep_l0"][k * H] for k in range(3)] == [1, 3, 2]  # [i, f, o]


def test_gate_permutation_gru_zrh_to_rzn():
    H, I = 2, 3
    W = _blocks_const("GRU", 3, H, I)[None]  # ONNX z=1, r=2, h=3
    R = _blocks_const("GRU", 3, H, H)[None]
    B = np.concatenate([np.repeat([1.0, 2, 3], H), 10 * np.repeat([1.0, 2, 3], H)]).astype(np.float32)[None]
    layer = ronnx.recurrent_layer("GRU", {"hidden_size": H, "linear_before_reset": 1}, W, R, B, None, "test")
    sd = layer.state_dict()
    assert [sd["weight_ih_l0"][k * H, 0] for k in range(3)] == [2, 1, 3]  # r, z, n
    assert [sd["weight_hh_l0"][k * H, 0] for k in range(3)] == [2, 1, 3]
    assert [sd["bias_hh_l0"][k * H] for k in range(3)] == [20, 10, 30]


def test_gate_permutation_lstm_numeric_vs_torch_reference(tmp_path):
    """The permuted weights run by the float64 reference give ONNX Runtime's numbers."""
    from rnnfast import reference

    model, feeds = build_rnn_model("LSTM", bias=True)
    W, R, B = (numpy_helper.to_array(t) for t in model.graph.initializer)
    layer = ronnx.recurrent_layer("LSTM", {}, W, R, B, None, "test")
    out, h_n, c_n = reference.recurrent("LSTM", feeds["X"], layer.state_dict())
    Y, Y_h, Y_c = _ort_run(model, feeds)
    assert_close(out, Y[:, 0], what="Y")
    assert_close(h_n, Y_h, what="Y_h")
    assert_close(c_n, Y_c, what="Y_c")


def test_gate_permutation_gru_numeric_vs_torch_reference():
    from rnnfast import reference

    for lbr in (0, 1):
        model, feeds = build_rnn_model("GRU", attrs={"linear_before_reset": lbr})
        W, R, B = (numpy_helper.to_array(t) for t in model.graph.initializer)
        layer = ronnx.recurrent_layer("GRU", {"linear_before_reset": lbr}, W, R, B, None, "test")
        out, h_n, _ = reference.recurrent("GRU", feeds["X"], layer.state_dict(), reset_after=bool(lbr))
        Y, Y_h = _ort_run(model, feeds)
        assert_close(out, Y[:, 0], what=f"Y lbr={lbr}")
        assert_close(h_n, Y_h, what=f"Y_h lbr={lbr}")


# ---------------------------------------------------------------------------------------------- exported graphs
try:
    import torch
except ImportError:  # the hand-built graphs above need only onnx + onnxruntime
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


class _Net(torch.nn.Module if torch is not None else object):
    def __init__(self, kind, batch_first, bidirectional, many_to_one=False, num_layers=2):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.rnn = getattr(torch.nn, kind)(
            8, 16, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional
        )
        self.fc = torch.nn.Linear(16 * (2 if bidirectional else 1), 5)
        self.many_to_one, self.batch_first = many_to_one, batch_first

    def forward(self, x):
        y, _ = self.rnn(self.emb(x))
        if self.many_to_one:
            y = y[:, -1] if self.batch_first else y[-1]
            return torch.sigmoid(self.fc(y))
        return torch.softmax(self.fc(y), -1)


def _export(module, x, path, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            opset_version=opset,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "a", 1: "b"}},
        )


@needs_torch
@pytest.mark.parametrize("opset", [14, 17, 20, 22])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first,bidirectional", [(False, False), (True, True), (False, True)])
def test_exported_model_matches_ort_and_torch(tmp_path, opset, kind, batch_first, bidirectional):
    torch.manual_seed(0)
    m = _Net(kind, batch_first, bidirectional).eval()
    path = tmp_path / "m.onnx"
    _export(m, torch.randint(0, 20, (4, 3)), path, opset)
    x = np.random.default_rng(1).integers(0, 20, (6, 5))
    ref = _ort_run(onnx.load(str(path)), {"x": x})[0]
    got = load(str(path))(x)
    assert_close(got, ref, what="vs onnxruntime")
    with torch.no_grad():
        assert_close(got, m(torch.from_numpy(x)).numpy(), what="vs torch")


@needs_torch
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_exported_many_to_one_gemm(tmp_path, kind):
    torch.manual_seed(1)
    m = _Net(kind, True, False, many_to_one=True, num_layers=1).eval()
    path = tmp_path / "m.onnx"
    _export(m, torch.randint(0, 20, (4, 3)), path, 17)
    x = np.random.default_rng(2).integers(0, 20, (7, 4))
    ref = _ort_run(onnx.load(str(path)), {"x": x})[0]
    assert_close(load(str(path))(x), ref)


@needs_torch
def test_exported_graph_native_round_trip(tmp_path):
    torch.manual_seed(2)
    m = _Net("LSTM", False, True).eval()
    path = tmp_path / "m.onnx"
    _export(m, torch.randint(0, 20, (4, 3)), path, 17)
    graph = load(str(path))
    rnnfast.loaders.save(graph, tmp_path / "m.safetensors")
    back = load(str(tmp_path / "m.safetensors"))
    assert type(back).__name__ == "OnnxGraph"
    for k, v in graph.state_dict().items():
        assert np.array_equal(back.state_dict()[k], v) and back.state_dict()[k].dtype == v.dtype
    x = np.random.default_rng(3).integers(0, 20, (5, 2))
    assert np.array_equal(back(x), graph(x))


@needs_torch
def test_onnx_layers_pulls_out_recurrent_nodes(tmp_path):
    torch.manual_seed(3)
    m = _Net("GRU", False, True, num_layers=2).eval()
    path = tmp_path / "m.onnx"
    _export(m, torch.randint(0, 20, (4, 3)), path, 17)
    layers = ronnx.onnx_layers(str(path))
    assert len(layers) == 2
    assert all(isinstance(v, rnnfast.GRU) for v in layers.values())
    x = np.random.default_rng(4).standard_normal((5, 2, 8)).astype(np.float32)
    l0, l1 = layers.values()
    out0, _ = l0(x)
    out1, h1 = l1(out0)
    with torch.no_grad():
        ref_out, ref_h = m.rnn(torch.from_numpy(x))
    assert_close(out1, ref_out.numpy(), what="out")
    assert_close(h1, ref_h.numpy()[2:], what="h_n of layer 1")


def test_onnx_layers_reverse_and_layout(tmp_path):
    model0, feeds0 = build_rnn_model("LSTM", direction="reverse", h0=True, c0=True)
    Y, Y_h, Y_c = _ort_run(model0, feeds0)
    model, feeds = _to_layout1(model0, feeds0)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    (layer,) = rnnfast.loaders.onnx_layers(str(path)).values()
    assert isinstance(layer, rnnfast.models.Reversed)
    assert layer.layer.batch_first
    out, (h_n, c_n) = layer(feeds["X"], (feeds0["h0"], feeds0["c0"]))  # layer states are (D, B, H) like torch
    assert_close(out, Y[:, 0].transpose(1, 0, 2), what="Y")
    assert_close(h_n, Y_h, what="Y_h")
    assert_close(c_n, Y_c, what="Y_c")


# ---------------------------------------------------------------------------------------------- errors
def test_unsupported_ops_are_all_listed(tmp_path):
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Einsum", ["X", "X"], ["a"], equation="ij,ij->ij"),
        helper.make_node("Einsum", ["a", "X"], ["b"], equation="ij,ij->ij"),
        helper.make_node("Tanh", ["b"], ["c"]),
        helper.make_node("HardSwish", ["c"], ["Y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [X], [Y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(errors.UnsupportedError) as ei:
        load(str(path))
    msg = str(ei.value)
    assert "Einsum (x2)" in msg and "HardSwish" in msg and "Tanh" not in msg and str(path) in msg


def test_onnx_layers_without_recurrent_node(tmp_path):
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Tanh", ["X"], ["Y"])], "g", [X], [Y]))
    path = tmp_path / "t.onnx"
    onnx.save(model, str(path))
    with pytest.raises(errors.FormatError, match="no RNN, LSTM or GRU"):
        ronnx.onnx_layers(str(path))
    assert_close(load(str(path))(np.ones((2, 3), np.float32)), np.tanh(np.ones((2, 3))))


def test_bad_inputs_to_graph(tmp_path):
    model, feeds = build_rnn_model("GRU", seq_lens=[5, 2, 4])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    g = load(str(path))
    with pytest.raises(errors.ShapeError, match="missing input 'seq'"):
        g.run({"X": feeds["X"]})
    with pytest.raises(errors.ShapeError, match="expected shape"):
        g.run({"X": feeds["X"][:, :, :2], "seq": feeds["seq"]})
    with pytest.raises(errors.ShapeError, match="sequence_lens"):
        g.run({"X": feeds["X"], "seq": np.array([9, 1, 1], np.int32)})
    out = g(feeds["X"], lengths=feeds["seq"])
    assert out[0].shape == (5, 1, 3, 4)


def test_peephole_graph_and_layer_native_round_trip(tmp_path):
    model, feeds = build_rnn_model(
        "LSTM", direction="bidirectional", peep=True, h0=True, c0=True, seq_lens=[5, 1, 3]
    )
    graph = check_against_ort(tmp_path, model, feeds)
    rnnfast.loaders.save(graph, tmp_path / "g.safetensors")
    back = load(str(tmp_path / "g.safetensors"))
    a, b = graph.run(feeds), back.run(feeds)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    (layer,) = ronnx.onnx_layers(str(tmp_path / "m.onnx")).values()
    rnnfast.loaders.save(layer, tmp_path / "l.safetensors")
    back_layer = load(str(tmp_path / "l.safetensors"))
    assert set(back_layer.state_dict()) == set(layer.state_dict())
    assert "weight_peep_l0_reverse" in back_layer.state_dict()
    x = feeds["X"]
    assert np.array_equal(back_layer(x)[0], layer(x)[0])


def test_many_recurrent_nodes_with_runtime_weights(tmp_path):
    """W/R computed at run time (Transpose of an initializer) are converted on every call."""
    model, feeds = build_rnn_model("GRU", attrs={"linear_before_reset": 1})
    W = numpy_helper.to_array(model.graph.initializer[0])
    model.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.ascontiguousarray(W.transpose(0, 2, 1)), "Wt")
    )
    model.graph.node.insert(0, helper.make_node("Transpose", ["Wt"], ["W"], perm=[0, 2, 1]))
    check_against_ort(tmp_path, model, feeds)
    with pytest.raises(errors.UnsupportedError, match="computed at run time"):
        ronnx.onnx_layers(str(tmp_path / "m.onnx"))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_zero_length_sequences_follow_onnxruntime(tmp_path, op):
    """ONNX Runtime gives a zero-length sequence zero final states (PyTorch would return the initial state)."""
    model, feeds = build_rnn_model(
        op, direction="bidirectional", seq_lens=[5, 0, 3], h0=True, c0=op == "LSTM"
    )
    graph = check_against_ort(tmp_path, model, feeds)
    assert not graph.run(feeds)["Y_h"][:, 1].any()


# ---------------------------------------------------------------------------------------------- the NumPy ops
def _single_op_model(nodes, inputs, inits, opset, n_out=1):
    ins = [helper.make_tensor_value_info(n, dt, shape) for n, dt, shape in inputs]
    outs = [helper.make_empty_tensor_value_info(f"out{i}") for i in range(n_out)]
    graph = helper.make_graph(
        nodes, "ops", ins, outs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


I64 = np.int64
F = TensorProto.FLOAT
OP_CASES = {
    "slice_neg_step": (
        [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["out0"])],
        {
            "s": np.array([-1, 4], I64),
            "e": np.array([-(2**63), 0], I64),
            "a": np.array([1, 2], I64),
            "st": np.array([-1, -2], I64),
        },
        17,
    ),
    "slice_clamp": (
        [helper.make_node("Slice", ["x", "s", "e"], ["out0"])],
        {"s": np.array([1, -100, 2], I64), "e": np.array([2**62, 2, 100], I64)},
        14,
    ),
    "gather_negative": (
        [helper.make_node("Gather", ["x", "i"], ["out0"], axis=1)],
        {"i": np.array([[-1, 0], [2, -3]], I64)},
        14,
    ),
    "squeeze_unsqueeze": (
        [
            helper.make_node("Unsqueeze", ["x", "a"], ["u"]),
            helper.make_node("Squeeze", ["u", "a2"], ["out0"]),
        ],
        {"a": np.array([0, -1], I64), "a2": np.array([0], I64)},
        14,
    ),
    "shape_start_end_concat": (
        [
            helper.make_node("Shape", ["x"], ["sh"], start=1, end=-1),
            helper.make_node("Concat", ["sh", "c"], ["out0"], axis=0),
        ],
        {"c": np.array([7], I64)},
        15,
    ),
    "constant_of_shape_expand": (
        [
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node(
                "ConstantOfShape", ["sh"], ["z"], value=numpy_helper.from_array(np.array([2.5], np.float32))
            ),
            helper.make_node("Add", ["z", "x"], ["out0"]),
        ],
        {},
        14,
    ),
    "gemm_trans_alpha_beta": (
        [
            helper.make_node("Reshape", ["x", "rs"], ["x2"]),
            helper.make_node("Gemm", ["x2", "w", "b"], ["out0"], transA=1, transB=1, alpha=0.5, beta=2.0),
        ],
        {
            "rs": np.array([6, -1], I64),
            "w": np.arange(18, dtype=np.float32).reshape(3, 6) / 7,
            "b": np.array([1.0, -1.0, 0.5], np.float32),
        },
        14,
    ),
    "reshape_flatten_matmul": (
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=2),
            helper.make_node("Reshape", ["f", "rs"], ["r"]),
            helper.make_node("Reshape", ["r", "rs0"], ["r0"]),
            helper.make_node("MatMul", ["r0", "w"], ["out0"]),
        ],
        {"rs": np.array([2, -1, 4], I64), "rs0": np.array([0, 0, -1], I64), "w": np.ones((4, 2), np.float32)},
        14,
    ),
    "expand_cast_where": (
        [
            helper.make_node("Greater", ["x", "zero"], ["g"]),
            helper.make_node("Cast", ["g"], ["gi"], to=TensorProto.INT64),
            helper.make_node("Cast", ["gi"], ["gf"], to=TensorProto.FLOAT),
            helper.make_node("Expand", ["gf", "es"], ["ex"]),
            helper.make_node("Where", ["g", "x", "ex"], ["out0"]),
        ],
        {"zero": np.array(0.0, np.float32), "es": np.array([2, 3, 4], I64)},
        14,
    ),
    "split_13_input": (
        [helper.make_node("Split", ["x", "sp"], ["out0", "out1"], axis=2)],
        {"sp": np.array([1, 3], I64)},
        14,
    ),
    "split_18_num_outputs": (
        [helper.make_node("Split", ["x"], ["out0", "out1"], axis=2, num_outputs=2)],
        {},
        18,
    ),
    "activations": (
        [
            helper.make_node("LogSoftmax", ["x"], ["a"], axis=1),
            helper.make_node("LeakyRelu", ["a"], ["b"], alpha=0.2),
            helper.make_node("Softmax", ["b"], ["c"], axis=0),
            helper.make_node("Sigmoid", ["c"], ["d"]),
            helper.make_node("Tanh", ["d"], ["e"]),
            helper.make_node("Relu", ["e"], ["out0"]),
        ],
        {},
        14,
    ),
    "reduce_14": (
        [
            helper.make_node("ReduceSum", ["x", "ax"], ["out0"], keepdims=0),
            helper.make_node("ReduceMax", ["x"], ["out1"], axes=[-1, 0]),
            helper.make_node("ReduceMean", ["x"], ["out2"]),
        ],
        {"ax": np.array([1], I64)},
        14,
    ),
    "reduce_18": (
        [
            helper.make_node("ReduceMean", ["x", "ax"], ["out0"]),
            helper.make_node("ReduceMin", ["x", "ax"], ["out1"], keepdims=0),
        ],
        {"ax": np.array([0, 2], I64)},
        18,
    ),
    "argmax_range_div": (
        [
            helper.make_node("ArgMax", ["x"], ["out0"], axis=2, keepdims=0),
            helper.make_node("Range", ["r0", "r1", "r2"], ["out1"]),
            helper.make_node("Div", ["r1", "r2"], ["out2"]),
        ],
        {"r0": np.array(1, I64), "r1": np.array(-11, I64), "r2": np.array(-3, I64)},
        14,
    ),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_numpy_ops_match_onnxruntime(tmp_path, case):
    nodes, inits, opset = OP_CASES[case]
    n_out = max(int(o[3:]) for n in nodes for o in n.output if o.startswith("out")) + 1
    model = _single_op_model(nodes, [("x", F, [2, 3, 4])], inits, opset, n_out)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ref = _ort_run(model, {"x": x})
    onnx.save(model, str(tmp_path / "ops.onnx"))
    got = load(str(tmp_path / "ops.onnx")).run({"x": x})
    for i, r in enumerate(ref):
        g = got[f"out{i}"]
        assert g.shape == r.shape and g.dtype == r.dtype, (i, g.shape, r.shape, g.dtype, r.dtype)
        assert_close(g, r, what=f"out{i}")


def test_bidirectional_needs_one_set_of_activations_per_direction(tmp_path):
    """ONNX Runtime refuses a single (f, g, h) set for a bidirectional node: so does rnnfast, by name."""
    attrs = {"activations": ["HardSigmoid", "Tanh", "Softsign"]}
    model, feeds = build_rnn_model("LSTM", direction="bidirectional", attrs=attrs)
    with pytest.raises(Exception, match="activation"):
        _ort_run(model, feeds)
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(errors.ShapeError, match=r"expected 6 activations \(3 per direction\), got 3"):
        load(str(tmp_path / "m.onnx"))


def test_core_peepholes_without_other_extensions():
    """Needs the core to honour weight_peep_* on a plain rnnfast.LSTM (no activations/clip/input_forget).
    (The ONNX loader itself names the default activations when P is present, so loading never depends on it.)"""
    model, feeds = build_rnn_model("LSTM", direction="bidirectional", peep=True, seq_lens=[5, 2, 4])
    W, R, B, P = (numpy_helper.to_array(t) for t in model.graph.initializer)
    converted = ronnx.recurrent_layer("LSTM", {"direction": "bidirectional"}, W, R, B, P, "test").state_dict()
    plain = rnnfast.LSTM(3, 4, bidirectional=True)
    plain.load_state_dict(converted)
    Y, Y_h, Y_c = _ort_run(model, feeds)
    out, (h_n, c_n) = plain(feeds["X"], lengths=feeds["seq"])
    assert_close(out, Y.transpose(0, 2, 1, 3).reshape(5, 3, 8), what="Y")
    assert_close(h_n, Y_h, what="Y_h")
    assert_close(c_n, Y_c, what="Y_c")


class _StateNet(torch.nn.Module if torch is not None else object):
    """Initial states as graph inputs, many-to-one on h_n, two outputs, dropout, a mean over time."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.emb = torch.nn.Embedding(20, 8, padding_idx=0)
        self.rnn = getattr(torch.nn, kind)(
            8, 16, num_layers=2, batch_first=True, bidirectional=True, dropout=0.2
        )
        self.drop = torch.nn.Dropout(0.3)
        self.fc = torch.nn.Linear(32, 5)

    def forward(self, x, h0, c0):
        y, h = self.rnn(self.emb(x), (h0, c0) if self.kind == "LSTM" else h0)
        if isinstance(h, tuple):
            h = h[0]
        z = torch.cat([h[-2], h[-1]], 1)
        return torch.log_softmax(self.fc(self.drop(z)), -1), y.mean(1)


@needs_torch
@pytest.mark.parametrize("opset", [14, 18, 22])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_exported_initial_states_two_outputs(tmp_path, opset, kind):
    torch.manual_seed(4)
    m = _StateNet(kind).eval()
    args = (torch.randint(0, 20, (4, 3)), torch.randn(4, 4, 16), torch.randn(4, 4, 16))
    names = ["x", "h0", "c0"] if kind == "LSTM" else ["x", "h0"]
    path = tmp_path / "s.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m,
            args if kind == "LSTM" else (*args[:2], None),
            str(path),
            opset_version=opset,
            dynamo=False,
            input_names=names,
            output_names=["y", "m"],
            dynamic_axes={"x": {0: "b", 1: "t"}, "h0": {1: "b"}, "c0": {1: "b"}},
        )
    rng = np.random.default_rng(5)
    feeds = {
        "x": rng.integers(0, 20, (6, 5)),
        "h0": rng.standard_normal((4, 6, 16)).astype(np.float32),
        "c0": rng.standard_normal((4, 6, 16)).astype(np.float32),
    }
    feeds = {k: feeds[k] for k in names}
    ref = _ort_run(onnx.load(str(path)), feeds)
    got = load(str(path)).run(feeds)
    assert_close(got["y"], ref[0], what="y")
    assert_close(got["m"], ref[1], what="m")
    with torch.no_grad():
        t = m(*(torch.from_numpy(feeds[k]) for k in names), *([None] if kind != "LSTM" else []))
    assert_close(got["y"], t[0].numpy(), what="y vs torch")
