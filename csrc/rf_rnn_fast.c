/* rf_rnn_fast.c -- the fast recurrent kernel: packed weights, fused steps, one parallel region per layer.
 *
 * Equations: rf_act.h (canonical gate order LSTM [i f g o], GRU [r z n]).
 * Shape glossary: T=time B=batch K=input of the product H=hidden G=gates D=directions;
 *                 UB = ceil(H/16) unit blocks; "row" = one sequence (perm order, longest first).
 *
 * Weights are packed once (rf_rnn_pack) into blocks of 16 hidden units: for each gate g and input k,
 * the 16 weights W[g*H + u][k] of the block's units, (UB, G, K, 16) floats. One micro-kernel computes,
 * for up to 4 input rows and the G gates of one unit block, sum_k x[r][k] * W[g*H + u][k]: per k, G
 * vector loads feed 4*G FMAs, 16 accumulators in registers (AVX-512: one zmm each).
 * It serves both products:
 *   - the input projection gx = W_ih x + bias, computed by each thread for its own (row, unit) pairs, a
 *     chunk of Tc steps at a time (memory O(Tc B G H), not O(T B G H); no synchronisation needed);
 *   - the recurrent product W_hh h, immediately followed by the fused cell update of that block.
 * Work split of a team of nt threads (one parallel region per layer):
 *   - rows:  B >= 4 nt: thread t owns the row groups t, t+nt, ...; rows are independent sequences,
 *            so the time loop has no synchronisation at all;
 *   - units: small B: thread t owns a range of unit blocks (its weights stay in its core's L2) and the
 *            threads exchange h through a ping-pong buffer, one barrier per step (two for the original
 *            GRU, whose n gate needs all of r*h);
 *   - dirs:  small B, bidirectional, nt >= 2: one direction per thread, no synchronisation.
 * The per-step barrier is the module's own (spin briefly, then yield the core): on a busy machine a
 * thread waiting for a descheduled partner gives its core away instead of burning its time slice, which
 * is what made OpenMP's barrier degrade by 100x under load.
 * Ping-pong: row i at step s reads h[s & 1][i] and writes h[(s + 1) & 1][i]; a row stops at its length,
 * so its final state is in h[len[i] & 1][i]. c is updated in place (one owner per element).
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rf_act.h"
#include "rf_internal.h"
#include "rf_rnn_internal.h"

/* ---- packing -------------------------------------------------------------------------------- */
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

int rf_rnn_fast_eligible(const rf_rnn_desc *d, const rf_rnn_weights *w) {
    if (d->ext || d->proj_size) return 0;
    for (int k = 0; k < d->num_layers * d->num_dirs; k++)
        if (!w[k].packed_ih || !w[k].packed_hh) return 0;
    return 1;
}

static RF_INLINE rf_v16 ld(const float *p, int n) { return p ? rf_vload_n(p, n) : RF_V(0.0f); }

/* ---- micro-kernel: acc[r][g] = sum_k x[r][k] * blk[g][k][0:16], R rows, G gates ---- */
static RF_INLINE void mk(const float *const *x, const int R, int K, const float *blk, const int G,
                         rf_v16 acc[4][4]) {
    rf_v16 a[4][4];
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) a[r][g] = RF_V(0.0f);
    for (int k = 0; k < K; k++) {
        for (int g = 0; g < G; g++) {
            const rf_v16 w = rf_vload(blk + ((size_t)g * K + k) * 16);
            for (int r = 0; r < R; r++) a[r][g] += w * x[r][k];
        }
    }
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) acc[r][g] = a[r][g];
}

/* dispatch to a fully unrolled instance (R, G are literals there) */
static RF_INLINE void mk_any(const float *const *x, int R, int K, const float *blk, int G, rf_v16 acc[4][4]) {
#define MK_CASE(RR, GG) case RR * 8 + GG: mk(x, RR, K, blk, GG, acc); break;
    switch (R * 8 + G) {
        MK_CASE(1, 1) MK_CASE(2, 1) MK_CASE(3, 1) MK_CASE(4, 1)
        MK_CASE(1, 2) MK_CASE(2, 2) MK_CASE(3, 2) MK_CASE(4, 2)
        MK_CASE(1, 3) MK_CASE(2, 3) MK_CASE(3, 3) MK_CASE(4, 3)
        MK_CASE(1, 4) MK_CASE(2, 4) MK_CASE(3, 4) MK_CASE(4, 4)
    default: break;
    }
#undef MK_CASE
}

