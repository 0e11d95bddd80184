"""StatusLine: run status, age of the last event, which trace, cursor and filter."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class StatusLine(Static):
    """One line at the bottom of every view; the app writes it (`show`)."""

    DEFAULT_CSS = "StatusLine { height: 1; dock: bottom; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.text = ""

    def show(self, text: Text) -> None:
        """Replace the line (plain text kept in `text` for tests and logs)."""
        if text.plain == self.text:
            return
        self.text = text.plain
        self.update(text)
