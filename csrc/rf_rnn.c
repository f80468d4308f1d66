/* rf_rnn.c -- RNN / LSTM / GRU stacks: layers x directions x variable lengths, inference.
 *
 * Equations: see rf_cells.h (canonical PyTorch gate order: LSTM [i f g o], GRU [r z n]).
 * Shape glossary: T=time B=batch I=input H=hidden P=projection (P=H without projection)
 *                 G=gates D=directions L=layers; Hout = P; "row" = one (t, b) pair.
 *
 * Per (layer, direction):
 *   1. gx = X W_ih^T for all T*B rows at once (one GEMM, bias fused into the pointwise kernel), or, when
 *      that would exceed RF_GEN_GX_FLOATS (long sequences), for chunks of Tc steps at a time, so the
 *      workspace does not grow with T (gen_chunk, project_chunk).
 *   2. Rows are visited in order of decreasing length (perm), so at step s the active sequences are a
 *      prefix of nact rows: the recurrent GEMM hh = h W_hh^T runs on nact rows only.
 *      The forward direction reads time t = s, the reverse one t = len[b] - 1 - s.
 *   3. One fused pointwise pass per step (two for the original GRU, plus the projection GEMM for LSTM
 *      with proj_size).
 *   This generic path serves LSTM projections and ONNX's extensions, and is the naive kernel the fast
 *   path (rf_rnn_fast.c: packed weights, fused steps, one parallel region per layer) is checked
 *   against. Its GEMMs are SciPy's BLAS (which threads itself) and its pointwise pass is serial, so no
 *   OpenMP team spins beside BLAS threads.
 * Outputs of padded positions (t >= len[b]) are zero; the final state of a sequence is its state after
 * its last valid step (reverse direction: after t = 0); a zero-length sequence keeps its initial state.
 */
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rf_act.h"
#include "rf_cells.h"
#include "rf_rnn_internal.h"

int rf_gates(int cell) { return cell == RF_CELL_LSTM ? 4 : cell == RF_CELL_GRU ? 3 : 1; }

static int act_kind_ok(int k) { return k >= RF_ACT_SIGMOID && k <= RF_ACT_SOFTPLUS; }

rf_status rf_rnn_check_desc(const rf_rnn_desc *d, char *err) {
    if (!d) return rf_fail(err, RF_ERR_INVALID_ARG, "rnn description is NULL");
    if (d->cell < RF_CELL_RNN_TANH || d->cell > RF_CELL_GRU)
        return rf_fail(err, RF_ERR_INVALID_ARG, "cell: expected 0..3, got %d", d->cell);
    if (d->num_layers < 1)
        return rf_fail(err, RF_ERR_INVALID_ARG, "num_layers: expected >= 1, got %d", d->num_layers);
    if (d->num_dirs != 1 && d->num_dirs != 2)
        return rf_fail(err, RF_ERR_INVALID_ARG, "num_dirs: expected 1 or 2, got %d", d->num_dirs);
    if (d->input_size < 1 || d->hidden_size < 1)
        return rf_fail(err, RF_ERR_INVALID_ARG, "input_size, hidden_size: expected >= 1, got %d, %d",
                       d->input_size, d->hidden_size);
    if (d->proj_size < 0 || (d->proj_size > 0 && d->cell != RF_CELL_LSTM))
        return rf_fail(err, RF_ERR_INVALID_ARG, "proj_size: expected 0 (or > 0 for LSTM), got %d",
                       d->proj_size);
    if (d->proj_size >= d->hidden_size)
        return rf_fail(err, RF_ERR_INVALID_ARG, "proj_size: expected < hidden_size %d, got %d",
                       d->hidden_size, d->proj_size);
    /* every size product used below must fit in int for BLAS */
    size_t gh = (size_t)rf_gates(d->cell) * (size_t)d->hidden_size;
    size_t in_max = (size_t)d->input_size > (size_t)d->num_dirs * d->hidden_size
                        ? (size_t)d->input_size
                        : (size_t)d->num_dirs * d->hidden_size;
    if (gh > INT32_MAX / 8 || in_max > INT32_MAX / 8)
        return rf_fail(err, RF_ERR_INVALID_ARG, "sizes too large: G*H = %zu, input = %zu", gh, in_max);
    if (d->ext) {
        for (int dir = 0; dir < d->num_dirs; dir++)
            for (int f = 0; f < 3; f++)
                if (!act_kind_ok(d->ext->act[dir][f].kind))
                    return rf_fail(err, RF_ERR_INVALID_ARG, "activation kind: expected 0..%d, got %d",
                                   RF_ACT_SOFTPLUS, d->ext->act[dir][f].kind);
        if (!(d->ext->clip >= 0.0f))
            return rf_fail(err, RF_ERR_INVALID_ARG, "clip: expected >= 0, got %g", (double)d->ext->clip);
        if (d->ext->input_forget && d->cell != RF_CELL_LSTM)
            return rf_fail(err, RF_ERR_INVALID_ARG, "input_forget: only for LSTM");
    }
    return RF_OK;
}

