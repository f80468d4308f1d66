"""`rnnfast info / convert / run / generate` on real files of every format; errors and exit codes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnfast
from rnnfast import models as M
from rnnfast.cli import main
from rnnfast.loaders import load, save
from tests.conftest import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def native_model(tmp_path):
    model = M.Sequential(
        {
            "emb": M.Embedding(20, 6, seed=0),
            "rnn": rnnfast.GRU(6, 5, batch_first=True, bidirectional=True, seed=1),
            "fc": M.Linear(10, 3, seed=2),
            "sm": M.Softmax(),
        },
        many_to_one=True,
    )
    path = tmp_path / "model.safetensors"
    save(model, path)
    return model, path


@pytest.fixture
def tokens(tmp_path):
    x = np.random.default_rng(0).integers(0, 20, (4, 7))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "len.npy", np.array([7, 2, 5, 1]))
    return x


def test_info_native(native_model, capsys):
    model, path = native_model
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rnnfast native" in out and "Embedding" in out and "GRU" in out and "many-to-one" in out
    assert f"{model.num_parameters():,d}" in out


def test_info_json(native_model, capsys):
    model, path = native_model
    assert main(["info", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "native" and d["parameters"] == model.num_parameters()
    assert [r["type"] for r in d["layers"]] == [
        "Embedding 20x6",
        "GRU 6->5 bidirectional batch_first",
        "Linear 10->3",
        "Softmax",
    ]
    assert d["layers"][0]["shapes"] == {"weight": [20, 6]}


def test_run_native_with_lengths(native_model, tokens, tmp_path, capsys):
    model, path = native_model
    rc = main(
        [
            "run",
            str(path),
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npy"),
            "--lengths",
            str(tmp_path / "len.npy"),
        ]
    )
    assert rc == 0
    y = np.load(tmp_path / "y.npy")
    assert np.array_equal(y, model(tokens, lengths=np.array([7, 2, 5, 1])))
    assert "wrote" in capsys.readouterr().out


def test_convert_then_run_is_exact(native_model, tokens, tmp_path):
    model, path = native_model
    assert main(["convert", str(path), str(tmp_path / "copy.safetensors")]) == 0
    assert (
        main(
            [
                "run",
                str(tmp_path / "copy.safetensors"),
                "--input",
                str(tmp_path / "x.npy"),
                "--output",
                str(tmp_path / "y.npy"),
            ]
        )
        == 0
    )
    assert np.array_equal(np.load(tmp_path / "y.npy"), model(tokens))


def test_onnx_info_convert_run(tmp_path, tokens, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import warnings

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.rnn = torch.nn.LSTM(8, 6, batch_first=True)
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x):
            return torch.softmax(self.fc(self.rnn(self.emb(x))[0]), -1)

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Net().eval(),
            (torch.zeros(2, 3, dtype=torch.long),),
            str(tmp_path / "m.onnx"),
            opset_version=17,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b", 1: "t"}},
        )
    assert main(["info", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "ONNX" in out and "LSTM" in out and "opset 17" in out
    ref = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": tokens})[0]
    assert (
        main(
            [
                "run",
                str(tmp_path / "m.onnx"),
                "--input",
                str(tmp_path / "x.npy"),
                "--output",
                str(tmp_path / "y.npy"),
            ]
        )
        == 0
    )
    assert_close(np.load(tmp_path / "y.npy"), ref)
    assert main(["convert", str(tmp_path / "m.onnx"), str(tmp_path / "m.safetensors")]) == 0
    assert (
        main(
            [
                "run",
                str(tmp_path / "m.safetensors"),
                "--input",
                str(tmp_path / "x.npy"),
                "--output",
                str(tmp_path / "y2.npy"),
            ]
        )
        == 0
    )
    assert np.array_equal(np.load(tmp_path / "y2.npy"), np.load(tmp_path / "y.npy"))


def test_keras_info_convert_run(tmp_path, tokens, capsys):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("h5py")
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [
            keras.Input((7,), dtype="int32"),
            keras.layers.Embedding(20, 8),
            keras.layers.LSTM(5),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.save(tmp_path / "k.keras")
    model.save_weights(tmp_path / "k.weights.h5")
    ref = model.predict(tokens, verbose=0)
    assert main(["info", str(tmp_path / "k.keras")]) == 0
    assert "Keras" in capsys.readouterr().out
    assert (
        main(
            [
                "run",
                str(tmp_path / "k.keras"),
                "--input",
                str(tmp_path / "x.npy"),
                "--output",
                str(tmp_path / "y.npy"),
            ]
        )
        == 0
    )
    assert_close(np.load(tmp_path / "y.npy"), ref)
    assert (
        main(
            [
                "convert",
                str(tmp_path / "k.weights.h5"),
                str(tmp_path / "k.safetensors"),
                "--architecture",
                str(tmp_path / "k.keras"),
            ]
        )
        == 0
    )
    assert_close(load(tmp_path / "k.safetensors")(tokens), ref)


def test_pt_needs_architecture(tmp_path, tokens, capsys):
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(7, 2)
    torch.save(lin.state_dict(), tmp_path / "l.pt")
    assert main(["info", str(tmp_path / "l.pt")]) == 1
    assert "architecture" in capsys.readouterr().err
    (tmp_path / "arch.json").write_text(json.dumps(M.Linear(7, 2).config()))
    assert (
        main(
            [
                "convert",
                str(tmp_path / "l.pt"),
                str(tmp_path / "l.safetensors"),
                "--architecture",
                str(tmp_path / "arch.json"),
            ]
        )
        == 0
    )
    np.save(tmp_path / "f.npy", tokens.astype(np.float32))
    assert (
        main(
            [
                "run",
                str(tmp_path / "l.safetensors"),
                "--input",
                str(tmp_path / "f.npy"),
                "--output",
                str(tmp_path / "y.npy"),
            ]
        )
        == 0
    )
    with torch.no_grad():
        assert_close(np.load(tmp_path / "y.npy"), lin(torch.from_numpy(tokens.astype(np.float32))).numpy())


def test_run_bare_recurrent_layer_writes_out(tmp_path):
    gru = rnnfast.GRU(3, 4, seed=0)
    save(gru, tmp_path / "g.safetensors")
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert (
        main(
            [
                "run",
                str(tmp_path / "g.safetensors"),
                "--input",
                str(tmp_path / "x.npy"),
                "--output",
                str(tmp_path / "y.npy"),
            ]
        )
        == 0
    )
    assert np.array_equal(np.load(tmp_path / "y.npy"), gru(x)[0])


@pytest.mark.parametrize(
    "case",
    [
        "missing_model",
        "missing_input",
        "pickled_npy",
        "wrong_shape",
        "bad_tokens",
        "garbage_model",
        "npz_input",
        "bad_lengths",
    ],
)
def test_errors_exit_1_with_a_message(native_model, tokens, tmp_path, capsys, case):
    _, path = native_model
    x = str(tmp_path / "x.npy")
    argv = ["run", str(path), "--input", x, "--output", str(tmp_path / "y.npy")]
    if case == "missing_model":
        argv[1] = str(tmp_path / "nope.safetensors")
    elif case == "missing_input":
        argv[3] = str(tmp_path / "nope.npy")
    elif case == "pickled_npy":
        np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        argv[3] = str(tmp_path / "obj.npy")
    elif case == "wrong_shape":
        np.save(tmp_path / "s.npy", np.zeros((2, 3, 4), np.int64))
        argv[3] = str(tmp_path / "s.npy")
    elif case == "bad_tokens":
        np.save(tmp_path / "t.npy", np.full((2, 3), 99))
        argv[3] = str(tmp_path / "t.npy")
    elif case == "garbage_model":
        (tmp_path / "g.onnx").write_bytes(b"\x08garbage" * 10)
        argv[1] = str(tmp_path / "g.onnx")
    elif case == "npz_input":
        np.savez(tmp_path / "z.npz", tokens)
        argv[3] = str(tmp_path / "z.npz")
    elif case == "bad_lengths":
        np.save(tmp_path / "l.npy", np.array([9, 9, 9, 9]))
        argv += ["--lengths", str(tmp_path / "l.npy")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("rnnfast run: error:") and len(err.strip()) > 25
    assert not (tmp_path / "y.npy").exists()


def test_info_on_unknown_format(tmp_path, capsys):
    (tmp_path / "x.bin").write_bytes(b"\x00\x01\x02junk")
    assert main(["info", str(tmp_path / "x.bin")]) == 1
    assert "unrecognised model format" in capsys.readouterr().err


def test_usage_errors_and_generate(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["run", "m.safetensors"])  # --input/--output missing: argparse exits 2
    assert ei.value.code == 2
    capsys.readouterr()


def test_generate_with_the_shipped_character_model(capsys, tmp_path):
    argv = ["generate", "--prompt", "The ", "--n-chars", "40", "--seed", "7"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("The ") and len(first.rstrip("\n")) == 44
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # a seed makes it reproducible
    assert main(["generate", "--model", str(tmp_path / "missing.safetensors")]) == 1
    assert "missing.safetensors" in capsys.readouterr().err


def test_console_entry_point_in_subprocess(native_model, tokens, tmp_path):
    _, path = native_model
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-m", "rnnfast.cli", "info", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert r.returncode == 0 and "GRU" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "rnnfast.cli", "info", str(tmp_path / "missing.onnx")],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
        check=False,
    )
    assert r.returncode == 1 and "no such file" in r.stderr


def test_run_onnx_graph_with_several_inputs_by_name(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("s", "p")],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "two.onnx")
    )
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.full((2, 3), 2, np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out = str(tmp_path / "o.npz")
    assert (
        main(
            [
                "run",
                str(tmp_path / "two.onnx"),
                "--feed",
                f"a={tmp_path / 'a.npy'}",
                "--feed",
                f"b={tmp_path / 'b.npy'}",
                "--output",
                out,
            ]
        )
        == 0
    )
    z = np.load(out)
    assert np.array_equal(z["arr_0"], a + b) and np.array_equal(z["arr_1"], a * b)
    assert main(["run", str(tmp_path / "two.onnx"), "--input", str(tmp_path / "a.npy"), "--output", out]) == 1
    assert "--feed" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "two.onnx"), "--feed", "a", "--output", out]) == 1
    assert "NAME=FILE" in capsys.readouterr().err
