"""Sequence-to-sequence models: encoder (any rnnfast RNN/LSTM/GRU) -> decoder cell stack with optional
attention, an embedding on the decoder input and a Linear output layer; greedy and beam-search decoding.

Wirings (y = previous token, s = decoder state, h = top-layer hidden, M = encoder outputs)::

    none       h_t = dec(emb(y), s_{t-1});                      logits = W_o h_t + b_o
    bahdanau   c_t = attn(h_{t-1}, M);  h_t = dec([emb(y); c_t], s_{t-1});   logits = W_o h_t + b_o
    luong      h_t = dec(emb(y) [; h~_{t-1} if input_feeding], s_{t-1});  c_t = attn(h_t, M)
               h~_t = tanh(W_c [c_t; h_t] + b_c);               logits = W_o h~_t + b_o

The decoder starts from the encoder's final state (``init_state="encoder"``: per layer; the two directions
of a bidirectional encoder are concatenated (``bidirectional_merge="concat"``) or summed (``"sum"``);
an LSTM's cell state is passed to an LSTM decoder, zeros otherwise) or from zeros (``init_state="zeros"``).
The attention memory is the encoder output (B, S, D*H_enc), keys = values, masked by the source lengths.

Decoding. Greedy: argmax at every step, runs the whole loop in C (``rnnfast._attention.greedy_decode``) when the model
is supported there (every wiring, RNN/LSTM/GRU decoders) -- Python is not called per token.
Beam search: per source, ``beam_size`` hypotheses scored by the sum of log-probabilities; at each step
the best 2*beam_size candidates (in order) are examined: a candidate ending in ``end_token`` becomes a
finished hypothesis with normalised score ``score / length ** length_penalty`` (length counts the end
token), the others continue until ``beam_size`` continue. A source is done when it has ``beam_size``
finished hypotheses; at ``max_len`` the live ones are finished as they are. The best normalised score wins
(earliest on ties).

Shapes: sources are batch-first: token ids (B, S) when the model has a source embedding, else features
(B, S, I). Source lengths (B,). Outputs: tokens (B, T) int64 padded with ``end_token`` (or -1 when there
is none), lengths (B,) (generated tokens including the end token), scores (B,) (sum of log-probs;
beam search: the normalised score), attention (B, T, S) when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnfast.attention import (
    AdditiveAttention,
    AttentionMemory,
    DotAttention,
    GeneralAttention,
    ScaledDotAttention,
    _f32,
    _lengths,
    _linear,
)
from rnnfast.errors import DTypeError, FormatError, OutOfMemoryError, ShapeError, StateDictError, UnsupportedError

__all__ = ["DecodeResult", "Seq2Seq"]


@dataclass
class DecodeResult:
    """tokens (B, T) int64; lengths (B,) int64; scores (B,) float64; attention (B, T, S) float32 or None."""

    tokens: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    attention: np.ndarray | None = None


_MAX_LEN = 2**31 - 1  # the C decoding loop counts steps in an int


def _int_arg(value: Any, name: str) -> int:
    """A Python int from an integer (or a whole float); DTypeError naming the argument otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise DTypeError(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, (float, np.floating)) and not (np.isfinite(value) and value == int(value)):
        raise DTypeError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def _np(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _mode(layer: Any) -> str:
    return getattr(layer, "mode", type(layer).__name__)


def _is_lstm(layer: Any) -> bool:
    return _mode(layer) == "LSTM"


class Seq2Seq:
    """Encoder-decoder with optional attention (see the module docstring for the equations).

    Parameters
    ----------
    encoder : rnnfast RNN / LSTM / GRU (any batch_first, bidirectional allowed, no proj_size)
    decoder : rnnfast RNN / LSTM / GRU, unidirectional: the decoder cell stack (num_layers cells)
    embedding : (V_tgt, E) decoder input embedding
    out_weight, out_bias : (V_tgt, H_out), (V_tgt,) or None: the output Linear
    attention : None or an rnnfast attention layer (AdditiveAttention, DotAttention, ScaledDotAttention,
        GeneralAttention); query = decoder top hidden, keys = values = encoder outputs
    attention_type : "bahdanau" or "luong" (ignored without attention)
    combine_weight, combine_bias : Luong's W_c (H_c, Dv + H_dec) and b_c (H_c,)
    input_feeding : Luong's input feeding (decoder input [emb; h~_{t-1}])
    src_embedding : (V_src, I) or None: when given, sources are token ids
    init_state : "encoder" or "zeros";  bidirectional_merge : "concat" or "sum"
    """

    def __init__(
        self,
        encoder: Any,
        decoder: Any,
        embedding: Any,
        out_weight: Any,
        out_bias: Any = None,
        attention: Any = None,
        attention_type: str = "bahdanau",
        combine_weight: Any = None,
        combine_bias: Any = None,
        input_feeding: bool = False,
        src_embedding: Any = None,
        init_state: str = "encoder",
        bidirectional_merge: str = "concat",
    ) -> None:
        self.encoder, self.decoder = encoder, decoder
        if getattr(decoder, "bidirectional", False):
            raise UnsupportedError("decoder: expected a unidirectional stack, got bidirectional=True")
        if getattr(decoder, "proj_size", 0) or getattr(encoder, "proj_size", 0):
            raise UnsupportedError("encoder/decoder: proj_size is not supported in Seq2Seq")
        self.embedding = _f32(_np(embedding), "embedding", 2)
        self.out_weight = _f32(_np(out_weight), "out_weight", 2)
        self.out_bias = None if out_bias is None else _f32(_np(out_bias), "out_bias", 1)
        self.src_embedding = None if src_embedding is None else _f32(_np(src_embedding), "src_embedding", 2)
        self.attention = attention
        self.attention_type = None if attention is None else str(attention_type).lower()
        if self.attention_type not in (None, "bahdanau", "luong"):
            raise ShapeError(f"attention_type: expected 'bahdanau' or 'luong', got {attention_type!r}")
        self.input_feeding = bool(input_feeding) and self.attention_type == "luong"
        if init_state not in ("encoder", "zeros"):
            raise ShapeError(f"init_state: expected 'encoder' or 'zeros', got {init_state!r}")
        if bidirectional_merge not in ("concat", "sum"):
            raise ShapeError(f"bidirectional_merge: expected 'concat' or 'sum', got {bidirectional_merge!r}")
        self.init_state, self.bidirectional_merge = init_state, bidirectional_merge
        self.combine_weight = self.combine_bias = None
        H = decoder.hidden_size
        D_enc = 2 if getattr(encoder, "bidirectional", False) else 1
        self.memory_size = D_enc * encoder.hidden_size
        E = self.embedding.shape[1]
        h_out = H
        if self.attention_type == "luong":
            if combine_weight is None:
                raise ShapeError("combine_weight: expected W_c (H_c, Dv + H) for Luong attention, got None")
            self.combine_weight = _f32(_np(combine_weight), "combine_weight", 2)
            if self.combine_weight.shape[1] != self.memory_size + H:
                raise ShapeError(
                    f"combine_weight: expected (H_c, {self.memory_size + H}), got {self.combine_weight.shape}"
                )
            self.combine_bias = None if combine_bias is None else _f32(_np(combine_bias), "combine_bias", 1)
            h_out = self.combine_weight.shape[0]
        want_in = E + (self.memory_size if self.attention_type == "bahdanau" else 0)
        want_in += h_out if self.input_feeding else 0
        if decoder.input_size != want_in:
            raise ShapeError(
                f"decoder.input_size: expected {want_in} (embedding {E}"
                f"{' + context' if self.attention_type == 'bahdanau' else ''}"
                f"{' + feed' if self.input_feeding else ''}), got {decoder.input_size}"
            )
        if self.out_weight.shape[1] != h_out:
            raise ShapeError(f"out_weight: expected (V, {h_out}), got {self.out_weight.shape}")
        if self.embedding.shape[0] < self.out_weight.shape[0]:
            raise ShapeError(
                f"embedding: expected at least {self.out_weight.shape[0]} rows (every output token is "
                f"fed back), got {self.embedding.shape}"
            )
        if self.out_bias is not None and self.out_bias.shape != (self.out_weight.shape[0],):
            raise ShapeError(f"out_bias: expected ({self.out_weight.shape[0]},), got {self.out_bias.shape}")
        if self.src_embedding is not None and self.src_embedding.shape[1] != encoder.input_size:
            raise ShapeError(f"src_embedding: expected (V_src, {encoder.input_size}), got {self.src_embedding.shape}")
        if init_state == "encoder":
            enc_h = encoder.hidden_size * (D_enc if bidirectional_merge == "concat" else 1)
            if encoder.num_layers != decoder.num_layers or enc_h != H:
                raise ShapeError(
                    f"decoder: starting from the encoder's final state needs {encoder.num_layers} "
                    f"layers of hidden size {enc_h}, got {decoder.num_layers} x {H} "
                    "(or use init_state='zeros')"
                )
        self.vocab_size = self.out_weight.shape[0]
        self.feed_size = h_out

    # ------------------------------------------------------------------------------------------------
    # architecture and parameters (the native format; pickling; Dask)
    # ------------------------------------------------------------------------------------------------
    _ARRAYS = ("embedding", "out_weight", "out_bias", "combine_weight", "combine_bias", "src_embedding")

    def config(self) -> dict[str, Any]:
        """JSON-able architecture; ``rnnfast.model_from_config`` rebuilds it (weights then by state_dict)."""
        return {
            "type": "Seq2Seq",
            "encoder": self.encoder.config(),
            "decoder": self.decoder.config(),
            "attention": None if self.attention is None else self.attention.config(),
            "attention_type": self.attention_type or "bahdanau",
            "input_feeding": self.input_feeding,
            "init_state": self.init_state,
            "bidirectional_merge": self.bidirectional_merge,
            "arrays": {n: list(getattr(self, n).shape) for n in self._ARRAYS if getattr(self, n) is not None},
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter: ``encoder.*``, ``decoder.*``, ``attention.*`` and the arrays."""
        sd = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        sd.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        if self.attention is not None:
            sd.update({f"attention.{k}": v for k, v in self.attention.state_dict().items()})
        sd.update({n: getattr(self, n).copy() for n in self._ARRAYS if getattr(self, n) is not None})
        return sd

    def load_state_dict(self, state: Any, strict: bool = True) -> None:
        if not hasattr(state, "items"):
            raise StateDictError(f"state: expected a mapping of names to arrays, got {type(state).__name__}")
        parts: dict[str, dict[str, Any]] = {"encoder": {}, "decoder": {}, "attention": {}}
        arrays, unexpected = {}, []
        for k, v in state.items():
            head, _, rest = str(k).partition(".")
            if head in parts and rest and (head != "attention" or self.attention is not None):
                parts[head][rest] = v
            elif k in self._ARRAYS and getattr(self, k) is not None:
                arrays[k] = v
            else:
                unexpected.append(k)
        problems = []
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(map(str, unexpected)))
        missing = [n for n in self._ARRAYS if getattr(self, n) is not None and n not in arrays]
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        new = {}
        for n, v in arrays.items():
            try:
                a = np.asarray(_np(v))
            except (ValueError, TypeError) as exc:  # ragged nested lists
                problems.append(f"{n}: not an array ({exc})")
                continue
            if a.dtype.kind not in "fiu" or a.shape != getattr(self, n).shape:
                problems.append(f"{n}: expected shape {getattr(self, n).shape} of reals, got {a.shape} {a.dtype}")
            else:
                new[n] = np.ascontiguousarray(a, dtype=np.float32)
        if problems:
            raise StateDictError("Seq2Seq.load_state_dict: " + "; ".join(problems))
        # all or nothing: a part that refuses its weights puts back the parts already loaded
        subs = [(self.encoder, "encoder"), (self.decoder, "decoder")]
        if self.attention is not None:
            subs.append((self.attention, "attention"))
        done: list[tuple[Any, dict]] = []
        for part, key in subs:
            old = part.state_dict()
            try:
                part.load_state_dict(parts[key], strict)
            except Exception:
                for prev, prev_state in reversed(done):
                    prev.load_state_dict(prev_state)
                raise
            done.append((part, old))
        for n, a in new.items():
            setattr(self, n, a)

    def __reduce__(self):
        from .loaders.native import reduce_model

        return reduce_model(self)

    @classmethod
    def from_config(cls, cfg: Any) -> Seq2Seq:
        """Build from ``config()`` with zero arrays and freshly initialised layers (load weights after)."""
        from .attention import attention_from_config
        from .models import model_from_config

        arrays = cfg.get("arrays")
        if not isinstance(arrays, dict) or not all(
            isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)
            for v in arrays.values()
        ):
            raise FormatError(f"config of 'Seq2Seq': 'arrays' must map names to shapes, got {arrays!r}")
        unknown = set(arrays) - set(cls._ARRAYS)
        if unknown:
            raise FormatError(f"config of 'Seq2Seq': unknown arrays {sorted(unknown)}")
        z = {n: np.zeros(tuple(shape), np.float32) for n, shape in arrays.items()}
        attn = cfg.get("attention")
        return cls(
            model_from_config(cfg.get("encoder")),
            model_from_config(cfg.get("decoder")),
            z.get("embedding"),
            z.get("out_weight"),
            z.get("out_bias"),
            attention=None if attn is None else attention_from_config(attn),
            attention_type=cfg.get("attention_type", "bahdanau"),
            combine_weight=z.get("combine_weight"),
            combine_bias=z.get("combine_bias"),
            input_feeding=bool(cfg.get("input_feeding", False)),
            src_embedding=z.get("src_embedding"),
            init_state=cfg.get("init_state", "encoder"),
            bidirectional_merge=cfg.get("bidirectional_merge", "concat"),
        )

    # ------------------------------------------------------------------------------------------------
    # construction from torch
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_torch(
        cls,
        encoder: Any,
        decoder: Any,
        embedding: Any,
        out: Any,
        attention: Any = None,
        attention_type: str = "bahdanau",
        combine: Any = None,
        src_embedding: Any = None,
        **kwargs: Any,
    ) -> Seq2Seq:
        """From torch modules.

        encoder: nn.RNN/LSTM/GRU. decoder: nn.RNN/LSTM/GRU (unidirectional) or an nn.ModuleList of
        nn.RNNCell/LSTMCell/GRUCell (a cell stack: layer k's output feeds layer k+1). embedding,
        src_embedding: nn.Embedding (or arrays). out, combine: nn.Linear. attention: an rnnfast attention
        layer, the string "dot" / "scaled_dot", or torch modules: ``("additive", W_q, W_k, v)`` (score =
        v(tanh(W_q(q) + W_k(k)))) or ``("general", W)`` (score = q . W(k)).
        """
        from rnnfast.loaders.torch import from_torch_rnn

        enc = from_torch_rnn(encoder)
        dec = _decoder_from_torch(decoder)
        attn = _attention_from_torch(attention)
        emb = embedding.weight if hasattr(embedding, "weight") else embedding
        semb = src_embedding.weight if hasattr(src_embedding, "weight") else src_embedding
        cw = cb = None
        if combine is not None:
            cw, cb = combine.weight, combine.bias
        return cls(
            enc,
            dec,
            emb,
            out.weight,
            out.bias,
            attention=attn,
            attention_type=attention_type,
            combine_weight=cw,
            combine_bias=cb,
            src_embedding=semb,
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------------
    # encoder
    # ------------------------------------------------------------------------------------------------
    def encode(self, src: Any, src_lengths: Any = None):
        """Run the encoder. Returns (memory (AttentionMemory or None), initial decoder state, B, S).

        The state is a tuple (h (L, B, H), c (L, B, H) or None).
        """
        if self.src_embedding is not None:
            ids = np.asarray(src)
            if ids.dtype.kind not in "iu":
                raise DTypeError(f"src: expected integer token ids (B, S), got dtype {ids.dtype}")
            if ids.ndim != 2:
                raise ShapeError(f"src: expected token ids (B, S), got shape {ids.shape}")
            if ids.size and (ids.min() < 0 or ids.max() >= self.src_embedding.shape[0]):
                raise ShapeError(
                    f"src: expected ids in [0, {self.src_embedding.shape[0]}), got [{ids.min()}, {ids.max()}]"
                )
            x = self.src_embedding[ids]
        else:
            x = _f32(src, "src", 3)
            if x.shape[2] != self.encoder.input_size:
                raise ShapeError(f"src: expected (B, S, {self.encoder.input_size}), got {x.shape}")
        B, S = x.shape[:2]
        lengths = _lengths(src_lengths, B, S)
        xin = x if self.encoder.batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))
        if _is_lstm(self.encoder):
            out, (h_n, c_n) = self.encoder(xin, lengths=lengths)
        else:
            out, h_n = self.encoder(xin, lengths=lengths)
            c_n = None
        mem = None
        if self.attention is not None:
            keys = out if self.encoder.batch_first else out.transpose(1, 0, 2)
            mem = self.attention.precompute(np.ascontiguousarray(keys), lengths=lengths)
        L, H = self.decoder.num_layers, self.decoder.hidden_size
        if self.init_state == "zeros":
            h0 = np.zeros((L, B, H), np.float32)
            c0 = np.zeros((L, B, H), np.float32) if _is_lstm(self.decoder) else None
            return mem, (h0, c0), B, S
        D = 2 if getattr(self.encoder, "bidirectional", False) else 1

        def merge(s):
            s = s.reshape(self.encoder.num_layers, D, B, s.shape[-1])
            if D == 1:
                return np.ascontiguousarray(s[:, 0])
            if self.bidirectional_merge == "sum":
                return np.ascontiguousarray(s[:, 0] + s[:, 1])
            return np.ascontiguousarray(np.concatenate([s[:, 0], s[:, 1]], axis=-1))

        h0 = merge(h_n)
        c0 = None
        if _is_lstm(self.decoder):
            c0 = merge(c_n) if c_n is not None else np.zeros_like(h0)
        return mem, (h0, c0), B, S

    # ------------------------------------------------------------------------------------------------
    # one decoder step (Python path: beam search, and greedy when the C loop is unavailable)
    # ------------------------------------------------------------------------------------------------
    def _step(self, y: np.ndarray, state, feed, mem: AttentionMemory | None):
        h, c = state
        parts = [self.embedding[y]]
        w = None
        if self.attention_type == "bahdanau":
            ctx, w = self.attention.attend(h[-1], mem)
            parts.append(ctx)
        if self.input_feeding:
            parts.append(feed)
        x = np.concatenate(parts, axis=1)[None] if len(parts) > 1 else parts[0][None]
        if _is_lstm(self.decoder):
            out, (h, c) = self.decoder(x, (h, c))
        else:
            out, h = self.decoder(x, h)
        top = out[0]
        if self.attention_type == "luong":
            ctx, w = self.attention.attend(top, mem)
            top = np.tanh(_linear(np.concatenate([ctx, top], axis=1), self.combine_weight, self.combine_bias, None))
            feed = top
        logits = _linear(top, self.out_weight, self.out_bias, None)
        return logits, (h, c), feed, w

    def _start(self, start_token: Any, B: int) -> np.ndarray:
        a = np.asarray(start_token)
        whole = a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a))
        if a.dtype.kind not in "iu" and not whole:
            raise DTypeError(f"start_token: expected integer ids, got {start_token!r}")
        if a.dtype.kind == "f" and a.size and np.max(np.abs(a)) >= 2**62:
            raise ShapeError(f"start_token: expected ids in [0, {self.embedding.shape[0]}), got {start_token}")
        try:
            y = np.broadcast_to(a, (B,)).astype(np.int64)
        except ValueError:
            raise ShapeError(f"start_token: expected one id or ({B},) ids, got shape {a.shape}") from None
        if y.size and (y.min() < 0 or y.max() >= self.embedding.shape[0]):
            raise ShapeError(f"start_token: expected ids in [0, {self.embedding.shape[0]}), got {start_token}")
        return y

    def _check_end(self, end_token: Any) -> int:
        if end_token is None:
            return -1
        e = _int_arg(end_token, "end_token")
        if not 0 <= e < self.vocab_size:
            raise ShapeError(f"end_token: expected an id in [0, {self.vocab_size}), got {end_token}")
        return e

    # ------------------------------------------------------------------------------------------------
    # greedy decoding
    # ------------------------------------------------------------------------------------------------
    def greedy(
        self,
        src: Any,
        src_lengths: Any = None,
        max_len: int = 50,
        start_token: Any = 0,
        end_token: int | None = None,
        return_attention: bool = False,
        use_c: bool = True,
    ) -> DecodeResult:
        """Greedy decoding. Returns a :class:`DecodeResult` (tokens (B, T<=max_len), lengths, scores =
        sum of log-probabilities of the chosen tokens, attention (B, T, S) if asked and attention is on).

        ``use_c=False`` forces the Python step loop (the C loop gives the same tokens)."""
        max_len = _int_arg(max_len, "max_len")
        if not 0 <= max_len <= _MAX_LEN:
            raise ShapeError(f"max_len: expected in [0, {_MAX_LEN}], got {max_len}")
        end = self._check_end(end_token)
        mem, state, B, S = self.encode(src, src_lengths)
        y = self._start(start_token, B)
        if use_c and self.c_supported():
            try:  # the C loop's outputs are allocated for max_len steps up front
                return self._greedy_c(mem, state, y, max_len, end, bool(return_attention))
            except MemoryError as exc:
                if isinstance(exc, OutOfMemoryError):
                    raise
                raise OutOfMemoryError(
                    f"greedy: cannot allocate the outputs of {B} sequences x max_len={max_len} steps"
                ) from exc
        return self._greedy_python(mem, state, y, max_len, end, return_attention, B, S)

    def c_supported(self) -> bool:
        """Whether greedy decoding can run its loop in C (PyTorch-semantics decoder cells, the four
        attention forms)."""
        d = self.decoder
        if _mode(d) not in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU"):
            return False
        if getattr(d, "activations", None) is not None or getattr(d, "clip", None) is not None:
            return False
        if getattr(d, "input_forget", False) or not hasattr(d, "state_dict"):
            return False
        if any(k.startswith("weight_peep") for k in d.state_dict()):
            return False
        return self.attention is None or isinstance(self.attention, (AdditiveAttention, DotAttention, GeneralAttention))

    def _decoder_plan(self):
        from rnnfast import _attention

        d = self.decoder
        params = getattr(d, "_params", None)
        cached = getattr(self, "_plan_cache", None)
        if cached is not None and params is not None and cached[0] is params:
            return cached[1]
        st = params if params is not None else d.state_dict()
        plan = _attention.DecoderPlan(
            _mode(d),
            bool(getattr(d, "reset_after", True)),
            d.num_layers,
            d.input_size,
            d.hidden_size,
            dict(st),
            bool(d.bias),
        )
        self._plan_cache = (params, plan)
        return plan

    def _greedy_c(self, mem, state, y, max_len, end, return_attention) -> DecodeResult:
        from rnnfast import _attention
        from rnnfast.attention import _threads

        plan = self._decoder_plan()
        wiring = {None: 0, "bahdanau": 1, "luong": 2}[self.attention_type]
        attn = self.attention
        kind, wq, ab, av, scale = 1, None, None, None, 1.0
        kp = values = lens = mask = None
        if attn is not None:
            st = attn._state
            if isinstance(attn, AdditiveAttention):
                kind, wq, ab, av = 0, st["query_weight"], st.get("bias"), st["v"]
            else:
                scale = attn._scale(mem.keys_proj.shape[2])
            kp, values, lens, mask = mem.keys_proj, mem.values, mem.lengths, mem.mask
        h0, c0 = state
        tokens, lengths, scores, att = _attention.greedy_decode(
            plan,
            wiring,
            self.input_feeding,
            self.embedding,
            self.out_weight,
            self.out_bias,
            self.combine_weight,
            self.combine_bias,
            kind,
            wq,
            ab,
            av,
            scale,
            kp,
            values,
            lens,
            mask,
            np.ascontiguousarray(h0, np.float32),
            None if c0 is None else np.ascontiguousarray(c0, np.float32),
            np.ascontiguousarray(y, np.int64),
            max_len,
            end,
            return_attention and attn is not None,
            _threads(None),
        )
        return DecodeResult(tokens, lengths, scores, att)

    def _greedy_python(self, mem, state, y, max_len, end, return_attention, B, S) -> DecodeResult:
        feed = np.zeros((B, self.feed_size), np.float32) if self.input_feeding else None
        # outputs grow with the steps actually run (max_len is only a bound: nothing is allocated for it)
        cols: list[np.ndarray] = []
        att_cols: list[np.ndarray] = []
        want_attn = return_attention and self.attention is not None
        lengths = np.zeros(B, np.int64)
        scores = np.zeros(B, np.float64)
        alive = np.ones(B, bool)
        for _ in range(max_len):
            if not alive.any():
                break
            logits, state, feed, w = self._step(y, state, feed, mem)
            y = np.argmax(logits, axis=1)
            lse = _logsumexp(logits)
            cols.append(np.where(alive, y, end).astype(np.int64))
            scores[alive] += (logits[np.arange(B), y] - lse)[alive]
            lengths[alive] += 1
            if want_attn:
                att_cols.append(np.where(alive[:, None], w, 0.0).astype(np.float32))
            if end >= 0:
                alive &= y != end
        T = len(cols)
        tokens = np.stack(cols, axis=1) if T else np.full((B, 0), end, np.int64)
        attn = None
        if want_attn:
            attn = np.stack(att_cols, axis=1) if T else np.zeros((B, 0, S), np.float32)
        return DecodeResult(tokens, lengths, scores, attn)

    # ------------------------------------------------------------------------------------------------
    # beam search
    # ------------------------------------------------------------------------------------------------
    def beam_search(
        self,
        src: Any,
        src_lengths: Any = None,
        beam_size: int = 4,
        max_len: int = 50,
        start_token: Any = 0,
        end_token: int | None = None,
        length_penalty: float = 0.0,
        n_best: int = 1,
        return_attention: bool = False,
    ) -> DecodeResult | list[list[DecodeResult]]:
        """Batched beam search (all B*beam_size hypotheses step together).

        Returns the best hypothesis per source as a DecodeResult (scores = normalised scores), or with
        n_best > 1 a list (per source) of up to n_best DecodeResults of one row each, best first.
        """
        K = _int_arg(beam_size, "beam_size")
        if K < 1:
            raise ShapeError(f"beam_size: expected >= 1, got {beam_size}")
        max_len = _int_arg(max_len, "max_len")
        if max_len < 1:
            raise ShapeError(f"max_len: expected >= 1, got {max_len}")
        n_best = _int_arg(n_best, "n_best")
        if not 1 <= n_best <= K:
            raise ShapeError(f"n_best: expected in [1, {K}], got {n_best}")
        end = self._check_end(end_token)
        alpha = float(length_penalty)
        mem, (h, c), B, S = self.encode(src, src_lengths)
        rep = np.repeat(np.arange(B), K)
        if mem is not None:
            mem = mem.select(rep)
        h = np.ascontiguousarray(h[:, rep])
        c = None if c is None else np.ascontiguousarray(c[:, rep])
        y = np.repeat(self._start(start_token, B), K)
        feed = np.zeros((B * K, self.feed_size), np.float32) if self.input_feeding else None
        V = self.vocab_size
        scores = np.full((B, K), -np.inf)
        scores[:, 0] = 0.0
        seqs = np.zeros((B, K, 0), np.int64)
        attn_hist = np.zeros((B, K, 0, S), np.float32)
        want_attn = return_attention and self.attention is not None
        finished: list[list[tuple[float, float, np.ndarray, np.ndarray | None]]] = [[] for _ in range(B)]
        done = np.zeros(B, bool)
        for t in range(int(max_len)):
            logits, (h, c), feed, w = self._step(y, (h, c), feed, mem)
            logp = logits.astype(np.float64)
            logp -= _logsumexp(logp)[:, None]
            cand = (scores[:, :, None] + logp.reshape(B, K, V)).reshape(B, K * V)
            parent = np.zeros((B, K), np.int64)
            new_tok = np.zeros((B, K), np.int64)
            new_scores = np.full((B, K), -np.inf)
            last = t == int(max_len) - 1
            for b in range(B):
                if done[b]:
                    continue
                order = np.argsort(-cand[b], kind="stable")[: 2 * K]
                n = 0
                for idx in order:
                    sc = cand[b, idx]
                    if sc == -np.inf:
                        break
                    k, tok = divmod(int(idx), V)
                    if tok == end:
                        seq = np.append(seqs[b, k], tok)
                        at = None
                        if want_attn:
                            at = np.concatenate([attn_hist[b, k], w[b * K + k][None]], axis=0)
                        finished[b].append((sc / (t + 1) ** alpha, sc, seq, at))
                    else:
                        parent[b, n], new_tok[b, n], new_scores[b, n] = k, tok, sc
                        n += 1
                    if n == K:
                        break
                if len(finished[b]) >= K:
                    done[b] = True
            # reorder the beams
            flat_parent = (np.arange(B)[:, None] * K + parent).reshape(-1)
            seqs = np.concatenate([seqs[np.arange(B)[:, None], parent], new_tok[:, :, None]], axis=2)
            if want_attn:
                wa = w.reshape(B, K, S)[np.arange(B)[:, None], parent]
                attn_hist = np.concatenate([attn_hist[np.arange(B)[:, None], parent], wa[:, :, None]], axis=2)
            scores = new_scores
            scores[done] = -np.inf
            if last:
                for b in range(B):
                    if done[b]:
                        continue
                    for k in range(K):
                        if scores[b, k] > -np.inf:
                            finished[b].append(
                                (
                                    scores[b, k] / (t + 1) ** alpha,
                                    scores[b, k],
                                    seqs[b, k].copy(),
                                    attn_hist[b, k].copy() if want_attn else None,
                                )
                            )
                break
            if done.all():
                break
            h = np.ascontiguousarray(h[:, flat_parent])
            c = None if c is None else np.ascontiguousarray(c[:, flat_parent])
            feed = None if feed is None else np.ascontiguousarray(feed[flat_parent])
            y = new_tok.reshape(-1)
        results = []
        for b in range(B):
            hyps = sorted(finished[b], key=lambda r: -r[0])[:n_best]  # sorted() is stable: earliest on ties
            results.append(hyps)
        if n_best > 1:
            return [
                [
                    DecodeResult(
                        np.array([r[2]]),
                        np.array([len(r[2])]),
                        np.array([r[0]]),
                        None if r[3] is None else r[3][None],
                    )
                    for r in hyps
                ]
                for hyps in results
            ]
        T = max((len(h[0][2]) for h in results if h), default=0)
        fill = end if end >= 0 else -1
        tokens = np.full((B, T), fill, np.int64)
        lengths = np.zeros(B, np.int64)
        out_scores = np.full(B, -np.inf)
        attn = np.zeros((B, T, S), np.float32) if want_attn else None
        for b, hyps in enumerate(results):
            if not hyps:
                continue
            norm, _, seq, at = hyps[0]
            tokens[b, : len(seq)] = seq
            lengths[b] = len(seq)
            out_scores[b] = norm
            if attn is not None:
                attn[b, : len(seq)] = at
        return DecodeResult(tokens, lengths, out_scores, attn)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=1)
    return m + np.log(np.sum(np.exp(x - m[:, None]), axis=1))


def _decoder_from_torch(decoder: Any):
    from rnnfast.layers import GRU, LSTM, RNN
    from rnnfast.loaders.torch import from_torch_rnn

    name = type(decoder).__name__
    if name in ("RNN", "LSTM", "GRU"):
        return from_torch_rnn(decoder)
    cells = list(decoder) if hasattr(decoder, "__iter__") else [decoder]
    if not cells:
        raise ShapeError("decoder: expected at least one cell")
    kinds = {type(c).__name__ for c in cells}
    if len(kinds) != 1 or next(iter(kinds)) not in ("RNNCell", "LSTMCell", "GRUCell"):
        raise UnsupportedError(f"decoder: expected nn.RNN/LSTM/GRU or a list of one kind of cell, got {kinds}")
    kind = next(iter(kinds))
    H = cells[0].hidden_size
    for k, cell in enumerate(cells[1:], 1):
        if cell.hidden_size != H or cell.input_size != H:
            raise ShapeError(
                f"decoder[{k}]: expected input_size = hidden_size = {H}, got ({cell.input_size}, {cell.hidden_size})"
            )
    bias = cells[0].bias
    kw = {"input_size": cells[0].input_size, "hidden_size": H, "num_layers": len(cells), "bias": bias}
    if kind == "LSTMCell":
        layer = LSTM(**kw)
    elif kind == "GRUCell":
        layer = GRU(**kw)
    else:
        layer = RNN(nonlinearity=cells[0].nonlinearity, **kw)
    st = {}
    for k, cell in enumerate(cells):
        for name_, p in cell.state_dict().items():
            st[f"{name_}_l{k}"] = p.detach().cpu().numpy()
    layer.load_state_dict(st)
    return layer


def _attention_from_torch(attention: Any):
    if attention is None or isinstance(attention, (AdditiveAttention, DotAttention, GeneralAttention)):
        return attention
    if isinstance(attention, str):
        if attention == "dot":
            return DotAttention()
        if attention == "scaled_dot":
            return ScaledDotAttention()
        raise UnsupportedError(f"attention: expected 'dot' or 'scaled_dot' as a string, got {attention!r}")
    if isinstance(attention, tuple) and attention and attention[0] == "additive" and len(attention) == 4:
        return AdditiveAttention.from_linears(*attention[1:])
    if isinstance(attention, tuple) and attention and attention[0] == "general" and len(attention) == 2:
        return GeneralAttention.from_linear(attention[1])
    raise UnsupportedError(f"attention: unsupported specification {type(attention).__name__}")
