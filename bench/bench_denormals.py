"""Do denormal (subnormal) floats slow the C core down? Same layer, normal vs denormal-heavy data.

Cases per cell (RNN tanh, LSTM, GRU; T=100, H=256, batch 1 and 16, one process, same weights):

- normal        x ~ N(0, 1), torch's default weights U(-1/sqrt(H), 1/sqrt(H))
- x denormal    x ~ N(0, 1) * 1e-39: the input projection multiplies and sums subnormals
- W denormal    W_ih and W_hh scaled to ~1e-39 (subnormal), biases normal: every FMA of both products
                takes a subnormal operand and produces subnormal partial sums
- h denormal    W_hh orthogonal (norm preserving), x = 0, no bias, h0 ~ 1e-39: the recurrent state stays
                subnormal for the whole sequence (tanh(z) = z for tiny z), so every step reads and
                writes subnormals (RNN and GRU; LSTM's h does not stay subnormal in this set-up)
- h control     the same weights and x with a normal h0 (~0.5): isolates the cost of the subnormals from
                that of the different weights

Each case reports the median time of `--repeats` calls after warm-up, alternating the cases round by round
so they see the same machine load, and the ratio to the normal case (> 1: denormals are slower). The
fraction of subnormal values in the output state is printed so one can see that the case exercises what it
claims. MXCSR (x86 FTZ/DAZ bits) is read before and after the calls.

    PYTHONPATH=. python bench/bench_denormals.py [--threads N] [--repeats R] [--hidden H] [--T T]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time

import numpy as np

TINY = np.finfo(np.float32).tiny  # smallest normal float32, 1.18e-38


def subnormal_fraction(a: np.ndarray) -> float:
    a = np.abs(np.asarray(a, np.float32))
    return float(np.mean((a > 0) & (a < TINY)))


def mxcsr_reader():
    """A function returning the MXCSR register (x86-64 Linux), or None elsewhere."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        import mmap

        # stmxcsr [rdi]; ret  -- 4 bytes of machine code in an executable page
        code = bytes([0x0F, 0xAE, 0x1F, 0xC3])
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(code)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        fn = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint32))(addr)

        def read() -> int:
            v = ctypes.c_uint32(0)
            fn(ctypes.byref(v))
            return v.value

        read._keep = buf  # type: ignore[attr-defined]
        return read
    except (OSError, ValueError, TypeError):
        return None


def make_cases(rnnfast, cell: str, H: int, T: int, B: int, rng: np.random.Generator):
    cls = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[cell]
    layer = cls(H, H, seed=0)
    base = layer.state_dict()
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    cases = {}

    def variant(sd, xx, h0=None):
        lay = cls(H, H, seed=0)
        lay.load_state_dict(sd)
        if h0 is None:
            return lambda: lay(xx)
        hx = (h0, h0.copy()) if cell == "lstm" else h0
        return lambda: lay(xx, hx)

    cases["normal"] = variant(base, x)
    cases["x denormal"] = variant(base, (x * np.float32(1e-39)).astype(np.float32))
    sd = {k: (v * np.float32(1e-38) if k.startswith("weight") else v).astype(np.float32) for k, v in base.items()}
    cases["W denormal"] = variant(sd, x)
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    sd = {k: np.zeros_like(v) for k, v in base.items()}
    w_hh = np.zeros((G * H, H), np.float32)
    w_hh[(G - 1) * H if cell == "gru" else (2 * H if cell == "lstm" else 0) :][:H] = q.astype(np.float32)
    if cell == "lstm":  # i and f gates open (bias 30: sigmoid = 1), o open: c accumulates g, h = tanh(c)
        for k in ("bias_ih_l0",):
            b = np.zeros(G * H, np.float32)
            b[:H] = 30.0
            b[H : 2 * H] = 30.0
            b[3 * H :] = 30.0
            sd[k] = b
    if cell == "gru":  # z gate half open: h' = 0.5 n + 0.5 h, n = tanh(W_hn h) (reset gate open: b_r = 30)
        b = np.zeros(G * H, np.float32)
        b[:H] = 30.0
        sd["bias_ih_l0"] = b
    sd["weight_hh_l0"] = w_hh
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    cases["h control"] = variant(sd, np.zeros_like(x), h0 * np.float32(0.5))  # same weights, normal state
    cases["h denormal"] = variant(sd, np.zeros_like(x), (h0 * np.float32(1e-39)).astype(np.float32))
    return cases


def run(args) -> int:
    import rnnfast

    rnnfast.set_num_threads(args.threads)
    read_mxcsr = mxcsr_reader()
    before = read_mxcsr() if read_mxcsr else None
    rng = np.random.default_rng(0)
    print(f"# rnnfast {rnnfast.__version__} ({os.path.dirname(rnnfast.__file__)}), numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, threads {args.threads}, T={args.T}, H={args.hidden}")
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
        print(f"# cpu: {model}")
    except OSError:
        pass
    print(f"{'cell':5} {'B':>3} {'case':12} {'median ms':>10} {'min ms':>8} {'ratio':>6} {'min ratio':>9} "
          f"{'subnormal h_n':>14}")
    worst = 1.0
    for cell in args.cells:
        for B in args.batches:
            cases = make_cases(rnnfast, cell, args.hidden, args.T, B, rng)
            fns = list(cases.values())
            outs = [fn() for fn in fns]  # warm-up + the state the case ends in
            for fn in fns:
                fn()
            times = [[] for _ in fns]
            for _ in range(args.repeats):
                for fn, ts in zip(fns, times):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
            ref, ref_min = statistics.median(times[0]), min(times[0])
            for (name, _), ts, o in zip(cases.items(), times, outs):
                h = o[1][0] if cell == "lstm" else o[1]
                med = statistics.median(ts)
                ratio, min_ratio = med / ref, min(ts) / ref_min
                worst = max(worst, min_ratio)
                print(f"{cell:5} {B:>3} {name:12} {1e3 * med:10.3f} {1e3 * min(ts):8.3f} {ratio:6.2f} "
                      f"{min_ratio:9.2f} {subnormal_fraction(h):14.2f}")
    after = read_mxcsr() if read_mxcsr else None
    if before is not None:
        print(f"# MXCSR before 0x{before:04x}, after 0x{after:04x} (FTZ bit 15, DAZ bit 6)")
    print(f"# worst slowdown (min-time ratio): {worst:.2f}x")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"])
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
