"""`kvprof sweep`: a matrix of traces run as Dask tasks, one fresh `kvprof trace` process per cell.

Modules: `matrix` (the cells from the options), `manifest` (the sweep folder's manifest.json, read
by compare/report/tui without Dask or torch), `cluster` (a local cluster or `--scheduler`), `run`
(the task each cell runs on a worker), `progress` (the terminal view), `command` (the subcommand).
Only `cluster` and `command` import Dask, and only when a sweep runs.
"""
from __future__ import annotations
