"""Attention benchmarks: rnnfast beside PyTorch, in one process, same weights, same threads.

1. Multi-head attention (self-attention, E=512, 8 heads, L=128, batch 1 and 16, batch_first) vs
   torch.nn.MultiheadAttention in eval mode under torch.inference_mode (torch's fused fast path applies
   when need_weights=False). Both need_weights settings are timed.
2. Greedy decoding of a Seq2Seq model (bidirectional GRU encoder, LSTM decoder, Bahdanau additive
   attention; a small (V=1000) and a medium (V=8000) size; no end token so both engines run exactly
   max_len steps) vs the same model in torch with a Python step loop. Reported as generated tokens per
   second (the encoder's time is included for both engines).

Outputs are checked to agree before timing; the engines are timed alternately (one call each per round,
so they see the same machine load); times are medians (min in brackets) after warm-up; ratio =
torch_time / rnnfast_time (> 1: rnnfast is faster).

Both engines in one process means two OpenMP runtimes (torch bundles its own libgomp) plus SciPy's
OpenBLAS pool. With the default OMP_WAIT_POLICY their idle threads spin after every parallel region and
starve whichever engine runs next (measured on a 2-core machine: 10-20x swings in both directions). The
benchmark therefore sets OMP_WAIT_POLICY=PASSIVE for both engines by default (``--wait-policy`` changes
it); ``--threads 1`` removes the interference entirely. SciPy's OpenBLAS workers used to spin ~0.1 s
after each of rnnfast's GEMMs, which slowed torch's next call (MHA at batch 1 read 1.9x instead of
1.2-1.35x); ``import rnnfast`` now sets OPENBLAS_THREAD_TIMEOUT=4, so they sleep (rnnfast/__init__.py).

    python bench/bench_attention.py [--threads N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np


def _interleaved(fns, repeats: int, warmup: int = 2, budget: float = 3.0) -> list[tuple[float, float]]:
    """Time the engines alternately (one call each per round) so that they see the same machine load;
    returns (median, min) seconds per function."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    t_end = time.perf_counter() + budget
    rounds = 0
    while rounds < repeats or (time.perf_counter() < t_end and rounds < 10 * repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        rounds += 1
    return [(statistics.median(ts), min(ts)) for ts in times]


def bench_mha(torch, rnnfast_attention, B: int, L: int, E: int, H: int, need_weights: bool, repeats: int):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    with torch.no_grad():
        m.in_proj_bias.normal_(0, 0.1)
        m.out_proj.bias.normal_(0, 0.1)
    mm = rnnfast_attention.MultiheadAttention.from_torch(m)
    x = torch.randn(B, L, E)
    xn = x.numpy()
    with torch.inference_mode():
        yt, _ = m(x, x, x, need_weights=need_weights)
    yr, _ = mm(xn, xn, xn, need_weights=need_weights)
    err = float(np.max(np.abs(yr - yt.numpy())))
    if not err < 1e-3:
        raise SystemExit(f"MHA outputs disagree: max error {err}")

    def run_torch():
        with torch.inference_mode():
            m(x, x, x, need_weights=need_weights)

    def run_rf():
        mm(xn, xn, xn, need_weights=need_weights)

    t_rf, t_torch = _interleaved([run_rf, run_torch], repeats)
    flops = 2 * B * L * E * E * 4 + 2 * 2 * B * L * L * E  # 4 projections + QK^T and PV
    return t_rf, t_torch, flops, err


def _build_seq2seq(torch, V=8000, I=256, He=256, E=256, A=256, seed=0):
    nn = torch.nn
    torch.manual_seed(seed)
    H = 2 * He

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_emb = nn.Embedding(V, I)
            self.encoder = nn.GRU(I, He, 1, bidirectional=True)
            self.emb = nn.Embedding(V, E)
            self.decoder = nn.LSTM(E + H, H, 1)
            self.Wq, self.Wk, self.v = nn.Linear(H, A), nn.Linear(H, A), nn.Linear(A, 1)
            self.out = nn.Linear(H, V)

        @torch.inference_mode()
        def greedy(self, src, max_len, start=0):
            x = self.src_emb(src).transpose(0, 1)
            mem, h = self.encoder(x)
            mem = mem.transpose(0, 1)
            h = torch.cat([h[0], h[1]], -1)[None]
            c = torch.zeros_like(h)
            kp = self.Wk(mem)
            y = torch.full((src.shape[0],), start)
            toks = []
            for _ in range(max_len):
                e = self.v(torch.tanh(self.Wq(h[-1])[:, None] + kp))[..., 0]
                w = torch.softmax(e, -1)
                ctx = torch.bmm(w[:, None], mem)[:, 0]
                out, (h, c) = self.decoder(torch.cat([self.emb(y), ctx], 1)[None], (h, c))
                y = self.out(out[0]).argmax(1)
                toks.append(y)
            return torch.stack(toks, 1)

    model = Model().eval()
    return model


def bench_greedy(torch, Seq2Seq, B: int, S: int, max_len: int, repeats: int, size: dict):
    model = _build_seq2seq(torch, **size)
    rf = Seq2Seq.from_torch(
        model.encoder,
        model.decoder,
        model.emb,
        model.out,
        attention=("additive", model.Wq, model.Wk, model.v),
        attention_type="bahdanau",
        src_embedding=model.src_emb,
    )
    g = torch.Generator().manual_seed(1)
    src = torch.randint(0, size["V"], (B, S), generator=g)
    srcn = src.numpy()
    want = model.greedy(src, max_len).numpy()
    got = rf.greedy(srcn, max_len=max_len).tokens
    agree = float(np.mean(want == got))
    if agree < 0.9:
        raise SystemExit(f"greedy tokens disagree: {agree:.0%} equal")
    t_rf, t_rf_py, t_torch = _interleaved(
        [
            lambda: rf.greedy(srcn, max_len=max_len),
            lambda: rf.greedy(srcn, max_len=max_len, use_c=False),
            lambda: model.greedy(src, max_len),
        ],
        repeats,
        warmup=1,
    )
    return t_rf, t_rf_py, t_torch, agree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="threads for both engines (default: both defaults)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="fewer cases (batch 1 only)")
    p.add_argument(
        "--wait-policy",
        default="passive",
        choices=["passive", "active", "inherit"],
        help="OMP_WAIT_POLICY for both engines (default passive; see the module docstring)",
    )
    args = p.parse_args(argv)
    if args.wait_policy != "inherit":
        if "torch" in sys.modules or "rnnfast._core" in sys.modules:
            print("# note: OpenMP already loaded, --wait-policy has no effect")
        os.environ["OMP_WAIT_POLICY"] = args.wait_policy.upper()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: nothing to compare against")
        return 0
    import rnnfast
    from rnnfast import attention as A
    from rnnfast.seq2seq import Seq2Seq

    if args.threads:
        rnnfast.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    print(
        f"# rnnfast {rnnfast.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}, {platform.machine()}, cpu: {_cpu_name()}"
    )
    print(
        f"# threads: rnnfast {rnnfast.get_num_threads()}, torch {torch.get_num_threads()}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
    )
    print(f"# load average at start: {_loadavg()} (the timings are interleaved medians; min in brackets)")
    print("\n## MultiheadAttention (self-attention, batch_first), E=512, heads=8, L=128")
    print(
        f"{'batch':>5} {'need_weights':>12} {'rnnfast ms':>17} {'torch ms':>17} {'ratio':>13} "
        f"{'rf GFLOP/s':>10} {'max|err|':>9}"
    )
    for B in (1,) if args.quick else (1, 16):
        for nw in (False, True):
            (rf_med, rf_min), (t_med, t_min), flops, err = bench_mha(torch, A, B, 128, 512, 8, nw, args.repeats)
            print(
                f"{B:>5} {nw!s:>12} {rf_med * 1e3:>8.2f} [{rf_min * 1e3:>6.2f}] {t_med * 1e3:>8.2f} "
                f"[{t_min * 1e3:>6.2f}] {t_med / rf_med:>5.2f} [{t_min / rf_min:>5.2f}] "
                f"{flops / rf_med / 1e9:>10.1f} {err:>9.1e}"
            )
    sizes = {
        "small": {"V": 1000, "I": 64, "He": 128, "E": 64, "A": 128},
        "medium": {"V": 8000, "I": 256, "He": 256, "E": 256, "A": 256},
    }
    print("\n## Greedy decoding: GRU-bi encoder (He), LSTM decoder (2*He), additive attention (A), S=30, 50 tokens")
    print("#  small: V=1000 He=128 E=64 A=128;  medium: V=8000 He=256 E=256 A=256 (encoder time included)")
    print(
        f"{'model':>6} {'batch':>5} {'rnnfast C tok/s':>17} {'rnnfast py-loop':>17} {'torch tok/s':>17} "
        f"{'ratio C/torch':>13} {'same tokens':>11}"
    )
    for name, size in sizes.items():
        for B in (1,) if args.quick else (1, 16):
            steps = 50
            (c_med, c_min), (p_med, p_min), (t_med, t_min), agree = bench_greedy(
                torch, Seq2Seq, B, 30, steps, max(args.repeats // 2, 3), size
            )
            n = B * steps
            print(
                f"{name:>6} {B:>5} {n / c_med:>8.0f} [{n / c_min:>6.0f}] {n / p_med:>8.0f} [{n / p_min:>6.0f}] "
                f"{n / t_med:>8.0f} [{n / t_min:>6.0f}] {t_med / c_med:>5.2f} [{t_min / c_min:>5.2f}] "
                f"{agree:>11.1%}"
            )
    print(f"# load average at end: {_loadavg()}")
    return 0


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
