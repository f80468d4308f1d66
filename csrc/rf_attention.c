/* rf_attention.c -- attention kernels: single-head (additive / dot) attention over a memory, strided
 * scaled dot-product attention (SDPA, grouped-query heads, masks, causal, softcap) and
 * torch.nn.MultiheadAttention's inference forward.
 *
 * Equations (see rf_attention.h for the full statement):
 *   additive   e[s] = v . tanh(qp + kp[s])          dot   e[s] = scale * q . kp[s]
 *   SDPA       e = scale * Q K^T; e = softcap * tanh(e / softcap); e += mask + key_padding; causal;
 *   softmax    a[s] = exp(e[s] - max) / sum exp(e - max) over unmasked s; all masked -> a = 0
 *              (exp and tanh: the core's 16-lane versions from rf_act.h, ~2 ulp, NaN-exact)
 *   context    c = sum_s a[s] V[s]
 *
 * Shape glossary: B=batch Tq=query steps S=source length L=query length D/Dk=key size Dv=value size
 *                 E=embed size H=heads Dh=head size A=additive size
 *
 * Parallelism: OpenMP over independent rows (single-head) or (batch, head, query block) tasks (SDPA);
 * the per-head GEMMs inside a task use the core's own small-GEMM kernel (never the threaded BLAS inside
 * a parallel region: nested pools oversubscribe the cores); the big projections call rf_sgemm outside
 * any parallel region. Everything is validated before the parallel region;
 * scratch memory comes from the caller's workspace (no malloc).
 */
#include "rf_attention.h"
#include "rf_act.h" /* the core's 16-lane exp / tanh (GCC vector extensions, NaN-exact) */
#include "rf_internal.h" /* rf_pk_* (the packed-weight product of rf_pack.c) */

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define RF_ATTN_ALIGN 64

/* Kernels with vector code: clones for AVX-512 / AVX2+FMA / baseline, chosen at load time. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RF_KERNEL_ATTRS                                                                                    \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define RF_KERNEL_ATTRS
#endif

static rf_status rf__attn_fail(char *err, rf_status st, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, RF_ERRLEN, fmt, ap);
        va_end(ap);
    }
    return st;
}

static int rf__attn_threads(int n_threads)
{
#ifdef _OPENMP
    return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    (void)n_threads;
    return 1;
#endif
}

static size_t rf__align_up(size_t n) { return (n + RF_ATTN_ALIGN - 1) / RF_ATTN_ALIGN * RF_ATTN_ALIGN; }

RF_KERNEL_ATTRS
static void rf__softmax_row(float *x, int n)
{
    float m = -INFINITY;
    int j = 0;
    {
        rf_v16 mv16 = RF_V(-INFINITY);
        rf_i16 nan16 = {0};
        for (; j + 16 <= n; j += 16) {
            const rf_v16 v = rf_vload(x + j);
            mv16 = rf_vsel(v > mv16, v, mv16);
            nan16 |= v != v;
        }
        for (int l = 0; l < 16; ++l) {
            if (nan16[l]) m = NAN; /* NaN wins and propagates */
            if (mv16[l] > m) m = mv16[l];
        }
        for (; j < n; ++j)
            if (x[j] > m || x[j] != x[j]) m = x[j];
        if (m != m) m = NAN;
    }
    if (m == -INFINITY) { /* empty or fully masked row: zeros, not NaN */
        for (int j = 0; j < n; ++j) x[j] = 0.0f;
        return;
    }
    const rf_v16 mv = RF_V(m);
    rf_v16 acc = RF_V(0.0f);
    j = 0;
    for (; j + 16 <= n; j += 16) {
        const rf_v16 e = rf_vexp(rf_vload(x + j) - mv); /* exp(-inf) = 0 exactly for masked entries */
        rf_vstore(x + j, e);
        acc += e;
    }
    float sum = 0.0f;
    for (int l = 0; l < 16; ++l) sum += acc[l];
    if (j < n) {
        const int rest = n - j;
        rf_v16 e = rf_vexp(rf_vload_n(x + j, rest) - mv);
        rf_vstore_n(x + j, e, rest);
        for (int l = 0; l < rest; ++l) sum += e[l];
    }
    const rf_v16 inv = RF_V(1.0f / sum);
    j = 0;
    for (; j + 16 <= n; j += 16) rf_vstore(x + j, rf_vload(x + j) * inv);
    for (; j < n; ++j) x[j] *= inv[0];
}

void rf_softmax_row(float *x, int n) { rf__softmax_row(x, n); }

/* v . tanh(q + k) over D (additive attention score) */
RF_KERNEL_ATTRS
static float rf__additive_score(const float *q, const float *k, const float *v, int D)
{
    rf_v16 acc = RF_V(0.0f);
    int d = 0;
    for (; d + 16 <= D; d += 16) acc += rf_vload(v + d) * rf_vtanh(rf_vload(q + d) + rf_vload(k + d));
    if (d < D) {
        const int rest = D - d;
        acc += rf_vload_n(v + d, rest) * rf_vtanh(rf_vload_n(q + d, rest) + rf_vload_n(k + d, rest));
    }
    float s = 0.0f;
    for (int l = 0; l < 16; ++l) s += acc[l];
    return s;
}

/* x = cap * tanh(x / cap) in place */
RF_KERNEL_ATTRS
static void rf__softcap_row(float *x, int n, float cap)
{
    const rf_v16 c = RF_V(cap), ic = RF_V(1.0f / cap);
    int j = 0;
    for (; j + 16 <= n; j += 16) rf_vstore(x + j, c * rf_vtanh(rf_vload(x + j) * ic));
    if (j < n) rf_vstore_n(x + j, c * rf_vtanh(rf_vload_n(x + j, n - j) * ic), n - j);
}

/* x = tanh(x) in place */
RF_KERNEL_ATTRS
static void rf__tanh_inplace(float *x, size_t n)
{
    size_t j = 0;
    for (; j + 16 <= n; j += 16) rf_vstore(x + j, rf_vtanh(rf_vload(x + j)));
    if (j < n) rf_vstore_n(x + j, rf_vtanh(rf_vload_n(x + j, (int)(n - j))), (int)(n - j));
}

/* ------------------------------------------------------------------------------------------------ */
/* Single-head attention over a memory                                                              */
/* ------------------------------------------------------------------------------------------------ */

