"""kvprof export: Perfetto / Chrome trace-event JSON, CSV and Parquet tables, and the PyTorch
allocator snapshot rebuilt for GPU traces."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest

from kvprof.read.analysis import find_peak
from kvprof.errors import UsageError
from kvprof.read.export import SNAPSHOT_NOTE, allocator_snapshot, export, perfetto_trace, table_frames
from kvprof.read.trace import load_trace
from tracers.trace_io import NO_FREE

from perfetto_checks import check_nesting

NUMBER = (int, float)


def _validate_trace_events(data: dict) -> list[dict]:
    """The trace-event format's required fields, per phase type."""
    assert isinstance(data["traceEvents"], list)
    for e in data["traceEvents"]:
        assert e["ph"] in ("X", "C", "M", "i"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        assert isinstance(e["name"], str) and e["name"], e
        if e["ph"] == "X":
            assert isinstance(e["ts"], NUMBER) and isinstance(e["dur"], NUMBER) and e["dur"] >= 0, e
        elif e["ph"] == "C":
            assert isinstance(e["ts"], NUMBER) and e["args"] and all(isinstance(v, NUMBER) for v in e["args"].values()), e
        elif e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name") and "name" in e["args"], e
        else:
            assert isinstance(e["ts"], NUMBER) and e["s"] in ("g", "p", "t"), e
    return data["traceEvents"]


def test_perfetto_json_validates_and_counters_reach_the_peak(bf16_trace, tmp_path):
    trace = load_trace(bf16_trace)
    peak = find_peak(trace)
    out = export(bf16_trace, "perfetto", tmp_path / "t.json")
    events = _validate_trace_events(json.loads(out.read_text()))
    check_nesting(events)
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == len(trace.spans)
    assert {"rollout", "decode", "chunk[0]", "denoise[0]", "refresh", "layer[0]"} <= {e["name"] for e in slices}
    totals = [e["args"]["bytes"] for e in events if e["ph"] == "C" and e["name"] == "live bytes: total"]
    assert max(totals) == peak.bytes
    # replay the per-category tracks: at every total update they add up to it, so their stack reaches the peak
    current: dict[str, int] = {}
    best = 0
    for e in events:
        if e["ph"] != "C":
            continue
        if e["name"] == "live bytes: total":
            assert sum(current.values()) == e["args"]["bytes"]
            best = max(best, sum(current.values()))
        else:
            current[e["name"]] = e["args"]["bytes"]
    assert best == peak.bytes
    assert {f"live bytes: {c}" for c in peak.by_category} <= set(current)
    instants = [e for e in events if e["ph"] == "i"]
    assert instants[0]["args"]["bytes"] == peak.bytes
    # a large trace is reduced with the envelope, the peak still exact
    reduced = perfetto_trace(trace, max_counter_rows=40)
    totals = [e["args"]["bytes"] for e in reduced["traceEvents"] if e.get("name") == "live bytes: total"]
    assert len(totals) <= 42 and max(totals) == peak.bytes
    gz = export(bf16_trace, "perfetto", tmp_path / "t.json.gz")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"


def _same_column(back: pd.Series, orig: pd.Series, what: str) -> None:
    """CSV keeps values, not dtypes: numbers compare as floats (NA as NaN), the rest as text."""
    if pd.api.types.is_numeric_dtype(orig) and not pd.api.types.is_bool_dtype(orig):
        a = pd.to_numeric(back, errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(orig, errors="coerce").astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        assert np.allclose(a, b, equal_nan=True, rtol=1e-12, atol=0), what
    else:
        assert list(back.fillna("").astype(str)) == list(orig.astype(object).where(orig.notna(), "").astype(str)), what


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables_round_trip(bf16_trace, tmp_path, fmt):
    trace = load_trace(bf16_trace)
    out = export(bf16_trace, fmt, tmp_path / fmt)
    frames = table_frames(trace)
    for name, df in frames.items():
        path = out / f"{name}.{fmt}"
        back = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
        assert list(back.columns) == list(df.columns)
        assert len(back) == len(df)
        if fmt == "parquet":
            pd.testing.assert_frame_equal(back, df.reset_index(drop=True))
        else:
            for col in df.columns:
                _same_column(back[col], df[col].reset_index(drop=True), f"{name}.{col}")
    allocs = pd.read_csv(out / "allocations.csv") if fmt == "csv" else pd.read_parquet(out / "allocations.parquet")
    for col in ("id", "q_alloc", "q_free", "bytes", "span_id"):
        assert (allocs[col].to_numpy() == trace.allocations[col].to_numpy()).all()
    assert list(allocs["category"].astype(str)) == list(trace.allocations["category"].astype(str))
    stages = pd.read_csv(out / "stages.csv") if fmt == "csv" else pd.read_parquet(out / "stages.parquet")
    assert {"id", "path", "kind_path", "phase"} <= set(stages.columns)
    assert set(allocs["span_id"]) - {0} <= set(stages["id"])  # every allocation's stage joins


def test_one_table_one_shape(bf16_trace, tmp_path):
    """The trace folder's tables and the exported ones have the same columns and types: a reader
    of `allocations.parquet` needs no case for where it came from."""
    out = export(bf16_trace, "parquet", tmp_path / "pq")
    for name in ("allocations", "spans", "samples", "counters", "kv"):
        mine = pd.read_parquet(bf16_trace / f"{name}.parquet")
        exported = pd.read_parquet(out / f"{name}.parquet")
        assert list(exported.columns) == list(mine.columns), name
        assert list(exported.dtypes) == list(mine.dtypes), name


def test_parquet_files_describe_their_columns(bf16_trace, tmp_path):
    import pyarrow.parquet as pq

    out = export(bf16_trace, "parquet", tmp_path / "pq")
    wanted = {"allocations": ("q_alloc", "q_free"), "spans": ("q_start", "q_end"), "counters": ("q",), "kv": ("q",)}
    for folder in (bf16_trace, out):
        for table, cols in wanted.items():
            schema = pq.read_schema(folder / f"{table}.parquet")
            assert schema.metadata[b"kvprof.table"] == table.encode()
            for col in cols:
                text = (schema.field(col).metadata or {}).get(b"description", b"").decode()
                assert "order" in text or "q of" in text, (folder, table, col, text)
    assert b"-1" in pq.read_schema(bf16_trace / "allocations.parquet").field("q_free").metadata[b"description"]


def test_empty_tables_keep_their_types(bf16_trace):
    """On CPU there are no device samples or allocator counters: 0-row tables, but typed."""
    for name in ("samples", "counters"):
        df = pd.read_parquet(bf16_trace / f"{name}.parquet")
        assert len(df) == 0 and all(str(t) == "int64" for t in df.dtypes), (name, df.dtypes.to_dict())


def test_traces_written_before_still_load_and_export(bf16_trace, tmp_path):
    """An older trace: empty tables of `object` columns, no descriptions in the files."""
    old = tmp_path / "old"
    shutil.copytree(bf16_trace, old)
    for name in ("allocations", "spans", "samples", "counters", "kv"):
        df = pd.read_parquet(old / f"{name}.parquet")
        if len(df) == 0:
            df = df.astype(object)
        df.to_parquet(old / f"{name}.parquet", index=False)  # plain pandas, as before
    assert str(load_trace(old).samples.dtypes.iloc[0]) == "object"
    out = export(old, "parquet", tmp_path / "pq")
    assert all(str(t) == "int64" for t in pd.read_parquet(out / "samples.parquet").dtypes)


def test_snapshot_needs_a_gpu_trace(bf16_trace, tmp_path):
    with pytest.raises(UsageError, match="needs a GPU trace"):
        export(bf16_trace, "snapshot", tmp_path / "s.pickle")
    with pytest.raises(UsageError, match="unknown export format"):
        export(bf16_trace, "speedscope", tmp_path / "s")


def test_snapshot_of_a_gpu_trace(bf16_trace, tmp_path):
    # A GPU trace differs from a CPU one only in its tracker (same tables): relabel a copy of the
    # rollout trace, with one extra allocation made live at the end (the snapshot's segments).
    import torch

    from tracers import TraceSession, stage, tag

    gpu = tmp_path / "gpu"
    shutil.copytree(bf16_trace, gpu)
    kept = tmp_path / "kept"
    with TraceSession(kept, {"run_id": "kept"}) as session:
        with stage("rollout"), tag("kv_fp"):
            survivor = torch.zeros(4096)
    for name in ("allocations",):
        a = pd.read_parquet(gpu / f"{name}.parquet")
        extra = pd.read_parquet(kept / f"{name}.parquet")
        extra = extra[extra["q_free"] == NO_FREE].assign(id=lambda d: d["id"] + int(a["id"].max()), span_id=0,
                                                          q_alloc=int(a["q_alloc"].max()) + 1)
        pd.concat([a, extra], ignore_index=True).to_parquet(gpu / f"{name}.parquet", index=False)
    del survivor, session
    meta = json.loads((gpu / "meta.json").read_text())
    meta["tracker"] = "cuda-allocator-history"
    (gpu / "meta.json").write_text(json.dumps(meta))
    trace = load_trace(gpu)
    out = export(gpu, "snapshot", tmp_path / "s.pickle")
    snap = pickle.loads(out.read_bytes())
    assert snap["kvprof"]["reconstructed"] is True and snap["kvprof"]["note"] == SNAPSHOT_NOTE
    entries = snap["device_traces"][0]
    a = trace.allocations
    assert sum(e["action"] == "alloc" for e in entries) == len(a)
    assert sum(e["action"] == "free_completed" for e in entries) == int((a["q_free"] != NO_FREE).sum())
    live, best = 0, 0
    for e in entries:
        live += e["size"] if e["action"] == "alloc" else -e["size"] if e["action"] == "free_completed" else 0
        best = max(best, live)
    assert best == find_peak(trace).bytes
    live_end = a.loc[a["q_free"] == NO_FREE, "bytes"]
    blocks = [b for s in snap["segments"] for b in s["blocks"] if b["state"] == "active_allocated"]
    assert len(blocks) == len(live_end) and sum(b["requested_size"] for b in blocks) == int(live_end.sum())
    for seg in snap["segments"]:
        assert sum(b["size"] for b in seg["blocks"]) == seg["total_size"]
    # PyTorch's own readers of the snapshot format accept it
    from torch.cuda import _memory_viz

    summary = _memory_viz.segsum(snap)
    assert "segments:" in summary and "total_allocated" in summary  # parsed by PyTorch (segsum lists only >= 20 MiB)
    text = _memory_viz.trace(snap)
    assert f"{len(entries)} entries" in text
    assert {e["user_metadata"] for e in entries} >= {"weights", "kv_fp", "decode"}
    assert allocator_snapshot(trace)["segments"][0]["address"] % 512 == 0
    assert np.all(np.diff([b["address"] for b in blocks]) > 0)


def test_the_format_doc_covers_every_column_and_the_readme_links_stay_in_the_repo():
    import re
    from pathlib import Path

    from tracers.table_schema import COLUMN_DOCS

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert "../shared" not in readme  # a clone has no such folder
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert "docs/trace-format.md" in links
    for link in links:
        if not link.startswith(("http://", "https://")):
            assert (root / link).is_file(), link
    doc = (root / "docs" / "trace-format.md").read_text()
    for table, cols in COLUMN_DOCS.items():
        section = doc.split(f"### `{table}`", 1)[1].split("###", 1)[0]
        for col in cols:
            assert f"| `{col}` |" in section, (table, col)
    for col in ("q_alloc", "q_free", "q_start", "q_end"):
        assert f"`{col}`" in readme, col
