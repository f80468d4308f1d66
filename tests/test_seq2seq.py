"""Seq2Seq built from torch modules vs an equivalent torch implementation written here: greedy and beam
search decode the same tokens; source lengths and masks are respected."""

import math

import numpy as np
import pytest
from conftest import assert_close

from rnnfast.errors import ShapeError

torch = pytest.importorskip("torch")
nn = torch.nn

from rnnfast.seq2seq import Seq2Seq  # noqa: E402 -- after importorskip("torch")

V_SRC, V_TGT, END, START = 11, 13, 1, 0


class TorchSeq2Seq(nn.Module):
    """The reference: plain torch, one decoder step at a time."""

    def __init__(
        self,
        enc_cell,
        dec_cell,
        wiring,
        attn,
        bidir,
        layers,
        I=6,
        He=8,
        E=5,
        cells=True,
        seed=0,
        input_feeding=False,
        merge="concat",
    ):
        super().__init__()
        torch.manual_seed(seed)
        D = 2 if bidir else 1
        H = He * D if merge == "concat" else He
        self.D, self.H, self.layers, self.wiring, self.attn_kind = D, H, layers, wiring, attn
        self.input_feeding, self.merge = input_feeding, merge
        self.src_emb = nn.Embedding(V_SRC, I)
        self.encoder = getattr(nn, enc_cell)(I, He, layers, bidirectional=bidir)
        self.emb = nn.Embedding(V_TGT, E)
        M = D * He
        self.M = M
        Hc = 7
        in_size = E + (M if wiring == "bahdanau" else 0) + (Hc if input_feeding else 0)
        self.dec_cell = dec_cell
        if cells:
            Cell = getattr(nn, dec_cell + "Cell")
            self.decoder = nn.ModuleList([Cell(in_size if k == 0 else H, H) for k in range(layers)])
        else:
            self.decoder = getattr(nn, dec_cell)(in_size, H, layers)
        self.cells = cells
        if attn == "additive":
            self.Wq, self.Wk, self.v = nn.Linear(H, 9), nn.Linear(M, 9), nn.Linear(9, 1)
        elif attn == "general":
            self.Wg = nn.Linear(M, H)
        self.combine = nn.Linear(M + H, Hc) if wiring == "luong" else None
        self.out = nn.Linear(Hc if wiring == "luong" else H, V_TGT)
        with torch.no_grad():  # sharper distributions: decoding is then far from ties
            self.out.weight.mul_(4.0)

    def rnnfast_model(self):
        attention = {
            "additive": (
                "additive",
                getattr(self, "Wq", None),
                getattr(self, "Wk", None),
                getattr(self, "v", None),
            ),
            "general": ("general", getattr(self, "Wg", None)),
            "dot": "dot",
            "scaled_dot": "scaled_dot",
            None: None,
        }[self.attn_kind]
        return Seq2Seq.from_torch(
            self.encoder,
            self.decoder,
            self.emb,
            self.out,
            attention=attention,
            attention_type=self.wiring or "bahdanau",
            combine=self.combine,
            src_embedding=self.src_emb,
            input_feeding=self.input_feeding,
            bidirectional_merge=self.merge,
        )

    def encode(self, src, lengths):
        x = self.src_emb(src).transpose(0, 1)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, st = self.encoder(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=src.shape[1])
        h, c = st if isinstance(st, tuple) else (st, None)
        B = src.shape[0]

        def merge(s):
            s = s.reshape(self.layers, self.D, B, s.shape[-1])
            if self.D == 1:
                return s[:, 0]
            return torch.cat([s[:, 0], s[:, 1]], -1) if self.merge == "concat" else s[:, 0] + s[:, 1]

        h = merge(h)
        c = merge(c) if c is not None else torch.zeros_like(h)
        mask = torch.arange(src.shape[1])[None] < torch.as_tensor(lengths)[:, None]
        return out.transpose(0, 1), mask, (h, c)

    def attend(self, q, mem, mask):
        if self.attn_kind == "additive":
            e = self.v(torch.tanh(self.Wq(q)[:, None] + self.Wk(mem)))[..., 0]
        elif self.attn_kind == "general":
            e = torch.bmm(self.Wg(mem), q[:, :, None])[..., 0]
        else:
            e = torch.bmm(mem, q[:, :, None])[..., 0]
            if self.attn_kind == "scaled_dot":
                e = e / math.sqrt(mem.shape[2])
        e = e.masked_fill(~mask, float("-inf"))
        w = torch.softmax(e, -1)
        return torch.bmm(w[:, None], mem)[:, 0], w

    def step(self, y, state, feed, mem, mask):
        h, c = state
        parts = [self.emb(y)]
        w = None
        if self.wiring == "bahdanau":
            ctx, w = self.attend(h[-1], mem, mask)
            parts.append(ctx)
        if self.input_feeding:
            parts.append(feed)
        x = torch.cat(parts, 1)
        if self.cells:
            hs, cs = [], []
            for k, cell in enumerate(self.decoder):
                if self.dec_cell == "LSTM":
                    hk, ck = cell(x, (h[k], c[k]))
                    cs.append(ck)
                else:
                    hk = cell(x, h[k])
                hs.append(hk)
                x = hk
            h = torch.stack(hs)
            c = torch.stack(cs) if cs else c
        else:
            if self.dec_cell == "LSTM":
                out, (h, c) = self.decoder(x[None], (h.contiguous(), c.contiguous()))
            else:
                out, h = self.decoder(x[None], h.contiguous())
            x = out[0]
        top = x
        if self.wiring == "luong":
            ctx, w = self.attend(top, mem, mask)
            top = torch.tanh(self.combine(torch.cat([ctx, top], 1)))
            feed = top
        return self.out(top), (h, c), feed, w

    @torch.no_grad()
    def greedy(self, src, lengths, max_len):
        mem, mask, state = self.encode(src, lengths)
        B = src.shape[0]
        y = torch.full((B,), START)
        feed = torch.zeros(B, 7)
        toks, alive, attn = [], torch.ones(B, dtype=torch.bool), []
        for _ in range(max_len):
            logits, state, feed, w = self.step(y, state, feed, mem, mask)
            y = logits.argmax(1)
            toks.append(torch.where(alive, y, torch.tensor(END)))
            attn.append(w)
            alive &= y != END
            if not alive.any():
                break
        return torch.stack(toks, 1).numpy(), (None if attn[0] is None else torch.stack(attn, 1).numpy())

    @torch.no_grad()
    def beam(self, src, lengths, K, max_len, alpha):
        """Beam search, one source at a time, the algorithm stated in rnnfast.seq2seq's docstring."""
        results = []
        for b in range(src.shape[0]):
            mem, mask, (h, c) = self.encode(src[b : b + 1], lengths[b : b + 1])
            mem, mask = mem.expand(K, -1, -1), mask.expand(K, -1)
            h, c = h.expand(-1, K, -1).contiguous(), c.expand(-1, K, -1).contiguous()
            feed = torch.zeros(K, 7)
            y = torch.full((K,), START)
            scores = torch.full((K,), float("-inf"), dtype=torch.float64)
            scores[0] = 0
            seqs = [[] for _ in range(K)]
            finished = []
            for t in range(max_len):
                logits, (h, c), feed, _ = self.step(y, (h, c), feed, mem, mask)
                logp = torch.log_softmax(logits.double(), 1)
                cand = (scores[:, None] + logp).reshape(-1)
                order = torch.sort(-cand, stable=True).indices[: 2 * K]
                nxt = []
                for idx in order.tolist():
                    sc = cand[idx].item()
                    if sc == float("-inf"):
                        break
                    k, tok = divmod(idx, V_TGT)
                    if tok == END:
                        finished.append((sc / (t + 1) ** alpha, seqs[k] + [tok]))
                    else:
                        nxt.append((k, tok, sc))
                    if len(nxt) == K:
                        break
                if len(finished) >= K:
                    break
                if t == max_len - 1:
                    finished += [(sc / (t + 1) ** alpha, seqs[k] + [tok]) for k, tok, sc in nxt]
                    break
                par = torch.tensor([k for k, _, _ in nxt] + [0] * (K - len(nxt)))
                seqs = [seqs[k] + [tok] for k, tok, _ in nxt] + [[] for _ in range(K - len(nxt))]
                scores = torch.tensor([sc for _, _, sc in nxt] + [float("-inf")] * (K - len(nxt)), dtype=torch.float64)
                h, c, feed = h[:, par].contiguous(), c[:, par].contiguous(), feed[par]
                y = torch.tensor([tok for _, tok, _ in nxt] + [0] * (K - len(nxt)))
            best = max(finished, key=lambda r: r[0])  # max() keeps the earliest on ties
            results.append(best)
        return results