static void rf__attn_row(const rf_attn_args *a, int b, int t)
{
    const int S = a->S, D = a->D, Dv = a->Dv;
    const float *q = a->q + ((size_t)b * a->Tq + t) * D;
    const float *kp = a->kp + (size_t)b * S * D;
    const float *val = a->values + (size_t)b * S * Dv;
    float *w = a->weights + ((size_t)b * a->Tq + t) * S;
    float *c = a->ctx + ((size_t)b * a->Tq + t) * Dv;
    const int len = a->lengths ? a->lengths[b] : S;
    const uint8_t *mk = a->mask ? a->mask + (size_t)b * S : NULL;

    for (int s = 0; s < S; ++s) {
        if (s >= len || (mk && !mk[s])) {
            w[s] = -INFINITY;
            continue;
        }
        const float *k = kp + (size_t)s * D;
        float acc = 0.0f;
        if (a->kind == RF_ATTN_ADDITIVE) {
            acc = rf__additive_score(q, k, a->v, D);
        } else {
#pragma omp simd reduction(+ : acc)
            for (int d = 0; d < D; ++d) acc += q[d] * k[d];
            acc *= a->scale;
        }
        w[s] = acc;
    }
    rf__softmax_row(w, S);
    for (int d = 0; d < Dv; ++d) c[d] = 0.0f;
    for (int s = 0; s < S; ++s) {
        if (s >= len || (mk && !mk[s])) continue; /* a masked value never reaches the context, even NaN */
        const float ws = w[s]; /* 0 after underflow still multiplies: 0 * NaN = NaN, as in torch */
        const float *vs = val + (size_t)s * Dv;
#pragma omp simd
        for (int d = 0; d < Dv; ++d) c[d] += ws * vs[d];
    }
}

rf_status rf_attn_forward(const rf_attn_args *a, int n_threads, char *err)
{
    if (!a) return rf__attn_fail(err, RF_ERR_INVALID_ARG, "args: expected a pointer, got NULL");
    if (a->kind != RF_ATTN_ADDITIVE && a->kind != RF_ATTN_DOT)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "kind: expected 0 (additive) or 1 (dot), got %d",
                             a->kind);
    if (a->B < 0 || a->Tq < 0 || a->S < 0 || a->D < 0 || a->Dv < 0)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                             "sizes: expected B, Tq, S, D, Dv >= 0, got (%d, %d, %d, %d, %d)", a->B, a->Tq,
                             a->S, a->D, a->Dv);
    const long long rows = (long long)a->B * a->Tq;
    if (rows == 0) return RF_OK;
    if (!a->q || !a->ctx || !a->weights || (a->S > 0 && (!a->kp || !a->values)) ||
        (a->kind == RF_ATTN_ADDITIVE && a->D > 0 && !a->v))
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "pointers: expected q, kp, values, ctx, weights%s",
                             a->kind == RF_ATTN_ADDITIVE ? " and v" : "");
    if (a->lengths) {
        for (int b = 0; b < a->B; ++b)
            if (a->lengths[b] < 0 || a->lengths[b] > a->S)
                return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                                     "lengths[%d]: expected a value in [0, %d], got %d", b, a->S,
                                     (int)a->lengths[b]);
    }
    const int nt = rf__attn_threads(n_threads);
    const long long work = rows * (long long)a->S * (a->D + a->Dv);
    if (nt > 1 && rows > 1 && work > (1LL << 20)) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (long long r = 0; r < rows; ++r) rf__attn_row(a, (int)(r / a->Tq), (int)(r % a->Tq));
    } else {
        for (long long r = 0; r < rows; ++r) rf__attn_row(a, (int)(r / a->Tq), (int)(r % a->Tq));
    }
    return RF_OK;
}


/* ------------------------------------------------------------------------------------------------ */
/* Small GEMM kernel for the per-head products (runs inside OpenMP tasks, where calling the threaded  */
/* BLAS would nest parallelism). C (m, n) = alpha * A (m, k) . B (k, n); B rows contiguous.          */
/* Register block 4 x 32 on GCC vector extensions; clones for AVX-512 / AVX2+FMA / baseline chosen   */
/* at load time (a wheel built on one x86-64 runs on another).                                       */
/* ------------------------------------------------------------------------------------------------ */

#define rf__ld16(p) rf_vload(p)
#define rf__st16(p, v) rf_vstore((p), (v))

RF_KERNEL_ATTRS
static void rf__gemm_nn(int m, int n, int k, float alpha, const float *A, int64_t lda, const float *B,
                        int64_t ldb, float *C, int64_t ldc)
{
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *a0 = A + (int64_t)i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = C + (int64_t)i * ldc;
        int j = 0;
        for (; j + 32 <= n; j += 32) {
            rf_v16 x00 = {0}, x01 = {0}, x10 = {0}, x11 = {0}, x20 = {0}, x21 = {0}, x30 = {0}, x31 = {0};
            for (int p = 0; p < k; ++p) {
                const float *b = B + (int64_t)p * ldb + j;
                const rf_v16 b0 = rf__ld16(b), b1 = rf__ld16(b + 16);
                const float s0 = a0[p], s1 = a1[p], s2 = a2[p], s3 = a3[p];
                x00 += s0 * b0; x01 += s0 * b1;
                x10 += s1 * b0; x11 += s1 * b1;
                x20 += s2 * b0; x21 += s2 * b1;
                x30 += s3 * b0; x31 += s3 * b1;
            }
            rf__st16(c0 + j, alpha * x00); rf__st16(c0 + j + 16, alpha * x01);
            rf__st16(c0 + ldc + j, alpha * x10); rf__st16(c0 + ldc + j + 16, alpha * x11);
            rf__st16(c0 + 2 * ldc + j, alpha * x20); rf__st16(c0 + 2 * ldc + j + 16, alpha * x21);
            rf__st16(c0 + 3 * ldc + j, alpha * x30); rf__st16(c0 + 3 * ldc + j + 16, alpha * x31);
        }
        for (; j + 16 <= n; j += 16) {
            rf_v16 x0 = {0}, x1 = {0}, x2 = {0}, x3 = {0};
            for (int p = 0; p < k; ++p) {
                const rf_v16 b0 = rf__ld16(B + (int64_t)p * ldb + j);
                x0 += a0[p] * b0; x1 += a1[p] * b0; x2 += a2[p] * b0; x3 += a3[p] * b0;
            }
            rf__st16(c0 + j, alpha * x0); rf__st16(c0 + ldc + j, alpha * x1);
            rf__st16(c0 + 2 * ldc + j, alpha * x2); rf__st16(c0 + 3 * ldc + j, alpha * x3);
        }
        for (; j < n; ++j) {
            float x0 = 0, x1 = 0, x2 = 0, x3 = 0;
            for (int p = 0; p < k; ++p) {
                const float b = B[(int64_t)p * ldb + j];
                x0 += a0[p] * b; x1 += a1[p] * b; x2 += a2[p] * b; x3 += a3[p] * b;
            }
            c0[j] = alpha * x0; c0[ldc + j] = alpha * x1; c0[2 * ldc + j] = alpha * x2; c0[3 * ldc + j] = alpha * x3;
        }
    }
    for (; i < m; ++i) {
        const float *a0 = A + (int64_t)i * lda;
        float *c0 = C + (int64_t)i * ldc;
        int j = 0;
        for (; j + 16 <= n; j += 16) {
            rf_v16 x0 = {0}, x1 = {0};
            int p = 0;
            for (; p + 2 <= k; p += 2) {
                x0 += a0[p] * rf__ld16(B + (int64_t)p * ldb + j);
                x1 += a0[p + 1] * rf__ld16(B + (int64_t)(p + 1) * ldb + j);
            }
            for (; p < k; ++p) x0 += a0[p] * rf__ld16(B + (int64_t)p * ldb + j);
            rf__st16(c0 + j, alpha * (x0 + x1));
        }
        for (; j < n; ++j) {
            float x0 = 0;
            for (int p = 0; p < k; ++p) x0 += a0[p] * B[(int64_t)p * ldb + j];
            c0[j] = alpha * x0;
        }
    }
}


