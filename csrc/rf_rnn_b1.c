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


size_t rf_rnn_packed_hh_size(const rf_rnn_desc *d) {
    if (rf_rnn_check_desc(d, NULL) != RF_OK) return 0;
    const size_t H = (size_t)d->hidden_size, P = d->proj_size ? (size_t)d->proj_size : H;
    const size_t UB = (H + RF_UNIT_BLOCK - 1) / RF_UNIT_BLOCK;
    return UB * (size_t)rf_gates(d->cell) * P * RF_UNIT_BLOCK;
}

void rf_rnn_pack_hh(const rf_rnn_desc *d, const float *w_hh, float *packed) {
    const int H = d->hidden_size, P = d->proj_size ? d->proj_size : H, G = rf_gates(d->cell);
    const int UB = (H + RF_UNIT_BLOCK - 1) / RF_UNIT_BLOCK;
    for (int ub = 0; ub < UB; ub++)
        for (int g = 0; g < G; g++)
            for (int k = 0; k < P; k++) {
                float *dst = packed + (((size_t)ub * G + g) * P + k) * RF_UNIT_BLOCK;
                for (int u = 0; u < RF_UNIT_BLOCK; u++) {
                    int j = ub * RF_UNIT_BLOCK + u;
                    dst[u] = j < H ? w_hh[((size_t)g * H + j) * P + k] : 0.0f;
                }
            }
}

int rf_rnn_b1_eligible(const rf_rnn_desc *d, int B, int nt) {
    (void)nt;
    return B == 1 && !d->ext && d->proj_size == 0 && !(d->cell == RF_CELL_GRU && !d->reset_after);
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

static RF_INLINE rf_v16 ld(const float *p, int n) { return p ? rf_vload_n(p, n) : RF_V(0.0f); }

/* One step for unit blocks [ub0, ub1). hp: previous h (H), hn: new h (H), c: cell state (H). */
RF_CLONES
static void b1_step(const rf_rnn_desc *d, const rf_rnn_weights *w, const float *gxt, const float *hp,
                    float *hn, float *c, float *o, int ub0, int ub1) {
    const int H = d->hidden_size, G = rf_gates(d->cell);
    const float *bias = w->bias, *b_hn = w->b_hn;
    for (int ub = ub0; ub < ub1; ub++) {
        rf_v16 acc[4];
        block_gemv(w->packed_hh + (size_t)ub * G * H * 16, hp, H, G, acc);
        const int j = ub * 16, n = H - j < 16 ? H - j : 16;
        rf_v16 a[4];
        for (int g = 0; g < G; g++) {
            a[g] = acc[g] + ld(gxt + g * H + j, n);
            if (bias) a[g] += ld(bias + g * H + j, n);
        }
        rf_v16 hv;
        if (d->cell == RF_CELL_LSTM) {
            rf_v16 cv = ld(c + j, n);
            hv = rf_lstm_block(a[0], a[1], a[2], a[3], &cv);
            rf_vstore_n(c + j, cv, n);
        } else if (d->cell == RF_CELL_GRU) { /* reset_after: the n gate keeps x and h parts apart */
            rf_v16 axn = ld(gxt + 2 * H + j, n) + (bias ? ld(bias + 2 * H + j, n) : RF_V(0.0f));
            rf_v16 ahn = acc[2] + ld(b_hn ? b_hn + j : NULL, n);
            hv = rf_gru_block(a[0], a[1], axn, ahn, ld(hp + j, n));
        } else {
            hv = d->cell == RF_CELL_RNN_RELU ? rf_vrelu(a[0]) : rf_vtanh(a[0]);
        }
        rf_vstore_n(hn + j, hv, n);
        if (o) rf_vstore_n(o + j, hv, n);
    }
}

void rf_rnn_b1_run(const rf_rnn_desc *d, const rf_rnn_weights *w, const float *gx, float *out,
                   size_t out_stride, int nsteps, int reverse, float *h, float *c, int nt) {
    const int H = d->hidden_size, GH = rf_gates(d->cell) * H;
    const int UB = (H + RF_UNIT_BLOCK - 1) / RF_UNIT_BLOCK;
    int nth = nt < UB ? nt : UB;
    /* below ~64 units per thread the barrier costs more than the split saves */
    if (H < 64 * nth) nth = H / 64 > 1 ? H / 64 : 1;
    if (nth < 1) nth = 1;
    if (nsteps <= 0) return;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = 0, nthr = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nthr = omp_get_num_threads();
#endif
        const int ub0 = UB * tid / nthr, ub1 = UB * (tid + 1) / nthr;
        for (int s = 0; s < nsteps; s++) {
            const size_t t = (size_t)(reverse ? nsteps - 1 - s : s);
            const float *hp = h + (size_t)(s & 1) * H;
            float *hn = h + (size_t)((s + 1) & 1) * H;
            b1_step(d, w, gx + t * GH, hp, hn, c, out ? out + t * out_stride : NULL, ub0, ub1);
#pragma omp barrier
        }
    }
    if (nsteps & 1) memcpy(h, h + H, (size_t)H * sizeof(float));
}
