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

/* Batch-1 persistent-thread path: B == 1, PyTorch semantics, no projection, W_hh packed. */
int rf_rnn_b1_eligible(const rf_rnn_desc *d, int B, int nt);
/* Steps s = 0..nsteps-1 of one direction of batch 1 (time t = s, or nsteps-1-s when reverse).
 * gx: (T, G*H) input projections; out: row t at out + t*out_stride (or NULL);
 * h: 2*P floats (state in h[0..P), second half is scratch); c: H floats (LSTM) */
void rf_rnn_b1_run(const rf_rnn_desc *d, const rf_rnn_weights *w, const float *gx, float *out,
                   size_t out_stride, int nsteps, int reverse, float *h, float *c, int nt);

#endif
