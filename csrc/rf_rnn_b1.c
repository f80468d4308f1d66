/* rf_rnn_b1.c -- the batch-1 recurrent kernel (the latency case of services).
 *
 * Equations: rf_cells.h. Shape glossary: T=time H=hidden P=projection G=gates; UB = ceil(H/16).
 *
 * At batch 1 the recurrent product W_hh h is a GEMV bound by where W_hh lives. Following DeepCPU:
 *  - W_hh is packed once (rf_rnn_pack_hh) into blocks of 16 hidden units; a block holds, for each gate
 *    g and each input k, the 16 weights W[g*H + u][k] of its units u: (UB, G, P, 16) floats.
 *  - One parallel region spans the whole time loop. Thread t owns a contiguous range of unit blocks: it
 *    computes all G gates of its units, applies the fused cell update and writes its slice of the new h.
 *    Its weights stay in its own core's L2. Threads exchange only h, through a ping-pong buffer, with one
 *    barrier per step.
 */
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rf_act.h"
#include "rf_cells.h"
#include "rf_rnn_internal.h"

static RF_INLINE rf_v16 ld(const float *p, int n) { return p ? rf_vload_n(p, n) : RF_V(0.0f); }


size_t rf_rnn_packed_size(const rf_rnn_desc *d, int K) {
    if (rf_rnn_check_desc(d, NULL) != RF_OK || K < 1) return 0;
    const size_t UB = ((size_t)d->hidden_size + RF_UNIT_BLOCK - 1) / RF_UNIT_BLOCK;
    return UB * (size_t)rf_gates(d->cell) * (size_t)K * RF_UNIT_BLOCK;
}

void rf_rnn_pack(const rf_rnn_desc *d, const float *w, int K, float *packed) {
    const int H = d->hidden_size, G = rf_gates(d->cell);
    const int UB = (H + RF_UNIT_BLOCK - 1) / RF_UNIT_BLOCK;
    for (int ub = 0; ub < UB; ub++)
        for (int g = 0; g < G; g++)
            for (int k = 0; k < K; k++) {
                float *dst = packed + (((size_t)ub * G + g) * K + k) * RF_UNIT_BLOCK;
                for (int u = 0; u < RF_UNIT_BLOCK; u++) {
                    int j = ub * RF_UNIT_BLOCK + u;
                    dst[u] = j < H ? w[((size_t)g * H + j) * K + k] : 0.0f;
                }
            }
}

int rf_rnn_b1_eligible(const rf_rnn_desc *d, const rf_rnn_weights *w, int B) {
    if (B != 1 || d->ext || d->proj_size || (d->cell == RF_CELL_GRU && !d->reset_after)) return 0;
    for (int k = 0; k < d->num_layers * d->num_dirs; k++)
        if (!w[k].packed_ih || !w[k].packed_hh) return 0;
    return 1;
}

/* gx[t][g*H + j..j+16) = x_t . W_ih[g*H + j..] + bias for t in [0, T): the input projection of one unit
 * block, 4 time rows at a time so each loaded weight vector feeds 4 FMAs. */
RF_CLONES
static void b1_project(const rf_rnn_desc *d, const rf_rnn_weights *w, const float *x, int K, size_t x_stride,
                       int T, float *gx, int ub0, int ub1) {
    const int H = d->hidden_size, G = rf_gates(d->cell), GH = G * H;
    for (int ub = ub0; ub < ub1; ub++) {
        const float *blk = w->packed_ih + (size_t)ub * G * K * 16;
        const int j = ub * 16, n = H - j < 16 ? H - j : 16;
        rf_v16 bias[4];
        for (int g = 0; g < G; g++) bias[g] = ld(w->bias ? w->bias + g * H + j : NULL, n);
        int t = 0;
        for (; t + 4 <= T; t += 4) {
            const float *x0 = x + (size_t)t * x_stride, *x1 = x0 + x_stride, *x2 = x1 + x_stride,
                        *x3 = x2 + x_stride;
            for (int g = 0; g < G; g++) {
                const float *pg = blk + (size_t)g * K * 16;
                rf_v16 a0 = bias[g], a1 = bias[g], a2 = bias[g], a3 = bias[g];
                for (int k = 0; k < K; k++) {
                    rf_v16 wv = rf_vload(pg + (size_t)k * 16);
                    a0 += wv * x0[k];
                    a1 += wv * x1[k];
                    a2 += wv * x2[k];
                    a3 += wv * x3[k];
                }
                float *o = gx + (size_t)t * GH + g * H + j;
                rf_vstore_n(o, a0, n);
                rf_vstore_n(o + GH, a1, n);
                rf_vstore_n(o + 2 * (size_t)GH, a2, n);
                rf_vstore_n(o + 3 * (size_t)GH, a3, n);
            }
        }
        for (; t < T; t++) {
            const float *xt = x + (size_t)t * x_stride;
            for (int g = 0; g < G; g++) {
                const float *pg = blk + (size_t)g * K * 16;
                rf_v16 a0 = bias[g];
                for (int k = 0; k < K; k++) a0 += rf_vload(pg + (size_t)k * 16) * xt[k];
                rf_vstore_n(gx + (size_t)t * GH + g * H + j, a0, n);
            }
        }
    }
}

