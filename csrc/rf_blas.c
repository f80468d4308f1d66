/* rf_blas.c -- row-major SGEMM on top of a Fortran (column-major) BLAS table, plus a naive fallback.
 *
 *   C(m,n) = alpha * op(A)(m,k) . op(B)(k,n) + beta * C        (row-major)
 * is computed as the column-major product C^T = op(B)^T . op(A)^T, so row-major A with lda is seen by
 * Fortran as its transpose with the same leading dimension.
 */
#include "rf_internal.h"

static rf_fortran_sgemm rf_sgemm_ptr = NULL; /* set once at import, read-only afterwards */

void rf_blas_set_sgemm(rf_fortran_sgemm fn) { rf_sgemm_ptr = fn; }

static void rf_sgemm_naive(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                           const float *b, int ldb, float beta, float *c, int ldc) {
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int p = 0; p < k; p++) {
                float av = ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                float bv = tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                s += av * bv;
            }
            float *cij = &c[(size_t)i * ldc + j];
            *cij = (beta == 0.0f ? 0.0f : beta * *cij) + alpha * s;
        }
    }
}

void rf_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
              const float *b, int ldb, float beta, float *c, int ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) { /* BLAS leaves C*beta; make it explicit (and beta == 0 clears NaN like BLAS) */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float *cij = &c[(size_t)i * ldc + j];
                *cij = beta == 0.0f ? 0.0f : beta * *cij;
            }
        return;
    }
    if (!rf_sgemm_ptr) {
        rf_sgemm_naive(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    /* Fortran: C^T (n x m, ld ldc) = op(B)^T (n x k) . op(A)^T (k x m) */
    const char tA = trans_b ? 'T' : 'N', tB = trans_a ? 'T' : 'N';
    rf_sgemm_ptr(&tA, &tB, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}
