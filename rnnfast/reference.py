"""The executable specification: plain float64 NumPy, written for clarity, never for speed.

Every kernel of the C core is tested against these functions. Gate order and parameter names are
PyTorch's (see the README's gate-order table)::

    RNN   h' = act(W_ih x + b_ih + W_hh h + b_hh)                  act = tanh or relu
    LSTM  i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh)        rows of W: [i; f; g; o]
          c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
          h' = sigmoid(o) * tanh(c');  with proj_size: h' = W_hr h'
    GRU   r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})   rows of W: [r; z; n]
          reset_after=True  (PyTorch, cuDNN, Keras default):
              n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
          reset_after=False (the original GRU of Cho et al. 2014):
              n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
          h' = (1 - z) * n + z * h

Shape glossary: T=time B=batch I=input H=hidden P=projection G=gates D=directions L=layers.
"""

from __future__ import annotations

import numpy as np

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def sigmoid(x):
    # exp of a large positive argument overflows to inf, 1/(1+inf) = 0: correct limit, no NaN.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


# ONNX's activation functions (operator spec of RNN/LSTM/GRU), with (alpha, beta) where they take them.
ONNX_ACTIVATIONS = {
    "sigmoid": lambda x, a, b: sigmoid(x),
    "tanh": lambda x, a, b: np.tanh(x),
    "relu": lambda x, a, b: np.maximum(x, 0.0),
    "affine": lambda x, a, b: a * x + b,
    "leakyrelu": lambda x, a, b: np.where(x >= 0, x, a * x),
    "thresholdedrelu": lambda x, a, b: np.where(x > a, x, 0.0),
    "scaledtanh": lambda x, a, b: a * np.tanh(b * x),
    "hardsigmoid": lambda x, a, b: np.clip(a * x + b, 0.0, 1.0),
    "elu": lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0))),
    "softsign": lambda x, a, b: x / (1.0 + np.abs(x)),
    "softplus": lambda x, a, b: np.logaddexp(0.0, x),
}


def onnx_act(spec):
    """(name, alpha, beta) -> function of x (ONNX semantics)."""
    name, alpha, beta = spec
    f = ONNX_ACTIVATIONS[name.lower()]
    return lambda x: f(x, alpha, beta)


def _affine(x, w, b):
    y = x @ w.T
    return y if b is None else y + b


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One vanilla RNN step. x: (B, I), h: (B, H) -> (B, H)."""
    a = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    if nonlinearity == "tanh":
        return np.tanh(a)
    if nonlinearity == "relu":
        return np.maximum(a, 0.0)  # np.maximum propagates NaN, like torch.relu
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One LSTM step. x: (B, I), h: (B, P or H), c: (B, H) -> (h', c')."""
    a = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    i, f, g, o = np.split(a, 4, axis=1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h_new = sigmoid(o) * np.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.T
    return h_new, c_new


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, reset_after=True):
    """One GRU step. x: (B, I), h: (B, H) -> (B, H)."""
    H = h.shape[1]
    ax = _affine(x, w_ih, b_ih)
    b_hh = np.zeros(3 * H) if b_hh is None else b_hh
    ah_rz = h @ w_hh[: 2 * H].T + b_hh[: 2 * H]
    r = sigmoid(ax[:, :H] + ah_rz[:, :H])
    z = sigmoid(ax[:, H : 2 * H] + ah_rz[:, H:])
    w_hn, b_hn = w_hh[2 * H :], b_hh[2 * H :]
    if reset_after:
        n = np.tanh(ax[:, 2 * H :] + r * (h @ w_hn.T + b_hn))
    else:
        n = np.tanh(ax[:, 2 * H :] + (r * h) @ w_hn.T + b_hn)
    return (1.0 - z) * n + z * h


def onnx_cell(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, acts, clip=None, peep=None, input_forget=False, reset_after=True):
    """One step with ONNX's extensions, in canonical gate order (see the ONNX RNN/LSTM/GRU operators).

    acts: the functions f (gates), g (candidate), h (LSTM output); clip: |pre-activation| <= clip;
    peep: LSTM peepholes [p_i; p_f; p_o] (3H,); input_forget: LSTM f = 1 - i.
    """
    H = w_hh.shape[1]
    cl = (lambda v: v) if clip is None else (lambda v: np.clip(v, -clip, clip))
    f = acts[0]
    ax = _affine(x, w_ih, b_ih)
    b_hh = np.zeros(w_hh.shape[0]) if b_hh is None else b_hh
    if mode == "LSTM":
        a = ax + h @ w_hh.T + b_hh
        ai, af, ag, ao = np.split(a, 4, axis=1)
        if peep is not None:
            ai = ai + peep[:H] * c
            af = af + peep[H : 2 * H] * c
        i = f(cl(ai))
        fg = 1.0 - i if input_forget else f(cl(af))
        c_new = fg * c + i * acts[1](cl(ag))
        if peep is not None:
            ao = ao + peep[2 * H :] * c_new
        return f(cl(ao)) * acts[2](c_new), c_new
    if mode == "GRU":
        ah_rz = h @ w_hh[: 2 * H].T + b_hh[: 2 * H]
        r = f(cl(ax[:, :H] + ah_rz[:, :H]))
        z = f(cl(ax[:, H : 2 * H] + ah_rz[:, H:]))
        if reset_after:
            n = acts[1](cl(ax[:, 2 * H :] + r * (h @ w_hh[2 * H :].T + b_hh[2 * H :])))
        else:
            n = acts[1](cl(ax[:, 2 * H :] + (r * h) @ w_hh[2 * H :].T + b_hh[2 * H :]))
        return (1.0 - z) * n + z * h, None
    return f(cl(ax + h @ w_hh.T + b_hh)), None


