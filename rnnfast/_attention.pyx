# cython: language_level=3
"""Cython glue of the attention kernels (csrc/rf_attention.c): check -> allocate -> nogil -> status.

Callers (rnnfast.attention, rnnfast.seq2seq) pass float32 arrays already validated and laid out;
this module re-checks what the C core relies on (dtype, contiguity of rows, shapes) and maps
rf_status to rnnfast.errors exceptions.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from rnnfast._capi cimport RF_OK, RF_ERRLEN, install_blas, raise_status, rf_status

import numpy as np

from rnnfast.errors import InternalError, OutOfMemoryError, ShapeError, UnsupportedError

cdef extern from "rnnfast.h" nogil:

    ctypedef struct rf_rnn_ext:
        pass

    ctypedef struct rf_rnn_desc:
        int cell
        int reset_after
        int num_layers
        int num_dirs
        int input_size
        int hidden_size
        int proj_size
        const rf_rnn_ext *ext

    ctypedef struct rf_rnn_weights:
        const float *w_ih
        const float *w_hh
        const float *bias
        const float *b_hn
        const float *w_hr
        const float *peep
        const float *packed_ih
        const float *packed_hh

    rf_status rf_rnn_check_desc(const rf_rnn_desc *d, char *err)
    size_t rf_rnn_packed_size(const rf_rnn_desc *d, int K)
    void rf_rnn_pack(const rf_rnn_desc *d, const float *w, int K, float *packed)

cdef extern from "rf_attention.h" nogil:
    int RF_ATTN_ADDITIVE
    int RF_ATTN_DOT

    ctypedef struct rf_attn_args:
        int kind
        int B, Tq, S, D, Dv
        const float *q
        const float *kp
        const float *v
        const float *values
        const int32_t *lengths
        const uint8_t *mask
        float scale
        float *ctx
        float *weights

    rf_status rf_attn_forward(const rf_attn_args *a, int n_threads, char *err)

    ctypedef struct rf_sdpa_args:
        int B, Hq, Hkv, L, S, Dk, Dv
        const float *q
        int64_t q_sb, q_sh, q_sl
        const float *k
        int64_t k_sb, k_sh, k_ss
        const float *v
        int64_t v_sb, v_sh, v_ss
        const float *mask
        int64_t m_sb, m_sh, m_sl
        const float *kpm
        int causal
        int causal_offset
        float scale
        float softcap
        float *y
        int64_t y_sb, y_sh, y_sl
        float *weights
        float *raw_scores

    size_t rf_sdpa_workspace_size(const rf_sdpa_args *a, int n_threads)
    rf_status rf_sdpa_forward(const rf_sdpa_args *a, void *ws, size_t ws_size, int n_threads, char *err)

    ctypedef struct rf_mha_args:
        int B, L, S, E, Ek, Ev, H
        int batch_first
        const float *q
        const float *k
        const float *v
        const float *w_q
        const float *w_k
        const float *w_v
        const float *b_q
        const float *b_k
        const float *b_v
        const float *w_o
        const float *b_o
        const float *mask
        int64_t m_sb, m_sh
        const float *kpm
        int causal
        float *y
        float *weights
        const float *wp_in
        const float *wp_o

    size_t rf_mha_workspace_size(const rf_mha_args *a, int n_threads)
    rf_status rf_mha_forward(const rf_mha_args *a, void *ws, size_t ws_size, int n_threads, char *err)

    ctypedef struct rf_greedy_args:
        const rf_rnn_desc *dec
        const rf_rnn_weights *dec_w
        int wiring, input_feeding
        int B, S, E, n_emb, V, Hc
        const float *embedding
        const float *out_w
        const float *out_b
        const float *comb_w
        const float *comb_b
        int attn_kind
        int A
        const float *attn_wq
        const float *attn_b
        const float *attn_v
        float attn_scale
        const float *kp
        const float *values
        int Dv
        const int32_t *src_lengths
        const uint8_t *src_mask
        const float *h0
        const float *c0
        const int64_t *start
        int max_len, end_token
        int64_t *tokens
        int64_t *out_lengths
        double *scores
        float *attn_out
        int *steps

    rf_status rf_linear(int B, int N, int K, const float *x, const float *w, const float *bias, float *y,
                        int n_threads, char *err)
    size_t rf_linear_packed_size(int N, int K)
    rf_status rf_linear_pack(int N, int K, const float *w, float *wp, size_t wp_floats, char *err)

    size_t rf_greedy_workspace_size(const rf_greedy_args *a, int n_threads)
    rf_status rf_greedy_decode(const rf_greedy_args *a, void *ws, size_t ws_size, int n_threads, char *err)


install_blas()


cdef inline uintptr_t _addr(object arr):
    """Address of arr's first element (0 for None)."""
    if arr is None:
        return 0
    return <uintptr_t>arr.__array_interface__["data"][0]


