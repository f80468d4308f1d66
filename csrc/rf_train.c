/* rf_train.c -- training forward with a cache, backpropagation through time, Linear/Embedding,
 * losses, gradient clipping and optimizers. Equations and shapes: see rf_train.h.
 *
 * Shape glossary: T=time B=batch I=input H=hidden P=projection G=gates D=directions L=layers N=T*B
 *
 * Cache layout (carved in this order, 64-byte aligned pieces), for every k = l*D + dir:
 *   hprev (N, P)   state before each step (in processing order)
 *   gates (N, G*H) activated gates: LSTM [i f g o], GRU [r z n], RNN [h_t]
 *   LSTM: cprev (N, H), tanhc (N, H) = tanh(c_t), m (N, H) = o tanh(c_t) (proj_size only)
 *   GRU:  aux (N, H) = W_hn h_{t-1} + b_hn (reset_after) or r h_{t-1} (reset_before)
 * then for every layer l < L-1 its output (N, D*P) (the next layer's input), then forward scratch
 * (state, packed per-step weights).
 * Hot path: one rf_sgemm X W_ih^T for all N rows, then per step one product h W_hh^T accumulated into
 * that step's gate slice and vectorised pointwise passes. Backward does per step one product da W_hh
 * (accumulated into dh) and after the loop one rf_sgemm each for dW_ih, dW_hh, dW_hr, dx and biases.
 * The per-step products (B rows) run on weights packed once per call (pk_gemm below; rf_sgemm when
 * built with -DRF_TRAIN_NO_PACK): BLAS re-packs its operands on every call, which cost ~20% of a step.
 * Threads: the per-step work is serial (see pk_gemm); BLAS threads the big products.
 */
#include "rf_train.h"

#include <limits.h>
#include <stdlib.h>

#include "rf_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define RF_TRAIN_MAX_LAYERS 64


static int rf_nthreads(int n_threads) {
#ifdef _OPENMP
    return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    (void)n_threads;
    return 1;
#endif
}

#include "rf_act_scalar.h"

RF_TCLONES static void v_sigmoid(float *restrict y, int n) {
    for (int j = 0; j < n; j++) y[j] = rf_sigmoid_s(y[j]);
}
RF_TCLONES static void v_tanh(float *restrict y, int n) {
    for (int j = 0; j < n; j++) y[j] = rf_tanh_s(y[j]);
}

/* ---- per-step products with packed weights ----------------------------------------------------
 * The large products (all N rows at once) go through rf_sgemm. The per-step products have only B rows
 * and the same weights at every step: BLAS would re-pack W for every call (measured: ~20% of a training
 * step in OpenBLAS' copy routines), so W is packed once per call into panels of 16 output columns,
 * Wp[(p*K + k)*16 + j] = Bm[k][p*16 + j] with Bm = W^T (tw = 1, W (N, K)) or W (tw = 0, W (K, N)), zero
 * past N, an even number of panels. The micro-kernel keeps 4 rows x 32 columns in 8 vector
 * accumulators; panels are the outer loop so W streams through the cache once per step.
 * Build with -DRF_TRAIN_NO_PACK to use rf_sgemm for these too (the reference path). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(RF_NO_CLONES)
#define RF_KCLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define RF_KCLONES
#endif
typedef float rft_v16 __attribute__((vector_size(64)));
typedef float rft_v16u __attribute__((vector_size(64), aligned(4)));

static size_t pk_floats(int N, int K) { return (((size_t)N + 31) / 32) * 32 * (size_t)K; }

static void pk_pack(int tw, int N, int K, const float *W, int ldw, float *Wp) {
    const int NP = (int)(((size_t)N + 31) / 32) * 2;
    for (int p = 0; p < NP; p++)
        for (int k = 0; k < K; k++) {
            float *dst = Wp + ((size_t)p * K + k) * 16;
            for (int j = 0; j < 16; j++) {
                const int col = p * 16 + j;
                dst[j] = col >= N ? 0.0f : (tw ? W[(size_t)col * ldw + k] : W[(size_t)k * ldw + col]);
            }
        }
}

static inline void pk_store(float *c, const rft_v16 *v, int n, int acc) {
    if (n >= 16) {
        if (acc) *(rft_v16u *)c += *v;
        else *(rft_v16u *)c = *v;
    } else {
        for (int j = 0; j < n; j++) c[j] = (acc ? c[j] : 0.0f) + (*v)[j];
    }
}

/* C(M, N) (+)= A(M, K) . Bm(K, N), Bm packed in Wp; zeros: K floats of 0 (rows past M). */
RF_KCLONES static void pk_gemm(int M, int N, int K, const float *A, int lda, const float *Wp, float *C, int ldc,
                               int acc, const float *zeros, int nt) {
    const int NPP = (int)(((size_t)N + 31) / 32);
    /* Serial on purpose: one OpenMP team per step (a barrier every step) measured 2-4x slower than one
     * thread on a machine shared with other jobs; the big products still use BLAS threads. */
    (void)nt;
    for (int pp = 0; pp < NPP; pp++) {
        const float *w0 = Wp + (size_t)pp * 2 * K * 16, *w1 = w0 + (size_t)K * 16;
        const int col = pp * 32;
        for (int m0 = 0; m0 < M; m0 += 4) {
            const float *a0 = A + (size_t)m0 * lda;
            const float *a1 = m0 + 1 < M ? a0 + lda : zeros;
            const float *a2 = m0 + 2 < M ? a0 + 2 * (size_t)lda : zeros;
            const float *a3 = m0 + 3 < M ? a0 + 3 * (size_t)lda : zeros;
            rft_v16 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
            for (int k = 0; k < K; k++) {
                const rft_v16 x0 = *(const rft_v16 *)(w0 + (size_t)k * 16);
                const rft_v16 x1 = *(const rft_v16 *)(w1 + (size_t)k * 16);
                const float s0 = a0[k], s1 = a1[k], s2 = a2[k], s3 = a3[k];
                c00 += s0 * x0, c01 += s0 * x1;
                c10 += s1 * x0, c11 += s1 * x1;
                c20 += s2 * x0, c21 += s2 * x1;
                c30 += s3 * x0, c31 += s3 * x1;
            }
            const int n0 = N - col, n1 = N - col - 16;
            float *r = C + (size_t)m0 * ldc + col;
            pk_store(r, &c00, n0, acc), pk_store(r + 16, &c01, n1, acc);
            if (m0 + 1 < M) pk_store(r + ldc, &c10, n0, acc), pk_store(r + ldc + 16, &c11, n1, acc);
            if (m0 + 2 < M) pk_store(r + 2 * (size_t)ldc, &c20, n0, acc), pk_store(r + 2 * (size_t)ldc + 16, &c21, n1, acc);
            if (m0 + 3 < M) pk_store(r + 3 * (size_t)ldc, &c30, n0, acc), pk_store(r + 3 * (size_t)ldc + 16, &c31, n1, acc);
        }
    }
}

