"""Phase analyses shared by reports and diagnose: which phase each allocation belongs to, the
peak of live bytes within each phase, retained allocations, and a timeline downsampler that
keeps the peak.

A *phase* is the top-level kind of work a byte was allocated in: `setup`, `text_embed`,
`cross_kv`, `denoise`, `refresh`, `chunk` (chunk work outside its passes), `decode`, `rollout`
(rollout work outside chunks) or `(outside stages)`. Like every analysis here these are functions
of the trace's tables returning DataFrames.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from kvprof.read.events import envelope_points, event_arrays
from kvprof.read.trace import Trace
from kvprof.read.views import REPORT_BUCKETS, report_envelope
from kvprof.units import fmt_bytes
from tracers.trace_fold import NO_FREE, Q_STRIDE
from tracers.vocabulary import CHUNK, DECODE, PASS_NAMES, PHASE_NAMES, ROLLOUT

__all__ = [
    "PHASE_NAMES",
    "OUTSIDE",
    "span_phases",
    "allocation_phases",
    "phase_peaks",
    "retained_mask",
    "envelope",
    "downsampled_timeline",
    "pass_bands",
    "OUTSIDE_NOTE",
    "phase_notes",
]

OUTSIDE = "(outside stages)"
OUTSIDE_NOTE = (f"{OUTSIDE}: allocations made while no kvprof stage was open (before setup or after the rollout, "
                "by the caller or a library), so no phase owns them; their row is the peak right after one of them")
# The cache's persistent state, what `--free-cache-before-decode` releases: the self-attention
# KV cache (full precision, codes, metadata) and the text K/V. Dequantized copies and scratch are
# per-call temporaries, not cache state.
CACHE_CATEGORIES: tuple[str, ...] = ("kv_fp", "kv_codes", "kv_meta", "cross_kv")


def span_phases(trace: Trace) -> pd.DataFrame:
    """Per span: `phase` (see module doc) and `phase_span` (id of the span that opened the phase)."""
    s = trace.spans
    phase: dict[int, str] = {}
    phase_span: dict[int, int] = {}
    for sid, par, name in zip(s["id"].tolist(), s["parent"].tolist(), s["name"].astype(object).tolist()):  # parents precede children
        name = str(name)
        if name in PHASE_NAMES:
            phase[sid], phase_span[sid] = name, sid
        elif par in phase and phase[par] not in (ROLLOUT, CHUNK):
            phase[sid], phase_span[sid] = phase[par], phase_span[par]
        elif name == CHUNK:
            phase[sid], phase_span[sid] = CHUNK, sid
        elif par in phase:
            phase[sid], phase_span[sid] = phase[par], phase_span[par]
        else:
            phase[sid], phase_span[sid] = name, sid
    return pd.DataFrame({"id": list(phase), "phase": list(phase.values()), "phase_span": list(phase_span.values())})


def allocation_phases(trace: Trace) -> pd.Series:
    """The phase each allocation was made in, indexed by allocation id."""
    ph = span_phases(trace).set_index("id")["phase"]
    a = trace.allocations
    out = a["span_id"].map(ph).fillna(OUTSIDE).astype(str)
    out.index = a["id"].to_numpy()
    return out


def phase_peaks(trace: Trace) -> pd.DataFrame:
    """The peak of live bytes within each phase: the maximum of live bytes right after any
    allocation made in that phase (live bytes only rise at allocations, so this is exact).

    Columns: phase, peak_bytes, q, t_ns, alloc_id, one column per category (live bytes by
    category at that instant), `cache_bytes` (kv_fp + kv_codes + kv_meta + cross_kv) and `first_q` (phase order).
    Part of the trace's views (kvprof.read.views): stored at close, else computed once.
    """
    return trace.views.phase_peaks.copy()


def retained_mask(trace: Trace, live: pd.DataFrame, q: int, owner: Mapping[int, int] | None = None) -> pd.Series:
    """For allocations `live` at order key `q`: True where the stage that made them ended before `q`
    (the allocation outlived its stage, DESIGN section 5). `owner` maps a span to the span whose end
    counts instead (diagnose: the enclosing layer call). Conservative on CUDA traces: a stage that
    ended in the same tracer context as `q` does not count as ended."""
    s = trace.spans.set_index("id")["q_end"]
    spans = live["span_id"] if owner is None else live["span_id"].map(lambda sid: owner.get(int(sid), int(sid)))
    end = spans.map(s)
    # Tracer contexts, not raw order keys: on CUDA the allocator's events of a context sort after
    # the session's own records of it (tracers.session), so only an earlier context is surely before.
    return end.notna() & (end != NO_FREE) & (end // Q_STRIDE < q // Q_STRIDE)


def envelope(df: pd.DataFrame, x: str, y: str, buckets: int) -> pd.DataFrame:
    """Downsample rows ordered by `x` to at most 2 * buckets + 2 rows: per bucket of equal width
    in `x`, the rows where `y` is smallest and largest, plus the first and last rows.

    Every kept row is a real row (so stacked columns stay consistent), and the row holding the
    global maximum of `y` is always kept (it is the maximum of its bucket), as is the minimum.
    """
    keep = envelope_points(df[x].to_numpy(), df[y].to_numpy(), buckets)
    return df.iloc[keep].reset_index(drop=True)


def downsampled_timeline(trace: Trace, buckets: int = REPORT_BUCKETS) -> pd.DataFrame:
    """The wide timeline (live bytes per category and `total` after every event) reduced with
    `envelope` on `total` over time; adds `t_s` (seconds since the trace started). The default
    resolution is part of the trace's views (stored at close); others are computed from the events."""
    if buckets == REPORT_BUCKETS:
        wide = trace.views.envelope
    else:
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        wide = report_envelope(event_arrays(trace.allocations), buckets)
    return wide.assign(t_s=wide["t_ns"] / 1e9)