/* Y (B, N) [ldy] = X (B, K) . W^T + bias, W (N, K) row-major: the small-batch decoder products (output
 * layer, attention query projection, Luong combine). Weight-bandwidth bound: four weight rows stay in L1
 * while every row of X passes over them (BLAS would repack the whole weight at every call). OpenMP over
 * blocks of W's rows, in the same thread pool as the rest of the core. */
RF_KERNEL_ATTRS
static void rf__rows_dot(int B, int n0, int n1, int K, const float *X, const float *W, const float *bias, float *Y,
                         int ldy)
{
    int n = n0;
    for (; n + 4 <= n1; n += 4) {
        const float *w0 = W + (size_t)n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        for (int b = 0; b < B; ++b) {
            const float *x = X + (size_t)b * K;
            rf_v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            int k = 0;
            for (; k + 16 <= K; k += 16) {
                const rf_v16 xv = rf__ld16(x + k);
                a0 += rf__ld16(w0 + k) * xv;
                a1 += rf__ld16(w1 + k) * xv;
                a2 += rf__ld16(w2 + k) * xv;
                a3 += rf__ld16(w3 + k) * xv;
            }
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (int j = 0; j < 16; ++j) {
                s0 += a0[j];
                s1 += a1[j];
                s2 += a2[j];
                s3 += a3[j];
            }
            for (; k < K; ++k) {
                s0 += w0[k] * x[k];
                s1 += w1[k] * x[k];
                s2 += w2[k] * x[k];
                s3 += w3[k] * x[k];
            }
            float *y = Y + (size_t)b * ldy + n;
            y[0] = s0 + (bias ? bias[n] : 0.0f);
            y[1] = s1 + (bias ? bias[n + 1] : 0.0f);
            y[2] = s2 + (bias ? bias[n + 2] : 0.0f);
            y[3] = s3 + (bias ? bias[n + 3] : 0.0f);
        }
    }
    for (; n < n1; ++n) {
        const float *w = W + (size_t)n * K;
        for (int b = 0; b < B; ++b) {
            const float *x = X + (size_t)b * K;
            rf_v16 acc = {0};
            int k = 0;
            for (; k + 16 <= K; k += 16) acc += rf__ld16(w + k) * rf__ld16(x + k);
            float sum = 0.0f;
            for (int j = 0; j < 16; ++j) sum += acc[j];
            for (; k < K; ++k) sum += w[k] * x[k];
            Y[(size_t)b * ldy + n] = sum + (bias ? bias[n] : 0.0f);
        }
    }
}

#define RF_SMALL_BATCH 16

