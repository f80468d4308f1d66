"""PyTorch: from_torch for every supported module, whole models vs torch's forward (lengths via
pack_padded_sequence), .pt/.pth state_dicts read with weights_only=True, safetensors from torch."""

import os
import pickle

import numpy as np
import pytest

import rnnfast
from rnnfast import errors
from rnnfast import models as M
from rnnfast.loaders import load, save
from rnnfast.loaders.torch_models import from_torch, read_pt_state_dict
from tests.conftest import assert_close

torch = pytest.importorskip("torch")
nn = torch.nn


def _t(x):
    return torch.from_numpy(np.asarray(x))


@pytest.mark.parametrize(
    "module,make_x",
    [
        (nn.Embedding(11, 4, padding_idx=2), lambda r: r.integers(0, 11, (3, 5))),
        (nn.Linear(6, 3), lambda r: r.standard_normal((2, 4, 6)).astype(np.float32)),
        (nn.Linear(6, 3, bias=False), lambda r: r.standard_normal((4, 6)).astype(np.float32)),
        (nn.Softmax(dim=-1), lambda r: 10 * r.standard_normal((3, 5)).astype(np.float32)),
        (nn.Softmax(dim=0), lambda r: r.standard_normal((3, 5)).astype(np.float32)),
        (nn.LogSoftmax(dim=1), lambda r: r.standard_normal((3, 5)).astype(np.float32)),
        (nn.Sigmoid(), lambda r: 20 * r.standard_normal((3, 5)).astype(np.float32)),
        (nn.Tanh(), lambda r: r.standard_normal((3, 5)).astype(np.float32)),
        (nn.ReLU(), lambda r: r.standard_normal((3, 5)).astype(np.float32)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_single_modules_match_torch(module, make_x):
    torch.manual_seed(0)
    x = make_x(np.random.default_rng(0))
    ours = from_torch(module)
    with torch.no_grad():
        ref = module(_t(x)).numpy()
    assert_close(ours(x), ref)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_recurrent_modules_are_delegated_to_the_core(kind):
    torch.manual_seed(1)
    m = getattr(nn, kind)(5, 6, num_layers=2, bidirectional=True)
    layer = from_torch(m)
    assert type(layer).__name__ == kind
    x = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32)
    with torch.no_grad():
        ref_out, _ = m(_t(x))
    assert_close(layer(x)[0], ref_out.numpy())


def test_sequential_of_dense_layers():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3), nn.Softmax(-1)).eval()
    ours = from_torch(m)
    assert isinstance(ours, M.Sequential)
    assert [n for n, _ in ours.named_layers()] == ["0", "1", "3", "4"]  # Dropout dropped, names kept
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        assert_close(ours(x), m(_t(x)).numpy())
    assert sorted(ours.state_dict()) == sorted(m.state_dict())


class Classifier(nn.Module):
    """What users write: Embedding -> recurrent -> Linear, many-to-one on the final hidden state."""

    def __init__(self, kind="LSTM", bidirectional=True, num_layers=2, many_to_one=True):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.rnn = getattr(nn, kind)(
            8, 12, num_layers=num_layers, batch_first=True, bidirectional=bidirectional
        )
        D = 2 if bidirectional else 1
        self.fc = nn.Linear(12 * D, 4)
        self.out = nn.LogSoftmax(-1)
        self.many_to_one, self.D = many_to_one, D

    def forward(self, x, lengths=None):
        e = self.emb(x)
        if lengths is not None:
            e = nn.utils.rnn.pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False)
        y, h = self.rnn(e)
        if isinstance(h, tuple):
            h = h[0]
        if lengths is not None:
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        if self.many_to_one:
            z = torch.cat([h[-2], h[-1]], 1) if self.D == 2 else h[-1]
        else:
            z = y
        return self.out(self.fc(z))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("many_to_one", [True, False])
