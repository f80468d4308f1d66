/* rf_train.h -- training in the C core: forward with a cache, backpropagation through time, losses,
 * gradient clipping and optimizers. Public (included by rnnfast/_train.pyx).
 *
 * Shape glossary: T=time B=batch I=input (I_0 = I, I_l = D*P for l > 0) H=hidden
 *                 P=projection (LSTM proj_size, else P=H) G=gates (RNN 1, LSTM 4, GRU 3)
 *                 D=directions L=layers N=T*B rows. Row-major float32 everywhere.
 *
 * Recurrent stacks (canonical gate order of PyTorch; a = pre-activation, ' = derivative):
 *   RNN   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)                       act = tanh | relu
 *   LSTM  [i f g o] = [sig sig tanh sig](W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
 *         c_t = f c_{t-1} + i g,  m_t = o tanh(c_t),  h_t = m_t (or W_hr m_t with proj_size)
 *   GRU   r, z = sig(W_i{r,z} x_t + b_i{r,z} + W_h{r,z} h_{t-1} + b_h{r,z})
 *         reset_after=1: n = tanh(W_in x_t + b_in + r (W_hn h_{t-1} + b_hn))
 *         reset_after=0: n = tanh(W_in x_t + b_in + W_hn (r h_{t-1}) + b_hn)
 *         h_t = (1 - z) n + z h_{t-1}
 * Backward through time (per step, in reverse processing order; dh accumulates d_out_t):
 *   LSTM  dm = dh (or dh W_hr), do = dm tanh(c), dc += dm o (1 - tanh^2 c), di = dc g, dg = dc i,
 *         df = dc c_{t-1}, dc_{t-1} = dc f;  da = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]
 *   GRU   dn = dh (1-z), dz = dh (h_{t-1} - n), da_n = dn (1-n^2), da_z = dz z(1-z),
 *         reset_after: dr = da_n (W_hn h + b_hn); the hidden-side pre-activation of n gets da_n r
 *         reset_after=0: drh = da_n W_hn, dr = drh h_{t-1}, dh_{t-1} gets drh r
 *   dh_{t-1} = da_h W_hh (+ dh z for GRU);  dW_ih = sum_t da_t^T x_t,  dW_hh = sum_t da_h,t^T h_{t-1},
 *   dW_hr = sum_t dh_t^T m_t,  dx_t = da_t W_ih,  db_ih = sum da,  db_hh = sum da_h.
 * Variable lengths: sequence b runs steps t < lengths[b] (the reverse direction starts at its own last
 * step); outside them outputs are 0, the state is carried unchanged and so is its gradient.
 * Truncated BPTT: run chunks, carry h_n/c_n as the next h0/c0 and pass d_hn = d_cn = NULL (zero) to cut.
 *
 * Only PyTorch semantics (desc->ext == NULL) and time-major io (batch_first == 0) are trained here;
 * the Python layer transposes batch-first data.
 */
#ifndef RF_TRAIN_H
#define RF_TRAIN_H

#include "rnnfast.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Weights of one (layer, direction) for training: PyTorch's parameters, not pre-summed. */
typedef struct {
    const float *w_ih; /* (G*H, I_l) */
    const float *w_hh; /* (G*H, P) */
    const float *b_ih; /* (G*H) or NULL (bias=False) */
    const float *b_hh; /* (G*H) or NULL */
    const float *w_hr; /* (P, H) LSTM with proj_size, else NULL */
} rf_train_weights;

/* Gradients of one (layer, direction): overwritten (not accumulated) by rf_train_backward.
 * Any pointer may be NULL when that gradient is not wanted (b_* must be NULL without bias). */
typedef struct {
    float *w_ih; /* (G*H, I_l) */
    float *w_hh; /* (G*H, P) */
    float *b_ih; /* (G*H) */
    float *b_hh; /* (G*H) */
    float *w_hr; /* (P, H) */
} rf_train_grads;

/* Bytes of the cache that rf_train_forward fills and rf_train_backward reads (0 = overflow). */
size_t rf_train_cache_size(const rf_rnn_desc *d, int T, int B);
/* Bytes of workspace rf_train_backward needs (0 = overflow). */
size_t rf_train_workspace_size(const rf_rnn_desc *d, int T, int B);

/* Forward of the whole stack, keeping what backward needs in cache (64-byte aligned, at least
 * rf_train_cache_size bytes). io->batch_first must be 0. Outputs as rf_rnn_forward. */
rf_status rf_train_forward(const rf_rnn_desc *d, const rf_train_weights *w, /* L*D entries */
                           const rf_rnn_io *io, void *cache, size_t cache_size, int n_threads, char *err);