/* ---- one direction of one layer ---- */
typedef struct {
    const rf_rnn_desc *d;
    const rf_rnn_weights *w;
    int reverse;
    const float *x; /* row (t, b) at x + (t*x_ts + b*x_bs)*K */
    int K;
    size_t x_ts, x_bs;
    float *out; /* row (t, b) at out + (t*o_ts + b*o_bs)*o_ld, already offset by dir*H; or NULL */
    size_t o_ts, o_bs, o_ld;
    const int32_t *perm, *len; /* rows sorted by decreasing length */
    int B, T, Tc;
    float *gx; /* (Tc, B, G*H) */
    float *h;  /* 2 x (B, H) */
    float *c;  /* (B, H) */
    float *m;  /* (B, H) GRU reset-before r*h */
} fdir;

/* Sense-reversing barrier: the last thread to arrive flips the shared sense; the others wait for it,
 * spinning ~ a microsecond and then yielding. Acquire/release ordering publishes the h written before it. */
typedef struct {
    atomic_int count;
    atomic_int sense;
    int n;
} rf_barrier;

static void rf_barrier_wait(rf_barrier *b, int *local_sense) {
    const int s = !*local_sense;
    *local_sense = s;
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->sense, s, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->sense, memory_order_acquire) != s; spins++) {
        if (spins < 4000) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            sched_yield();
        }
    }
}

/* Which rows a thread runs: groups of 4 rows; with stride > 1, group q belongs to thread q % stride. */
typedef struct {
    int g0, gstride; /* first group and stride between the thread's groups */
    int ub0, ub1;    /* unit blocks */
    int sync;        /* threads share rows: barrier after each step (phase) */
    rf_barrier *bar; /* the team's barrier when sync */
    int sense;       /* this thread's barrier sense */
} fwork;

