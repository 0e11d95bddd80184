"""benchmarks/sweep.py: lanes balanced by earlier costs, rows from every lane, traces on disk."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, load

SCRIPT = BENCHMARKS / "sweep.py"


def _script():
    return load("sweep")


def test_lanes_take_the_longest_first_and_end_close_together():
    costs = {"a": 400, "b": 100, "c": 90, "d": 60, "e": 50}
    lanes = _script().split_lanes(["e", "d", "c", "b", "a", "f"], 2, costs, default=30)
    assert lanes == [["a"], ["b", "c", "d", "e", "f"]]  # 400 vs 100+90+60+50+30 = 330
    assert _script().split_lanes(["a", "b"], 4, costs, default=30) == [["a"], ["b"]]  # no empty lanes


def test_costs_come_from_complete_rows_of_the_same_integration(tmp_path):
    f = tmp_path / "s.jsonl"
    rows = [{"method": "a", "integration": "study", "status": "complete", "process_s": 10},
            {"method": "a", "integration": "study", "status": "complete", "process_s": 12},
            {"method": "b", "integration": "study", "status": "error", "process_s": 1},
            {"method": "c", "integration": "staged", "status": "complete", "process_s": 5}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert _script().expected_costs([f], "study") == {"a": 12.0}


def test_unknown_method_is_named(capsys):
    with pytest.raises(SystemExit) as exc:
        _script().main(["--methods", "bf16,prq_int9"])
    assert exc.value.code == 2
    assert "--methods: unknown prq_int9" in capsys.readouterr().err


def test_two_lanes_trace_every_method_once(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--integration", "staged", "--methods", "bf16,rtn_int4",
                          "--lanes", "2", "--frames", "6", "--config", "tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["method"] for r in rows) == ["bf16", "rtn_int4"]
    assert all(r["status"] == "complete" and r["lanes"] == 2 and r["peak_bytes"] > 0 for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16-staged", "rtn_int4-staged"]


def test_a_lane_that_dies_leaves_an_error_row_per_method(tmp_path, monkeypatch, capsys):
    mod = _script()
    real = mod.subprocess.Popen

    def dying(cmd, **kw):  # the second lane's process exits before it traces anything
        if "kivi_int4" in cmd[cmd.index("--methods") + 1]:
            return real([sys.executable, "-c", "import sys; sys.exit(3)"], **kw)
        return real([sys.executable, "-c", "print('{\"method\": \"rtn_int4\", \"status\": \"complete\"}')"], **kw)

    monkeypatch.setattr(mod.subprocess, "Popen", dying)
    args = mod.argparse.Namespace(integration="staged", deadline=100.0, per_trace=1.0, out=str(tmp_path), frames=None,
                                  config=None, keep_caches=False)
    assert mod.run_lanes([["rtn_int4"], ["kivi_int4", "qaq_int4"]], args, mod.time.time()) == 3
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by = {r["method"]: r for r in rows}
    assert sorted(by) == ["kivi_int4", "qaq_int4", "rtn_int4"] and len(rows) == 3
    assert by["rtn_int4"]["status"] == "complete"
    assert by["kivi_int4"]["status"] == by["qaq_int4"]["status"] == "error"
    assert by["qaq_int4"]["error"] == "lane process exited with code 3 first"


def test_release_process_caches_frees_cublas_workspaces_then_the_cache(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: calls.append("cublas"), raising=False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    _script().release_process_caches()
    assert calls == ["cublas", "empty_cache"]  # workspaces go back to the cache first, then the cache is emptied


@pytest.mark.parametrize("keep", [False, True])
def test_each_trace_of_a_lane_starts_from_released_caches_unless_kept(tmp_path, monkeypatch, capsys, keep):
    import kvprof.runner
    from tracers.trace_io import SCHEMA_VERSION, write_json_atomic

    mod = _script()
    events = []
    monkeypatch.setattr(mod, "release_process_caches", lambda: events.append("release"))

    def fake_run_trace(req):
        events.append(req.method)
        folder = tmp_path / req.run_id
        folder.mkdir()
        write_json_atomic(folder / "meta.json", {"schema_version": SCHEMA_VERSION, "status": "complete",
                                                   "held_before_bytes": 1024})
        summary = {"peak": {"bytes": 5, "stage": "rollout", "by_category": {}, "by_pass": {}}, "kv": None,
                   "stage_times": [], "reconciliation": {}}
        return kvprof.runner.TraceOutcome(path=folder, status="complete", summary=summary)

    monkeypatch.setattr(kvprof.runner, "run_trace", fake_run_trace)
    args = mod.argparse.Namespace(integration="staged", deadline=100.0, per_trace=1.0, out=str(tmp_path), frames=None,
                                  config=None, keep_caches=keep)
    mod.run_lane(["bf16", "rtn_int4"], args, mod.time.time(), 1)
    assert events == (["bf16", "rtn_int4"] if keep else ["release", "bf16", "release", "rtn_int4"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["status"], r["held_before_bytes"]) for r in rows] == [("complete", 1024)] * 2