cdef void _need_f32(object arr, str name, int ndim) except *:
    if arr.dtype != np.float32:
        raise InternalError(f"{name}: expected float32, got {arr.dtype}")
    if arr.ndim != ndim:
        raise InternalError(f"{name}: expected {ndim} dimensions, got shape {arr.shape}")
    if arr.size == 0:
        return
    if arr.shape[arr.ndim - 1] > 1 and arr.strides[arr.ndim - 1] != 4:
        raise InternalError(f"{name}: expected a contiguous last axis, got strides {arr.strides}")
    for st in arr.strides:
        if st % 4:
            raise InternalError(f"{name}: expected strides in whole floats, got {arr.strides}")


def linear(x, w, b, int n_threads=0):
    """y = x . w^T + b on the core's BLAS / small-batch kernel (SciPy's BLAS pool, not NumPy's).
    x (..., K) float32 C-contiguous, w (N, K), b (N,) or None -> y (..., N) float32."""
    cdef char err[256]
    cdef rf_status st
    err[0] = 0
    for arr, name in ((x, "x"), (w, "w"), (b, "b")):
        if arr is not None and (arr.dtype != np.float32 or not arr.flags.c_contiguous):
            raise InternalError(f"{name}: expected float32 C-contiguous")
    N, K = w.shape
    lead = tuple(x.shape)[:x.ndim - 1]
    if x.ndim < 1 or x.shape[x.ndim - 1] != K or (b is not None and b.shape != (N,)):
        raise ShapeError(f"linear: expected x (..., {K}) and bias ({N},), got {x.shape}")
    rows = int(np.prod(lead)) if lead else 1
    y = np.empty(lead + (N,), dtype=np.float32)
    if rows > 2147483647 or N > 2147483647:
        raise ShapeError(f"linear: expected fewer than 2**31 rows, got {rows}")
    cdef int B_ = rows, N_ = N, K_ = K
    cdef uintptr_t px = _addr(x), pw = _addr(w), pb = _addr(b), py = _addr(y)
    with nogil:
        st = rf_linear(B_, N_, K_, <const float *>px, <const float *>pw, <const float *>pb, <float *>py, n_threads,
                       err)
    if st != 0:
        raise_status(st, err)
    return y


