"""The GPU benchmark script runs end to end in its CPU smoke mode and writes every configuration row."""

import importlib.util
import json
import os

from dreamlite_tiny import one_torch_thread  # noqa: F401 (an autouse fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_smoke_covers_every_configuration(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_dreamlite", os.path.join(ROOT, "benchmarks",
                                                                                 "bench_dreamlite.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.load(open(tmp_path / "dreamlite_results.json"))
    assert [row["name"] for row in report["results"]] == [c["name"] for c in bench.CONFIGS]
    assert all(row["fps_wall"] > 0 and row["batch_ms_p50"] > 0 for row in report["results"])
