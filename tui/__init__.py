"""kvprof's Textual TUI: live and replay views of traces (see tui/app.py).

Entry points: `tui.app.run_tui(paths, follow, root)` for `kvprof tui` and
`tui.app.run_live(folder, run)` for `kvprof trace --tui`. Importing this package does not
import Textual; `tui.app` does.
"""