/* acc[g] = sum_k panel[g][k][0:16] * h[k] for one unit block */
static RF_INLINE void block_gemv(const float *blk, const float *h, int P, int G, rf_v16 *acc) {
    rf_v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    const float *p0 = blk, *p1 = blk + (size_t)P * 16, *p2 = blk + (size_t)2 * P * 16,
                *p3 = blk + (size_t)3 * P * 16;
    if (G == 4) {
        for (int k = 0; k < P; k++) {
            float hk = h[k];
            a0 += *(const rf_v16u *)(p0 + (size_t)k * 16) * hk;
            a1 += *(const rf_v16u *)(p1 + (size_t)k * 16) * hk;
            a2 += *(const rf_v16u *)(p2 + (size_t)k * 16) * hk;
            a3 += *(const rf_v16u *)(p3 + (size_t)k * 16) * hk;
        }
    } else if (G == 3) {
        for (int k = 0; k < P; k++) {
            float hk = h[k];
            a0 += *(const rf_v16u *)(p0 + (size_t)k * 16) * hk;
            a1 += *(const rf_v16u *)(p1 + (size_t)k * 16) * hk;
            a2 += *(const rf_v16u *)(p2 + (size_t)k * 16) * hk;
        }
    } else {
        /* one gate: two accumulators over even/odd k shorten the dependency chain */
        rf_v16 b0 = {0};
        int k = 0;
        for (; k + 1 < P; k += 2) {
            a0 += *(const rf_v16u *)(p0 + (size_t)k * 16) * h[k];
            b0 += *(const rf_v16u *)(p0 + (size_t)(k + 1) * 16) * h[k + 1];
        }
        if (k < P) a0 += *(const rf_v16u *)(p0 + (size_t)k * 16) * h[k];
        a0 += b0;
    }
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
}

/* One step for unit blocks [ub0, ub1). hp: previous h (H), hn: new h (H), c: cell state (H). */
RF_CLONES
static void b1_step(const rf_rnn_desc *d, const rf_rnn_weights *w, const float *gxt, const float *hp,
                    float *hn, float *c, float *o, int ub0, int ub1) {
    const int H = d->hidden_size, G = rf_gates(d->cell);
    const float *b_hn = w->b_hn;
    for (int ub = ub0; ub < ub1; ub++) {
        rf_v16 acc[4];
        block_gemv(w->packed_hh + (size_t)ub * G * H * 16, hp, H, G, acc);
        const int j = ub * 16, n = H - j < 16 ? H - j : 16;
        rf_v16 a[4];
        for (int g = 0; g < G; g++) a[g] = acc[g] + ld(gxt + g * H + j, n); /* gx holds the bias */
        rf_v16 hv;
        if (d->cell == RF_CELL_LSTM) {
            rf_v16 cv = ld(c + j, n);
            hv = rf_lstm_block(a[0], a[1], a[2], a[3], &cv);
            rf_vstore_n(c + j, cv, n);
        } else if (d->cell == RF_CELL_GRU) { /* reset_after: the n gate keeps x and h parts apart */
            rf_v16 axn = ld(gxt + 2 * H + j, n);
            rf_v16 ahn = acc[2] + ld(b_hn ? b_hn + j : NULL, n);
            hv = rf_gru_block(a[0], a[1], axn, ahn, ld(hp + j, n));
        } else {
            hv = d->cell == RF_CELL_RNN_RELU ? rf_vrelu(a[0]) : rf_vtanh(a[0]);
        }
        rf_vstore_n(hn + j, hv, n);
        if (o) rf_vstore_n(o + j, hv, n);
    }
}

/* One layer (both directions) of batch 1. Time loop of direction dir over its units [ub0, ub1). */
static void b1_dir_loop(const rf_rnn_desc *d, const rf_b1_layer *L, int dir, int ub0, int ub1, int sync) {
    const int H = d->hidden_size, GH = rf_gates(d->cell) * H;
    const rf_rnn_weights *w = &L->w[dir];
    float *gx = L->gx[dir], *h = L->h[dir], *c = L->c[dir];
    b1_project(d, w, L->x, L->K, L->x_stride, L->len, gx, ub0, ub1);
    for (int s = 0; s < L->len; s++) {
        const size_t t = (size_t)(dir ? L->len - 1 - s : s);
        const float *hp = h + (size_t)(s & 1) * H;
        float *hn = h + (size_t)((s + 1) & 1) * H;
        b1_step(d, w, gx + t * GH, hp, hn, c, L->out ? L->out + t * L->out_stride + (size_t)dir * H : NULL,
                ub0, ub1);
        if (sync) {
#pragma omp barrier
        }
    }
}

void rf_rnn_b1_layer(const rf_rnn_desc *d, const rf_b1_layer *L, int nt) {
    const int H = d->hidden_size, D = d->num_dirs;
    const int UB = (H + RF_UNIT_BLOCK - 1) / RF_UNIT_BLOCK;
    int nth;
    if (D == 2 && nt >= 2) {
        nth = 2; /* one direction per thread: no synchronisation at all */
    } else {
        nth = nt < UB ? nt : UB;
        /* below ~64 units per thread a barrier per step costs more than the split saves */
        if (H < 64 * nth) nth = H / 64 > 1 ? H / 64 : 1;
    }
    /* a team costs a few microseconds to start: not worth it for a few steps of a small layer */
    const double flops = 2.0 * L->len * D * rf_gates(d->cell) * (double)H * (double)(H + L->K);
    if (flops < 5e5) nth = 1;
    if (nth < 1) nth = 1;
    if (L->len > 0) {
#pragma omp parallel num_threads(nth) if (nth > 1)
        {
            int tid = 0, nthr = 1;
#ifdef _OPENMP
            tid = omp_get_thread_num();
            nthr = omp_get_num_threads();
#endif
            if (D == 2 && nthr == 2) {
                b1_dir_loop(d, L, tid, 0, UB, 0);
            } else {
                for (int dir = 0; dir < D; dir++)
                    b1_dir_loop(d, L, dir, UB * tid / nthr, UB * (tid + 1) / nthr, nthr > 1);
            }
        }
    }
    for (int dir = 0; dir < D; dir++)
        if (L->len & 1) memcpy(L->h[dir], L->h[dir] + H, (size_t)H * sizeof(float));
}
