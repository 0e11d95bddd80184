"""`kvprof report TRACE... -o FILE`: memory timelines, peak breakdowns, stage times and a
comparison of several traces, as one self-contained HTML page (JavaScript inlined), PNG, SVG or
PDF (vl-convert) or markdown tables.

Charts are built from the analyses' tables (kvprof.read.analysis, kvprof.read.phases, kvprof.read.compare),
never from the raw events. Timelines are reduced with `kvprof.read.phases.envelope`, which keeps
the minimum and maximum of every time bucket, so the plotted peak is the exact peak.
"""
from __future__ import annotations

import datetime as dt
import functools
import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from kvprof.read.analysis import find_peak, kv_bytes, logical_label, stage_times
from kvprof.read.compare import format_cell, column_title, compare_table, open_traces, text_columns, trace_label
from kvprof.read.markdown import md_table, md_text
from kvprof.errors import UsageError
from kvprof.read.phases import downsampled_timeline, pass_bands, phase_peaks
from kvprof.read.trace import Trace
from kvprof.units import fmt_bytes, fmt_ms
from tracers.atomic import write_atomic
from tracers.categories import CATEGORIES, KV_CATEGORIES

__all__ = [
    "SUFFIXES", "CATEGORY_COLORS", "DEFAULT_SCALE", "timeline_chart", "kv_timeline_chart", "peak_breakdown_chart", "stage_time_chart",
    "comparison_chart", "trace_chart", "report_chart", "write_report", "render_chart", "markdown_report",
    "html_report",
]

SUFFIXES: tuple[str, ...] = (".html", ".png", ".svg", ".pdf", ".md")
DEFAULT_BUCKETS = 1500  # time buckets of a timeline; each keeps its min and max row
DEFAULT_SCALE = 2.0  # .png/.pdf pixels per chart pixel: 2x is print resolution for a paper figure
MAX_SCALE = 8.0  # of .png/.pdf output: 8x the natural size is far past print resolution
TIMELINE_WIDTH, TIMELINE_HEIGHT = 900, 260
KV_PANEL_HEIGHT = 110
# The KV cache's own categories (and the text K/V): tiny next to decode buffers, so they get a panel
# with their own scale under the timeline.
KV_PANEL_CATEGORIES: tuple[str, ...] = (*KV_CATEGORIES, "cross_kv")
BAR_WIDTH = 420
# One fixed color per category, the same in every chart and report (Tableau 20 order).
CATEGORY_COLORS: dict[str, str] = dict(zip(CATEGORIES, (
    "#9d9d9d", "#1f77b4", "#d62728", "#ff9896", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#9467bd",
    "#8c564b", "#000000",
)))
BAND_COLORS = {"denoise": "#c7c7c7", "refresh": "#f7b6d2", "decode": "#c5b0d5"}
KV_MEASURES = ("peak", "logical KV", "stored KV", "resident KV")  # "logical KV" gains its dtype: kv_measures
KV_MEASURE_COLUMNS = ("peak_bytes", "logical_kv_bytes", "stored_kv_bytes", "resident_kv_bytes")


def kv_measures(table: pd.DataFrame) -> tuple[str, ...]:
    """The comparison chart's measure names for kvprof compare's table: logical KV titled as in
    compare ("logical KV (FP32)" when every trace counts it at one dtype)."""
    dtypes = list(table["logical_dtype"]) if "logical_dtype" in table.columns else []
    return tuple(column_title(c, dtypes) if c == "logical_kv_bytes" else m for m, c in zip(KV_MEASURES, KV_MEASURE_COLUMNS))


def _peak_of(trace: Trace):
    """find_peak, computed once per loaded trace (several charts and tables of a report ask)."""
    if "_report_peak" not in trace.__dict__:
        trace.__dict__["_report_peak"] = find_peak(trace)
    return trace.__dict__["_report_peak"]


def _alt():
    import altair as alt  # presentation stays optional for the core (DESIGN: reports only)

    alt.data_transformers.disable_max_rows()
    return alt


