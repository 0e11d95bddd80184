"""View 1: the memory timeline with the breakdown at the cursor and at the peak."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
from textual.containers import Horizontal
from textual.widget import Widget

from tui.model import TraceView, column_points
from tui.screens.base import ViewScreen
from tui.widgets.breakdown import BreakdownPanel
from tui.widgets.cursor import CursorPanel
from tui.widgets.timeline import MARGIN, TimelineChart


class TimelineScreen(ViewScreen):
    VIEW = "timeline"
    TITLE = "memory timeline"

    def compose_body(self) -> Iterable[Widget]:
        yield TimelineChart(id="chart")
        with Horizontal(id="below"):
            yield BreakdownPanel(id="cursor-breakdown")
            yield CursorPanel(id="cursor-info")

    def update_body(self, view: TraceView | None) -> None:
        if view is None:
            return
        app = self.kv_app
        chart = self.query_one(TimelineChart)
        if chart.size.width > MARGIN:
            app.chart_columns = chart.chart_columns()  # left / right step one column of this chart
        event = app.cursor_event()
        chart.show(view, event, app.filter_text, app.x_axis)
        if event is None:
            return
        at_cursor = view.breakdown_at_event(event)
        peak = view.peak
        self.query_one(BreakdownPanel).show(at_cursor, peak.by_category if peak else None,
                                            peak.bytes if peak else None, app.filter_text)
        matching = view.breakdown_at_event(event, app.filter_text) if app.filter_text else at_cursor
        self.query_one(CursorPanel).show(view, event, matching, app.filter_text)

    def on_resize(self) -> None:
        self.request_draw()

    def export_frame(self) -> pd.DataFrame | None:
        view = self.kv_app.current_view()
        if view is None:
            return None
        tl = view.timeline_for(self.kv_app.x_axis)
        chart = self.query_one(TimelineChart)
        pts = column_points(tl, chart.columns or self.kv_app.chart_columns)
        frame = pd.DataFrame({
            "column": range(len(pts)), "x_axis": tl.axis, "event": tl.index[pts], "q": tl.q[pts], "t_ns": tl.t_ns[pts],
            "total_bytes": tl.total[pts], "stage": [tl.stage_band[p] for p in pts],
            "pass": [tl.pass_band[p] for p in pts],
        })
        for cat in chart.categories:
            frame[cat] = tl.by_category[cat][pts]
        return frame