/* Backward of the stack. io must be the one given to rf_train_forward (x, lengths, h0, c0 are read).
 * d_out (T, B, D*P) or NULL (zero), d_hn (L*D, B, P) or NULL, d_cn (L*D, B, H) or NULL.
 * Outputs (each may be NULL): dx (T, B, I), dh0 (L*D, B, P), dc0 (L*D, B, H); g: L*D entries. */
rf_status rf_train_backward(const rf_rnn_desc *d, const rf_train_weights *w, const rf_rnn_io *io,
                            const void *cache, size_t cache_size, const float *d_out, const float *d_hn,
                            const float *d_cn, float *dx /*out*/, float *dh0 /*out*/, float *dc0 /*out*/,
                            const rf_train_grads *g /*out*/, void *ws, size_t ws_size, int n_threads,
                            char *err);

/* ---- Linear and Embedding ---- */
/* y (N, O) = x (N, I) . W^T (O, I) + b (O or NULL) */
rf_status rf_linear_forward(int N, int I, int O, const float *x, const float *w, const float *b,
                            float *y /*out*/, char *err);
/* dx (N, I) = dy W; dw (O, I) = dy^T x; db (O) = sum_rows dy. Each output may be NULL. */
rf_status rf_linear_backward(int N, int I, int O, const float *x, const float *w, const float *dy,
                             float *dx /*out*/, float *dw /*out*/, float *db /*out*/, char *err);
/* y (N, E) = W[idx] with W (V, E); idx in [0, V) */
rf_status rf_embedding_forward(int N, int V, int E, const int64_t *idx, const float *w, float *y /*out*/,
                               char *err);
/* dw (V, E) = scatter-add of dy rows (overwritten); rows with idx == padding_idx (>= 0) are skipped */
rf_status rf_embedding_backward(int N, int V, int E, const int64_t *idx, const float *dy, int64_t padding_idx,
                                float *dw /*out*/, char *err);

/* ---- Losses (mean over the counted rows/elements; gradients of that mean) ---- */
/* Softmax cross-entropy of logits (N, V) against targets (N). Rows with target == ignore_index or
 * mask[row] == 0 (mask may be NULL) are skipped. loss = sum -log softmax(logits)[target] / count
 * (0 if count == 0); dlogits (N, V) or NULL; *count_out (may be NULL) = number of counted rows. */
rf_status rf_softmax_xent(int N, int V, const float *logits, const int64_t *targets, const uint8_t *mask,
                          int64_t ignore_index, double *loss /*out*/, float *dlogits /*out*/,
                          int64_t *count_out /*out*/, int n_threads, char *err);
/* Mean squared error over n elements; dpred may be NULL. */
rf_status rf_mse(size_t n, const float *pred, const float *target, double *loss /*out*/,
                 float *dpred /*out*/, char *err);
/* Binary cross-entropy with logits (torch's stable form), mean over n; dlogits may be NULL. */
rf_status rf_bce_logits(size_t n, const float *logits, const float *target, double *loss /*out*/,
                        float *dlogits /*out*/, char *err);

/* ---- Clipping (over a list of k gradient arrays, in place) ---- */
/* Global norm (norm_type 2, or <= 0 for max-abs "inf"); scales by max_norm / (norm + 1e-6) when that
 * is < 1 (PyTorch's rule). *total_norm = the norm before clipping. */
rf_status rf_clip_grad_norm(int k, float *const *grads, const size_t *sizes, double max_norm,
                            double norm_type, double *total_norm /*out*/, char *err);
rf_status rf_clip_grad_value(int k, float *const *grads, const size_t *sizes, float clip_value, char *err);

/* ---- Optimizers (in place, one parameter array at a time; PyTorch's exact update rules) ---- */
/* SGD: g' = g + wd p; buf = first ? g' : momentum buf + (1 - dampening) g'; step = nesterov ?
 * g' + momentum buf : buf (momentum == 0: step = g'); p -= lr step. maximize: g -> -g.
 * buf (n) is needed when momentum != 0. */
rf_status rf_sgd_step(size_t n, float *p, const float *g, float *buf, double lr, double momentum,
                      double dampening, double weight_decay, int nesterov, int maximize, int first, char *err);
/* Adam (decoupled == 0) / AdamW (decoupled == 1), step = t >= 1 (already incremented).
 * AdamW: p *= 1 - lr wd; Adam: g' = g + wd p. m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
 * amsgrad: vmax = max(vmax, v) used for v. p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
rf_status rf_adam_step(size_t n, float *p, const float *g, float *m, float *v, float *vmax, double lr,
                       double beta1, double beta2, double eps, double weight_decay, int decoupled, int amsgrad,
                       int maximize, int64_t step, char *err);

#ifdef __cplusplus
}
#endif
#endif /* RF_TRAIN_H */
