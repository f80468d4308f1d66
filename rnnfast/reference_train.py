"""Float64 NumPy references for training: finite-difference gradients of a recurrent stack (through the
executable specification :func:`rnnfast.reference.recurrent`), losses, clipping and optimizer steps.

Slow and plain on purpose: tests check the float32 C core against these, and these against PyTorch.

Shapes: T=time B=batch I=input H=hidden P=proj_size or H, D=directions L=layers V=vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import reference


def stack_objective(
    mode: str,
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    w_out: np.ndarray,
    w_hn: np.ndarray,
    w_cn: np.ndarray | None = None,
    h0=None,
    c0=None,
    lengths=None,
    num_layers: int = 1,
    bidirectional: bool = False,
    reset_after: bool = True,
    proj_size: int = 0,
) -> float:
    """The scalar J = sum(w_out * out) + sum(w_hn * h_n) (+ sum(w_cn * c_n)) of a float64 forward.

    Its gradient w.r.t. out / h_n / c_n is exactly (w_out, w_hn, w_cn): the d_out, d_hn, d_cn that a
    backward pass is given. x (T, B, I) time-major.
    """
    out, h_n, c_n = reference.recurrent(
        mode, x, params, num_layers, bidirectional, h0, c0, lengths, reset_after, proj_size
    )
    j = float(np.sum(w_out * out) + np.sum(w_hn * h_n))
    if c_n is not None and w_cn is not None:
        j += float(np.sum(w_cn * c_n))
    return j


def numerical_grads(
    mode: str,
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    w_out: np.ndarray,
    w_hn: np.ndarray,
    w_cn: np.ndarray | None = None,
    h0=None,
    c0=None,
    lengths=None,
    num_layers: int = 1,
    bidirectional: bool = False,
    reset_after: bool = True,
    proj_size: int = 0,
    eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    """Central finite differences (float64) of :func:`stack_objective` w.r.t. every parameter and x, h0,
    c0 (keys "x", "h0", "c0" when given). Error O(eps^2) ~ 1e-10 relative on tiny shapes."""
    p64 = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    args: dict[str, Any] = {"x": np.array(x, dtype=np.float64)}
    if h0 is not None:
        args["h0"] = np.array(h0, dtype=np.float64)
    if c0 is not None:
        args["c0"] = np.array(c0, dtype=np.float64)

    def J() -> float:
        return stack_objective(
            mode,
            args["x"],
            p64,
            w_out,
            w_hn,
            w_cn,
            args.get("h0"),
            args.get("c0"),
            lengths,
            num_layers,
            bidirectional,
            reset_after,
            proj_size,
        )

    grads: dict[str, np.ndarray] = {}
    for table in (p64, args):
        for name, arr in table.items():
            g = np.zeros_like(arr)
            flat, gflat = arr.reshape(-1), g.reshape(-1)
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + eps
                jp = J()
                flat[i] = old - eps
                jm = J()
                flat[i] = old
                gflat[i] = (jp - jm) / (2 * eps)
            grads[name] = g
    return grads


# ---- losses (mean reductions, as torch) ----
def cross_entropy(
    logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None, ignore_index: int = -100
) -> tuple[float, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    V = z.shape[-1]
    z2, t = z.reshape(-1, V), np.asarray(targets).reshape(-1)
    keep = t != ignore_index
    if mask is not None:
        keep &= np.asarray(mask).reshape(-1) != 0
    lse = np.log(np.exp(z2 - z2.max(1, keepdims=True)).sum(1)) + z2.max(1)
    n = int(keep.sum())
    rows = np.nonzero(keep)[0]
    loss = float((lse[rows] - z2[rows, t[rows]]).sum() / n) if n else 0.0
    d = np.exp(z2 - lse[:, None])
    d[rows, t[rows]] -= 1.0
    d[~keep] = 0.0
    d = d / n if n else d * 0.0
    return loss, d.reshape(z.shape)


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    return float(np.mean((p - t) ** 2)), 2.0 * (p - t) / max(p.size, 1)


def bce_with_logits(logits: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = np.asarray(logits, np.float64), np.asarray(target, np.float64)
    loss = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    return float(loss.mean()), (1.0 / (1.0 + np.exp(-x)) - y) / max(x.size, 1)


# ---- clipping and optimizer steps (float64, torch.optim's rules) ----
def clip_grad_norm(grads: list[np.ndarray], max_norm: float) -> tuple[list[np.ndarray], float]:
    total = float(np.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads)))
    coef = min(1.0, max_norm / (total + 1e-6))
    return [np.asarray(g, np.float64) * coef for g in grads], total


def sgd(p, g, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """One step; returns (new p, new buf). buf None = first step."""
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    d = g + weight_decay * p
    if momentum:
        buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def adam(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """One Adam/AdamW step (step >= 1); returns (p, m, v)."""
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    if decoupled:
        p = p * (1 - lr * weight_decay)
    elif weight_decay:
        g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    mhat = m / (1 - beta1**step)
    vhat = v / (1 - beta2**step)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v
