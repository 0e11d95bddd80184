"""summary.json, checked on load like meta.json: every field readers use has its JSON type and a
range a number of bytes can have; TraceError naming the file and the field otherwise."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_BYTES = 2**63 - 1  # int64: the tables' byte columns
_HINT = "damaged summary; remove it and the numbers are recomputed from the tables"


def _is_bytes(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_BYTES


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fail(path: Path, field: str, what: str) -> None:
    from tracers.trace_io import TraceError  # late: trace_io re-exports this module's check

    raise TraceError(f"{path}: field {field!r} {what} ({_HINT})")


def _check_peak(peak: Any, path: Path) -> None:
    if not isinstance(peak, dict):
        _fail(path, "peak", "is not an object")
    if not _is_bytes(peak.get("bytes")):
        _fail(path, "peak.bytes", "is not a byte count (a whole number from 0 to 2**63-1)")
    if not isinstance(peak.get("stage"), str):
        _fail(path, "peak.stage", "is not a string")
    if not _is_number(peak.get("t_ns")):
        _fail(path, "peak.t_ns", "is not a finite number")
    for key in ("by_category", "by_stage", "by_pass"):
        value = peak.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and _is_bytes(v) for k, v in value.items()):
            _fail(path, f"peak.{key}", "is not an object of byte counts")


def _check_kv(kv: Any, path: Path) -> None:
    if not isinstance(kv, dict):
        _fail(path, "kv", "is not an object")
    for key in ("logical_bytes", "stored_bytes", "resident_bytes"):
        if not _is_bytes(kv.get(key)):
            _fail(path, f"kv.{key}", "is not a byte count")
    for key in ("ratio_stored", "ratio_resident"):
        if kv.get(key) is not None and not _is_number(kv.get(key)):
            _fail(path, f"kv.{key}", "is not a finite number or null")


def _check_stage_times(rows: Any, path: Path) -> None:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        _fail(path, "stage_times", "is not a list of objects")
    for r in rows:
        if not isinstance(r.get("stage"), str) or not isinstance(r.get("count"), int):
            _fail(path, "stage_times", "has a row without a stage name or count")
        for key in ("host_ms", "device_ms"):
            if r.get(key) is not None and not isinstance(r.get(key), (int, float)):
                _fail(path, f"stage_times.{key}", "is not a number")


def check_summary(summary: Any, path: Path) -> None:
    """summary.json holds an object whose fields (those present) have the types readers use."""
    if not isinstance(summary, dict):
        from tracers.trace_io import TraceError

        raise TraceError(f"{path}: expected a JSON object ({_HINT})")
    if summary.get("status") is not None and not isinstance(summary["status"], str):
        _fail(path, "status", "is not a string")
    if summary.get("peak") is not None:
        _check_peak(summary["peak"], path)
    if summary.get("kv") is not None:
        _check_kv(summary["kv"], path)
    if summary.get("stage_times") is not None:
        _check_stage_times(summary["stage_times"], path)
    for key, kind, name in (("reconciliation", dict, "an object"), ("quality", dict, "an object"),
                            ("failure", dict, "an object"), ("oom", dict, "an object"), ("notes", list, "a list"),
                            ("host_profile", dict, "an object"), ("live_at_end_by_category", dict, "an object"),
                            ("tracer_cost", dict, "an object")):
        if summary.get(key) is not None and not isinstance(summary[key], kind):
            _fail(path, key, f"is not {name}")
    if not all(isinstance(n, str) for n in summary.get("notes") or []):
        _fail(path, "notes", "holds a non-string")


def read_summary_file(path: Path) -> dict[str, Any] | None:
    """The checked JSON object of a summary.json (None when there is none): the one read of the
    file, for the trace reader, the live follower and kvprof.read.summary.load_summary."""
    from tracers.trace_io import TraceError

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TraceError(f"{path}: unreadable or truncated JSON ({exc})") from None
    check_summary(data, path)
    return data
