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
 * Hot path: one rf_sgemm X W_ih^T for all N rows, then per step the biases and one product h W_hh^T into
 * that step's gate slice and vectorised pointwise passes. Backward does per step one product da W_hh
 * (accumulated into dh) and after the loop one rf_sgemm each for dW_ih, dW_hh, dW_hr, dx and biases.
 * The per-step products (B rows) run on weights packed once per call (rf_pk_gemm, rf_pack.c; rf_sgemm when
 * built with -DRF_TRAIN_NO_PACK): BLAS re-packs its operands on every call, which cost ~20% of a step.
 * Threads: batch rows are independent through all steps, so one OpenMP team per layer splits them and
 * runs the step loops without any synchronisation (team_size); BLAS threads the big products outside.
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
 * and the same weights at every step: W is packed once per call (rf_pk_pack, rf_pack.c) and multiplied
 * by rf_pk_gemm. Build with -DRF_TRAIN_NO_PACK to use rf_sgemm for these too (the reference path). */
/* C (+)= A . op(W): op(W) = W^T (tw = 1, W (N, K)) or W (tw = 0, W (K, N)); packed Wp when given. */
static void step_mm(int tw, int M, int N, int K, const float *A, int lda, const float *W, int ldw, const float *Wp,
                    int acc, float *C, int ldc, const float *zeros) {
    if (M <= 0 || N <= 0) return;
    if (Wp && K > 0) rf_pk_gemm(M, N, K, A, lda, Wp, C, ldc, acc, zeros, 0, (N + 31) / 32);
    else rf_sgemm(0, tw, M, N, K, 1.0f, A, lda, W, ldw, acc ? 1.0f : 0.0f, C, ldc);
}

static int n_gates(int cell) { return cell == RF_CELL_LSTM ? 4 : (cell == RF_CELL_GRU ? 3 : 1); }

typedef struct {
    float *hprev, *gates, *cprev, *tanhc, *m, *aux;
} rf_tc_block;

