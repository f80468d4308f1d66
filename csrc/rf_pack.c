/* rf_pack.c -- products with a constant weight operand packed once: C (M, N) (+)= A (M, K) . Bm (K, N).
 * Shape glossary: M rows of A (a small batch), N output columns, K the reduction.
 *
 * Used where BLAS would re-pack the same weights at every call: the per-step products of training
 * (rf_train.c, B rows per step; measured ~20% of a training step in OpenBLAS' copy routines) and the
 * output layer of greedy decoding (rf_attention.c, B rows per token).
 * Layout: panels of 16 columns, Wp[(p*K + k)*16 + j] = Bm[k][p*16 + j] with Bm = W^T (tw = 1, W (N, K))
 * or W (tw = 0, W (K, N)), zero past N, an even number of panels (rf_pk_floats floats).
 * The micro-kernel keeps 4 rows x 32 columns in 8 vector accumulators; panel pairs are the outer loop, so
 * W streams through the cache once per call and each pair (K x 32 floats) is reused by every row block.
 * Every output element is one fixed-order sum over k: the result of a row does not depend on M, on the
 * other rows or on how callers split panels or rows between threads. */
#include "rf_internal.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(RF_NO_CLONES)
#define RF_PK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define RF_PK_CLONES
#endif
typedef float rf_pk_v16 __attribute__((vector_size(64), aligned(4))); /* unaligned loads: any Wp works */

size_t rf_pk_floats(int N, int K) { return (((size_t)N + 31) / 32) * 32 * (size_t)K; }

void rf_pk_pack(int tw, int N, int K, const float *W, int ldw, float *Wp, int tid, int nthr) {
    const int NP = (int)(((size_t)N + 31) / 32) * 2;
    for (int p = tid; p < NP; p += nthr)
        for (int k = 0; k < K; k++) {
            float *dst = Wp + ((size_t)p * K + k) * 16;
            for (int j = 0; j < 16; j++) {
                const int col = p * 16 + j;
                dst[j] = col >= N ? 0.0f : (tw ? W[(size_t)col * ldw + k] : W[(size_t)k * ldw + col]);
            }
        }
}

static inline void pk_store(float *c, const rf_pk_v16 *v, int n, int acc) {
    if (n >= 16) {
        if (acc) *(rf_pk_v16 *)c += *v;
        else *(rf_pk_v16 *)c = *v;
    } else {
        for (int j = 0; j < n; j++) c[j] = (acc ? c[j] : 0.0f) + (*v)[j];
    }
}

RF_PK_CLONES void rf_pk_gemm(int M, int N, int K, const float *A, int lda, const float *Wp, float *C, int ldc,
                             int acc, const float *zeros, int pp0, int pp1) {
    for (int pp = pp0; pp < pp1; pp++) {
        const float *w0 = Wp + (size_t)pp * 2 * K * 16, *w1 = w0 + (size_t)K * 16;
        const int col = pp * 32;
        if (col >= N) break;
        for (int m0 = 0; m0 < M; m0 += 4) {
            const float *a0 = A + (size_t)m0 * lda;
            const float *a1 = m0 + 1 < M ? a0 + lda : zeros;
            const float *a2 = m0 + 2 < M ? a0 + 2 * (size_t)lda : zeros;
            const float *a3 = m0 + 3 < M ? a0 + 3 * (size_t)lda : zeros;
            rf_pk_v16 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
            for (int k = 0; k < K; k++) {
                const rf_pk_v16 x0 = *(const rf_pk_v16 *)(w0 + (size_t)k * 16);
                const rf_pk_v16 x1 = *(const rf_pk_v16 *)(w1 + (size_t)k * 16);
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