def _unit(n_bytes: float) -> tuple[str, int]:
    """Display unit for a chart whose largest value is n_bytes."""
    for name, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= size:
            return name, size
    return "B", 1


def _present_categories(wide: pd.DataFrame) -> list[str]:
    return [c for c in CATEGORIES if c in wide.columns and (wide[c] != 0).any()]


def time_axis(t_end_s: float):
    """The x encoding of time charts: the axis ends where the trace does (no 'nice' rounding past
    it), in few, well-spaced ticks."""
    alt = _alt()
    return alt.X("t_s:Q", title="time (s)", scale=alt.Scale(domain=[0.0, max(t_end_s, 1e-9)], nice=False, zero=True),
                 axis=alt.Axis(tickCount=10, labelOverlap=True, labelFlush=True))


def _trace_end_s(trace: Trace, wide: pd.DataFrame) -> float:
    bands = pass_bands(trace)
    ends = [float(wide["t_s"].max()) if not wide.empty else 0.0]
    if not bands.empty:
        ends.append(float(bands["end_s"].max()))
    return max(ends)


def peak_label_side(t_s: float, t_min: float, t_max: float) -> tuple[str, int]:
    """Text alignment and offset of the peak label: it runs into the plot, away from the nearer edge
    (a label ending at an early peak would run out of the plot over the axis)."""
    return ("left", 6) if t_s - t_min < (t_max - t_min) / 2 else ("right", -6)


def timeline_chart(trace: Trace, buckets: int = DEFAULT_BUCKETS, unit: tuple[str, int] | None = None,
                   width: int = TIMELINE_WIDTH, height: int = TIMELINE_HEIGHT):
    """Live bytes stacked by category over time, pass/decode bands behind, the peak marked."""
    alt = _alt()
    wide = downsampled_timeline(trace, buckets)
    peak = _peak_of(trace)
    uname, usize = unit or _unit(peak.bytes if peak else 0)
    cats = _present_categories(wide)
    title = f"{trace_label(trace)}: live memory by category ({trace.status})"
    if wide.empty or not cats:
        return alt.Chart(pd.DataFrame({"x": [0]})).mark_text(text="no allocations recorded").properties(
            width=width, height=height, title=title)
    data = wide[["t_s", *cats]].copy()
    t_end = _trace_end_s(trace, wide)
    order = json.dumps(cats)
    area = alt.Chart(data).transform_fold(cats, as_=["category", "bytes"]).transform_calculate(
        value=f"datum.bytes / {usize}", stack_order=f"indexof({order}, datum.category)",
    ).mark_area(interpolate="step-after").encode(
        x=time_axis(t_end),
        y=alt.Y("value:Q", stack="zero", title=f"live ({uname})"),
        color=alt.Color("category:N", title="category",
                        scale=alt.Scale(domain=cats, range=[CATEGORY_COLORS[c] for c in cats])),
        order=alt.Order("stack_order:Q"),
        tooltip=[alt.Tooltip("t_s:Q", format=".4f"), "category:N", alt.Tooltip("value:Q", format=",.3f", title=uname)],
    )
    layers = []
    bands = pass_bands(trace)
    band_rows = bands[bands["kind"].isin(list(BAND_COLORS))]
    if not band_rows.empty:
        kinds = [k for k in BAND_COLORS if k in set(band_rows["kind"])]
        layers.append(alt.Chart(band_rows).mark_rect(opacity=0.35).encode(
            x=alt.X("start_s:Q", title="time (s)", scale=alt.Scale(domain=[0.0, max(t_end, 1e-9)], nice=False)),
            x2="end_s:Q",
            color=alt.Color("kind:N", title="pass", scale=alt.Scale(domain=kinds, range=[BAND_COLORS[k] for k in kinds])),
            tooltip=["label:N", "chunk:Q", alt.Tooltip("start_s:Q", format=".4f"), alt.Tooltip("end_s:Q", format=".4f")],
        ))
    chunks = bands[bands["kind"] == "chunk"]
    if not chunks.empty and len(chunks) <= 30:
        chunks = chunks.assign(short="c" + chunks["chunk"].astype(str))
        layers.append(alt.Chart(chunks).mark_text(align="left", baseline="top", dx=2, fontSize=9, color="#555").encode(
            x="start_s:Q", y=alt.value(2), text="short:N", tooltip=["label:N"]))
    layers.append(area)
    if peak is not None:
        pk = pd.DataFrame([{"t_s": peak.t_ns / 1e9, "value": peak.bytes / usize,
                            "label": f"peak {fmt_bytes(peak.bytes)} in {peak.stage}"}])
        layers.append(alt.Chart(pk).mark_rule(color="#d62728", strokeDash=[4, 3]).encode(x="t_s:Q"))
        layers.append(alt.Chart(pk).mark_point(color="#d62728", filled=True, size=50).encode(x="t_s:Q", y="value:Q"))
        align, dx = peak_label_side(peak.t_ns / 1e9, float(data["t_s"].min()), float(data["t_s"].max()))
        layers.append(alt.Chart(pk).mark_text(align=align, dx=dx, dy=-6, color="#d62728", fontSize=11).encode(
            x="t_s:Q", y="value:Q", text="label:N"))
    return alt.layer(*layers).resolve_scale(color="independent").properties(width=width, height=height, title=title)


