# cython: language_level=3
"""Cython glue of the attention training kernels (csrc/rf_attention_train.h).

check -> allocate -> `with nogil:` -> status -> exception. User input is validated in
rnnfast/attention_train.py; this layer re-checks the size of every buffer handed to C, so a bug above it
raises instead of corrupting memory. Shapes: B=batch Tq=query steps S=source Dq/Dk/Dv=query/key/value
sizes A=additive attention size.
"""

from libc.stdint cimport int32_t, uint8_t, uintptr_t

from rnnfast._capi cimport RF_OK, RF_ERRLEN, install_blas, raise_status, rf_status

import numpy as np

from . import _blas
from .errors import InternalError, ShapeError, UnsupportedError


cdef extern from "rf_attention_train.h" nogil:
    ctypedef struct rf_attn_train_args:
        int form
        int B, Tq, S, Dq, Dk, Dv
        int A
        float scale
        const float *query
        const float *keys
        const float *values
        const int32_t *lengths
        const uint8_t *mask
        const float *w_q
        const float *w_k
        const float *v
        const float *bias
        const float *kp
    ctypedef struct rf_attn_train_grads:
        float *d_query
        float *d_keys
        float *d_values
        float *w_q
        float *w_k
        float *v
        float *bias
        float *d_kp
    rf_status rf_attn_train_check(const rf_attn_train_args *a, char *err)
    size_t rf_attn_train_cache_size(const rf_attn_train_args *a)
    size_t rf_attn_train_workspace_size(const rf_attn_train_args *a)
    rf_status rf_attn_train_forward(const rf_attn_train_args *a, float *context, float *weights, void *cache,
                                    size_t cache_size, int n_threads, char *err)
    rf_status rf_attn_train_backward(const rf_attn_train_args *a, const void *cache, size_t cache_size,
                                     const float *d_context, const float *d_weights, const rf_attn_train_grads *g,
                                     void *ws, size_t ws_size, int n_threads, char *err)


# Each extension module carries its own copy of the C core: point this copy at SciPy's sgemm too.
install_blas()

FORMS = {"additive": 0, "dot": 1, "general": 2}




cdef uintptr_t faddr(object a, tuple shape, str name, bint writable=False) except? 0:
    """Address of a C-contiguous float32 array of exactly ``shape`` (None -> 0; empty -> 0)."""
    if a is None:
        return 0
    if a.dtype != np.float32 or not a.flags.c_contiguous or tuple(a.shape) != shape:
        raise InternalError(f"{name}: expected C-contiguous float32 {shape}, got {a.dtype} {a.shape} "
                            f"contiguous={a.flags.c_contiguous}")
    if writable and not a.flags.writeable:
        raise InternalError(f"{name}: expected a writable array")
    if a.size == 0:
        return 0
    return <uintptr_t>a.ctypes.data