/* Workspace of the whole stack. Carved identically by size query and by forward. */
typedef struct {
    float *gx;      /* (Tc*B, G*H) input projections of the current (layer, dir); Tc = gen_chunk() */
    float *hh;      /* (B, G*H) recurrent projections */
    float *h;       /* (B, P) state, rows in perm order */
    float *c;       /* (B, H) LSTM cell state, perm order */
    float *m;       /* (B, H) LSTM pre-projection output / GRU reset-before r*h */
    float *lay[2];  /* (T, B, D*P) outputs of intermediate layers (time-major), ping-pong */
    int32_t *perm;  /* (B) batch rows sorted by decreasing length */
    int32_t *len;   /* (B) lengths in perm order */
} rf_ws;

/* The generic path keeps the input projections of all T*B rows when they fit in RF_GEN_GX_FLOATS (one
 * GEMM, as always), else of Tc steps at a time: 8 MB, independent of T. */
#define RF_GEN_GX_FLOATS ((size_t)1 << 21)

static int gen_chunk(const rf_rnn_desc *d, int T, int B) {
    const size_t per_step = (size_t)(B > 0 ? B : 1) * (size_t)rf_gates(d->cell) * (size_t)d->hidden_size;
    if (T <= 0 || (size_t)T * per_step <= RF_GEN_GX_FLOATS) return T > 0 ? T : 1;
    size_t tc = RF_GEN_GX_FLOATS / per_step;
    return tc < 1 ? 1 : (int)tc; /* < T here */
}

static int carve_ws(const rf_rnn_desc *d, int T, int B, rf_carver *cv, rf_ws *w) {
    const size_t G = (size_t)rf_gates(d->cell), H = (size_t)d->hidden_size;
    const size_t P = d->proj_size ? (size_t)d->proj_size : H, D = (size_t)d->num_dirs;
    size_t TB = (size_t)T * (size_t)B;
    w->gx = rf_carve(cv, rf_mul3((size_t)gen_chunk(d, T, B), B ? (size_t)B : 1, G * H));
    w->hh = rf_carve(cv, rf_mul3(B ? B : 1, G, H));
    w->h = rf_carve(cv, rf_mul3(B ? B : 1, 2, P));
    w->c = rf_carve(cv, rf_mul3(B ? B : 1, 1, H));
    w->m = rf_carve(cv, rf_mul3(B ? B : 1, 1, H));
    size_t lay = d->num_layers > 1 ? rf_mul3(TB ? TB : 1, D, P) : 1;
    w->lay[0] = rf_carve(cv, lay);
    w->lay[1] = rf_carve(cv, d->num_layers > 2 ? lay : 1);
    w->perm = (int32_t *)rf_carve(cv, B ? (size_t)B : 1);
    w->len = (int32_t *)rf_carve(cv, B ? (size_t)B : 1);
    return cv->ok;
}

/* The fast path's workspace: per direction a gx chunk, 2 h buffers, c, m; intermediate layer outputs. */
typedef struct {
    float *gx[2], *h[2], *c[2], *m[2];
    float *lay[2];
    int32_t *perm, *len;
} rf_fws;

static int carve_fws(const rf_rnn_desc *d, int T, int B, rf_carver *cv, rf_fws *w) {
    const size_t G = (size_t)rf_gates(d->cell), H = (size_t)d->hidden_size, D = (size_t)d->num_dirs;
    const size_t Bs = B ? (size_t)B : 1, Tc = (size_t)rf_rnn_fast_chunk(d, T, B);
    for (size_t dir = 0; dir < D; dir++) {
        w->gx[dir] = rf_carve(cv, rf_mul3(Tc, Bs, G * H));
        w->h[dir] = rf_carve(cv, rf_mul3(2, Bs, H));
        w->c[dir] = rf_carve(cv, rf_mul3(1, Bs, H));
        w->m[dir] = rf_carve(cv, rf_mul3(1, Bs, H));
    }
    size_t TB = (size_t)T * Bs;
    size_t lay = d->num_layers > 1 ? rf_mul3(TB ? TB : 1, D, H) : 1;
    w->lay[0] = rf_carve(cv, lay);
    w->lay[1] = rf_carve(cv, d->num_layers > 2 ? lay : 1);
    w->perm = (int32_t *)rf_carve(cv, Bs);
    w->len = (int32_t *)rf_carve(cv, Bs);
    return cv->ok;
}

