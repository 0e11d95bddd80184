"""The host profile's file format: py-spy's chrometrace beside a trace, read and aligned to the
trace's clock. Readers (`kvprof.read.hostprof`) and the recorder (`tracers.host_profile`, which
writes the file and measures the alignment) share this module; it runs no py-spy and imports no
torch.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HOST_PROFILE_FILE = "host_profile.json"
PROFILE_FORMAT = "chrometrace"
MARKERS = ("_kvprof_align_a", "_kvprof_align_b")  # functions the recorder runs to mark the clock
OWN_PACKAGES = ("kvprof", "tracers", "methods", "tui")


def load_chrometrace(path: str | Path) -> list[dict[str, Any]]:
    """py-spy's chrometrace event list (ValueError naming the file when it is not one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable py-spy chrometrace file ({exc})") from None
    if isinstance(data, dict):
        data = data.get("traceEvents")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of trace events")
    return data


def _thread_tid(events: list[dict[str, Any]], thread_ident: int | None) -> int | None:
    """py-spy's tid for our thread: the thread ident itself, or (newer py-spy, which remaps tids
    to small numbers) the tid whose thread_name metadata starts with '<ident>:'."""
    if thread_ident is None:
        return None
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            name = str((e.get("args") or {}).get("name", ""))
            if name.split(":", 1)[0].strip() == str(thread_ident):
                return int(e["tid"])
    return thread_ident


def align(events: list[dict[str, Any]], marks: list[tuple[str, int, int]], thread_ident: int | None) -> dict[str, Any]:
    """Offset (ns) with trace_ns = py-spy ts_us * 1000 + offset, from the marker slices.

    A marker run can show as several slices (py-spy starts a new one when the line changes), so
    the slices group into maximal runs of one marker name; a run py-spy never sampled merges into
    its neighbours. Every (group, run of the same name) pair proposes an offset; the one under
    which most groups land within half a run of a run of their name wins, and pairs each group
    with that run. Each pair's estimate is the true offset minus that slice's delay (sample phase
    plus py-spy's processing latency). Every other slice carries such a delay at both ends, so
    the median estimate centres the timeline (stage attributions unbiased) where the maximum
    would shift it late by the typical delay; the spread (max - min) is the error bound."""
    tid = _thread_tid(events, thread_ident)
    begins = sorted((float(e["ts"]), str(e["name"])) for e in events
                    if e.get("ph") == "B" and e.get("name") in MARKERS and (tid is None or e.get("tid") == tid))
    groups: list[tuple[str, float]] = []  # (marker, ts of its first slice)
    for ts, name in begins:
        if not groups or groups[-1][0] != name:
            groups.append((name, ts))
    best: tuple[int, float, list[float]] | None = None
    for g_name, g_ts in groups:
        for m_name, m_t0, _ in marks:
            if m_name != g_name:
                continue
            offset = m_t0 - g_ts * 1000
            estimates, residual = [], 0.0
            for name, ts in groups:
                runs = [(t0, t1) for n, t0, t1 in marks if n == name]
                t0, t1 = min(runs, key=lambda r: abs(ts * 1000 + offset - r[0]))
                r = ts * 1000 + offset - t0
                if abs(r) <= (t1 - t0) / 2:
                    estimates.append(t0 - ts * 1000)
                    residual += abs(r)
            if best is None or (len(estimates), -residual) > (best[0], -best[1]):
                best = (len(estimates), residual, estimates)
    if best is None or best[0] < 2:
        return {"offset_ns": None, "error_bound_ns": None, "markers": len(marks), "marker_runs_seen": len(groups),
                "note": f"py-spy saw {len(groups)} of {len(marks)} marker runs (sampling too slow or the process too "
                        "busy: try a higher --host-rate)"}
    est = np.array(best[2])
    return {"offset_ns": int(np.median(est)), "error_bound_ns": int(est.max() - est.min()), "markers": len(marks),
            "marker_runs_seen": len(groups), "markers_matched": int(best[0]),
            "note": "trace_ns = ts_us * 1000 + offset_ns"}


_FRAME_COLUMNS = ["t_start_ns", "t_end_ns", "depth", "function", "file", "line", "frame", "code_frame", "stack"]
# Frames of these files are machinery, not the code whose time is asked about: torch and other
# installed packages, the standard library, kvprof's own tracers (dispatch tracker, event log).
_LIBRARY = re.compile(r"(site-packages|dist-packages)/|/lib/python3\.\d+/|^<frozen |(^|/)tracers/[^/]+\.py$")
_SLICE_COLUMNS = ["t_start_ns", "t_end_ns", "depth", "function", "file", "line"]


