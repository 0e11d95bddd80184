"""kvprof report and compare: the peak-keeping timeline envelope, self-contained HTML, PNG/SVG/PDF
through vl-convert, markdown tables, the comparison table, and incomplete (oom, live) traces."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kvprof.read.analysis import find_peak, timeline
from kvprof.read.compare import compare_table, format_compare
from kvprof.errors import UsageError
from kvprof.read.phases import downsampled_timeline, envelope, phase_peaks
from kvprof.read.report import TIMELINE_WIDTH, write_report
from kvprof.read.trace import load_trace
from tracers import SimulatedOOM, TraceSession, stage, tag

# ----------------------------------------------------------------------------- the envelope


def _check_envelope(y: np.ndarray, x: np.ndarray, buckets: int) -> None:
    df = pd.DataFrame({"x": x, "y": y, "row": np.arange(len(y))})
    out = envelope(df, "x", "y", buckets)
    assert len(out) <= max(len(df), 2 * buckets + 2)
    assert out["row"].is_monotonic_increasing  # real rows, in their order
    assert (df.loc[out["row"], "y"].to_numpy() == out["y"].to_numpy()).all()
    assert out["y"].max() == y.max() and out["y"].min() == y.min()
    assert out["row"].iat[0] == 0 and out["row"].iat[-1] == len(y) - 1
    if len(df) > 2 * buckets + 2:  # every bucket keeps its own extremes
        width = (x.max() - x.min()) / buckets if x.max() > x.min() else 1.0
        b = np.clip(((x - x.min()) / width).astype(int), 0, buckets - 1)
        kept = pd.Series(out["y"].to_numpy(), index=b[out["row"].to_numpy()])
        full = pd.Series(y, index=b)
        assert (kept.groupby(level=0).max() == full.groupby(level=0).max()).all()
        assert (kept.groupby(level=0).min() == full.groupby(level=0).min()).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=400), st.integers(1, 40), st.booleans())
def test_envelope_keeps_extremes(steps, buckets, uneven):
    y = np.cumsum(np.array(steps, dtype=np.int64))
    x = np.cumsum(np.arange(len(y)) % 7 if uneven else np.ones(len(y)))
    _check_envelope(y, x.astype(float), buckets)


def test_envelope_keeps_a_one_event_spike():
    y = np.zeros(100_000, dtype=np.int64)
    y[77_777] = 5  # a peak that lasts one event among 100k
    out = envelope(pd.DataFrame({"x": np.arange(len(y)), "y": y}), "x", "y", 50)
    assert len(out) <= 102 and out["y"].max() == 5


def test_downsampled_timeline_keeps_the_trace_peak(bf16_trace):
    trace = load_trace(bf16_trace)
    peak = find_peak(trace)
    full = timeline(trace)
    small = downsampled_timeline(trace, buckets=8)
    assert len(small) < len(full) and len(small) <= 18
    assert small["total"].max() == peak.bytes
    row = small.loc[small["total"].idxmax()]
    cats = [c for c in small.columns if c not in ("q", "t_ns", "total", "t_s")]
    assert sum(int(row[c]) for c in cats) == peak.bytes  # the stacked categories reach the peak exactly


def test_phase_peaks_match_the_peak(bf16_trace):
    trace = load_trace(bf16_trace)
    pp = phase_peaks(trace)
    assert pp["peak_bytes"].max() == find_peak(trace).bytes
    assert pp.loc[pp["peak_bytes"].idxmax(), "phase"] == "decode"
    assert {"setup", "denoise", "refresh", "decode"} <= set(pp["phase"])


# ----------------------------------------------------------------------------- report files


def test_html_is_self_contained(bf16_trace, tmp_path):
    out = write_report([bf16_trace], tmp_path / "r.html")
    page = out.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*['\"]?https?:", page, re.I)
    assert not re.search(r"""(import\s*\(|from)\s*['"]https?:""", page)
    assert not re.search(r"@import\s+url\(\s*['\"]?https?:", page)
    assert "vegaEmbed('#tl0'" in page
    peak = find_peak(load_trace(bf16_trace))
    assert f"{peak.bytes:,} B" in page


def test_svg_png_pdf_sizes(bf16_trace, tmp_path):
    svg = write_report([bf16_trace], tmp_path / "r.svg").read_text()
    root = ET.fromstring(svg)
    w, h = float(root.get("width")), float(root.get("height"))
    assert w > TIMELINE_WIDTH and h > 300
    png = write_report([bf16_trace], tmp_path / "r.png", scale=1.0)
    with Image.open(png) as im:
        im.load()  # decodes the whole image
        assert im.format == "PNG" and im.size == (round(w), round(h))
    png2 = write_report([bf16_trace], tmp_path / "r2.png")  # print resolution by default
    with Image.open(png2) as im:
        assert im.size == (round(2 * w), round(2 * h))
    assert write_report([bf16_trace], tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")


def test_markdown_and_comparison(trace_factory, tmp_path):
    base = trace_factory(method="bf16")
    prq = trace_factory(method="prq_int4", integration="study")
    md = write_report([base, prq], tmp_path / "r.md").read_text()
    assert "## Comparison" in md and "| trace | method |" in md
    assert md.count("### Live at the peak by category") == 2
    page = write_report([base, prq], tmp_path / "r.html").read_text()
    assert "vegaEmbed('#cmp'" in page and "bf16 peak" in page
    svg = write_report([base, prq], tmp_path / "r.svg").read_text()
    assert "peak vs KV bytes per trace" in svg


def test_bad_output_is_a_usage_error(bf16_trace, tmp_path):
    with pytest.raises(UsageError, match="unknown report format"):
        write_report([bf16_trace], tmp_path / "r.docx")
    with pytest.raises(UsageError, match="does not exist"):
        write_report([bf16_trace], tmp_path / "no" / "r.html")
    with pytest.raises(UsageError, match="not a trace folder"):
        write_report([tmp_path], tmp_path / "r.html")


def _small_trace(folder, budget=None, close=True):
    meta = {"method": "bf16", "integration": "study", "codes": "int8", "config": {"name": "x", "dtype": "float32"},
            "rollout": {"frames": 3, "seed": 0}}
    s = TraceSession(folder, meta, budget_bytes=budget).start()
    keep = []
    try:
        with stage("setup"), tag("weights"):
            keep.append(torch.empty(4096, dtype=torch.uint8))
        with stage("rollout"):
            for c in range(2):
                with stage("chunk", c), stage("denoise", 0), tag("activations"):
                    keep.append(torch.empty(2048, dtype=torch.uint8))
            with stage("decode"), tag("decode"):
                torch.empty(10_000, dtype=torch.uint8)
    except SimulatedOOM as exc:
        s.close("oom", exc)
        return s
    if close:
        s.close("complete")
    return s


def test_reports_on_incomplete_traces(tmp_path):
    _small_trace(tmp_path / "oom", budget=9000)
    oom = load_trace(tmp_path / "oom")
    assert oom.status == "oom"
    for suffix in (".html", ".png", ".md"):
        assert write_report([tmp_path / "oom"], tmp_path / f"oom{suffix}").stat().st_size > 0
    assert "status oom" in (tmp_path / "oom.md").read_text()
    live = _small_trace(tmp_path / "live", close=False)  # still running: events.jsonl only
    try:
        live.checkpoint()
        assert load_trace(tmp_path / "live").status == "running"
        write_report([tmp_path / "live", tmp_path / "oom"], tmp_path / "live.html")
        df = compare_table([tmp_path / "live", tmp_path / "oom"])
        assert list(df["status"]) == ["running", "oom"]
    finally:
        live.close("complete")


# ----------------------------------------------------------------------------- compare


def test_compare_table_views(trace_factory):
    base = trace_factory(method="bf16")
    prq = trace_factory(method="prq_int4", integration="study")
    df = compare_table([base, prq], sort="-peak_bytes", baseline=base)
    assert list(df["peak_bytes"]) == sorted(df["peak_bytes"], reverse=True)
    row = df.set_index("method").loc["prq_int4"]
    assert row["peak_delta_bytes"] == row["peak_bytes"] - find_peak(load_trace(base)).bytes
    assert df.set_index("method").loc["bf16", "peak_delta_bytes"] == 0
    assert {"ms_denoise", "ms_refresh", "ms_kv_read", "resident_kv_bytes", "ratio_stored", "wall_s"} <= set(df.columns)
    assert row["ratio_stored"] > 1  # prq stores fewer bits than bf16's logical bytes
    text = format_compare(df)
    assert "prq_int4" in text and "Δ peak" in text and "GiB" not in text  # tiny sizes print as KiB/MiB
    records = json.loads(format_compare(df, "json"))
    assert records[0]["peak_bytes"] == int(df["peak_bytes"].iat[0])
    from io import StringIO

    back = pd.read_csv(StringIO(format_compare(df, "csv")))
    assert list(back["peak_bytes"]) == list(df["peak_bytes"])
    # a folder of traces stands for its traces
    folder = compare_table([base.parent])
    assert set(folder["trace"]) >= {base.name, prq.name}
    with pytest.raises(UsageError, match="no such column"):
        compare_table([base], sort="nope")
    with pytest.raises(UsageError, match="no trace given"):
        compare_table([])


def test_peak_label_runs_into_the_plot_from_either_end(bf16_trace):
    from kvprof.read.report import peak_label_side, timeline_chart

    assert peak_label_side(2.5, 0.0, 40.0) == ("left", 6)  # an early peak (a refresh pass): text to its right
    assert peak_label_side(35.0, 0.0, 40.0) == ("right", -6)  # a peak in the decode: text to its left
    trace = load_trace(bf16_trace)
    spec = timeline_chart(trace).to_dict()
    label = next(layer["mark"] for layer in spec["layer"]
                 if isinstance(layer["mark"], dict) and layer["mark"].get("color") == "#d62728"
                 and layer["mark"]["type"] == "text")
    peak = find_peak(trace)
    t = timeline(trace)["t_ns"] / 1e9
    assert (label["align"], label["dx"]) == peak_label_side(peak.t_ns / 1e9, float(t.min()), float(t.max()))


# ----------------------------------------------------------------------------- the report as a paper figure


def _x_scales(spec):
    """Every x scale of a (layered) chart spec."""
    layers = spec.get("layer", [spec])
    return [layer["encoding"]["x"].get("scale") for layer in layers if "x" in layer.get("encoding", {})]


def test_time_axes_end_where_the_trace_ends(bf16_trace):
    from kvprof.read.phases import pass_bands
    from kvprof.read.report import kv_timeline_chart, timeline_chart

    trace = load_trace(bf16_trace)
    end = max(float(downsampled_timeline(trace, 1500)["t_s"].max()), float(pass_bands(trace)["end_s"].max()))
    for chart in (timeline_chart(trace), kv_timeline_chart(trace)):
        scales = [sc for sc in _x_scales(chart.to_dict()) if sc]
        assert scales, "the time axis has no explicit scale"
        for sc in scales:  # not rounded up past the data ('54 s for 51 s')
            assert sc["domain"] == [0.0, pytest.approx(end)] and sc["nice"] is False


def test_kv_has_its_own_panel_and_scale(bf16_trace):
    from kvprof.read.report import kv_timeline_chart, trace_chart

    trace = load_trace(bf16_trace)
    kv = kv_timeline_chart(trace).to_dict()
    assert kv["encoding"]["y"]["title"].startswith("KV live")
    folded = kv["transform"][0]["fold"]
    assert "kv_fp" in folded and "decode" not in folded and "weights" not in folded
    parts = trace_chart(trace).to_dict()["vconcat"]
    assert len(parts) == 3 and parts[1]["title"] == kv["title"]


def test_stage_time_axis_has_few_short_labels(bf16_trace):
    from kvprof.read.report import stage_time_chart

    spec = stage_time_chart(load_trace(bf16_trace)).to_dict()
    x = spec["encoding"]["x"]
    assert x["axis"]["tickCount"] <= 5 and x["axis"]["format"] == "~g" and x["axis"]["labelOverlap"] is True
    values = pd.DataFrame(spec["datasets"][spec["data"]["name"]])
    ms = values["device_ms"].max()
    if ms >= 1000:  # seconds: no '40,00045,000'
        assert " s," in x["title"] and values["value"].max() == pytest.approx(ms / 1000)


def test_html_comparison_table_scrolls_in_its_box(trace_factory, tmp_path):
    base = trace_factory(method="bf16")
    small = trace_factory(method="bf16", frames=3)
    page = write_report([base, small], tmp_path / "r.html").read_text()
    assert re.search(r"\.scroll\{[^}]*overflow-x:auto", page)
    start = page.index("<h2>Comparison</h2>")
    assert page[start:].split("<table", 1)[0].endswith("<div class='scroll'>")
