"""Training end to end: rnnfast and torch from the same weights and data track the same loss curve;
fit() trains, reports and saves; the character model learns well below its unigram entropy."""

import os

import numpy as np
import pytest
from conftest import assert_close

import rnnfast
from rnnfast import models, train

DATA = os.path.join(os.path.dirname(rnnfast.__file__), "data")


@pytest.fixture
def one_thread():
    """Small GEMMs: one thread is fastest and immune to a loaded machine (restored afterwards)."""
    before = rnnfast.get_num_threads()
    rnnfast.set_num_threads(1)
    torch = None
    try:
        import torch

        torch_before = torch.get_num_threads()
        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
    rnnfast.set_num_threads(before)
    if torch is not None:
        torch.set_num_threads(torch_before)


def _torch_lm(torch, cell, V, E, H, L, bid):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, E)
            self.rnn = getattr(torch.nn, cell)(E, H, L, bidirectional=bid)
            self.fc = torch.nn.Linear(H * (2 if bid else 1), V)

        def forward(self, x):
            return self.fc(self.rnn(self.emb(x))[0])

    return Net()


@pytest.mark.torch
@pytest.mark.parametrize(
    "cell,L,bid,opt_name", [("LSTM", 1, False, "Adam"), ("GRU", 2, True, "AdamW"), ("RNN", 1, False, "SGD")]
)
def test_loss_curve_tracks_torch(one_thread, cell, L, bid, opt_name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    V, E, H, T, B, steps = 17, 8, 24, 15, 6, 25
    tnet = _torch_lm(torch, cell, V, E, H, L, bid)
    rnn = getattr(rnnfast, cell)(E, H, L, bidirectional=bid)
    model = models.Sequential(
        {"emb": models.Embedding(V, E), "rnn": rnn, "fc": models.Linear(H * (2 if bid else 1), V)}
    )
    model.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})
    net = train.Trainable(model)
    kw = {"lr": 0.5, "momentum": 0.9, "nesterov": True} if opt_name == "SGD" else {"lr": 1e-2}
    topt = getattr(torch.optim, opt_name)(tnet.parameters(), **kw)
    ropt = getattr(train, opt_name)(net.parameters(), **kw)
    rng = np.random.default_rng(1)
    seq = rng.integers(0, V, 200)
    seq[1::3] = (seq[0::3][: len(seq[1::3])] + 1) % V  # some learnable structure
    t_losses, r_losses = [], []
    for s in range(steps):
        off = rng.integers(0, len(seq) - B - T - 1, B)
        x = np.stack([seq[o : o + T] for o in off], 1)
        y = np.stack([seq[o + 1 : o + T + 1] for o in off], 1)
        topt.zero_grad()
        logits = tnet(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1))
        loss.backward()
        tn = float(torch.nn.utils.clip_grad_norm_(tnet.parameters(), 0.5))
        topt.step()
        t_losses.append(loss.item())
        out = net.forward(x)
        value, d = train.cross_entropy(out, y)
        net.zero_grad()
        net.backward(d)
        rn = train.clip_grad_norm_(net.parameters(), 0.5)
        ropt.step()
        r_losses.append(value)
        assert abs(rn - tn) <= 2e-3 * tn + 1e-6, f"step {s}: grad norm {rn} vs torch {tn}"
    assert_close(r_losses, t_losses, rtol=2e-3, atol=1e-5, what="loss curve")
    assert r_losses[-1] < r_losses[0] - 0.3  # it did learn
    trained = net.sync()
    for k, v in tnet.state_dict().items():
        assert_close(trained.state_dict()[k], v.numpy(), rtol=5e-3, atol=5e-4, what=k)


