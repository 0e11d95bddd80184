"""benchmarks/render_sweep_report.py: the GPU sweep's report, rendered here from tiny CPU traces."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmark_scripts import load


def _script():
    return load("render_sweep_report")


def test_renders_pngs_first_from_several_trace_folders(trace_factory, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copytree(trace_factory(method="bf16", frames=6), a / "bf16-tiny")
    shutil.copytree(trace_factory(method="rtn_int4", frames=6), b / "rtn-tiny")
    out = tmp_path / "report"
    assert _script().main([str(a), str(b), str(tmp_path / "missing"), "--include-cpu", "--out", str(out)]) == 0
    lines = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert [Path(p).name for p in lines] == ["bf16-tiny.png", "rtn-tiny.png", "comparison.png", "compare.csv",
                                             "sweep.md", "sweep.html"]
    for name in ("bf16-tiny.png", "rtn-tiny.png", "comparison.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_only_by_default_names_the_folders(trace_factory, tmp_path, capsys):
    shutil.copytree(trace_factory(method="bf16", frames=6), tmp_path / "bf16-tiny")
    assert _script().main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: no GPU traces found; --include-cpu renders CPU traces too" in err


def test_pngs_only_and_skip_existing_render_only_what_is_new(trace_factory, tmp_path, capsys):
    a = tmp_path / "a"
    a.mkdir()
    shutil.copytree(trace_factory(method="bf16", frames=6), a / "bf16-tiny")
    shutil.copytree(trace_factory(method="rtn_int4", frames=6), a / "rtn-tiny")
    out = tmp_path / "report"
    out.mkdir()
    (out / "bf16-tiny.png").write_bytes(b"kept")
    assert _script().main([str(a), "--include-cpu", "--out", str(out), "--pngs-only", "--skip-existing"]) == 0
    lines = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert [Path(p).name for p in lines] == ["rtn-tiny.png"]
    assert (out / "bf16-tiny.png").read_bytes() == b"kept"
    assert sorted(p.name for p in out.iterdir()) == ["bf16-tiny.png", "rtn-tiny.png"]


def _table(n: int):
    import pandas as pd

    rows = [{"trace": f"m{i}-staged", "method": "bf16" if i == 0 else f"m{i}", "peak_bytes": 20 * 2**30 - i,
             "logical_kv_bytes": 11 * 2**30, "stored_kv_bytes": 3 * 2**30, "resident_kv_bytes": 4 * 2**30}
            for i in range(n)]
    return pd.DataFrame(rows)


def test_comparison_of_a_whole_sweep_gets_one_row_per_trace():
    from kvprof.read.report import WIDE_COMPARISON, comparison_chart

    few = comparison_chart(_table(WIDE_COMPARISON)).to_dict()["layer"][0]["encoding"]
    many_spec = comparison_chart(_table(WIDE_COMPARISON + 1)).to_dict()
    many = many_spec["layer"][0]["encoding"]
    assert few["x"]["field"] == "trace" and few["y"]["field"] == "value"
    assert many["y"]["field"] == "trace" and many["x"]["field"] == "value" and many["yOffset"]["field"] == "measure"
    assert many_spec["height"] == 44 * (WIDE_COMPARISON + 1)
    assert many_spec["layer"][1]["encoding"]["x"]["field"] == "value"  # the bf16 reference line is vertical


def test_comparison_from_a_saved_csv(tmp_path, capsys):
    csv = tmp_path / "compare.csv"
    _table(14).to_csv(csv, index=False)
    out = tmp_path / "r"
    assert _script().main(["--comparison-from", str(csv), "--out", str(out)]) == 0
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    height = int.from_bytes(png[20:24], "big")
    assert height > 44 * 14  # one row per trace, at scale 1.5
    assert "14 traces from" in capsys.readouterr().out


def test_comparison_from_several_csvs_keeps_each_trace_once(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _table(3).to_csv(a, index=False)
    _table(14).iloc[2:].to_csv(b, index=False)  # m2 again, and 11 new traces
    assert _script().main(["--comparison-from", str(a), str(b), "--out", str(tmp_path / "r")]) == 0
    assert "14 traces from" in capsys.readouterr().out


def test_comparison_from_a_csv_without_the_columns_is_named(tmp_path, capsys):
    csv = tmp_path / "other.csv"
    csv.write_text("trace,method\nx,bf16\n")
    assert _script().main(["--comparison-from", str(csv), "--out", str(tmp_path / "r")]) == 2
    assert (f"{csv}: lacks column(s) peak_bytes, logical_kv_bytes, stored_kv_bytes, resident_kv_bytes"
            in capsys.readouterr().err)


def test_palette_pngs_are_smaller_and_keep_the_size(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    csv = tmp_path / "compare.csv"
    _table(3).to_csv(csv, index=False)
    assert _script().main(["--comparison-from", str(csv), "--out", str(tmp_path / "rgba")]) == 0
    assert _script().main(["--comparison-from", str(csv), "--out", str(tmp_path / "pal"), "--palette", "64"]) == 0
    rgba, pal = Image.open(tmp_path / "rgba" / "comparison.png"), Image.open(tmp_path / "pal" / "comparison.png")
    assert pal.mode == "P" and pal.size == rgba.size
    assert (tmp_path / "pal" / "comparison.png").stat().st_size < (tmp_path / "rgba" / "comparison.png").stat().st_size