/* C (+)= A . op(W): op(W) = W^T (tw = 1, W (N, K)) or W (tw = 0, W (K, N)); packed Wp when given. */
static void step_mm(int tw, int M, int N, int K, const float *A, int lda, const float *W, int ldw, const float *Wp,
                    int acc, float *C, int ldc, const float *zeros, int nt) {
    if (M <= 0 || N <= 0) return;
    if (Wp && K > 0) pk_gemm(M, N, K, A, lda, Wp, C, ldc, acc, zeros, nt);
    else rf_sgemm(0, tw, M, N, K, 1.0f, A, lda, W, ldw, acc ? 1.0f : 0.0f, C, ldc);
}

static int n_gates(int cell) { return cell == RF_CELL_LSTM ? 4 : (cell == RF_CELL_GRU ? 3 : 1); }

typedef struct {
    float *hprev, *gates, *cprev, *tanhc, *m, *aux;
} rf_tc_block;

typedef struct {
    rf_tc_block k[2 * RF_TRAIN_MAX_LAYERS];
    float *lout[RF_TRAIN_MAX_LAYERS];
    float *h, *c, *tmp;         /* forward scratch */
    float *pk1, *pk2, *zeros;   /* packed per-step weights, a zero row */
} rf_tc_layout;

static int tc_P(const rf_rnn_desc *d) { return d->proj_size > 0 ? d->proj_size : d->hidden_size; }

/* Carves the cache; with base == NULL only counts. Returns bytes (0 on overflow). */
static size_t tc_carve(const rf_rnn_desc *d, int T, int B, void *base, rf_tc_layout *lay) {
    rf_carver c = {(char *)base, 0, 1};
    const size_t N = (size_t)T * (size_t)B, H = (size_t)d->hidden_size, P = (size_t)tc_P(d);
    const size_t G = (size_t)n_gates(d->cell), D = (size_t)d->num_dirs;
    for (int l = 0; l < d->num_layers; l++) {
        for (int dir = 0; dir < d->num_dirs; dir++) {
            rf_tc_block *b = &lay->k[l * d->num_dirs + dir];
            memset(b, 0, sizeof(*b));
            b->hprev = rf_carve(&c, rf_mul3(N, P, 1) + 1);
            b->gates = rf_carve(&c, rf_mul3(N, G, H) + 1);
            if (d->cell == RF_CELL_LSTM) {
                b->cprev = rf_carve(&c, rf_mul3(N, H, 1) + 1);
                b->tanhc = rf_carve(&c, rf_mul3(N, H, 1) + 1);
                if (d->proj_size > 0) b->m = rf_carve(&c, rf_mul3(N, H, 1) + 1);
            } else if (d->cell == RF_CELL_GRU) {
                b->aux = rf_carve(&c, rf_mul3(N, H, 1) + 1);
            }
        }
        lay->lout[l] = l < d->num_layers - 1 ? rf_carve(&c, rf_mul3(N, D, P) + 1) : NULL;
    }
    lay->h = rf_carve(&c, rf_mul3((size_t)B, P, 1) + 1);
    lay->c = rf_carve(&c, rf_mul3((size_t)B, H, 1) + 1);
    lay->tmp = rf_carve(&c, rf_mul3((size_t)B, H > P ? H : P, 1) + 1);
    const int HP = (int)(H > P ? H : P);
    lay->pk1 = rf_carve(&c, pk_floats((int)(G * H), HP) + 1);
    lay->pk2 = rf_carve(&c, pk_floats(HP, HP) + 1);
    lay->zeros = rf_carve(&c, G * H + H + P + 16);
    return c.ok ? c.used : 0;
}

typedef struct {
    float *dax, *dah, *dH, *buf0, *buf1, *dh, *dc, *tmp, *ones, *pk1, *pk2, *zeros;
} rf_tw_layout;

static size_t tw_carve(const rf_rnn_desc *d, int T, int B, void *base, rf_tw_layout *w) {
    rf_carver c = {(char *)base, 0, 1};
    const size_t N = (size_t)T * (size_t)B, H = (size_t)d->hidden_size, P = (size_t)tc_P(d);
    const size_t G = (size_t)n_gates(d->cell), D = (size_t)d->num_dirs;
    memset(w, 0, sizeof(*w));
    w->dax = rf_carve(&c, rf_mul3(N, G, H) + 1);
    w->dah = (d->cell == RF_CELL_GRU && d->reset_after) ? rf_carve(&c, rf_mul3(N, G, H) + 1) : w->dax;
    if (d->proj_size > 0) w->dH = rf_carve(&c, rf_mul3(N, P, 1) + 1);
    if (d->num_layers > 1) {
        w->buf0 = rf_carve(&c, rf_mul3(N, D, P) + 1);
        w->buf1 = rf_carve(&c, rf_mul3(N, D, P) + 1);
    }
    w->dh = rf_carve(&c, rf_mul3((size_t)B, P, 1) + 1);
    w->dc = rf_carve(&c, rf_mul3((size_t)B, H, 1) + 1);
    w->tmp = rf_carve(&c, rf_mul3((size_t)B, H > P ? H : P, 1) + 1);
    w->ones = rf_carve(&c, N + 1);
    const int HP = (int)(H > P ? H : P);
    w->pk1 = rf_carve(&c, pk_floats(HP, (int)(G * H)) + 1);
    w->pk2 = rf_carve(&c, pk_floats(HP, 2 * HP) + 1);
    w->zeros = rf_carve(&c, G * H + H + P + 16);
    return c.ok ? c.used : 0;
}