def attn_forward(int kind, q, kp, v, values, lengths, mask, float scale, int n_threads=0):
    """Single-head attention. q (B,Tq,D), kp (B,S,D), v (D,)|None, values (B,S,Dv), lengths int32 (B,)|None,
    mask uint8 (B,S)|None -> ctx (B,Tq,Dv), weights (B,Tq,S). All C-contiguous."""
    cdef rf_attn_args a
    cdef char err[256]
    cdef rf_status st
    err[0] = 0
    for arr, name, nd in ((q, "q", 3), (kp, "kp", 3), (values, "values", 3)):
        _need_f32(arr, name, nd)
        if not arr.flags.c_contiguous:
            raise InternalError(f"{name}: expected C-contiguous")
    B, Tq, D = q.shape
    S = kp.shape[1]
    Dv = values.shape[2]
    if kp.shape != (B, S, D) or values.shape[:2] != (B, S):
        raise ShapeError(f"keys/values: expected ({B}, S, {D}) and ({B}, S, Dv), got {kp.shape} and {values.shape}")
    if kind == RF_ATTN_ADDITIVE:
        if v is None or v.shape != (D,) or v.dtype != np.float32:
            raise InternalError(f"v: expected float32 ({D},)")
    if lengths is not None and (lengths.dtype != np.int32 or lengths.shape != (B,) or not lengths.flags.c_contiguous):
        raise InternalError(f"lengths: expected int32 ({B},)")
    if mask is not None and (mask.dtype != np.uint8 or mask.shape != (B, S) or not mask.flags.c_contiguous):
        raise InternalError(f"mask: expected uint8 ({B}, {S})")
    ctx = np.empty((B, Tq, Dv), dtype=np.float32)
    weights = np.empty((B, Tq, S), dtype=np.float32)
    a.kind = kind
    a.B = B
    a.Tq = Tq
    a.S = S
    a.D = D
    a.Dv = Dv
    a.q = <const float *>_addr(q)
    a.kp = <const float *>_addr(kp)
    a.v = <const float *>_addr(v)
    a.values = <const float *>_addr(values)
    a.lengths = <const int32_t *>_addr(lengths)
    a.mask = <const uint8_t *>_addr(mask)
    a.scale = scale
    a.ctx = <float *>_addr(ctx)
    a.weights = <float *>_addr(weights)
    with nogil:
        st = rf_attn_forward(&a, n_threads, err)
    if st != 0:
        raise_status(st, err)
    return ctx, weights


def sdpa(q, k, v, mask, kpm, bint causal, int causal_offset, float scale, float softcap,
         bint need_weights, bint need_raw, y, int n_threads=0):
    """Strided SDPA. q (B,Hq,L,Dk), k (B,Hkv,S,Dk), v (B,Hkv,S,Dv), y out (B,Hq,L,Dv) (views with a
    contiguous last axis); mask additive float32 broadcastable (B|1,Hq|1,L|1,S) with contiguous rows;
    kpm float32 (B,S) contiguous. Returns (weights or None, raw scores or None)."""
    cdef rf_sdpa_args a
    cdef char err[256]
    cdef rf_status st
    cdef size_t wsz
    err[0] = 0
    _need_f32(q, "q", 4)
    _need_f32(k, "k", 4)
    _need_f32(v, "v", 4)
    _need_f32(y, "y", 4)
    B, Hq, L, Dk = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    Dv = v.shape[3]
    if k.shape != (B, Hkv, S, Dk) or v.shape != (B, Hkv, S, Dv) or y.shape != (B, Hq, L, Dv):
        raise ShapeError(f"q/k/v: inconsistent shapes {q.shape}, {k.shape}, {v.shape}")
    a.B = B
    a.Hq = Hq
    a.Hkv = Hkv
    a.L = L
    a.S = S
    a.Dk = Dk
    a.Dv = Dv
    a.q = <const float *>_addr(q)
    a.q_sb, a.q_sh, a.q_sl = q.strides[0] // 4, q.strides[1] // 4, q.strides[2] // 4
    a.k = <const float *>_addr(k)
    a.k_sb, a.k_sh, a.k_ss = k.strides[0] // 4, k.strides[1] // 4, k.strides[2] // 4
    a.v = <const float *>_addr(v)
    a.v_sb, a.v_sh, a.v_ss = v.strides[0] // 4, v.strides[1] // 4, v.strides[2] // 4
    a.y = <float *>_addr(y)
    a.y_sb, a.y_sh, a.y_sl = y.strides[0] // 4, y.strides[1] // 4, y.strides[2] // 4
    # size-1 axes may carry arbitrary strides in NumPy: they are never stepped, but keep them sane
    if L == 1:
        a.q_sl = max(Dk, 1)
        a.y_sl = max(Dv, 1)
    if S == 1:
        a.k_ss = max(Dk, 1)
        a.v_ss = max(Dv, 1)
    a.mask = NULL
    a.m_sb = a.m_sh = a.m_sl = 0
    if mask is not None:
        _need_f32(mask, "mask", 4)
        if mask.shape[3] != S or any(mask.shape[i] not in (1, (B, Hq, L)[i]) for i in range(3)):
            raise ShapeError(f"mask: expected a shape broadcastable to ({B}, {Hq}, {L}, {S}), got {mask.shape}")
        a.mask = <const float *>_addr(mask)
        a.m_sb = 0 if mask.shape[0] == 1 else mask.strides[0] // 4
        a.m_sh = 0 if mask.shape[1] == 1 else mask.strides[1] // 4
        a.m_sl = 0 if mask.shape[2] == 1 else mask.strides[2] // 4
    if kpm is not None:
        if kpm.dtype != np.float32 or kpm.shape != (B, S) or not kpm.flags.c_contiguous:
            raise InternalError(f"kpm: expected float32 ({B}, {S}) contiguous")
    a.kpm = <const float *>_addr(kpm)
    a.causal = causal
    a.causal_offset = causal_offset
    a.scale = scale
    a.softcap = softcap
    weights = np.empty((B, Hq, L, S), dtype=np.float32) if need_weights else None
    raw = np.empty((B, Hq, L, S), dtype=np.float32) if need_raw else None
    a.weights = <float *>_addr(weights)
    a.raw_scores = <float *>_addr(raw)
    wsz = rf_sdpa_workspace_size(&a, n_threads)
    ws = np.empty(wsz, dtype=np.uint8)
    cdef uintptr_t wsp = _addr(ws)
    with nogil:
        st = rf_sdpa_forward(&a, <void *>wsp, wsz, n_threads, err)
    if st != 0:
        raise_status(st, err)
    return weights, raw


