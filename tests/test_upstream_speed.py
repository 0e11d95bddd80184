"""benchmarks/upstream_speed.py's driver logic (the GPU runs themselves are in benchmarks/RESULTS.md)."""
from __future__ import annotations

import subprocess
import sys

from benchmark_scripts import BENCHMARKS, load


def test_summary_and_table_from_worker_results() -> None:
    us = load("upstream_speed")
    runs = {
        "upstream": [{"rollout_wall_s": [4.0, 3.0], "max_memory_allocated_bytes": [100, 100], "kv_bytes": 8},
                     {"rollout_wall_s": [5.0, 3.2], "max_memory_allocated_bytes": [100, 100], "kv_bytes": 8}],
        "kvprof": [{"rollout_wall_s": [3.0], "max_memory_allocated_bytes": [99], "kv_bytes": 8},
                   {"error": "boom", "returncode": 1}],
    }
    summary = {name: us.summarize(r) for name, r in runs.items()}
    assert summary["upstream"]["median_s"] == 4.5 and summary["upstream"]["warm_median_s"] == 3.1
    assert summary["kvprof"] == {"runs": 1, "failed": 1, "median_s": 3.0, "min_s": 3.0, "max_s": 3.0,
                                 "all_s": [3.0], "peak_bytes": 99, "kv_bytes": [8]}
    doc = {"environment": {"device": "GPU X", "torch": "2.x"}, "summary": summary, "runs": runs,
           "profiles": {"kvprof": {"sdpa": {"sdpa_self": {"backend": "cudnn"}, "sdpa_cross": {"backend": "flash"}}}}}
    table = us.markdown(doc)
    assert "device: GPU X" in table
    assert "| kvprof | 3.000 (3.000..3.000, 1) | - | 99 | [8] | cudnn / flash |" in table


def test_missing_upstream_checkout_is_a_usage_error(tmp_path) -> None:
    r = subprocess.run([sys.executable, str(BENCHMARKS / "upstream_speed.py"), "--upstream", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "not a Self-Forcing checkout" in r.stderr and "Traceback" not in r.stderr
