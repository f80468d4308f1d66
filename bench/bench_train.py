"""One training step of a character language model, rnnfast vs PyTorch (CPU), in one process.

    Embedding(96 -> 64) -> LSTM or GRU (hidden 512) -> Linear(512 -> 96), batch 32, T = 100,
    per-step softmax cross-entropy, backward through time, clip_grad_norm_(1.0), Adam(lr=1e-3).

Both start from the same weights and data; the losses and gradient norms of the first step are checked
to agree before timing. Reports the median of --repeats steps after --warmup steps, and the ratio.

    python bench/bench_train.py [--cell lstm gru] [--threads N] [--repeats 7]

On a machine shared with other jobs use --threads 1: with 2 threads both libraries lose several-fold
to contention (per-step GEMMs are small).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import rnnfast
from rnnfast import models, train


def build(cell: str, V: int, E: int, H: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, E)
            self.rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(E, H)
            self.fc = torch.nn.Linear(H, V)

        def forward(self, x):
            y, _ = self.rnn(self.emb(x))
            return self.fc(y)

    tnet = Net()
    rnn = (rnnfast.LSTM if cell == "lstm" else rnnfast.GRU)(E, H)
    model = models.Sequential({"emb": models.Embedding(V, E), "rnn": rnn, "fc": models.Linear(H, V)})
    model.load_state_dict({k: v.detach().numpy() for k, v in tnet.state_dict().items()})
    return tnet, model


def torch_step(tnet, opt, x, y, V):
    import torch

    opt.zero_grad()
    logits = tnet(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(tnet.parameters(), 1.0)
    opt.step()
    return float(loss), float(norm)


def rf_step(net, opt, x, y):
    logits = net.forward(x)
    loss, d = train.cross_entropy(logits, y)
    net.zero_grad()
    net.backward(d)
    norm = train.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    return loss, norm


def step_flops(cell: str, V: int, E: int, H: int, B: int, T: int) -> float:
    """GEMM FLOPs of one step: forward 2*N*G*H*(I+H), backward twice that (dx, dW_ih, dh, dW_hh); Linear 6*N*H*V."""
    G, N = (4 if cell == "lstm" else 3), B * T
    return 6.0 * N * G * H * (E + H) + 6.0 * N * H * V


def sgemm_peak(threads: int) -> float:
    """GFLOP/s of one large SGEMM through SciPy's BLAS (the ceiling of this machine for this code)."""
    from scipy.linalg.blas import sgemm

    a = np.asfortranarray(np.random.default_rng(0).random((1024, 1024), dtype=np.float32))
    sgemm(1.0, a, a)
    t0 = time.perf_counter()
    for _ in range(5):
        sgemm(1.0, a, a)
    return 5 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9


def timeit(fn, warmup: int, repeats: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    cold = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), cold


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None, help="threads for both (default: all cores)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    import torch

    V, E, H, B, T = 96, 64, args.hidden, args.batch, args.seq
    nt = args.threads or os.cpu_count() or 1
    torch.set_num_threads(nt)
    rnnfast.set_num_threads(nt)
    print(
        f"# torch {torch.__version__}, rnnfast {rnnfast.__version__}, numpy {np.__version__}, threads {nt}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
    )
    print(f"# step: Embedding({V},{E}) -> RNN(hidden {H}) -> Linear({H},{V}), B={B}, T={T}, xent, clip 1.0, Adam")
    peak = sgemm_peak(nt)
    print(f"# SGEMM 1024^3 through SciPy's BLAS: {peak:.1f} GFLOP/s; load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for cell in args.cell:
        tnet, model = build(cell, V, E, H)
        net = train.Trainable(model)
        topt = torch.optim.Adam(tnet.parameters(), lr=1e-3)
        ropt = train.Adam(net.parameters(), lr=1e-3)
        lt, nt_ = torch_step(tnet, topt, xt, yt, V)
        lr_, nr = rf_step(net, ropt, x, y)
        agree = abs(lt - lr_) <= 1e-4 * abs(lt) and abs(nt_ - nr) <= 1e-3 * abs(nt_)
        print(
            f"{cell}: first step loss torch {lt:.6f} rnnfast {lr_:.6f}; grad norm torch {nt_:.6f} "
            f"rnnfast {nr:.6f} -> {'agree' if agree else 'DISAGREE'}"
        )
        t_torch, c_torch = timeit(lambda t=tnet, o=topt: torch_step(t, o, xt, yt, V), args.warmup, args.repeats)
        t_rf, c_rf = timeit(lambda n=net, o=ropt: rf_step(n, o, x, y), args.warmup, args.repeats)
        fl = step_flops(cell, V, E, H, B, T)
        print(
            f"{cell}: torch {t_torch * 1e3:8.1f} ms/step   rnnfast {t_rf * 1e3:8.1f} ms/step   "
            f"speed-up x{t_torch / t_rf:.2f}   rnnfast {fl / t_rf / 1e9:.1f} GFLOP/s "
            f"({100 * fl / t_rf / 1e9 / peak:.0f}% of SGEMM)   "
            f"(first call: torch {c_torch * 1e3:.0f} ms, rnnfast {c_rf * 1e3:.0f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