size_t rf_rnn_workspace_size(const rf_rnn_desc *d, int T, int B) {
    if (rf_rnn_check_desc(d, NULL) != RF_OK || T < 0 || B < 0) return 0;
    rf_carver cv = {NULL, 0, 1}, cf = {NULL, 0, 1};
    rf_ws w;
    rf_fws f;
    if (!carve_ws(d, T, B, &cv, &w) || !carve_fws(d, T, B, &cf, &f)) return 0;
    return (cv.used > cf.used ? cv.used : cf.used) + RF_ALIGN; /* room to align the base */
}

size_t rf_rnn_workspace_size_w(const rf_rnn_desc *d, const rf_rnn_weights *w, int T, int B) {
    if (!w || rf_rnn_check_desc(d, NULL) != RF_OK || T < 0 || B < 0) return 0;
    if (!rf_rnn_fast_eligible(d, w)) return rf_rnn_workspace_size(d, T, B);
    rf_carver cf = {NULL, 0, 1};
    rf_fws f;
    if (!carve_fws(d, T, B, &cf, &f)) return 0;
    return cf.used + RF_ALIGN;
}

/* ---------------------------------------------------------------------------------------------- */
/* Pointwise kernels over the active rows [0, nact) of one step (rows in perm order).              */

typedef struct {
    const rf_rnn_desc *d;
    const rf_rnn_weights *w;
    int dir;
    const float *gx; /* (T*B, G*H), or (Tc, B, G*H) for steps [s0, s1) when chunked */
    size_t gx_ts, gx_bs; /* row strides of time and batch in gx (in rows) */
    float *out;      /* destination of this direction's outputs or NULL */
    size_t out_ts, out_bs; /* row strides (rows of out_ld floats) */
    size_t out_ld;   /* floats per output row (D*P) */
    const int32_t *perm, *len;
    int T, reverse;
    int chunked, s0, s1; /* gx holds steps [s0, s1) only: slot s - s0 (reverse: s1 - 1 - s) */
} rf_step_ctx;

static inline size_t time_of(const rf_step_ctx *k, int s, int i) {
    return (size_t)(k->reverse ? k->len[i] - 1 - s : s);
}

static inline const float *gx_row(const rf_step_ctx *k, int s, int i) {
    size_t b = (size_t)k->perm[i];
    /* chunked: the reverse direction's chunk is stored in time order, so its slot is the same for every row */
    size_t t = k->chunked ? (size_t)(k->reverse ? k->s1 - 1 - s : s - k->s0) : time_of(k, s, i);
    return k->gx + (t * k->gx_ts + b * k->gx_bs) * (size_t)(rf_gates(k->d->cell) * k->d->hidden_size);
}

/* gx of steps [s0, s1) of the generic path into gx (Tc, B, GH): row (slot, b) at gx + (slot*B + b)*GH.
 * Sequence b's steps are the times [s0, s1) (forward) or [len_b - s1, len_b - s0) (reverse), clipped to
 * [0, len_b), in slots t - s0 or t - (len_b - s1): both increase with t, so each is one GEMM over rows of x
 * (time stride in_ts rows). Time-major input whose rows share their times is one GEMM for the chunk. */
static void project_chunk(const rf_step_ctx *k, const float *x, int in_size, size_t in_ts, size_t in_bs,
                          const float *w_ih, const int32_t *lengths, int B, int maxlen, float *gx) {
    const int GH = rf_gates(k->d->cell) * k->d->hidden_size, s0 = k->s0, s1 = k->s1;
    if (in_bs == 1 && in_ts == (size_t)B && (!k->reverse || !lengths)) {
        const int ta = k->reverse ? k->T - s1 : s0, tb = k->reverse ? k->T - s0 : (s1 < maxlen ? s1 : maxlen);
        if (tb > ta)
            rf_sgemm(0, 1, (tb - ta) * B, GH, in_size, 1.0f, x + (size_t)ta * B * in_size, in_size, w_ih, in_size,
                     0.0f, gx + (k->reverse ? (size_t)(ta - (k->T - s1)) * B * GH : 0), GH);
        return;
    }
    for (int b = 0; b < B; b++) {
        const int len = lengths ? lengths[b] : k->T;
        int ta, tb, base;
        if (k->reverse) {
            base = len - s1;
            ta = base > 0 ? base : 0;
            tb = len - s0;
        } else {
            base = s0;
            ta = s0;
            tb = s1 < len ? s1 : len;
        }
        if (tb <= ta) continue;
        rf_sgemm(0, 1, tb - ta, GH, in_size, 1.0f, x + ((size_t)ta * in_ts + (size_t)b * in_bs) * in_size,
                 (int)(in_ts * (size_t)in_size), w_ih, in_size, 0.0f, gx + ((size_t)(ta - base) * B + b) * GH,
                 (int)((size_t)B * GH));
    }
}

