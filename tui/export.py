"""`e`: write the current view's data as CSV, into the trace folder when it is writable, else cwd."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd


def export_csv(frame: pd.DataFrame, view: str, folder: Path | None) -> Path:
    """Write `frame` to `<folder>/kvprof-tui-<view>.csv` (or `./...` when that fails); return the path."""
    name = "kvprof-tui-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", view) + ".csv"
    candidates = ([folder] if folder is not None else []) + [Path.cwd()]
    last: OSError | None = None
    for where in candidates:
        path = where / name
        try:
            frame.to_csv(path, index=False)
            return path
        except OSError as exc:
            last = exc
    raise OSError(f"cannot write {name} into {', '.join(map(str, candidates))}: {last}")
