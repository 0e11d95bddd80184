"""FilterBar: the `/` prompt. Submitting sets the app's filter; escape leaves it as it was."""
from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input


class FilterBar(Input):
    """An Input shown at the bottom of a view while the user types a filter."""

    DEFAULT_CSS = "FilterBar { dock: bottom; display: none; }"
    BINDINGS = [Binding("escape", "cancel", "close the filter", show=False)]

    def __init__(self, **kwargs) -> None:
        super().__init__(placeholder="filter: text matched against categories, stages, names (enter: apply, empty: clear)", **kwargs)
        self.can_focus = False  # only while open: the views' keys must not type into it

    def open(self, current: str) -> None:
        self.value = current
        self.display = True
        self.can_focus = True
        self.focus()

    def close(self) -> None:
        self.display = False
        self.can_focus = False
        self.screen.set_focus(None)

    def action_cancel(self) -> None:
        self.close()