static rf_status check_desc(const rf_rnn_desc *d, char *err) {
    if (!d) return rf_fail(err, RF_ERR_INVALID_ARG, "desc: expected a description, got NULL");
    if (d->ext) return rf_fail(err, RF_ERR_UNSUPPORTED, "training: expected PyTorch semantics (ext == NULL), got ONNX extensions");
    if (d->cell < RF_CELL_RNN_TANH || d->cell > RF_CELL_GRU)
        return rf_fail(err, RF_ERR_INVALID_ARG, "cell: expected 0..3, got %d", d->cell);
    if (d->num_layers < 1 || d->num_layers > RF_TRAIN_MAX_LAYERS)
        return rf_fail(err, RF_ERR_INVALID_ARG, "num_layers: expected 1..%d, got %d", RF_TRAIN_MAX_LAYERS,
                       d->num_layers);
    if (d->num_dirs != 1 && d->num_dirs != 2)
        return rf_fail(err, RF_ERR_INVALID_ARG, "num_dirs: expected 1 or 2, got %d", d->num_dirs);
    if (d->input_size < 0) return rf_fail(err, RF_ERR_INVALID_ARG, "input_size: expected >= 0, got %d", d->input_size);
    if (d->hidden_size < 1)
        return rf_fail(err, RF_ERR_INVALID_ARG, "hidden_size: expected >= 1, got %d", d->hidden_size);
    if (d->proj_size < 0 || (d->proj_size > 0 && d->cell != RF_CELL_LSTM))
        return rf_fail(err, RF_ERR_INVALID_ARG, "proj_size: expected 0, or > 0 for LSTM only, got %d", d->proj_size);
    return RF_OK;
}

static rf_status check_shapes(const rf_rnn_desc *d, int T, int B, char *err) {
    if (T < 0 || B < 0) return rf_fail(err, RF_ERR_INVALID_ARG, "T, B: expected >= 0, got (%d, %d)", T, B);
    const size_t N = (size_t)T * (size_t)B;
    const size_t G = (size_t)n_gates(d->cell);
    size_t widest = G * (size_t)d->hidden_size;
    if ((size_t)d->num_dirs * (size_t)tc_P(d) > widest) widest = (size_t)d->num_dirs * (size_t)tc_P(d);
    if ((size_t)d->input_size > widest) widest = (size_t)d->input_size;
    if (N > (size_t)INT_MAX || widest > (size_t)INT_MAX / 4)
        return rf_fail(err, RF_ERR_INVALID_ARG, "sizes: expected T*B and G*H to fit in int, got T*B=%zu", N);
    return RF_OK;
}

size_t rf_train_cache_size(const rf_rnn_desc *d, int T, int B) {
    if (check_desc(d, NULL) != RF_OK || T < 0 || B < 0) return 0;
    rf_tc_layout lay;
    return tc_carve(d, T, B, NULL, &lay);
}

size_t rf_train_workspace_size(const rf_rnn_desc *d, int T, int B) {
    if (check_desc(d, NULL) != RF_OK || T < 0 || B < 0) return 0;
    rf_tw_layout w;
    return tw_carve(d, T, B, NULL, &w);
}