static void rf__linear_small(int B, int N, int K, const float *X, const float *W, const float *bias, float *Y,
                             int ldy, int nt)
{
    if (B <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int b = 0; b < B; ++b)
            for (int n = 0; n < N; ++n) Y[(size_t)b * ldy + n] = bias ? bias[n] : 0.0f;
        return;
    }
    if (B > RF_SMALL_BATCH) {
        if (bias)
            for (int b = 0; b < B; ++b) memcpy(Y + (size_t)b * ldy, bias, (size_t)N * sizeof(float));
        rf_sgemm(0, 1, B, N, K, 1.0f, X, K, W, K, bias ? 1.0f : 0.0f, Y, ldy);
        return;
    }
    const int blk = 64; /* a multiple of 4 */
    const int nblk = (N + blk - 1) / blk;
    if (nt > 1 && nblk > 1 && (long long)N * K * B > (1LL << 16)) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < nblk; ++i) {
            const int n1 = (i + 1) * blk < N ? (i + 1) * blk : N;
            rf__rows_dot(B, i * blk, n1, K, X, W, bias, Y, ldy);
        }
    } else {
        rf__rows_dot(B, 0, N, K, X, W, bias, Y, ldy);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Scaled dot-product attention on strided tensors                                                  */
/* ------------------------------------------------------------------------------------------------ */

/* Rows of L handled by one task: enough tasks for the threads, bounded scratch. */
static int rf__sdpa_block(const rf_sdpa_args *a, int nt)
{
    long long heads = (long long)a->B * a->Hq;
    if (heads < 1) heads = 1;
    long long want = (2LL * nt + heads - 1) / heads; /* blocks per head */
    if (want < 1) want = 1;
    long long lb = (a->L + want - 1) / want;
    if (lb > 256) lb = 256;
    if (lb < 1) lb = 1;
    return (int)lb;
}

size_t rf_sdpa_workspace_size(const rf_sdpa_args *a, int n_threads)
{
    if (!a || a->L <= 0 || a->S <= 0) return RF_ATTN_ALIGN;
    const int nt = rf__attn_threads(n_threads);
    const size_t lb = (size_t)rf__sdpa_block(a, nt);
    const size_t per = rf__align_up(lb * (size_t)a->S * sizeof(float)) +
                       rf__align_up((size_t)a->Dk * (size_t)a->S * sizeof(float));
    return (size_t)nt * per + RF_ATTN_ALIGN;
}

static int rf__fits_int(int64_t v) { return v >= 1 && v <= 2147483647LL; }

static void rf__sdpa_task(const rf_sdpa_args *a, long long task, int nblk, int lb, float *scratch)
{
    const int S = a->S, Dk = a->Dk, Dv = a->Dv, L = a->L;
    const int blk = (int)(task % nblk);
    const long long bh = task / nblk;
    const int h = (int)(bh % a->Hq), b = (int)(bh / a->Hq);
    const int g = h / (a->Hq / a->Hkv); /* grouped-query: interleaved repeat of KV heads */
    const int l0 = blk * lb;
    const int nl = (l0 + lb <= L) ? lb : L - l0;

    const float *Q = a->q + b * a->q_sb + h * a->q_sh + (int64_t)l0 * a->q_sl;
    const float *K = a->k + b * a->k_sb + g * a->k_sh;
    const float *V = a->v + b * a->v_sb + g * a->v_sh;
    float *Y = a->y + b * a->y_sb + h * a->y_sh + (int64_t)l0 * a->y_sl;
    const size_t wofs = (((size_t)b * a->Hq + h) * L + l0) * (size_t)S;
    float *kt = scratch + rf__align_up((size_t)lb * S * sizeof(float)) / sizeof(float); /* (Dk, S) */
    float *P = a->weights ? a->weights + wofs : scratch;

    /* e = scale * Q K^T  (nl, S): K^T packed so the kernel streams contiguous rows */
    if (Dk > 0) {
        for (int s = 0; s < S; ++s) {
            const float *ks = K + (int64_t)s * a->k_ss;
            for (int d = 0; d < Dk; ++d) kt[(size_t)d * S + s] = ks[d];
        }
        rf__gemm_nn(nl, S, Dk, a->scale, Q, a->q_sl, kt, S, P, S);
    } else {
        memset(P, 0, (size_t)nl * S * sizeof(float));
    }
    if (a->raw_scores) memcpy(a->raw_scores + wofs, P, (size_t)nl * S * sizeof(float));
    const float cap = a->softcap;
    const float *kpm = a->kpm ? a->kpm + (size_t)b * S : NULL;
    for (int i = 0; i < nl; ++i) {
        float *row = P + (size_t)i * S;
        const int l = l0 + i;
        if (cap > 0.0f) rf__softcap_row(row, S, cap);
        if (a->mask) {
            const float *m = a->mask + b * a->m_sb + h * a->m_sh + (int64_t)l * a->m_sl;
#pragma omp simd
            for (int s = 0; s < S; ++s) row[s] += m[s];
        }
        if (kpm) {
#pragma omp simd
            for (int s = 0; s < S; ++s) row[s] += kpm[s];
        }
        if (a->causal) {
            long long first = (long long)l + a->causal_offset + 1;
            if (first < 0) first = 0;
            for (long long s = first; s < S; ++s) row[s] = -INFINITY;
        }
        rf__softmax_row(row, S);
    }
    /* Y = P V  (nl, Dv) */
    if (Dv > 0) rf__gemm_nn(nl, Dv, S, 1.0f, P, S, V, a->v_ss, Y, a->y_sl);
}

rf_status rf_sdpa_forward(const rf_sdpa_args *a, void *ws, size_t ws_size, int n_threads, char *err)
{
    if (!a) return rf__attn_fail(err, RF_ERR_INVALID_ARG, "args: expected a pointer, got NULL");
    if (a->B < 0 || a->L < 0 || a->S < 0 || a->Dk < 0 || a->Dv < 0 || a->Hq < 1 || a->Hkv < 1)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                             "sizes: expected B, L, S, Dk, Dv >= 0 and heads >= 1, got B=%d L=%d S=%d "
                             "Dk=%d Dv=%d Hq=%d Hkv=%d",
                             a->B, a->L, a->S, a->Dk, a->Dv, a->Hq, a->Hkv);
    if (a->Hq % a->Hkv != 0)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                             "heads: expected q heads a multiple of kv heads, got %d and %d", a->Hq, a->Hkv);
    if (!(a->softcap >= 0.0f))
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "softcap: expected >= 0, got %g", (double)a->softcap);
    if (a->B == 0 || a->L == 0 || a->Dv == 0) return RF_OK;
    if (!a->q || !a->y || (a->S > 0 && (!a->k || !a->v)))
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "pointers: expected q, k, v and y, got NULL");
    if (a->S == 0) { /* nothing to attend to: every row is fully masked */
        for (int b = 0; b < a->B; ++b)
            for (int h = 0; h < a->Hq; ++h)
                for (int l = 0; l < a->L; ++l) {
                    float *y = a->y + b * a->y_sb + h * a->y_sh + (int64_t)l * a->y_sl;
                    for (int d = 0; d < a->Dv; ++d) y[d] = 0.0f;
                }
        return RF_OK;
    }
    if (!rf__fits_int(a->q_sl) || !rf__fits_int(a->k_ss) || !rf__fits_int(a->v_ss) || !rf__fits_int(a->y_sl))
        return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                             "row strides: expected in [1, 2^31), got q %lld k %lld v %lld y %lld",
                             (long long)a->q_sl, (long long)a->k_ss, (long long)a->v_ss, (long long)a->y_sl);
    if (a->q_sl < a->Dk || a->k_ss < a->Dk || a->v_ss < a->Dv || a->y_sl < a->Dv)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "row strides: expected >= head sizes (%d, %d)", a->Dk,
                             a->Dv);
    const int nt = rf__attn_threads(n_threads);
    const size_t need = rf_sdpa_workspace_size(a, nt);
    if (!ws || ws_size < need)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "workspace: expected %zu bytes, got %zu", need,
                             ws ? ws_size : (size_t)0);
    char *base = (char *)rf__align_up((size_t)(uintptr_t)ws);
    const int lb = rf__sdpa_block(a, nt);
    const int nblk = (a->L + lb - 1) / lb;
    const long long tasks = (long long)a->B * a->Hq * nblk;
    const size_t per = rf__align_up((size_t)lb * (size_t)a->S * sizeof(float)) +
                       rf__align_up((size_t)a->Dk * (size_t)a->S * sizeof(float));
    if (nt > 1 && tasks > 1) {
#pragma omp parallel num_threads(nt)
        {
#ifdef _OPENMP
            float *scratch = (float *)(base + per * (size_t)omp_get_thread_num());
#else
            float *scratch = (float *)base;
#endif
#pragma omp for schedule(dynamic, 1)
            for (long long t = 0; t < tasks; ++t) rf__sdpa_task(a, t, nblk, lb, scratch);
        }
    } else {
        for (long long t = 0; t < tasks; ++t) rf__sdpa_task(a, t, nblk, lb, (float *)base);
    }
    return RF_OK;
}

/* Y (B, N) [ldy] (+)= X (B, K) . W^T with W packed (rf_pk_pack, tw = 1); threads split the columns. */
static void rf__packed_cols(int B, int N, int K, const float *X, const float *Wp, float *Y, int ldy, int acc,
                            const float *zeros, int nt)
{
    const int npp = (N + 31) / 32;
    const int chunk = 4; /* panel pairs per task: 128 columns */
    const int nchunks = (npp + chunk - 1) / chunk;
    if (nt > 1 && nchunks > 1 && (long long)N * K * B > (1LL << 18)) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < nchunks; ++i) {
            const int p1 = (i + 1) * chunk < npp ? (i + 1) * chunk : npp;
            rf_pk_gemm(B, N, K, X, K, Wp, Y, ldy, acc, zeros, i * chunk, p1);
        }
    } else {
        rf_pk_gemm(B, N, K, X, K, Wp, Y, ldy, acc, zeros, 0, npp);
    }
}