def test_custom_module_children_in_order_with_lengths(kind, many_to_one):
    torch.manual_seed(3)
    m = Classifier(kind, many_to_one=many_to_one).eval()
    ours = from_torch(m, children_in_order=True, many_to_one=many_to_one)
    x = np.random.default_rng(3).integers(0, 50, (4, 7))
    lengths = np.array([7, 3, 5, 1])
    with torch.no_grad():
        ref = m(_t(x), torch.from_numpy(lengths)).numpy()
        ref_full = m(_t(x)).numpy()
    got = ours(x, lengths=lengths)
    assert_close(got, ref)
    assert_close(ours(x), ref_full)
    # state_dict keys are torch's own, so the module's state_dict loads straight in
    assert sorted(ours.state_dict()) == sorted(m.state_dict())


def test_lead_entry_point_from_torch_dispatches_small_layers():
    emb = nn.Embedding(7, 3)
    layer = rnnfast.from_torch(emb)
    assert isinstance(layer, M.Embedding)
    assert_close(layer.weight, emb.weight.detach().numpy())


def test_unsupported_modules_are_named():
    with pytest.raises(errors.UnsupportedError, match="Conv1d"):
        from_torch(nn.Conv1d(2, 2, 3))
    with pytest.raises(errors.UnsupportedError, match="Conv1d"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.Conv1d(2, 2, 3)))
    with pytest.raises(errors.UnsupportedError, match="max_norm"):
        from_torch(nn.Embedding(4, 2, max_norm=1.0))
    with pytest.raises(errors.UnsupportedError, match="children_in_order"):
        from_torch(Classifier())


# ------------------------------------------------------------------------------------------ files
def _arch():
    return M.Sequential(
        {
            "emb": M.Embedding(50, 8),
            "rnn": rnnfast.LSTM(8, 12, num_layers=2, batch_first=True, bidirectional=True),
            "fc": M.Linear(24, 4),
            "out": M.LogSoftmax(-1),
        },
        many_to_one=True,
    )


def test_pt_state_dict_with_architecture(tmp_path):
    torch.manual_seed(4)
    m = Classifier().eval()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    ours = load(tmp_path / "m.pt", architecture=_arch())
    x = np.random.default_rng(4).integers(0, 50, (3, 6))
    with torch.no_grad():
        assert_close(ours(x), m(_t(x)).numpy())


@pytest.mark.parametrize(
    "wrap",
    ["plain", "checkpoint", "dataparallel", "positional_names", "pth_config_json", "legacy", "bfloat16"],
)
def test_pt_state_dict_variants(tmp_path, wrap):
    torch.manual_seed(5)
    m = Classifier().eval()
    sd = m.state_dict()
    arch = _arch()
    path = tmp_path / "m.pth"
    if wrap == "checkpoint":
        torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"lr": 0.1}}, path)
    elif wrap == "dataparallel":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    elif wrap == "legacy":  # the pre-1.6 (non-zip) serialization: cannot be memory-mapped
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif wrap == "bfloat16":  # widened to float32 exactly; compared with the bf16-rounded torch model
        m = m.to(torch.bfloat16).float()
        torch.save({k: v.to(torch.bfloat16) for k, v in m.state_dict().items()}, path)
    else:
        torch.save(sd, path)
    if (
        wrap == "positional_names"
    ):  # architecture layers named "0".."3": matched by parameter names and shapes
        arch = M.Sequential(
            M.Embedding(50, 8),
            rnnfast.LSTM(8, 12, num_layers=2, batch_first=True, bidirectional=True),
            M.Linear(24, 4),
            M.LogSoftmax(-1),
            many_to_one=True,
        )
    if wrap == "pth_config_json":
        import json

        (tmp_path / "arch.json").write_text(json.dumps(arch.config()))
        arch = str(tmp_path / "arch.json")
    ours = load(path, architecture=arch)
    x = np.random.default_rng(5).integers(0, 50, (3, 6))
    with torch.no_grad():
        assert_close(ours(x), m(_t(x)).numpy())


