/* rf_attention_train.c -- forward with a cache and backward of the single-head attention forms
 * (additive/Bahdanau, dot, scaled dot, general/Luong). Equations, shapes and the cache layout:
 * see rf_attention_train.h.
 *
 * Shape glossary: B=batch Tq=query steps S=source length Dq=query Dk=key Dv=value A=additive size
 *                 R=B*Tq query rows
 *
 * Structure: the projections (W_q q, W_k k, W k and their gradients) are single rf_sgemm calls over
 * all rows, outside any parallel region; the per-(b, t, s) work (scores, masked softmax, context and
 * their gradients) runs in OpenMP over the batch rows b, each thread writing only rows of its own b.
 * The one cross-batch sum (dv of the additive form) is a rf_sgemm over the cached tanh values.
 * tanh is a vectorisable polynomial (as in rf_train.c; libm's tanhf dominated the additive form) and the
 * dot products keep 16 partial sums so that they vectorise without reassociation flags.
 * There is no separate naive twin of this kernel: tests/test_attention_grad.py checks it against the
 * float64 NumPy reference (finite differences) and torch autograd.
 */
#include "rf_attention_train.h"

#include <limits.h>
#include <math.h>
#include <string.h>

#include "rf_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int rfat_threads(int n_threads) {
#ifdef _OPENMP
    return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    (void)n_threads;
    return 1;
#endif
}

static inline int rfat_allowed(const rf_attn_train_args *a, int b, int s) {
    if (a->lengths && s >= a->lengths[b]) return 0;
    if (a->mask && !a->mask[(size_t)b * a->S + s]) return 0;
    return 1;
}

/* x . y with 16 independent partial sums (vectorises without reassociation flags) */
static inline float rfat_dot(const float *restrict x, const float *restrict y, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += x[i + l] * y[i + l];
    float tot = 0.0f;
    for (; i < n; i++) tot += x[i] * y[i];
    for (int l = 0; l < 16; l++) tot += acc[l];
    return tot;
}