/* Y[rows, ldy] (columns [0, n)) = X (rows, k) W^T + bias: on the packed copy wp of W in the core's team
 * when given (zeros: k zero floats), else on rf_sgemm. */
static void rf__linear(int rows, int n, int k, const float *x, const float *w, const float *wp, const float *bias,
                       float *y, int ldy, const float *zeros, int nt)
{
    if (bias)
        for (int r = 0; r < rows; ++r) memcpy(y + (size_t)r * ldy, bias, (size_t)n * sizeof(float));
    if (wp)
        rf__packed_cols(rows, n, k, x, wp, y, ldy, bias != NULL, zeros, nt);
    else
        rf_sgemm(0, 1, rows, n, k, 1.0f, x, k, w, k, bias ? 1.0f : 0.0f, y, ldy);
}

size_t rf_linear_packed_size(int N, int K)
{
    if (N < 1 || K < 1) return 0;
    return rf_pk_floats(N, K);
}

rf_status rf_linear_pack(int N, int K, const float *w, float *wp, size_t wp_floats, char *err)
{
    const size_t need = rf_linear_packed_size(N, K);
    if (need == 0) return rf__attn_fail(err, RF_ERR_INVALID_ARG, "pack: expected N, K >= 1, got (%d, %d)", N, K);
    if (!w || !wp || wp_floats < need)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "pack: expected w and %zu floats, got %zu", need, wp_floats);
    rf_pk_pack(1, N, K, w, K, wp, 0, 1);
    return RF_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* torch.nn.MultiheadAttention                                                                      */
/* ------------------------------------------------------------------------------------------------ */

#define RF_MHA_PACKED_ROWS 512 /* projection rows (B*L) up to which packed weights are used (measured: at
                                  * 2048 rows BLAS was ~7% faster) */

static int rf__mha_fused(const rf_mha_args *a)
{
    return a->q == a->k && a->k == a->v && a->L == a->S && a->E == a->Ek && a->E == a->Ev &&
           a->w_k == a->w_q + (size_t)a->E * a->E && a->w_v == a->w_k + (size_t)a->E * a->E;
}

static void rf__mha_sdpa_args(const rf_mha_args *a, const float *qp, const float *kp, const float *vp, int wq,
                              int wk, float *att, rf_sdpa_args *s)
{
    const int E = a->E, Dh = a->E / a->H, B = a->B, L = a->L, S = a->S;
    memset(s, 0, sizeof(*s));
    s->B = B; s->Hq = a->H; s->Hkv = a->H; s->L = L; s->S = S; s->Dk = Dh; s->Dv = Dh;
    s->q = qp; s->q_sh = Dh;
    s->k = kp; s->k_sh = Dh;
    s->v = vp; s->v_sh = Dh;
    s->y = att; s->y_sh = Dh;
    if (a->batch_first) {
        s->q_sb = (int64_t)L * wq; s->q_sl = wq;
        s->k_sb = (int64_t)S * wk; s->k_ss = wk;
        s->v_sb = (int64_t)S * wk; s->v_ss = wk;
        s->y_sb = (int64_t)L * E; s->y_sl = E;
    } else {
        s->q_sb = wq; s->q_sl = (int64_t)B * wq;
        s->k_sb = wk; s->k_ss = (int64_t)B * wk;
        s->v_sb = wk; s->v_ss = (int64_t)B * wk;
        s->y_sb = E; s->y_sl = (int64_t)B * E;
    }
    s->mask = a->mask; s->m_sb = a->m_sb; s->m_sh = a->m_sh; s->m_sl = S;
    s->kpm = a->kpm;
    s->causal = a->causal;
    s->scale = 1.0f / sqrtf((float)Dh);
    s->weights = a->weights;
}

static void rf__mha_layout(const rf_mha_args *a, int nt, size_t *qkv, size_t *att, size_t *sd)
{
    const size_t E = (size_t)a->E, rq = (size_t)a->B * a->L, rk = (size_t)a->B * a->S;
    *qkv = rf__mha_fused(a) ? rq * 3 * E : rq * E + 2 * rk * E;
    *att = rq * E;
    rf_sdpa_args s;
    rf__mha_sdpa_args(a, NULL, NULL, NULL, a->E, a->E, NULL, &s);
    const size_t sd_nt = rf_sdpa_workspace_size(&s, nt), sd_1 = rf_sdpa_workspace_size(&s, 1);
    *sd = sd_nt > sd_1 ? sd_nt : sd_1; /* the SDPA may run on one thread (see rf_mha_forward) */
}

size_t rf_mha_workspace_size(const rf_mha_args *a, int n_threads)
{
    if (!a || a->H < 1) return RF_ATTN_ALIGN;
    size_t qkv, att, sd;
    rf__mha_layout(a, rf__attn_threads(n_threads), &qkv, &att, &sd);
    return rf__align_up(qkv * sizeof(float)) + rf__align_up(att * sizeof(float)) + rf__align_up(sd) +
           ((size_t)a->E + 16) * sizeof(float) + RF_ATTN_ALIGN;
}

