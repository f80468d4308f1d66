"""Run every row of issue 3's target table with the ``rnnfast bench`` harness and write a markdown table.

    python bench/run_targets.py                       # all rows, ~3-6 minutes on 2 cores
    python bench/run_targets.py --budget 0.5 --out bench/results/targets.md --json bench/results/targets.json

Rows (2 threads, T=100, input size = hidden size, as the issue states):

=========================================  ================================================================
batch 1, LSTM/GRU/RNN, H = 256, 512, 1024  rnnfast >= 1.5x faster than the faster of torch and onnxruntime
batch 64, LSTM/GRU/RNN, H = 512            >= 1.1x faster than the faster peer and >= 85 % of SGEMM peak
streaming, one step per call, B=1, H=256   per-call time >= 3x below torch's (one row per cell)
1 vs 2 threads, batch 64, H = 512          rnnfast speed-up >= 1.7x (one row per cell)
=========================================  ================================================================

A row whose outputs disagree (or whose engine raised) fails whatever its times. The exit status is 0 when
every row passes, 1 otherwise; the table is written either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "rnnfast")):  # run from a checkout: use its (in-place built) package
    sys.path.insert(0, _ROOT)

from rnnfast import benchmark  # noqa: E402  (after the sys.path line above)
from rnnfast.benchmark import Case  # noqa: E402

CELLS = ("lstm", "gru", "rnn")
BATCH1_HIDDEN = (256, 512, 1024)
BATCH64_HIDDEN = 512
STREAM_HIDDEN = 256
T = 100

BATCH1_RATIO = 1.5
BATCH64_RATIO = 1.1
BATCH64_PEAK = 85.0
STREAM_RATIO = 3.0
SPEEDUP = 1.7


def target_cases(threads: int = 2, cells: tuple = CELLS) -> list[Case]:
    cases = []
    for cell in cells:
        for h in BATCH1_HIDDEN:
            cases.append(Case(cell, h, batch=1, seq_len=T, threads=threads, name="batch1"))
    for cell in cells:
        cases.append(Case(cell, BATCH64_HIDDEN, batch=64, seq_len=T, threads=threads, name="batch64"))
        # the 1-thread half of the speed-up row: rnnfast only (the target is rnnfast's own scaling)
        cases.append(Case(cell, BATCH64_HIDDEN, batch=64, seq_len=T, threads=1, peers=(), name="batch64-1thread"))
    for cell in cells:
        cases.append(Case(cell, STREAM_HIDDEN, batch=1, seq_len=T, threads=threads, mode="streaming", name="streaming"))
    return cases


def _find(rows: list[dict], engine: str, **match: Any) -> dict | None:
    for r in rows:
        if r["engine"] == engine and all(r[k] == v for k, v in match.items()):
            return r
    return None


def _ms(r: dict | None) -> str:
    if r is None or r["median_s"] is None:
        return "-" if r is None else r["status"]
    return f"{r['median_s'] * 1e3:.3f}"


def _min_ratio(rf: dict, peer: dict | None) -> str:
    """Ratio of the fastest calls: less sensitive than the median to a neighbour's bursts."""
    if peer is None or not peer.get("min_s") or not rf.get("min_s"):
        return ""
    return f"; min-time ratio {peer['min_s'] / rf['min_s']:.2f}x"


def _agree(rows: list[dict | None]) -> tuple[bool, str]:
    bad = [f"{r['engine']}: {r['status']} ({r['note']})" for r in rows if r and r["status"] in ("failed", "error")]
    return (not bad), "; ".join(bad)


