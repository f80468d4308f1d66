"""`rnnfast bench`: the command runs tiny cases, its JSON carries every field, the agreement check runs
(and catches a wrong engine), and it works with no peer installed. Speed is never asserted here."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from rnnfast import benchmark, cli

ROW_FIELDS = {
    "case",
    "name",
    "mode",
    "cell",
    "input_size",
    "hidden_size",
    "batch",
    "seq_len",
    "layers",
    "bidirectional",
    "proj_size",
    "threads",
    "engine",
    "engine_version",
    "status",
    "note",
    "agree",
    "checked_against",
    "max_abs_diff_ref",
    "max_abs_diff_torch",
    "rtol",
    "atol",
    "setup_s",
    "cold_s",
    "median_s",
    "min_s",
    "q1_s",
    "q3_s",
    "repeats",
    "warmup",
    "per_call_s",
    "gflop",
    "gflops",
    "peak_gflops",
    "pct_peak",
    "ratio_vs",
    "faster_peer",
    "ratio_vs_faster_peer",
    "loadavg_1min",
}
TOP_FIELDS = {
    "schema",
    "created_utc",
    "options",
    "machine",
    "settings",
    "sgemm_peak",
    "rows",
    "speedups",
    "notes",
    "failed",
    "ok",
    "elapsed_s",
}
MACHINE_FIELDS = {
    "cpu_model",
    "cores",
    "cores_available",
    "loadavg_at_start",
    "loadavg_at_end",
    "platform",
    "versions",
}
VERSION_FIELDS = {"rnnfast", "numpy", "scipy", "torch", "onnxruntime", "python"}

TINY = [
    "--hidden-size",
    "8",
    "--input-size",
    "5",
    "--seq-len",
    "6",
    "--batch",
    "3",
    "--repeats",
    "3",
    "--quiet",
]


def _bench(tmp_path, *args: str, peak: bool = False) -> tuple[int, dict]:
    path = tmp_path / "bench.json"
    extra = ["--peak-size", "64"] if peak else ["--no-peak"]
    rc = cli.main(["bench", *args, *extra, "--json", str(path)])
    return rc, json.loads(path.read_text())


def _row(report: dict, engine: str, threads: int | None = None) -> dict:
    rows = [r for r in report["rows"] if r["engine"] == engine and threads in (None, r["threads"])]
    assert len(rows) == 1, [(r["engine"], r["threads"]) for r in report["rows"]]
    return rows[0]


def _check_timed_row(r: dict) -> None:
    assert r["status"] == "ok", r["note"]
    assert r["agree"] is True
    assert r["repeats"] == 3
    assert 0 < r["min_s"] <= r["median_s"] and r["cold_s"] > 0 and r["setup_s"] >= 0
    assert r["q1_s"] <= r["median_s"] <= r["q3_s"]
    assert r["gflops"] == pytest.approx(r["gflop"] / r["median_s"])
    assert "reference_float64" in r["checked_against"]
    assert r["max_abs_diff_ref"] <= 10 * r["atol"]


def test_fresh_install_without_peers_writes_every_field(tmp_path):
    rc, rep = _bench(tmp_path, "--cell", "gru", *TINY, "--peers", "none", peak=True)
    assert rc == 0
    assert TOP_FIELDS <= set(rep)
    assert MACHINE_FIELDS <= set(rep["machine"]) and VERSION_FIELDS <= set(rep["machine"]["versions"])
    assert rep["machine"]["cores"] >= 1 and rep["machine"]["versions"]["numpy"] == np.__version__
    assert rep["ok"] is True and rep["failed"] == []
    assert [r["engine"] for r in rep["rows"]] == ["rnnfast"]
    r = _row(rep, "rnnfast")
    assert set(r) == ROW_FIELDS
    assert (r["cell"], r["hidden_size"], r["input_size"], r["seq_len"], r["batch"]) == ("gru", 8, 5, 6, 3)
    _check_timed_row(r)
    assert r["max_abs_diff_torch"] is None and r["ratio_vs_faster_peer"] is None
    (peak,) = rep["sgemm_peak"]
    assert peak["threads"] == r["threads"] and peak["gflops"] > 0 and peak["size"] == 64
    assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / peak["gflops"])


def test_peers_not_installed_are_skipped_with_a_note(tmp_path, monkeypatch):
    for name in ("torch", "onnxruntime", "onnx"):  # None in sys.modules: import fails, find_spec is None
        monkeypatch.setitem(sys.modules, name, None)
    rc, rep = _bench(tmp_path, "--cell", "rnn", *TINY)  # default peers: torch,onnxruntime
    assert rc == 0 and rep["ok"]
    assert [r["engine"] for r in rep["rows"]] == ["rnnfast"]
    assert rep["settings"]["peers_run"] == []
    assert any("torch" in n and "not installed" in n for n in rep["notes"])
    assert any("onnxruntime" in n and "not installed" in n for n in rep["notes"])
    assert rep["machine"]["versions"]["torch"] is None
    _check_timed_row(_row(rep, "rnnfast"))


def test_agrees_with_torch(tmp_path):
    pytest.importorskip("torch")
    rc, rep = _bench(tmp_path, "--cell", "gru", *TINY, "--layers", "2", "--bidirectional", "--peers", "torch")
    assert rc == 0 and rep["ok"], rep["failed"]
    rf, pt = _row(rep, "rnnfast"), _row(rep, "torch")
    for r in (rf, pt):
        _check_timed_row(r)
    assert "torch" in rf["checked_against"]
    assert rf["max_abs_diff_torch"] <= 2 * rf["atol"]
    assert rf["faster_peer"] == "torch"
    assert rf["ratio_vs"]["torch"] == pytest.approx(pt["median_s"] / rf["median_s"])
    assert rf["ratio_vs_faster_peer"] == rf["ratio_vs"]["torch"]


def test_agrees_with_onnxruntime_lstm(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    rc, rep = _bench(tmp_path, "--cell", "lstm", *TINY, "--layers", "2", "--peers", "torch,onnxruntime")
    assert rc == 0 and rep["ok"], rep["failed"]
    assert [r["engine"] for r in rep["rows"]] == ["rnnfast", "torch", "onnxruntime"]
    for r in rep["rows"]:
        _check_timed_row(r)
    ort = _row(rep, "onnxruntime")
    assert ort["max_abs_diff_torch"] <= 2 * ort["atol"]
    rf = _row(rep, "rnnfast")
    assert set(rf["ratio_vs"]) == {"torch", "onnxruntime"}
    faster = min(("torch", "onnxruntime"), key=lambda p: _row(rep, p)["median_s"])
    assert rf["faster_peer"] == faster


def test_streaming_passes_state_back(tmp_path):
    peers = "torch" if _installed("torch") else "none"
    rc, rep = _bench(tmp_path, "--cell", "lstm", *TINY, "--streaming", "--peers", peers)
    assert rc == 0 and rep["ok"], rep["failed"]
    for r in rep["rows"]:
        assert r["mode"] == "streaming" and r["batch"] == 3
        _check_timed_row(r)
        assert r["per_call_s"] == r["median_s"]
        # one step per call: a per-call GFLOP count of one time step
        assert r["gflop"] == pytest.approx(2 * 3 * 4 * 8 * (5 + 8) / 1e9)


def test_thread_list_reports_speedup(tmp_path):
    rc, rep = _bench(tmp_path, "--cell", "rnn", *TINY, "--threads", "1,2", "--peers", "none")
    assert rc == 0
    assert sorted(r["threads"] for r in rep["rows"]) == [1, 2]
    (s,) = rep["speedups"]
    assert (s["engine"], s["threads_from"], s["threads_to"]) == ("rnnfast", 1, 2)
    assert s["speedup"] == pytest.approx(s["time_from_s"] / s["time_to_s"])
    assert s["time_from_s"] == _row(rep, "rnnfast", 1)["median_s"]


class _WrongRnnfast(benchmark.RnnfastEngine):
    def outputs(self, result):
        out, h_n, c_n = super().outputs(result)
        return out + np.float32(1e-3), h_n, c_n


def test_a_disagreement_fails_the_row_loudly(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(benchmark.ENGINE_CLASSES, "rnnfast", _WrongRnnfast)
    rc, rep = _bench(tmp_path, "--cell", "gru", *TINY, "--peers", "none")
    assert rc == 1 and rep["ok"] is False
    r = _row(rep, "rnnfast")
    assert r["status"] == "failed" and r["agree"] is False
    assert r["max_abs_diff_ref"] == pytest.approx(1e-3, rel=1e-2)
    assert "disagree" in r["note"] and len(rep["failed"]) == 1
    captured = capsys.readouterr()
    assert "OUTPUT MISMATCH" in captured.err and "MISMATCH" in captured.out


def test_a_wrong_peer_is_blamed_not_rnnfast(tmp_path, monkeypatch):
    pytest.importorskip("torch")

    class WrongTorch(benchmark.TorchEngine):
        def outputs(self, result):
            out, h_n, c_n = super().outputs(result)
            return out, h_n * np.float32(1.01), c_n

    monkeypatch.setitem(benchmark.ENGINE_CLASSES, "torch", WrongTorch)
    rc, rep = _bench(tmp_path, "--cell", "rnn", *TINY, "--peers", "torch")
    assert rc == 1
    assert _row(rep, "torch")["status"] == "failed"
    rf = _row(rep, "rnnfast")
    assert rf["status"] == "ok" and rf["agree"] is True
    assert rf["checked_against"] == ["reference_float64"]  # a torch that disagrees with the spec is no judge
    assert rf["ratio_vs"] == {} and rf["faster_peer"] is None


@pytest.mark.parametrize(
    "cell, I, H, L, bi, P",
    [
        ("lstm", 5, 7, 1, False, 0),
        ("gru", 3, 4, 2, True, 0),
        ("rnn", 6, 2, 3, False, 0),
        ("lstm", 4, 6, 2, True, 3),
    ],
)
def test_gflop_counts_every_gemm(cell, I, H, L, bi, P):
    # Independent count: each weight matrix W (out, in) costs 2*out*in flop per row of T*B.
    case = benchmark.Case(cell, H, input_size=I, batch=3, seq_len=5, layers=L, bidirectional=bi, proj_size=P)
    state = benchmark.make_state_dict(case)
    weights = sum(v.size for k, v in state.items() if k.startswith("weight_"))
    assert case.gflop() == pytest.approx(2 * 5 * 3 * weights / 1e9)
    assert benchmark.Case(
        cell, H, input_size=I, batch=3, layers=L, proj_size=P, mode="streaming"
    ).gflop() == pytest.approx(
        2
        * 3
        * sum(
            v.size
            for k, v in benchmark.make_state_dict(benchmark.Case(cell, H, input_size=I, layers=L, proj_size=P)).items()
            if k.startswith("weight_")
        )
        / 1e9
    )


def test_default_suite_covers_the_target_rows():
    parser = __import__("argparse").ArgumentParser()
    benchmark.add_arguments(parser)
    cases = benchmark.cases_from_args(parser.parse_args([]))
    assert cases == benchmark.default_suite(cases[0].threads)
    assert {c.cell for c in cases} == {"lstm", "gru", "rnn"}
    assert {c.batch for c in cases} == {1, 64} and any(c.mode == "streaming" for c in cases)
    assert {c.threads for c in cases if c.batch == 64} == {1, cases[0].threads}


@pytest.mark.parametrize(
    "args",
    [
        ["--peers", "tensorflow"],
        ["--threads", "0"],
        ["--threads", "two"],
        ["--hidden-size", "0"],
        ["--repeats", "0"],
        ["--streaming", "--bidirectional"],
        ["--cell", "gru", "--proj-size", "2"],
    ],
)
def test_bad_options_exit_2(args, capsys):
    assert cli.main(["bench", *args, "--quiet", "--no-peak"]) == 2
    assert "error" in capsys.readouterr().err


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _run_targets_module():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "run_targets.py"
    if not path.exists():
        pytest.skip("bench/run_targets.py is not in this tree")
    spec = importlib.util.spec_from_file_location("run_targets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_targets_pass_fail_logic():
    rt = _run_targets_module()
    cases = rt.target_cases(2, ("gru",))
    assert len(cases) == 3 + 2 + 1 and {c.seq_len for c in cases} == {100}
    assert all(c.I == c.hidden_size for c in cases)
    rows = []
    times = {  # (mode, batch, hidden, threads) -> {engine: median}
        ("sequence", 1, 256, 2): {"rnnfast": 1.0, "torch": 2.0, "onnxruntime": 1.6},  # 1.6x: pass
        ("sequence", 1, 512, 2): {"rnnfast": 1.0, "torch": 2.0, "onnxruntime": 1.4},  # 1.4x: fail
        ("sequence", 1, 1024, 2): {"rnnfast": 1.0, "torch": 9.0, "onnxruntime": 9.0},  # fails agreement
        ("sequence", 64, 512, 2): {"rnnfast": 1.0, "torch": 1.2, "onnxruntime": 1.3},  # 1.2x, 90% peak: pass
        ("sequence", 64, 512, 1): {"rnnfast": 1.6},  # speed-up 1.6: fail
        ("streaming", 1, 256, 2): {"rnnfast": 1.0, "torch": 3.5, "onnxruntime": 0.5},  # vs torch only: pass
    }
    for c in cases:
        for engine, t in times[(c.mode, c.batch, c.hidden_size, c.threads)].items():
            r = benchmark._row(c, engine)
            r.update(status="ok", median_s=t, min_s=t, pct_peak=90.0)
            if c.hidden_size == 1024 and engine == "onnxruntime":
                r.update(status="failed", note="outputs disagree")
            rows.append(r)
    for c in cases:
        rf = next(r for r in rows if r["engine"] == "rnnfast" and r["case"] == c.label())
        peers = [r for r in rows if r["engine"] != "rnnfast" and r["case"] == c.label() and r["status"] == "ok"]
        rf["ratio_vs"] = {p["engine"]: p["median_s"] / rf["median_s"] for p in peers}
        if peers:
            best = min(peers, key=lambda p: p["median_s"])
            rf.update(faster_peer=best["engine"], ratio_vs_faster_peer=best["median_s"] / rf["median_s"])
    got = {r["case"].split(" (")[0]: r["pass"] for r in rt.evaluate({"rows": rows}, 2)}
    assert got == {
        "GRU B=1 H=256": True,
        "GRU B=1 H=512": False,
        "GRU B=1 H=1024": False,
        "GRU B=64 H=512": True,
        "GRU streaming B=1 H=256": True,
        "GRU B=64 H=512, 1 vs 2 threads": False,
    }