rf_status rf_mha_forward(const rf_mha_args *a, void *ws, size_t ws_size, int n_threads, char *err)
{
    if (!a) return rf__attn_fail(err, RF_ERR_INVALID_ARG, "args: expected a pointer, got NULL");
    if (a->B < 0 || a->L < 0 || a->S < 0 || a->E < 1 || a->Ek < 1 || a->Ev < 1 || a->H < 1)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                             "sizes: expected B, L, S >= 0 and E, Ek, Ev, H >= 1, got B=%d L=%d S=%d E=%d "
                             "Ek=%d Ev=%d H=%d",
                             a->B, a->L, a->S, a->E, a->Ek, a->Ev, a->H);
    if (a->E % a->H != 0)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "embed_dim: expected a multiple of num_heads=%d, got %d",
                             a->H, a->E);
    if ((long long)a->B * a->L * 3 * a->E > 2147483647LL || (long long)a->B * a->S * a->E > 2147483647LL)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "sizes: expected B*L*3E < 2^31, got B=%d L=%d E=%d",
                             a->B, a->L, a->E);
    if (a->B == 0 || a->L == 0) return RF_OK;
    if (!a->q || !a->y || !a->w_q || !a->w_o || (a->S > 0 && (!a->k || !a->v || !a->w_k || !a->w_v)))
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "pointers: expected q, k, v, weights and y, got NULL");
    const int nt = rf__attn_threads(n_threads);
    const size_t need = rf_mha_workspace_size(a, nt);
    if (!ws || ws_size < need)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "workspace: expected %zu bytes, got %zu", need,
                             ws ? ws_size : (size_t)0);
    size_t nqkv, natt, nsd;
    rf__mha_layout(a, nt, &nqkv, &natt, &nsd);
    char *base = (char *)rf__align_up((size_t)(uintptr_t)ws);
    float *qkv = (float *)base;
    float *att = (float *)(base + rf__align_up(nqkv * sizeof(float)));
    void *sdws = base + rf__align_up(nqkv * sizeof(float)) + rf__align_up(natt * sizeof(float));
    float *zeros = (float *)((char *)sdws + rf__align_up(nsd)); /* E zero floats: the packed product's padding */
    memset(zeros, 0, ((size_t)a->E + 16) * sizeof(float));

    const int E = a->E, rq = a->B * a->L, rk = a->B * a->S;
    const float *qp, *kp, *vp;
    int wq, wk;
    if (rf__mha_fused(a)) {
        /* one GEMM (rows, E) x (E, 3E); bias per segment */
        if (a->b_q || a->b_k || a->b_v) {
            for (int r = 0; r < rq; ++r) {
                float *row = qkv + (size_t)r * 3 * E;
                const float *bs[3] = {a->b_q, a->b_k, a->b_v};
                for (int j = 0; j < 3; ++j) {
                    if (bs[j]) memcpy(row + (size_t)j * E, bs[j], (size_t)E * sizeof(float));
                    else memset(row + (size_t)j * E, 0, (size_t)E * sizeof(float));
                }
            }
        }
        const int acc = a->b_q || a->b_k || a->b_v;
        if (a->wp_in && rq <= RF_MHA_PACKED_ROWS)
            rf__packed_cols(rq, 3 * E, E, a->q, a->wp_in, qkv, 3 * E, acc, zeros, nt);
        else
            rf_sgemm(0, 1, rq, 3 * E, E, 1.0f, a->q, E, a->w_q, E, acc ? 1.0f : 0.0f, qkv, 3 * E);
        qp = qkv; kp = qkv + E; vp = qkv + 2 * E; wq = wk = 3 * E;
    } else {
        float *Q = qkv, *K = qkv + (size_t)rq * E, *V = K + (size_t)rk * E;
        rf__linear(rq, E, E, a->q, a->w_q, NULL, a->b_q, Q, E, zeros, nt);
        if (rk > 0) {
            rf__linear(rk, E, a->Ek, a->k, a->w_k, NULL, a->b_k, K, E, zeros, nt);
            rf__linear(rk, E, a->Ev, a->v, a->w_v, NULL, a->b_v, V, E, zeros, nt);
        }
        qp = Q; kp = K; vp = V; wq = wk = E;
    }
    rf_sdpa_args s;
    rf__mha_sdpa_args(a, qp, kp, vp, wq, wk, att, &s);
    /* Between two BLAS calls, a small SDPA runs on the calling thread: waking the OpenMP team while the
     * BLAS pool's workers still spin oversubscribes the cores and costs far more than it saves. The
     * workspace was sized for nt threads, which covers one. */
    const double sdpa_macs = (double)a->B * a->H * a->L * a->S * (2.0 * (a->E / a->H));
    const int nt_sdpa = sdpa_macs < 6.4e7 ? 1 : nt;
    rf_status st = rf_sdpa_forward(&s, sdws, nsd, nt_sdpa, err);
    if (st != RF_OK) return st;
    rf__linear(rq, E, E, att, a->w_o, rq <= RF_MHA_PACKED_ROWS ? a->wp_o : NULL, a->b_o, a->y, E, zeros, nt);
    return RF_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Greedy Seq2Seq decoding                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/* Whether greedy decoding packs the output weight (enough rows and steps to repay one pass over it). */
static int rf__greedy_packs(const rf_greedy_args *a) { return a->B >= 4 && a->max_len >= 4; }

typedef struct {
    size_t x, h, c, top, qp, ctx, wts, cat, feed, logits, alive, zeros, outp, rnn; /* byte offsets */
    size_t rnn_size, total;
} rf__greedy_layout;

static size_t rf__gl_add(size_t *off, size_t bytes)
{
    size_t at = *off;
    *off += rf__align_up(bytes > 0 ? bytes : 1);
    return at;
}

static int rf__greedy_layout_of(const rf_greedy_args *a, rf__greedy_layout *g)
{
    const size_t B = (size_t)a->B, L = (size_t)a->dec->num_layers, H = (size_t)a->dec->hidden_size;
    const size_t f = sizeof(float);
    size_t off = 0;
    g->x = rf__gl_add(&off, B * (size_t)a->dec->input_size * f);
    g->h = rf__gl_add(&off, 2 * L * B * H * f);
    g->c = rf__gl_add(&off, 2 * L * B * H * f);
    g->top = rf__gl_add(&off, B * H * f);
    g->qp = rf__gl_add(&off, B * (size_t)(a->A > 0 ? a->A : 1) * f);
    g->ctx = rf__gl_add(&off, B * (size_t)a->Dv * f);
    g->wts = rf__gl_add(&off, B * (size_t)a->S * f);
    g->cat = rf__gl_add(&off, B * ((size_t)a->Dv + H) * f);
    g->feed = rf__gl_add(&off, B * (size_t)(a->Hc > 0 ? a->Hc : 1) * f);
    g->logits = rf__gl_add(&off, B * (size_t)a->V * f);
    g->alive = rf__gl_add(&off, B * sizeof(int));
    g->zeros = rf__gl_add(&off, ((size_t)(a->Hc > a->dec->hidden_size ? a->Hc : a->dec->hidden_size) + 16) * f);
    const int Hout = a->wiring == RF_WIRING_LUONG ? a->Hc : a->dec->hidden_size;
    const size_t npk = rf__greedy_packs(a) && a->V > 0 && Hout > 0 ? rf_pk_floats(a->V, Hout) : 0;
    if (npk > SIZE_MAX / 8) return 0;
    g->outp = rf__gl_add(&off, npk * f);
    g->rnn_size = rf_rnn_workspace_size(a->dec, 1, a->B > 0 ? a->B : 1);
    if (g->rnn_size == 0) return 0;
    g->rnn = rf__gl_add(&off, g->rnn_size);
    g->total = off + RF_ATTN_ALIGN;
    return 1;
}

size_t rf_greedy_workspace_size(const rf_greedy_args *a, int n_threads)
{
    (void)n_threads;
    rf__greedy_layout g;
    if (!a || !a->dec || !rf__greedy_layout_of(a, &g)) return 0;
    return g.total;
}

