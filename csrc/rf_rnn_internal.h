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

/* Batch-1 path: B == 1, PyTorch semantics, no projection, W_ih and W_hh packed (rf_rnn_pack). */
int rf_rnn_b1_eligible(const rf_rnn_desc *d, const rf_rnn_weights *w, int B);

typedef struct {
    const rf_rnn_weights *w; /* D entries: this layer's directions */
    const float *x;          /* layer input, row t at x + t*x_stride, K floats */
    int K;
    size_t x_stride;
    int len;                 /* steps to run (the sequence's length) */
    float *out;              /* row t at out + t*out_stride (+ dir*H), or NULL */
    size_t out_stride;
    float *gx[2];            /* per direction (T, G*H) scratch */
    float *h[2];             /* per direction 2*H: state in [0, H), ping-pong scratch in [H, 2H) */
    float *c[2];             /* per direction H (LSTM) */
} rf_b1_layer;

/* Runs one layer of batch 1: input projection and time loop, both directions. */
void rf_rnn_b1_layer(const rf_rnn_desc *d, const rf_b1_layer *L, int nt);

#endif /* RF_RNN_INTERNAL_H */
