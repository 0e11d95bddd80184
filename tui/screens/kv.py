"""View 5: KV bytes (logical / stored / resident), per-chunk KV, and the quality panel."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
from textual.containers import Horizontal, Vertical
from textual.widget import Widget

from kvprof.units import fmt_bytes
from tui.model import TraceView
from tui.screens.base import ViewScreen
from tui.widgets.kv import KVPanel
from tui.widgets.quality import QualityPanel
from tui.widgets.table import Col, FrameTable

COLUMNS = [Col("chunk", "chunk", lambda c: "end" if c is None else str(c), numeric=True), Col("logical_bytes", "logical", fmt_bytes, numeric=True),
           Col("stored_bytes", "stored", fmt_bytes, numeric=True), Col("resident_bytes", "resident", fmt_bytes, numeric=True),
           Col("ratio_stored", "logical/stored", lambda x: "-" if x is None else f"{x:.2f}x", numeric=True)]


class KVScreen(ViewScreen):
    VIEW = "kv"
    TITLE = "KV cache bytes and quality"

    def __init__(self) -> None:
        super().__init__()
        self._rows_for: tuple[int, list[dict]] | None = None

    def compose_body(self) -> Iterable[Widget]:
        with Horizontal(id="kv-top"):
            yield KVPanel(id="kv-panel")
            yield QualityPanel(id="quality-panel")
        with Vertical(id="kv-chunks"):
            yield FrameTable(COLUMNS, sort_key="chunk", id="kv-table")

    def update_body(self, view: TraceView | None) -> None:
        if view is None:
            return
        when = view.kv_label(view.kv.chunk) if view.kv else ""
        self.query_one(KVPanel).show(view.kv, view.trace.meta, when, view.logical_dtype)
        self.query_one(QualityPanel).show(view.quality)
        if self._rows_for is None or self._rows_for[0] != id(view):
            rows = [{"chunk": view.kv_chunk(int(r.chunk)), "logical_bytes": int(r.logical_bytes),
                     "stored_bytes": int(r.stored_bytes), "resident_bytes": int(r.resident_bytes),
                     "ratio_stored": r.logical_bytes / r.stored_bytes if r.stored_bytes else None}
                    for r in view.trace.kv.itertuples()]
            self._rows_for = (id(view), rows)
        table = self.query_one(FrameTable)
        table.border_title = "KV bytes after each chunk (end: after the rollout)"
        table.set_rows(self._rows_for[1], self.kv_app.filter_text)

    def export_frame(self) -> pd.DataFrame | None:
        return self.query_one(FrameTable).frame()
