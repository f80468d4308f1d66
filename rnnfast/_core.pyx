# cython: language_level=3
"""Cython glue of the C core: check -> allocate -> `with nogil:` -> status -> exception.

Validation of user input happens in rnnfast/layers.py; this layer re-checks only what protects memory
(sizes of every buffer handed to C), so a bug above it raises instead of corrupting memory.
"""

from libc.stdint cimport int32_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from rnnfast._capi cimport RF_OK, RF_ERRLEN, install_blas, raise_status, rf_status

import numpy as np

cimport numpy as cnp

cnp.import_array()

from . import _blas
from .errors import InternalError, OutOfMemoryError, ShapeError


cdef extern from "rnnfast.h" nogil:
    ctypedef struct rf_act:
        int kind
        float alpha
        float beta
    ctypedef struct rf_rnn_ext:
        rf_act act[2][3]
        float clip
        int input_forget
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
    rf_status rf_rnn_check_desc(const rf_rnn_desc *d, char *err)
    size_t rf_rnn_workspace_size(const rf_rnn_desc *d, int T, int B)
    size_t rf_rnn_workspace_size_w(const rf_rnn_desc *d, const rf_rnn_weights *w, int T, int B)
    size_t rf_rnn_packed_size(const rf_rnn_desc *d, int K)
    void rf_rnn_pack(const rf_rnn_desc *d, const float *w, int K, float *packed)
    rf_status rf_rnn_forward(const rf_rnn_desc *d, const rf_rnn_weights *w, const rf_rnn_io *io, void *ws,
                             size_t ws_size, int n_threads, char *err)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int rf_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int rf_omp_max_threads(void) { return 1; }
    #endif
    """
    int rf_omp_max_threads() nogil

install_blas()

CELLS = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2, "affine": 3, "leakyrelu": 4, "thresholdedrelu": 5,
               "scaledtanh": 6, "hardsigmoid": 7, "elu": 8, "softsign": 9, "softplus": 10}


def omp_max_threads():
    return rf_omp_max_threads()




cdef const float *cptr(object a, Py_ssize_t n, str name) except? NULL:
    """Pointer to a C-contiguous float32 array of exactly n elements (None -> NULL)."""
    cdef cnp.ndarray arr
    if a is None:
        return NULL
    if not isinstance(a, cnp.ndarray):
        raise InternalError(f"{name}: expected a NumPy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or cnp.PyArray_SIZE(arr) != n):
        raise InternalError(f"{name}: expected C-contiguous float32 of {n} elements, got {a.dtype} "
                            f"{a.shape} contiguous={a.flags.c_contiguous}")
    if n == 0:
        return NULL
    return <const float *>cnp.PyArray_DATA(arr)


cdef float *wptr(object a, Py_ssize_t n, str name) except? NULL:
    """Like cptr, for an output: the array must also be writable."""
    if a is not None and not cnp.PyArray_ISWRITEABLE(<cnp.ndarray?>a):
        raise InternalError(f"{name}: expected a writable array")
    return <float *>cptr(a, n, name)


cdef class RNNPlan:
    """Prepared weights of one recurrent stack: pointers into arrays this object keeps alive."""
    cdef rf_rnn_desc desc
    cdef rf_rnn_ext ext
    cdef rf_rnn_weights *w
    cdef readonly int n_layers, n_dirs, hidden, proj, gates, input_size
    cdef object keep

    def __cinit__(self):
        self.w = NULL

    def __dealloc__(self):
        free(self.w)

    def __init__(self, str cell, bint reset_after, int num_layers, int num_dirs, int input_size,
                 int hidden_size, int proj_size, list weights, ext=None, bint pack=True):
        """weights: num_layers*num_dirs dicts with float32 C-contiguous arrays
        w_ih (G*H, I_l), w_hh (G*H, P), bias (G*H)|None, b_hn (H)|None, w_hr (P, H)|None, peep (3H)|None.
        ext: None or dict(act=[[(kind, alpha, beta)]*3]*D, clip=float, input_forget=bool).
        pack=False leaves the weights unpacked: the core then runs its generic (naive) path."""
        cdef char err[256]
        cdef int k, g, d
        cdef size_t n_ih, n_hh
        memset(&self.desc, 0, sizeof(self.desc))
        memset(&self.ext, 0, sizeof(self.ext))
        self.desc.cell = CELLS[cell]
        self.desc.reset_after = reset_after
        self.desc.num_layers = num_layers
        self.desc.num_dirs = num_dirs
        self.desc.input_size = input_size
        self.desc.hidden_size = hidden_size
        self.desc.proj_size = proj_size
        if ext is not None:
            for d in range(num_dirs):
                for g in range(3):
                    kind, alpha, beta = ext["act"][d][g]
                    self.ext.act[d][g].kind = kind
                    self.ext.act[d][g].alpha = alpha
                    self.ext.act[d][g].beta = beta
            self.ext.clip = ext["clip"]
            self.ext.input_forget = ext["input_forget"]
            self.desc.ext = &self.ext
        err[0] = 0
        st = rf_rnn_check_desc(&self.desc, err)
        if st != RF_OK:
            raise_status(st, err)
        if len(weights) != num_layers * num_dirs:
            raise InternalError("weights: expected one entry per layer and direction")
        self.n_layers, self.n_dirs, self.hidden = num_layers, num_dirs, hidden_size
        self.proj = proj_size if proj_size else hidden_size
        self.gates = {"LSTM": 4, "GRU": 3}.get(cell, 1)
        self.input_size = input_size
        self.w = <rf_rnn_weights *>malloc(sizeof(rf_rnn_weights) * num_layers * num_dirs)
        if self.w == NULL:
            raise OutOfMemoryError("weights table")
        memset(self.w, 0, sizeof(rf_rnn_weights) * num_layers * num_dirs)
        keep = []
        cdef Py_ssize_t GH = self.gates * hidden_size, H = hidden_size, P = self.proj
        cdef Py_ssize_t I_l
        for k in range(num_layers * num_dirs):
            wk = weights[k]
            I_l = input_size if k < num_dirs else num_dirs * P
            self.w[k].w_ih = cptr(wk["w_ih"], GH * I_l, "w_ih")
            self.w[k].w_hh = cptr(wk["w_hh"], GH * P, "w_hh")
            self.w[k].bias = cptr(wk.get("bias"), GH, "bias")
            self.w[k].b_hn = cptr(wk.get("b_hn"), H, "b_hn")
            self.w[k].w_hr = cptr(wk.get("w_hr"), P * H, "w_hr")
            self.w[k].peep = cptr(wk.get("peep"), 3 * H, "peep")
            packed = None
            if pack and ext is None and proj_size == 0:
                # the batch-1 kernel's layout (rf_rnn_pack): costs one more copy of the weights
                n_ih = rf_rnn_packed_size(&self.desc, <int>I_l)
                n_hh = rf_rnn_packed_size(&self.desc, <int>P)
                packed = (np.empty(n_ih, dtype=np.float32), np.empty(n_hh, dtype=np.float32))
                rf_rnn_pack(&self.desc, self.w[k].w_ih, <int>I_l, wptr(packed[0], n_ih, "packed_ih"))
                rf_rnn_pack(&self.desc, self.w[k].w_hh, <int>P, wptr(packed[1], n_hh, "packed_hh"))
                self.w[k].packed_ih = cptr(packed[0], n_ih, "packed_ih")
                self.w[k].packed_hh = cptr(packed[1], n_hh, "packed_hh")
            keep.append((wk, packed))
        self.keep = keep

    def workspace_size(self, int T, int B):
        """Bytes of workspace one forward call of T steps and B sequences allocates (0: overflow)."""
        return rf_rnn_workspace_size_w(&self.desc, self.w, T, B)

    def forward(self, x, lengths, h0, c0, out, h_n, c_n, bint batch_first, int n_threads):
        """All arrays allocated and validated by the caller. x: (T, B, I) or (B, T, I) float32."""
        cdef rf_rnn_io io
        cdef char err[256]
        cdef cnp.ndarray larr
        cdef Py_ssize_t T, B, LD = self.n_layers * self.n_dirs
        cdef size_t ws_size
        cdef void *ws
        cdef rf_status st
        if x.ndim != 3:
            raise InternalError("x must be 3-D here")
        T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        if T > 2147483647 or B > 2147483647 or T * B > 2147483647:
            raise ShapeError(f"x: expected at most 2**31-1 rows (T*B), got T={T}, B={B}")
        memset(&io, 0, sizeof(io))
        io.T = <int>T
        io.B = <int>B
        io.batch_first = batch_first
        io.x = cptr(x, T * B * self.input_size, "x")
        if lengths is not None:
            larr = <cnp.ndarray?>lengths
            if (cnp.PyArray_TYPE(larr) != cnp.NPY_INT32 or cnp.PyArray_NDIM(larr) != 1
                    or cnp.PyArray_SIZE(larr) != B or not cnp.PyArray_IS_C_CONTIGUOUS(larr)):
                raise InternalError("lengths must be int32 (B,)")
            if B > 0:
                io.lengths = <const int32_t *>cnp.PyArray_DATA(larr)
        io.h0 = cptr(h0, LD * B * self.proj, "h0")
        io.c0 = cptr(c0, LD * B * self.hidden, "c0")
        io.out = wptr(out, T * B * self.n_dirs * self.proj, "out")
        io.h_n = wptr(h_n, LD * B * self.proj, "h_n")
        io.c_n = wptr(c_n, LD * B * self.hidden, "c_n")
        ws_size = rf_rnn_workspace_size_w(&self.desc, self.w, io.T, io.B)
        if ws_size == 0:
            raise OutOfMemoryError(f"workspace size overflows for T={T}, B={B}")
        err[0] = 0
        with nogil:
            ws = malloc(ws_size)
            if ws != NULL:
                st = rf_rnn_forward(&self.desc, self.w, &io, ws, ws_size, n_threads, err)
                free(ws)
        if ws == NULL:
            raise OutOfMemoryError(f"could not allocate {ws_size} bytes of workspace for T={T}, B={B}")
        if st != RF_OK:
            raise_status(st, err)
