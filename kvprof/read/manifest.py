"""The sweep folder: `manifest.json` (matrix, cells, each cell's status, run id, worker, GPU, times)
and `traces/<run-id>/`, one trace folder per attempt of a cell.

The client is the only writer of the manifest, and rewrites it atomically (temporary file and
rename) as each cell finishes, so a client killed mid-sweep loses nothing already written. Readers
(compare, report, tui, results_table) use `result_traces`: only the trace of a cell's last attempt
that ended `complete` or `oom` counts; the attempts before it (a worker killed mid-trace, a process
poisoned by a CUDA error) are listed as `torn` and never counted.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any, Callable


MANIFEST_FILE = "manifest.json"
META_FILE = "meta.json"  # tracers.trace_io.META_FILE (that module imports pandas; this one is read by the CLI parser)
TRACES_DIR = "traces"
KIND = "kvprof-sweep"
VERSION = 1
# A cell in one of these states is done: --resume leaves it as it is.
DONE: tuple[str, ...] = ("complete", "oom")
RESULT: tuple[str, ...] = DONE  # the statuses whose trace is a result of the sweep


def now() -> str:
    """Wall-clock time stamp of the manifest (UTC, ISO 8601)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def is_sweep(folder: str | Path) -> bool:
    """Whether `folder` is a sweep folder (holds a manifest.json written by `kvprof sweep`)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return False
    try:
        return read_manifest(folder).get("kind") == KIND
    except ValueError:
        return False


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a sweep folder (or a manifest file kept apart from its folder, e.g. a copy in
    benchmarks/results/); ValueError naming the file when it is not one."""
    path = Path(folder) if Path(folder).is_file() else Path(folder) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a sweep manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("cells"), list):
        raise ValueError(f"{path}: not a manifest written by 'kvprof sweep'")
    return data


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Rewrite the manifest atomically (readers never see half a file)."""
    from tracers.trace_io import write_json_atomic

    manifest["updated"] = now()
    write_json_atomic(Path(folder) / MANIFEST_FILE, manifest)


def sweep_trace_root(folder: str | Path) -> Path:
    """Where the sweep's trace folders are."""
    return Path(folder) / TRACES_DIR


def result_traces(folder: str | Path) -> list[Path]:
    """The trace of each cell that ended complete or oom, in matrix order (torn attempts left out)."""
    m = read_manifest(folder)
    root = sweep_trace_root(folder)
    return [root / c["run_id"] for c in m["cells"]
            if c.get("status") in RESULT and c.get("run_id") and (root / c["run_id"] / META_FILE).is_file()]


def cell_trace_paths(folder: str | Path) -> list[Path]:
    """Each cell's trace folder, started or not (its result, else its first attempt's name): what
    `kvprof tui SWEEP --follow` waits on."""
    m = read_manifest(folder)
    root = sweep_trace_root(folder)
    return [root / (c.get("run_id") or c["id"]) for c in m["cells"]]


def newest_attempts(folder: str | Path) -> dict[Path, Callable[[], Path]]:
    """For each cell of a sweep, its `cell_trace_paths` entry -> a function giving the folder of the
    cell's newest attempt now (`kvprof tui SWEEP --follow` moves to a retry as it starts)."""
    m = read_manifest(folder)
    root = sweep_trace_root(folder)

    def newest(cell_id: str) -> Callable[[], Path]:
        return lambda: root / (attempts(root, cell_id) or [cell_id])[-1]

    return {root / (c.get("run_id") or c["id"]): newest(c["id"]) for c in m["cells"]}


def attempt_id(cell_id: str, n: int) -> str:
    """The run id of attempt n (1-based) of a cell: the cell id, then `<cell id>.a<n>`."""
    return cell_id if n == 1 else f"{cell_id}.a{n}"


def attempts(root: Path, cell_id: str) -> list[str]:
    """Run ids of the attempts of a cell present under root, in attempt order."""
    pat = re.compile(re.escape(cell_id) + r"(?:\.a(\d+))?")
    found = []
    if root.is_dir():
        for p in root.iterdir():
            mt = pat.fullmatch(p.name)
            if mt and p.is_dir():
                found.append((int(mt.group(1) or 1), p.name))
    return [name for _, name in sorted(found)]


def next_attempt(root: Path, cell_id: str) -> str:
    """The run id of the next attempt of a cell (the first not present under root)."""
    n = 1
    while (root / attempt_id(cell_id, n)).exists():
        n += 1
    return attempt_id(cell_id, n)


def torn_attempts(root: Path, cell_id: str, result_run_id: str | None) -> list[dict[str, Any]]:
    """The attempts of a cell other than its result, with the status each trace was left in
    (`running` with its writer gone, `failed`, or unreadable): never counted as results."""
    out = []
    for run_id in attempts(root, cell_id):
        if run_id == result_run_id:
            continue
        try:
            status = json.loads((root / run_id / META_FILE).read_text()).get("status")
        except (OSError, ValueError):
            status = "unreadable"
        out.append({"run_id": run_id, "status": status})
    return out


def new_manifest(matrix: dict[str, Any], cells: list[dict[str, Any]], command: list[str]) -> dict[str, Any]:
    """A manifest whose cells are all pending."""
    return {"kind": KIND, "version": VERSION, "created": now(), "updated": now(), "command": command,
            "matrix": matrix, "cluster": None, "runs": [],
            "cells": [{**c, "status": "pending", "run_id": None, "torn": []} for c in cells]}


def sweep_seconds(manifest: dict[str, Any]) -> float:
    """Wall seconds of the sweep: its runs' `seconds` added (a resumed sweep has several; gaps between them not counted)."""
    return float(sum(r.get("seconds") or 0.0 for r in manifest.get("runs", [])))


def counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Cells per status."""
    out: dict[str, int] = {}
    for c in manifest["cells"]:
        out[c["status"]] = out.get(c["status"], 0) + 1
    return out


PHASES: tuple[str, ...] = ("startup_s", "trace_s", "after_s")


def phase_seconds(cells: list[dict[str, Any]]) -> dict[str, float] | None:
    """Seconds the cells spent before their traces opened (`startup_s`: interpreter, imports, CUDA), in them
    (`trace_s`) and after them (`after_s`: tables, summary, exit), added over the cells that recorded `phases`
    (kvprof.sweep.run.phases_of); None when none did (sweeps before phases were recorded)."""
    timed = [c["phases"] for c in cells if c.get("phases")]
    return {k: round(sum(ph[k] for ph in timed), 1) for k in PHASES} if timed else None
