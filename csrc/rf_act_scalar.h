/* rf_act_scalar.h -- scalar exp/sigmoid/tanh written so that loops over arrays vectorise (shared by the
 * training kernels; the inference kernels use the 16-lane versions of rf_act.h).
 * exp by range reduction x = n ln2 + r, degree-6 polynomial (~2 ulp); rounding by the 1.5*2^23 trick so
 * that plain SSE2 vectorises it. No -ffast-math: NaN propagates, +-inf saturate.
 * tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); an odd polynomial below |x| < 0.0625. */
#ifndef RF_ACT_SCALAR_H
#define RF_ACT_SCALAR_H

#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(RF_NO_CLONES)
#define RF_TCLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RF_TCLONES
#endif

static inline float rf_exp_s(float x) {
    const float hi = 88.0f, lo = -87.0f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    xc = x != x ? 0.0f : xc; /* converting NaN to an integer below would be undefined behaviour */
    const float magic = 12582912.0f;
    float n = (xc * 1.44269504088896341f + magic) - magic;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        float f;
        int32_t i;
    } sc;
    sc.i = ((int32_t)n + 127) << 23;
    float y = p * sc.f;
    y = x > hi ? __builtin_inff() : y;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}

static inline float rf_sigmoid_s(float x) { return 1.0f / (1.0f + rf_exp_s(-x)); }

static inline float rf_tanh_s(float x) {
    const float ax = __builtin_fabsf(x);
    const float e = rf_exp_s(-2.0f * ax);
    float t = (1.0f - e) / (1.0f + e);
    const float x2 = x * x;
    const float small = ax * (1.0f + x2 * (-0.333333333f + x2 * (0.133333333f + x2 * -0.0539682540f)));
    t = ax < 0.0625f ? small : t;
    t = x < 0.0f ? -t : t;
    return x != x ? x : t;
}

#endif /* RF_ACT_SCALAR_H */
