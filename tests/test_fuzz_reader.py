"""Issue 6: truncated, corrupted and random trace files end in the documented error or a valid result.

Every consumer of a trace folder (the reader, the TUI's loader, `report` to markdown, `diagnose`)
is fed a real trace with one file damaged: cut short, bytes flipped, replaced by random bytes or
by random JSON, one field or record changed, a table replaced by one with a column missing or of
the wrong type, or the file removed. Each must return a result or raise TraceError / UsageError;
the TUI's loader must never raise (it shows the error).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvprof.api as kv
from kvprof.read.analysis import summarize
from kvprof.diagnose import diagnose
from kvprof.errors import UsageError
from kvprof.read.report import write_report
from kvprof.read.trace import load_trace
from tracers.trace_io import EVENTS_FILE, TABLES, TraceError
from tui.model import trace_listing
from tui.source import TraceSource

DOCUMENTED = (TraceError, UsageError)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def originals(trace_factory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A closed rollout trace (Parquet) and a live one (events log, status running)."""
    closed = trace_factory(method="bf16", frames=3)
    live = tmp_path_factory.mktemp("fuzz") / "live"
    with kv.trace(tmp_path_factory.mktemp("fuzz") / "src", meta={"method": "toy"}, device="cpu") as t:
        keep = []
        for i in range(3):
            with t.stage("chunk", i), t.category("kv_fp"):
                keep.append(torch.zeros(256))
                tmp = torch.ones(512)
                del tmp
            t.record_kv_bytes(i, 1024 * (i + 1), 512 * (i + 1), 1024 * (i + 1))
        t.checkpoint()
        shutil.copytree(t.path, live)
    return {"closed": closed, "live": live}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


# ---------------------------------------------------------------------- damage
def _truncate(path: Path, data: Any) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * data.draw(st.floats(0, 1)))])


def _flip(path: Path, data: Any) -> None:
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        if raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(raw))


def _random_bytes(path: Path, data: Any) -> None:
    path.write_bytes(data.draw(st.binary(max_size=200)))


def _random_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data.draw(json_values)))


def _delete(path: Path, data: Any) -> None:
    path.unlink()


def _json_field(path: Path, data: Any) -> None:
    """One field of meta.json / summary.json (or one record of the event log) gets a random value."""
    if path.name == EVENTS_FILE:
        lines = path.read_text().splitlines()
        i = data.draw(st.integers(0, len(lines) - 1))
        rec = json.loads(lines[i])
        key = data.draw(st.sampled_from(sorted(rec) + ["k", "extra"]))
        rec[key] = data.draw(json_values | st.sampled_from(["a", "f", "b", "e", "r", "z", "kv", "x", "m", "d"]))
        lines[i] = json.dumps(rec)
        path.write_text("\n".join(lines) + "\n")
        return
    obj = json.loads(path.read_text())
    if not isinstance(obj, dict):
        return
    key = data.draw(st.sampled_from(sorted(obj) + ["extra"]))
    obj[key] = data.draw(json_values)
    path.write_text(json.dumps(obj))


def _nested_field(path: Path, data: Any) -> None:
    """One field inside an object-valued field (config.name, rollout.frames, peak.bytes...) gets a random value."""
    obj = json.loads(path.read_text())
    inner = sorted(k for k, v in obj.items() if isinstance(v, dict) and v) if isinstance(obj, dict) else []
    if not inner:
        return
    outer = data.draw(st.sampled_from(inner))
    key = data.draw(st.sampled_from(sorted(obj[outer])))
    obj[outer][key] = data.draw(json_values)
    path.write_text(json.dumps(obj))


def _table_column(path: Path, data: Any) -> None:
    """A Parquet table with one column missing, of another type, or all missing values."""
    df = pd.read_parquet(path)
    if not len(df.columns):
        return
    col = data.draw(st.sampled_from(list(df.columns)))
    how = data.draw(st.sampled_from(["drop", "text", "null", "negative"]))
    if how == "drop":
        df = df.drop(columns=[col])
    elif how == "text":
        df[col] = ["x"] * len(df)
    elif how == "null":
        df[col] = pd.Series([None] * len(df), dtype="object")
    else:
        df[col] = -1
    df.to_parquet(path, index=False)


DAMAGE: dict[str, Callable[[Path, Any], None]] = {
    "truncate": _truncate, "flip": _flip, "random bytes": _random_bytes, "random json": _random_json,
    "delete": _delete, "json field": _json_field, "nested field": _nested_field, "table column": _table_column,
}


def _applies(how: str, name: str) -> bool:
    if how == "json field":
        return name.endswith(".json") or name == EVENTS_FILE
    if how == "nested field":
        return name.endswith(".json")
    if how == "table column":
        return name.endswith(".parquet")
    return True


# ---------------------------------------------------------------------- consumers
def _documented(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except DOCUMENTED:
        return None


def _consume(folder: Path, root: Path) -> None:
    trace = _documented(lambda: load_trace(folder))
    if trace is not None:  # a trace that loads gives valid analyses
        summarize(trace)
    _documented(lambda: write_report([folder], root / "report.md"))
    _documented(lambda: diagnose(folder, traces_root=[root]))
    source = TraceSource(folder)
    source.refresh()  # never raises: a damaged folder becomes the source's error message
    assert source.error is not None or source.view is not None or source.state.phase == "waiting"
    assert len(trace_listing([folder])) == 1  # the TUI's list of traces reads meta and summary itself


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
# KVPROF_FUZZ_EXAMPLES=2000 searches longer (the suite keeps 50: it must stay fast)
@settings(max_examples=int(os.environ.get("KVPROF_FUZZ_EXAMPLES", "50")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_trace_files_end_in_the_documented_error_or_a_result(originals: dict[str, Path], data: Any) -> None:
    which = data.draw(st.sampled_from(sorted(originals)), label="trace")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / which
        shutil.copytree(originals[which], folder)
        name = data.draw(st.sampled_from(_files(folder)), label="file")
        how = data.draw(st.sampled_from([h for h in DAMAGE if _applies(h, name)]), label="damage")
        DAMAGE[how](folder / name, data)
        _consume(folder, root)


def test_every_table_and_file_of_the_originals_is_reachable(originals: dict[str, Path]) -> None:
    closed = _files(originals["closed"])
    assert {f"{t}.parquet" for t in TABLES} | {"meta.json", "summary.json"} <= set(closed)
    assert EVENTS_FILE in _files(originals["live"])
    for folder in originals.values():
        _consume(folder, folder.parent)
