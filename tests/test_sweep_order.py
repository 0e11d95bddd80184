"""`kvprof sweep`: with `--costs-from` the longest cells really start first (not only carry the highest Dask
priority); at the end the sweep says how much of its cells' time passed outside their traces."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvprof.cli import main
from kvprof.read import manifest as mf
from kvprof.sweep import run as task

pytest.importorskip("distributed")


def cell(method: str, frames: int = 3, **kw) -> dict:
    return {"id": f"{method}-study-{frames}f-s0", "method": method, "integration": "study", "frames": frames,
            "rolling": None, **kw}


def earlier_sweep(folder: Path, seconds: dict[str, float]) -> Path:
    """A finished sweep's manifest whose cells took `seconds` (method -> s)."""
    done = [cell(m, status="complete", seconds=s) for m, s in seconds.items()]
    manifest = mf.new_manifest({}, done, ["kvprof", "sweep"])
    for c, was in zip(manifest["cells"], done):
        c["status"] = was["status"]
    folder.mkdir()
    mf.write_manifest(folder, manifest)
    return folder


def test_cells_are_submitted_longest_first_ties_in_matrix_order():
    from kvprof.sweep.command import submission_order

    earlier = [cell("prq_int4", status="complete", seconds=40.0), cell("rtn_int4", status="complete", seconds=12.0)]
    todo = [cell("bf16"), cell("rtn_int4"), cell("kivi_int4"), cell("prq_int4")]
    order = submission_order(todo, earlier)
    # bf16 and kivi_int4 are unknown: priority 0, after the known ones, in the matrix's order
    assert [(c["method"], p) for c, p in order] == [("prq_int4", 40_000), ("rtn_int4", 12_000), ("bf16", 0),
                                                   ("kivi_int4", 0)]
    assert [c["method"] for c, _ in submission_order(todo, [])] == ["bf16", "rtn_int4", "kivi_int4", "prq_int4"]


def test_one_worker_starts_the_longest_cell_first(tmp_path):
    # The matrix lists bf16 first; an earlier sweep says kivi_int4 is the longest. Before the fix the first cell
    # submitted (bf16) took the idle worker before kivi_int4's higher priority reached the scheduler.
    from distributed import LocalCluster

    old = earlier_sweep(tmp_path / "old", {"bf16": 1.0, "rtn_int4": 5.0, "kivi_int4": 9.0})
    out = tmp_path / "sw"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster:
        code = main(["sweep", "--scheduler", cluster.scheduler_address, "--methods", "bf16,rtn_int4,kivi_int4",
                     "--frames", "3", "--no-decode", "--costs-from", str(old), "--out", str(out), "--quiet"])
    assert code == 0
    cells = mf.read_manifest(out)["cells"]
    assert [c["method"] for c in cells] == ["bf16", "rtn_int4", "kivi_int4"]  # the manifest keeps the matrix order
    assert all(c["status"] == "complete" for c in cells)
    started = [c["method"] for c in sorted(cells, key=lambda c: c["started"])]
    assert started == ["kivi_int4", "rtn_int4", "bf16"]


def test_the_sweep_says_where_its_cells_time_went():
    from kvprof.sweep.command import where_time_went

    cells = [cell("bf16", status="complete", phases={"startup_s": 5.0, "trace_s": 15.0, "after_s": 2.0}),
             cell("prq_int4", status="oom", phases={"startup_s": 6.0, "trace_s": 40.0, "after_s": 12.0}),
             cell("rtn_int4", status="failed", phases={"startup_s": 100.0, "trace_s": 1.0, "after_s": 0.0}),
             cell("kivi_int4", status="complete")]  # a cell of a sweep before phases were recorded
    assert mf.phase_seconds(cells[:2]) == {"startup_s": 11.0, "trace_s": 55.0, "after_s": 14.0}
    manifest = {"cells": cells}
    # finished cells only (complete or oom): the failed one's seconds are not a result
    assert where_time_went(manifest) == ("kvprof sweep: cells ran 80 s: 55 s in their traces, 25 s (31 %) in their "
                                         "processes' start-up (11 s: interpreter, imports, CUDA) and exit (14 s: "
                                         "tables, summary)")
    assert where_time_went({"cells": cells[3:]}) is None and mf.phase_seconds([]) is None


def test_phases_of_a_cell_from_its_meta(tmp_path):
    for born, want in ((10 * 10**9, {"startup_s": 15.0, "trace_s": 30.0, "after_s": 2.5}), (None, None)):  # None: no /proc
        meta = {"environment": {"process_started_unix_ns": born}, "started_unix_ns": 25 * 10**9, "ended_unix_ns": 55 * 10**9}
        (tmp_path / "meta.json").write_text(json.dumps(meta))
        assert task.phases_of(tmp_path, finished=57.5) == want
    assert task.phases_of(tmp_path / "nowhere", 1.0) is None