static inline float *out_row(const rf_step_ctx *k, int s, int i) {
    if (!k->out) return NULL;
    size_t b = (size_t)k->perm[i];
    return k->out + (time_of(k, s, i) * k->out_ts + b * k->out_bs) * k->out_ld;
}

static RF_INLINE rf_v16 ld(const float *p, int n) { return p ? rf_vload_n(p, n) : RF_V(0.0f); }

/* RNN, LSTM, GRU reset_after in one pass; GRU reset_before phase 1 (r, z; m = r*h). h, c updated in place.
 * For LSTM with projection, m receives sigmoid(o) tanh(c) and h is produced by the caller's GEMM.
 * Works in blocks of 16 hidden units (rf_act.h). */
RF_CLONES
static void pointwise_rows(const rf_step_ctx *k, int s, int i0, int i1, const float *hh, float *h,
                           float *c, float *m) {
    const rf_rnn_desc *d = k->d;
    const int H = d->hidden_size, P = d->proj_size ? d->proj_size : H, GH = rf_gates(d->cell) * H;
    const float *bias = k->w[0].bias, *b_hn = k->w[0].b_hn;
#define B_(off) (bias ? bias + (off) : NULL)
    for (int i = i0; i < i1; i++) {
        const float *gx = gx_row(k, s, i), *hr = hh + (size_t)i * GH;
        float *hi = h + (size_t)i * P, *o = out_row(k, s, i);
        for (int j = 0; j < H; j += 16) {
            const int n = H - j < 16 ? H - j : 16;
            if (d->cell == RF_CELL_LSTM) {
                float *ci = c + (size_t)i * H + j, *mi = (d->proj_size ? m + (size_t)i * H : hi) + j;
                rf_v16 ai = ld(gx + j, n) + ld(hr + j, n) + ld(B_(j), n);
                rf_v16 af = ld(gx + H + j, n) + ld(hr + H + j, n) + ld(B_(H + j), n);
                rf_v16 ag = ld(gx + 2 * H + j, n) + ld(hr + 2 * H + j, n) + ld(B_(2 * H + j), n);
                rf_v16 ao = ld(gx + 3 * H + j, n) + ld(hr + 3 * H + j, n) + ld(B_(3 * H + j), n);
                rf_v16 cv = ld(ci, n);
                rf_v16 hv = rf_lstm_block(ai, af, ag, ao, &cv);
                rf_vstore_n(ci, cv, n);
                rf_vstore_n(mi, hv, n);
            } else if (d->cell == RF_CELL_GRU) {
                rf_v16 ar = ld(gx + j, n) + ld(hr + j, n) + ld(B_(j), n);
                rf_v16 az = ld(gx + H + j, n) + ld(hr + H + j, n) + ld(B_(H + j), n);
                if (d->reset_after) {
                    rf_v16 axn = ld(gx + 2 * H + j, n) + ld(B_(2 * H + j), n);
                    rf_v16 ahn = ld(hr + 2 * H + j, n) + ld(b_hn ? b_hn + j : NULL, n);
                    rf_vstore_n(hi + j, rf_gru_block(ar, az, axn, ahn, ld(hi + j, n)), n);
                } else { /* phase 1: m = r*h, z kept in hh's z slot */
                    rf_vstore_n(m + (size_t)i * H + j, rf_vsigmoid(ar) * ld(hi + j, n), n);
                    rf_vstore_n((float *)hr + H + j, rf_vsigmoid(az), n);
                }
            } else {
                rf_v16 a = ld(gx + j, n) + ld(hr + j, n) + ld(B_(j), n);
                rf_vstore_n(hi + j, d->cell == RF_CELL_RNN_RELU ? rf_vrelu(a) : rf_vtanh(a), n);
            }
        }
        if (o && !d->proj_size && !(d->cell == RF_CELL_GRU && !d->reset_after))
            memcpy(o, hi, (size_t)H * sizeof(float));
    }
}