def param_names(mode, num_layers=1, bidirectional=False, bias=True, proj_size=0):
    """The PyTorch state_dict names of a recurrent stack, in PyTorch's order."""
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
            if mode == "LSTM" and proj_size > 0:
                names.append(f"weight_hr_l{layer}{suffix}")
    return names


def recurrent(
    mode,
    x,
    params,
    num_layers=1,
    bidirectional=False,
    h0=None,
    c0=None,
    lengths=None,
    reset_after=True,
    proj_size=0,
    batch_first=False,
    activations=None,
    clip=None,
    input_forget=False,
):
    """Run a whole recurrent stack, with PyTorch's semantics (and ONNX's extensions on request).

    Parameters
    ----------
    mode : {"RNN_TANH", "RNN_RELU", "LSTM", "GRU"}
    x : (T, B, I), or (B, T, I) when batch_first
    params : dict of arrays named like ``torch.nn.LSTM.state_dict()``; biases absent means bias=False
    h0 : (L*D, B, P or H) or None;  c0 : (L*D, B, H) or None (LSTM only)
    lengths : (B,) ints in [0, T] or None. Sequence b runs only steps t < lengths[b]; its outputs past
        the end are zero, its final state is the one of its last valid step (for the reverse direction,
        the one after step 0), and the reverse direction starts at its own last valid step.
        A zero-length sequence returns its initial state.
    activations, clip, input_forget : ONNX extensions (see onnx_cell); activations is one list of
        (name, alpha, beta) per direction. LSTM peepholes come as params "weight_peep_l{k}[_reverse]".

    Returns
    -------
    out : (T, B, D*(P or H)) (or batch-first), h_n : (L*D, B, P or H), c_n : (L*D, B, H) or None
    """
    x = np.asarray(x, dtype=np.float64)
    if batch_first:
        x = x.transpose(1, 0, 2)
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[1] if not proj_size else params["weight_hr_l0"].shape[1]
    Hout = proj_size if proj_size else H
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    h0 = np.zeros((num_layers * D, B, Hout)) if h0 is None else np.asarray(h0, dtype=np.float64)
    if mode == "LSTM":
        c0 = np.zeros((num_layers * D, B, H)) if c0 is None else np.asarray(c0, dtype=np.float64)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    h_n = np.zeros((num_layers * D, B, Hout))
    c_n = np.zeros((num_layers * D, B, H)) if mode == "LSTM" else None

    ext = activations is not None or clip is not None or input_forget or any("peep" in k for k in p)
    if ext and activations is None:
        default = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}.get(mode, [mode[4:].lower()])
        activations = [[(a, 0.0, 0.0) for a in default]] * D
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = p[f"weight_ih_{sfx}"], p[f"weight_hh_{sfx}"]
            b_ih, b_hh = p.get(f"bias_ih_{sfx}"), p.get(f"bias_hh_{sfx}")
            k = layer * D + d
            out = np.zeros((T, B, Hout))
            for b in range(B):  # one sequence at a time: the plainest statement of variable lengths
                h = h0[k, b : b + 1]
                c = c0[k, b : b + 1] if mode == "LSTM" else None
                steps = range(lengths[b])
                for t in reversed(steps) if d else steps:
                    xt = layer_in[t, b : b + 1]
                    if ext:
                        acts = [onnx_act(a) for a in activations[d]]
                        h, c = onnx_cell(
                            "LSTM" if mode == "LSTM" else mode[:3],
                            xt,
                            h,
                            c,
                            w_ih,
                            w_hh,
                            b_ih,
                            b_hh,
                            acts,
                            clip,
                            p.get(f"weight_peep_{sfx}"),
                            input_forget,
                            reset_after,
                        )
                    elif mode == "LSTM":
                        h, c = lstm_cell(xt, h, c, w_ih, w_hh, b_ih, b_hh, p.get(f"weight_hr_{sfx}"))
                    elif mode == "GRU":
                        h = gru_cell(xt, h, w_ih, w_hh, b_ih, b_hh, reset_after)
                    else:
                        h = rnn_cell(xt, h, w_ih, w_hh, b_ih, b_hh, mode[4:].lower())
                    out[t, b] = h[0]
                h_n[k, b] = h[0]
                if mode == "LSTM":
                    c_n[k, b] = c[0]
            outs.append(out)
        layer_in = np.concatenate(outs, axis=2)
    out = layer_in.transpose(1, 0, 2) if batch_first else layer_in
    return out, h_n, c_n
