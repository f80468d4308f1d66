/* rf_cells.h -- fused pointwise kernels of one time step, for one batch row. Internal.
 *
 * The default cells run 16 units at a time with the vector activations of rf_act.h; this header holds
 * the scalar generic variant used for ONNX's extensions.
 * Inputs of a row: gx = W_ih x_t (G*H, no bias), hh = W_hh h_{t-1} (G*H, no bias), bias (G*H or NULL).
 *   RNN   h = act(gx + hh + b)
 *   LSTM  i,f,g,o = gx + hh + b  (blocks of H)
 *         c = sigmoid(f) c + sigmoid(i) tanh(g);  m = sigmoid(o) tanh(c)       (m = h without projection)
 *   GRU   r,z = sigmoid(gx + hh + b) (first 2H)
 *         reset_after:  n = tanh(gx_n + b_in + r (hh_n + b_hn))
 *         reset_before: n = tanh(gx_n + b_n + hh_n) where hh_n = W_hn (r h) was computed by a 2nd GEMM
 *         h = (1 - z) n + z h
 * ONNX extensions (ext != NULL): per-gate activation functions, clip of pre-activations, peepholes,
 * input_forget: the generic (slower, scalar) variants below.
 * Shape glossary: T=time B=batch I=input H=hidden P=projection G=gates D=directions L=layers
 */
#ifndef RF_CELLS_H
#define RF_CELLS_H

#include "rf_internal.h"

/* ---- generic ONNX activations ---- */
static inline float rf_act_apply(const rf_act *a, float x) {
    switch (a->kind) {
    case RF_ACT_SIGMOID: return rf_sigmoid(x);
    case RF_ACT_TANH: return rf_tanh(x);
    case RF_ACT_RELU: return rf_relu(x);
    case RF_ACT_AFFINE: return a->alpha * x + a->beta;
    case RF_ACT_LEAKY_RELU: return x >= 0.0f ? x : a->alpha * x;
    case RF_ACT_THRESHOLDED_RELU: return x > a->alpha ? x : (x != x ? x : 0.0f);
    case RF_ACT_SCALED_TANH: return a->alpha * tanhf(a->beta * x);
    case RF_ACT_HARD_SIGMOID: {
        float y = a->alpha * x + a->beta;
        return y != y ? y : (y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y));
    }
    case RF_ACT_ELU: return x >= 0.0f ? x : a->alpha * expm1f(x);
    case RF_ACT_SOFTSIGN: return x / (1.0f + fabsf(x));
    case RF_ACT_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
    default: return x;
    }
}

static inline float rf_clipf(float x, float clip) {
    if (clip <= 0.0f) return x;
    return x > clip ? clip : (x < -clip ? -clip : x);
}

#endif /* RF_CELLS_H */
