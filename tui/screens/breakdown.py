"""View 2: live bytes at the cursor and at the peak, by category, by stage of origin and by pass."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
from textual.containers import Grid
from textual.markup import escape
from textual.widget import Widget

from kvprof.units import fmt_bytes
from tui.model import TraceView
from tui.screens.base import ViewScreen
from tui.widgets.table import Col, FrameTable

AXES = (("category", "by category"), ("stage", "by stage of origin"), ("pass", "by pass of origin"))
WHERE = ("cursor", "peak")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}%"


def _rows(split: dict[str, int], total: int, where: str, axis: str) -> list[dict]:
    return [{"where": where, "axis": axis, "key": k, "bytes": v, "share": 100 * v / total if total else None}
            for k, v in split.items()]


class BreakdownScreen(ViewScreen):
    VIEW = "breakdown"
    TITLE = "breakdown at the cursor and at the peak"

    def __init__(self) -> None:
        super().__init__()
        self._drawn_for: tuple | None = None

    def compose_body(self) -> Iterable[Widget]:
        with Grid(id="breakdown-grid"):
            for where in WHERE:
                for axis, label in AXES:
                    # numbers first: a long stage path may run past the table's edge, the numbers never
                    cols = [Col("bytes", "bytes", fmt_bytes, numeric=True), Col("share", "share", _pct, numeric=True),
                            Col("key", axis if axis != "stage" else "stage (kind path)")]
                    table = FrameTable(cols, sort_key="bytes", reverse=True, id=f"{where}-{axis}")
                    table.border_title = f"at the {where}: {label}"
                    yield table

    def update_body(self, view: TraceView | None) -> None:
        if view is None:
            return
        app = self.kv_app
        event = app.cursor_event()
        key = (id(view), event)
        if key != self._drawn_for and event is not None:
            self._drawn_for = key
            cur = view.breakdown_at_event(event)
            peak = view.peak
            splits = {
                ("cursor", "category"): (cur.by_category, cur.total), ("cursor", "stage"): (cur.by_stage, cur.total),
                ("cursor", "pass"): (cur.by_pass, cur.total),
            }
            if peak is not None:
                splits.update({("peak", "category"): (peak.by_category, peak.bytes),
                               ("peak", "stage"): (peak.by_stage, peak.bytes),
                               ("peak", "pass"): (peak.by_pass, peak.bytes)})
            for (where, axis), (split, total) in splits.items():
                self.query_one(f"#{where}-{axis}", FrameTable).set_rows(_rows(split, total, where, axis))
            self.query_one("#cursor-category", FrameTable).border_title = (
                f"at the cursor (event {event + 1:,}, {fmt_bytes(cur.total)}): by category")
            if peak is not None:
                self.query_one("#peak-category", FrameTable).border_title = escape(
                    f"at the peak ({fmt_bytes(peak.bytes)}, {peak.stage}): by category")
        for table in self.query(FrameTable):
            table.set_filter(app.filter_text)

    def export_frame(self) -> pd.DataFrame | None:
        rows = [r for t in self.query(FrameTable) for r in t.shown_rows]
        return pd.DataFrame(rows, columns=["where", "axis", "key", "bytes", "share"])
