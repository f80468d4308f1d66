/* rnnfast.h -- THE public C header of the rnnfast core.
 *
 * Shape glossary: T=time B=batch I=input H=hidden P=projection (LSTM proj_size, else P=H)
 *                 G=gates (RNN 1, LSTM 4, GRU 3) D=directions L=layers
 * Canonical gate order is PyTorch's: LSTM [i f g o], GRU [r z n].
 * All matrices are row-major float32. The core never owns weights or outputs: callers pass borrowed
 * pointers and a workspace sized by the matching *_workspace_size() query. Every public function
 * returns rf_status and, when err != NULL, writes a message "expected (..), got (..)" into err.
 */
#ifndef RNNFAST_H
#define RNNFAST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    RF_OK = 0,
    RF_ERR_INVALID_ARG = 1,
    RF_ERR_NO_MEMORY = 2,
    RF_ERR_UNSUPPORTED = 3,
    RF_ERR_INTERNAL = 4
} rf_status;

#define RF_ERRLEN 256

/* ---- BLAS table (filled once at import from scipy.linalg.cython_blas; naive fallback if unset) ---- */
typedef void (*rf_fortran_sgemm)(const char *transa, const char *transb, const int *m, const int *n,
                                 const int *k, const float *alpha, const float *a, const int *lda,
                                 const float *b, const int *ldb, const float *beta, float *c,
                                 const int *ldc);
/* Set the Fortran sgemm used by the core (NULL = the core's naive kernel). Call before any thread
 * uses the core (at import); the pointer is read-only afterwards. */
void rf_blas_set_sgemm(rf_fortran_sgemm fn);

/* Row-major C(m,n) = alpha * op(A)(m,k) . op(B)(k,n) + beta * C, op = transpose when trans != 0. */
void rf_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
              const float *b, int ldb, float beta, float *c, int ldc);

/* ---- Recurrent stacks: RNN / LSTM / GRU ---- */
typedef enum { RF_CELL_RNN_TANH = 0, RF_CELL_RNN_RELU = 1, RF_CELL_LSTM = 2, RF_CELL_GRU = 3 } rf_cell;

/* ONNX-style activation functions (used only when rf_rnn_desc.ext != NULL). */
typedef enum {
    RF_ACT_SIGMOID = 0, RF_ACT_TANH, RF_ACT_RELU, RF_ACT_AFFINE, RF_ACT_LEAKY_RELU,
    RF_ACT_THRESHOLDED_RELU, RF_ACT_SCALED_TANH, RF_ACT_HARD_SIGMOID, RF_ACT_ELU, RF_ACT_SOFTSIGN,
    RF_ACT_SOFTPLUS
} rf_act_kind;

typedef struct {
    int kind; /* rf_act_kind */
    float alpha, beta;
} rf_act;

/* Extensions of ONNX's RNN/LSTM/GRU operators beyond PyTorch's cells. */
typedef struct {
    rf_act act[2][3]; /* per direction: RNN {f}, GRU {f, g}, LSTM {f, g, h} (ONNX's naming) */
    float clip;       /* > 0: clip gate pre-activations to [-clip, clip]; 0: no clipping */
    int input_forget; /* LSTM: f = 1 - i */
} rf_rnn_ext;

typedef struct {
    int cell;        /* rf_cell */
    int reset_after; /* GRU: 1 = PyTorch/cuDNN form, 0 = original (r applied to h before W_hn) */
    int num_layers;  /* L >= 1 */
    int num_dirs;    /* D = 1 or 2 */
    int input_size;  /* I >= 0 */
    int hidden_size; /* H >= 1 */
    int proj_size;   /* LSTM only: P > 0 projects h with W_hr; 0 = no projection */
    const rf_rnn_ext *ext; /* NULL = PyTorch semantics */
} rf_rnn_desc;

/* Weights of one (layer, direction), index k = layer * D + dir. Canonical layout (PyTorch's). */
typedef struct {
    const float *w_ih; /* (G*H, I_l)  I_0 = I, I_l = D*P for l > 0 */
    const float *w_hh; /* (G*H, P) */
    const float *bias; /* (G*H) b_ih + b_hh pre-summed, or NULL; GRU reset_after: n-part is b_in only */
    const float *b_hn; /* (H) GRU reset_after only: b_hn, kept inside r * (W_hn h + b_hn); or NULL */
    const float *w_hr; /* (P, H) LSTM projection, or NULL */
    const float *peep; /* (3*H) LSTM peepholes [i f o] (ONNX P, reordered), or NULL */
    const float *packed_ih; /* optional W_ih packed by rf_rnn_pack (K = I_l) for the batch-1 kernel */
    const float *packed_hh; /* optional W_hh packed by rf_rnn_pack (K = P) for the batch-1 kernel */
} rf_rnn_weights;

typedef struct {
    int T, B;
    int batch_first;        /* 0: x (T, B, I), out (T, B, D*P); 1: x (B, T, I), out (B, T, D*P) */
    const float *x;         /* contiguous, see batch_first */
    const int32_t *lengths; /* (B) in [0, T], or NULL = all T */
    const float *h0;        /* (L*D, B, P) or NULL = zeros */
    const float *c0;        /* (L*D, B, H) LSTM, or NULL = zeros */
    float *out;             /* out: see batch_first; may be NULL (only final states wanted) */
    float *h_n;             /* out: (L*D, B, P), may be NULL */
    float *c_n;             /* out: (L*D, B, H) LSTM, may be NULL */
} rf_rnn_io;

/* Checks a description; returns RF_ERR_INVALID_ARG with a message when it is inconsistent. */
rf_status rf_rnn_check_desc(const rf_rnn_desc *d, char *err);

/* Bytes of workspace rf_rnn_forward needs for T steps of batch B (0 on overflow: treat as error).
 * rf_rnn_workspace_size is enough for any weights; rf_rnn_workspace_size_w can be much smaller: it knows
 * whether the packed fast path will run (its memory does not grow with T). */
size_t rf_rnn_workspace_size(const rf_rnn_desc *d, int T, int B);
size_t rf_rnn_workspace_size_w(const rf_rnn_desc *d, const rf_rnn_weights *w, int T, int B);

/* Packing of a (G*H, K) weight for the batch-1 kernel: blocks of 16 hidden units, (ceil(H/16), G, K, 16).
 * rf_rnn_packed_size gives its number of floats (0 on error). Batch-1 calls use the packed kernel only
 * when every (layer, direction) has packed_ih and packed_hh. */
size_t rf_rnn_packed_size(const rf_rnn_desc *d, int K);
void rf_rnn_pack(const rf_rnn_desc *d, const float *w, /* (G*H, K) */ int K, float *packed /*out*/);

/* Runs the whole stack. w: L*D entries. ws: at least rf_rnn_workspace_size(d, T, B) bytes,
 * 64-byte aligned. n_threads <= 0: the OpenMP default. */
rf_status rf_rnn_forward(const rf_rnn_desc *d, const rf_rnn_weights *w, const rf_rnn_io *io, void *ws,
                         size_t ws_size, int n_threads, char *err);

#ifdef __cplusplus
}
#endif

#include "rf_attention.h" /* attention, multi-head attention, greedy decoding */

#endif /* RNNFAST_H */
