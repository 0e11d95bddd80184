"""benchmarks/results_table.py: which sweep row a RESULTS.md table keeps, and how it marks shared runs."""
from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load


def _script():
    return load("results_table")


def _row(method, peak, lanes=None, status="complete"):
    r = {"method": method, "integration": "study", "status": status, "peak_bytes": peak, "peak_stage": "rollout/decode",
         "kv": {"resident_bytes": 6 * 2**30, "stored_bytes": 3 * 2**30, "ratio_stored": 3.2, "ratio_resident": 1.78},
         "rollout_s": 20.0, "process_s": 40.0}
    return {**r, "lanes": lanes} if lanes else r


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_row_traced_alone_is_kept_over_a_shared_one(tmp_path):
    a = _write(tmp_path / "s1.jsonl", [_row("bf16", 100), _row("rtn", 70, status="error"), _row("prq", 120)])
    b = _write(tmp_path / "s3.jsonl", [_row("bf16", 101, lanes=3), _row("rtn", 71, lanes=3), _row("new", 60, lanes=3)])
    kept = {r["method"]: r["peak_bytes"] for r in _script().rows([a, b])}
    assert kept == {"bf16": 100, "rtn": 71, "prq": 120, "new": 60}  # a failed row gives way even to a shared one


def test_table_marks_the_reference_and_shared_times(tmp_path):
    mod = _script()
    text = mod.table([_row("bf16", 100), _row("prq", 120), _row("new", 60, lanes=3)], bf16_peak=100)
    lines = text.splitlines()
    assert lines[0].endswith("| rollout s | trace s |")
    assert "| reference (+0.0%) |" in lines[2]
    assert "| **exceeds** (+20.0%) |" in lines[3] and lines[3].endswith("| 20.0 | 40 |")
    assert "| below (-40.0%) |" in lines[4] and lines[4].endswith("| 20.0 * | 40 * |")


def test_peak_is_the_allocators_where_the_row_has_it():
    mod = _script()
    # A trace that followed another in its process: 33 MiB left allocated were not in its own count.
    later = {**_row("rtn", 1000), "reconciliation": {"max_memory_allocated_bytes": 1000 + 33 * 2**20}}
    assert mod.peak(later) == 1000 + 33 * 2**20
    assert mod.peak(_row("bf16", 1000)) == 1000  # rows without a reconciliation keep their own peak
    text = mod.table([_row("bf16", 1000 + 33 * 2**20), later], bf16_peak=1000 + 33 * 2**20)
    assert "| reference (+0.0%) |" in text.splitlines()[2] and "| below (+0.0%) |" in text.splitlines()[3]


def test_rows_come_from_a_kvprof_sweep_folder_too(tmp_path):
    from kvprof.read import manifest as mf

    cells = [{"id": "bf16-study-42f-s0", "method": "bf16", "integration": "study"},
             {"id": "prq-study-42f-s0", "method": "prq", "integration": "study"}]
    m = mf.new_manifest({}, cells, ["kvprof"])
    m["cluster"] = {"workers_per_gpu": 2, "workers": 4, "gpus": 4}
    m["runs"] = [{"seconds": 1800}]
    res = _row("bf16", 100)
    m["cells"][0].update(status="complete", seconds=40.0, result={k: res[k] for k in ("peak_bytes", "peak_stage", "kv", "rollout_s")})
    m["cells"][1].update(status="oom")
    (tmp_path / "sw").mkdir()
    mf.write_manifest(tmp_path / "sw", m)
    mod = _script()
    rs = mod.rows([str(tmp_path / "sw")])
    assert [(r["method"], r["status"], r["lanes"]) for r in rs] == [("bf16", "complete", 2), ("prq", "oom", 2)]
    lines = mod.table(rs, bf16_peak=100).splitlines()
    assert lines[2].endswith("| 20.0 * | 40 * |") and lines[3].startswith("| prq | study | oom |")
    assert mod.rows([str(tmp_path / "sw" / "manifest.json")]) == rs
    assert mod.throughput(tmp_path / "sw").endswith("2/2 cells in 1800 s over 1 run(s), 4 workers (4 GPU workers, 2 per GPU): 4.0 cells/h")  # oom is done


