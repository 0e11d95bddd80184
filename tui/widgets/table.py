"""FrameTable: a DataTable of plain rows (dicts) that filters by text and sorts by any column."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
from rich.text import Text
from textual.widgets import DataTable


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return str(value)


@dataclass(frozen=True)
class Col:
    """One column: the row key it shows, its header, how to format it, whether it sorts as a number."""

    key: str
    label: str
    fmt: Callable[[Any], str] = _plain
    numeric: bool = False


class FrameTable(DataTable):
    """Rows are dicts of raw values; the filter matches any formatted cell, sort uses raw values."""

    DEFAULT_CSS = "FrameTable { height: 1fr; }"

    def __init__(self, columns: list[Col], *, sort_key: str | None = None, reverse: bool = False, **kwargs: Any):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.cols = columns
        self.data_rows: list[dict[str, Any]] = []
        self.filter_text = ""
        self.sort_key = sort_key
        self.sort_reverse = reverse
        self.shown_rows: list[dict[str, Any]] = []
        self._drawn: tuple | None = None

    def on_mount(self) -> None:
        self._draw()

    # ---------------------------------------------------------------- data
    def set_rows(self, rows: list[dict[str, Any]], filter_text: str | None = None) -> None:
        """Show `rows` (redrawn only when rows, filter or sort changed)."""
        self.data_rows = rows
        if filter_text is not None:
            self.filter_text = filter_text
        self._draw()

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self._draw()

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        """Sort by column `key`; the same column again flips the order."""
        if reverse is None:
            reverse = (not self.sort_reverse) if key == self.sort_key else any(c.key == key and c.numeric for c in self.cols)
        self.sort_key, self.sort_reverse = key, reverse
        self._draw()

    def cycle_sort(self) -> str:
        """Sort by the next column (numbers descending first); returns its label."""
        keys = [c.key for c in self.cols]
        nxt = keys[(keys.index(self.sort_key) + 1) % len(keys)] if self.sort_key in keys else keys[0]
        self.sort_by(nxt, reverse=any(c.key == nxt and c.numeric for c in self.cols))
        return next(c.label for c in self.cols if c.key == nxt)

    def reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._draw()

    def frame(self) -> pd.DataFrame:
        """The visible rows (filtered, sorted) with raw values, for export."""
        return pd.DataFrame(self.shown_rows, columns=[c.key for c in self.cols])

    def row_at_cursor(self) -> dict[str, Any] | None:
        if not self.shown_rows or self.cursor_row is None or not 0 <= self.cursor_row < len(self.shown_rows):
            return None
        return self.shown_rows[self.cursor_row]

    def cell_texts(self) -> list[list[str]]:
        """The formatted cells of the visible rows (what the table shows)."""
        return [[c.fmt(r.get(c.key)) for c in self.cols] for r in self.shown_rows]

    # ---------------------------------------------------------------- drawing
    def _sorted_filtered(self) -> list[dict[str, Any]]:
        rows = self.data_rows
        if self.filter_text:
            needle = self.filter_text.lower()
            rows = [r for r in rows if any(needle in c.fmt(r.get(c.key)).lower() for c in self.cols)]
        if self.sort_key is not None:
            col = next((c for c in self.cols if c.key == self.sort_key), None)
            if col is not None:
                present = [r for r in rows if r.get(col.key) is not None]
                missing = [r for r in rows if r.get(col.key) is None]

                def key(r: dict[str, Any]) -> Any:
                    v = r.get(col.key)
                    return v if col.numeric else str(v).lower()

                rows = sorted(present, key=key, reverse=self.sort_reverse) + missing
        return rows

    def _draw(self) -> None:
        if not self.is_mounted:
            return
        signature = (id(self.data_rows), len(self.data_rows), self.filter_text, self.sort_key, self.sort_reverse)
        if signature == self._drawn:
            return
        self._drawn = signature
        keep = self.cursor_row
        self.shown_rows = self._sorted_filtered()
        self.clear(columns=True)
        for c in self.cols:
            mark = "" if c.key != self.sort_key else (" ▼" if self.sort_reverse else " ▲")
            self.add_column(Text(c.label + mark), key=c.key)
        self.add_rows([[Text(c.fmt(r.get(c.key))) for c in self.cols] for r in self.shown_rows])  # plain, not markup
        if self.shown_rows and keep:
            self.move_cursor(row=min(keep, len(self.shown_rows) - 1))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))