def kv_timeline_chart(trace: Trace, buckets: int = DEFAULT_BUCKETS, width: int = TIMELINE_WIDTH,
                      height: int = KV_PANEL_HEIGHT):
    """The KV cache's categories alone over the same time axis, on their own scale (beside decode
    buffers they are a sliver); None when the trace holds no KV bytes."""
    alt = _alt()
    wide = downsampled_timeline(trace, buckets)
    cats = [c for c in _present_categories(wide) if c in KV_PANEL_CATEGORIES]
    if wide.empty or not cats:
        return None
    uname, usize = _unit(float(wide[cats].sum(axis=1).max()))
    order = json.dumps(cats)
    return alt.Chart(wide[["t_s", *cats]]).transform_fold(cats, as_=["category", "bytes"]).transform_calculate(
        value=f"datum.bytes / {usize}", stack_order=f"indexof({order}, datum.category)",
    ).mark_area(interpolate="step-after").encode(
        x=time_axis(_trace_end_s(trace, wide)),
        y=alt.Y("value:Q", stack="zero", title=f"KV live ({uname})", axis=alt.Axis(tickCount=4)),
        color=alt.Color("category:N", title="KV category",
                        scale=alt.Scale(domain=cats, range=[CATEGORY_COLORS[c] for c in cats])),
        order=alt.Order("stack_order:Q"),
        tooltip=[alt.Tooltip("t_s:Q", format=".4f"), "category:N", alt.Tooltip("value:Q", format=",.3f", title=uname)],
    ).properties(width=width, height=height, title="KV cache alone (its own scale)")


def memory_charts(trace: Trace, buckets: int = DEFAULT_BUCKETS, unit: tuple[str, int] | None = None) -> list[Any]:
    """The timeline and, under it, the KV panel when the trace has KV bytes."""
    kv = kv_timeline_chart(trace, buckets)
    return [timeline_chart(trace, buckets, unit), *([kv] if kv is not None else [])]