CONFIGS = [
    # enc, dec, wiring, attention, bidirectional, layers, cells, input_feeding, merge
    ("LSTM", "LSTM", "bahdanau", "additive", True, 1, True, False, "concat"),
    ("GRU", "GRU", "luong", "general", False, 2, False, False, "concat"),
    ("RNN", "RNN", None, None, False, 2, True, False, "concat"),
    ("GRU", "LSTM", "luong", "dot", True, 1, True, True, "concat"),
    ("LSTM", "GRU", "luong", "additive", True, 2, False, False, "sum"),
    ("LSTM", "GRU", "luong", "scaled_dot", False, 2, False, False, "concat"),
    ("LSTM", "LSTM", None, None, True, 2, False, False, "sum"),
    ("GRU", "GRU", "bahdanau", "dot", False, 1, True, False, "concat"),
]


def _data(seed, B=4, S=7):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, V_SRC, (B, S), generator=g)
    lengths = torch.tensor([S, 3, 5, 1][:B])
    return src, lengths


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(x) for x in c[:4]) + f"-L{c[5]}")
@pytest.mark.parametrize("use_c", [True, False])
def test_greedy_matches_torch(cfg, use_c):
    enc, dec, wiring, attn, bidir, layers, cells, feeding, merge = cfg
    ref = TorchSeq2Seq(enc, dec, wiring, attn, bidir, layers, cells=cells, input_feeding=feeding, merge=merge).eval()
    model = ref.rnnfast_model()
    src, lengths = _data(1)
    want, want_attn = ref.greedy(src, lengths, max_len=12)
    res = model.greedy(
        src.numpy(),
        lengths.numpy(),
        max_len=12,
        start_token=START,
        end_token=END,
        return_attention=True,
        use_c=use_c,
    )
    np.testing.assert_array_equal(res.tokens, want)
    for b in range(len(want)):
        hit = np.nonzero(want[b] == END)[0]
        assert res.lengths[b] == (hit[0] + 1 if hit.size else want.shape[1])
    if want_attn is not None:
        for b in range(len(want)):
            n = res.lengths[b]
            assert_close(res.attention[b, :n], want_attn[b, :n], atol=1e-5, what="attention")
            assert np.all(res.attention[b, :n, lengths[b] :] == 0)  # padded source never attended
    else:
        assert res.attention is None


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(x) for x in c[:4]) + f"-L{c[5]}")
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_matches_torch(cfg, alpha):
    enc, dec, wiring, attn, bidir, layers, cells, feeding, merge = cfg
    ref = TorchSeq2Seq(enc, dec, wiring, attn, bidir, layers, cells=cells, input_feeding=feeding, merge=merge).eval()
    model = ref.rnnfast_model()
    src, lengths = _data(2)
    want = ref.beam(src, lengths, K=3, max_len=10, alpha=alpha)
    res = model.beam_search(
        src.numpy(),
        lengths.numpy(),
        beam_size=3,
        max_len=10,
        start_token=START,
        end_token=END,
        length_penalty=alpha,
    )
    for b, (score, seq) in enumerate(want):
        assert res.lengths[b] == len(seq)
        np.testing.assert_array_equal(res.tokens[b, : len(seq)], seq)
        assert abs(res.scores[b] - score) < 1e-4