/* GRU reset_before phase 2: hh_n = W_hn (r h) is in hh's n slot, z in its z slot. */
RF_CLONES
static void gru_rb_phase2(const rf_step_ctx *k, int s, int i0, int i1, const float *hh, float *h) {
    const int H = k->d->hidden_size, GH = 3 * H;
    const float *bias = k->w[0].bias;
    for (int i = i0; i < i1; i++) {
        const float *gx = gx_row(k, s, i), *hr = hh + (size_t)i * GH;
        float *hi = h + (size_t)i * H, *o = out_row(k, s, i);
        for (int j = 0; j < H; j += 16) {
            const int n = H - j < 16 ? H - j : 16;
            rf_v16 an = ld(gx + 2 * H + j, n) + ld(hr + 2 * H + j, n) + ld(B_(2 * H + j), n);
            rf_v16 z = ld(hr + H + j, n);
            rf_vstore_n(hi + j, (RF_V(1.0f) - z) * rf_vtanh(an) + z * ld(hi + j, n), n);
        }
        if (o) memcpy(o, hi, (size_t)H * sizeof(float));
    }
#undef B_
}

/* Generic ONNX-extended cell (activations, clip, peepholes, input_forget): scalar, one pass. */
static void pointwise_rows_ext(const rf_step_ctx *k, int s, int i0, int i1, const float *hh, float *h,
                               float *c, float *m, int phase) {
    const rf_rnn_desc *d = k->d;
    const rf_rnn_ext *e = d->ext;
    const rf_act *A = e->act[k->dir];
    const float clip = e->clip;
    const int H = d->hidden_size, P = d->proj_size ? d->proj_size : H, GH = rf_gates(d->cell) * H;
    const float *bias = k->w[0].bias, *b_hn = k->w[0].b_hn, *peep = k->w[0].peep;
    for (int i = i0; i < i1; i++) {
        const float *gx = gx_row(k, s, i), *hr = hh + (size_t)i * GH;
        float *hi = h + (size_t)i * P, *o = out_row(k, s, i);
        if (d->cell == RF_CELL_LSTM) {
            float *ci = c + (size_t)i * H, *mi = d->proj_size ? m + (size_t)i * H : hi;
            for (int j = 0; j < H; j++) {
                float a[4];
                for (int g = 0; g < 4; g++) a[g] = gx[g * H + j] + hr[g * H + j] + (bias ? bias[g * H + j] : 0.0f);
                float cp = ci[j];
                if (peep) { a[0] += peep[j] * cp; a[1] += peep[H + j] * cp; }
                float ig = rf_act_apply(&A[0], rf_clipf(a[0], clip));
                float fg = e->input_forget ? 1.0f - ig : rf_act_apply(&A[0], rf_clipf(a[1], clip));
                float gg = rf_act_apply(&A[1], rf_clipf(a[2], clip));
                float cn = fg * cp + ig * gg;
                ci[j] = cn;
                if (peep) a[3] += peep[2 * H + j] * cn;
                float og = rf_act_apply(&A[0], rf_clipf(a[3], clip));
                mi[j] = og * rf_act_apply(&A[2], cn);
            }
            if (o && !d->proj_size) memcpy(o, hi, (size_t)H * sizeof(float));
        } else if (d->cell == RF_CELL_GRU) {
            float *hz = (float *)hr;
            for (int j = 0; j < H; j++) {
                if (phase == 2) { /* reset_before, second half */
                    float an = gx[2 * H + j] + hr[2 * H + j] + (bias ? bias[2 * H + j] : 0.0f);
                    float n = rf_act_apply(&A[1], rf_clipf(an, clip)), z = hr[H + j];
                    hi[j] = (1.0f - z) * n + z * hi[j];
                    continue;
                }
                float ar = gx[j] + hr[j], az = gx[H + j] + hr[H + j];
                if (bias) { ar += bias[j]; az += bias[H + j]; }
                float r = rf_act_apply(&A[0], rf_clipf(ar, clip)), z = rf_act_apply(&A[0], rf_clipf(az, clip));
                if (d->reset_after) {
                    float hn = hr[2 * H + j] + (b_hn ? b_hn[j] : 0.0f);
                    float an = gx[2 * H + j] + (bias ? bias[2 * H + j] : 0.0f) + r * hn;
                    float n = rf_act_apply(&A[1], rf_clipf(an, clip));
                    hi[j] = (1.0f - z) * n + z * hi[j];
                } else {
                    m[(size_t)i * H + j] = r * hi[j];
                    hz[H + j] = z;
                }
            }
            if (o && (d->reset_after || phase == 2)) memcpy(o, hi, (size_t)H * sizeof(float));
        } else {
            for (int j = 0; j < H; j++) {
                float a = gx[j] + hr[j] + (bias ? bias[j] : 0.0f);
                hi[j] = rf_act_apply(&A[0], rf_clipf(a, clip));
            }
            if (o) memcpy(o, hi, (size_t)H * sizeof(float));
        }
    }
}

