/* rf_attention_train.h -- training (forward with a cache, backward) of the single-head attention forms.
 * Public (included by rnnfast/_attention_train.pyx). The inference kernels are in rf_attention.h.
 *
 * Shape glossary: B=batch Tq=query steps S=source (key) length Dq=query size Dk=key size Dv=value size
 *                 A=additive attention size; R = B*Tq query rows. Row-major float32 everywhere.
 *
 * Forward (q (B,Tq,Dq), k (B,S,Dk), values (B,S,Dv)):
 *   additive (Bahdanau)  qp = q W_q^T + bias (R,A), kp = k W_k^T (B*S,A),
 *                        u[b,t,s] = tanh(qp[b,t] + kp[b,s]) (A),  e[b,t,s] = v . u[b,t,s]
 *   dot / scaled dot     e[b,t,s] = scale * q[b,t] . k[b,s]        (Dq == Dk; scale 1 or 1/sqrt(Dk))
 *   general (Luong)      kp = k W^T + bias (B*S,Dq),  e[b,t,s] = q[b,t] . kp[b,s]
 *   allowed(b,s)         s < lengths[b] (lengths may be NULL) and mask[b,s] != 0 (mask may be NULL)
 *   a[b,t,s]             masked softmax of e over the allowed s; 0 at masked s; a row with no allowed
 *                        key is all zeros
 *   c[b,t]               sum_s a[b,t,s] values[b,s]                 context (B,Tq,Dv), weights a (B,Tq,S)
 * Backward (dc (B,Tq,Dv), dw (B,Tq,S) or NULL; only allowed positions take part):
 *   da[b,t,s] = dc[b,t] . values[b,s] + dw[b,t,s]        d_values[b,s] = sum_t a[b,t,s] dc[b,t]
 *   de[b,t,s] = a[b,t,s] (da[b,t,s] - sum_s' a[b,t,s'] da[b,t,s'])    (0 at masked s and masked rows)
 *   dot      dq[b,t] = scale sum_s de k[b,s];   dk[b,s] = scale sum_t de q[b,t]
 *   general  dq[b,t] = sum_s de kp[b,s];  dkp[b,s] = sum_t de q[b,t];
 *            dk = dkp W;  dW = dkp^T k;  dbias = sum_rows dkp
 *   additive g[b,t,s] = de[b,t,s] v (1 - u^2);  dqp[b,t] = sum_s g;  dkp[b,s] = sum_t g;
 *            dv = sum_{b,t,s} de u;  dq = dqp W_q;  dW_q = dqp^T q;  dbias = sum_rows dqp;
 *            dk = dkp W_k;  dW_k = dkp^T k
 * Masked positions get exactly zero d_keys / d_values (they never enter a sum). Values at masked
 * positions are never read; keys there only enter the key projection products (kp and dW = dkp^T k with
 * dkp = 0 there), so only non-finite padded keys of the additive/general forms can reach dW.
 *
 * Cache (filled by forward, read by backward; 64-byte aligned pieces in this order):
 *   weights a (R, S); additive: qp (R, A), kp (B*S, A), u (R*S, A); general: kp (B*S, Dq)
 *   (kp only when the caller does not pass its own projection args.kp).
 * Workspace of backward: de (R, S); additive dqp (R, A), dkp (B*S, A); general dkp (B*S, Dq).
 * Threads: OpenMP over the batch for the per-(b,t,s) work; rf_sgemm (BLAS threads) for the projections,
 * never inside a parallel region.
 */
#ifndef RF_ATTENTION_TRAIN_H
#define RF_ATTENTION_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "rnnfast.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    RF_ATTN_TRAIN_ADDITIVE = 0,
    RF_ATTN_TRAIN_DOT = 1, /* dot and scaled dot (scale) */
    RF_ATTN_TRAIN_GENERAL = 2
} rf_attn_train_form;

typedef struct {
    int form;                /* rf_attn_train_form */
    int B, Tq, S, Dq, Dk, Dv; /* >= 0; dot: Dq == Dk */
    int A;                   /* additive: attention size >= 1; else ignored */
    float scale;             /* dot only: multiplies q . k */
    const float *query;      /* (B, Tq, Dq) */
    const float *keys;       /* (B, S, Dk) */
    const float *values;     /* (B, S, Dv) */
    const int32_t *lengths;  /* (B) in [0, S], or NULL */
    const uint8_t *mask;     /* (B, S) nonzero = attend, or NULL */
    const float *w_q;        /* additive: (A, Dq) */
    const float *w_k;        /* additive: (A, Dk); general: W (Dq, Dk) */
    const float *v;          /* additive: (A) */
    const float *bias;       /* additive: (A), general: (Dq), or NULL */
    const float *kp;         /* optional precomputed key projection, additive (B, S, A) = k W_k^T, general
                                (B, S, Dq) = k W^T + bias; NULL = computed here. When given, keys, w_k and
                                general's bias are not read (keys may be NULL) and backward writes d_kp
                                instead of d_keys, w_k and general's bias (a decoder projects once per
                                source and attends at every step). Not used by the dot forms. */
} rf_attn_train_args;

/* Gradients: every pointer may be NULL when not wanted; all are overwritten (not accumulated). */
typedef struct {
    float *d_query;  /* (B, Tq, Dq) */
    float *d_keys;   /* (B, S, Dk) */
    float *d_values; /* (B, S, Dv) */
    float *w_q;      /* additive: (A, Dq) */
    float *w_k;      /* additive: (A, Dk); general: (Dq, Dk) */
    float *v;        /* additive: (A) */
    float *bias;     /* additive: (A), general: (Dq) */
    float *d_kp;     /* with args.kp: (B, S, A) additive, (B, S, Dq) general */
} rf_attn_train_grads;

/* Checks sizes and pointers; RF_ERR_INVALID_ARG with a message when inconsistent. */
rf_status rf_attn_train_check(const rf_attn_train_args *a, char *err);
/* Bytes of cache / backward workspace (0 = overflow; a valid empty problem still needs >= 64). */
size_t rf_attn_train_cache_size(const rf_attn_train_args *a);
size_t rf_attn_train_workspace_size(const rf_attn_train_args *a);

/* Forward: context (B, Tq, Dv) and weights (B, Tq, S) (either may be NULL), and the cache
 * (64-byte aligned, at least rf_attn_train_cache_size bytes). */
rf_status rf_attn_train_forward(const rf_attn_train_args *a, float *context /*out*/, float *weights /*out*/,
                                void *cache, size_t cache_size, int n_threads, char *err);

/* Backward for the cache of rf_attn_train_forward with the same args. d_context (B, Tq, Dv) and
 * d_weights (B, Tq, S) may each be NULL (zero). ws: rf_attn_train_workspace_size bytes, aligned. */
rf_status rf_attn_train_backward(const rf_attn_train_args *a, const void *cache, size_t cache_size,
                                 const float *d_context, const float *d_weights, const rf_attn_train_grads *g,
                                 void *ws, size_t ws_size, int n_threads, char *err);

#ifdef __cplusplus
}
#endif
#endif /* RF_ATTENTION_TRAIN_H */