def test_pt_single_layer_state_dict(tmp_path):
    torch.manual_seed(6)
    gru = nn.GRU(4, 5, batch_first=True)
    torch.save(gru.state_dict(), tmp_path / "g.pt")
    ours = load(
        tmp_path / "g.pt",
        architecture={"type": "GRU", "input_size": 4, "hidden_size": 5, "batch_first": True},
    )
    x = np.random.default_rng(6).standard_normal((2, 3, 4)).astype(np.float32)
    with torch.no_grad():
        assert_close(ours(x)[0], gru(_t(x))[0].numpy())


def test_pt_without_architecture_or_mismatching(tmp_path):
    torch.save(Classifier().state_dict(), tmp_path / "m.pt")
    with pytest.raises(errors.FormatError, match="architecture"):
        load(tmp_path / "m.pt")
    wrong = M.Sequential(M.Embedding(50, 8), M.Linear(8, 4))
    with pytest.raises(errors.StateDictError, match=str(tmp_path / "m.pt")):
        load(tmp_path / "m.pt", architecture=wrong)


def test_pt_full_pickled_module_is_refused(tmp_path):
    torch.save(Classifier(), tmp_path / "whole.pt")  # a pickled nn.Module, not a state_dict
    with pytest.raises(errors.FormatError, match="weights_only"):
        read_pt_state_dict(tmp_path / "whole.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pt_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    torch.save({"weight": torch.zeros(2), "x": evil}, tmp_path / "evil.pt", pickle_protocol=2)
    with pytest.raises(errors.FormatError, match="evil.pt"):
        load(tmp_path / "evil.pt", architecture=M.Linear(2, 1))
    assert not marker.exists()
    # a raw pickle file renamed .pt
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(evil))
    with pytest.raises(errors.FormatError, match="raw.pt"):
        load(tmp_path / "raw.pt", architecture=M.Linear(2, 1))
    assert not marker.exists()


def test_safetensors_saved_by_torch_with_architecture(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(7)
    m = Classifier().eval()
    st.save_file(m.state_dict(), str(tmp_path / "m.safetensors"))
    ours = load(tmp_path / "m.safetensors", architecture=_arch())
    x = np.random.default_rng(7).integers(0, 50, (3, 6))
    with torch.no_grad():
        assert_close(ours(x), m(_t(x)).numpy())
    # and the converted model saved natively round-trips exactly
    save(ours, tmp_path / "native.safetensors")
    back = load(tmp_path / "native.safetensors")
    assert np.array_equal(back(x), ours(x))


class LastStep(nn.Module):
    """The other common many-to-one: the output at the last (valid) step."""

    def __init__(self, kind, bidirectional):
        super().__init__()
        self.emb = nn.Embedding(30, 6)
        self.rnn = getattr(nn, kind)(6, 7, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(7 * (2 if bidirectional else 1), 3)

    def forward(self, x, lengths=None):
        y, _ = self.rnn(self.emb(x))
        if lengths is None:
            return self.fc(y[:, -1])
        packed = nn.utils.rnn.pack_padded_sequence(
            self.emb(x), lengths, batch_first=True, enforce_sorted=False
        )
        y, _ = nn.utils.rnn.pad_packed_sequence(
            self.rnn(packed)[0], batch_first=True, total_length=x.shape[1]
        )
        return self.fc(y[torch.arange(x.shape[0]), lengths - 1])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_many_to_one_last_step(kind, bidirectional):
    torch.manual_seed(8)
    m = LastStep(kind, bidirectional).eval()
    ours = from_torch(m, children_in_order=True, many_to_one="last")
    x = np.random.default_rng(8).integers(0, 30, (4, 6))
    lengths = np.array([6, 2, 4, 1])
    with torch.no_grad():
        assert_close(ours(x), m(_t(x)).numpy(), what="no lengths")
        assert_close(ours(x, lengths=lengths), m(_t(x), torch.from_numpy(lengths)).numpy(), what="lengths")
    back = M.model_from_config(ours.config())
    assert back.many_to_one == "last"