static inline void rfat_axpy(float alpha, const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

#include "rf_act_scalar.h" /* vectorisable tanh: libm's tanhf does not vectorise and dominated the additive form */

/* u = tanh(qp + kp) (A), returns v . u */
RF_TCLONES static float rfat_additive_score(const float *restrict qp, const float *restrict kp,
                                             const float *restrict v, float *restrict u, int A) {
    for (int j = 0; j < A; j++) u[j] = rf_tanh_s(qp[j] + kp[j]);
    return rfat_dot(v, u, A);
}

/* g = d v (1 - u^2);  dqp += g;  dkp += g */
RF_TCLONES static void rfat_additive_grad(float d, const float *restrict v, const float *restrict u,
                                           float *restrict dqp, float *restrict dkp, int A) {
    for (int j = 0; j < A; j++) {
        const float gj = d * v[j] * (1.0f - u[j] * u[j]);
        dqp[j] += gj;
        dkp[j] += gj;
    }
}

/* out (C) = column sums of x (N, C) */
static void rfat_colsum(int N, int C, const float *x, float *out) {
    for (int j = 0; j < C; j++) out[j] = 0.0f;
    for (int r = 0; r < N; r++) rfat_axpy(1.0f, x + (size_t)r * C, out, C);
}

/* ---- layouts ---------------------------------------------------------------------------------- */
typedef struct {
    float *w;  /* (R, S) attention weights */
    float *qp; /* additive (R, A) */
    float *kp; /* additive (B*S, A), general (B*S, Dq): computed here (NULL when args.kp is given) */
    const float *kpv; /* the key projection in use: kp or args.kp */
    float *u;  /* additive (R*S, A) tanh(qp + kp) (zero at masked positions) */
} rfat_cache;

typedef struct {
    float *de;  /* (R, S) */
    float *dqp; /* additive (R, A) */
    float *dkp; /* additive (B*S, A), general (B*S, Dq) */
} rfat_ws;

static size_t rfat_carve_cache(const rf_attn_train_args *a, char *base, rfat_cache *c) {
    rf_carver cv = {base, 0, 1};
    const size_t R = (size_t)a->B * a->Tq, BS = (size_t)a->B * a->S;
    c->w = rf_carve(&cv, rf_mul3(R, a->S, 1) + 1);
    c->qp = c->kp = c->u = NULL;
    if (a->form == RF_ATTN_TRAIN_ADDITIVE) {
        c->qp = rf_carve(&cv, R * a->A + 1);
        if (!a->kp) c->kp = rf_carve(&cv, BS * a->A + 1);
        size_t n = rf_mul3(R, a->S, a->A);
        if (R && a->S && !n) cv.ok = 0;
        c->u = rf_carve(&cv, n + 1);
    } else if (a->form == RF_ATTN_TRAIN_GENERAL && !a->kp) {
        c->kp = rf_carve(&cv, BS * a->Dq + 1);
    }
    c->kpv = a->kp ? a->kp : c->kp;
    return cv.ok ? cv.used : 0;
}

static size_t rfat_carve_ws(const rf_attn_train_args *a, char *base, rfat_ws *w) {
    rf_carver cv = {base, 0, 1};
    const size_t R = (size_t)a->B * a->Tq, BS = (size_t)a->B * a->S;
    w->de = rf_carve(&cv, R * a->S + 1);
    w->dqp = w->dkp = NULL;
    if (a->form == RF_ATTN_TRAIN_ADDITIVE) {
        w->dqp = rf_carve(&cv, R * a->A + 1);
        w->dkp = rf_carve(&cv, BS * a->A + 1);
    } else if (a->form == RF_ATTN_TRAIN_GENERAL) {
        w->dkp = rf_carve(&cv, BS * a->Dq + 1);
    }
    return cv.ok ? cv.used : 0;
}

/* ---- checks ----------------------------------------------------------------------------------- */
rf_status rf_attn_train_check(const rf_attn_train_args *a, char *err) {
    if (!a) return rf_fail(err, RF_ERR_INVALID_ARG, "args: expected a pointer, got NULL");
    if (a->form != RF_ATTN_TRAIN_ADDITIVE && a->form != RF_ATTN_TRAIN_DOT && a->form != RF_ATTN_TRAIN_GENERAL)
        return rf_fail(err, RF_ERR_INVALID_ARG, "form: expected 0 (additive), 1 (dot) or 2 (general), got %d", a->form);
    if (a->B < 0 || a->Tq < 0 || a->S < 0 || a->Dq < 0 || a->Dk < 0 || a->Dv < 0)
        return rf_fail(err, RF_ERR_INVALID_ARG, "sizes: expected B, Tq, S, Dq, Dk, Dv >= 0, got (%d, %d, %d, %d, %d, %d)",
                       a->B, a->Tq, a->S, a->Dq, a->Dk, a->Dv);
    if (a->form == RF_ATTN_TRAIN_ADDITIVE && a->A < 1)
        return rf_fail(err, RF_ERR_INVALID_ARG, "A: expected an additive attention size >= 1, got %d", a->A);
    if (a->form == RF_ATTN_TRAIN_DOT && a->Dq != a->Dk)
        return rf_fail(err, RF_ERR_INVALID_ARG, "query: expected size Dq == Dk = %d for dot attention, got %d", a->Dk,
                       a->Dq);
    /* every row count handed to rf_sgemm as int */
    const int64_t R = (int64_t)a->B * a->Tq, BS = (int64_t)a->B * a->S, RS = R * a->S;
    if (R > INT_MAX || BS > INT_MAX || RS > INT_MAX)
        return rf_fail(err, RF_ERR_INVALID_ARG, "sizes: expected B*Tq*S < 2^31, got B=%d Tq=%d S=%d", a->B, a->Tq, a->S);
    if (a->kp && a->form == RF_ATTN_TRAIN_DOT)
        return rf_fail(err, RF_ERR_INVALID_ARG, "kp: expected NULL for dot attention (pass the keys), got a pointer");
    if ((R && a->Dq && !a->query) || (BS && a->Dk && !a->keys && !a->kp) || (BS && a->Dv && !a->values))
        return rf_fail(err, RF_ERR_INVALID_ARG, "query/keys/values: expected data, got NULL");
    if (a->form == RF_ATTN_TRAIN_ADDITIVE && (!a->v || (a->Dq && !a->w_q) || (a->Dk && !a->w_k && !a->kp)))
        return rf_fail(err, RF_ERR_INVALID_ARG, "additive: expected w_q (%d, %d), w_k (%d, %d) and v (%d), got NULL",
                       a->A, a->Dq, a->A, a->Dk, a->A);
    if (a->form == RF_ATTN_TRAIN_GENERAL && a->Dq && a->Dk && !a->w_k && !a->kp)
        return rf_fail(err, RF_ERR_INVALID_ARG, "general: expected weight (%d, %d), got NULL", a->Dq, a->Dk);
    if (a->lengths)
        for (int b = 0; b < a->B; b++)
            if (a->lengths[b] < 0 || a->lengths[b] > a->S)
                return rf_fail(err, RF_ERR_INVALID_ARG, "lengths[%d]: expected in [0, %d], got %d", b, a->S,
                               (int)a->lengths[b]);
    return RF_OK;
}

size_t rf_attn_train_cache_size(const rf_attn_train_args *a) {
    rfat_cache c;
    return (a && rf_attn_train_check(a, NULL) == RF_OK) ? rfat_carve_cache(a, NULL, &c) : 0;
}

size_t rf_attn_train_workspace_size(const rf_attn_train_args *a) {
    rfat_ws w;
    return (a && rf_attn_train_check(a, NULL) == RF_OK) ? rfat_carve_ws(a, NULL, &w) : 0;
}

static rf_status rfat_check_buffer(const void *buf, size_t size, size_t need, const char *name, char *err) {
    if (need == 0) return rf_fail(err, RF_ERR_INVALID_ARG, "%s: size overflows", name);
    if (!buf || size < need || ((uintptr_t)buf % RF_ALIGN))
        return rf_fail(err, RF_ERR_INVALID_ARG, "%s: expected a %d-byte aligned buffer of %zu bytes, got %zu bytes at %p",
                       name, RF_ALIGN, need, size, buf);
    return RF_OK;
}

/* ---- forward ---------------------------------------------------------------------------------- */
/* Scores, masked softmax and context of the Tq rows of batch b. */
static void rfat_forward_b(const rf_attn_train_args *a, const rfat_cache *c, int b, float *context) {
    const int Tq = a->Tq, S = a->S, A = a->A, Dq = a->Dq, Dk = a->Dk, Dv = a->Dv;
    for (int t = 0; t < Tq; t++) {
        const size_t row = (size_t)b * Tq + t;
        float *e = c->w + row * S;
        const float *q = a->query + row * Dq;
        float m = -INFINITY;
        int any = 0;
        for (int s = 0; s < S; s++) {
            if (!rfat_allowed(a, b, s)) {
                e[s] = 0.0f;
                if (a->form == RF_ATTN_TRAIN_ADDITIVE) memset(c->u + (row * S + s) * A, 0, sizeof(float) * A);
                continue;
            }
            float sc;
            if (a->form == RF_ATTN_TRAIN_ADDITIVE) {
                sc = rfat_additive_score(c->qp + row * A, c->kpv + ((size_t)b * S + s) * A, a->v,
                                         c->u + (row * S + s) * A, A);
            } else if (a->form == RF_ATTN_TRAIN_DOT) {
                sc = a->scale * rfat_dot(q, a->keys + ((size_t)b * S + s) * Dk, Dq);
            } else {
                sc = rfat_dot(q, c->kpv + ((size_t)b * S + s) * Dq, Dq);
            }
            e[s] = sc;
            if (!any || sc > m || sc != sc) m = sc; /* a NaN score makes m NaN and stays (NaN propagates) */
            any = 1;
        }
        float *ctx = context ? context + row * Dv : NULL;
        if (ctx) memset(ctx, 0, sizeof(float) * Dv);
        if (!any || m == -INFINITY) { /* no allowed key (or all scores -inf): weights and context zero */
            memset(e, 0, sizeof(float) * S);
            continue;
        }
        double sum = 0.0;
        for (int s = 0; s < S; s++)
            if (rfat_allowed(a, b, s)) {
                e[s] = expf(e[s] - m);
                sum += e[s];
            }
        const float inv = (float)(1.0 / sum);
        for (int s = 0; s < S; s++)
            if (rfat_allowed(a, b, s)) {
                e[s] *= inv;
                if (ctx) rfat_axpy(e[s], a->values + ((size_t)b * S + s) * Dv, ctx, Dv);
            }
    }
}

rf_status rf_attn_train_forward(const rf_attn_train_args *a, float *context, float *weights, void *cache,
                                size_t cache_size, int n_threads, char *err) {
    rf_status st = rf_attn_train_check(a, err);
    if (st != RF_OK) return st;
    rfat_cache c;
    const size_t need = rfat_carve_cache(a, NULL, &c);
    if ((st = rfat_check_buffer(cache, cache_size, need, "cache", err)) != RF_OK) return st;
    rfat_carve_cache(a, (char *)cache, &c);
    const int B = a->B, S = a->S, A = a->A, R = a->B * a->Tq;
    if (a->form == RF_ATTN_TRAIN_ADDITIVE) {
        rf_sgemm(0, 1, R, A, a->Dq, 1.0f, a->query, a->Dq, a->w_q, a->Dq, 0.0f, c.qp, A);
        if (a->bias)
            for (int r = 0; r < R; r++) rfat_axpy(1.0f, a->bias, c.qp + (size_t)r * A, A);
        if (!a->kp) rf_sgemm(0, 1, B * S, A, a->Dk, 1.0f, a->keys, a->Dk, a->w_k, a->Dk, 0.0f, c.kp, A);
    } else if (a->form == RF_ATTN_TRAIN_GENERAL && !a->kp) {
        rf_sgemm(0, 1, B * S, a->Dq, a->Dk, 1.0f, a->keys, a->Dk, a->w_k, a->Dk, 0.0f, c.kp, a->Dq);
        if (a->bias)
            for (int r = 0; r < B * S; r++) rfat_axpy(1.0f, a->bias, c.kp + (size_t)r * a->Dq, a->Dq);
    }
    const int nt = rfat_threads(n_threads);
    const double work = (double)R * S * (a->form == RF_ATTN_TRAIN_ADDITIVE ? 8.0 * A : (double)a->Dq + a->Dv);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && B > 1 && work > 65536.0)
    for (int b = 0; b < B; b++) rfat_forward_b(a, &c, b, context);
    if (weights && R && S) memcpy(weights, c.w, sizeof(float) * (size_t)R * S);
    return RF_OK;
}

