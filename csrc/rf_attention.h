/* rf_attention.h -- attention kernels of the rnnfast core (included from rnnfast.h).
 *
 * Shape glossary: B=batch Tq=query steps S=source (key) length Dq=query size Dk=key size Dv=value size
 *                 A=additive attention size E=embed size H=heads (Hq query heads, Hkv key/value heads)
 *                 L=query length (MHA) Dh=head size
 *
 * Single-head attention over a memory (keys (B,S,Dk), values (B,S,Dv)), one score per (query, key):
 *   additive (Bahdanau)  e[b,t,s] = v . tanh(qp[b,t] + kp[b,s])    qp = W_q q (+ bias), kp = W_k k (precomputed)
 *   dot                  e[b,t,s] = scale * q[b,t] . kp[b,s]        kp = k (dot, scaled: scale = 1/sqrt(D))
 *   general (Luong)      e[b,t,s] = q[b,t] . (W k[b,s])             kp = k W^T precomputed once per source
 *   masked softmax       a[b,t,s] = exp(e - m) / sum_s' exp(e - m) over allowed s (s < len[b], mask != 0);
 *                        m = max over allowed s; a = 0 at masked s; a fully masked row is all zeros.
 *   context              c[b,t]   = sum_s a[b,t,s] values[b,s]
 *
 * Scaled dot-product attention on strided 4-D tensors (MHA after its projections, ONNX Attention):
 *   e = scale * Q_h K_g^T (g = h / (Hq/Hkv): grouped-query heads), e = softcap*tanh(e/softcap) if softcap>0,
 *   e += mask (additive float, broadcast by zero strides) + key_padding (B,S) additive,
 *   causal: e[l,s] = -inf for s > l + causal_offset;  P = masked softmax(e);  Y_h = P V_g.
 * All matrices row-major float32. Every function returns rf_status and writes a message into err.
 */
#ifndef RF_ATTENTION_H
#define RF_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "rnnfast.h" /* rf_status; include-guarded both ways */

