"""Numbers and labels (issue 16 section 2): logical KV named by the dtype it is counted at, code
storage only where a method stores codes (and in the run id when not the default), "-" where a
CPU run has no device time."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kvprof.read.analysis import logical_label, stage_times
from kvprof.cli import main
from kvprof.read.compare import compare_table, format_compare, trace_label
from kvprof.diagnose import diagnose
from kvprof.read.phases import OUTSIDE, allocation_phases
from kvprof.read.report import markdown_report
from kvprof.runner import TraceRequest, run_trace
from kvprof.read.trace import load_trace


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, Path]:
    """Tiny CPU traces (3 frames, no decode): bf16 and rtn_int4 --codes int16 in float32 (the CPU
    default), and bf16 in bfloat16; default run ids."""
    out = tmp_path_factory.mktemp("labels")
    made = {}
    for key, kw in {"bf16": {"method": "bf16"}, "int16": {"method": "rtn_int4", "codes": "int16"},
                    "bf16_bf16": {"method": "bf16", "dtype": "bfloat16"}}.items():
        outcome = run_trace(TraceRequest(out=out / key, frames=3, decode=False, **kw))
        assert outcome.status == "complete"
        made[key] = outcome.path
    return made


def test_logical_bytes_are_labelled_with_the_rollout_dtype(traces, capsys):
    t = load_trace(traces["bf16"])
    kv = json.loads((traces["bf16"] / "summary.json").read_text())["kv"]
    # float32 on the CPU tiny config: each kv_fp tensor is 3 frames x 24 tokens x 64 channels x 4 B
    fp = t.allocations[t.allocations["category"] == "kv_fp"]["bytes"]
    assert set(fp) == {72 * 64 * 4} and len(fp) == 4
    assert kv["logical_dtype"] == "float32" and kv["logical_bytes"] == kv["stored_bytes"] == int(fp.sum())
    assert json.loads((traces["bf16_bf16"] / "summary.json").read_text())["kv"]["logical_dtype"] == "bfloat16"
    assert logical_label("float32") == "logical (FP32)" and logical_label("bfloat16") == "logical (BF16)"

    assert main(["summary", str(traces["bf16"])]) == 0
    assert "logical (FP32) 72.00 KiB" in capsys.readouterr().out
    text = format_compare(compare_table([traces["bf16"], traces["int16"]]))
    assert "logical KV (FP32)" in text.splitlines()[0]
    mixed = format_compare(compare_table([traces["bf16"], traces["bf16_bf16"]]))
    assert "logical KV (FP32)" not in mixed and "float32" in mixed and "bfloat16" in mixed  # said per row
    assert "logical (FP32) 72.00 KiB" in markdown_report([load_trace(traces["bf16"])])
    assert "logical (BF16) 36.00 KiB" in markdown_report([load_trace(traces["bf16_bf16"])])
    assert "logical (FP32) 72.00 KiB" in diagnose(traces["int16"], traces["bf16"]).to_text()


def test_codes_named_in_run_id_and_absent_for_lossless_methods(traces):
    int16, bf16 = traces["int16"], traces["bf16"]
    assert re.fullmatch(r"\d{8}-\d{6}-rtn_int4-study-int16-tiny-3f-s0", int16.name)
    assert re.fullmatch(r"\d{8}-\d{6}-bf16-study-tiny-3f-s0", bf16.name)
    assert load_trace(bf16).meta["codes"] is None and load_trace(int16).meta["codes"] == "int16"
    assert trace_label(load_trace(bf16)) == "bf16/study (tiny, 3f)"
    assert trace_label(load_trace(int16)) == "rtn_int4/study/int16 (tiny, 3f)"
    df = compare_table([bf16, int16])
    assert df["codes"].isna().tolist() == [True, False] and df["codes"].iat[1] == "int16"
    row = format_compare(df).splitlines()[2]
    assert "int8" not in row and re.search(r"study\s+-\s+tiny", row)
    assert diagnose(bf16).codes is None


def test_no_device_time_on_cpu_is_shown_as_a_dash(traces, capsys):
    t = load_trace(traces["int16"])
    times = stage_times(t)
    assert times["device_ms"].isna().all() and times["host_ms"].gt(0).all()
    summary = json.loads((traces["int16"] / "summary.json").read_text())
    assert all(r["device_ms"] is None for r in summary["stage_times"])
    assert main(["summary", str(traces["int16"])]) == 0
    out = capsys.readouterr().out
    rollout = next(line for line in out.splitlines() if re.match(r"\s*rollout\s+\S\s+1\s", line))
    assert re.search(r"[0-9.]+\s+\S\s+-$", rollout.rstrip()), rollout  # host ms, then device ms "-"
    head = format_compare(compare_table([t])).splitlines()[0]
    assert "denoise host ms" in head and "device ms" not in head
    md = markdown_report([t])
    section = md[md.index("Time per stage kind"):]
    assert re.search(r"\| rollout \| 1 \| [0-9.]+ \| - \|", section)


def test_counting_kv_bytes_allocates_nothing_outside_stages(traces):
    """The final KV count ran after the rollout and allocated a 0-d tensor: an unexplained
    '(outside stages)' phase."""
    for key in ("int16", "bf16"):
        assert not (allocation_phases(load_trace(traces[key])) == OUTSIDE).any()