def test_beam_size_one_equals_greedy():
    ref = TorchSeq2Seq("GRU", "GRU", "bahdanau", "additive", True, 1, seed=3).eval()
    model = ref.rnnfast_model()
    src, lengths = _data(5)
    g = model.greedy(src.numpy(), lengths.numpy(), max_len=9, end_token=END)
    b = model.beam_search(src.numpy(), lengths.numpy(), beam_size=1, max_len=9, end_token=END)
    for i in range(len(src)):
        n = g.lengths[i]
        np.testing.assert_array_equal(b.tokens[i, :n], g.tokens[i, :n])
        assert abs(b.scores[i] - g.scores[i]) < 1e-4


@pytest.mark.parametrize("use_c", [True, False])
def test_padding_beyond_lengths_is_ignored(use_c):
    ref = TorchSeq2Seq("LSTM", "LSTM", "luong", "general", True, 1, seed=4).eval()
    model = ref.rnnfast_model()
    src, lengths = _data(6)
    a = model.greedy(src.numpy(), lengths.numpy(), max_len=8, end_token=END, return_attention=True, use_c=use_c)
    src2 = src.clone()
    for b, n in enumerate(lengths.tolist()):
        src2[b, n:] = (src2[b, n:] + 3) % V_SRC
    b2 = model.greedy(src2.numpy(), lengths.numpy(), max_len=8, end_token=END, return_attention=True, use_c=use_c)
    np.testing.assert_array_equal(a.tokens, b2.tokens)
    np.testing.assert_array_equal(a.attention, b2.attention)
    # batching does not change a row's result
    one = model.greedy(src[1:2].numpy(), lengths[1:2].numpy(), max_len=8, end_token=END, use_c=use_c)
    np.testing.assert_array_equal(one.tokens[0], a.tokens[1, : one.tokens.shape[1]])