def pass_bands(trace: Trace) -> pd.DataFrame:
    """Time bands of the passes and the decode, for timelines: kind, label, chunk, start_s, end_s."""
    s = trace.spans
    cols = ["kind", "label", "chunk", "start_s", "end_s"]
    if s.empty:
        return pd.DataFrame(columns=cols)
    end_default = int(max(s["t_end_ns"].max(), s["t_start_ns"].max()))
    sel = s[s["name"].isin([*PASS_NAMES, DECODE, CHUNK])]
    ends = sel["t_end_ns"].where(sel["t_end_ns"] != NO_FREE, end_default)
    labels = sel["path"].str.rsplit("/", n=1).str[-1]
    out = pd.DataFrame({
        "kind": sel["name"].astype(str), "label": labels.astype(str),
        "chunk": sel["chunk"], "start_s": sel["t_start_ns"] / 1e9, "end_s": ends / 1e9,
    })
    return out.reset_index(drop=True)


def phase_notes(phases: pd.DataFrame, setup_cache_at_peak: int | None = None) -> list[str]:
    """What a phase-peak table's rows mean where they are not plain: the `(outside stages)` row, and
    setup's cache (the cache's first buffers, which later writes may replace). `setup_cache_at_peak`:
    the cache bytes made in setup that are still live at the trace's peak, when known."""
    notes = []
    if (phases["phase"] == OUTSIDE).any():
        notes.append(OUTSIDE_NOTE)
    setup = phases.loc[phases["phase"] == "setup", "cache_bytes"]
    if not setup.empty and int(setup.iloc[0]) > 0:
        note = (f"setup's cache ({fmt_bytes(int(setup.iloc[0]))}) is the cache's first buffers, made in setup before "
                "the first chunk")
        if setup_cache_at_peak == 0:
            note += ("; later writes freed and replaced them, so none is live at the peak, where the cache buffers "
                     "are listed as made by the stage that last wrote them")
        elif setup_cache_at_peak:
            note += f"; {fmt_bytes(setup_cache_at_peak)} of them are still live at the peak"
        notes.append(note)
    return notes