def pack_linear(w):
    """w (N, K) float32 C-contiguous -> its copy packed for the core's product (rf_linear_pack)."""
    cdef char err[256]
    cdef rf_status st
    err[0] = 0
    if w.ndim != 2 or w.dtype != np.float32 or not w.flags.c_contiguous:
        raise InternalError("w: expected float32 C-contiguous (N, K)")
    if w.shape[0] > 2147483647 or w.shape[1] > 2147483647:
        raise ShapeError(f"pack: expected fewer than 2**31 rows and columns, got {w.shape}")
    cdef int N_ = w.shape[0], K_ = w.shape[1]
    cdef size_t n = rf_linear_packed_size(N_, K_)
    if n == 0:
        raise ShapeError(f"pack: expected a non-empty weight, got {w.shape}")
    wp = np.empty(n, dtype=np.float32)
    cdef uintptr_t pw = _addr(w), pp = _addr(wp)
    with nogil:
        st = rf_linear_pack(N_, K_, <const float *>pw, <float *>pp, n, err)
    if st != 0:
        raise_status(st, err)
    return wp


def mha(q, k, v, int num_heads, bint batch_first, w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o, mask, kpm,
        bint causal, bint need_weights, int n_threads=0, wp_in=None, wp_o=None):
    """torch.nn.MultiheadAttention forward. q (L,B,E) or (B,L,E); k, v likewise with S; all float32
    C-contiguous. mask additive float32 (B|1, H|1, L, S) contiguous rows; kpm float32 (B, S).
    wp_in / wp_o: pack_linear(in_proj_weight (3E, E)) / pack_linear(w_o), or None.
    Returns (y like q, weights (B,H,L,S) or None)."""
    cdef rf_mha_args a
    cdef char err[256]
    cdef rf_status st
    cdef size_t wsz
    err[0] = 0
    for arr, name in ((q, "query"), (k, "key"), (v, "value"), (w_q, "w_q"), (w_k, "w_k"), (w_v, "w_v"),
                      (w_o, "w_o")):
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise InternalError(f"{name}: expected float32 C-contiguous")
    for arr, name in ((b_q, "b_q"), (b_k, "b_k"), (b_v, "b_v"), (b_o, "b_o")):
        if arr is not None and (arr.dtype != np.float32 or not arr.flags.c_contiguous):
            raise InternalError(f"{name}: expected float32 C-contiguous")
    if batch_first:
        B, L, E = q.shape
        S = k.shape[1]
    else:
        L, B, E = q.shape
        S = k.shape[0]
    a.B = B
    a.L = L
    a.S = S
    a.E = E
    a.Ek = k.shape[2]
    a.Ev = v.shape[2]
    a.H = num_heads
    a.batch_first = batch_first
    a.q = <const float *>_addr(q)
    a.k = <const float *>_addr(k)
    a.v = <const float *>_addr(v)
    a.w_q = <const float *>_addr(w_q)
    a.w_k = <const float *>_addr(w_k)
    a.w_v = <const float *>_addr(w_v)
    a.b_q = <const float *>_addr(b_q)
    a.b_k = <const float *>_addr(b_k)
    a.b_v = <const float *>_addr(b_v)
    a.w_o = <const float *>_addr(w_o)
    a.b_o = <const float *>_addr(b_o)
    a.mask = NULL
    a.m_sb = a.m_sh = 0
    if mask is not None:
        _need_f32(mask, "attn_mask", 4)
        # (an empty mask has arbitrary strides: refusing it made L = 0 or S = 0 an InternalError)
        if mask.shape[2:] != (L, S) or (mask.size and mask.strides[2] != 4 * S):
            raise InternalError(f"attn_mask: expected (.., {L}, {S}) with contiguous rows, got {mask.shape}")
        a.mask = <const float *>_addr(mask)
        a.m_sb = 0 if mask.shape[0] == 1 else mask.strides[0] // 4
        a.m_sh = 0 if mask.shape[1] == 1 else mask.strides[1] // 4
    if kpm is not None and (kpm.dtype != np.float32 or kpm.shape != (B, S) or not kpm.flags.c_contiguous):
        raise InternalError(f"key_padding_mask: expected float32 ({B}, {S})")
    a.kpm = <const float *>_addr(kpm)
    a.causal = causal
    for arr, rows in ((wp_in, 3 * E), (wp_o, E)):
        if arr is not None and (arr.dtype != np.float32 or not arr.flags.c_contiguous
                                or <size_t>arr.size < rf_linear_packed_size(rows, E)):
            raise InternalError("wp_in/wp_o: expected pack_linear of (3E, E) / (E, E)")
    a.wp_in = <const float *>_addr(wp_in)
    a.wp_o = <const float *>_addr(wp_o)
    y = np.empty(q.shape, dtype=np.float32)
    weights = np.empty((B, num_heads, L, S), dtype=np.float32) if need_weights else None
    a.y = <float *>_addr(y)
    a.weights = <float *>_addr(weights)
    wsz = rf_mha_workspace_size(&a, n_threads)
    ws = np.empty(wsz, dtype=np.uint8)
    cdef uintptr_t wsp = _addr(ws)
    with nogil:
        st = rf_mha_forward(&a, <void *>wsp, wsz, n_threads, err)
    if st != 0:
        raise_status(st, err)
    return y, weights


