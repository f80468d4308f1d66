/* rf_internal.h -- checks, debug asserts, activations, workspace carving. Not part of the public API.
 * Shape glossary: T=time B=batch I=input H=hidden P=projection G=gates D=directions L=layers */
#ifndef RF_INTERNAL_H
#define RF_INTERNAL_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "rnnfast.h"

#ifdef RF_DEBUG
#include <assert.h>
#define RF_ASSERT(c) assert(c)
#else
#define RF_ASSERT(c) ((void)0)
#endif

#define RF_ALIGN 64

/* Products with a weight operand packed once (rf_pack.c): C (M, N) (+)= A (M, K) . Bm (K, N), Bm = W^T
 * (tw = 1, W (N, K)) or W (tw = 0, W (K, N)); Wp holds rf_pk_floats(N, K) floats. rf_pk_pack packs the
 * panels tid, tid + nthr, ... (a team shares the work); rf_pk_gemm computes the column panel pairs
 * [pp0, pp1) (32 columns each) for all M rows; zeros: K zero floats (padding rows). */
size_t rf_pk_floats(int N, int K);
void rf_pk_pack(int tw, int N, int K, const float *W, int ldw, float *Wp, int tid, int nthr);
void rf_pk_gemm(int M, int N, int K, const float *A, int lda, const float *Wp, float *C, int ldc, int acc,
                const float *zeros, int pp0, int pp1);

/* Fill err (RF_ERRLEN bytes, may be NULL) and return the status. */
static inline rf_status rf_fail(char *err, rf_status st, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, RF_ERRLEN, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* Workspace carving: bump allocator over a caller-owned buffer, 64-byte aligned pieces.
 * With base == NULL it only counts (used by *_workspace_size). Overflow sets ok = 0. */
typedef struct {
    char *base;
    size_t used;
    int ok;
} rf_carver;

static inline float *rf_carve(rf_carver *c, size_t n_floats) {
    if (!c->ok) return NULL;
    if (n_floats > (SIZE_MAX - RF_ALIGN) / sizeof(float) / 2) { c->ok = 0; return NULL; }
    size_t bytes = (n_floats * sizeof(float) + RF_ALIGN - 1) / RF_ALIGN * RF_ALIGN;
    if (c->used > SIZE_MAX - bytes) { c->ok = 0; return NULL; }
    float *p = c->base ? (float *)(c->base + c->used) : NULL;
    c->used += bytes;
    return p;
}

/* size_t products that report overflow (0 = overflow or zero) */
static inline size_t rf_mul3(size_t a, size_t b, size_t c) {
    if (a && b > SIZE_MAX / a) return 0;
    size_t ab = a * b;
    if (ab && c > SIZE_MAX / ab) return 0;
    return ab * c;
}

/* ---- activations: plain expressions GCC vectorises; NaN propagates, large inputs saturate ---- */
static inline float rf_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float rf_tanh(float x) { return tanhf(x); }
static inline float rf_relu(float x) { return x > 0.0f ? x : (x != x ? x : 0.0f); }

#endif /* RF_INTERNAL_H */