#ifdef __cplusplus
extern "C" {
#endif

enum { RF_ATTN_ADDITIVE = 0, RF_ATTN_DOT = 1 };

typedef struct {
    int kind;              /* RF_ATTN_ADDITIVE or RF_ATTN_DOT (dot, general and scaled use DOT) */
    int B, Tq, S, D, Dv;   /* D: size of the score space (A for additive, Dq for dot/general) */
    const float *q;        /* (B, Tq, D): additive: W_q q + b already applied; dot: the query */
    const float *kp;       /* (B, S, D)  precomputed key projection (or the keys themselves) */
    const float *v;        /* (D) additive only: the score vector v, else NULL */
    const float *values;   /* (B, S, Dv) */
    const int32_t *lengths; /* (B) in [0, S] or NULL */
    const uint8_t *mask;   /* (B, S) nonzero = attend, or NULL */
    float scale;           /* dot only: multiplies q . k (1 for plain dot and general) */
    float *ctx;            /* out: (B, Tq, Dv) */
    float *weights;        /* out: (B, Tq, S) */
} rf_attn_args;

/* Scores, masked softmax and context for every (b, t), OpenMP over the B*Tq rows. */
rf_status rf_attn_forward(const rf_attn_args *a, int n_threads, char *err);

/* Numerically stable softmax of one row in place; -inf entries are masked. A row whose entries are all
 * -inf becomes all zeros (not NaN). NaN propagates. */
void rf_softmax_row(float *x, int n);

typedef struct {
    int B, Hq, Hkv, L, S, Dk, Dv;
    /* Element (b, h, l, d) of Q is q[b*q_sb + h*q_sh + l*q_sl + d]; likewise K, V (over s), Y. */
    const float *q; int64_t q_sb, q_sh, q_sl; /* (B, Hq, L, Dk) strided */
    const float *k; int64_t k_sb, k_sh, k_ss; /* (B, Hkv, S, Dk) strided */
    const float *v; int64_t v_sb, v_sh, v_ss; /* (B, Hkv, S, Dv) strided */
    const float *mask; int64_t m_sb, m_sh, m_sl; /* additive (B?, H?, L?, S), rows contiguous; strides
                                                    may be 0 (broadcast); NULL = none */
    const float *kpm;      /* additive key padding (B, S) contiguous, or NULL */
    int causal;            /* 1: key s allowed for query l only if s <= l + causal_offset */
    int causal_offset;
    float scale;           /* multiplies Q K^T */
    float softcap;         /* > 0: e = softcap * tanh(e / softcap) before the masks; 0: off */
    float *y; int64_t y_sb, y_sh, y_sl; /* out: (B, Hq, L, Dv) strided */
    float *weights;        /* out: (B, Hq, L, S) contiguous, or NULL */
    float *raw_scores;     /* out: (B, Hq, L, S) contiguous scale*QK^T before softcap/mask, or NULL */
} rf_sdpa_args;

/* Bytes of workspace rf_sdpa_forward needs with n_threads threads (n_threads <= 0: the default). */
size_t rf_sdpa_workspace_size(const rf_sdpa_args *a, int n_threads);
rf_status rf_sdpa_forward(const rf_sdpa_args *a, void *ws, size_t ws_size, int n_threads, char *err);

/* torch.nn.MultiheadAttention forward (inference): projections, per-head SDPA, output projection.
 * batch_first=1: q (B, L, E), k (B, S, Ek), v (B, S, Ev), y (B, L, E); else time-major (L, B, E), (S, B, Ek), (S, B, Ev), y (L, B, E).
 * Self-attention with q == k == v and w_k == w_q + E*E, w_v == w_k + E*E (torch's in_proj_weight) runs
 * one fused (rows, E) x (E, 3E) projection GEMM. With packed weights (wp_in, wp_o) and up to
 * RF_MHA_PACKED_ROWS rows, the projections run on the core's kernel in its OpenMP team (columns split
 * over threads) instead of BLAS beside OpenMP. */
typedef struct {
    int B, L, S, E, Ek, Ev, H;
    int batch_first;
    const float *q, *k, *v;                 /* inputs, contiguous in the layout above */
    const float *w_q, *w_k, *w_v;           /* (E, E), (E, Ek), (E, Ev) */
    const float *b_q, *b_k, *b_v;           /* (E) each or NULL */
    const float *w_o, *b_o;                 /* (E, E), (E) or NULL */
    const float *mask; int64_t m_sb, m_sh;  /* additive (B?, H?, L, S) (row stride S), zero strides
                                               broadcast, or NULL */
    const float *kpm;                       /* additive (B, S) or NULL */
    int causal;
    float *y;                               /* out: same layout as q */
    float *weights;                         /* out: (B, H, L, S) or NULL */
    const float *wp_in;                     /* optional: torch's in_proj_weight (3E, E) packed by rf_linear_pack,
                                               used by the fused self-attention projection */
    const float *wp_o;                      /* optional: w_o packed by rf_linear_pack */
} rf_mha_args;

size_t rf_mha_workspace_size(const rf_mha_args *a, int n_threads);
rf_status rf_mha_forward(const rf_mha_args *a, void *ws, size_t ws_size, int n_threads, char *err);

/* ---- Greedy decoding of a Seq2Seq model, the whole loop in C ------------------------------------
 * Per step t (y = previous token, s = stacked decoder state (L, B, H), M = the precomputed memory):
 *   x = [emb[y]; (bahdanau) attn(h_top(s), M); (input feeding) feed]
 *   s' = rf_rnn_forward(dec, x, s) with T = 1;  top = h_top(s')
 *   luong: c = attn(top, M); top = feed = tanh(W_c [c; top] + b_c)
 *   logits = W_o top + b_o;  y' = argmax (first maximum);  score += logits[y'] - logsumexp(logits)
 * A row stops after it emits end_token (its later tokens are end_token); the loop stops when every
 * row stopped or after max_len steps. The additive attention's query projection W_q h + b is one
 * GEMM per step; the key side (kp) is precomputed by the caller once per source. From B >= 4 rows and
 * 4 steps the output layer's weight is packed once per call (in the workspace) for the core's product. */
/* y (B, N) = x (B, K) . w^T + bias, w (N, K): small B (<= 16) on the core's own kernel (weights read
 * once for all rows), larger B on rf_sgemm. */
rf_status rf_linear(int B, int N, int K, const float *x, const float *w, const float *bias, float *y, int n_threads,
                    char *err);
/* w (N, K) packed once for the core's product (rf_mha_args.wp_in / wp_o): floats needed (0 if N or K < 1),
 * and the packing into wp (wp_floats >= that). */
size_t rf_linear_packed_size(int N, int K);
rf_status rf_linear_pack(int N, int K, const float *w, float *wp, size_t wp_floats, char *err);

enum { RF_WIRING_NONE = 0, RF_WIRING_BAHDANAU = 1, RF_WIRING_LUONG = 2 };

typedef struct {
    const rf_rnn_desc *dec;      /* unidirectional decoder stack, no projection */
    const rf_rnn_weights *dec_w; /* L entries */
    int wiring, input_feeding;
    int B, S, E, n_emb, V, Hc;   /* Hc: combine output size (Luong), the output layer's input size */
    const float *embedding;      /* (n_emb, E) */
    const float *out_w, *out_b;  /* (V, Hout) Hout = Hc (Luong) or H; (V) or NULL */
    const float *comb_w, *comb_b; /* Luong: (Hc, Dv + H), (Hc) or NULL */
    int attn_kind;               /* RF_ATTN_ADDITIVE or RF_ATTN_DOT */
    int A;                       /* additive: attention size; dot: must equal H */
    const float *attn_wq, *attn_b, *attn_v; /* additive: (A, H), (A) or NULL, (A) */
    float attn_scale;            /* dot */
    const float *kp;             /* (B, S, A or H) precomputed keys */
    const float *values;         /* (B, S, Dv) */
    int Dv;
    const int32_t *src_lengths;  /* (B) or NULL */
    const uint8_t *src_mask;     /* (B, S) or NULL */
    const float *h0, *c0;        /* (L, B, H); c0 LSTM only (NULL = zeros) */
    const int64_t *start;        /* (B) first decoder inputs */
    int max_len, end_token;      /* end_token < 0: none */
    int64_t *tokens;             /* out: (B, max_len), rows padded with end_token (or -1) */
    int64_t *out_lengths;        /* out: (B) tokens generated, the end token included */
    double *scores;              /* out: (B) sum of log-probabilities */
    float *attn_out;             /* out: (B, max_len, S) or NULL */
    int *steps;                  /* out: number of steps run (<= max_len) */
} rf_greedy_args;

size_t rf_greedy_workspace_size(const rf_greedy_args *a, int n_threads);
rf_status rf_greedy_decode(const rf_greedy_args *a, void *ws, size_t ws_size, int n_threads, char *err);

#ifdef __cplusplus
}
#endif
#endif /* RF_ATTENTION_H */
