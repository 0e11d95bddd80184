"""Issue 16 section 4: the reliability probe (full disks, killed writers, bad input, damaged traces)."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pandas as pd
import pytest

from kvprof.cli import EXIT_RUN_FAILED, main
from kvprof.read.trace import load_trace
from tracers import trace_io
from tracers.trace_io import EVENTS_FILE, META_FILE

TINY = ["trace", "--method", "bf16", "--frames", "3", "--no-decode", "--quiet"]


def _no_tmp(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], list(folder.iterdir())


# ---------------------------------------------------------------------- 1: a full disk
class _FullDisk:
    """A file that takes `room` bytes, then fails as a full disk would."""

    def __init__(self, real, room: int):
        self._real, self._room = real, room

    def write(self, text: str) -> int:
        if len(text) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(text)
        return self._real.write(text)

    def flush(self) -> None:
        self._real.flush()

    def close(self) -> None:
        self._real.close()


def test_disk_full_during_the_run_fails_the_trace_once_and_keeps_what_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_init = trace_io.EventLog.__init__

    def init(self, path, flush_interval_s=0.25):
        real_init(self, path, flush_interval_s)
        self._file = _FullDisk(self._file, 20_000)

    monkeypatch.setattr(trace_io.EventLog, "__init__", init)
    code = main([*TINY, "--out", str(tmp_path), "--run-id", "full"])
    err = capsys.readouterr().err
    folder = tmp_path / "full"
    assert code == EXIT_RUN_FAILED
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write the trace folder {folder}" in lines[0] and "B more were needed" in lines[0]
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["status"] == "failed" and "No space left" in meta["error"]
    _no_tmp(folder)
    trace = load_trace(folder)  # the event log up to the failure reads
    assert trace.status == "failed" and len(trace.allocations) > 0


def test_disk_full_while_writing_the_tables_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import tracers.trace_io as trace_io

    real = trace_io.write_parquet
    calls = []

    def write_parquet(path, name, df):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, name, df)

    monkeypatch.setattr(trace_io, "write_parquet", write_parquet)
    code = main([*TINY, "--out", str(tmp_path), "--run-id", "full"])
    err = capsys.readouterr().err
    folder = tmp_path / "full"
    assert code == EXIT_RUN_FAILED and "cannot write the trace folder" in err and "Traceback" not in err
    _no_tmp(folder)
    assert not list(folder.glob("*.parquet"))  # the event log stays the one source
    trace = load_trace(folder)
    assert trace.status == "failed" and trace.raw.live and len(trace.allocations) > 0


# ---------------------------------------------------------------------- 3, 14, "Also": refused input
@pytest.mark.parametrize("args, words", [
    (["--method", "flowcache_hybrid_int2", "--param", "budget_first=1e400"], "'budget_first'"),
    (["--method", "flowcache_hybrid_int2", "--param", "budget_first=1e300"], "'budget_first'"),
    (["--method", "qaq_int4", "--param", "outlier_sigma=inf"], "'outlier_sigma'"),
    (["--method", "qaq_int4", "--param", "outlier_sigma=nan"], "'outlier_sigma'"),
    (["--method", "flowcache_native", "--param", "reuse_threshold=inf"], "'reuse_threshold'"),
    (["--method", "spatial_mixed_fg_rtn_int4_bg_rtn_int2", "--param", "score_threshold=inf"], "'score_threshold'"),
    (["--method", "spatial_mixed_fg_rtn_int4_bg_rtn_int2", "--param", "min_share=0.9", "--param", "max_share=0.5"],
     "min_share 0.9 is above max_share 0.5"),
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--run-id", "x" * 300], "--run-id: 300 characters"),
    (["--run-id", "a\nb"], "control character"),
    (["--native"], "add --host-profile"),
    (["--free-cache-before-decode"], "--no-decode"),  # TINY has --no-decode
])
def test_bad_values_are_refused_before_any_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 args: list[str], words: str) -> None:
    out = tmp_path / "out"
    assert main([*TINY, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvprof: error: ") and words in err and "Traceback" not in err, err
    assert not out.exists() or not list(out.iterdir())


def test_an_impossible_allocation_is_an_oom_with_its_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvprof.cli import EXIT_OOM

    assert main([*TINY, "--frames", "300000000", "--out", str(tmp_path), "--run-id", "big"]) == EXIT_OOM
    err = capsys.readouterr().err
    assert "kvprof: out of memory in setup" in err and "asked for 1716.61 GiB" in err and "Traceback" not in err
    trace = load_trace(tmp_path / "big")
    assert trace.status == "oom" and trace.meta["oom"]["requested_bytes"] == 1_843_200_000_000


def test_a_bad_vae_file_is_refused_before_the_trace_folder_is_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvprof.workload.vae import build_vae

    vae = tmp_path / "vae"
    build_vae("tiny").save_pretrained(vae)
    weights = vae / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "out"
    assert main(["trace", "--frames", "3", "--quiet", "--vae", str(vae), "--out", str(out), "--run-id", "v"]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: not a readable safetensors file" in err
    assert not (out / "v").exists()


# ---------------------------------------------------------------------- 10: default run ids
def test_two_runs_with_the_same_default_run_id_both_get_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from kvprof import runner

    monkeypatch.setattr(runner, "default_run_id", lambda *a: "same-second")
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same-second", "same-second-2"]
    assert load_trace(tmp_path / "same-second-2").meta["run_id"] == "same-second-2"
    # an explicit id is the user's choice: taken, it is refused
    assert main([*TINY, "--out", str(tmp_path), "--run-id", "same-second"]) == 2
    assert "a trace with this run id exists" in capsys.readouterr().err


# ---------------------------------------------------------------------- 4: a bad quality reference
def test_an_unreadable_quality_reference_is_missing_quality_and_the_summary_is_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quick = ["trace", "--frames", "3", "--no-decode", "--quality", "--quiet", "--out", str(tmp_path)]
    assert main([*quick, "--method", "bf16", "--run-id", "ref"]) == 0
    latents = tmp_path / "ref" / "quality" / "latents.pt"
    latents.write_bytes(latents.read_bytes()[:100])  # truncated
    capsys.readouterr()
    assert main([*quick, "--method", "rtn_int4", "--run-id", "cand"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "status complete" in out and "peak" in out
    flat = "".join(out.split())  # wrapped at the terminal width
    assert "".join(f"quality vs bf16 missing: the bf16 reference {latents}: unreadable saved output".split()) in flat
    summary = json.loads((tmp_path / "cand" / "summary.json").read_text())
    assert str(latents) in summary["quality"]["missing"]


# ---------------------------------------------------------------------- 5: Rich markup in user strings
def test_markup_in_paths_and_stage_names_is_printed_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from kvprof import api

    out = tmp_path / "x["
    assert main([*TINY, "--out", str(out), "--run-id", "b]"]) == 0
    assert f"trace {out / 'b]'} status complete" in " ".join(capsys.readouterr().out.split())
    with api.trace(tmp_path / "staged", device="cpu") as t:
        with t.stage("step[/i]", 0), t.stage("[bold]inner"):
            x = torch.ones(1024)
        del x
    assert main(["summary", str(tmp_path / "staged")]) == 0
    text = capsys.readouterr().out
    assert "step[/i][0]/[bold]inner" in text and "step[/i]/[bold]inner" in text


# ---------------------------------------------------------------------- 7: summary.json checked on load
def _closed_trace(tmp_path: Path) -> Path:
    from kvprof import api
    import torch

    with api.trace(tmp_path / "t", device="cpu") as t:
        with t.stage("work"):
            x = torch.ones(256)
        t.record_kv_bytes(0, 0, 0, 0)
        del x
    return tmp_path / "t"


def test_a_zero_kv_ratio_is_shown_as_a_dash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _closed_trace(tmp_path)
    assert main(["summary", str(folder)]) == 0
    assert "ratio logical/stored -, logical/resident -" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("change, field", [
    (lambda s: s["peak"].update(bytes=10**30), "peak.bytes"),
    (lambda s: s.update(kv="x"), "kv"),
    (lambda s: s.update(reconciliation=[1]), "reconciliation"),
    (lambda s: s["peak"]["by_category"].update(weights="many"), "peak.by_category"),
    (lambda s: s.update(stage_times={"a": 1}), "stage_times"),
])
def test_a_damaged_summary_is_named_on_load(tmp_path: Path, capsys: pytest.CaptureFixture[str], change, field: str) -> None:
    folder = _closed_trace(tmp_path)
    path = folder / "summary.json"
    summary = json.loads(path.read_text())
    change(summary)
    path.write_text(json.dumps(summary))
    for cmd in (["summary", str(folder)], ["compare", str(folder)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert f"field {field!r}" in err and str(path) in err and "Traceback" not in err, err


def test_a_zero_peak_prints_without_dividing_by_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _closed_trace(tmp_path)
    path = folder / "summary.json"
    summary = json.loads(path.read_text())
    summary["peak"]["bytes"] = 0
    path.write_text(json.dumps(summary))
    assert main(["summary", str(folder)]) == 0
    assert "peak 0 B" in capsys.readouterr().out


# ---------------------------------------------------------------------- 8, 9, 11, 12, 13, 15: damaged traces, outputs
@pytest.fixture
def tiny_copy(trace_factory, tmp_path: Path) -> Path:
    """A private copy of a closed tiny trace, free to damage."""
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(trace_factory(method="bf16", frames=3), dst)
    return dst


def test_allocations_freed_before_made_are_named_and_skipped(tiny_copy: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_copy / "allocations.parquet"
    a = pd.read_parquet(path)
    freed = a.index[a["q_free"] != -1][:2]
    a.loc[freed, "q_free"] = a.loc[freed, "q_alloc"] - 1
    a.to_parquet(path, index=False)
    assert main(["report", str(tiny_copy), "-o", str(tmp_path / "r.md")]) == 0
    err = capsys.readouterr().err
    ids = ", ".join(str(i) for i in a.loc[freed, "id"])
    assert f"skipped 2 damaged allocation row(s) freed before made (q_free < q_alloc): id {ids}" in err, err
    assert len(load_trace(tiny_copy).allocations) == len(a) - 2


def test_export_refuses_to_write_into_a_trace_folder(tiny_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.read_bytes() for p in tiny_copy.iterdir()}
    assert main(["export", str(tiny_copy), "--format", "parquet", "-o", str(tiny_copy)]) == 2
    assert main(["export", str(tiny_copy), "--format", "perfetto", "-o", str(tiny_copy / "p.json")]) == 2
    assert "is a trace folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tiny_copy.iterdir()} == before


@pytest.mark.parametrize("scale", ["inf", "nan", "1000000", "0", "-1"])
def test_report_scale_is_bounded(tiny_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], scale: str) -> None:
    assert main(["report", str(tiny_copy), "-o", str(tmp_path / "r.png"), "--scale", scale]) == 2
    assert "--scale" in capsys.readouterr().err and not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("cmd", [["report", "-o", "r.md"], ["export", "--format", "csv", "-o", "csv"],
                                 ["export", "--format", "perfetto", "-o", "p.json"]])
def test_report_and_export_on_a_full_disk_leave_no_half_file(tiny_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], cmd: list[str]) -> None:
    real = Path.write_bytes
    real_csv = pd.DataFrame.to_csv

    def half(self, data):
        real(self, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    def half_csv(self, path=None, *a, **kw):
        Path(path).write_text("id,q")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Path, "write_bytes", half)
    monkeypatch.setattr(pd.DataFrame, "to_csv", half_csv)
    out = tmp_path / "out"
    out.mkdir()
    args = [cmd[0], str(tiny_copy), *cmd[1:-1], str(out / cmd[-1])]
    assert main(args) == 2
    assert "No space left on device" in capsys.readouterr().err
    left = [p for p in out.rglob("*") if p.is_file()]
    assert left == [], left


def test_meta_fields_inside_rollout_are_checked_on_load(tiny_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((tiny_copy / META_FILE).read_text())
    meta["rollout"]["frames"] = "twelve"
    (tiny_copy / META_FILE).write_text(json.dumps(meta))
    assert main(["diagnose", str(tiny_copy), "--run-baseline"]) == 2
    err = capsys.readouterr().err
    assert "field 'rollout.frames' should be an integer" in err and "Traceback" not in err


@pytest.mark.parametrize("field, value, said", [("param_defaults", [""], "an object"), ("lossless", 1, "true or false")])
def test_meta_method_facts_are_checked_on_load(tiny_copy: Path, capsys: pytest.CaptureFixture[str],
                                               field: str, value: object, said: str) -> None:
    # found by tests/test_fuzz_reader.py: a damaged method_facts field reached diagnose's byte model
    meta = json.loads((tiny_copy / META_FILE).read_text())
    meta["method_facts"][field] = value
    (tiny_copy / META_FILE).write_text(json.dumps(meta))
    assert main(["diagnose", str(tiny_copy)]) == 2
    err = capsys.readouterr().err
    assert f"field 'method_facts.{field}' should be {said}" in err and "Traceback" not in err


def test_markdown_report_escapes_html_and_table_bars(tiny_copy: Path, tmp_path: Path) -> None:
    meta = json.loads((tiny_copy / META_FILE).read_text())
    meta.update(method='"><img src=x onerror=alert(1)>', error="<script>alert(1)</script> a|b")
    (tiny_copy / META_FILE).write_text(json.dumps(meta))
    out = tmp_path / "r.md"
    assert main(["report", str(tiny_copy), str(tiny_copy), "-o", str(out)]) == 0
    text = out.read_text()
    assert "<script>" not in text and "<img" not in text and "&lt;script&gt;" in text
    assert "a\\|b" in text
    for line in text.splitlines():  # every table row keeps its column count
        if line.startswith("| trace"):
            cols = line.count(" | ")
        elif line.startswith("| ") and "copy" in line:
            assert line.replace("\\|", "").count(" | ") == cols, line


def test_a_torn_tail_is_said_with_its_size(tiny_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = tmp_path / "live"
    live.mkdir()
    meta = json.loads((tiny_copy / META_FILE).read_text())
    meta.update(status="running", pid=None)
    (live / META_FILE).write_text(json.dumps(meta))
    line = json.dumps({"k": "a", "id": 1, "t": 1, "q": 1, "b": 64, "c": "weights", "s": 0}) + "\n"
    (live / EVENTS_FILE).write_text(line + '{"k":"a","id":2,' + "x" * 5000)
    assert main(["summary", str(live)]) == 0
    captured = capsys.readouterr()
    assert f"{live / EVENTS_FILE}: skipped a torn tail of 5,016 bytes" in captured.err
    assert "peak 64 B" in captured.out