_CELLS = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}


cdef class DecoderPlan:
    """rf_rnn_desc / rf_rnn_weights of a unidirectional decoder stack, built from its state_dict arrays
    (bias = b_ih + b_hh pre-summed; GRU reset_after: the n-part is b_in only and b_hn stays separate),
    with W_hh packed for the core's batch-1 kernel. Keeps every array it points into alive."""
    cdef rf_rnn_desc desc
    cdef rf_rnn_weights *w
    cdef object keep
    cdef readonly int num_layers, hidden_size, input_size

    def __cinit__(self):
        self.w = NULL

    def __dealloc__(self):
        free(self.w)

    def __init__(self, str mode, bint reset_after, int num_layers, int input_size, int hidden_size, dict params,
                 bint bias):
        cdef char err[256]
        cdef rf_status st
        cdef size_t n_ih, n_hh
        cdef int k, I_l
        err[0] = 0
        if mode not in _CELLS:
            raise UnsupportedError(f"decoder mode: expected one of {sorted(_CELLS)}, got {mode!r}")
        memset(&self.desc, 0, sizeof(self.desc))
        self.desc.cell = _CELLS[mode]
        self.desc.reset_after = reset_after
        self.desc.num_layers = num_layers
        self.desc.num_dirs = 1
        self.desc.input_size = input_size
        self.desc.hidden_size = hidden_size
        self.desc.proj_size = 0
        self.desc.ext = NULL
        st = rf_rnn_check_desc(&self.desc, err)
        if st != 0:
            raise_status(st, err)
        self.num_layers, self.hidden_size, self.input_size = num_layers, hidden_size, input_size
        self.w = <rf_rnn_weights *>malloc(sizeof(rf_rnn_weights) * num_layers)
        if self.w == NULL:
            raise OutOfMemoryError("decoder weights table")
        memset(self.w, 0, sizeof(rf_rnn_weights) * num_layers)
        G = {"LSTM": 4, "GRU": 3}.get(mode, 1)
        H = hidden_size
        keep = []
        for k in range(num_layers):
            I_l = input_size if k == 0 else H
            w_ih = np.ascontiguousarray(params[f"weight_ih_l{k}"], dtype=np.float32)
            w_hh = np.ascontiguousarray(params[f"weight_hh_l{k}"], dtype=np.float32)
            if w_ih.shape != (G * H, I_l) or w_hh.shape != (G * H, H):
                raise ShapeError(f"decoder layer {k}: expected weights ({G * H}, {I_l}) and ({G * H}, {H}), got "
                                 f"{w_ih.shape} and {w_hh.shape}")
            b = b_hn = None
            if bias:
                b_ih = np.asarray(params[f"bias_ih_l{k}"], dtype=np.float32)
                b_hh = np.asarray(params[f"bias_hh_l{k}"], dtype=np.float32)
                b = np.ascontiguousarray(b_ih + b_hh, dtype=np.float32)
                if mode == "GRU" and reset_after:
                    b[2 * H:] = b_ih[2 * H:]
                    b_hn = np.ascontiguousarray(b_hh[2 * H:], dtype=np.float32)
            self.w[k].w_ih = <const float *>_addr(w_ih)
            self.w[k].w_hh = <const float *>_addr(w_hh)
            self.w[k].bias = <const float *>_addr(b)
            self.w[k].b_hn = <const float *>_addr(b_hn)
            # the core's batch-1 kernel wants both matrices packed (it is used only if every layer has them)
            n_ih = rf_rnn_packed_size(&self.desc, I_l)
            n_hh = rf_rnn_packed_size(&self.desc, H)
            p_ih = p_hh = None
            if n_ih > 0 and n_hh > 0:
                p_ih = np.empty(<Py_ssize_t>n_ih, dtype=np.float32)
                p_hh = np.empty(<Py_ssize_t>n_hh, dtype=np.float32)
                rf_rnn_pack(&self.desc, self.w[k].w_ih, I_l, <float *>_addr(p_ih))
                rf_rnn_pack(&self.desc, self.w[k].w_hh, H, <float *>_addr(p_hh))
                self.w[k].packed_ih = <const float *>_addr(p_ih)
                self.w[k].packed_hh = <const float *>_addr(p_hh)
            keep.append((w_ih, w_hh, b, b_hn, p_ih, p_hh))
        self.keep = keep