def evaluate(report: dict, threads: int) -> list[dict]:
    """One entry per target row: what was measured and whether it meets the target."""
    rows = report["rows"]
    out = []

    def entry(
        case: str, target: str, measured: str, passed: bool | None, engines: list[dict | None], **extra: Any
    ) -> None:
        ok, why = _agree(engines)
        if not ok:
            passed, measured = False, f"{measured}; {why}"
        by = {e: _find([r for r in engines if r], e) for e in benchmark.ENGINE_ORDER}
        out.append(
            {
                "case": case,
                "target": target,
                "measured": measured,
                "pass": passed,
                "ms": {e: _ms(r) for e, r in by.items()},
                **extra,
            }
        )

    for cell in CELLS:
        for h in BATCH1_HIDDEN:
            m = {"cell": cell, "hidden_size": h, "batch": 1, "threads": threads, "mode": "sequence"}
            rf = _find(rows, "rnnfast", **m)
            if rf is None:
                continue
            ratio = rf["ratio_vs_faster_peer"]
            engines = [rf, _find(rows, "torch", **m), _find(rows, "onnxruntime", **m)]
            peer = _find(rows, rf["faster_peer"], **m) if rf["faster_peer"] else None
            entry(
                f"{cell.upper()} B=1 H={h}",
                f">= {BATCH1_RATIO}x faster peer",
                "no peer ran" if ratio is None else f"{ratio:.2f}x (vs {rf['faster_peer']}{_min_ratio(rf, peer)})",
                None if ratio is None else ratio >= BATCH1_RATIO,
                engines,
                ratio=ratio,
            )
    for cell in CELLS:
        m = {"cell": cell, "hidden_size": BATCH64_HIDDEN, "batch": 64, "threads": threads, "mode": "sequence"}
        rf = _find(rows, "rnnfast", **m)
        if rf is None:
            continue
        ratio, pct = rf["ratio_vs_faster_peer"], rf["pct_peak"]
        engines = [rf, _find(rows, "torch", **m), _find(rows, "onnxruntime", **m)]
        peer = _find(rows, rf["faster_peer"], **m) if rf["faster_peer"] else None
        measured = "no peer ran" if ratio is None else f"{ratio:.2f}x (vs {rf['faster_peer']}{_min_ratio(rf, peer)})"
        measured += "" if pct is None else f", {pct:.0f}% of SGEMM peak"
        passed = None if ratio is None or pct is None else (ratio >= BATCH64_RATIO and pct >= BATCH64_PEAK)
        entry(
            f"{cell.upper()} B=64 H={BATCH64_HIDDEN}",
            f">= {BATCH64_RATIO}x faster peer and >= {BATCH64_PEAK:.0f}% SGEMM peak",
            measured,
            passed,
            engines,
            ratio=ratio,
            pct_peak=pct,
        )
    for cell in CELLS:
        m = {"cell": cell, "hidden_size": STREAM_HIDDEN, "batch": 1, "threads": threads, "mode": "streaming"}
        rf = _find(rows, "rnnfast", **m)
        if rf is None:
            continue
        ratio = rf["ratio_vs"].get("torch")
        engines = [rf, _find(rows, "torch", **m), _find(rows, "onnxruntime", **m)]
        entry(
            f"{cell.upper()} streaming B=1 H={STREAM_HIDDEN} (ms per call)",
            f">= {STREAM_RATIO}x below torch",
            "torch did not run"
            if ratio is None
            else f"{ratio:.2f}x (torch/rnnfast per call{_min_ratio(rf, engines[1])})",
            None if ratio is None else ratio >= STREAM_RATIO,
            engines,
            ratio=ratio,
        )
    for cell in CELLS:
        m = {"cell": cell, "hidden_size": BATCH64_HIDDEN, "batch": 64, "mode": "sequence"}
        r1 = _find(rows, "rnnfast", threads=1, **m)
        r2 = _find(rows, "rnnfast", threads=threads, **m)
        if r1 is None or r2 is None:
            continue
        sp = None
        if r1["median_s"] and r2["median_s"]:
            sp = r1["median_s"] / r2["median_s"]
        entry(
            f"{cell.upper()} B=64 H={BATCH64_HIDDEN}, 1 vs {threads} threads (rnnfast ms: 1 thr / {threads} thr)",
            f">= {SPEEDUP}x speed-up",
            "-" if sp is None else f"{sp:.2f}x (min-time ratio {r1['min_s'] / r2['min_s']:.2f}x)",
            None if sp is None else sp >= SPEEDUP,
            [r1, r2],
            speedup=sp,
            ms_1thread=_ms(r1),
            ms_nthreads=_ms(r2),
        )
    return out