/* The pointwise pass over the active rows [0, nact) of step s. */
static void run_pointwise(const rf_step_ctx *k, int s, int nact, const float *hh, float *h, float *c, float *m,
                          int phase) {
    if (k->d->ext)
        pointwise_rows_ext(k, s, 0, nact, hh, h, c, m, phase);
    else if (phase == 2)
        gru_rb_phase2(k, s, 0, nact, hh, h);
    else
        pointwise_rows(k, s, 0, nact, hh, h, c, m);
}

/* ---------------------------------------------------------------------------------------------- */

/* perm: rows by decreasing length, ties by increasing batch index (a total order: deterministic).
 * Shell sort in place: O(B^1.3), no workspace, independent of T. */
static void sort_by_length(int B, int T, const int32_t *lengths, int32_t *perm, int32_t *len) {
    for (int i = 0; i < B; i++) perm[i] = i;
    if (!lengths) {
        for (int i = 0; i < B; i++) len[i] = T;
        return;
    }
#define RF_BEFORE(a, b) (lengths[a] > lengths[b] || (lengths[a] == lengths[b] && (a) < (b)))
    for (int gap = B / 2; gap > 0; gap = gap == 2 ? 1 : gap * 5 / 11) {
        for (int i = gap; i < B; i++) {
            const int32_t p = perm[i];
            int j = i;
            for (; j >= gap && RF_BEFORE(p, perm[j - gap]); j -= gap) perm[j] = perm[j - gap];
            perm[j] = p;
        }
    }
#undef RF_BEFORE
    for (int i = 0; i < B; i++) len[i] = lengths[perm[i]];
}

/* The fast path over all layers (rf_rnn_fast.c does one layer). base: aligned workspace. */
static rf_status forward_fast(const rf_rnn_desc *d, const rf_rnn_weights *w, const rf_rnn_io *io, char *base,
                              int nt) {
    const int T = io->T, B = io->B, L = d->num_layers, D = d->num_dirs, H = d->hidden_size;
    const size_t u_ts = io->batch_first ? 1 : (size_t)B, u_bs = io->batch_first ? (size_t)T : 1;
    rf_carver cf = {base, 0, 1};
    rf_fws F;
    if (!carve_fws(d, T, B, &cf, &F)) return RF_ERR_INTERNAL;
    sort_by_length(B, T, io->lengths, F.perm, F.len);
    const float *layer_in = io->x;
    int in_size = d->input_size;
    size_t in_ts = u_ts, in_bs = u_bs;
    for (int l = 0; l < L; l++) {
        const int last = l == L - 1;
        float *layer_out = last ? io->out : F.lay[l & 1];
        const size_t out_ts = last ? u_ts : (size_t)B, out_bs = last ? u_bs : 1;
        if (!last && io->lengths) memset(layer_out, 0, (size_t)T * B * (size_t)(D * H) * sizeof(float));
        rf_fast_layer fl = {&w[l * D], layer_in, in_size, in_ts, in_bs, layer_out, out_ts, out_bs,
                            (size_t)(D * H), F.perm, F.len, B, T, rf_rnn_fast_chunk(d, T, B),
                            {F.gx[0], F.gx[D - 1]}, {F.h[0], F.h[D - 1]}, {F.c[0], F.c[D - 1]},
                            {F.m[0], F.m[D - 1]}};
        for (int dir = 0; dir < D; dir++)
            for (int i = 0; i < B; i++) {
                const size_t k = (size_t)(l * D + dir), b = (size_t)F.perm[i];
                float *hi = fl.h[dir] + (size_t)i * H, *ci = fl.c[dir] + (size_t)i * H;
                if (io->h0) memcpy(hi, io->h0 + (k * B + b) * H, (size_t)H * sizeof(float));
                else memset(hi, 0, (size_t)H * sizeof(float));
                if (d->cell == RF_CELL_LSTM) {
                    if (io->c0) memcpy(ci, io->c0 + (k * B + b) * H, (size_t)H * sizeof(float));
                    else memset(ci, 0, (size_t)H * sizeof(float));
                }
            }
        rf_rnn_fast_layer(d, &fl, nt);
        for (int dir = 0; dir < D; dir++)
            for (int i = 0; i < B; i++) {
                const size_t k = (size_t)(l * D + dir), b = (size_t)F.perm[i];
                const float *hf = fl.h[dir] + ((size_t)(F.len[i] & 1) * B + i) * H;
                if (io->h_n) memcpy(io->h_n + (k * B + b) * H, hf, (size_t)H * sizeof(float));
                if (io->c_n && d->cell == RF_CELL_LSTM)
                    memcpy(io->c_n + (k * B + b) * H, fl.c[dir] + (size_t)i * H, (size_t)H * sizeof(float));
            }
        layer_in = layer_out;
        in_size = D * H;
        in_ts = out_ts;
        in_bs = out_bs;
    }
    return RF_OK;
}

