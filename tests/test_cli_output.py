"""What the commands print on a pipe: quiet on a closed pipe, whole rows (no 80-column wrap), table
headers, and `--sort` by the column titles the table shows (issue 16 section 3)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvprof.cli import main, print_summary
from kvprof.read.compare import compare_table
from kvprof.read.summary import load_summary

ROOT = Path(__file__).resolve().parents[1]


def _run_into_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run `kvprof argv` with stdout a pipe whose reader closed before the command wrote a byte
    (`kvprof ... | head` once head has what it wants): deterministic, no race with the child."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "kvprof.cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              cwd=ROOT, env=env, timeout=300, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("kind", ["compare --json", "summary", "methods"])
def test_a_closed_pipe_ends_the_command_quietly(kind: str, bf16_trace: Path) -> None:
    argv = {"compare --json": ["compare", "--json", str(bf16_trace)], "summary": ["summary", str(bf16_trace)],
            "methods": ["methods", "--json"]}[kind]
    done = _run_into_closed_pipe(argv)
    err = done.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert err == "", err
    assert done.returncode in (141, 1), done.returncode  # Rich's own handler exits 1


def test_sort_accepts_the_titles_the_table_shows(bf16_trace: Path, trace_factory) -> None:
    small = trace_factory(method="bf16", frames=3)
    by_name = compare_table([bf16_trace, small], sort="-peak_bytes")
    for title in ("-peak", "-Peak"):
        assert list(compare_table([bf16_trace, small], sort=title)["trace"]) == list(by_name["trace"])
    assert list(compare_table([small, bf16_trace], sort="wall s")["trace"]) == list(
        compare_table([small, bf16_trace], sort="wall_s")["trace"])
    assert list(compare_table([small, bf16_trace], sort="decode device ms")["trace"]) == list(
        compare_table([small, bf16_trace], sort="ms_decode")["trace"])
    assert list(compare_table([small, bf16_trace], sort="decode host ms")["trace"]) == list(
        compare_table([small, bf16_trace], sort="host_ms_decode")["trace"])


def test_sort_by_title_on_the_command_line(bf16_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(bf16_trace), "--sort=-peak", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["peak_bytes"] > 0


def test_summary_rows_are_whole_on_a_pipe(bf16_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = load_summary(bf16_trace)
    long_path = Path("/" + "x" * 90) / "bf16-tiny-study-12f-s0"
    print_summary(long_path, summary)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"trace {long_path}  status complete", lines[:2]  # was cut at 80 columns
    kv = [ln for ln in lines if ln.startswith("KV ")]
    assert len(kv) == 1 and "logical/resident" in kv[0], lines
    assert all(ln.strip() for ln in lines), lines  # no blank first line or wrapped remainders
    # kvprof's own time on the traced thread, as the run measured it (a CPU trace has no recorder drains)
    cost = [ln for ln in lines if ln.startswith("kvprof's own cost: ")]
    assert len(cost) == 1 and " stage and " in cost[0] and "% of the trace's" in cost[0] and "drains" not in cost[0]
    assert "the dispatch tracker's bookkeeping after each op " in cost[0]  # the CPU trace's allocator of record
    scopes = summary.tracer_cost["scopes"]
    assert scopes["stages"] > 0 and scopes["stages_s"] > 0 and scopes["tags_s"] >= 0


def test_methods_table_has_headers_and_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = lines[0]
    assert head.split()[:6] == ["#", "name", "K", "bits", "V", "bits"], head
    rows = {ln.split()[1]: ln for ln in lines[1:] if ln.split() and ln.split()[0].isdigit()}
    assert len(rows) == 33
    col = head.index("K bits")
    for name in ("bf16", "flowcache_prune_int4", "flowcache_prune_int2", "spatial_mixed_fg_quarot_kv_int4_bg_rtn_int2"):
        row = rows[name]
        assert row[col - 1] == " " and row[col] != " ", (name, row)  # K bits starts under its header
    policy = head.index("policy")
    assert rows["flowcache_prune_int2"][policy:].startswith("[rho_imp 0.1, rho_ret 0.30]")