def markdown(report: dict, results: list[dict], threads: int, command: str) -> str:
    m = report["machine"]
    v = m["versions"]
    peaks = ", ".join(f"{p['gflops']:.0f} GFLOP/s on {p['threads']} thread(s)" for p in report["sgemm_peak"])
    lines = [
        "# rnnfast speed targets (issue 3)",
        "",
        (
            f"Measured {report['created_utc']} on {m['cpu_model']} ({m['cores_available']} cores available), "
            f"{threads} threads, T={T}, I=H. rnnfast {v['rnnfast']}, torch {v['torch']}, onnxruntime "
            f"{v['onnxruntime']}, numpy {v['numpy']}, scipy {v['scipy']}. SGEMM peak: {peaks}. "
            f"Load average at start/end: {_load(m.get('loadavg_at_start'))} / {_load(m.get('loadavg_at_end'))}."
        ),
        "",
        f"Reproduce: `{command}`",
        "",
        (
            "Ratios are peer time / rnnfast time (> 1: rnnfast faster) from the medians, which decide "
            "PASS/FAIL; the min-time ratio (fastest call of each engine) is shown beside it because it is "
            "less sensitive to other processes on a shared machine. Times are medians in milliseconds "
            "(streaming rows: per call)."
        ),
        "",
        "| case | target | measured | rnnfast ms | torch ms | onnxruntime ms | result |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        res = {True: "PASS", False: "**FAIL**", None: "n/a"}[r["pass"]]
        if "speedup" in r:
            ms = [f"{r['ms_1thread']} / {r['ms_nthreads']}", "-", "-"]
        else:
            ms = [r["ms"]["rnnfast"], r["ms"]["torch"], r["ms"]["onnxruntime"]]
        lines.append(f"| {r['case']} | {r['target']} | {r['measured']} | {' | '.join(ms)} | {res} |")
    n_pass = sum(r["pass"] is True for r in results)
    lines += ["", f"{n_pass} of {len(results)} target rows met.", ""]
    if report["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += ["Full harness output:", "", "```", benchmark.format_table(report), "```", ""]
    return "\n".join(lines)


def _load(x: list | None) -> str:
    return "-" if not x else f"{x[0]:.2f}"


def main(argv: list | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="threads of the target rows (default 2)")
    p.add_argument("--peers", default="torch,onnxruntime", help="comma list, or 'none' (default: both)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timing per engine and case (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="fixed repeat count (default: adaptive)")
    p.add_argument("--cells", default=",".join(CELLS), help="subset of lstm,gru,rnn (default: all)")
    p.add_argument("--out", default=os.path.join(here, "results", "targets.md"), help="markdown file to write")
    p.add_argument("--json", default=os.path.join(here, "results", "targets.json"), help="JSON report to write")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    args = p.parse_args(argv)
    cells = tuple(c.strip() for c in args.cells.split(",") if c.strip())
    if not cells or any(c not in CELLS for c in cells):
        p.error(f"--cells takes a comma list of {','.join(CELLS)}, got {args.cells!r}")
    peers = benchmark._parse_peers(args.peers)
    cases = target_cases(args.threads, cells)
    report = benchmark.run_cases(
        cases,
        peers=peers,
        budget_s=args.budget,
        repeats=args.repeats,
        progress=not args.quiet,
        options=vars(args),
    )
    results = evaluate(report, args.threads)
    report["targets"] = results
    command = "python bench/run_targets.py" + ("" if argv is None else " " + " ".join(argv))
    if argv is None and len(sys.argv) > 1:
        command += " " + " ".join(sys.argv[1:])
    text = markdown(report, results, args.threads, command)
    for path in (args.out, args.json):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    if args.json:
        benchmark.write_json(report, args.json)
    print(text)
    print(f"wrote {args.out} and {args.json}", file=sys.stderr)
    return 0 if all(r["pass"] for r in results) and report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