def test_n_best_and_scores_sorted():
    ref = TorchSeq2Seq("GRU", "GRU", None, None, False, 1, seed=7).eval()
    model = ref.rnnfast_model()
    src, lengths = _data(8)
    nb = model.beam_search(
        src.numpy(), lengths.numpy(), beam_size=4, n_best=3, max_len=6, end_token=END, length_penalty=0.5
    )
    assert len(nb) == 4
    for hyps in nb:
        s = [h.scores[0] for h in hyps]
        assert s == sorted(s, reverse=True) and 1 <= len(hyps) <= 3


def test_no_end_token_runs_to_max_len():
    ref = TorchSeq2Seq("RNN", "RNN", None, None, False, 1, seed=9).eval()
    model = ref.rnnfast_model()
    src, lengths = _data(10)
    for use_c in (True, False):
        r = model.greedy(src.numpy(), lengths.numpy(), max_len=5, use_c=use_c)
        assert r.tokens.shape == (4, 5) and np.all(r.lengths == 5)
    r0 = model.greedy(src.numpy(), lengths.numpy(), max_len=0)
    assert r0.tokens.shape == (4, 0)


def test_errors():
    ref = TorchSeq2Seq("GRU", "GRU", "bahdanau", "additive", False, 1, seed=0).eval()
    model = ref.rnnfast_model()
    src, _lengths = _data(0)
    with pytest.raises(ShapeError, match="lengths"):
        model.greedy(src.numpy(), [9, 1, 1, 1])
    with pytest.raises(ShapeError, match="src"):
        model.greedy(src.numpy() + 100)
    with pytest.raises(ShapeError, match="end_token"):
        model.greedy(src.numpy(), end_token=V_TGT)
    with pytest.raises(ShapeError, match="beam_size"):
        model.beam_search(src.numpy(), beam_size=0)
    with pytest.raises(ShapeError, match="input_size"):
        Seq2Seq(model.encoder, model.decoder, np.zeros((V_TGT, 4)), model.out_weight, attention=model.attention)


def test_attention_heat_map_png(tmp_path):
    pytest.importorskip("matplotlib")
    from rnnfast.plotting import plot_attention

    ref = TorchSeq2Seq("GRU", "GRU", "bahdanau", "additive", True, 1, seed=11).eval()
    model = ref.rnnfast_model()
    src, lengths = _data(12)
    res = model.greedy(src.numpy(), lengths.numpy(), max_len=6, end_token=END, return_attention=True)
    n, s = int(res.lengths[0]), int(lengths[0])
    path = plot_attention(
        res.attention[0, :n, :s],
        tmp_path / "attn.png",
        source_labels=[f"s{i}" for i in range(s)],
        target_labels=[str(t) for t in res.tokens[0, :n]],
    )
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ShapeError, match="source_labels"):
        plot_attention(res.attention[0], tmp_path / "x.png", source_labels=["a"])


def test_plotting_without_matplotlib_says_so(monkeypatch, tmp_path):
    import sys

    from rnnfast.errors import UnsupportedError
    from rnnfast.plotting import plot_attention

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(UnsupportedError, match="matplotlib"):
        plot_attention(np.eye(3), tmp_path / "a.png")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(x) for x in c[:4]) + f"-L{c[5]}")
def test_c_loop_equals_python_loop(cfg):
    enc, dec, wiring, attn, bidir, layers, cells, feeding, merge = cfg
    ref = TorchSeq2Seq(
        enc, dec, wiring, attn, bidir, layers, cells=cells, input_feeding=feeding, merge=merge, seed=21
    ).eval()
    model = ref.rnnfast_model()
    assert model.c_supported()
    src, lengths = _data(22)
    kw = {"max_len": 9, "start_token": [0, 2, 3, 0], "end_token": END, "return_attention": True}
    c = model.greedy(src.numpy(), lengths.numpy(), use_c=True, **kw)
    p = model.greedy(src.numpy(), lengths.numpy(), use_c=False, **kw)
    np.testing.assert_array_equal(c.tokens, p.tokens)
    np.testing.assert_array_equal(c.lengths, p.lengths)
    assert_close(c.scores, p.scores, atol=1e-4)
    if p.attention is None:
        assert c.attention is None
    else:
        assert_close(c.attention, p.attention)


def test_empty_batch():
    ref = TorchSeq2Seq("GRU", "GRU", "bahdanau", "additive", False, 1, seed=0).eval()
    model = ref.rnnfast_model()
    src = np.zeros((0, 5), np.int64)
    for use_c in (True, False):
        r = model.greedy(src, np.zeros(0, np.int64), max_len=4, end_token=END, use_c=use_c)
        assert r.tokens.shape[0] == 0 and r.lengths.shape == (0,)

