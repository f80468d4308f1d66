/* rf_act.h -- 16-lane activations and the fused cell updates of one block of 16 hidden units.
 *
 * GCC vector extensions: the same source compiles to one AVX-512 register, two AVX2 registers or four
 * SSE registers, chosen at run time by the RF_CLONES of the calling kernel. No -ffast-math: NaN
 * propagates, +-inf and huge inputs saturate to the exact limits.
 *   exp(x): x = n ln2 + r (Cody-Waite), |r| <= ln2/2, degree-6 polynomial, 2^n by exponent bits
 *           (max relative error ~2 ulp on [-87.3, 88.4]; 0 below, inf above).
 *   sigmoid(x) = 1 / (1 + exp(-x));  tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|), and an odd
 *   polynomial for |x| < 0.0625 where the quotient would cancel.
 * Cell updates (canonical gate order; a_* are pre-activations incl. bias):
 *   LSTM  c' = s(a_f) c + s(a_i) tanh(a_g);  h' = s(a_o) tanh(c')
 *   GRU   r = s(a_r); z = s(a_z); n = tanh(a_xn + r * a_hn); h' = (1 - z) n + z h   (a_hn incl. b_hn)
 *   RNN   h' = tanh(a) or relu(a)
 */
#ifndef RF_ACT_H
#define RF_ACT_H

#include <stdint.h>
#include <string.h>

/* everything here is inlined into the RF_CLONES kernels: a vector function compiled once for the
 * default ISA would be called with another ABI than the AVX-512 clone expects */
#define RF_INLINE inline __attribute__((always_inline))

typedef float rf_v16 __attribute__((vector_size(64)));
typedef float rf_v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t rf_i16 __attribute__((vector_size(64)));

#define RF_V(c) ((rf_v16){c, c, c, c, c, c, c, c, c, c, c, c, c, c, c, c})

static RF_INLINE rf_v16 rf_vsel(rf_i16 m, rf_v16 a, rf_v16 b) {
    return (rf_v16)((m & (rf_i16)a) | (~m & (rf_i16)b));
}

static RF_INLINE rf_v16 rf_vload(const float *p) { return *(const rf_v16u *)p; }
static RF_INLINE void rf_vstore(float *p, rf_v16 v) { *(rf_v16u *)p = v; }

/* first n (0..16) lanes from p, the rest 0 */
static RF_INLINE rf_v16 rf_vload_n(const float *p, int n) {
    if (n >= 16) return rf_vload(p);
    float t[16] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return rf_vload(t);
}
static RF_INLINE void rf_vstore_n(float *p, rf_v16 v, int n) {
    if (n >= 16) { rf_vstore(p, v); return; }
    float t[16];
    rf_vstore(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
}

static RF_INLINE rf_v16 rf_vexp(rf_v16 x) {
    const rf_v16 hi = RF_V(88.3762626647949f), lo = RF_V(-87.3365447505531f);
    const rf_i16 nan = x != x, over = x > hi, under = x < lo;
    rf_v16 xc = rf_vsel(over, hi, rf_vsel(under, lo, x));
    xc = rf_vsel(nan, RF_V(0.0f), xc);
    const rf_v16 magic = RF_V(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    rf_v16 n = (xc * RF_V(1.44269504088896341f) + magic) - magic;
    rf_v16 r = xc - n * RF_V(0.693359375f);
    r = r - n * RF_V(-2.12194440e-4f);
    rf_v16 p = RF_V(1.9875691500e-4f);
    p = p * r + RF_V(1.3981999507e-3f);
    p = p * r + RF_V(8.3334519073e-3f);
    p = p * r + RF_V(4.1665795894e-2f);
    p = p * r + RF_V(1.6666665459e-1f);
    p = p * r + RF_V(5.0000001201e-1f);
    p = p * (r * r) + r + RF_V(1.0f);
    rf_i16 ni = __builtin_convertvector(n, rf_i16);
    rf_v16 scale = (rf_v16)((ni + 127) << 23);
    rf_v16 y = p * scale;
    y = rf_vsel(over, RF_V(__builtin_inff()), y);
    y = rf_vsel(under, RF_V(0.0f), y);
    return rf_vsel(nan, x, y);
}

static RF_INLINE rf_v16 rf_vsigmoid(rf_v16 x) { return RF_V(1.0f) / (RF_V(1.0f) + rf_vexp(-x)); }

static RF_INLINE rf_v16 rf_vtanh(rf_v16 x) {
    const rf_i16 sign = (rf_i16)x & (rf_i16)RF_V(-0.0f);
    const rf_v16 ax = (rf_v16)((rf_i16)x & ~(rf_i16)RF_V(-0.0f));
    rf_v16 e = rf_vexp(RF_V(-2.0f) * ax);
    rf_v16 t = (RF_V(1.0f) - e) / (RF_V(1.0f) + e);
    t = (rf_v16)((rf_i16)t | sign);
    rf_v16 x2 = x * x;
    rf_v16 small = x + x * x2 * (RF_V(-0.333333333f) + x2 * (RF_V(0.133333333f) + x2 * RF_V(-0.0539682540f)));
    /* NaN: ax < c is false, t is NaN already */
    return rf_vsel(ax < RF_V(0.0625f), small, t);
}

static RF_INLINE rf_v16 rf_vrelu(rf_v16 x) {
    /* x > 0 ? x : 0, and NaN stays NaN */
    return rf_vsel((x > RF_V(0.0f)) | (x != x), x, RF_V(0.0f));
}

/* ---- fused cell updates of one 16-unit block ---- */
static RF_INLINE rf_v16 rf_lstm_block(rf_v16 ai, rf_v16 af, rf_v16 ag, rf_v16 ao, rf_v16 *c) {
    rf_v16 cn = rf_vsigmoid(af) * *c + rf_vsigmoid(ai) * rf_vtanh(ag);
    *c = cn;
    return rf_vsigmoid(ao) * rf_vtanh(cn);
}

static RF_INLINE rf_v16 rf_gru_block(rf_v16 ar, rf_v16 az, rf_v16 axn, rf_v16 ahn, rf_v16 h) {
    rf_v16 r = rf_vsigmoid(ar), z = rf_vsigmoid(az);
    rf_v16 n = rf_vtanh(axn + r * ahn);
    return (RF_V(1.0f) - z) * n + z * h;
}

#endif /* RF_ACT_H */