static rf_status check_all(const rf_rnn_desc *d, const rf_train_weights *w, const rf_rnn_io *io, char *err) {
    rf_status st = check_desc(d, err);
    if (st != RF_OK) return st;
    if (!io) return rf_fail(err, RF_ERR_INVALID_ARG, "io: expected a struct, got NULL");
    if (io->batch_first) return rf_fail(err, RF_ERR_UNSUPPORTED, "io->batch_first: expected 0 for training, got 1");
    st = check_shapes(d, io->T, io->B, err);
    if (st != RF_OK) return st;
    if (!w) return rf_fail(err, RF_ERR_INVALID_ARG, "weights: expected %d entries, got NULL", d->num_layers * d->num_dirs);
    const size_t N = (size_t)io->T * (size_t)io->B;
    if (N && d->input_size > 0 && !io->x) return rf_fail(err, RF_ERR_INVALID_ARG, "x: expected (T, B, I), got NULL");
    if (io->lengths)
        for (int b = 0; b < io->B; b++)
            if (io->lengths[b] < 0 || io->lengths[b] > io->T)
                return rf_fail(err, RF_ERR_INVALID_ARG, "lengths[%d]: expected in [0, %d], got %d", b, io->T,
                               (int)io->lengths[b]);
    for (int k = 0; k < d->num_layers * d->num_dirs; k++) {
        const int I_l = k < d->num_dirs ? d->input_size : d->num_dirs * tc_P(d);
        if ((I_l > 0 && !w[k].w_ih) || !w[k].w_hh)
            return rf_fail(err, RF_ERR_INVALID_ARG, "weights[%d]: expected w_ih and w_hh, got NULL", k);
        if ((w[k].b_ih == NULL) != (w[k].b_hh == NULL))
            return rf_fail(err, RF_ERR_INVALID_ARG, "weights[%d]: expected both biases or none, got one", k);
        if ((d->proj_size > 0) != (w[k].w_hr != NULL))
            return rf_fail(err, RF_ERR_INVALID_ARG, "weights[%d].w_hr: expected %s, got %s", k,
                           d->proj_size > 0 ? "(P, H)" : "NULL", w[k].w_hr ? "a pointer" : "NULL");
    }
    return RF_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Forward                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

static void fwd_layer_dir(const rf_rnn_desc *d, const rf_train_weights *wk, const rf_rnn_io *io,
                          const float *X, int I_l, rf_tc_block *cb, rf_tc_layout *lay, float *out, int dir,
                          int k, int nt) {
    const int T = io->T, B = io->B, H = d->hidden_size, P = tc_P(d), G = n_gates(d->cell), GH = G * H;
    const int DP = d->num_dirs * P, N = T * B;
    const int cell = d->cell, proj = d->proj_size > 0;
    const int gru_ra = cell == RF_CELL_GRU && d->reset_after;
    float *h = lay->h, *c = lay->c, *tmp = lay->tmp;
    const int32_t *len = io->lengths;

    /* gates = X W_ih^T + biases (GRU reset_after: the n-part of b_hh stays out) */
    if (N > 0) rf_sgemm(0, 1, N, GH, I_l, 1.0f, X, I_l, wk->w_ih, I_l, 0.0f, cb->gates, GH);
    if (wk->b_ih && N > 0) {
        const int nb = gru_ra ? 2 * H : GH;
        for (int r = 0; r < N; r++) {
            float *g = cb->gates + (size_t)r * GH;
            for (int j = 0; j < GH; j++) g[j] += wk->b_ih[j];
            for (int j = 0; j < nb; j++) g[j] += wk->b_hh[j];
        }
    }
    if (io->h0) memcpy(h, io->h0 + (size_t)k * B * P, sizeof(float) * B * P);
    else memset(h, 0, sizeof(float) * B * P);
    if (cell == RF_CELL_LSTM) {
        if (io->c0) memcpy(c, io->c0 + (size_t)k * B * H, sizeof(float) * B * H);
        else memset(c, 0, sizeof(float) * B * H);
    }
    const float *pk1 = NULL, *pk2 = NULL, *zeros = lay->zeros;
#ifndef RF_TRAIN_NO_PACK
    if (T > 0 && B > 0) {
        memset(lay->zeros, 0, sizeof(float) * (size_t)(GH + H + P + 16));
        if (cell == RF_CELL_GRU) {
            pk_pack(1, 2 * H, H, wk->w_hh, H, lay->pk1);
            pk_pack(1, H, H, wk->w_hh + (size_t)2 * H * H, H, lay->pk2);
            pk2 = lay->pk2;
        } else {
            pk_pack(1, GH, P, wk->w_hh, P, lay->pk1);
            if (proj) {
                pk_pack(1, P, H, wk->w_hr, H, lay->pk2);
                pk2 = lay->pk2;
            }
        }
        pk1 = lay->pk1;
    }
#endif

    for (int s = 0; s < T; s++) {
        const int t = dir ? T - 1 - s : s;
        const size_t tb = (size_t)t * B;
        float *gt = cb->gates + tb * GH;
        float *hp = cb->hprev + tb * P;
        float *ot = out ? out + tb * DP + (size_t)dir * P : NULL;
        memcpy(hp, h, sizeof(float) * B * P);
        if (cell == RF_CELL_LSTM) {
            float *cp = cb->cprev + tb * H, *tc = cb->tanhc + tb * H, *mt = proj ? cb->m + tb * H : NULL;
            memcpy(cp, c, sizeof(float) * B * H);
            step_mm(1, B, GH, P, h, P, wk->w_hh, P, pk1, 1, gt, GH, zeros, nt);
            for (int b = 0; b < B; b++) {
                const int valid = !len || t < len[b];
                float *g = gt + (size_t)b * GH, *cb_ = c + (size_t)b * H, *tcb = tc + (size_t)b * H;
                float *hb = h + (size_t)b * P;
                float *ob = ot ? ot + (size_t)b * DP : NULL;
                v_sigmoid(g, 2 * H);
                v_tanh(g + 2 * H, H);
                v_sigmoid(g + 3 * H, H);
                for (int j = 0; j < H; j++) tcb[j] = g[H + j] * cb_[j] + g[j] * g[2 * H + j]; /* c_t */
                if (valid) memcpy(cb_, tcb, sizeof(float) * H);
                v_tanh(tcb, H);
                float *mb = proj ? mt + (size_t)b * H : (valid ? hb : tmp);
                for (int j = 0; j < H; j++) mb[j] = g[3 * H + j] * tcb[j];
                if (!proj && ob) {
                    if (valid) memcpy(ob, mb, sizeof(float) * H);
                    else memset(ob, 0, sizeof(float) * H);
                }
            }
            if (proj) {
                step_mm(1, B, P, H, mt, H, wk->w_hr, H, pk2, 0, tmp, P, zeros, nt);
                for (int b = 0; b < B; b++) {
                    const int valid = !len || t < len[b];
                    if (valid) memcpy(h + (size_t)b * P, tmp + (size_t)b * P, sizeof(float) * P);
                    if (ot) {
                        if (valid) memcpy(ot + (size_t)b * DP, tmp + (size_t)b * P, sizeof(float) * P);
                        else memset(ot + (size_t)b * DP, 0, sizeof(float) * P);
                    }
                }
            }
        } else if (cell == RF_CELL_GRU) {
            float *ax = cb->aux + tb * H;
            step_mm(1, B, 2 * H, H, h, H, wk->w_hh, H, pk1, 1, gt, GH, zeros, nt);
            for (int b = 0; b < B; b++) v_sigmoid(gt + (size_t)b * GH, 2 * H); /* r, z */
            if (gru_ra) {
                step_mm(1, B, H, H, h, H, wk->w_hh + (size_t)2 * H * H, H, pk2, 0, ax, H, zeros, nt);
                for (int b = 0; b < B; b++) {
                    float *g = gt + (size_t)b * GH, *axb = ax + (size_t)b * H;
                    if (wk->b_hh)
                        for (int j = 0; j < H; j++) axb[j] += wk->b_hh[2 * H + j];
                    for (int j = 0; j < H; j++) g[2 * H + j] += g[j] * axb[j];
                }
            } else {
                for (int b = 0; b < B; b++) {
                    const float *g = gt + (size_t)b * GH, *hb = h + (size_t)b * H;
                    float *axb = ax + (size_t)b * H;
                    for (int j = 0; j < H; j++) axb[j] = g[j] * hb[j];
                }
                step_mm(1, B, H, H, ax, H, wk->w_hh + (size_t)2 * H * H, H, pk2, 1, gt + 2 * H, GH, zeros, nt);
            }
            for (int b = 0; b < B; b++) {
                const int valid = !len || t < len[b];
                float *g = gt + (size_t)b * GH, *hb = h + (size_t)b * H;
                float *ob = ot ? ot + (size_t)b * DP : NULL;
                v_tanh(g + 2 * H, H);
                float *hn = valid ? (ob ? ob : tmp) : tmp;
                for (int j = 0; j < H; j++) hn[j] = (1.0f - g[H + j]) * g[2 * H + j] + g[H + j] * hb[j];
                if (valid) {
                    if (hn != hb) memcpy(hb, hn, sizeof(float) * H);
                } else if (ob) {
                    memset(ob, 0, sizeof(float) * H);
                }
            }
        } else {
            const int relu = cell == RF_CELL_RNN_RELU;
            step_mm(1, B, H, H, h, H, wk->w_hh, H, pk1, 1, gt, GH, zeros, nt);
            for (int b = 0; b < B; b++) {
                const int valid = !len || t < len[b];
                float *g = gt + (size_t)b * GH, *hb = h + (size_t)b * H;
                float *ob = ot ? ot + (size_t)b * DP : NULL;
                if (relu)
                    for (int j = 0; j < H; j++) g[j] = rf_relu(g[j]);
                else
                    v_tanh(g, H);
                if (valid) memcpy(hb, g, sizeof(float) * H);
                if (ob) {
                    if (valid) memcpy(ob, g, sizeof(float) * H);
                    else memset(ob, 0, sizeof(float) * H);
                }
            }
        }
    }
    if (io->h_n) memcpy(io->h_n + (size_t)k * B * P, h, sizeof(float) * B * P);
    if (io->c_n && cell == RF_CELL_LSTM) memcpy(io->c_n + (size_t)k * B * H, c, sizeof(float) * B * H);
}

rf_status rf_train_forward(const rf_rnn_desc *d, const rf_train_weights *w, const rf_rnn_io *io, void *cache,
                           size_t cache_size, int n_threads, char *err) {
    rf_status st = check_all(d, w, io, err);
    if (st != RF_OK) return st;
    rf_tc_layout lay;
    const size_t need = tc_carve(d, io->T, io->B, NULL, &lay);
    if (need == 0) return rf_fail(err, RF_ERR_INVALID_ARG, "cache: size overflows");
    if (!cache || cache_size < need)
        return rf_fail(err, RF_ERR_INVALID_ARG, "cache: expected >= %zu bytes, got %zu", need, cache ? cache_size : 0);
    if (((uintptr_t)cache) % RF_ALIGN)
        return rf_fail(err, RF_ERR_INVALID_ARG, "cache: expected 64-byte alignment, got %p", cache);
    tc_carve(d, io->T, io->B, cache, &lay);
    const int nt = rf_nthreads(n_threads), D = d->num_dirs, L = d->num_layers;
    const float *X = io->x;
    int I_l = d->input_size;
    for (int l = 0; l < L; l++) {
        float *out = l == L - 1 ? io->out : lay.lout[l];
        for (int dir = 0; dir < D; dir++) {
            const int k = l * D + dir;
            fwd_layer_dir(d, &w[k], io, X, I_l, &lay.k[k], &lay, out, dir, k, nt);
        }
        X = lay.lout[l];
        I_l = D * tc_P(d);
    }
    return RF_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Backward                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

static void bwd_layer_dir(const rf_rnn_desc *d, const rf_train_weights *wk, const rf_rnn_io *io,
                          const float *X, int I_l, const rf_tc_block *cb, rf_tw_layout *ws, const float *dY,
                          const float *d_hn, const float *d_cn, float *dX, int dx_beta, float *dh0, float *dc0,
                          const rf_train_grads *gk, int dir, int k, int nt) {
    const int T = io->T, B = io->B, H = d->hidden_size, P = tc_P(d), G = n_gates(d->cell), GH = G * H;
    const int DP = d->num_dirs * P, N = T * B;
    const int cell = d->cell, proj = d->proj_size > 0;
    const int gru_ra = cell == RF_CELL_GRU && d->reset_after;
    const int32_t *len = io->lengths;
    float *dh = ws->dh, *dc = ws->dc, *tmp = ws->tmp, *dax = ws->dax, *dah = ws->dah;
    (void)nt; /* per-step work is serial (see pk_gemm) */

    const float *pk1 = NULL, *pk2 = NULL, *zeros = ws->zeros;
#ifndef RF_TRAIN_NO_PACK
    if (T > 0 && B > 0) {
        memset(ws->zeros, 0, sizeof(float) * (size_t)(GH + H + P + 16));
        if (cell == RF_CELL_GRU && !gru_ra) {
            pk_pack(0, H, 2 * H, wk->w_hh, H, ws->pk1);
            pk_pack(0, H, H, wk->w_hh + (size_t)2 * H * H, H, ws->pk2);
            pk2 = ws->pk2;
        } else {
            pk_pack(0, P, GH, wk->w_hh, P, ws->pk1);
            if (proj) {
                pk_pack(0, H, P, wk->w_hr, H, ws->pk2);
                pk2 = ws->pk2;
            }
        }
        pk1 = ws->pk1;
    }
#endif
    if (d_hn) memcpy(dh, d_hn + (size_t)k * B * P, sizeof(float) * B * P);
    else memset(dh, 0, sizeof(float) * B * P);
    if (cell == RF_CELL_LSTM) {
        if (d_cn) memcpy(dc, d_cn + (size_t)k * B * H, sizeof(float) * B * H);
        else memset(dc, 0, sizeof(float) * B * H);
    }

    for (int s = T - 1; s >= 0; s--) {
        const int t = dir ? T - 1 - s : s;
        const size_t tb = (size_t)t * B;
        const float *gt = cb->gates + tb * GH, *hp = cb->hprev + tb * P;
        const float *dyt = dY ? dY + tb * DP + (size_t)dir * P : NULL;
        float *dat = dax + tb * GH, *daht = dah + tb * GH;
        if (cell == RF_CELL_LSTM) {
            const float *cp = cb->cprev + tb * H, *tc = cb->tanhc + tb * H;
            const float *dm = dh;
            if (proj) {
                float *dHt = ws->dH + tb * P;
                for (int b = 0; b < B; b++) {
                    const int valid = !len || t < len[b];
                    float *dhb = dh + (size_t)b * P, *o = dHt + (size_t)b * P;
                    if (valid) {
                        if (dyt)
                            for (int j = 0; j < P; j++) dhb[j] += dyt[(size_t)b * DP + j];
                        memcpy(o, dhb, sizeof(float) * P);
                    } else {
                        memset(o, 0, sizeof(float) * P);
                    }
                }
                step_mm(0, B, H, P, dHt, P, wk->w_hr, H, pk2, 0, tmp, H, zeros, nt);
                dm = tmp;
            }
            for (int b = 0; b < B; b++) {
                const int valid = !len || t < len[b];
                float *da = dat + (size_t)b * GH, *dhb = dh + (size_t)b * P, *dcb = dc + (size_t)b * H;
                if (!valid) {
                    memset(da, 0, sizeof(float) * GH);
                    continue;
                }
                const float *g = gt + (size_t)b * GH, *dmb = dm + (size_t)b * (proj ? H : P);
                const float *cpb = cp + (size_t)b * H, *tcb = tc + (size_t)b * H;
                const float *dyb = (dyt && !proj) ? dyt + (size_t)b * DP : NULL;
                for (int j = 0; j < H; j++) {
                    const float ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];
                    const float dmj = dmb[j] + (dyb ? dyb[j] : 0.0f);
                    const float tcj = tcb[j];
                    const float dcj = dcb[j] + dmj * og * (1.0f - tcj * tcj);
                    da[j] = dcj * gg * ig * (1.0f - ig);
                    da[H + j] = dcj * cpb[j] * fg * (1.0f - fg);
                    da[2 * H + j] = dcj * ig * (1.0f - gg * gg);
                    da[3 * H + j] = dmj * tcj * og * (1.0f - og);
                    dcb[j] = dcj * fg;
                }
                memset(dhb, 0, sizeof(float) * P);
            }
            step_mm(0, B, P, GH, dat, GH, wk->w_hh, P, pk1, 1, dh, P, zeros, nt);
        } else if (cell == RF_CELL_GRU) {
            const float *ax = cb->aux + tb * H;
            for (int b = 0; b < B; b++) {
                const int valid = !len || t < len[b];
                float *da = dat + (size_t)b * GH, *dha = daht + (size_t)b * GH, *dhb = dh + (size_t)b * H;
                if (!valid) {
                    memset(da, 0, sizeof(float) * GH);
                    if (gru_ra) memset(dha, 0, sizeof(float) * GH);
                    continue;
                }
                const float *g = gt + (size_t)b * GH, *hpb = hp + (size_t)b * H, *axb = ax + (size_t)b * H;
                const float *dyb = dyt ? dyt + (size_t)b * DP : NULL;
                for (int j = 0; j < H; j++) {
                    const float r = g[j], z = g[H + j], n = g[2 * H + j];
                    const float dhj = dhb[j] + (dyb ? dyb[j] : 0.0f);
                    const float dan = dhj * (1.0f - z) * (1.0f - n * n);
                    const float daz = dhj * (hpb[j] - n) * z * (1.0f - z);
                    da[H + j] = daz;
                    da[2 * H + j] = dan;
                    if (gru_ra) {
                        const float dar = dan * axb[j] * r * (1.0f - r);
                        da[j] = dar;
                        dha[j] = dar, dha[H + j] = daz, dha[2 * H + j] = dan * r;
                    }
                    dhb[j] = dhj * z;
                }
            }
            if (gru_ra) {
                step_mm(0, B, H, GH, daht, GH, wk->w_hh, H, pk1, 1, dh, H, zeros, nt);
            } else {
                step_mm(0, B, H, H, dat + 2 * H, GH, wk->w_hh + (size_t)2 * H * H, H, pk2, 0, tmp, H, zeros, nt);
                for (int b = 0; b < B; b++) {
                    const int valid = !len || t < len[b];
                    if (!valid) continue;
                    const float *g = gt + (size_t)b * GH, *hpb = hp + (size_t)b * H, *tb_ = tmp + (size_t)b * H;
                    float *da = dat + (size_t)b * GH, *dhb = dh + (size_t)b * H;
                    for (int j = 0; j < H; j++) {
                        const float r = g[j];
                        da[j] = tb_[j] * hpb[j] * r * (1.0f - r);
                        dhb[j] += tb_[j] * r;
                    }
                }
                step_mm(0, B, H, 2 * H, dat, GH, wk->w_hh, H, pk1, 1, dh, H, zeros, nt);
            }
        } else {
            const int relu = cell == RF_CELL_RNN_RELU;
            for (int b = 0; b < B; b++) {
                const int valid = !len || t < len[b];
                float *da = dat + (size_t)b * GH, *dhb = dh + (size_t)b * H;
                if (!valid) {
                    memset(da, 0, sizeof(float) * GH);
                    continue;
                }
                const float *g = gt + (size_t)b * GH;
                const float *dyb = dyt ? dyt + (size_t)b * DP : NULL;
                for (int j = 0; j < H; j++) {
                    const float dhj = dhb[j] + (dyb ? dyb[j] : 0.0f), a = g[j];
                    da[j] = relu ? (a > 0.0f ? dhj : 0.0f) : dhj * (1.0f - a * a);
                    dhb[j] = 0.0f;
                }
            }
            step_mm(0, B, H, H, dat, GH, wk->w_hh, H, pk1, 1, dh, H, zeros, nt);
        }
    }
    if (dh0) memcpy(dh0 + (size_t)k * B * P, dh, sizeof(float) * B * P);
    if (dc0 && cell == RF_CELL_LSTM) memcpy(dc0 + (size_t)k * B * H, dc, sizeof(float) * B * H);

    /* parameter gradients: one GEMM each over all N rows */
    if (gk) {
        if (gk->w_ih && I_l > 0) rf_sgemm(1, 0, GH, I_l, N, 1.0f, dax, GH, X, I_l, 0.0f, gk->w_ih, I_l);
        if (gk->w_hh) {
            if (cell == RF_CELL_GRU && !gru_ra) {
                rf_sgemm(1, 0, 2 * H, H, N, 1.0f, dax, GH, cb->hprev, H, 0.0f, gk->w_hh, H);
                rf_sgemm(1, 0, H, H, N, 1.0f, dax + 2 * H, GH, cb->aux, H, 0.0f, gk->w_hh + (size_t)2 * H * H, H);
            } else {
                rf_sgemm(1, 0, GH, P, N, 1.0f, dah, GH, cb->hprev, P, 0.0f, gk->w_hh, P);
            }
        }
        if (gk->b_ih) rf_sgemm(1, 0, GH, 1, N, 1.0f, dax, GH, ws->ones, 1, 0.0f, gk->b_ih, 1);
        if (gk->b_hh) {
            if (gru_ra) rf_sgemm(1, 0, GH, 1, N, 1.0f, dah, GH, ws->ones, 1, 0.0f, gk->b_hh, 1);
            else if (gk->b_ih) memcpy(gk->b_hh, gk->b_ih, sizeof(float) * GH);
            else rf_sgemm(1, 0, GH, 1, N, 1.0f, dax, GH, ws->ones, 1, 0.0f, gk->b_hh, 1);
        }
        if (proj && gk->w_hr) rf_sgemm(1, 0, P, H, N, 1.0f, ws->dH, P, cb->m, H, 0.0f, gk->w_hr, H);
    }
    if (dX && I_l > 0 && N > 0) rf_sgemm(0, 0, N, I_l, GH, 1.0f, dax, GH, wk->w_ih, I_l, (float)dx_beta, dX, I_l);
}

rf_status rf_train_backward(const rf_rnn_desc *d, const rf_train_weights *w, const rf_rnn_io *io,
                            const void *cache, size_t cache_size, const float *d_out, const float *d_hn,
                            const float *d_cn, float *dx, float *dh0, float *dc0, const rf_train_grads *g,
                            void *ws, size_t ws_size, int n_threads, char *err) {
    rf_status st = check_all(d, w, io, err);
    if (st != RF_OK) return st;
    rf_tc_layout lay;
    rf_tw_layout wl;
    const size_t need_c = tc_carve(d, io->T, io->B, NULL, &lay);
    const size_t need_w = tw_carve(d, io->T, io->B, NULL, &wl);
    if (!need_c || !need_w) return rf_fail(err, RF_ERR_INVALID_ARG, "cache/workspace: size overflows");
    if (!cache || cache_size < need_c)
        return rf_fail(err, RF_ERR_INVALID_ARG, "cache: expected >= %zu bytes, got %zu", need_c, cache ? cache_size : 0);
    if (!ws || ws_size < need_w)
        return rf_fail(err, RF_ERR_INVALID_ARG, "workspace: expected >= %zu bytes, got %zu", need_w, ws ? ws_size : 0);
    if (((uintptr_t)cache) % RF_ALIGN || ((uintptr_t)ws) % RF_ALIGN)
        return rf_fail(err, RF_ERR_INVALID_ARG, "cache/workspace: expected 64-byte alignment, got %p / %p", cache, ws);
    tc_carve(d, io->T, io->B, (void *)cache, &lay);
    tw_carve(d, io->T, io->B, ws, &wl);
    const int nt = rf_nthreads(n_threads), D = d->num_dirs, L = d->num_layers, P = tc_P(d);
    const size_t N = (size_t)io->T * (size_t)io->B;
    for (size_t i = 0; i < N; i++) wl.ones[i] = 1.0f;

    const float *dY = d_out;
    for (int l = L - 1; l >= 0; l--) {
        const float *X = l == 0 ? io->x : lay.lout[l - 1];
        const int I_l = l == 0 ? d->input_size : D * P;
        float *dX = l == 0 ? dx : (dY == wl.buf0 ? wl.buf1 : wl.buf0);
        for (int dir = 0; dir < D; dir++) {
            const int k = l * D + dir;
            bwd_layer_dir(d, &w[k], io, X, I_l, &lay.k[k], &wl, dY, d_hn, d_cn, dX, dir > 0, dh0, dc0,
                          g ? &g[k] : NULL, dir, k, nt);
        }
        dY = dX;
    }
    return RF_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Linear and Embedding                                                                              */
/* ------------------------------------------------------------------------------------------------ */

rf_status rf_linear_forward(int N, int I, int O, const float *x, const float *w, const float *b, float *y,
                            char *err) {
    if (N < 0 || I < 0 || O < 0) return rf_fail(err, RF_ERR_INVALID_ARG, "linear: expected sizes >= 0, got (%d, %d, %d)", N, I, O);
    if ((N && I && !x) || (O && I && !w) || (N && O && !y))
        return rf_fail(err, RF_ERR_INVALID_ARG, "linear: expected x, w, y, got NULL");
    rf_sgemm(0, 1, N, O, I, 1.0f, x, I, w, I, 0.0f, y, O);
    if (b)
        for (int r = 0; r < N; r++)
            for (int j = 0; j < O; j++) y[(size_t)r * O + j] += b[j];
    return RF_OK;
}

rf_status rf_linear_backward(int N, int I, int O, const float *x, const float *w, const float *dy, float *dx,
                             float *dw, float *db, char *err) {
    if (N < 0 || I < 0 || O < 0) return rf_fail(err, RF_ERR_INVALID_ARG, "linear: expected sizes >= 0, got (%d, %d, %d)", N, I, O);
    if (dx) rf_sgemm(0, 0, N, I, O, 1.0f, dy, O, w, I, 0.0f, dx, I);
    if (dw) rf_sgemm(1, 0, O, I, N, 1.0f, dy, O, x, I, 0.0f, dw, I);
    if (db) {
        for (int j = 0; j < O; j++) db[j] = 0.0f;
        for (int r = 0; r < N; r++)
            for (int j = 0; j < O; j++) db[j] += dy[(size_t)r * O + j];
    }
    return RF_OK;
}

rf_status rf_embedding_forward(int N, int V, int E, const int64_t *idx, const float *w, float *y, char *err) {
    for (int r = 0; r < N; r++)
        if (idx[r] < 0 || idx[r] >= V)
            return rf_fail(err, RF_ERR_INVALID_ARG, "indices[%d]: expected in [0, %d), got %lld", r, V, (long long)idx[r]);
    for (int r = 0; r < N; r++) memcpy(y + (size_t)r * E, w + (size_t)idx[r] * E, sizeof(float) * E);
    return RF_OK;
}

rf_status rf_embedding_backward(int N, int V, int E, const int64_t *idx, const float *dy, int64_t padding_idx,
                                float *dw, char *err) {
    for (int r = 0; r < N; r++)
        if (idx[r] < 0 || idx[r] >= V)
            return rf_fail(err, RF_ERR_INVALID_ARG, "indices[%d]: expected in [0, %d), got %lld", r, V, (long long)idx[r]);
    memset(dw, 0, sizeof(float) * (size_t)V * E);
    for (int r = 0; r < N; r++) {
        if (padding_idx >= 0 && idx[r] == padding_idx) continue;
        float *o = dw + (size_t)idx[r] * E;
        const float *s = dy + (size_t)r * E;
        for (int j = 0; j < E; j++) o[j] += s[j];
    }
    return RF_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Losses                                                                                            */
/* ------------------------------------------------------------------------------------------------ */

rf_status rf_softmax_xent(int N, int V, const float *logits, const int64_t *targets, const uint8_t *mask,
                          int64_t ignore_index, double *loss, float *dlogits, int64_t *count_out, int n_threads,
                          char *err) {
    if (N < 0 || V < 1) return rf_fail(err, RF_ERR_INVALID_ARG, "logits: expected (N >= 0, V >= 1), got (%d, %d)", N, V);
    int64_t count = 0;
    for (int r = 0; r < N; r++) {
        const int64_t tg = targets[r];
        if (tg == ignore_index || (mask && !mask[r])) continue;
        if (tg < 0 || tg >= V)
            return rf_fail(err, RF_ERR_INVALID_ARG, "targets[%d]: expected in [0, %d) or ignore_index, got %lld", r, V,
                           (long long)tg);
        count++;
    }
    const double scale = count ? 1.0 / (double)count : 0.0;
    double total = 0.0;
#ifdef _OPENMP
    const int nt = rf_nthreads(n_threads);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : total) if ((size_t)N * V > 65536)
#else
    (void)n_threads;
#endif
    for (int r = 0; r < N; r++) {
        const float *z = logits + (size_t)r * V;
        float *dz = dlogits ? dlogits + (size_t)r * V : NULL;
        const int64_t tg = targets[r];
        if (tg == ignore_index || (mask && !mask[r])) {
            if (dz) memset(dz, 0, sizeof(float) * V);
            continue;
        }
        float mx = z[0];
        for (int j = 1; j < V; j++) mx = z[j] > mx ? z[j] : mx;
        double se = 0.0;
        for (int j = 0; j < V; j++) se += exp((double)z[j] - mx);
        const double lse = mx + log(se);
        total += lse - z[tg];
        if (dz) {
            for (int j = 0; j < V; j++) dz[j] = (float)(exp((double)z[j] - lse) * scale);
            dz[tg] -= (float)scale;
        }
    }
    if (loss) *loss = total * scale;
    if (count_out) *count_out = count;
    return RF_OK;
}

rf_status rf_mse(size_t n, const float *pred, const float *target, double *loss, float *dpred, char *err) {
    (void)err;
    double s = 0.0;
    const double scale = n ? 1.0 / (double)n : 0.0;
    for (size_t i = 0; i < n; i++) {
        const double e = (double)pred[i] - (double)target[i];
        s += e * e;
        if (dpred) dpred[i] = (float)(2.0 * e * scale);
    }
    if (loss) *loss = s * scale;
    return RF_OK;
}

rf_status rf_bce_logits(size_t n, const float *logits, const float *target, double *loss, float *dlogits,
                        char *err) {
    (void)err;
    double s = 0.0;
    const double scale = n ? 1.0 / (double)n : 0.0;
    for (size_t i = 0; i < n; i++) {
        const double x = logits[i], y = target[i];
        s += (x > 0 ? x : 0.0) - x * y + log1p(exp(-fabs(x)));
        if (dlogits) {
            const double sg = x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
            dlogits[i] = (float)((sg - y) * scale);
        }
    }
    if (loss) *loss = s * scale;
    return RF_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Clipping and optimizers                                                                           */
/* ------------------------------------------------------------------------------------------------ */

rf_status rf_clip_grad_norm(int k, float *const *grads, const size_t *sizes, double max_norm, double norm_type,
                            double *total_norm, char *err) {
    if (k < 0) return rf_fail(err, RF_ERR_INVALID_ARG, "grads: expected k >= 0, got %d", k);
    double tot = 0.0;
    const int inf = norm_type <= 0.0;
    for (int a = 0; a < k; a++) {
        const float *g = grads[a];
        double s = 0.0;
        if (inf) {
            for (size_t i = 0; i < sizes[a]; i++) {
                const double v = fabs((double)g[i]);
                s = (v > s || v != v) ? v : s;
            }
            tot = (s > tot || s != s) ? s : tot;
        } else if (norm_type == 2.0) {
            for (size_t i = 0; i < sizes[a]; i++) s += (double)g[i] * g[i];
            tot += s;
        } else {
            for (size_t i = 0; i < sizes[a]; i++) s += pow(fabs((double)g[i]), norm_type);
            tot += s;
        }
    }
    if (!inf) tot = norm_type == 2.0 ? sqrt(tot) : pow(tot, 1.0 / norm_type);
    if (total_norm) *total_norm = tot;
    const double coef = max_norm / (tot + 1e-6);
    if (coef < 1.0) {
        const float cf = (float)coef;
        for (int a = 0; a < k; a++)
            for (size_t i = 0; i < sizes[a]; i++) grads[a][i] *= cf;
    }
    return RF_OK;
}

rf_status rf_clip_grad_value(int k, float *const *grads, const size_t *sizes, float clip_value, char *err) {
    if (!(clip_value >= 0.0f)) return rf_fail(err, RF_ERR_INVALID_ARG, "clip_value: expected >= 0, got %g", clip_value);
    for (int a = 0; a < k; a++)
        for (size_t i = 0; i < sizes[a]; i++) {
            const float v = grads[a][i];
            grads[a][i] = v > clip_value ? clip_value : (v < -clip_value ? -clip_value : v);
        }
    return RF_OK;
}

rf_status rf_sgd_step(size_t n, float *p, const float *g, float *buf, double lr, double momentum, double dampening,
                      double weight_decay, int nesterov, int maximize, int first, char *err) {
    if (momentum != 0.0 && !buf) return rf_fail(err, RF_ERR_INVALID_ARG, "momentum_buffer: expected (n), got NULL");
    const float wd = (float)weight_decay, mo = (float)momentum, dm = (float)(1.0 - dampening), lrf = (float)lr;
    for (size_t i = 0; i < n; i++) {
        float gi = maximize ? -g[i] : g[i];
        if (weight_decay != 0.0) gi += wd * p[i];
        if (momentum != 0.0) {
            const float bi = first ? gi : mo * buf[i] + dm * gi;
            buf[i] = bi;
            gi = nesterov ? gi + mo * bi : bi;
        }
        p[i] -= lrf * gi;
    }
    return RF_OK;
}

rf_status rf_adam_step(size_t n, float *p, const float *g, float *m, float *v, float *vmax, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int decoupled, int amsgrad, int maximize,
                       int64_t step, char *err) {
    if (step < 1) return rf_fail(err, RF_ERR_INVALID_ARG, "step: expected >= 1, got %lld", (long long)step);
    if (amsgrad && !vmax) return rf_fail(err, RF_ERR_INVALID_ARG, "max_exp_avg_sq: expected (n), got NULL");
    const double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    const float step_size = (float)(lr / bc1), bc2s = (float)sqrt(bc2);
    const float b1 = (float)beta1, b2 = (float)beta2, omb1 = (float)(1.0 - beta1), omb2 = (float)(1.0 - beta2);
    const float wd = (float)weight_decay, decay = (float)(1.0 - lr * weight_decay), ep = (float)eps;
    for (size_t i = 0; i < n; i++) {
        float gi = maximize ? -g[i] : g[i];
        if (weight_decay != 0.0) {
            if (decoupled) p[i] *= decay;
            else gi += wd * p[i];
        }
        m[i] = m[i] + (gi - m[i]) * omb1; /* torch: exp_avg.lerp_(grad, 1 - beta1) */
        (void)b1;
        v[i] = v[i] * b2 + omb2 * gi * gi;
        float vv = v[i];
        if (amsgrad) {
            vmax[i] = vmax[i] > vv ? vmax[i] : vv;
            vv = vmax[i];
        }
        const float denom = sqrtf(vv) / bc2s + ep;
        p[i] -= step_size * (m[i] / denom);
    }
    return RF_OK;
}
