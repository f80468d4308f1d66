/* rf_cells.h -- fused pointwise kernels of one time step, for one batch row. Internal.
 *
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

/* ---- vectorisable exp-based activations (no -ffast-math; NaN propagates; +-inf saturate) ----
 * expf by range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial: max rel. error ~2 ulp. */
static inline float rf_expf_fast(float x) {
    const float hi = 88.3762626647949f, lo = -87.3365447505531f;
    float xc = x > hi ? hi : (x < lo ? lo : x);
    xc = (x != x) ? 0.0f : xc;
    float n = __builtin_roundf(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } s;
    s.i = ((int32_t)n + 127) << 23;
    float y = p * s.f;
    y = x > hi ? __builtin_inff() : y;
    y = x < lo ? 0.0f : y;
    return (x != x) ? x : y;
}

static inline float rf_sigmoid_fast(float x) { return 1.0f / (1.0f + rf_expf_fast(-x)); }

/* tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); small |x| by odd polynomial (no cancellation) */
static inline float rf_tanh_fast(float x) {
    float ax = __builtin_fabsf(x);
    float e = rf_expf_fast(-2.0f * ax);
    float t = (1.0f - e) / (1.0f + e);
    float x2 = x * x;
    float small = x + x * x2 * (-0.333333333f + x2 * (0.133333333f + x2 * (-0.0539682540f)));
    float big = __builtin_copysignf(t, x);
    return ax < 0.0625f ? small : big;
}

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