static rf_status rf__greedy_check(const rf_greedy_args *a, char *err)
{
    if (!a || !a->dec || !a->dec_w)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "args: expected args, decoder desc and weights, got NULL");
    rf_status st = rf_rnn_check_desc(a->dec, err);
    if (st != RF_OK) return st;
    const rf_rnn_desc *d = a->dec;
    if (d->num_dirs != 1 || d->proj_size != 0)
        return rf__attn_fail(err, RF_ERR_UNSUPPORTED,
                             "decoder: expected a unidirectional stack without projection, got D=%d P=%d",
                             d->num_dirs, d->proj_size);
    const int H = d->hidden_size;
    if (a->B < 0 || a->S < 0 || a->E < 1 || a->n_emb < 1 || a->V < 1 || a->max_len < 0 || a->Dv < 0)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                             "sizes: expected B, S, max_len >= 0 and E, n_emb, V >= 1, got B=%d S=%d E=%d "
                             "n_emb=%d V=%d max_len=%d",
                             a->B, a->S, a->E, a->n_emb, a->V, a->max_len);
    if (a->wiring < RF_WIRING_NONE || a->wiring > RF_WIRING_LUONG)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "wiring: expected 0, 1 or 2, got %d", a->wiring);
    const int feed = a->wiring == RF_WIRING_LUONG && a->input_feeding;
    const int want_in = a->E + (a->wiring == RF_WIRING_BAHDANAU ? a->Dv : 0) + (feed ? a->Hc : 0);
    if (d->input_size != want_in)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "decoder input_size: expected %d, got %d", want_in,
                             d->input_size);
    if (!a->embedding || !a->out_w || !a->start || !a->tokens || !a->out_lengths || !a->scores || !a->steps)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "pointers: expected embedding, out_w, start and outputs");
    if (a->wiring == RF_WIRING_LUONG && (!a->comb_w || a->Hc < 1))
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "combine: expected W_c (Hc, Dv + H) with Hc >= 1");
    if (a->wiring != RF_WIRING_NONE) {
        if (a->attn_kind == RF_ATTN_ADDITIVE) {
            if (a->A < 1 || !a->attn_wq || !a->attn_v)
                return rf__attn_fail(err, RF_ERR_INVALID_ARG, "additive attention: expected W_q (A, H) and v (A)");
        } else if (a->attn_kind == RF_ATTN_DOT) {
            if (a->A != H)
                return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                                     "dot attention: expected key size = decoder hidden size %d, got %d", H, a->A);
        } else {
            return rf__attn_fail(err, RF_ERR_INVALID_ARG, "attn_kind: expected 0 or 1, got %d", a->attn_kind);
        }
        if (a->B > 0 && a->S > 0 && (!a->kp || !a->values))
            return rf__attn_fail(err, RF_ERR_INVALID_ARG, "memory: expected kp and values, got NULL");
    }
    for (int b = 0; b < a->B; ++b)
        if (a->start[b] < 0 || a->start[b] >= a->n_emb)
            return rf__attn_fail(err, RF_ERR_INVALID_ARG, "start[%d]: expected an id in [0, %d), got %lld", b,
                                 a->n_emb, (long long)a->start[b]);
    if (a->end_token >= a->V)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "end_token: expected < %d, got %d", a->V, a->end_token);
    if (a->V > a->n_emb)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG,
                             "embedding: expected at least V=%d rows (every output token is fed back), got %d", a->V,
                             a->n_emb);
    return RF_OK;
}

/* logits (B, V) -> first argmax and log-probability of it. As torch.argmax, a NaN counts as the maximum
 * (the first NaN wins) and its log-probability is NaN. */
RF_KERNEL_ATTRS
static void rf__argmax_logp(const float *row, int V, int *arg, double *logp)
{
    rf_v16 mv = RF_V(-INFINITY);
    rf_i16 nan16 = {0};
    int j = 0;
    for (; j + 16 <= V; j += 16) {
        const rf_v16 v = rf_vload(row + j);
        mv = rf_vsel(v > mv, v, mv);
        nan16 |= v != v;
    }
    float m = -INFINITY;
    int nan = 0;
    for (int l = 0; l < 16; ++l) {
        nan |= nan16[l] != 0;
        if (mv[l] > m) m = mv[l];
    }
    for (; j < V; ++j) {
        nan |= row[j] != row[j];
        if (row[j] > m) m = row[j];
    }
    int best = 0;
    if (nan) {
        while (row[best] == row[best]) ++best;
        *arg = best;
        *logp = NAN;
        return;
    }
    while (best < V - 1 && row[best] != m) ++best; /* the first maximum */
    const rf_v16 m16 = RF_V(m);
    rf_v16 acc = RF_V(0.0f);
    j = 0;
    for (; j + 16 <= V; j += 16) acc += rf_vexp(rf_vload(row + j) - m16);
    double s = 0.0;
    for (int l = 0; l < 16; ++l) s += acc[l];
    for (; j < V; ++j) s += exp((double)row[j] - (double)m);
    *arg = best;
    *logp = -log(s);
}