/* ---- backward --------------------------------------------------------------------------------- */
static void rfat_backward_b(const rf_attn_train_args *a, const rfat_cache *c, const rfat_ws *w, int b,
                            const float *dc, const float *dwts, const rf_attn_train_grads *g) {
    const int Tq = a->Tq, S = a->S, A = a->A, Dq = a->Dq, Dk = a->Dk, Dv = a->Dv;
    const size_t bS = (size_t)b * S;
    /* d_values[b, s] = sum_t a[b,t,s] dc[b,t] */
    if (g->d_values) {
        for (int s = 0; s < S; s++) {
            float *dv = g->d_values + (bS + s) * Dv;
            memset(dv, 0, sizeof(float) * Dv);
            if (!dc || !rfat_allowed(a, b, s)) continue;
            for (int t = 0; t < Tq; t++) {
                const size_t row = (size_t)b * Tq + t;
                rfat_axpy(c->w[row * S + s], dc + row * Dv, dv, Dv);
            }
        }
    }
    /* de = a (da - sum a da), da = dc . values + dw */
    for (int t = 0; t < Tq; t++) {
        const size_t row = (size_t)b * Tq + t;
        const float *p = c->w + row * S;
        float *de = w->de + row * S;
        double dot = 0.0;
        for (int s = 0; s < S; s++) {
            float da = 0.0f;
            if (rfat_allowed(a, b, s)) {
                if (dc) da = rfat_dot(dc + row * Dv, a->values + (bS + s) * Dv, Dv);
                if (dwts) da += dwts[row * S + s];
                dot += (double)p[s] * da;
            }
            de[s] = da;
        }
        for (int s = 0; s < S; s++) de[s] = rfat_allowed(a, b, s) ? p[s] * (de[s] - (float)dot) : 0.0f;
    }
    if (a->form == RF_ATTN_TRAIN_DOT) {
        if (g->d_query)
            for (int t = 0; t < Tq; t++) {
                const size_t row = (size_t)b * Tq + t;
                float *dq = g->d_query + row * Dq;
                memset(dq, 0, sizeof(float) * Dq);
                for (int s = 0; s < S; s++)
                    if (rfat_allowed(a, b, s)) rfat_axpy(a->scale * w->de[row * S + s], a->keys + (bS + s) * Dk, dq, Dq);
            }
        if (g->d_keys)
            for (int s = 0; s < S; s++) {
                float *dk = g->d_keys + (bS + s) * Dk;
                memset(dk, 0, sizeof(float) * Dk);
                if (!rfat_allowed(a, b, s)) continue;
                for (int t = 0; t < Tq; t++) {
                    const size_t row = (size_t)b * Tq + t;
                    rfat_axpy(a->scale * w->de[row * S + s], a->query + row * Dq, dk, Dk);
                }
            }
    } else if (a->form == RF_ATTN_TRAIN_GENERAL) {
        if (g->d_query)
            for (int t = 0; t < Tq; t++) {
                const size_t row = (size_t)b * Tq + t;
                float *dq = g->d_query + row * Dq;
                memset(dq, 0, sizeof(float) * Dq);
                for (int s = 0; s < S; s++)
                    if (rfat_allowed(a, b, s)) rfat_axpy(w->de[row * S + s], c->kpv + (bS + s) * Dq, dq, Dq);
            }
        for (int s = 0; s < S; s++) {
            float *dkp = w->dkp + (bS + s) * Dq;
            memset(dkp, 0, sizeof(float) * Dq);
            if (!rfat_allowed(a, b, s)) continue;
            for (int t = 0; t < Tq; t++) {
                const size_t row = (size_t)b * Tq + t;
                rfat_axpy(w->de[row * S + s], a->query + row * Dq, dkp, Dq);
            }
        }
    } else { /* additive */
        memset(w->dkp + bS * A, 0, sizeof(float) * (size_t)S * A);
        for (int t = 0; t < Tq; t++) {
            const size_t row = (size_t)b * Tq + t;
            float *dqp = w->dqp + row * A;
            memset(dqp, 0, sizeof(float) * A);
            for (int s = 0; s < S; s++) {
                const float d = w->de[row * S + s];
                if (!rfat_allowed(a, b, s)) continue;
                rfat_additive_grad(d, a->v, c->u + (row * S + s) * A, dqp, w->dkp + (bS + s) * A, A);
            }
        }
    }
}