def test_sweep_speedup_adds_the_one_gpu_sweeps_and_checks_the_cells(tmp_path):
    # benchmarks/sweep_speedup.py (issue 17): quarters run at once on one GPU each, against one sweep over 4 GPUs
    from kvprof.read import manifest as mf

    def sweep(name, cells, wall, workers):
        folder = tmp_path / name
        folder.mkdir()
        m = mf.new_manifest({}, [{"id": cid, "method": cid} for cid, _, _ in cells], ["kvprof", "sweep"])
        for c, (_, seconds, peak) in zip(m["cells"], cells):
            gap = 0 if peak > 0 else 4096  # a negative peak stands for a trace that was not exact
            c.update(status="complete", seconds=seconds, result={"peak_bytes": abs(peak), "reconciliation": {
                "peak_gap_bytes": gap, "max_abs_gap_bytes": 0}}, phases={"startup_s": 10.0, "trace_s": seconds - 12, "after_s": 2.0})
        m["runs"] = [{"seconds": s} for s in wall]
        m["cluster"] = {"workers": workers}
        mf.write_manifest(folder, m)
        return folder

    one = [sweep("q0", [("a", 100.0, 10), ("b", 50.0, 20)], [80.0, 75.0], 1), sweep("q1", [("c", 148.0, 30)], [150.0], 1)]
    many = sweep("all", [("a", 110.0, 10), ("b", 55.0, 21), ("c", 150.0, -30)], [100.0], 4)
    r = load("sweep_speedup").compare(one, [many])
    assert r["one"]["wall_s"] == 305.0 and r["one"]["cells"] == 3 and r["one"]["cell_s"] == 298.0  # a resumed run counts
    assert r["speedup"] == 3.05 and r["busy"] == round(315 / 400, 3) and r["cell_time_ratio"] == round(315 / 298, 3)
    assert r["many"]["inexact"] == ["c"] and r["one"]["inexact"] == [] and r["peaks_differ"] == ["b"] and r["same_cells"]
    assert r["many"]["phases"] == {"startup_s": 30.0, "trace_s": 279.0, "after_s": 6.0}
    assert "speed-up 3.05x" in load("sweep_speedup").markdown(r) and "start-up / trace / after it: 30.0 / 279.0 / 6.0" in \
        load("sweep_speedup").markdown(r)


def test_sweep_speedup_splits_methods_by_earlier_costs(tmp_path):
    from kvprof.read import manifest as mf

    folder = tmp_path / "old"
    folder.mkdir()
    m = mf.new_manifest({}, [{"id": x, "method": x} for x in ("prq", "bf16", "rtn", "kivi")], ["kvprof", "sweep"])
    for c, s in zip(m["cells"], (60.0, 30.0, 28.0, 32.0)):
        c.update(status="complete", seconds=s)
    mf.write_manifest(folder, m)
    parts = load("sweep_speedup").split(2, ["bf16", "rtn", "kivi", "prq", "new"], [folder])
    # longest first, each to the lighter list; `new` has no cost of its own: the median of all (31 s)
    assert parts == [["prq", "bf16"], ["kivi", "new", "rtn"]]
    assert sorted(sum(parts, [])) == ["bf16", "kivi", "new", "prq", "rtn"]
    # the former sweep script's rows count too (their process_s); `split 1`: the methods longest first
    old = _write(tmp_path / "old.jsonl", [{**_row("tptq", 1), "process_s": 150.0}, {**_row("rtn", 1, status="error"), "process_s": 999.0}])
    assert load("sweep_speedup").split(1, ["bf16", "tptq", "prq", "rtn"], [folder, Path(old)]) == [["tptq", "prq", "bf16", "rtn"]]


def test_a_table_without_a_bf16_row_says_so(tmp_path):
    # a sweep stopped before its bf16 cell finished still gets its table (gpu_session.sh writes it after every call)
    out = _script().table([_row("prq", 120)], None)
    assert "| prq | study | complete |" in out and "no bf16 row |" in out and "%" not in out.splitlines()[-1]