def greedy_decode(DecoderPlan plan, int wiring, bint input_feeding, embedding, out_w, out_b, comb_w, comb_b,
                  int attn_kind, attn_wq, attn_b, attn_v, float attn_scale, kp, values, src_lengths, src_mask,
                  h0, c0, start, int max_len, int end_token, bint want_attn, int n_threads=0):
    """Greedy decoding loop in C. Arrays: float32 / int32 / uint8 / int64 C-contiguous, validated by
    rnnfast.seq2seq. Returns (tokens (B, steps) int64, lengths (B,) int64, scores (B,) float64,
    attention (B, steps, S) float32 or None)."""
    cdef rf_greedy_args a
    cdef char err[256]
    cdef rf_status st
    cdef size_t wsz
    cdef int steps = 0
    err[0] = 0
    memset(&a, 0, sizeof(a))
    B = start.shape[0]
    S = 0 if kp is None else kp.shape[1]
    for arr, name in ((embedding, "embedding"), (out_w, "out_w"), (out_b, "out_b"), (comb_w, "comb_w"),
                      (comb_b, "comb_b"), (attn_wq, "attn_wq"), (attn_b, "attn_b"), (attn_v, "attn_v"),
                      (kp, "kp"), (values, "values"), (h0, "h0"), (c0, "c0")):
        if arr is not None and (arr.dtype != np.float32 or not arr.flags.c_contiguous):
            raise InternalError(f"{name}: expected float32 C-contiguous")
    if start.dtype != np.int64 or not start.flags.c_contiguous:
        raise InternalError("start: expected int64")
    if h0.shape != (plan.num_layers, B, plan.hidden_size):
        raise InternalError(f"h0: expected ({plan.num_layers}, {B}, {plan.hidden_size}), got {h0.shape}")
    if c0 is not None and c0.shape != h0.shape:
        raise InternalError("c0: expected the shape of h0")
    if src_lengths is not None and (src_lengths.dtype != np.int32 or src_lengths.shape != (B,)):
        raise InternalError("src_lengths: expected int32 (B,)")
    if src_mask is not None and (src_mask.dtype != np.uint8 or src_mask.shape != (B, S)):
        raise InternalError("src_mask: expected uint8 (B, S)")
    if kp is not None and (kp.shape[0] != B or values is None or values.shape[:2] != (B, S)):
        raise InternalError("kp/values: expected (B, S, .)")
    a.dec = &plan.desc
    a.dec_w = plan.w
    a.wiring = wiring
    a.input_feeding = input_feeding
    a.B = B
    a.S = S
    a.E = embedding.shape[1]
    a.n_emb = embedding.shape[0]
    a.V = out_w.shape[0]
    a.Hc = comb_w.shape[0] if comb_w is not None else 0
    a.embedding = <const float *>_addr(embedding)
    a.out_w = <const float *>_addr(out_w)
    a.out_b = <const float *>_addr(out_b)
    a.comb_w = <const float *>_addr(comb_w)
    a.comb_b = <const float *>_addr(comb_b)
    a.attn_kind = attn_kind
    a.A = 0 if kp is None else kp.shape[2]
    a.attn_wq = <const float *>_addr(attn_wq)
    a.attn_b = <const float *>_addr(attn_b)
    a.attn_v = <const float *>_addr(attn_v)
    a.attn_scale = attn_scale
    a.kp = <const float *>_addr(kp)
    a.values = <const float *>_addr(values)
    a.Dv = 0 if values is None else values.shape[2]
    a.src_lengths = <const int32_t *>_addr(src_lengths)
    a.src_mask = <const uint8_t *>_addr(src_mask)
    a.h0 = <const float *>_addr(h0)
    a.c0 = <const float *>_addr(c0)
    a.start = <const int64_t *>_addr(start)
    a.max_len = max_len
    a.end_token = end_token
    tokens = np.empty((B, max_len), dtype=np.int64)
    lengths = np.empty(B, dtype=np.int64)
    scores = np.empty(B, dtype=np.float64)
    attn = np.zeros((B, max_len, S), dtype=np.float32) if want_attn else None
    a.tokens = <int64_t *>_addr(tokens)
    a.out_lengths = <int64_t *>_addr(lengths)
    a.scores = <double *>_addr(scores)
    a.attn_out = <float *>_addr(attn)
    a.steps = &steps
    wsz = rf_greedy_workspace_size(&a, n_threads)
    if wsz == 0:
        raise OutOfMemoryError(f"greedy decoding workspace size overflows for B={B}")
    ws = np.empty(wsz, dtype=np.uint8)
    cdef uintptr_t wsp = _addr(ws)
    with nogil:
        st = rf_greedy_decode(&a, <void *>wsp, wsz, n_threads, err)
    if st != 0:
        raise_status(st, err)
    return tokens[:, :steps], lengths, scores, (None if attn is None else attn[:, :steps])
