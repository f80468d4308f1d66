# cython: language_level=3
"""Cython glue of the training part of the C core (csrc/rf_train.h).

check -> allocate -> `with nogil:` -> status -> exception. User input is validated in rnnfast/train.py;
this layer re-checks the sizes of every buffer handed to C, so a bug above it raises instead of
corrupting memory. Shapes: T=time B=batch I=input H=hidden P=projection G=gates D=directions L=layers.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uintptr_t
from libc.stdlib cimport free, malloc

from rnnfast._capi cimport RF_OK, RF_ERRLEN, install_blas, raise_status, rf_status

import numpy as np

from . import _blas
from .errors import InternalError, OutOfMemoryError, ShapeError, UnsupportedError


cdef extern from "rnnfast.h" nogil:
    ctypedef struct rf_rnn_desc:
        int cell
        int reset_after
        int num_layers
        int num_dirs
        int input_size
        int hidden_size
        int proj_size
        const void *ext
    ctypedef struct rf_rnn_io:
        int T
        int B
        int batch_first
        const float *x
        const int32_t *lengths
        const float *h0
        const float *c0
        float *out
        float *h_n
        float *c_n


cdef extern from "rf_train.h" nogil:
    ctypedef struct rf_train_weights:
        const float *w_ih
        const float *w_hh
        const float *b_ih
        const float *b_hh
        const float *w_hr
    ctypedef struct rf_train_grads:
        float *w_ih
        float *w_hh
        float *b_ih
        float *b_hh
        float *w_hr
    size_t rf_train_cache_size(const rf_rnn_desc *d, int T, int B)
    size_t rf_train_workspace_size(const rf_rnn_desc *d, int T, int B)
    rf_status rf_train_forward(const rf_rnn_desc *d, const rf_train_weights *w, const rf_rnn_io *io,
                               void *cache, size_t cache_size, int n_threads, char *err)
    rf_status rf_train_backward(const rf_rnn_desc *d, const rf_train_weights *w, const rf_rnn_io *io,
                                const void *cache, size_t cache_size, const float *d_out, const float *d_hn,
                                const float *d_cn, float *dx, float *dh0, float *dc0, const rf_train_grads *g,
                                void *ws, size_t ws_size, int n_threads, char *err)
    rf_status rf_linear_forward(int N, int I, int O, const float *x, const float *w, const float *b,
                                float *y, char *err)
    rf_status rf_linear_backward(int N, int I, int O, const float *x, const float *w, const float *dy,
                                 float *dx, float *dw, float *db, char *err)
    rf_status rf_embedding_forward(int N, int V, int E, const int64_t *idx, const float *w, float *y, char *err)
    rf_status rf_embedding_backward(int N, int V, int E, const int64_t *idx, const float *dy,
                                    int64_t padding_idx, float *dw, char *err)
    rf_status rf_softmax_xent(int N, int V, const float *logits, const int64_t *targets, const uint8_t *mask,
                              int64_t ignore_index, double *loss, float *dlogits, int64_t *count_out,
                              int n_threads, char *err)
    rf_status rf_mse(size_t n, const float *pred, const float *target, double *loss, float *dpred, char *err)
    rf_status rf_bce_logits(size_t n, const float *logits, const float *target, double *loss, float *dlogits,
                            char *err)
    rf_status rf_clip_grad_norm(int k, float *const *grads, const size_t *sizes, double max_norm,
                                double norm_type, double *total_norm, char *err)
    rf_status rf_clip_grad_value(int k, float *const *grads, const size_t *sizes, float clip_value, char *err)
    rf_status rf_sgd_step(size_t n, float *p, const float *g, float *buf, double lr, double momentum,
                          double dampening, double weight_decay, int nesterov, int maximize, int first,
                          char *err)
    rf_status rf_adam_step(size_t n, float *p, const float *g, float *m, float *v, float *vmax, double lr,
                           double beta1, double beta2, double eps, double weight_decay, int decoupled,
                           int amsgrad, int maximize, int64_t step, char *err)


# Each extension module carries its own copy of the C core: point this copy at SciPy's sgemm too.
install_blas()

CELLS = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}




cdef int dims(object a, int ndim, str name) except -1:
    """Check a.ndim before reading a.shape[k]: Cython reads an ndarray's shape without bounds checks, so
    w.shape[1] of a 1-D array is garbage (a segmentation fault further on)."""
    if a.ndim != ndim:
        raise InternalError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    return 0


cdef const float *cptr(object a, Py_ssize_t n, str name) except? NULL:
    """Pointer to a C-contiguous float32 array of exactly n elements (None -> NULL)."""
    cdef const float[::1] mv
    if a is None:
        return NULL
    if a.dtype != np.float32 or not a.flags.c_contiguous or a.size != n:
        raise InternalError(f"{name}: expected C-contiguous float32 of {n} elements, got {a.dtype} "
                            f"{a.shape} contiguous={a.flags.c_contiguous}")
    if n == 0:
        return NULL
    mv = a.reshape(-1)
    return &mv[0]


cdef float *wptr(object a, Py_ssize_t n, str name) except? NULL:
    cdef float[::1] mv
    if a is None:
        return NULL
    if a.dtype != np.float32 or not a.flags.c_contiguous or a.size != n or not a.flags.writeable:
        raise InternalError(f"{name}: expected writable C-contiguous float32 of {n} elements, got {a.dtype} "
                            f"{a.shape}")
    if n == 0:
        return NULL
    mv = a.reshape(-1)
    return &mv[0]


cdef const int64_t *i64ptr(object a, Py_ssize_t n, str name) except? NULL:
    cdef const int64_t[::1] mv
    if a.dtype != np.int64 or not a.flags.c_contiguous or a.size != n:
        raise InternalError(f"{name}: expected C-contiguous int64 of {n} elements, got {a.dtype} {a.shape}")
    if n == 0:
        return NULL
    mv = a.reshape(-1)
    return &mv[0]


cdef void *bptr(object a) except? NULL:
    cdef uint8_t[::1] mv = a
    if a.size == 0:
        return NULL
    return <void *>&mv[0]


def _aligned_bytes(size_t n, reuse=None):
    """A 64-byte aligned uint8 array of n bytes (a view into a slightly larger buffer). ``reuse``: an
    earlier result handed back (re-used when it is large enough: no fresh pages to fault in)."""
    if reuse is not None and reuse.size >= n and reuse.ctypes.data % 64 == 0:
        return reuse
    raw = np.empty(n + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + n]


cdef class Desc:
    """Description of a recurrent stack (see rf_rnn_desc)."""
    cdef rf_rnn_desc d
    cdef public int G, P

    def __init__(self, str mode, int num_layers, int num_dirs, int input_size, int hidden_size,
                 int proj_size=0, bint reset_after=True):
        if mode not in CELLS:
            raise UnsupportedError(f"mode: expected one of {sorted(CELLS)}, got {mode!r}")
        self.d.cell = CELLS[mode]
        self.d.reset_after = reset_after
        self.d.num_layers = num_layers
        self.d.num_dirs = num_dirs
        self.d.input_size = input_size
        self.d.hidden_size = hidden_size
        self.d.proj_size = proj_size
        self.d.ext = NULL
        self.G = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}[mode]
        self.P = proj_size if proj_size > 0 else hidden_size

    def cache_size(self, int T, int B):
        return rf_train_cache_size(&self.d, T, B)

    def workspace_size(self, int T, int B):
        return rf_train_workspace_size(&self.d, T, B)


cdef int fill_weights(Desc desc, list weights, rf_train_weights *w) except -1:
    """weights: L*D tuples (w_ih, w_hh, b_ih, b_hh, w_hr) of float32 arrays (or None)."""
    cdef int L = desc.d.num_layers, D = desc.d.num_dirs, H = desc.d.hidden_size, P = desc.P
    cdef int G = desc.G, k, I_l
    if len(weights) != L * D:
        raise InternalError(f"weights: expected {L * D} entries, got {len(weights)}")
    for k in range(L * D):
        I_l = desc.d.input_size if k < D else D * P
        w_ih, w_hh, b_ih, b_hh, w_hr = weights[k]
        w[k].w_ih = cptr(w_ih, G * H * I_l, "w_ih")
        w[k].w_hh = cptr(w_hh, G * H * P, "w_hh")
        w[k].b_ih = cptr(b_ih, G * H, "b_ih")
        w[k].b_hh = cptr(b_hh, G * H, "b_hh")
        w[k].w_hr = cptr(w_hr, P * H, "w_hr") if desc.d.proj_size > 0 else NULL
    return 0


cdef int fill_io(Desc desc, rf_rnn_io *io, object x, object lengths, object h0, object c0) except -1:
    cdef const int32_t[::1] lv
    if x.ndim != 3 or x.shape[2] != desc.d.input_size:
        raise InternalError(f"x: expected (T, B, {desc.d.input_size}), got {x.shape}")
    io.T = x.shape[0]
    io.B = x.shape[1]
    io.batch_first = 0
    io.x = cptr(x, x.size, "x")
    LDB = desc.d.num_layers * desc.d.num_dirs * io.B
    io.h0 = cptr(h0, LDB * desc.P, "h0")
    io.c0 = cptr(c0, LDB * desc.d.hidden_size, "c0")
    io.lengths = NULL
    if lengths is not None:
        if lengths.dtype != np.int32 or not lengths.flags.c_contiguous or lengths.size != io.B:
            raise InternalError(f"lengths: expected int32 ({io.B},), got {lengths.dtype} {lengths.shape}")
        if io.B > 0:
            lv = lengths
            io.lengths = &lv[0]
    io.out = NULL
    io.h_n = NULL
    io.c_n = NULL
    return 0


def forward(Desc desc, list weights, x, lengths=None, h0=None, c0=None, int n_threads=0, reuse=None):
    """Training forward. x (T, B, I) float32 -> (out (T, B, D*P), h_n (L*D, B, P), c_n or None, cache)."""
    cdef rf_rnn_io io
    cdef char err[256]
    cdef rf_status st
    cdef rf_train_weights *w = <rf_train_weights *>malloc(sizeof(rf_train_weights) * len(weights) + 1)
    if w == NULL:
        raise OutOfMemoryError("weights: malloc failed")
    try:
        fill_weights(desc, weights, w)
        fill_io(desc, &io, x, lengths, h0, c0)
        T, B = io.T, io.B
        LD = desc.d.num_layers * desc.d.num_dirs
        out = np.empty((T, B, desc.d.num_dirs * desc.P), dtype=np.float32)
        h_n = np.empty((LD, B, desc.P), dtype=np.float32)
        c_n = np.empty((LD, B, desc.d.hidden_size), dtype=np.float32) if desc.d.cell == 2 else None
        io.out = wptr(out, out.size, "out")
        io.h_n = wptr(h_n, h_n.size, "h_n")
        io.c_n = wptr(c_n, c_n.size, "c_n") if c_n is not None else NULL
        size = rf_train_cache_size(&desc.d, T, B)
        if size == 0:
            raise ShapeError(f"cache: size overflows for T={T}, B={B}")
        cache = _aligned_bytes(size, reuse)
        cp = bptr(cache)
        with nogil:
            st = rf_train_forward(&desc.d, w, &io, cp, size, n_threads, err)
        if st != RF_OK:
            raise_status(st, err)
        return out, h_n, c_n, cache
    finally:
        free(w)


def backward(Desc desc, list weights, x, lengths, h0, c0, cache, d_out=None, d_hn=None, d_cn=None,
             bint want_dx=True, bint want_grads=True, int n_threads=0, reuse=None):
    """Backward through time. Returns (dx or None, dh0, dc0 or None, grads: L*D tuples like weights,
    workspace (hand it back as ``reuse``))."""
    cdef rf_rnn_io io
    cdef char err[256]
    cdef rf_status st
    cdef int k, L = desc.d.num_layers, D = desc.d.num_dirs, H = desc.d.hidden_size, P = desc.P, G = desc.G
    cdef rf_train_weights *w = <rf_train_weights *>malloc(sizeof(rf_train_weights) * len(weights) + 1)
    cdef rf_train_grads *g = <rf_train_grads *>malloc(sizeof(rf_train_grads) * len(weights) + 1)
    cdef float *dxp
    cdef float *dh0p
    cdef float *dc0p
    cdef const float *doutp
    cdef const float *dhnp
    cdef const float *dcnp
    if w == NULL or g == NULL:
        free(w)
        free(g)
        raise OutOfMemoryError("weights: malloc failed")
    try:
        fill_weights(desc, weights, w)
        fill_io(desc, &io, x, lengths, h0, c0)
        T, B = io.T, io.B
        csize = rf_train_cache_size(&desc.d, T, B)
        if cache.dtype != np.uint8 or cache.size < csize or cache.ctypes.data % 64:
            raise InternalError(f"cache: expected an aligned uint8 buffer of {csize} bytes, got {cache.size}")
        dx = np.empty(x.shape, dtype=np.float32) if want_dx else None
        dh0 = np.empty((L * D, B, P), dtype=np.float32)
        dc0 = np.empty((L * D, B, H), dtype=np.float32) if desc.d.cell == 2 else None
        dxp = wptr(dx, x.size, "dx") if want_dx else NULL
        dh0p = wptr(dh0, dh0.size, "dh0")
        dc0p = wptr(dc0, dc0.size, "dc0") if dc0 is not None else NULL
        doutp = cptr(d_out, T * B * D * P, "d_out")
        dhnp = cptr(d_hn, L * D * B * P, "d_hn")
        dcnp = cptr(d_cn, L * D * B * H, "d_cn") if desc.d.cell == 2 else NULL
        grads = []
        for k in range(L * D):
            I_l = desc.d.input_size if k < D else D * P
            has_bias = weights[k][2] is not None
            gw = (np.empty((G * H, I_l), np.float32), np.empty((G * H, P), np.float32),
                  np.empty(G * H, np.float32) if has_bias else None,
                  np.empty(G * H, np.float32) if has_bias else None,
                  np.empty((P, H), np.float32) if desc.d.proj_size > 0 else None)
            grads.append(gw)
            g[k].w_ih = wptr(gw[0], gw[0].size, "g.w_ih")
            g[k].w_hh = wptr(gw[1], gw[1].size, "g.w_hh")
            g[k].b_ih = wptr(gw[2], G * H, "g.b_ih")
            g[k].b_hh = wptr(gw[3], G * H, "g.b_hh")
            g[k].w_hr = wptr(gw[4], P * H, "g.w_hr") if gw[4] is not None else NULL
            if I_l == 0:
                gw[0][...] = 0
        wsize = rf_train_workspace_size(&desc.d, T, B)
        if wsize == 0:
            raise ShapeError(f"workspace: size overflows for T={T}, B={B}")
        ws = _aligned_bytes(wsize, reuse)
        cp = bptr(cache)
        wp = bptr(ws)
        with nogil:
            st = rf_train_backward(&desc.d, w, &io, cp, csize, doutp, dhnp, dcnp, dxp, dh0p, dc0p,
                                   g if want_grads else NULL, wp, wsize, n_threads, err)
        if st != RF_OK:
            raise_status(st, err)
        return dx, dh0, dc0, (grads if want_grads else None), ws
    finally:
        free(w)
        free(g)


def linear_forward(x, w, b):
    """x (N, I), w (O, I), b (O) or None -> y (N, O)."""
    dims(x, 2, "x")
    dims(w, 2, "w")
    cdef char err[256]
    cdef int N = x.shape[0], I = x.shape[1], O = w.shape[0]
    y = np.empty((N, O), dtype=np.float32)
    cdef const float *xp = cptr(x, N * I, "x")
    cdef const float *wp = cptr(w, O * I, "w")
    cdef const float *bp = cptr(b, O, "b")
    cdef float *yp = wptr(y, N * O, "y")
    cdef rf_status st
    with nogil:
        st = rf_linear_forward(N, I, O, xp, wp, bp, yp, err)
    if st != RF_OK:
        raise_status(st, err)
    return y


def linear_backward(x, w, dy, bint has_bias=True, bint want_dx=True):
    """-> (dx (N, I) or None, dw (O, I), db (O) or None)."""
    dims(x, 2, "x")
    dims(w, 2, "w")
    cdef char err[256]
    cdef int N = x.shape[0], I = x.shape[1], O = w.shape[0]
    dx = np.empty((N, I), dtype=np.float32) if want_dx else None
    dw = np.empty((O, I), dtype=np.float32)
    db = np.empty(O, dtype=np.float32) if has_bias else None
    cdef const float *xp = cptr(x, N * I, "x")
    cdef const float *wp = cptr(w, O * I, "w")
    cdef const float *dyp = cptr(dy, N * O, "dy")
    cdef float *dxp = wptr(dx, N * I, "dx")
    cdef float *dwp = wptr(dw, O * I, "dw")
    cdef float *dbp = wptr(db, O, "db")
    cdef rf_status st
    if N == 0 or I == 0:
        dw[...] = 0
    with nogil:
        st = rf_linear_backward(N, I, O, xp, wp, dyp, dxp, dwp, dbp, err)
    if st != RF_OK:
        raise_status(st, err)
    return dx, dw, db


def embedding_forward(idx, w):
    """idx (N,) int64, w (V, E) -> (N, E)."""
    dims(idx, 1, "indices")
    dims(w, 2, "weight")
    cdef char err[256]
    cdef int N = idx.shape[0], V = w.shape[0], E = w.shape[1]
    y = np.empty((N, E), dtype=np.float32)
    cdef const int64_t *ip = i64ptr(idx, N, "indices")
    cdef const float *wp = cptr(w, V * E, "weight")
    cdef float *yp = wptr(y, N * E, "y")
    cdef rf_status st
    with nogil:
        st = rf_embedding_forward(N, V, E, ip, wp, yp, err)
    if st != RF_OK:
        raise_status(st, err)
    return y


def embedding_backward(idx, dy, int V, long long padding_idx=-1):
    dims(idx, 1, "indices")
    dims(dy, 2, "dy")
    cdef char err[256]
    cdef int N = idx.shape[0], E = dy.shape[1]
    dw = np.empty((V, E), dtype=np.float32)
    cdef const int64_t *ip = i64ptr(idx, N, "indices")
    cdef const float *dyp = cptr(dy, N * E, "dy")
    cdef float *dwp = wptr(dw, V * E, "dw")
    cdef rf_status st
    with nogil:
        st = rf_embedding_backward(N, V, E, ip, dyp, padding_idx, dwp, err)
    if st != RF_OK:
        raise_status(st, err)
    return dw


def softmax_xent(logits, targets, mask=None, long long ignore_index=-100, bint want_grad=True,
                 int n_threads=0):
    """logits (N, V), targets (N,) int64, mask (N,) uint8 or None -> (loss, dlogits or None, count)."""
    dims(logits, 2, "logits")
    dims(targets, 1, "targets")
    cdef char err[256]
    cdef int N = logits.shape[0], V = logits.shape[1]
    cdef double loss = 0
    cdef int64_t count = 0
    dl = np.empty((N, V), dtype=np.float32) if want_grad else None
    cdef const float *lp = cptr(logits, N * V, "logits")
    cdef const int64_t *tp = i64ptr(targets, N, "targets")
    cdef const uint8_t *mp = NULL
    cdef const uint8_t[::1] mv
    cdef float *dp = wptr(dl, N * V, "dlogits")
    cdef rf_status st
    if mask is not None:
        if mask.dtype != np.uint8 or mask.size != N or not mask.flags.c_contiguous:
            raise InternalError(f"mask: expected uint8 ({N},), got {mask.dtype} {mask.shape}")
        if N > 0:
            mv = mask
            mp = &mv[0]
    with nogil:
        st = rf_softmax_xent(N, V, lp, tp, mp, ignore_index, &loss, dp, &count, n_threads, err)
    if st != RF_OK:
        raise_status(st, err)
    return loss, dl, count


def mse(pred, target, bint want_grad=True):
    cdef char err[256]
    cdef size_t n = pred.size
    cdef double loss = 0
    d = np.empty(pred.shape, dtype=np.float32) if want_grad else None
    cdef const float *pp = cptr(pred, n, "input")
    cdef const float *tp = cptr(target, n, "target")
    cdef float *dp = wptr(d, n, "dinput")
    with nogil:
        rf_mse(n, pp, tp, &loss, dp, err)
    return loss, d


def bce_with_logits(logits, target, bint want_grad=True):
    cdef char err[256]
    cdef size_t n = logits.size
    cdef double loss = 0
    d = np.empty(logits.shape, dtype=np.float32) if want_grad else None
    cdef const float *pp = cptr(logits, n, "input")
    cdef const float *tp = cptr(target, n, "target")
    cdef float *dp = wptr(d, n, "dinput")
    with nogil:
        rf_bce_logits(n, pp, tp, &loss, dp, err)
    return loss, d


cdef int fill_list(list arrays, float **ptrs, size_t *sizes) except -1:
    cdef int i
    for i in range(len(arrays)):
        ptrs[i] = wptr(arrays[i], arrays[i].size, "grad")
        sizes[i] = arrays[i].size
    return 0


def clip_grad_norm(list grads, double max_norm, double norm_type=2.0):
    """In place; returns the total norm before clipping (norm_type <= 0 or inf: max-abs)."""
    cdef char err[256]
    cdef int k = len(grads)
    cdef double total = 0
    cdef float **ptrs = <float **>malloc(sizeof(float *) * (k + 1))
    cdef size_t *sizes = <size_t *>malloc(sizeof(size_t) * (k + 1))
    cdef rf_status st
    if ptrs == NULL or sizes == NULL:
        free(ptrs)
        free(sizes)
        raise OutOfMemoryError("clip_grad_norm: malloc failed")
    try:
        fill_list(grads, ptrs, sizes)
        if norm_type == float("inf"):
            norm_type = 0.0
        with nogil:
            st = rf_clip_grad_norm(k, ptrs, sizes, max_norm, norm_type, &total, err)
        if st != RF_OK:
            raise_status(st, err)
        return total
    finally:
        free(ptrs)
        free(sizes)


def clip_grad_value(list grads, float clip_value):
    cdef char err[256]
    cdef int k = len(grads)
    cdef float **ptrs = <float **>malloc(sizeof(float *) * (k + 1))
    cdef size_t *sizes = <size_t *>malloc(sizeof(size_t) * (k + 1))
    cdef rf_status st
    if ptrs == NULL or sizes == NULL:
        free(ptrs)
        free(sizes)
        raise OutOfMemoryError("clip_grad_value: malloc failed")
    try:
        fill_list(grads, ptrs, sizes)
        with nogil:
            st = rf_clip_grad_value(k, ptrs, sizes, clip_value, err)
        if st != RF_OK:
            raise_status(st, err)
    finally:
        free(ptrs)
        free(sizes)


def sgd_step(p, g, buf, double lr, double momentum, double dampening, double weight_decay, bint nesterov,
             bint maximize, bint first):
    cdef char err[256]
    cdef size_t n = p.size
    cdef float *pp = wptr(p, n, "param")
    cdef const float *gp = cptr(g, n, "grad")
    cdef float *bp = wptr(buf, n, "momentum_buffer")
    cdef rf_status st
    with nogil:
        st = rf_sgd_step(n, pp, gp, bp, lr, momentum, dampening, weight_decay, nesterov, maximize, first, err)
    if st != RF_OK:
        raise_status(st, err)


def adam_step(p, g, m, v, vmax, double lr, double beta1, double beta2, double eps, double weight_decay,
              bint decoupled, bint amsgrad, bint maximize, long long step):
    cdef char err[256]
    cdef size_t n = p.size
    cdef float *pp = wptr(p, n, "param")
    cdef const float *gp = cptr(g, n, "grad")
    cdef float *mp = wptr(m, n, "exp_avg")
    cdef float *vp = wptr(v, n, "exp_avg_sq")
    cdef float *xp = wptr(vmax, n, "max_exp_avg_sq")
    cdef rf_status st
    with nogil:
        st = rf_adam_step(n, pp, gp, mp, vp, xp, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
                          maximize, step, err)
    if st != RF_OK:
        raise_status(st, err)