rf_status rf_rnn_forward(const rf_rnn_desc *d, const rf_rnn_weights *w, const rf_rnn_io *io, void *ws,
                         size_t ws_size, int n_threads, char *err) {
    rf_status st = rf_rnn_check_desc(d, err);
    if (st != RF_OK) return st;
    if (!w || !io) return rf_fail(err, RF_ERR_INVALID_ARG, "weights or io is NULL");
    const int T = io->T, B = io->B, L = d->num_layers, D = d->num_dirs;
    if (T < 0 || B < 0) return rf_fail(err, RF_ERR_INVALID_ARG, "T, B: expected >= 0, got %d, %d", T, B);
    if (T > 0 && B > 0 && !io->x) return rf_fail(err, RF_ERR_INVALID_ARG, "x is NULL");
    if (io->lengths)
        for (int b = 0; b < B; b++)
            if (io->lengths[b] < 0 || io->lengths[b] > T)
                return rf_fail(err, RF_ERR_INVALID_ARG, "lengths[%d]: expected in [0, %d], got %d", b, T,
                               (int)io->lengths[b]);
    for (int k = 0; k < L * D; k++) {
        if (!w[k].w_ih || !w[k].w_hh)
            return rf_fail(err, RF_ERR_INVALID_ARG, "weights of layer %d direction %d are NULL", k / D, k % D);
        if (d->proj_size && !w[k].w_hr)
            return rf_fail(err, RF_ERR_INVALID_ARG, "w_hr of layer %d direction %d is NULL", k / D, k % D);
    }
    const int fast = rf_rnn_fast_eligible(d, w);
    size_t need = rf_rnn_workspace_size_w(d, w, T, B);
    if (need == 0) return rf_fail(err, RF_ERR_INVALID_ARG, "workspace size overflows for T=%d, B=%d", T, B);
    if (!ws || ws_size < need)
        return rf_fail(err, RF_ERR_INVALID_ARG, "workspace: expected >= %zu bytes, got %zu", need, ws_size);

    const int H = d->hidden_size, P = d->proj_size ? d->proj_size : H, G = rf_gates(d->cell), GH = G * H;
    char *base = (char *)(((uintptr_t)ws + RF_ALIGN - 1) / RF_ALIGN * RF_ALIGN);
#ifdef _OPENMP
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    const int nt = 1;
    (void)n_threads;
#endif
    const size_t u_ts = io->batch_first ? 1 : (size_t)B, u_bs = io->batch_first ? (size_t)T : 1;
    if (io->out && io->lengths) /* zero the padded positions of the final output once */
        for (int b = 0; b < B; b++)
            for (int t = io->lengths[b]; t < T; t++)
                memset(io->out + ((size_t)t * u_ts + (size_t)b * u_bs) * (size_t)(D * P), 0,
                       (size_t)(D * P) * sizeof(float));
    if (fast) return forward_fast(d, w, io, base, nt);

    rf_carver cv = {base, 0, 1};
    rf_ws W;
    if (!carve_ws(d, T, B, &cv, &W)) return rf_fail(err, RF_ERR_INTERNAL, "workspace carving failed");
    sort_by_length(B, T, io->lengths, W.perm, W.len);
    const int maxlen = B > 0 ? W.len[0] : 0;
    const size_t TB = (size_t)T * B;
    const float *layer_in = io->x;
    int in_size = d->input_size;
    size_t in_ts = u_ts, in_bs = u_bs;
    for (int l = 0; l < L; l++) {
        const int last = l == L - 1;
        float *layer_out = last ? io->out : W.lay[l & 1];
        const size_t out_ts = last ? u_ts : (size_t)B, out_bs = last ? u_bs : 1;
        if (!last && io->lengths) /* intermediate padded positions must not hold stale values */
            memset(layer_out, 0, TB * (size_t)(D * P) * sizeof(float));
        for (int dir = 0; dir < D; dir++) {
            const int k = l * D + dir;
            const rf_rnn_weights *wk = &w[k];
            /* 1. input projection for all rows at once: gx (T*B rows in x's own row order); chunked in
             * the time loop when that would not fit in RF_GEN_GX_FLOATS */
            const int Tc = gen_chunk(d, T, B), chunked = Tc < T;
            if (TB > 0 && !chunked)
                rf_sgemm(0, 1, (int)TB, GH, in_size, 1.0f, layer_in, in_size, wk->w_ih, in_size, 0.0f, W.gx, GH);
            /* 2. initial state, in perm order */
            for (int i = 0; i < B; i++) {
                size_t b = (size_t)W.perm[i];
                float *hi = W.h + (size_t)i * P;
                if (io->h0) memcpy(hi, io->h0 + ((size_t)k * B + b) * P, (size_t)P * sizeof(float));
                else memset(hi, 0, (size_t)P * sizeof(float));
                if (d->cell == RF_CELL_LSTM) {
                    float *ci = W.c + (size_t)i * H;
                    if (io->c0) memcpy(ci, io->c0 + ((size_t)k * B + b) * H, (size_t)H * sizeof(float));
                    else memset(ci, 0, (size_t)H * sizeof(float));
                }
            }
            rf_step_ctx ctx = {d, wk, dir, W.gx, chunked ? (size_t)B : in_ts, chunked ? 1 : in_bs,
                               layer_out ? layer_out + (size_t)dir * P : NULL, out_ts, out_bs,
                               (size_t)(D * P), W.perm, W.len, T, dir == 1, chunked, 0, 0};
            /* 3. time loop */
            {
                int nact = B;
                for (int s = 0; s < maxlen; s++) {
                    while (nact > 0 && W.len[nact - 1] <= s) nact--;
                    if (chunked && s == ctx.s1) {
                        ctx.s0 = s;
                        ctx.s1 = s + Tc < maxlen ? s + Tc : maxlen;
                        project_chunk(&ctx, layer_in, in_size, in_ts, in_bs, wk->w_ih, io->lengths, B, maxlen, W.gx);
                    }
                    if (d->cell == RF_CELL_GRU && !d->reset_after) {
                        rf_sgemm(0, 1, nact, 2 * H, P, 1.0f, W.h, P, wk->w_hh, P, 0.0f, W.hh, GH);
                        run_pointwise(&ctx, s, nact, W.hh, W.h, W.c, W.m, 1);
                        rf_sgemm(0, 1, nact, H, H, 1.0f, W.m, H, wk->w_hh + (size_t)2 * H * H, H, 0.0f,
                                 W.hh + 2 * H, GH);
                        run_pointwise(&ctx, s, nact, W.hh, W.h, W.c, W.m, 2);
                    } else {
                        rf_sgemm(0, 1, nact, GH, P, 1.0f, W.h, P, wk->w_hh, P, 0.0f, W.hh, GH);
                        run_pointwise(&ctx, s, nact, W.hh, W.h, W.c, W.m, 1);
                        if (d->proj_size) {
                            rf_sgemm(0, 1, nact, P, H, 1.0f, W.m, H, wk->w_hr, H, 0.0f, W.h, P);
                            if (ctx.out)
                                for (int i = 0; i < nact; i++)
                                    memcpy(out_row(&ctx, s, i), W.h + (size_t)i * P, (size_t)P * sizeof(float));
                        }
                    }
                }
            }
            /* 4. final states, back to the user's batch order */
            for (int i = 0; i < B; i++) {
                size_t b = (size_t)W.perm[i];
                if (io->h_n) memcpy(io->h_n + ((size_t)k * B + b) * P, W.h + (size_t)i * P, (size_t)P * sizeof(float));
                if (io->c_n && d->cell == RF_CELL_LSTM)
                    memcpy(io->c_n + ((size_t)k * B + b) * H, W.c + (size_t)i * H, (size_t)H * sizeof(float));
            }
        }
        layer_in = layer_out;
        in_size = D * P;
        in_ts = out_ts;
        in_bs = out_bs;
    }
    return RF_OK;
}