def test_fit_regression_saves_native(one_thread, tmp_path):
    """Sequence of numbers -> next value (many-to-one, MSE): loss falls, the saved file reloads."""
    rng = np.random.default_rng(0)
    t = np.arange(0, 400) * 0.15
    wave = np.sin(t) + 0.5 * np.sin(0.31 * t)
    T = 20
    starts = rng.integers(0, len(wave) - T - 1, 64)
    x = np.stack([wave[s : s + T] for s in starts], 1)[..., None].astype(np.float32)  # (T, B, 1)
    y = np.array([[wave[s + T]] for s in starts], np.float32)  # (B, 1)
    model = models.Sequential(rnnfast.GRU(1, 16, seed=0), models.Linear(16, 1, seed=1), many_to_one=True)
    batches = [(x[:, i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    path = tmp_path / "reg.safetensors"
    log = tmp_path / "log.txt"
    net = train.Trainable(model)
    with open(log, "w") as f:
        hist = train.fit(
            net,
            batches,
            "mse",
            train.Adam(net.parameters(), lr=1e-2),
            epochs=40,
            clip_norm=5.0,
            save_path=str(path),
            log_every=40,
            file=f,
        )
    assert len(hist["loss"]) == 160 and all(np.isfinite(hist["loss"]))
    assert np.mean(hist["loss"][-8:]) < 0.1 * np.mean(hist["loss"][:4])
    assert "loss" in log.read_text() and "tok/s" in log.read_text()
    from rnnfast.loaders import native

    again = native.load(str(path))
    assert_close(again(x), model(x))


def test_many_to_one_classifier_bce(one_thread):
    """Classify whether a sequence's sum is positive: bidirectional LSTM, final states, BCE with logits."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 128, 2)).astype(np.float32)
    lengths = rng.integers(4, 13, 128)
    x[np.arange(12)[:, None] >= lengths[None, :]] = 0.0
    y = (x[..., 0].sum(0) > 0).astype(np.float32)[:, None]
    model = models.Sequential(
        rnnfast.LSTM(2, 12, bidirectional=True, seed=3), models.Linear(24, 1, seed=4), many_to_one=True
    )
    batches = [(x[:, i : i + 32], y[i : i + 32], lengths[i : i + 32]) for i in range(0, 128, 32)]
    net = train.Trainable(model)
    hist = train.fit(
        net, batches, "bce_with_logits", train.Adam(net.parameters(), lr=1e-2), epochs=30, clip_norm=1.0, progress=False
    )
    assert np.mean(hist["loss"][-4:]) < 0.35 < np.mean(hist["loss"][:4])
    acc = np.mean((model(x, lengths=lengths) > 0) == (y > 0.5))
    assert acc > 0.85


def test_char_model_learns_below_unigram_entropy(one_thread):
    with open(os.path.join(DATA, "corpus.txt"), encoding="utf-8") as f:
        text = f.read()[:12000]
    vocab = "".join(sorted(set(text)))
    ids = np.array([vocab.index(c) for c in text])
    h_uni = train.unigram_entropy(text)
    V, B, T = len(vocab), 16, 48
    model = models.Sequential(
        {
            "emb": models.Embedding(V, 16, seed=0),
            "rnn": rnnfast.LSTM(16, 96, seed=1),
            "fc": models.Linear(96, V, seed=2),
        }
    )
    n = (len(ids) - 1) // B
    xs, ys = ids[: n * B].reshape(B, n).T, ids[1 : n * B + 1].reshape(B, n).T
    batches = [(xs[t : t + T], ys[t : t + T]) for t in range(0, n - T + 1, T)]
    net = train.Trainable(model)
    hist = train.fit(
        net,
        batches,
        "cross_entropy",
        train.Adam(net.parameters(), lr=1e-2),
        epochs=25,
        clip_norm=1.0,
        stateful=True,
        progress=False,
    )
    first, last = np.mean(hist["loss"][:3]), np.mean(hist["loss"][-15:])
    assert first > h_uni - 0.2  # starts near log(V) / the unigram entropy
    assert last < h_uni - 0.8, f"loss {last:.3f} vs unigram entropy {h_uni:.3f}"


def test_shipped_char_model_generates():
    path = train.CHAR_LM_PATH
    if not os.path.exists(path):
        pytest.skip("char_lm.safetensors not trained yet (examples/char_lm.py)")
    model, vocab = train.load_char_lm(path)
    a = train.generate("To be, or not", 80, temperature=0.8, seed=5)
    b = train.generate("To be, or not", 80, temperature=0.8, seed=5)
    assert a == b and len(a) == 80 and set(a) <= set(vocab)
    greedy = train.generate("And God said, Let there be", 30, temperature=0.0)
    assert len(greedy) == 30 and greedy == train.generate("And God said, Let there be", 30, temperature=0.0)
    # the model knows its text: next-char loss on a passage well below the unigram entropy
    with open(os.path.join(DATA, "corpus.txt"), encoding="utf-8") as f:
        text = f.read()
    ids = np.array([vocab.index(c) for c in text[:2000]])
    logits = train.Trainable(model).forward(ids[:-1][:, None])
    loss, _ = train.cross_entropy(logits, ids[1:][:, None], need_grad=False)
    assert loss < train.unigram_entropy(text) - 1.0
    with pytest.raises(ValueError):
        train.generate("x", -1)


def test_generate_command_helpers(capsys):
    import argparse

    if not os.path.exists(train.CHAR_LM_PATH):
        pytest.skip("char_lm.safetensors not trained yet (examples/char_lm.py)")
    parser = argparse.ArgumentParser()
    train.add_generate_arguments(parser)
    args = parser.parse_args(["--prompt", "To be", "--n-chars", "40", "--seed", "3"])
    assert train.run_generate(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("To be") and len(out.rstrip("\n")) >= 45 - 1
    bad = parser.parse_args(["--model", "/nonexistent/model.safetensors"])
    assert train.run_generate(bad) == 1