cdef class Problem:
    """One attention problem: the args struct of the C core plus references to the arrays it points into
    (the arrays stay alive and unchanged as long as this object: forward and backward read the same)."""
    cdef rf_attn_train_args a
    cdef public object arrays
    cdef public str form

    def __init__(self, str form, query, keys, values, lengths, mask, w_q=None, w_k=None, v=None, bias=None,
                 float scale=1.0, kp=None):
        """keys may be None when kp (the precomputed key projection, (B, S, A) additive or (B, S, Dq)
        general) is given: then w_k and general's bias are not used and backward returns d_kp."""
        cdef char err[256]
        cdef rf_status st
        err[0] = 0
        if form not in FORMS:
            raise UnsupportedError(f"form: expected one of {sorted(FORMS)}, got {form!r}")
        if query.ndim != 3 or values.ndim != 3 or (keys is not None and keys.ndim != 3):
            raise InternalError(f"query/keys/values: expected 3-D, got {query.shape} {values.shape}")
        if keys is None and kp is None:
            raise InternalError("keys: expected keys or their projection kp, got neither")
        B, Tq, Dq = query.shape
        S, Dv = values.shape[1], values.shape[2]
        Dk = keys.shape[2] if keys is not None else 0
        A = 0
        if form == "additive":
            A = w_q.shape[0]
        self.form = form
        self.arrays = (query, keys, values, lengths, mask, w_q, w_k, v, bias, kp)
        self.a.form = FORMS[form]
        self.a.B, self.a.Tq, self.a.S, self.a.Dq, self.a.Dk, self.a.Dv, self.a.A = B, Tq, S, Dq, Dk, Dv, A
        self.a.scale = scale
        self.a.query = <const float *>faddr(query, (B, Tq, Dq), "query")
        self.a.keys = <const float *>faddr(keys, (B, S, Dk), "keys")
        self.a.kp = NULL
        if kp is not None:
            self.a.kp = <const float *>faddr(kp, (B, S, A if form == "additive" else Dq), "kp")
            if B and S and self.a.kp == NULL:
                raise InternalError("kp: expected data")
        self.a.values = <const float *>faddr(values, (B, S, Dv), "values")
        if lengths is not None:
            if lengths.dtype != np.int32 or not lengths.flags.c_contiguous or lengths.shape != (B,):
                raise InternalError(f"lengths: expected int32 ({B},), got {lengths.dtype} {lengths.shape}")
        if mask is not None:
            if mask.dtype != np.uint8 or not mask.flags.c_contiguous or mask.shape != (B, S):
                raise InternalError(f"mask: expected uint8 ({B}, {S}), got {mask.dtype} {mask.shape}")
        self.a.lengths = <const int32_t *><uintptr_t>(lengths.ctypes.data if lengths is not None and B else 0)
        self.a.mask = <const uint8_t *><uintptr_t>(mask.ctypes.data if mask is not None and mask.size else 0)
        self.a.w_q = self.a.w_k = self.a.v = self.a.bias = NULL
        if form == "additive":
            self.a.w_q = <const float *>faddr(w_q, (A, Dq), "query_weight")
            self.a.w_k = <const float *>faddr(w_k, (A, Dk), "key_weight")
            self.a.v = <const float *>faddr(v, (A,), "v")
            self.a.bias = <const float *>faddr(bias, (A,), "bias")
        elif form == "general" and kp is None:
            self.a.w_k = <const float *>faddr(w_k, (Dq, Dk), "weight")
            self.a.bias = <const float *>faddr(bias, (Dq,), "bias")
        st = rf_attn_train_check(&self.a, err)
        if st != RF_OK:
            raise_status(st, err)

    def forward(self, int n_threads=0):
        """-> (context (B, Tq, Dv), weights (B, Tq, S), cache (aligned uint8 buffer))."""
        cdef char err[256]
        cdef rf_status st
        err[0] = 0
        B, Tq, S, Dv = self.a.B, self.a.Tq, self.a.S, self.a.Dv
        ctx = np.empty((B, Tq, Dv), dtype=np.float32)
        w = np.empty((B, Tq, S), dtype=np.float32)
        cdef size_t size = rf_attn_train_cache_size(&self.a)
        if size == 0:
            raise ShapeError(f"cache: size overflows for B={B}, Tq={Tq}, S={S}")
        cache = _aligned_bytes(size)
        cdef float *cp = <float *>faddr(ctx, (B, Tq, Dv), "context", True)
        cdef float *wp = <float *>faddr(w, (B, Tq, S), "weights", True)
        cdef void *bp = <void *><uintptr_t>cache.ctypes.data
        with nogil:
            st = rf_attn_train_forward(&self.a, cp, wp, bp, size, n_threads, err)
        if st != RF_OK:
            raise_status(st, err)
        return ctx, w, cache

    def backward(self, cache, d_context, d_weights, bint want_inputs=True, bint want_params=True,
                 int n_threads=0):
        """-> (d_query, d_keys, d_values, {"w_q", "w_k", "v", "bias"} gradients present for the form).
        With a given kp: d_keys is the gradient of kp and there is no "w_k" (nor general's "bias")."""
        cdef char err[256]
        cdef rf_status st
        cdef rf_attn_train_grads g
        err[0] = 0
        B, Tq, S, Dq, Dk, Dv, A = self.a.B, self.a.Tq, self.a.S, self.a.Dq, self.a.Dk, self.a.Dv, self.a.A
        cdef size_t csize = rf_attn_train_cache_size(&self.a)
        cdef size_t wsize = rf_attn_train_workspace_size(&self.a)
        if wsize == 0 or csize == 0:
            raise ShapeError(f"workspace: size overflows for B={B}, Tq={Tq}, S={S}")
        if cache.dtype != np.uint8 or cache.size < csize or cache.ctypes.data % 64:
            raise InternalError(f"cache: expected an aligned uint8 buffer of {csize} bytes, got {cache.size}")
        cdef const float *dcp = <const float *>faddr(d_context, (B, Tq, Dv), "d_context")
        cdef const float *dwp = <const float *>faddr(d_weights, (B, Tq, S), "d_weights")
        dq = np.empty((B, Tq, Dq), np.float32) if want_inputs else None
        given = self.arrays[9] is not None
        Dkp = A if self.form == "additive" else Dq
        dk = (np.empty((B, S, Dkp), np.float32) if given else np.empty((B, S, Dk), np.float32)) if want_inputs else None
        dv = np.empty((B, S, Dv), np.float32) if want_inputs else None
        params = {}
        if want_params:
            if self.form == "additive":
                params["w_q"] = np.empty((A, Dq), np.float32)
                if not given:
                    params["w_k"] = np.empty((A, Dk), np.float32)
                params["v"] = np.empty((A,), np.float32)
                if self.arrays[8] is not None:
                    params["bias"] = np.empty((A,), np.float32)
            elif self.form == "general" and not given:
                params["w_k"] = np.empty((Dq, Dk), np.float32)
                if self.arrays[8] is not None:
                    params["bias"] = np.empty((Dq,), np.float32)
        # products with an empty inner dimension leave nothing to write: start from zeros
        for arr in (dq, dk, dv, *params.values()):
            if arr is not None:
                arr[...] = 0
        g.d_query = <float *>faddr(dq, (B, Tq, Dq), "d_query", True)
        g.d_keys = NULL
        g.d_kp = NULL
        if given:
            g.d_kp = <float *>faddr(dk, (B, S, Dkp), "d_kp", True)
        else:
            g.d_keys = <float *>faddr(dk, (B, S, Dk), "d_keys", True)
        g.d_values = <float *>faddr(dv, (B, S, Dv), "d_values", True)
        g.w_q = <float *>faddr(params.get("w_q"), (A, Dq), "grad w_q", True)
        g.w_k = <float *>faddr(params.get("w_k"), (A, Dk) if self.form == "additive" else (Dq, Dk), "grad w_k", True)
        g.v = <float *>faddr(params.get("v"), (A,), "grad v", True)
        g.bias = <float *>faddr(params.get("bias"), (A,) if self.form == "additive" else (Dq,), "grad bias", True)
        ws = _aligned_bytes(wsize)
        cdef const void *cp = <const void *><uintptr_t>cache.ctypes.data
        cdef void *wp = <void *><uintptr_t>ws.ctypes.data
        with nogil:
            st = rf_attn_train_backward(&self.a, cp, csize, dcp, dwp, &g, wp, wsize, n_threads, err)
        if st != RF_OK:
            raise_status(st, err)
        return dq, dk, dv, params


def _aligned_bytes(size_t n):
    """A 64-byte aligned uint8 array of n bytes (a view into a slightly larger buffer)."""
    raw = np.empty(n + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + n]
