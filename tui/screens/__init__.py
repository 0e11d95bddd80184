"""One screen per view of the kvprof TUI (the app switches between them as Textual modes)."""
from tui.screens.allocations import AllocationsScreen
from tui.screens.breakdown import BreakdownScreen
from tui.screens.compare import CompareScreen
from tui.screens.help import HelpScreen
from tui.screens.kv import KVScreen
from tui.screens.stages import StagesScreen
from tui.screens.timeline import TimelineScreen
from tui.screens.traces import TracesScreen

__all__ = ["AllocationsScreen", "BreakdownScreen", "CompareScreen", "HelpScreen", "KVScreen", "StagesScreen",
           "TimelineScreen", "TracesScreen"]