rf_status rf_attn_train_backward(const rf_attn_train_args *a, const void *cache, size_t cache_size,
                                 const float *d_context, const float *d_weights, const rf_attn_train_grads *g,
                                 void *ws, size_t ws_size, int n_threads, char *err) {
    rf_status st = rf_attn_train_check(a, err);
    if (st != RF_OK) return st;
    if (!g) return rf_fail(err, RF_ERR_INVALID_ARG, "grads: expected a pointer, got NULL");
    rfat_cache c;
    rfat_ws w;
    const size_t need_c = rfat_carve_cache(a, NULL, &c), need_w = rfat_carve_ws(a, NULL, &w);
    if ((st = rfat_check_buffer(cache, cache_size, need_c, "cache", err)) != RF_OK) return st;
    if ((st = rfat_check_buffer(ws, ws_size, need_w, "workspace", err)) != RF_OK) return st;
    rfat_carve_cache(a, (char *)cache, &c);
    rfat_carve_ws(a, (char *)ws, &w);
    const int B = a->B, S = a->S, A = a->A, Dq = a->Dq, Dk = a->Dk, R = a->B * a->Tq;
    const int nt = rfat_threads(n_threads);
    const double work = (double)R * S * (a->form == RF_ATTN_TRAIN_ADDITIVE ? 4.0 * A : 2.0 * Dq + 2.0 * a->Dv);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && B > 1 && work > 65536.0)
    for (int b = 0; b < B; b++) rfat_backward_b(a, &c, &w, b, d_context, d_weights, g);

    if (a->kp && g->d_kp) /* the caller projected the keys: hand back the gradient of its projection */
        memcpy(g->d_kp, w.dkp, sizeof(float) * (size_t)B * S * (a->form == RF_ATTN_TRAIN_ADDITIVE ? A : Dq));
    if (a->form == RF_ATTN_TRAIN_GENERAL && !a->kp) {
        /* kp = k W^T + bias:  dk = dkp W,  dW = dkp^T k,  dbias = sum_rows dkp */
        if (g->d_keys) rf_sgemm(0, 0, B * S, Dk, Dq, 1.0f, w.dkp, Dq, a->w_k, Dk, 0.0f, g->d_keys, Dk);
        if (g->w_k) rf_sgemm(1, 0, Dq, Dk, B * S, 1.0f, w.dkp, Dq, a->keys, Dk, 0.0f, g->w_k, Dk);
        if (g->bias) rfat_colsum(B * S, Dq, w.dkp, g->bias);
    } else if (a->form == RF_ATTN_TRAIN_ADDITIVE) {
        if (g->d_query) rf_sgemm(0, 0, R, Dq, A, 1.0f, w.dqp, A, a->w_q, Dq, 0.0f, g->d_query, Dq);
        if (g->w_q) rf_sgemm(1, 0, A, Dq, R, 1.0f, w.dqp, A, a->query, Dq, 0.0f, g->w_q, Dq);
        if (g->bias) rfat_colsum(R, A, w.dqp, g->bias);
        if (!a->kp && g->d_keys) rf_sgemm(0, 0, B * S, Dk, A, 1.0f, w.dkp, A, a->w_k, Dk, 0.0f, g->d_keys, Dk);
        if (!a->kp && g->w_k) rf_sgemm(1, 0, A, Dk, B * S, 1.0f, w.dkp, A, a->keys, Dk, 0.0f, g->w_k, Dk);
        /* dv (1, A) = de (1, R*S) . u (R*S, A) */
        if (g->v) rf_sgemm(0, 0, 1, A, R * S, 1.0f, w.de, R * S, c.u, A, 0.0f, g->v, A);
    }
    return RF_OK;
}
