"""`kvprof sweep` (issue 17): the matrix, the manifest, the task, and a sweep on a local Dask cluster
of 2 CPU workers that loses a worker mid-trace and its client mid-sweep, then resumes."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from kvprof.cli import main
from kvprof.errors import UsageError
from kvprof.read import manifest as mf
from kvprof.sweep import run as task

pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
METHODS = "bf16,rtn_int4"  # x study, staged: 4 cells, 2 workers


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `cond` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def sweep_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kvprof.cli", "sweep", "--out", str(out), "--quiet", "--workers", "2", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "CUDA_VISIBLE_DEVICES": ""}


def manifest_or_none(out: Path) -> dict | None:
    try:
        return mf.read_manifest(out)
    except ValueError:
        return None


def cells_with(out: Path, status: str) -> dict[str, dict]:
    m = manifest_or_none(out)
    return {c["id"]: c for c in (m or {"cells": []})["cells"] if c["status"] == status}


# ---------------------------------------------------------------------- bad input: exit 2 before any cluster
@pytest.mark.parametrize("argv, message", [
    (["--methods", "bf16,prq_int9"], "--methods: unknown method 'prq_int9'; did you mean 'prq_int4'"),
    (["--integrations", "study,stagd"], "--integrations: unknown stagd"),
    (["--frames", "42,5", "--methods", "bf16"], "--frames 5: must be a positive multiple"),
    (["--frames", "six"], "--frames 'six': must be a comma list of integers"),
    (["--methods", "bf16", "--param", "outlier_sigma=4"], "--param outlier_sigma: no method of the sweep has this parameter"),
    (["--methods", "bf16", "--codes", "int4"], "--codes int4: not a code storage"),
    (["--methods", "bf16", "--prompt-embeds", "nowhere.pt"], "--prompt-embeds nowhere.pt: no such file"),
    (["--methods", "bf16", "--workers", "0"], "--workers 0: must be 1 or more"),
    (["--resume"], "--resume: "),
    (["--methods", "bf16", "--costs-from", "nowhere"], "--costs-from: nowhere/manifest.json: cannot read a sweep manifest"),
])
def test_bad_input_exits_2_with_a_hint_before_any_cluster(tmp_path, capsys, monkeypatch, argv, message):
    import kvprof.sweep.cluster as cl

    monkeypatch.setattr(cl, "start", lambda *a: pytest.fail("a cluster started before the input was checked"))
    out = tmp_path / "sw"
    assert main(["sweep", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (out / mf.MANIFEST_FILE).exists()


def test_resume_takes_the_cells_of_the_manifest(tmp_path, capsys):
    out = tmp_path / "sw"
    out.mkdir()
    mf.write_manifest(out, mf.new_manifest({}, [], ["kvprof"]))
    assert main(["sweep", "--out", str(out), "--methods", "bf16"]) == 2
    assert "holds a sweep already; add --resume" in capsys.readouterr().err
    assert main(["sweep", "--out", str(out), "--resume", "--methods", "bf16", "--frames", "6", "--no-decode"]) == 2
    assert "as they are; drop --methods, --frames, --no-decode" in capsys.readouterr().err


def test_resuming_a_finished_sweep_starts_no_cluster(tmp_path, capsys, monkeypatch):
    import kvprof.sweep.cluster as cl

    monkeypatch.setattr(cl, "start", lambda *a: pytest.fail("a cluster started for a finished sweep"))
    out = tmp_path / "sw"
    out.mkdir()
    m = mf.new_manifest({}, [{"id": "a"}, {"id": "b"}], ["kvprof"])
    for c, status in zip(m["cells"], ("complete", "oom")):
        c["status"] = status
    mf.write_manifest(out, m)
    assert main(["sweep", "--out", str(out), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"complete": 1, "oom": 1}


# ---------------------------------------------------------------------- matrix
def test_cells_are_every_combination_with_valid_codes_and_their_trace_flags(registry) -> None:
    import argparse

    from kvprof.cli import _param
    from kvprof.sweep.command import add_arguments
    from kvprof.sweep.matrix import build_cells, parse_matrix

    p = argparse.ArgumentParser()
    add_arguments(p, _param)
    args = p.parse_args(["--out", "x", "--methods", "bf16,qaq_int4", "--integrations", "study,staged", "--codes", "int8,packed",
                         "--frames", "6,12", "--seeds", "0,1", "--param", "outlier_sigma=4", "--no-decode"])
    cells = build_cells(parse_matrix(args), gpu=False)
    # packed is not a storage of study: 2 methods x (study int8 + staged int8/packed) x 2 frames x 2 seeds
    assert len(cells) == 2 * 3 * 2 * 2 == len({c.id for c in cells})
    qaq = next(c for c in cells if c.id == "qaq_int4-staged-packed-12f-s1-outlier_sigma4")
    assert qaq.args == ["--method", "qaq_int4", "--integration", "staged", "--frames", "12", "--seed", "1", "--config", "tiny",
                         "--codes", "packed", "--param", "outlier_sigma=4", "--no-decode"]
    bf16 = next(c for c in cells if c.method == "bf16")
    assert bf16.params == {} and "--param" not in bf16.args  # a parameter goes only to methods that have it
    gpu = build_cells(parse_matrix(p.parse_args(["--out", "x", "--methods", "bf16"])), gpu=True)
    assert [c.id for c in gpu] == ["bf16-study-42f-s0"] and "wan-1.3b" in gpu[0].args  # trace's GPU defaults
    # a plugin method (issue 18) by its spec: traced by the spec, named by its class's name
    plugin = build_cells(parse_matrix(p.parse_args(["--out", "x", "--methods", "examples.my_method:TokenInt4Sink",
                                                    "--integrations", "staged"])), gpu=False)
    assert [c.id for c in plugin] == ["token_int4_sink-staged-12f-s0"]
    assert plugin[0].args[:2] == ["--method", "examples.my_method:TokenInt4Sink"]
    with pytest.raises(UsageError, match="--methods: .*nope"):
        parse_matrix(p.parse_args(["--out", "x", "--methods", "bf16,nope"]))


# ---------------------------------------------------------------------- manifest
def test_attempts_and_torn_traces(tmp_path):
    root = tmp_path / "traces"
    assert mf.next_attempt(root, "a-study-6f-s0") == "a-study-6f-s0"
    for name, status in [("a-study-6f-s0", "running"), ("a-study-6f-s0.a2", "failed"), ("a-study-6f-s0.a3", "complete"),
                         ("a-study-6f-s0-w3", "complete")]:  # the last: another cell, whose id extends this one's
        (root / name).mkdir(parents=True)
        (root / name / "meta.json").write_text(json.dumps({"status": status}))
    assert mf.attempts(root, "a-study-6f-s0") == ["a-study-6f-s0", "a-study-6f-s0.a2", "a-study-6f-s0.a3"]
    assert mf.next_attempt(root, "a-study-6f-s0") == "a-study-6f-s0.a4"
    assert mf.torn_attempts(root, "a-study-6f-s0", "a-study-6f-s0.a3") == [
        {"run_id": "a-study-6f-s0", "status": "running"}, {"run_id": "a-study-6f-s0.a2", "status": "failed"}]


def test_readers_take_only_finished_cells_and_a_manifest_is_never_half_written(tmp_path):
    out = tmp_path / "sw"
    (out / "traces").mkdir(parents=True)
    cells = [{"id": i, "method": "bf16"} for i in ("c1", "c2", "c3", "c4")]
    m = mf.new_manifest({}, cells, ["kvprof"])
    for c, (status, run_id) in zip(m["cells"], [("complete", "c1.a2"), ("oom", "c2"), ("failed", None), ("pending", None)]):
        c.update(status=status, run_id=run_id)
        (out / "traces" / (run_id or c["id"])).mkdir()
        (out / "traces" / (run_id or c["id"]) / "meta.json").write_text("{}")
    mf.write_manifest(out, m)
    assert mf.is_sweep(out) and not mf.is_sweep(tmp_path)
    assert mf.result_traces(out) == [out / "traces" / "c1.a2", out / "traces" / "c2"]
    assert mf.cell_trace_paths(out)[2:] == [out / "traces" / "c3", out / "traces" / "c4"]
    assert not list(out.glob("*.tmp")) and json.loads((out / mf.MANIFEST_FILE).read_text())["cells"][0]["run_id"] == "c1.a2"


def test_tui_opens_a_sweep_and_follows_every_cell(tmp_path, monkeypatch):
    import tui.app

    out = tmp_path / "sw"
    m = mf.new_manifest({}, [{"id": "a"}, {"id": "b"}], ["kvprof"])
    m["cells"][0].update(status="complete", run_id="a.a2")
    (out / "traces" / "a.a2").mkdir(parents=True)
    (out / "traces" / "a.a2" / "meta.json").write_text("{}")
    mf.write_manifest(out, m)
    calls = []
    newest = {}
    monkeypatch.setattr(tui.app, "run_tui", lambda paths, follow=False, root=None, newest=None, _seen=newest:
                        calls.append((paths, follow, root)) or _seen.update(newest or {}) or 0)
    assert main(["tui", str(out)]) == 0 and main(["tui", str(out), "--follow"]) == 0
    root = out / "traces"
    assert calls == [([root / "a.a2"], False, root), ([root / "a.a2", root / "b"], True, root)]  # b: waited for
    # following, each cell moves to its newest attempt as a retry starts
    assert sorted(newest) == [root / "a.a2", root / "b"] and newest[root / "b"]() == root / "b"
    (root / "b.a2").mkdir()
    assert newest[root / "b"]() == root / "b.a2" and newest[root / "a.a2"]() == root / "a.a2"


# ---------------------------------------------------------------------- cluster and progress
def test_local_workers_one_per_gpu_or_n_per_gpu_or_cpu(monkeypatch):
    from kvprof.sweep.cluster import local_worker_specs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    specs = local_worker_specs(2, 2, cpu_workers=7)
    assert sorted(specs) == ["gpu0-0", "gpu0-1", "gpu1-0", "gpu1-1"]
    assert {k: (v["options"]["env"]["CUDA_VISIBLE_DEVICES"], v["options"]["resources"], v["options"]["nthreads"])
            for k, v in specs.items()} == {"gpu0-0": ("3", {"GPU": 1}, 1), "gpu0-1": ("3", {"GPU": 1}, 1),
                                           "gpu1-0": ("5", {"GPU": 1}, 1), "gpu1-1": ("5", {"GPU": 1}, 1)}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [v["options"]["env"]["CUDA_VISIBLE_DEVICES"] for v in local_worker_specs(2, 1, 7).values()] == ["0", "1"]
    cpu = local_worker_specs(0, 1, cpu_workers=3)
    assert sorted(cpu) == ["cpu0", "cpu1", "cpu2"] and all("resources" not in v["options"] for v in cpu.values())


def test_earlier_sweeps_order_a_fresh_sweep_longest_first_and_feed_its_eta(tmp_path):
    # --costs-from: a fresh sweep knows no costs, so Dask ran its cells in submission order and the 4-GPU staged sweep of
    # session 9 ended with 19 s on one or two GPUs; an earlier sweep's cell times put the long cells first
    from kvprof.sweep.command import cell_priorities, earlier_cells
    from kvprof.sweep.progress import eta_s

    def cell(method, integration="staged", frames=42, **kw):
        return {"id": f"{method}-{integration}-{frames}", "method": method, "integration": integration, "frames": frames,
                "rolling": None, **kw}

    old = tmp_path / "old"
    old.mkdir()
    done = [cell("prq_int4", status="complete", seconds=61.2), cell("bf16", status="complete", seconds=27.1),
            cell("prq_int4", "study", status="complete", seconds=420.0), cell("rtn_int4", status="failed")]
    manifest = mf.new_manifest({}, done, ["kvprof", "sweep"])
    for c, was in zip(manifest["cells"], done):
        c["status"] = was["status"]  # as the finished sweep recorded them
    mf.write_manifest(old, manifest)
    earlier = earlier_cells([old])
    assert earlier_cells([old / mf.MANIFEST_FILE]) == earlier  # a manifest kept apart from its folder reads the same
    todo = [cell("bf16"), cell("rtn_int4"), cell("prq_int4"), cell("prq_int4", frames=126)]
    # a cell's kind is its method, integration, frames and rolling window: the 126-frame and the failed cells are unknown
    assert cell_priorities(todo, earlier) == [27_100, 0, 61_200, 0]
    assert cell_priorities(todo, []) == [0, 0, 0, 0]
    # bf16 and prq_int4 at 42 frames as measured; rtn_int4 and the 126-frame cell at the median of every finished cell
    unknown = statistics.median([61.2, 27.1, 420.0])
    assert eta_s(todo, todo, workers=2, earlier=earlier) == pytest.approx((27.1 + 61.2 + 2 * unknown) / 2)


def test_eta_uses_the_median_cost_of_each_method_then_of_all():
    from kvprof.sweep.progress import eta_s, render

    done = [{"id": f"prq{i}", "method": "prq", "status": "complete", "seconds": s} for i, s in enumerate((400, 420, 9000))]
    done += [{"id": "bf16", "method": "bf16", "status": "complete", "seconds": 30}, {"id": "x", "method": "rtn", "status": "failed"}]
    pending = [{"id": "p", "method": "prq", "status": "pending"}, {"id": "q", "method": "new", "status": "pending"}]
    assert eta_s(done + pending, pending, workers=2) == (420 + 410) / 2  # new: median of all finished cells
    assert eta_s(done, [], workers=2) is None and eta_s(pending, pending, workers=2) is None
    from rich.console import Console

    con = Console(width=120, record=True)
    con.print(render(done + pending, {"tcp://w0": ["p"]}, {"tcp://w0": {"name": "gpu0", "gpu": "0", "done": 4, "failed": 1}}, 65))
    text = con.export_text()
    assert "sweep: 4/7 done (0 oom) · 1 running · 1 failed · elapsed 1m05s · ETA 13m50s" in text  # one worker
    assert "gpu0" in text and "p" in text


# ---------------------------------------------------------------------- the task
def _fake_trace(returncode: int, status: str = "complete"):
    def fake(cmd, **kw):
        out, run_id = Path(cmd[cmd.index("--out") + 1]), cmd[cmd.index("--run-id") + 1]
        (out / run_id).mkdir()
        (out / run_id / "meta.json").write_text(json.dumps({"status": status}))
        summary = {"status": status, "peak": {"bytes": 123, "stage": "rollout"}, "kv": None, "wall_s": 1.0,
                   "stage_times": [{"stage": "rollout", "host_ms": 500.0}], "reconciliation": {"tracker": "dispatch"}}
        stdout = "a library printed this first\n" + json.dumps(summary, indent=2) if returncode in (0, 3) else ""
        return subprocess.CompletedProcess(cmd, returncode, stdout, "boom")
    return fake


def test_a_worker_that_does_not_see_the_folder_ships_the_trace_back(tmp_path, monkeypatch):
    monkeypatch.setattr(task.subprocess, "run", _fake_trace(0))
    out = tmp_path / "sw"
    res = task.run_cell({"id": "bf16-study-6f-s0", "args": []}, str(out), str(tmp_path / "no-marker"), "tok")
    assert not (out / "traces").exists()  # nothing written on the worker's side of the client's folder
    assert res["status"] == "complete" and res["run_id"] == "bf16-study-6f-s0" and res["result"]["rollout_s"] == 0.5
    task.unpack(res["tar"], out / "traces", "bf16-study-6f-s0.a2")
    assert json.loads((out / "traces" / "bf16-study-6f-s0.a2" / "meta.json").read_text()) == {"status": "complete"}


def test_oom_is_an_outcome_and_a_dead_trace_process_raises_for_a_retry(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    marker.write_text("tok")
    monkeypatch.setattr(task.subprocess, "run", _fake_trace(3, "oom"))
    res = task.run_cell({"id": "c", "args": []}, str(tmp_path), str(marker), "tok")
    assert res["status"] == "oom" and "tar" not in res and (tmp_path / "traces" / "c").is_dir()
    monkeypatch.setattr(task.subprocess, "run", _fake_trace(-9, "running"))
    with pytest.raises(task.CellError, match=r"c\.a2: kvprof trace killed by signal 9 .*boom"):
        task.run_cell({"id": "c", "args": []}, str(tmp_path), str(marker), "tok")


def test_a_running_cluster_at_scheduler_runs_the_cells_and_oom_is_a_result(tmp_path):
    from distributed import LocalCluster

    out = tmp_path / "sw"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster:
        code = main(["sweep", "--scheduler", cluster.scheduler_address, "--methods", "bf16", "--frames", "3", "--no-decode",
                     "--budget", "256KiB", "--out", str(out), "--quiet"])
        assert code == 0 and len(cluster.workers) == 1  # the sweep leaves a cluster it did not start running
    m = mf.read_manifest(out)
    (cell,) = m["cells"]
    assert m["cluster"]["local"] is False and m["cluster"]["gpus"] == 0
    assert cell["id"] == "bf16-study-3f-s0" and "tiny" in cell["args"]  # CPU workers: trace's CPU defaults
    # out of memory (a simulated smaller card): a result row of the sweep, not a failure
    assert cell["status"] == "oom" and cell["result"]["peak_bytes"] > 0 and cell["torn"] == []
    assert mf.result_traces(out) == [out / "traces" / "bf16-study-3f-s0"]
    # where the cell's seconds went: start-up (interpreter, imports) before the trace, the trace, then its close and exit
    ph = cell["phases"]
    assert ph["startup_s"] > 0.3 and ph["trace_s"] > 0 and ph["after_s"] >= 0
    assert ph["startup_s"] + ph["trace_s"] + ph["after_s"] <= cell["seconds"] + 0.1  # /proc's start time: to ~10 ms


class _Done:
    """A finished (or failed) task as the client sees it."""

    def __init__(self, status: str, result: Any = None, exc: BaseException | None = None) -> None:
        self.status, self._result, self._exc = status, result, exc

    def result(self) -> Any:
        return self._result

    def exception(self) -> BaseException | None:
        return self._exc


def test_the_client_records_shipped_traces_failures_and_torn_attempts(tmp_path, monkeypatch):
    from kvprof.sweep.command import _record
    from kvprof.sweep.progress import SweepProgress

    out, root = tmp_path / "sw", tmp_path / "sw" / "traces"
    (root / "c").mkdir(parents=True)
    (root / "c" / "meta.json").write_text(json.dumps({"status": "running"}))  # an attempt a lost worker left
    monkeypatch.setattr(task.subprocess, "run", _fake_trace(0))
    shipped = task.run_cell({"id": "c", "args": []}, str(tmp_path / "elsewhere"), str(tmp_path / "no-marker"), "tok")
    cell, workers = {"id": "c", "status": "pending"}, {}
    view = SweepProgress(1, disable=True)
    assert _record(cell, _Done("finished", shipped), out, workers, view) == 0
    assert cell["status"] == "complete" and cell["run_id"] == "c.a2" and "tar" not in cell  # renamed beside the torn one
    assert (root / "c.a2" / "meta.json").is_file() and cell["torn"] == [{"run_id": "c", "status": "running"}]
    assert list(workers.values())[0]["done"] == 1
    failed = {"id": "c", "status": "pending"}
    assert _record(failed, _Done("error", exc=RuntimeError("worker lost twice")), out, workers, view) == 1
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: worker lost twice"
    assert [t["run_id"] for t in failed["torn"]] == ["c", "c.a2"]


# ---------------------------------------------------------------------- the acceptance sweep
def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop_a_running_trace(sweep_pid: int, done: set[str]) -> tuple[Any, Any, str] | None:
    """Stop (SIGSTOP) a trace process of a cell not done yet whose trace says `running`, so that it
    is still running when its worker is killed; returns (worker, trace process, run id)."""
    for p in _descendants(sweep_pid):
        try:
            cmd = p.cmdline()
            if "trace" not in cmd or "--run-id" not in cmd:
                continue
            run_id = cmd[cmd.index("--run-id") + 1]
            meta = Path(cmd[cmd.index("--out") + 1]) / run_id / "meta.json"
            if run_id in done or not meta.exists():
                continue
            p.suspend()
            if json.loads(meta.read_text()).get("status") == "running":
                return p.parent(), p, run_id
            p.resume()
        except (psutil.Error, OSError, ValueError):
            continue
    return None


def _gone(p: Any) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sweep_survives_a_lost_worker_and_a_lost_client_then_resumes(tmp_path):
    out = tmp_path / "sw"
    args = ("--methods", METHODS, "--integrations", "study,staged", "--frames", "6", "--no-decode")
    proc = subprocess.Popen(sweep_cmd(out, *args), env=env(), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # a worker killed mid-trace: its trace process goes with it, the cell is retried on a worker
        first = wait_until(lambda: cells_with(out, "complete"), 300, "a first complete cell")
        worker, trace, killed = wait_until(lambda: _stop_a_running_trace(proc.pid, {c["run_id"] for c in first.values()}),
                                           300, "a worker tracing")
        worker.send_signal(signal.SIGKILL)
        wait_until(lambda: _gone(trace), 60, "the lost worker's trace process to end with it")
        wait_until(lambda: len(cells_with(out, "complete")) >= 2, 300, "2 complete cells")
    finally:  # the client, its cluster and their traces all killed at once
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                               for p in psutil.process_iter() if _in_group(p, proc.pid)), 60, "the sweep's processes to end")
    before = cells_with(out, "complete")
    assert 2 <= len(before) < 4
    stamps = {c["run_id"]: (out / "traces" / c["run_id"] / "meta.json").stat().st_mtime_ns for c in before.values()}

    done = subprocess.run(sweep_cmd(out, "--resume", "--json"), env=env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = mf.read_manifest(out)
    assert json.loads(done.stdout)["counts"] == {"complete": 4} == mf.counts(m)
    after = {c["id"]: c for c in m["cells"]}
    for cid, c in before.items():  # finished cells were not run again
        assert after[cid]["run_id"] == c["run_id"] and after[cid]["finished"] == c["finished"]
        assert (out / "traces" / c["run_id"] / "meta.json").stat().st_mtime_ns == stamps[c["run_id"]]
    cell_of_killed = next(c for c in m["cells"] if killed == c["id"] or killed.startswith(c["id"] + ".a"))
    assert cell_of_killed["run_id"] != killed
    assert {"run_id": killed, "status": "running"} in cell_of_killed["torn"]  # its writer died: torn, not a result
    results = mf.result_traces(out)
    assert len(results) == 4 and killed not in {p.name for p in results}
    assert {json.loads((p / "meta.json").read_text())["status"] for p in results} == {"complete"}
    assert len(m["runs"]) == 2 and m["cluster"]["workers"] == 2 and {c["worker_name"] for c in m["cells"]} <= {"cpu0", "cpu1"}
    _readers_open_the_sweep(out, results, tmp_path)


def _in_group(p: Any, pgid: int) -> bool:
    try:
        return os.getpgid(p.pid) == pgid
    except (OSError, psutil.Error):
        return False


def _readers_open_the_sweep(out: Path, results: list[Path], tmp_path: Path) -> None:
    """compare, report (md) and tui open the sweep as its 4 result traces."""
    import asyncio
    import contextlib
    import io

    import tui.app

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["compare", str(out), "--json"]) == 0
    rows = json.loads(buf.getvalue())
    assert [r["trace"] for r in rows] == [p.name for p in results]
    assert sorted((r["method"], r["integration"]) for r in rows) == sorted(
        (m, i) for m in METHODS.split(",") for i in ("study", "staged"))
    # each row against the bf16 trace of its own shape, found in the sweep (a retried cell's trace is `<cell>.aN`)
    bf16 = {r["integration"]: r["trace"] for r in rows if r["method"] == "bf16"}
    assert all(t.partition(".a")[0] == f"bf16-{i}-6f-s0" for i, t in bf16.items())
    for r in rows:
        assert r["baseline"] == bf16[r["integration"]]
        assert r["method"] != "bf16" or (r["peak_vs_baseline"] == 1.0 and r["peak_delta_bytes"] == 0)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", str(out), "-o", str(tmp_path / "sweep.md")]) == 0
    md = (tmp_path / "sweep.md").read_text()
    assert all(p.name in md for p in results)

    opened: dict[str, Any] = {}
    orig = tui.app.run_tui
    tui.app.run_tui = lambda paths, follow=False, root=None, newest=None: opened.update(paths=paths, root=root) or 0
    try:
        assert main(["tui", str(out)]) == 0
    finally:
        tui.app.run_tui = orig
    assert opened["paths"] == results and opened["root"] == out / "traces"

    async def browse() -> None:
        app = tui.app.KvprofApp(opened["paths"], root=opened["root"])
        async with app.run_test(size=(140, 45)) as pilot:
            deadline = time.monotonic() + 60
            while app.current_view() is None:
                assert time.monotonic() < deadline, "the TUI did not open the sweep's first trace"
                await pilot.pause(0.05)
            assert len(app.sources) == 4 and app.sources[0].error is None

    asyncio.run(browse())


def test_ctrl_c_stops_the_sweep_with_one_message_and_no_worker_traceback(tmp_path):
    """SIGINT to the sweep's whole process group (a terminal's Ctrl-C, `timeout -s INT`): the client
    says where the finished cells are and exits 130; the workers ignore it (no asyncio traceback from
    each), the run is in the manifest and `--resume` runs the rest."""
    out = tmp_path / "sw"
    args = ("--methods", "bf16,rtn_int4,kivi_int4", "--integrations", "staged", "--frames", "3", "--no-decode")
    proc = subprocess.Popen(sweep_cmd(out, *args), env=env(), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: cells_with(out, "complete"), 300, "a first complete cell")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "kvprof sweep: interrupted; finished cells are in" in err
    run = mf.read_manifest(out)["runs"][-1]
    assert run["exit_code"] == 130 and run["seconds"] > 0