def peak_breakdown_chart(trace: Trace, unit: tuple[str, int] | None = None, top_stages: int = 12):
    """Bytes live at the peak by category and by stage of origin (two bar charts side by side)."""
    alt = _alt()
    peak = _peak_of(trace)
    if peak is None:
        return alt.Chart(pd.DataFrame({"x": [0]})).mark_text(text="no allocations recorded")
    uname, usize = unit or _unit(peak.bytes)
    cats = pd.DataFrame([{"category": c, "value": b / usize, "bytes": fmt_bytes(b)}
                         for c, b in sorted(peak.by_category.items(), key=lambda kv: -kv[1])])
    stages = pd.DataFrame([{"stage": s, "value": b / usize, "bytes": fmt_bytes(b)}
                           for s, b in list(peak.by_stage.items())[:top_stages]])
    present = list(cats["category"])
    by_cat = alt.Chart(cats).mark_bar().encode(
        y=alt.Y("category:N", sort="-x", title=None), x=alt.X("value:Q", title=f"live at the peak ({uname})"),
        color=alt.Color("category:N", legend=None, scale=alt.Scale(domain=present, range=[CATEGORY_COLORS.get(c, "#777") for c in present])),
        tooltip=["category:N", "bytes:N"],
    ).properties(width=BAR_WIDTH // 2 + 60, title="by category")
    by_stage = alt.Chart(stages).mark_bar(color="#4c78a8").encode(
        y=alt.Y("stage:N", sort="-x", title=None, axis=alt.Axis(labelLimit=360)),
        x=alt.X("value:Q", title=f"live at the peak ({uname})"), tooltip=["stage:N", "bytes:N"],
    ).properties(width=BAR_WIDTH // 2 + 60, title="by stage of origin")
    return alt.hconcat(by_cat, by_stage).resolve_scale(color="independent").properties(
        title=f"peak {fmt_bytes(peak.bytes)} during {peak.stage}")


def stage_time_chart(trace: Trace, top: int = 16):
    """Device time per stage kind (inclusive of nested stages; host time on CPU runs)."""
    alt = _alt()
    times = stage_times(trace).head(top)
    if times.empty:
        return alt.Chart(pd.DataFrame({"x": [0]})).mark_text(text="no stages recorded")
    # Device time where measured; a CPU run has none, so its host time is plotted and titled so.
    col, where = ("device_ms", "device") if times["device_ms"].notna().any() else ("host_ms", "host (CPU run)")
    # Seconds once the bars reach a second: '40,000' ms labels ran into each other.
    unit, div = ("s", 1000.0) if float(times[col].max()) >= 1000 else ("ms", 1.0)
    times = times.assign(value=times[col] / div)
    return alt.Chart(times).mark_bar(color="#72b7b2").encode(
        y=alt.Y("stage:N", sort="-x", title=None),
        x=alt.X("value:Q", title=f"{where} {unit}, inclusive",
                axis=alt.Axis(tickCount=5, format="~g", labelOverlap=True, labelFlush=True)),
        tooltip=["stage:N", "count:Q", alt.Tooltip("device_ms:Q", format=",.1f"), alt.Tooltip("host_ms:Q", format=",.1f")],
    ).properties(width=BAR_WIDTH, title="time per stage kind")


def _unique_labels(traces: Sequence[Trace]) -> list[str]:
    labels = [trace_label(t) for t in traces]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 else f"{lab} #{seen[lab]}")
    return out


def comparison_frame(table: pd.DataFrame, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table for the comparison chart: label, measure (peak / logical / stored / resident KV), bytes.

    `table` is kvprof compare's table (or its saved CSV); labels default to its `trace` column."""
    labels = list(table["trace"]) if labels is None else list(labels)
    rows = []
    for label, r in zip(labels, table.itertuples(index=False)):
        for measure, col in zip(kv_measures(table), KV_MEASURE_COLUMNS):
            v = getattr(r, col)
            if v is not None and not pd.isna(v):
                rows.append({"trace": label, "method": r.method, "measure": measure, "bytes": int(v)})
    return pd.DataFrame(rows, columns=["trace", "method", "measure", "bytes"])


WIDE_COMPARISON = 12  # more traces than this: one row per trace, so that every label stays readable


def comparison_chart(source: Sequence[Trace] | pd.DataFrame, unit: tuple[str, int] | None = None):
    """Peak vs logical / stored / resident KV per trace, the bf16 peak as a reference line.

    `source` is the traces, or kvprof compare's table of them (e.g. read back from `--csv`)."""
    alt = _alt()
    if isinstance(source, pd.DataFrame):
        table, labels = source, None
    else:
        table, labels = compare_table(list(source)), _unique_labels(source)
    data = comparison_frame(table, labels)
    measures = list(kv_measures(table))
    uname, usize = unit or _unit(data["bytes"].max() if not data.empty else 0)
    data = data.assign(value=data["bytes"] / usize, size=data["bytes"].map(fmt_bytes))
    n = data["trace"].nunique()
    horizontal = n > WIDE_COMPARISON
    label_axis, value_axis = ("y", "x") if horizontal else ("x", "y")
    encode = {
        label_axis: getattr(alt, label_axis.upper())(
            "trace:N", title=None, sort=None,
            axis=alt.Axis(labelLimit=360) if horizontal else alt.Axis(labelAngle=-30, labelLimit=260)),
        f"{label_axis}Offset": getattr(alt, f"{label_axis.upper()}Offset")("measure:N", sort=measures),
        value_axis: getattr(alt, value_axis.upper())("value:Q", title=uname),
    }
    bars = alt.Chart(data).mark_bar().encode(
        **encode,
        color=alt.Color("measure:N", sort=measures, title=None,
                        scale=alt.Scale(domain=measures, range=["#4c78a8", "#bab0ac", "#f58518", "#e45756"])),
        tooltip=["trace:N", "measure:N", "size:N"],
    )
    layers = [bars]
    ref = data[(data["method"] == "bf16") & (data["measure"] == "peak")]
    if not ref.empty:
        r = ref.iloc[0]
        line = pd.DataFrame([{"value": r["value"], "label": f"bf16 peak {r['size']}"}])
        layers.append(alt.Chart(line).mark_rule(color="#d62728", strokeDash=[6, 3]).encode(**{value_axis: "value:Q"}))
        text = (alt.Chart(line).mark_text(align="left", dx=4, y=-8, color="#d62728") if horizontal
                else alt.Chart(line).mark_text(align="left", dy=-6, x=4, color="#d62728"))
        layers.append(text.encode(**{value_axis: "value:Q"}, text="label:N"))
    size = {"width": 640, "height": 44 * n} if horizontal else {"width": max(360, 70 * n), "height": 260}
    return alt.layer(*layers).properties(**size, title="peak vs KV bytes per trace")


def trace_chart(trace: Trace, buckets: int = DEFAULT_BUCKETS):
    """One trace: timeline on top, peak breakdown and stage times below."""
    alt = _alt()
    peak = _peak_of(trace)
    unit = _unit(peak.bytes if peak else 0)
    return alt.vconcat(
        *memory_charts(trace, buckets, unit),
        alt.hconcat(peak_breakdown_chart(trace, unit), stage_time_chart(trace)).resolve_scale(color="independent"),
    ).resolve_scale(color="independent")


def report_chart(traces: Sequence[Trace], buckets: int = DEFAULT_BUCKETS):
    """The whole report as one chart: comparison (several traces), then each trace."""
    alt = _alt()
    parts = []
    if len(traces) > 1:
        parts.append(comparison_chart(traces))
    parts += [trace_chart(t, buckets) for t in traces]
    return parts[0] if len(parts) == 1 else alt.vconcat(*parts).resolve_scale(color="independent")


def render_chart(chart, fmt: str, scale: float = DEFAULT_SCALE) -> bytes:
    """PNG / SVG / PDF bytes of an altair chart through vl-convert (no browser, no network); `scale`
    sizes the PNG (SVG and PDF are vector)."""
    import vl_convert as vlc

    spec = chart.to_dict()
    if fmt == "png":
        return vlc.vegalite_to_png(spec, scale=scale)
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec).encode()
    if fmt == "pdf":
        return vlc.vegalite_to_pdf(spec)  # vector: vl-convert no longer takes a scale for PDF
    raise UsageError(f"unknown image format {fmt!r}; choose png, svg or pdf")


@functools.lru_cache(maxsize=1)
def _js_bundle() -> str:
    """Vega, Vega-Lite and vega-embed in one script (from vl-convert, no network)."""
    import vl_convert as vlc

    return vlc.javascript_bundle()


def _compare_view(traces: Sequence[Trace]) -> pd.DataFrame:
    df = compare_table(list(traces))
    cols = [c for c in text_columns(df) if c in df.columns]
    dtypes = list(df["logical_dtype"]) if "logical_dtype" in df.columns else []
    view = pd.DataFrame({column_title(c, dtypes): [format_cell(c, v) for v in df[c]] for c in cols})
    return view


def _trace_tables(trace: Trace) -> dict[str, pd.DataFrame]:
    """The tables shown under each trace's charts (human units)."""
    peak = _peak_of(trace)
    out: dict[str, pd.DataFrame] = {}
    if peak is not None:
        out["live at the peak by category"] = pd.DataFrame(
            [{"category": c, "bytes": fmt_bytes(b), "share": f"{100 * b / peak.bytes:.1f}%"}
             for c, b in sorted(peak.by_category.items(), key=lambda kv: -kv[1])])
        out["live at the peak by stage of origin"] = pd.DataFrame(
            [{"stage": s, "bytes": fmt_bytes(b)} for s, b in list(peak.by_stage.items())[:15]])
        out["largest allocations live at the peak"] = pd.DataFrame(
            [{"bytes": fmt_bytes(a["bytes"]), "category": a["category"], "name": a["name"] or "", "made in": a["stage"]}
             for a in peak.top_allocations])
        pp = phase_peaks(trace)
        out["phase peaks"] = pd.DataFrame({"phase": pp["phase"], "peak": pp["peak_bytes"].map(fmt_bytes),
                                           "cache live (kv_fp, kv_codes, kv_meta, cross_kv)": pp["cache_bytes"].map(fmt_bytes)})
    times = stage_times(trace).head(15)
    out["time per stage kind"] = pd.DataFrame({
        "stage": times["stage"], "count": times["count"], "host ms": times["host_ms"].map(fmt_ms),
        "device ms": times["device_ms"].map(fmt_ms)})
    return out


def _trace_facts(trace: Trace) -> list[str]:
    m = trace.meta
    peak = _peak_of(trace)
    facts = [f"trace `{trace.path}`", f"status {trace.status}" + (f" ({m.get('error')})" if m.get("error") else "")]
    if peak is not None:
        facts.append(f"peak {fmt_bytes(peak.bytes)} ({peak.bytes:,} B) during {peak.stage} at {peak.t_ns / 1e9:.3f} s")
    env = m.get("environment") or {}
    facts.append(f"device {env.get('device_name', '?')} · torch {env.get('torch', '?')} · tracker {m.get('tracker', '?')}")
    kv = kv_bytes(trace)
    if kv:
        facts.append(f"KV after chunk {kv.chunk}: {logical_label(kv.logical_dtype)} {fmt_bytes(kv.logical_bytes)} · "
                     f"stored {fmt_bytes(kv.stored_bytes)} · resident {fmt_bytes(kv.resident_bytes)}")
    if m.get("wall_s") is not None:
        facts.append(f"wall {m['wall_s']:.2f} s")
    facts += [f"note: {n}" for n in m.get("notes") or []]
    return facts


def markdown_report(traces: Sequence[Trace]) -> str:
    """The report as markdown tables (for papers and issues)."""
    out = [f"# kvprof report ({len(traces)} trace{'s' if len(traces) != 1 else ''})", ""]
    if len(traces) > 1:
        out += ["## Comparison", "", md_table(_compare_view(traces)), ""]
    for t in traces:
        out += [f"## {md_text(trace_label(t))}", ""]
        out += [f"- {md_text(f)}" for f in _trace_facts(t)]
        out.append("")
        for title, df in _trace_tables(t).items():
            out += [f"### {title[0].upper() + title[1:]}", "", md_table(df) if not df.empty else "(none)", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:14px;margin-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:6px 0 14px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.facts{font-size:13px;color:#444}.tables{display:flex;flex-wrap:wrap;gap:24px}
code{background:#f4f4f4;padding:0 3px}.scroll{max-width:100%;overflow-x:auto}.scroll table{white-space:nowrap}
"""


def _script_json(spec: dict[str, Any]) -> str:
    """JSON safe to embed inside a <script> element."""
    return json.dumps(spec).replace("</", "<\\/").replace("<!--", "<\\!--")


def html_report(traces: Sequence[Trace], buckets: int = DEFAULT_BUCKETS) -> str:
    """One self-contained HTML page: every script inlined, no network needed to view it."""
    charts: list[tuple[str, dict[str, Any]]] = []
    body = [f"<h1>kvprof report</h1><p class='facts'>{len(traces)} trace(s), generated "
            f"{html.escape(dt.datetime.now().isoformat(timespec='seconds'))}. Timelines keep the minimum and maximum "
            f"of each of {buckets} time buckets, so the marked peak is exact.</p>"]
    if len(traces) > 1:
        body.append("<h2>Comparison</h2>")
        # a wide table scrolls inside its box instead of running off the page
        body.append("<div class='scroll'>" + _compare_view(traces).to_html(index=False, border=0, escape=True) + "</div>")
        charts.append(("cmp", comparison_chart(traces).to_dict()))
        body.append("<div id='cmp'></div>")
    for i, t in enumerate(traces):
        body.append(f"<h2>{html.escape(trace_label(t))}</h2>")
        body.append("<p class='facts'>" + "<br>".join(html.escape(f) for f in _trace_facts(t)) + "</p>")
        peak = _peak_of(t)
        unit = _unit(peak.bytes if peak else 0)
        mem = memory_charts(t, buckets, unit)
        named = [(f"tl{i}", mem[0]), *((f"kv{i}", c) for c in mem[1:]), (f"pk{i}", peak_breakdown_chart(t, unit)),
                 (f"st{i}", stage_time_chart(t))]
        for name, chart in named:
            charts.append((name, chart.to_dict()))
            body.append(f"<div id='{name}'></div>")
        body.append("<div class='tables'>")
        for title, df in _trace_tables(t).items():
            body.append(f"<div><h3>{html.escape(title)}</h3>{df.to_html(index=False, border=0, escape=True)}</div>")
        body.append("</div>")
    embeds = "\n".join(
        f"vegaEmbed('#{name}', {_script_json(spec)}, {{actions: false, renderer: 'svg'}});" for name, spec in charts)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>kvprof report</title>"
        f"<style>{_CSS}</style>\n<script>{_js_bundle()}</script>\n</head><body>\n" + "\n".join(body)
        + f"\n<script>\n{embeds}\n</script>\n</body></html>\n"
    )


def write_report(traces: Sequence[str | Path | Trace], out: str | Path, *, buckets: int = DEFAULT_BUCKETS,
                 scale: float = DEFAULT_SCALE) -> Path:
    """Write the report of `traces` to `out`; the format follows the suffix (.html, .png, .svg,
    .pdf, .md). Works on incomplete traces (oom, failed, interrupted, still running)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"-o {out}: unknown report format {suffix or '(no suffix)'!r}; use one of {', '.join(SUFFIXES)}")
    if buckets < 1:
        raise UsageError(f"--buckets {buckets}: must be at least 1")
    if not (math.isfinite(scale) and 0 < scale <= MAX_SCALE):  # vl-convert panics on inf and huge scales
        raise UsageError(f"--scale {scale}: must be positive and at most {MAX_SCALE:g} (1 = natural size, 2 = print)")
    loaded = open_traces(traces)
    if out.parent and not out.parent.exists():
        raise UsageError(f"-o {out}: folder {out.parent} does not exist; create it first")
    if suffix == ".html":
        data = html_report(loaded, buckets).encode("utf-8")
    elif suffix == ".md":
        data = markdown_report(loaded).encode("utf-8")
    else:
        data = render_chart(report_chart(loaded, buckets), suffix[1:], scale)
    write_atomic(out, lambda tmp: tmp.write_bytes(data))  # a full disk leaves no half report
    return out

