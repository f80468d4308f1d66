/* rf_rnn_internal.h -- shared between rf_rnn.c and the batch-1 kernel rf_rnn_b1.c. Internal. */
#ifndef RF_RNN_INTERNAL_H
#define RF_RNN_INTERNAL_H

#include "rnnfast.h"

#define RF_UNIT_BLOCK 16 /* hidden units per packed block: one 512-bit vector of float32 */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define RF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RF_CLONES
#endif

int rf_gates(int cell);

/* The fast path (rf_rnn_fast.c): PyTorch semantics without projection, W_ih and W_hh packed. */
int rf_rnn_fast_eligible(const rf_rnn_desc *d, const rf_rnn_weights *w);
/* steps of input projection kept at once (the gx chunk) */
int rf_rnn_fast_chunk(const rf_rnn_desc *d, int T, int B);

typedef struct {
    const rf_rnn_weights *w; /* D entries: this layer's directions */
    const float *x;          /* layer input, row (t, b) at x + (t*x_ts + b*x_bs)*K */
    int K;
    size_t x_ts, x_bs;
    float *out;              /* row (t, b) at out + (t*o_ts + b*o_bs)*o_ld (+ dir*H), or NULL */
    size_t o_ts, o_bs, o_ld;
    const int32_t *perm, *len; /* rows by decreasing length */
    int B, T, Tc;
    float *gx[2];            /* per direction (Tc, B, G*H) */
    float *h[2];             /* per direction 2 x (B, H), perm order; h0 in the first half */
    float *c[2];             /* per direction (B, H) */
    float *m[2];             /* per direction (B, H) */
} rf_fast_layer;

/* One layer, both directions. Final state of row i: h[dir] + ((len[i] & 1) * B + i) * H. */
void rf_rnn_fast_layer(const rf_rnn_desc *d, const rf_fast_layer *L, int nt);

#endif /* RF_RNN_INTERNAL_H */