static RF_INLINE int nact_at(const fdir *f, int s) {
    /* rows are sorted by decreasing length: binary search of the first row with len <= s */
    int lo = 0, hi = f->B;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (f->len[mid] > s) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static RF_INLINE size_t t_of(const fdir *f, int s, int i) {
    return (size_t)(f->reverse ? f->len[i] - 1 - s : s);
}

/* gx for steps [s0, s1) of this thread's rows and units; rows of 4 (s, i) pairs at a time */
RF_CLONES
static void f_project(const fdir *f, const fwork *wk, int s0, int s1) {
    const rf_rnn_desc *d = f->d;
    const int H = d->hidden_size, G = rf_gates(d->cell), GH = G * H, K = f->K;
    for (int ub = wk->ub0; ub < wk->ub1; ub++) {
        const float *blk = f->w->packed_ih + (size_t)ub * G * K * 16;
        const int j = ub * 16, n = H - j < 16 ? H - j : 16;
        rf_v16 bias[4];
        for (int g = 0; g < G; g++) bias[g] = ld(f->w->bias ? f->w->bias + g * H + j : NULL, n);
        const float *xr[4] = {0};
        float *gr[4];
        int R = 0;
        for (int s = s0; s < s1; s++) {
            const int na = nact_at(f, s);
            for (int q = wk->g0; q * 4 < na; q += wk->gstride) {
                for (int i = q * 4; i < q * 4 + 4 && i < na; i++) {
                    xr[R] = f->x + (t_of(f, s, i) * f->x_ts + (size_t)f->perm[i] * f->x_bs) * K;
                    gr[R] = f->gx + ((size_t)(s - s0) * f->B + i) * GH + j;
                    if (++R == 4) {
                        rf_v16 acc[4][4];
                        mk_any(xr, R, K, blk, G, acc);
                        for (int r = 0; r < R; r++)
                            for (int g = 0; g < G; g++) rf_vstore_n(gr[r] + g * H, acc[r][g] + bias[g], n);
                        R = 0;
                    }
                }
            }
        }
        if (R) { /* the last, partial group */
            rf_v16 acc[4][4];
            mk_any(xr, R, K, blk, G, acc);
            for (int r = 0; r < R; r++)
                for (int g = 0; g < G; g++) rf_vstore_n(gr[r] + g * H, acc[r][g] + bias[g], n);
        }
    }
}

/* step s (gx row base s0) for this thread's rows and units; phase 0: whole step, GRU reset-before:
 * phase 1 (r, z, m = r*h; z kept in gx's z slot), phase 2 (n and h) */
RF_CLONES
static void f_step(const fdir *f, const fwork *wk, int s, int s0, int phase) {
    const rf_rnn_desc *d = f->d;
    const int H = d->hidden_size, G = rf_gates(d->cell), GH = G * H;
    const float *hp = f->h + (size_t)(s & 1) * f->B * H;
    float *hn = f->h + (size_t)((s + 1) & 1) * f->B * H;
    const int na = nact_at(f, s);
    const float *b_hn = f->w->b_hn;
    for (int ub = wk->ub0; ub < wk->ub1; ub++) {
        const int j = ub * 16, n = H - j < 16 ? H - j : 16;
        const float *blk = f->w->packed_hh + (size_t)ub * G * H * 16;
        for (int q = wk->g0; q * 4 < na; q += wk->gstride) {
            const int i0 = q * 4, R = na - i0 < 4 ? na - i0 : 4;
            const float *xr[4] = {0};
            rf_v16 acc[4][4];
            for (int r = 0; r < R; r++) xr[r] = phase == 2 ? f->m + (size_t)(i0 + r) * H : hp + (size_t)(i0 + r) * H;
            if (phase == 2)
                mk_any(xr, R, H, blk + (size_t)2 * H * 16, 1, acc);
            else
                mk_any(xr, R, H, blk, phase == 1 ? 2 : G, acc);
            for (int r = 0; r < R; r++) {
                const int i = i0 + r;
                float *gxr = f->gx + ((size_t)(s - s0) * f->B + i) * GH;
                const float *hpi = hp + (size_t)i * H;
                float *hni = hn + (size_t)i * H;
                rf_v16 hv;
                if (d->cell == RF_CELL_LSTM) {
                    float *ci = f->c + (size_t)i * H + j;
                    rf_v16 cv = ld(ci, n);
                    hv = rf_lstm_block(acc[r][0] + ld(gxr + j, n), acc[r][1] + ld(gxr + H + j, n),
                                       acc[r][2] + ld(gxr + 2 * H + j, n), acc[r][3] + ld(gxr + 3 * H + j, n), &cv);
                    rf_vstore_n(ci, cv, n);
                } else if (d->cell == RF_CELL_GRU && phase == 0) { /* reset_after */
                    hv = rf_gru_block(acc[r][0] + ld(gxr + j, n), acc[r][1] + ld(gxr + H + j, n),
                                      ld(gxr + 2 * H + j, n), acc[r][2] + ld(b_hn ? b_hn + j : NULL, n),
                                      ld(hpi + j, n));
                } else if (phase == 1) {
                    rf_v16 rg = rf_vsigmoid(acc[r][0] + ld(gxr + j, n));
                    rf_vstore_n(gxr + H + j, rf_vsigmoid(acc[r][1] + ld(gxr + H + j, n)), n);
                    rf_vstore_n(f->m + (size_t)i * H + j, rg * ld(hpi + j, n), n);
                    continue;
                } else if (phase == 2) {
                    rf_v16 z = ld(gxr + H + j, n);
                    hv = (RF_V(1.0f) - z) * rf_vtanh(acc[r][0] + ld(gxr + 2 * H + j, n)) + z * ld(hpi + j, n);
                } else {
                    rf_v16 a = acc[r][0] + ld(gxr + j, n);
                    hv = d->cell == RF_CELL_RNN_RELU ? rf_vrelu(a) : rf_vtanh(a);
                }
                rf_vstore_n(hni + j, hv, n);
                if (f->out)
                    rf_vstore_n(f->out + (t_of(f, s, i) * f->o_ts + (size_t)f->perm[i] * f->o_bs) * f->o_ld + j, hv, n);
            }
        }
    }
}

static void f_run(const fdir *f, fwork *wk) {
    const int gru_rb = f->d->cell == RF_CELL_GRU && !f->d->reset_after;
    const int steps = f->B > 0 ? f->len[0] : 0;
    for (int s0 = 0; s0 < steps; s0 += f->Tc) {
        const int s1 = s0 + f->Tc < steps ? s0 + f->Tc : steps;
        f_project(f, wk, s0, s1); /* each thread reads back only the gx it wrote: no barrier */
        for (int s = s0; s < s1; s++) {
            if (gru_rb) {
                f_step(f, wk, s, s0, 1);
                if (wk->sync) rf_barrier_wait(wk->bar, &wk->sense);
                f_step(f, wk, s, s0, 2);
            } else {
                f_step(f, wk, s, s0, 0);
            }
            if (wk->sync) rf_barrier_wait(wk->bar, &wk->sense);
        }
    }
}

int rf_rnn_fast_chunk(const rf_rnn_desc *d, int T, int B) {
    const size_t per_step = (size_t)(B > 0 ? B : 1) * rf_gates(d->cell) * d->hidden_size;
    size_t tc = ((size_t)1 << 18) / per_step; /* ~1 MB of gx per direction */
    if (tc < 1) tc = 1;
    if (tc > (size_t)(T > 0 ? T : 1)) tc = (size_t)(T > 0 ? T : 1);
    return (int)tc;
}

void rf_rnn_fast_layer(const rf_rnn_desc *d, const rf_fast_layer *L, int nt) {
    const int H = d->hidden_size, D = d->num_dirs, B = L->B, G = rf_gates(d->cell);
    const int UB = (H + RF_UNIT_BLOCK - 1) / RF_UNIT_BLOCK, ngroups = (B + 3) / 4;
    const int steps = B > 0 ? L->len[0] : 0;
    if (steps == 0) return;
    /* total work of the layer: below ~0.5 MFLOP a team costs more than it saves */
    double flops = 0.0;
    for (int i = 0; i < B; i++) flops += L->len[i];
    flops *= 2.0 * D * G * (double)H * (double)(H + L->K);
    if (flops < 5e5 || nt < 1) nt = 1;
    int mode; /* 0: rows, 1: units, 2: directions */
    int nth;
    if (B >= 4 * nt || nt == 1) {
        mode = 0;
        nth = nt < ngroups ? nt : ngroups;
    } else if (D == 2) {
        mode = 2;
        nth = 2;
    } else {
        mode = 1;
        nth = nt < UB ? nt : UB;
        if (H < 64 * nth) nth = H / 64 > 1 ? H / 64 : 1; /* too few units per thread for a barrier */
    }
    if (nth < 1) nth = 1;
    fdir f[2];
    for (int dir = 0; dir < D; dir++) {
        fdir fd = {d, &L->w[dir], dir, L->x, L->K, L->x_ts, L->x_bs,
                   L->out ? L->out + (size_t)dir * H : NULL, L->o_ts, L->o_bs, L->o_ld,
                   L->perm, L->len, B, L->T, L->Tc, L->gx[dir], L->h[dir], L->c[dir], L->m[dir]};
        f[dir] = fd;
    }
    rf_barrier bar;
    atomic_init(&bar.count, 0);
    atomic_init(&bar.sense, 0);
    bar.n = 1;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = 0, nthr = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nthr = omp_get_num_threads();
#endif
#pragma omp single
        bar.n = nthr; /* the team may be smaller than asked; the single's implicit barrier publishes it */
        if (mode == 2 && nthr == 2) {
            fwork wk = {0, 1, 0, UB, 0, &bar, 0};
            f_run(&f[tid], &wk);
        } else {
            fwork wk;
            if (mode == 1 && nthr > 1) {
                fwork u = {0, 1, UB * tid / nthr, UB * (tid + 1) / nthr, 1, &bar, 0};
                wk = u;
            } else { /* rows (or a team of one) */
                fwork r = {tid, nthr, 0, UB, 0, &bar, 0};
                wk = r;
            }
            for (int dir = 0; dir < D; dir++) f_run(&f[dir], &wk);
        }
    }
}