rf_status rf_greedy_decode(const rf_greedy_args *a, void *ws, size_t ws_size, int n_threads, char *err)
{
    rf_status st = rf__greedy_check(a, err);
    if (st != RF_OK) return st;
    rf__greedy_layout g;
    if (!rf__greedy_layout_of(a, &g))
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "workspace: size overflows for B=%d", a->B);
    if (!ws || ws_size < g.total)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "workspace: expected %zu bytes, got %zu", g.total,
                             ws ? ws_size : (size_t)0);
    const int B = a->B, S = a->S, E = a->E, V = a->V, Dv = a->Dv, Hc = a->Hc, T = a->max_len;
    const int L = a->dec->num_layers, H = a->dec->hidden_size, I = a->dec->input_size;
    const int lstm = a->dec->cell == RF_CELL_LSTM;
    const int feed_on = a->wiring == RF_WIRING_LUONG && a->input_feeding;
    const int64_t fill = a->end_token >= 0 ? a->end_token : -1;
    *a->steps = 0;
    for (int b = 0; b < B; ++b) {
        a->out_lengths[b] = 0;
        a->scores[b] = 0.0;
        for (int t = 0; t < T; ++t) a->tokens[(size_t)b * T + t] = fill;
    }
    if (B == 0 || T == 0) return RF_OK;

    char *base = (char *)rf__align_up((size_t)(uintptr_t)ws);
    float *x = (float *)(base + g.x);
    float *hbuf = (float *)(base + g.h), *cbuf = (float *)(base + g.c);
    const size_t LBH = (size_t)L * B * H;
    float *h_cur = hbuf, *h_nxt = hbuf + LBH, *c_cur = cbuf, *c_nxt = cbuf + LBH;
    float *top = (float *)(base + g.top), *qp = (float *)(base + g.qp), *ctx = (float *)(base + g.ctx);
    float *wts = (float *)(base + g.wts), *cat = (float *)(base + g.cat), *feed = (float *)(base + g.feed);
    float *logits = (float *)(base + g.logits);
    int *alive = (int *)(base + g.alive);
    float *zeros = (float *)(base + g.zeros);
    float *outp = rf__greedy_packs(a) ? (float *)(base + g.outp) : NULL;
    memset(zeros, 0, ((size_t)(a->Hc > H ? a->Hc : H) + 16) * sizeof(float));
    void *rnn_ws = base + g.rnn;
    /* the previous token of row b is tokens[b, t-1] (or start[b] at t = 0) */

    if (a->h0) memcpy(h_cur, a->h0, LBH * sizeof(float));
    else memset(h_cur, 0, LBH * sizeof(float));
    if (lstm) {
        if (a->c0) memcpy(c_cur, a->c0, LBH * sizeof(float));
        else memset(c_cur, 0, LBH * sizeof(float));
    }
    if (feed_on) memset(feed, 0, (size_t)B * Hc * sizeof(float));
    for (int b = 0; b < B; ++b) alive[b] = 1;

    rf_attn_args at;
    memset(&at, 0, sizeof(at));
    at.kind = a->attn_kind;
    at.B = B;
    at.Tq = 1;
    at.S = S;
    at.D = a->attn_kind == RF_ATTN_ADDITIVE ? a->A : H;
    at.Dv = Dv;
    at.kp = a->kp;
    at.v = a->attn_v;
    at.values = a->values;
    at.lengths = a->src_lengths;
    at.mask = a->src_mask;
    at.scale = a->attn_scale;
    at.ctx = ctx;
    at.weights = wts;

    const int Hout = a->wiring == RF_WIRING_LUONG ? Hc : H;
    const int nt = rf__attn_threads(n_threads);
    if (outp) {
        const int pnt = (long long)V * Hout > (1LL << 16) ? nt : 1;
#pragma omp parallel num_threads(pnt) if (pnt > 1)
        {
            int tid = 0, n = 1;
#ifdef _OPENMP
            tid = omp_get_thread_num();
            n = omp_get_num_threads();
#endif
            rf_pk_pack(1, V, Hout, a->out_w, Hout, outp, tid, n);
        }
    }
    int steps = 0;
    for (int t = 0; t < T; ++t) {
        /* 1. decoder input: embedding of the previous token (+ context, + feed) */
        for (int b = 0; b < B; ++b) {
            int64_t prev = t == 0 ? a->start[b] : a->tokens[(size_t)b * T + t - 1];
            if (prev < 0 || prev >= a->n_emb) prev = 0; /* finished rows: any valid id (ignored) */
            memcpy(x + (size_t)b * I, a->embedding + (size_t)prev * E, (size_t)E * sizeof(float));
        }
        if (a->wiring == RF_WIRING_BAHDANAU) {
            const float *hq = h_cur + (size_t)(L - 1) * B * H;
            if (a->attn_kind == RF_ATTN_ADDITIVE) {
                rf__linear_small(B, a->A, H, hq, a->attn_wq, a->attn_b, qp, a->A, nt);
                at.q = qp;
            } else {
                at.q = hq;
            }
            st = rf_attn_forward(&at, n_threads, err);
            if (st != RF_OK) return st;
            for (int b = 0; b < B; ++b)
                memcpy(x + (size_t)b * I + E, ctx + (size_t)b * Dv, (size_t)Dv * sizeof(float));
        }
        if (feed_on)
            for (int b = 0; b < B; ++b) memcpy(x + (size_t)b * I + (I - Hc), feed + (size_t)b * Hc, (size_t)Hc * sizeof(float));

        /* 2. one step of the decoder stack */
        rf_rnn_io io;
        memset(&io, 0, sizeof(io));
        io.T = 1;
        io.B = B;
        io.x = x;
        io.h0 = h_cur;
        io.c0 = lstm ? c_cur : NULL;
        io.out = top;
        io.h_n = h_nxt;
        io.c_n = lstm ? c_nxt : NULL;
        st = rf_rnn_forward(a->dec, a->dec_w, &io, rnn_ws, g.rnn_size, n_threads, err);
        if (st != RF_OK) return st;
        float *tmp = h_cur; h_cur = h_nxt; h_nxt = tmp;
        tmp = c_cur; c_cur = c_nxt; c_nxt = tmp;

        /* 3. Luong: attention after the step, combine layer */
        const float *out_in = top;
        if (a->wiring == RF_WIRING_LUONG) {
            if (a->attn_kind == RF_ATTN_ADDITIVE) {
                rf__linear_small(B, a->A, H, top, a->attn_wq, a->attn_b, qp, a->A, nt);
                at.q = qp;
            } else {
                at.q = top;
            }
            st = rf_attn_forward(&at, n_threads, err);
            if (st != RF_OK) return st;
            for (int b = 0; b < B; ++b) {
                memcpy(cat + (size_t)b * (Dv + H), ctx + (size_t)b * Dv, (size_t)Dv * sizeof(float));
                memcpy(cat + (size_t)b * (Dv + H) + Dv, top + (size_t)b * H, (size_t)H * sizeof(float));
            }
            rf__linear_small(B, Hc, Dv + H, cat, a->comb_w, a->comb_b, feed, Hc, nt);
            rf__tanh_inplace(feed, (size_t)B * Hc);
            out_in = feed;
        }

        /* 4. output layer, argmax, log-probability */
        if (outp)
            rf__linear(B, V, Hout, out_in, a->out_w, outp, a->out_b, logits, V, zeros, nt);
        else
            rf__linear_small(B, V, Hout, out_in, a->out_w, a->out_b, logits, V, nt);
        int any = 0;
        for (int b = 0; b < B; ++b) {
            if (!alive[b]) continue;
            int arg;
            double lp;
            rf__argmax_logp(logits + (size_t)b * V, V, &arg, &lp);
            a->tokens[(size_t)b * T + t] = arg;
            a->scores[b] += lp;
            a->out_lengths[b] += 1;
            if (a->attn_out && a->wiring != RF_WIRING_NONE)
                memcpy(a->attn_out + ((size_t)b * T + t) * S, wts + (size_t)b * S, (size_t)S * sizeof(float));
            if (arg == a->end_token) alive[b] = 0;
            any |= alive[b];
        }
        steps = t + 1;
        if (!any) break;
    }
    *a->steps = steps;
    return RF_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Linear layer                                                                                     */
/* ------------------------------------------------------------------------------------------------ */

rf_status rf_linear(int B, int N, int K, const float *x, const float *w, const float *bias, float *y, int n_threads,
                    char *err)
{
    if (B < 0 || N < 0 || K < 0)
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "sizes: expected B, N, K >= 0, got (%d, %d, %d)", B, N, K);
    if (B == 0 || N == 0) return RF_OK;
    if (!y || (K > 0 && (!x || !w)))
        return rf__attn_fail(err, RF_ERR_INVALID_ARG, "pointers: expected x, w and y, got NULL");
    rf__linear_small(B, N, K, x, w, bias, y, N, rf__attn_threads(n_threads));
    return RF_OK;
}