typedef struct {
    rf_tc_block k[2 * RF_TRAIN_MAX_LAYERS];
    float *lout[RF_TRAIN_MAX_LAYERS];
    float *h, *c, *tmp, *bsum;  /* forward scratch; bsum (G*H) the summed biases */
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
    lay->bsum = rf_carve(&c, G * H + 1);
    const int HP = (int)(H > P ? H : P);
    lay->pk1 = rf_carve(&c, rf_pk_floats((int)(G * H), HP) + 1);
    lay->pk2 = rf_carve(&c, rf_pk_floats(HP, HP) + 1);
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
    w->pk1 = rf_carve(&c, rf_pk_floats(HP, (int)(G * H)) + 1);
    w->pk2 = rf_carve(&c, rf_pk_floats(HP, 2 * HP) + 1);
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

/* Threads for the step loops: batch rows are independent in forward and backward, so a team splits them
 * (blocks of 4, the micro-kernel's height) and runs all T steps with no synchronisation at all; each
 * thread streams the whole packed W_hh. Small problems stay on one thread. */
static int team_size(int nt, int B, double flops) {
#ifdef RF_TRAIN_NO_PACK
    (void)nt, (void)B, (void)flops;
    return 1; /* rf_sgemm per step: BLAS threads it, and BLAS is never called inside a parallel region */
#else
    const int blocks = (B + 3) / 4;
    if (flops < 2e6 || nt < 2) return 1;
    return nt < blocks ? nt : blocks;
#endif
}

static void team_rows(int B, int tid, int nth, int *b0, int *b1) {
    const int blocks = (B + 3) / 4;
    *b0 = 4 * (int)((long)blocks * tid / nth);
    *b1 = 4 * (int)((long)blocks * (tid + 1) / nth);
    if (*b1 > B) *b1 = B;
}

/* Forward steps for batch rows [b0, b1): every per-row buffer is addressed at row b. */
static void fwd_rows(const rf_rnn_desc *d, const rf_train_weights *wk, const rf_rnn_io *io, rf_tc_block *cb,
                     rf_tc_layout *lay, float *out, int dir, const float *pk1, const float *pk2, int b0, int b1) {
    const int T = io->T, B = io->B, H = d->hidden_size, P = tc_P(d), G = n_gates(d->cell), GH = G * H;
    const int DP = d->num_dirs * P, M = b1 - b0;
    const int cell = d->cell, proj = d->proj_size > 0;
    const int gru_ra = cell == RF_CELL_GRU && d->reset_after;
    float *h = lay->h, *c = lay->c, *tmp = lay->tmp;
    const float *zeros = lay->zeros, *bsum = wk->b_ih ? lay->bsum : NULL;
    const int32_t *len = io->lengths;
    if (M <= 0) return;

    for (int s = 0; s < T; s++) {
        const int t = dir ? T - 1 - s : s;
        const size_t tb = (size_t)t * B;
        float *gt = cb->gates + tb * GH;
        float *hp = cb->hprev + tb * P;
        float *ot = out ? out + tb * DP + (size_t)dir * P : NULL;
        memcpy(hp + (size_t)b0 * P, h + (size_t)b0 * P, sizeof(float) * M * P);
        if (bsum)
            for (int b = b0; b < b1; b++) {
                float *g = gt + (size_t)b * GH;
                for (int j = 0; j < GH; j++) g[j] += bsum[j];
            }
        if (cell == RF_CELL_LSTM) {
            float *cp = cb->cprev + tb * H, *tc = cb->tanhc + tb * H, *mt = proj ? cb->m + tb * H : NULL;
            memcpy(cp + (size_t)b0 * H, c + (size_t)b0 * H, sizeof(float) * M * H);
            step_mm(1, M, GH, P, h + (size_t)b0 * P, P, wk->w_hh, P, pk1, 1, gt + (size_t)b0 * GH, GH, zeros);
            for (int b = b0; b < b1; b++) {
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
                float *mb = proj ? mt + (size_t)b * H : (valid ? hb : tmp + (size_t)b * H);
                for (int j = 0; j < H; j++) mb[j] = g[3 * H + j] * tcb[j];
                if (!proj && ob) {
                    if (valid) memcpy(ob, mb, sizeof(float) * H);
                    else memset(ob, 0, sizeof(float) * H);
                }
            }
            if (proj) {
                step_mm(1, M, P, H, mt + (size_t)b0 * H, H, wk->w_hr, H, pk2, 0, tmp + (size_t)b0 * P, P, zeros);
                for (int b = b0; b < b1; b++) {
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
            step_mm(1, M, 2 * H, H, h + (size_t)b0 * H, H, wk->w_hh, H, pk1, 1, gt + (size_t)b0 * GH, GH, zeros);
            for (int b = b0; b < b1; b++) v_sigmoid(gt + (size_t)b * GH, 2 * H); /* r, z */
            if (gru_ra) {
                step_mm(1, M, H, H, h + (size_t)b0 * H, H, wk->w_hh + (size_t)2 * H * H, H, pk2, 0,
                        ax + (size_t)b0 * H, H, zeros);
                for (int b = b0; b < b1; b++) {
                    float *g = gt + (size_t)b * GH, *axb = ax + (size_t)b * H;
                    if (wk->b_hh)
                        for (int j = 0; j < H; j++) axb[j] += wk->b_hh[2 * H + j];
                    for (int j = 0; j < H; j++) g[2 * H + j] += g[j] * axb[j];
                }
            } else {
                for (int b = b0; b < b1; b++) {
                    const float *g = gt + (size_t)b * GH, *hb = h + (size_t)b * H;
                    float *axb = ax + (size_t)b * H;
                    for (int j = 0; j < H; j++) axb[j] = g[j] * hb[j];
                }
                step_mm(1, M, H, H, ax + (size_t)b0 * H, H, wk->w_hh + (size_t)2 * H * H, H, pk2, 1,
                        gt + (size_t)b0 * GH + 2 * H, GH, zeros);
            }
            for (int b = b0; b < b1; b++) {
                const int valid = !len || t < len[b];
                float *g = gt + (size_t)b * GH, *hb = h + (size_t)b * H;
                float *ob = ot ? ot + (size_t)b * DP : NULL;
                v_tanh(g + 2 * H, H);
                float *hn = valid ? (ob ? ob : tmp + (size_t)b * H) : tmp + (size_t)b * H;
                for (int j = 0; j < H; j++) hn[j] = (1.0f - g[H + j]) * g[2 * H + j] + g[H + j] * hb[j];
                if (valid) {
                    if (hn != hb) memcpy(hb, hn, sizeof(float) * H);
                } else if (ob) {
                    memset(ob, 0, sizeof(float) * H);
                }
            }
        } else {
            const int relu = cell == RF_CELL_RNN_RELU;
            step_mm(1, M, H, H, h + (size_t)b0 * H, H, wk->w_hh, H, pk1, 1, gt + (size_t)b0 * GH, GH, zeros);
            for (int b = b0; b < b1; b++) {
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
}

static void fwd_layer_dir(const rf_rnn_desc *d, const rf_train_weights *wk, const rf_rnn_io *io,
                          const float *X, int I_l, rf_tc_block *cb, rf_tc_layout *lay, float *out, int dir,
                          int k, int nt) {
    const int T = io->T, B = io->B, H = d->hidden_size, P = tc_P(d), G = n_gates(d->cell), GH = G * H;
    const int N = T * B;
    const int cell = d->cell, proj = d->proj_size > 0;
    const int gru_ra = cell == RF_CELL_GRU && d->reset_after;
    float *h = lay->h, *c = lay->c;

    /* gates = X W_ih^T (one product for all N rows); the biases are added per step */
    if (N > 0) rf_sgemm(0, 1, N, GH, I_l, 1.0f, X, I_l, wk->w_ih, I_l, 0.0f, cb->gates, GH);
    if (wk->b_ih) { /* b_ih + b_hh, except GRU reset_after's n-part of b_hh (inside r * (W_hn h + b_hn)) */
        const int nb = gru_ra ? 2 * H : GH;
        for (int j = 0; j < GH; j++) lay->bsum[j] = wk->b_ih[j] + (j < nb ? wk->b_hh[j] : 0.0f);
    }
    if (io->h0) memcpy(h, io->h0 + (size_t)k * B * P, sizeof(float) * B * P);
    else memset(h, 0, sizeof(float) * B * P);
    if (cell == RF_CELL_LSTM) {
        if (io->c0) memcpy(c, io->c0 + (size_t)k * B * H, sizeof(float) * B * H);
        else memset(c, 0, sizeof(float) * B * H);
    }
    memset(lay->zeros, 0, sizeof(float) * (size_t)(GH + H + P + 16));
    const float *pk1 = NULL, *pk2 = NULL;
#ifndef RF_TRAIN_NO_PACK
    if (T > 0 && B > 0) {
        pk1 = lay->pk1;
        if (cell == RF_CELL_GRU || proj) pk2 = lay->pk2;
    }
#endif
    const int nth = team_size(nt, B, 2.0 * N * GH * P);
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = 0, n = 1, b0, b1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        n = omp_get_num_threads();
#endif
        if (pk1) { /* packed once per call, panels shared out over the team */
            if (cell == RF_CELL_GRU) {
                rf_pk_pack(1, 2 * H, H, wk->w_hh, H, lay->pk1, tid, n);
                rf_pk_pack(1, H, H, wk->w_hh + (size_t)2 * H * H, H, lay->pk2, tid, n);
            } else {
                rf_pk_pack(1, GH, P, wk->w_hh, P, lay->pk1, tid, n);
                if (proj) rf_pk_pack(1, P, H, wk->w_hr, H, lay->pk2, tid, n);
            }
        }
#pragma omp barrier
        team_rows(B, tid, n, &b0, &b1);
        fwd_rows(d, wk, io, cb, lay, out, dir, pk1, pk2, b0, b1);
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

/* Backward steps for batch rows [b0, b1) (see fwd_rows). */
static void bwd_rows(const rf_rnn_desc *d, const rf_train_weights *wk, const rf_rnn_io *io, const rf_tc_block *cb,
                     rf_tw_layout *ws, const float *dY, int dir, const float *pk1, const float *pk2, int b0, int b1) {
    const int T = io->T, B = io->B, H = d->hidden_size, P = tc_P(d), G = n_gates(d->cell), GH = G * H;
    const int DP = d->num_dirs * P, M = b1 - b0;
    const int cell = d->cell, proj = d->proj_size > 0;
    const int gru_ra = cell == RF_CELL_GRU && d->reset_after;
    const int32_t *len = io->lengths;
    float *dh = ws->dh, *dc = ws->dc, *tmp = ws->tmp, *dax = ws->dax, *dah = ws->dah;
    const float *zeros = ws->zeros;
    const size_t o0 = (size_t)b0; /* row offset of this range */
    if (M <= 0) return;

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
                for (int b = b0; b < b1; b++) {
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
                step_mm(0, M, H, P, dHt + o0 * P, P, wk->w_hr, H, pk2, 0, tmp + o0 * H, H, zeros);
                dm = tmp;
            }
            for (int b = b0; b < b1; b++) {
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
            step_mm(0, M, P, GH, dat + o0 * GH, GH, wk->w_hh, P, pk1, 1, dh + o0 * P, P, zeros);
        } else if (cell == RF_CELL_GRU) {
            const float *ax = cb->aux + tb * H;
            for (int b = b0; b < b1; b++) {
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
                step_mm(0, M, H, GH, daht + o0 * GH, GH, wk->w_hh, H, pk1, 1, dh + o0 * H, H, zeros);
            } else {
                step_mm(0, M, H, H, dat + o0 * GH + 2 * H, GH, wk->w_hh + (size_t)2 * H * H, H, pk2, 0, tmp + o0 * H,
                        H, zeros);
                for (int b = b0; b < b1; b++) {
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
                step_mm(0, M, H, 2 * H, dat + o0 * GH, GH, wk->w_hh, H, pk1, 1, dh + o0 * H, H, zeros);
            }
        } else {
            const int relu = cell == RF_CELL_RNN_RELU;
            for (int b = b0; b < b1; b++) {
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
            step_mm(0, M, H, H, dat + o0 * GH, GH, wk->w_hh, H, pk1, 1, dh + o0 * H, H, zeros);
        }
    }
}

static void bwd_layer_dir(const rf_rnn_desc *d, const rf_train_weights *wk, const rf_rnn_io *io,
                          const float *X, int I_l, const rf_tc_block *cb, rf_tw_layout *ws, const float *dY,
                          const float *d_hn, const float *d_cn, float *dX, int dx_beta, float *dh0, float *dc0,
                          const rf_train_grads *gk, int k, int nt) {
    const int T = io->T, B = io->B, H = d->hidden_size, P = tc_P(d), G = n_gates(d->cell), GH = G * H;
    const int N = T * B, dir = k % d->num_dirs;
    const int cell = d->cell, proj = d->proj_size > 0;
    const int gru_ra = cell == RF_CELL_GRU && d->reset_after;
    float *dh = ws->dh, *dc = ws->dc, *dax = ws->dax, *dah = ws->dah;

    memset(ws->zeros, 0, sizeof(float) * (size_t)(GH + H + P + 16));
    const float *pk1 = NULL, *pk2 = NULL;
#ifndef RF_TRAIN_NO_PACK
    if (T > 0 && B > 0) {
        pk1 = ws->pk1;
        if ((cell == RF_CELL_GRU && !gru_ra) || proj) pk2 = ws->pk2;
    }
#endif
    if (d_hn) memcpy(dh, d_hn + (size_t)k * B * P, sizeof(float) * B * P);
    else memset(dh, 0, sizeof(float) * B * P);
    if (cell == RF_CELL_LSTM) {
        if (d_cn) memcpy(dc, d_cn + (size_t)k * B * H, sizeof(float) * B * H);
        else memset(dc, 0, sizeof(float) * B * H);
    }
    const int nth = team_size(nt, B, 2.0 * N * GH * P);
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = 0, n = 1, b0, b1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        n = omp_get_num_threads();
#endif
        if (pk1) {
            if (cell == RF_CELL_GRU && !gru_ra) {
                rf_pk_pack(0, H, 2 * H, wk->w_hh, H, ws->pk1, tid, n);
                rf_pk_pack(0, H, H, wk->w_hh + (size_t)2 * H * H, H, ws->pk2, tid, n);
            } else {
                rf_pk_pack(0, P, GH, wk->w_hh, P, ws->pk1, tid, n);
                if (proj) rf_pk_pack(0, H, P, wk->w_hr, H, ws->pk2, tid, n);
            }
        }
#pragma omp barrier
        team_rows(B, tid, n, &b0, &b1);
        bwd_rows(d, wk, io, cb, ws, dY, dir, pk1, pk2, b0, b1);
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
                          g ? &g[k] : NULL, k, nt);
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
