"""MessagePanel: what a view shows instead of data (no trace open, waiting, unreadable trace)."""
from __future__ import annotations

from textual.widgets import Static


class MessagePanel(Static):
    """A centered, bordered message; hidden while the view has data."""

    DEFAULT_CSS = "MessagePanel { display: none; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.text = ""

    def show_message(self, text: str | None, severity: str = "info") -> None:
        """Show `text` (None hides the panel)."""
        self.text = text or ""
        self.display = bool(text)
        self.set_class(severity == "error", "-error")
        if text:
            self.update(text)
