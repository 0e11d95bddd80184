"""The `?` screen: every key of the app and of the current view."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    """A modal list of keys; `?`, `q` or escape closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "close help")]

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        super().__init__()
        self.lines = lines
        self.text = "\n".join(f"{k:>14}  {d}" for k, d in lines)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static("[b]kvprof tui: keys[/b]\n", id="help-title")
            yield Static(self.text, id="help-keys", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