def host_intervals(events: list[dict[str, Any]], thread_ident: int | None, offset_ns: int) -> pd.DataFrame:
    """The profiled thread's timeline as disjoint intervals with one stack each (trace clock):
    t_start_ns, t_end_ns, depth, the innermost frame (function, file, line, 'function (file:line)'),
    the innermost frame of the code under study (`code_frame`: the innermost Python frame outside
    torch, installed packages, the standard library and kvprof's tracers; with --native the
    innermost frame may be C/C++) and the whole stack ('outer;...;inner'). Marker frames are dropped."""
    tid = _thread_tid(events, thread_ident)
    evs = [e for e in events if e.get("ph") in ("B", "E") and (tid is None or e.get("tid") == tid)]
    evs.sort(key=lambda e: (float(e["ts"]), 0 if e["ph"] == "E" else 1))  # stable: py-spy's own order within a ts
    stack: list[tuple[str, str, Any]] = []
    rows: list[tuple] = []
    prev_ts: float | None = None
    for e in evs:
        ts = float(e["ts"])
        if prev_ts is not None and ts > prev_ts and stack:
            name, file, line = stack[-1]
            if name not in MARKERS:
                code = next((f for f in reversed(stack) if f[1].endswith(".py") and not _LIBRARY.search(f[1])), stack[-1])
                rows.append((prev_ts, ts, len(stack), name, file, line, _frame_label(*stack[-1]), _frame_label(*code),
                             ";".join(f[0] for f in stack)))
        args = e.get("args") or {}
        if e["ph"] == "B":
            stack.append((str(e.get("name", "?")), str(args.get("filename", "?")), args.get("line")))
        elif stack:
            stack.pop()
        prev_ts = ts
    df = pd.DataFrame(rows, columns=_FRAME_COLUMNS)
    df["t_start_ns"] = (df["t_start_ns"].astype("float64") * 1000 + offset_ns).round().astype("int64")
    df["t_end_ns"] = (df["t_end_ns"].astype("float64") * 1000 + offset_ns).round().astype("int64")
    df["depth"] = df["depth"].astype("int64")
    df["line"] = df["line"].astype("Int64")
    return df


def host_slices(events: list[dict[str, Any]], thread_ident: int | None, offset_ns: int) -> pd.DataFrame:
    """Every frame of the profiled thread as one nested slice (trace clock): t_start_ns,
    t_end_ns, depth (0 outermost), function, file, line. Marker frames are dropped."""
    tid = _thread_tid(events, thread_ident)
    evs = [e for e in events if e.get("ph") in ("B", "E") and (tid is None or e.get("tid") == tid)]
    evs.sort(key=lambda e: (float(e["ts"]), 0 if e["ph"] == "E" else 1))
    open_: list[tuple[float, str, str, Any]] = []
    rows: list[tuple] = []
    for e in evs:
        ts = float(e["ts"])
        if e["ph"] == "B":
            args = e.get("args") or {}
            open_.append((ts, str(e.get("name", "?")), str(args.get("filename", "?")), args.get("line")))
        elif open_:
            t0, name, file, line = open_.pop()
            if name not in MARKERS:
                rows.append((t0, ts, len(open_), name, file, line))
    df = pd.DataFrame(rows, columns=_SLICE_COLUMNS)
    df["t_start_ns"] = (df["t_start_ns"].astype("float64") * 1000 + offset_ns).round().astype("int64")
    df["t_end_ns"] = (df["t_end_ns"].astype("float64") * 1000 + offset_ns).round().astype("int64")
    df["depth"] = df["depth"].astype("int64")
    df["line"] = df["line"].astype("Int64")
    return df.sort_values(["t_start_ns", "depth"], kind="stable").reset_index(drop=True)


def read_host_profile(folder: str | Path, info: dict[str, Any] | None) -> tuple[list[dict[str, Any]], int] | None:
    """(py-spy events, offset ns) of a trace folder's aligned profile, or None."""
    if not info or info.get("status") != "recorded" or not info.get("file"):
        return None
    offset = (info.get("alignment") or {}).get("offset_ns")
    if offset is None:
        return None
    return load_chrometrace(Path(folder) / info["file"]), int(offset)


def read_host_intervals(folder: str | Path, info: dict[str, Any] | None) -> pd.DataFrame | None:
    """The aligned host timeline of a trace folder (None when there is no aligned profile)."""
    found = read_host_profile(folder, info)
    if found is None:
        return None
    assert info is not None
    return host_intervals(found[0], info.get("thread_ident"), found[1])


def _frame_label(name: str, file: str, line: Any) -> str:
    return f"{name} ({_short(file)}:{line})" if line is not None else f"{name} ({_short(file)})"


def _short(path: str) -> str:
    """A source path from its package on ('kvprof/workload/rollout.py'), as py-spy shortens them."""
    m = re.search(r"(?:site-packages|dist-packages)/(.+)$", path)
    if m:
        return m.group(1)
    parts = Path(path).parts
    ours = [i for i, p in enumerate(parts[:-1]) if p in OWN_PACKAGES]
    if ours:  # kvprof's own files from their top-level package on, however deep
        return "/".join(parts[ours[-1]:])
    return "/".join(parts[-2:]) if len(parts) >= 2 else path
